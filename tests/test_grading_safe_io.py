"""labkit.grading.safe_io: special files are refused with the reason, never followed, never waited on."""

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labkit.grading.safe_io import Refused, json_depth, loads_bounded, read_regular_file, walk


def test_a_plain_file_is_read(tmp_path):
    (tmp_path / "a.ipynb").write_bytes(b"{}")
    assert read_regular_file(tmp_path / "a.ipynb", 100) == b"{}"


def _hard_link(path):
    (path.parent / "other").write_text("x")
    os.link(path.parent / "other", path)


@pytest.mark.parametrize("make, reason", [
    (lambda p: p.symlink_to("/etc/passwd"), "symbolic link"),
    (lambda p: os.mkfifo(p), "FIFO"),  # opening it would wait for a writer forever
    (lambda p: p.mkdir(), "folder"),
    (lambda p: _hard_link(p), "hard link"),
    (lambda p: p.write_bytes(b"x" * 101), "over the"),
])
def test_special_files_are_refused_with_the_reason(tmp_path, make, reason):
    path = tmp_path / "a.ipynb"
    make(path)
    with pytest.raises(Refused, match=reason):
        read_regular_file(path, 100)


def test_a_device_is_refused():
    with pytest.raises(Refused, match="character device"):
        read_regular_file("/dev/zero", 100)


def test_deep_json_is_refused_before_parsing():
    with pytest.raises(Refused, match="nested more than 64"):
        loads_bounded("[" * 1_000_000 + "]" * 1_000_000)
    assert loads_bounded('{"a": [1, {"b": "[[[[["}]}') == {"a": [1, {"b": "[[[[["}]}


@given(st.recursive(st.none() | st.integers() | st.text(), lambda c: st.lists(c) | st.dictionaries(st.text(), c),
                    max_leaves=20))
def test_json_depth_counts_like_the_parser(value):
    import json

    def depth(v):
        if isinstance(v, list):
            return 1 + max((depth(x) for x in v), default=0)
        if isinstance(v, dict):
            return 1 + max((depth(x) for x in v.values()), default=0)
        return 0

    assert json_depth(json.dumps(value)) == depth(value)


def test_walk_never_follows_links_and_stops_at_its_bounds(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x.ipynb").write_text("{}")
    (tmp_path / "loop").symlink_to(tmp_path)
    found = [rel for rel, _ in walk(tmp_path)]
    assert found == ["loop", "a/b/x.ipynb"]
    assert [rel for rel, _ in walk(tmp_path, max_depth=1)] == ["loop"]
    for i in range(50):
        (tmp_path / f"f{i:02d}").write_text("")
    assert len(list(walk(tmp_path, max_entries=10))) <= 10
