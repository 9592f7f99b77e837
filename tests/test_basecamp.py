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


def test_generate_refuses_a_model_without_tokenizer(tiny_config):
    from labkit.models import build_random_model

    tiny = build_random_model(tiny_config, dtype="fp32")
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


def test_decode_ceiling_exercise_divides_bandwidth_by_bytes_per_token():
    from labkit import check

    check("00.decode_ceiling", 30e9 / 250e6, bandwidth_bytes_per_s=30e9, bytes_per_token=250e6)
    with pytest.raises(AssertionError, match="Hint"):
        check("00.decode_ceiling", 30 / 250e6, bandwidth_bytes_per_s=30e9, bytes_per_token=250e6)  # GB/s, not bytes/s


def test_cold_and_warm_returns_the_first_call_and_a_median_later_one(bundled_dense):
    cold, warm = basecamp.cold_and_warm(bundled_dense, "Paris is the capital of", max_new_tokens=3, warm_runs=3)
    assert cold is not warm and cold.new_tokens > 0 and warm.new_tokens > 0
    given = basecamp.generate(bundled_dense, "Paris is", max_new_tokens=2)
    assert basecamp.cold_and_warm(bundled_dense, "Paris is", 2, warm_runs=1, cold=given)[0] is given
    with pytest.raises(LabkitError, match="warm_runs"):
        basecamp.cold_and_warm(bundled_dense, "Paris is", 2, warm_runs=0)


def test_chat_renders_the_gemma_format_for_the_base_model(bundled_dense):
    g = basecamp.chat(bundled_dense, "What is the capital of France?", max_new_tokens=4)
    assert "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n" in g.prompt
    assert 0 < g.new_tokens <= 4
    with pytest.raises(LabkitError, match="question"):
        basecamp.chat(bundled_dense, "  ")


@pytest.mark.llama
def test_chat_through_llama_cpp_uses_the_gemma_turns(bundled_llama):
    g = basecamp.chat(bundled_llama, "What is the capital of France?", max_new_tokens=4)
    assert g.runtime == "llama.cpp" and 0 < g.new_tokens <= 4 and g.total_s > 0
    assert bundled_llama.model.chat_format == "gemma"


@pytest.mark.parametrize("runtime", ["transformers", "llama.cpp"])
def test_instruct_model_offline_says_what_is_missing(runtime, capsys):
    from huggingface_hub import try_to_load_from_cache

    if runtime == "llama.cpp":
        pytest.importorskip("llama_cpp")
    repo, filename = basecamp.INSTRUCT_GGUF if runtime == "llama.cpp" else (basecamp.INSTRUCT_HUB_ID, "config.json")
    if isinstance(try_to_load_from_cache(repo, filename), str):
        pytest.skip(f"{repo} is in this machine's Hub cache, so it loads offline")
    assert basecamp.load_instruct_model(runtime) is None
    out = capsys.readouterr().out
    assert "offline" in out and "Notebook 07" in out and "Qwen2.5-0.5B-Instruct" in out


def test_show_answers_says_which_answers_stopped(capsys):
    from labkit.runtimes import Generation

    stopped = Generation("llama.cpp", "q", "Paris.", 3, [0.1, 0.2], 0.2)
    rambled = Generation("llama.cpp", "q", "and then " * 10, 3, [0.1] * 8, 0.9)
    basecamp.show_answers("Capital of France?", {"instruct": stopped, "base": rambled}, max_new_tokens=8)
    out = capsys.readouterr().out
    assert "instruct  (2 tokens in 0.2 s, stopped by itself)" in out
    assert "base  (8 tokens in 0.9 s, hit the token limit)" in out


@pytest.mark.llama
def test_llama_cpp_loads_quietly_unless_asked(capfd):
    pytest.importorskip("llama_cpp")
    from labkit.models import load_llama_cpp

    load_llama_cpp(n_ctx=256)
    quiet = capfd.readouterr()
    assert "llama_kv_cache" not in quiet.err + quiet.out  # the SWA-cache warning the issue saw
    load_llama_cpp(n_ctx=256, verbose=True)
    loud = capfd.readouterr()
    assert "llama_kv_cache" in loud.err + loud.out
    load_llama_cpp(n_ctx=256)  # and quiet again afterwards
    assert "llama_kv_cache" not in capfd.readouterr().err
