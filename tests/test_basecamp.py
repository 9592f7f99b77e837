import pytest
from hypothesis import given
from hypothesis import strategies as st

from labkit import basecamp
from labkit.errors import LabkitError


def test_weights_bytes_uses_the_format_size():
    assert basecamp.weights_bytes(1e9, "bf16") == 2e9
    assert basecamp.weights_bytes(1e9, "Q8_0") == pytest.approx(1.0625e9)


def test_what_runs_where_marks_fits_against_memory():
    rows = basecamp.what_runs_where(24 * 2**30, dtypes=("bf16", "Q4_K_M"), sizes_b={"8B": 8.03, "70B": 70.6})
    fits = {(r.model, r.dtype): r.fits for r in rows}
    assert fits == {("8B", "bf16"): True, ("8B", "Q4_K_M"): True, ("70B", "bf16"): False, ("70B", "Q4_K_M"): False}
    assert all(r.needed_bytes == pytest.approx(r.weights_bytes * basecamp.HEADROOM) for r in rows)
    table = basecamp.fit_table(rows)
    assert "✅" in table and "❌" in table and "Q4_K_M" in table


@given(st.one_of(st.floats(max_value=0, allow_infinity=False), st.just(float("nan"))))
def test_what_runs_where_rejects_non_positive_memory(memory):
    with pytest.raises(LabkitError):
        basecamp.what_runs_where(memory)


def test_fit_widget_updates_when_the_slider_moves():
    w = basecamp.fit_widget(default_gib=8)
    slider, output = w.children[0].children[0], w.children[1]
    before = output.value
    slider.value = 100
    after = output.value
    assert before != after and after.count("✅") > before.count("✅")


def test_generate_refuses_a_model_without_tokenizer():
    from labkit.models import build_random_model

    tiny = build_random_model({"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                               "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 50}, dtype="fp32")
    with pytest.raises(LabkitError, match="no tokenizer"):
        basecamp.generate(tiny, "hi")


def test_generate_refuses_zero_tokens(bundled_dense):
    with pytest.raises(LabkitError):
        basecamp.generate(bundled_dense, "hi", max_new_tokens=0)


@pytest.mark.llama
def test_generate_times_both_runtimes(bundled_llama, bundled_dense):
    a = basecamp.generate(bundled_llama, "Paris is the capital of", max_new_tokens=6)
    b = basecamp.generate(bundled_dense, "Paris is the capital of", max_new_tokens=6)
    for g in (a, b):
        assert 0 < g.new_tokens <= 6 and g.total_s > 0 and 0 < g.ttft_s <= g.total_s
        assert g.text.strip()
    assert (a.runtime, b.runtime) == ("llama.cpp", "transformers")


def test_tokens_per_second_exercise():
    from labkit import check

    check("00.tokens_per_second", 20.0, new_tokens=40, seconds=2.0)
    with pytest.raises(AssertionError, match="Hint"):
        check("00.tokens_per_second", 40 / 2.5, new_tokens=40, seconds=2.0)
