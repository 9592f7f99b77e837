"""labkit.check: exercises, validators, slips, and what check(...) says."""


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
