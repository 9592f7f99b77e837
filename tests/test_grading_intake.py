"""labkit.grading.intake: every folder graded or skipped with the reason; the right copy, read safely."""

import copy
import json
import os

import nbformat
import pytest

from labkit.errors import LabkitError
from labkit.grading.intake import find_copies, list_folders, read_notebook
from labkit.grading.safe_io import Refused


def test_every_entry_is_a_student_or_skipped_with_the_reason(tmp_path):
    for name in ("ada", ".dotted", "x y", "x_y", "pipe|name", "__MACOSX"):
        (tmp_path / name).mkdir()
    (tmp_path / "notes.txt").write_text("")
    (tmp_path / "link").symlink_to(tmp_path / "ada")
    os.mkfifo(tmp_path / "pipe")
    folders = list_folders(tmp_path)
    assert folders.students == [".dotted", "ada", "pipe|name", "x y", "x_y"]
    reasons = dict(folders.skipped)
    assert set(reasons) == {"__MACOSX", "link", "notes.txt", "pipe"}
    assert "symbolic link" in reasons["link"] and "FIFO" in reasons["pipe"] and "macOS" in reasons["__MACOSX"]
    with pytest.raises(LabkitError, match="not a folder"):
        list_folders(tmp_path / "missing")


def test_the_newest_copy_is_graded_and_the_others_named(tmp_path):
    (tmp_path / "old").mkdir()
    for i, name in enumerate(["03_vram.ipynb", "03_vram (1).ipynb", "old/03_vram.ipynb", "03_vram-Copy2.ipynb",
                              "03_vram_notes.ipynb"]):
        (tmp_path / name).write_text("{}")
        os.utime(tmp_path / name, (1000 + i, 1000 + i))
    choice = find_copies(tmp_path, "03_vram.ipynb")
    assert choice.relative == "03_vram-Copy2.ipynb"
    assert "4 copies" in choice.notes[0] and "old/03_vram.ipynb" in choice.notes[0]
    assert "03_vram_notes" not in choice.notes[0]


def test_a_special_file_as_the_only_copy_is_refused(tmp_path):
    os.mkfifo(tmp_path / "a.ipynb")
    choice = find_copies(tmp_path, "a.ipynb")
    assert choice.path is None and "FIFO" in choice.refused
    assert find_copies(tmp_path, "b.ipynb").relative is None  # nothing handed in


def _correct(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1", id="a"), nbformat.v4.new_markdown_cell("# hi", id="b")]
    return nb


def test_a_notebook_off_the_schema_is_read_cell_by_cell_with_a_note(tmp_path):
    odd = {"nbformat": 4, "nbformat_minor": 5, "metadata": {"kernelspec": 3},
           "cells": [{"cell_type": "code", "source": ["x = ", "1"], "id": "a"}, {"cell_type": "markdown"}]}
    (tmp_path / "a.ipynb").write_text(json.dumps(odd))
    nb, notes = read_notebook(tmp_path / "a.ipynb")
    assert [c.source for c in nb.cells] == ["x = 1", ""] and nb.cells[0]["id"] == "a"
    assert "does not follow the nbformat schema" in notes[0]


def test_old_formats_are_converted_with_a_note(tmp_path):
    nb = _correct(tmp_path)
    (tmp_path / "v3.ipynb").write_text(nbformat.writes(nbformat.convert(copy.deepcopy(nb), 3), version=3))
    data = json.loads(nbformat.writes(nb))
    data["nbformat_minor"] = 0
    for cell in data["cells"]:
        del cell["id"]
    (tmp_path / "v40.ipynb").write_text(json.dumps(data))
    v3, notes3 = read_notebook(tmp_path / "v3.ipynb")
    v40, notes40 = read_notebook(tmp_path / "v40.ipynb")
    assert [c.source for c in v3.cells] == [c.source for c in v40.cells] == ["x = 1", "# hi"]
    assert "nbformat 3" in notes3[0] and "without cell ids" in notes40[0]


@pytest.mark.parametrize("content, reason", [
    (b"\xff\xfe", "not UTF-8"), (b"[1, 2]", "not a notebook"), (b'{"nbformat": 5, "cells": []}', "nbformat 3 or 4"),
    (b'{"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [{"cell_type": "code", "source": 3}]}',
     "source is not text"),
    (b'{"nbformat": 4, "cells": ' + b"[" * 1000 + b"]" * 1000 + b"}", "nested"),
    (b'{"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [1, 2]}', "JSON objects"),
])
def test_bad_notebooks_are_refused_with_the_reason(tmp_path, content, reason):
    (tmp_path / "a.ipynb").write_bytes(content)
    with pytest.raises(Refused, match=reason):
        read_notebook(tmp_path / "a.ipynb")


from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                     lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                     max_leaves=12)
_cell = st.fixed_dictionaries({"cell_type": st.sampled_from(["code", "markdown", "raw", "other", 3]),
                               "source": st.one_of(st.text(max_size=80), st.lists(st.text(max_size=20), max_size=3),
                                                   _json),
                               "metadata": st.one_of(st.just({}), _json)},
                              optional={"id": st.one_of(st.text(max_size=10), _json), "outputs": _json,
                                        "execution_count": _json})
_notebook = st.fixed_dictionaries({"nbformat": st.sampled_from([3, 4, 4, 5, "4"]),
                                   "nbformat_minor": st.sampled_from([0, 4, 5, None]),
                                   "metadata": st.one_of(st.just({}), _json),
                                   "cells": st.lists(_cell, max_size=6)})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_notebook)
@example({"nbformat": 4, "nbformat_minor": 0, "metadata": {},  # nbformat reads it; its source is a bool
          "cells": [{"cell_type": "code", "source": True, "metadata": {}}]})
@example({"nbformat": 4, "nbformat_minor": 5, "metadata": {},
          "cells": [{"cell_type": "code", "source": {"a": 1}, "metadata": {}, "id": "x"}]})
def test_whatever_is_handed_in_is_read_or_refused_and_never_breaks_the_rebuild(tmp_path, data):
    """Bad input of every shape: refused with a reason, or read and rebuilt; never an exception."""
    from pathlib import Path

    from labkit.grading.rebuild import prepare_submission, suspicious_code

    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(data))
    try:
        nb, _ = read_notebook(path)
    except Refused:
        return
    master = nbformat.read(Path(__file__).parent / "grading_corpus" / "master" / "corpus.ipynb", as_version=4)
    prepared = prepare_submission(master, nb, "/tmp/r", "n")
    assert len(prepared.sites) == 4
    suspicious_code([c.source for c in nb.cells if c.cell_type == "code"])
