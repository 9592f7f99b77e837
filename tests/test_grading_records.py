"""labkit.grading.records: what the kernel records comes back as the same value, and nothing read back raises."""

import json

from hypothesis import given
from hypothesis import strategies as st

from labkit.grading.records import RECORDER, Unreadable, decode, parse_records


def _record_in_this_process(value, tmp_path):
    """Run the recorder the kernel runs, here, and read its line back."""
    namespace: dict = {}
    exec(RECORDER, namespace)
    path = tmp_path / f"records-{len(list(tmp_path.iterdir()))}.jsonl"
    path.touch()
    namespace["__labkit_record"](str(path), "n", 0, "x.y", [("answer", lambda: value)])
    records, notes = parse_records(path.read_text(), "n")
    return decode(records[0]["arguments"]["answer"]["value"]), notes


def test_values_come_back_as_they_were(tmp_path):
    import numpy as np

    for value in (None, True, 3, -2**62, 2.5, "Q5_K_M", [1, [2.0, "a"]], {"a": 1, "__float__": "x", "t": "v"},
                  (1, 2), float("inf")):
        got, notes = _record_in_this_process(value, tmp_path)
        want = list(value) if isinstance(value, tuple) else value
        assert got == want and not notes, (value, got)
    got, _ = _record_in_this_process(np.arange(3, dtype=np.float32), tmp_path)
    assert got == [0.0, 1.0, 2.0]
    got, _ = _record_in_this_process(10**400, tmp_path)
    assert got == 10**400
    got, _ = _record_in_this_process(object(), tmp_path)
    assert isinstance(got, Unreadable) and got.kind == "object"


def test_a_dict_that_mimics_a_tag_stays_a_dict(tmp_path):
    got, _ = _record_in_this_process({"t": "float", "v": "inf"}, tmp_path)
    assert got == {"t": "float", "v": "inf"}


def test_forged_lines_are_skipped_with_a_note():
    good = {"nonce": "n", "site": 0, "exercise": "x", "arguments": {"answer": {"value": 1}}}
    text = "\n".join(["not json", "[" * 100_000 + "]" * 100_000, json.dumps({**good, "nonce": "other"}),
                      json.dumps({**good, "site": "0"}), json.dumps(good), json.dumps({**good, "arguments": {}})])
    records, notes = parse_records(text, "n")
    assert records == {0: good}
    assert any("4 line(s)" in n for n in notes) and any("recorded 2 times" in n for n in notes)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                           lambda c: st.lists(c) | st.dictionaries(st.text(), c), max_leaves=25)


@given(json_values)
def test_decode_never_raises(value):
    decode(value)


@given(st.text(max_size=300))
def test_parse_records_never_raises(text):
    parse_records(text, "n")
