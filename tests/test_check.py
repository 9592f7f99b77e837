"""labkit.check: exercises, validators, slips, and what check(...) says."""


from pathlib import Path

import pytest

from labkit.check import check, exercise, exercises, validator
from labkit.errors import LabkitError


@exercise("test.double", hint="Multiply by two.")
def _double(x):
    return 2 * x


@validator("test.positive", hint="Any number above zero.")
def _positive(answer):
    return None if answer > 0 else f"{answer} is not positive"


def test_check_passes_a_right_answer(capsys):
    check("test.double", 8, x=4)
    assert "✅ [test.double]" in capsys.readouterr().out


def test_check_fails_a_wrong_answer_with_the_hint():
    with pytest.raises(AssertionError) as err:
        check("test.double", 9, x=4)
    assert "Multiply by two." in str(err.value) and "test.double" in str(err.value)


def test_check_fails_a_missing_answer_with_the_hint():
    with pytest.raises(AssertionError, match="no answer yet"):
        check("test.double", None, x=4)


def test_validator_messages_reach_the_learner():
    check("test.positive", 3)
    with pytest.raises(AssertionError, match="-1 is not positive"):
        check("test.positive", -1)


def test_unknown_exercise_lists_known_ones():
    with pytest.raises(LabkitError, match="test.double"):
        check("test.nope", 1)


def test_every_registered_exercise_has_a_hint():
    for ex in exercises().values():
        assert len(ex.hint) > 10, ex.id


# ----------------------------------------------------------------------------- slips and distances


def test_a_wrong_number_says_how_far_off_without_the_answer():
    from labkit.check import evaluate

    verdict = evaluate("test.double", 30, x=4)  # expected 8
    assert not verdict.passed and "3.8x too large" in verdict.message
    assert "8" not in verdict.message.replace("3.8", "")  # the expected value is not printed
    close = evaluate("test.double", 8.5, x=4)
    assert "close (within 10%)" in close.message and "too high" in close.message
    assert "10^3 times too small" in evaluate("test.double", 0.008, x=4).message


def test_the_standard_slips_are_named():
    from labkit.check import evaluate

    args = dict(layers=80, kv_heads=8, head_dim=128, tokens=32768, bytes_per_value=2)
    right = 2 * 80 * 8 * 128 * 32768 * 2 / 2**30
    assert evaluate("03.kv_cache_gib", right, **args).passed
    half = evaluate("03.kv_cache_gib", right / 2, **args)
    assert not half.passed and "only K or only V" in half.slip and "only K or only V" in half.message
    gb = evaluate("03.kv_cache_gib", right * 2**30 / 1e9, **args)
    assert "GB" in gb.slip and "GiB" in gb.slip
    assert evaluate("03.kv_cache_gib", right * 8, **args).slip.startswith("counting bits")
    assert evaluate("03.kv_cache_gib", right * 3, **args).slip is None  # no slip gives 3x


def test_query_heads_slip_reads_the_config():
    from labkit.check import evaluate
    from labkit.models import load_config

    cfg = load_config("qwen2.5-7b")
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    right = 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * head_dim * 2
    wrong = 2 * cfg["num_hidden_layers"] * cfg["num_attention_heads"] * head_dim * 2
    assert evaluate("01.kv_bytes_per_token", right, config="qwen2.5-7b").passed
    assert "query" in evaluate("01.kv_bytes_per_token", wrong, config="qwen2.5-7b").slip


def test_a_slip_that_changes_nothing_is_not_named():
    from labkit.check import evaluate

    verdict = evaluate("02.percent_of_roofline", 5.0, tokens_per_s=10, roofline=100)  # 10% expected
    # the 'upside down' slip gives 1000: 5.0 matches no slip
    assert verdict.slip is None and "2x too small" in verdict.message


def test_min_gpus_does_not_hand_out_the_answer():
    import warnings

    from labkit.check import evaluate
    from labkit.vram import estimate_inference, gpus_needed

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        need = gpus_needed(estimate_inference("llama-3.1-70b", "bf16", context=32768), 80)
    inputs = dict(model="llama-3.1-70b", dtype="bf16", context=32768, gb=80)
    assert evaluate("03.min_gpus", need, **inputs).passed
    too_few = evaluate("03.min_gpus", 1, **inputs)
    assert not too_few.passed and "does NOT fit" in too_few.message and "fewest" not in too_few.message
    assert "fewer do too" in evaluate("03.min_gpus", need + 3, **inputs).message
    assert "whole number" in evaluate("03.min_gpus", 2.5, **inputs).message


def test_prediction_is_checked_against_the_measurement():
    from labkit.check import evaluate

    assert evaluate("02.predict_thread_speedup", 1.3, tokens_per_s_1=20.0, tokens_per_s_2=25.0).passed
    off = evaluate("02.predict_thread_speedup", 2.0, tokens_per_s_1=20.0, tokens_per_s_2=22.0)
    assert not off.passed and "helped less than you expected" in off.message
    assert "not what two cores" in evaluate("02.predict_thread_speedup", 4, tokens_per_s_1=20.0,
                                            tokens_per_s_2=22.0).message


def test_the_sealed_check_only_says_the_grader_will_check(monkeypatch, capsys):
    """In the copy of labkit a submission runs with while graded, check() neither passes nor fails anything."""
    import importlib

    module = importlib.import_module("labkit.check")  # `labkit.check` itself is the function
    monkeypatch.setattr(module, "_SEALED", True)
    assert check("test.double", 9, x=4) is None  # wrong, yet no AssertionError: the grader decides later
    assert "the grader checks this answer after the run" in capsys.readouterr().out


# ----------------------------------------------------------------------------- shapes, names, tuples, tolerances


@exercise("test.pair", hint="Divide, then divide again.", labels=("contiguous", "paged"), answer="numbers",
          slips={"swapping the two": lambda expected, **_: (expected[1], expected[0])})
def _pair(capacity, a, b):
    return capacity // a, capacity // b


@validator("test.rows", hint="Return a (rows, 1) tensor.",
           slips={"dropping keepdim=True (shape (rows,) instead of (rows, 1))": lambda answer: answer.ndim == 1})
def _rows(answer):
    import numpy as np

    return None if np.array_equal(answer.sum(-1, keepdims=True), [[3.0], [7.0]]) else "the sums are wrong"


def test_a_tuple_answer_names_the_element_that_is_off():
    from labkit.check import evaluate

    assert evaluate("test.pair", (32, 170), capacity=65536, a=2048, b=384).passed
    one_off = evaluate("test.pair", (32, 168), capacity=65536, a=2048, b=384)
    assert "the 2nd (paged) is 168" in one_off.message and "contiguous right" in one_off.message
    assert "the 1st (contiguous)" in evaluate("test.pair", [16, 170], capacity=65536, a=2048, b=384).message
    assert "got 3 values" in evaluate("test.pair", (32, 170, 1), capacity=65536, a=2048, b=384).message
    assert "a tuple of 2 (contiguous, paged)" in evaluate("test.pair", 32, capacity=65536, a=2048, b=384).message
    swapped = evaluate("test.pair", (170, 32), capacity=65536, a=2048, b=384)
    assert swapped.slip == "swapping the two" and "swapping the two" in swapped.message


def test_a_validator_never_crashes_on_an_oddly_shaped_answer():
    import numpy as np

    from labkit.check import evaluate

    assert evaluate("test.rows", np.array([[1.0, 2.0], [3.0, 4.0]])).passed
    odd = evaluate("test.rows", "not an array")  # str has no .sum: AttributeError inside the validator
    assert not odd.passed and odd.message.startswith("your answer could not be used: AttributeError")
    flat = evaluate("test.rows", np.array([1.0, 2.0]))  # keepdims on a 1-D array: numpy raises inside the validator
    assert not flat.passed and flat.slip.startswith("dropping keepdim=True") and "keepdim" in flat.message


def test_names_are_compared_without_case():
    from labkit.check import same_name

    assert same_name("q4_k_m", "Q4_K_M") and same_name(" Q4_K_M ", "Q4_K_M")
    assert not same_name("Q4_K_S", "Q4_K_M") and not same_name(4, "Q4_K_M")


def test_the_tolerance_never_reads_zero_percent():
    from labkit.check import evaluate, tolerance_text

    assert tolerance_text(0.01) == "±1%" and tolerance_text(1e-3) == "±0.1%"
    assert tolerance_text(1e-4) == "±0.01%" and tolerance_text(1e-6) == "±0.0001%" and tolerance_text(0) == "exact"
    for rtol in (1e-4, 1e-5, 1e-6, 1e-9):
        assert "0.0%" not in tolerance_text(rtol).replace("0.0001", "")
    assert "±0.0001%" in evaluate("06.speedup", 3.01, naive_ms=30.0, fused_ms=10.0).message


def test_a_slip_as_close_as_the_tolerance_is_still_named():
    """04.nf4_bits: 4.125 is 0.05% from 4.127; a slip test looser than the exercise's tolerance would miss it."""
    from labkit.check import evaluate

    verdict = evaluate("04.nf4_bits", 4.125, block_size=64, nested_block=256)
    assert not verdict.passed and "second-level scale" in verdict.slip


# ----------------------------------------------------------------------------- the course's exercises

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _course_exercises() -> dict:
    import nbformat

    from labkit.grading import exercise_ids

    registry = exercises()
    used = {i for path in NOTEBOOKS for i in exercise_ids(nbformat.read(path, as_version=4))}
    assert used <= set(registry), f"checked in a notebook but never registered: {sorted(used - set(registry))}"
    return {i: registry[i] for i in sorted(used)}


def test_every_numeric_exercise_in_the_course_declares_two_slips():
    """A wrong number should name the learner's likely mistake, not only say how far off it is: every numeric
    exercise of the course declares at least two slips (each one is tested where it is registered)."""
    numeric = {i: e for i, e in _course_exercises().items() if e.answer in ("number", "numbers")}
    assert len(numeric) > 20
    assert {i: len(e.slips) for i, e in numeric.items() if len(e.slips) < 2} == {}


def test_every_exercise_of_04_to_06_declares_two_slips_validators_too():
    ours = {i: e for i, e in _course_exercises().items() if i[:2] in ("04", "05", "06")}
    assert any(e.validate for e in ours.values())
    assert {i: len(e.slips) for i, e in ours.items() if len(e.slips) < 2} == {}


@pytest.mark.parametrize("exercise_id, answer, inputs, named", [
    ("00.decode_ceiling", 1e9 / 2e11, dict(bandwidth_bytes_per_s=2e11, bytes_per_token=1e9), "seconds per token"),
    ("00.decode_ceiling", 200 * 1e-9, dict(bandwidth_bytes_per_s=2e11, bytes_per_token=1e9), "GB/s"),
    ("00.tokens_per_second", 0.032, dict(new_tokens=32, seconds=1.0), "milliseconds"),
    ("02.decode_tokens_per_s", 0.1, dict(token_times=[0.0, 0.1, 0.2, 0.3]), "seconds per token"),
    ("03.kv_equals_weights_tokens", None, dict(model="llama-3.1-8b"), "counting bits"),
])
def test_the_slips_added_to_00_to_03_are_named(exercise_id, answer, inputs, named):
    from labkit.check import evaluate

    if answer is None:  # a factor of the right answer
        answer = exercises()[exercise_id].expected(**inputs) * 8
    verdict = evaluate(exercise_id, answer, **inputs)
    assert not verdict.passed and named in (verdict.slip or "")


def test_moe_slip_for_billions():
    from labkit.catalog import count_parameters
    from labkit.check import evaluate

    right = count_parameters("mixtral-8x7b").active
    assert "billions" in evaluate("01.moe_active_params", right / 1e9, config="mixtral-8x7b").slip
