"""labkit.grading.decide: pass or fail from recorded answers, in the grader's process, whatever they hold."""

import json

import nbformat

from labkit.check import exercise, validator
from labkit.grading.decide import RunFacts, decide, trusted_namespace
from labkit.grading.rebuild import check_sites
from labkit.grading.records import parse_records


@exercise("test.triple", hint="Multiply by three.")
def _triple(x):
    return 3 * x


@validator("test.above_zero", hint="Any number above zero.")
def _above_zero(answer):
    return None if answer > 0 else f"{answer} is not above zero"


def _master():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import labkit\nx = 4", id="setup"),
                nbformat.v4.new_code_cell('check("test.triple", answer, x=x)', id="check"),
                nbformat.v4.new_code_cell('check("test.above_zero", answer)', id="check2"),
                nbformat.v4.new_code_cell('check("03.kv_cache_gib", kv, layers=labkit.load_config("llama-3.1-70b")'
                                          '["num_hidden_layers"], kv_heads=8, head_dim=128, tokens=32768, '
                                          'bytes_per_value=2)', id="check3")]
    return nb


def _records(*arguments):
    lines = [json.dumps({"nonce": "n", "site": i, "exercise": "x", "arguments": a}) for i, a in arguments]
    return parse_records("\n".join(lines), "n")[0]


def test_the_graders_labkit_decides():
    sites = check_sites(_master())
    records = _records((0, {"answer": {"value": 12}, "x": {"value": 4}}))
    results = decide(sites, records, trusted_namespace(_master()), RunFacts(stopped="the kernel died"))
    assert [r.status for r in results] == ["passed", "not reached", "not reached"]
    assert "the kernel died" in results[1].message and results[1].hint == "Any number above zero."


def test_a_check_that_ran_without_a_record_failed():
    sites = check_sites(_master())
    results = decide(sites, {}, {}, RunFacts(completed_sites={1}))
    assert results[1].status == "failed" and "no answer was recorded" in results[1].message
    assert results[0].status == "not reached"


def test_inputs_from_labkit_are_recomputed_and_a_patch_is_noted():
    master = _master()
    right = 2 * 80 * 8 * 128 * 32768 * 2 / 2**30
    records = _records((2, {"answer": {"value": right / 80}, "layers": {"value": 1}}))  # a patched load_config
    result = decide(check_sites(master), records, trusted_namespace(master), RunFacts())[2]
    assert result.status == "failed" and "the grader used labkit's own value" in result.notes[0]


def test_hostile_values_become_messages():
    sites = check_sites(_master())
    for answer in ({"t": "int", "v": "9" * 5000}, {"t": "float", "v": "1e999"}, {"t": "dict", "v": "x"},
                   {"t": "unreadable", "v": "Evil"}, {"t": "list", "v": [[[[]]]]}, "a string", 10**18):
        records = _records((0, {"answer": {"value": answer}, "x": {"value": 4}}),
                           (1, {"answer": {"value": answer}}), (2, {"answer": {"error": "ValueError: \n✅ passed"}}))
        results = decide(sites, records, {}, RunFacts())
        assert results[0].status == "failed" and results[0].message, answer
    assert "your answer could not be read: ValueError" in results[2].message


def test_edited_checks_fail_and_refused_calls_are_noted():
    sites = check_sites(_master())
    sites[0].status = "edited"
    records = _records((0, {"answer": {"value": 12}, "x": {"value": 4}}))
    result = decide(sites, records, {}, RunFacts(refused={"test.triple": 2}))[0]
    assert result.status == "failed" and "would pass" in result.message
    assert "expected answer for test.triple 2 time(s)" in result.notes[0]
