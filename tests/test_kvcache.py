"""labkit.kvcache: the real cache against the formula, cached vs uncached decoding, quantized caches and the
needle-in-a-haystack prompt (the PagedAttention simulator: test_paged.py)."""

import math

import pytest
import torch

from labkit import LabkitError, kvcache, vram
from labkit.models import build_random_model

# Gemma 3's layout in miniature: 6 layers, every 6th global, a 16-token window, one KV head (MQA)
TINY_GEMMA3 = dict(num_hidden_layers=6, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                   num_key_value_heads=1, head_dim=16, sliding_window=16, vocab_size=512,
                   layer_types=["sliding_attention"] * 5 + ["full_attention"])


@pytest.fixture(scope="module")
def tiny_gemma3():
    return build_random_model("gemma-3-270m", dtype="fp32", device="cpu", **TINY_GEMMA3).model


@pytest.fixture
def tiny_llama(tiny_config):
    return build_random_model(tiny_config, dtype="fp32", device="cpu").model


# ----------------------------------------------------------------------------- the real cache


@pytest.mark.parametrize("tokens", [5, 15, 16, 40])
def test_cache_storage_equals_the_formula_byte_for_byte(tiny_gemma3, tokens):
    rows = kvcache.cache_by_layer(tiny_gemma3, tokens, decode_steps=2)
    assert [r.kind for r in rows] == ["sliding"] * 5 + ["full"]
    for r in rows:
        assert r.measured_bytes == r.formula_bytes, kvcache.cache_table(rows)
    held = tokens + 2
    assert rows[-1].tokens_kept == held  # the global layer keeps everything
    assert sum(r.measured_bytes for r in rows) == vram.kv_cache_bytes(tiny_gemma3.config, held, kv_dtype="fp32")


def test_sliding_layers_keep_window_minus_one_and_spill_after_the_prompt(tiny_gemma3):
    after_prompt = kvcache.cache_by_layer(tiny_gemma3, 40, decode_steps=0)
    sliding = after_prompt[0]
    assert sliding.tokens_kept == 15  # window - 1: the next token makes it 16
    # storage still holds the whole prompt until the next step copies the window out
    assert sliding.measured_bytes == 2 * 1 * 16 * 40 * 4 > sliding.formula_bytes


def test_the_bundled_model_cache_matches_vram(bundled_dense):
    rows = kvcache.cache_by_layer(bundled_dense.model, 40, decode_steps=1)
    assert len(rows) == 18 and {r.kind for r in rows} == {"sliding", "full"}
    assert all(r.measured_bytes == r.formula_bytes for r in rows)


def test_per_layer_formula_sums_to_the_total():
    for name in ("gemma-3-270m", "llama-3.1-8b", "deepseek-v2-lite", "gemma-2-2b"):
        for tokens in (1, 600, 5000):
            assert sum(vram.kv_cache_bytes_per_layer(name, tokens)) == pytest.approx(vram.kv_cache_bytes(name, tokens))


def test_attention_families_order_the_cache():
    rows = {r["model"]: r for r in kvcache.attention_family_table(["phi-3-mini", "llama-3.1-8b", "gemma-3-270m"])}
    assert rows["phi-3-mini"]["attention"] == "MHA" and rows["llama-3.1-8b"]["attention"] == "GQA"
    assert rows["gemma-3-270m"]["attention"] == "MQA"
    assert rows["phi-3-mini"]["KiB/token"] > rows["llama-3.1-8b"]["KiB/token"] > rows["gemma-3-270m"]["KiB/token"]


def test_cache_by_layer_rejects_bad_context(tiny_gemma3):
    for bad in (0, -3, 2.5, True):
        with pytest.raises(LabkitError, match="tokens"):
            kvcache.cache_by_layer(tiny_gemma3, bad)


# ----------------------------------------------------------------------------- decoding


def test_cached_and_uncached_decoders_produce_identical_tokens(tiny_llama):
    ids = torch.randint(0, 256, (1, 7), generator=torch.Generator().manual_seed(1))
    a = kvcache.greedy_decode(tiny_llama, ids, 20, use_cache=False)
    b = kvcache.greedy_decode(tiny_llama, ids, 20, use_cache=True)
    assert a.tokens == b.tokens
    assert a.sequence_lengths == b.sequence_lengths == list(range(7, 27))
    # and both equal transformers' own greedy generate
    ref = tiny_llama.generate(ids, max_new_tokens=20, min_new_tokens=20, do_sample=False, pad_token_id=0)
    assert ref[0, 7:].tolist() == a.tokens


def test_identical_tokens_on_the_bundled_model(bundled_dense):
    ids = bundled_dense.tokenizer("The capital of France is", return_tensors="pt").input_ids
    a = kvcache.greedy_decode(bundled_dense.model, ids, 8, use_cache=False)
    b = kvcache.greedy_decode(bundled_dense.model, ids, 8, use_cache=True)
    assert a.tokens == b.tokens


def test_greedy_decode_rejects_bad_input(tiny_llama):
    with pytest.raises(LabkitError, match="new_tokens"):
        kvcache.greedy_decode(tiny_llama, torch.zeros(1, 3, dtype=torch.long), 0)
    with pytest.raises(LabkitError, match="one sequence"):
        kvcache.greedy_decode(tiny_llama, torch.zeros(2, 3, dtype=torch.long), 3)


# ----------------------------------------------------------------------------- quantized caches


def test_quantized_cache_is_smaller_and_close(tiny_llama):
    if kvcache.quantized_cache_backend() is None:
        pytest.skip("no quantized-cache backend installed (optimum-quanto or hqq)")
    ids = torch.randint(0, 256, (1, 200), generator=torch.Generator().manual_seed(2))
    full, int4, int2 = kvcache.quantized_cache_cost(tiny_llama, ids, prompt_tokens=64, nbits=(4, 2),
                                                    residual_length=16)
    assert full.top1_agreement == 1.0
    assert int4.cache_bytes < 0.45 * full.cache_bytes  # 4 bits + scales vs 32 bits, plus a 16-token residual
    assert int2.cache_bytes < int4.cache_bytes
    assert int4.top1_agreement >= int2.top1_agreement - 0.05
    assert math.isfinite(int4.perplexity) and int4.perplexity > 0
    # notebook 05 quotes how many recent tokens stay unquantized: at most residual_length, all for the full cache
    assert full.full_precision_tokens == full.tokens and 0 <= int4.full_precision_tokens < 16


def test_quantized_cache_on_a_model_with_sliding_layers(tiny_gemma3):
    if kvcache.quantized_cache_backend() is None:
        pytest.skip("no quantized-cache backend installed (hqq or optimum-quanto)")
    ids = torch.randint(0, 512, (1, 40), generator=torch.Generator().manual_seed(3))
    full, int4 = kvcache.quantized_cache_cost(tiny_gemma3, ids, prompt_tokens=8, nbits=(4,), residual_length=8)
    assert int4.cache_bytes < full.cache_bytes and int4.top1_agreement > 0.5


def test_make_cache_rejects_unknown_kind(tiny_llama):
    with pytest.raises(LabkitError, match="cache kind"):
        kvcache.make_cache(tiny_llama, "paged")


def test_llama_cpp_quantized_cache_types_shrink_the_cache():
    pytest.importorskip("llama_cpp")
    text = kvcache.filler_text()[:600]
    f16, q8, q4 = kvcache.llama_cpp_cache_types(text, n_ctx=256)
    assert f16.top1_agreement == 1.0
    assert f16.reported_bytes and q8.reported_bytes and q4.reported_bytes
    assert q8.reported_bytes == pytest.approx(f16.reported_bytes * 8.5 / 16, rel=0.01)
    assert q4.reported_bytes == pytest.approx(f16.reported_bytes * 4.5 / 16, rel=0.01)
    assert q8.top1_agreement > 0.8


def test_llama_cpp_cache_types_reject_unknown_type():
    with pytest.raises(LabkitError, match="q4_0"):
        kvcache.llama_cpp_cache_types("hello", cache_types=("f16", "q3"))


# ----------------------------------------------------------------------------- needle in a haystack


def words(text):
    return len(text.split())


def test_haystack_puts_the_needle_at_the_depth():
    needle = "The secret number is 4321."
    first = kvcache.build_haystack(words, 300, 0.0, needle)
    last = kvcache.build_haystack(words, 300, 1.0, needle)
    middle = kvcache.build_haystack(words, 300, 0.5, needle)
    assert first.startswith(needle)
    assert last.split(kvcache.QUESTION)[0].endswith(needle)
    at = middle.index(needle) / len(middle)
    assert 0.35 < at < 0.65
    assert 250 < words(middle) <= 300


def test_haystack_rejects_a_needle_longer_than_the_context():
    with pytest.raises(LabkitError, match="more than the context"):
        kvcache.build_haystack(words, 10, 0.5, "word " * 20)
    with pytest.raises(LabkitError, match="depth"):
        kvcache.build_haystack(words, 100, 1.5, "x")
    with pytest.raises(LabkitError, match="context_tokens"):
        kvcache.build_haystack(words, 0, 0.5, "x")


def test_needle_run_with_the_bundled_model(bundled_llama):
    trials = kvcache.needle_in_haystack(bundled_llama.model, [96], depths=(0.0, 1.0), progress=False)
    assert len(trials) == 2 and all(len(t.secret) == 4 for t in trials)
    acc = kvcache.needle_accuracy(trials)
    assert set(acc) == {(96, 0.0), (96, 1.0)} and all(0 <= v <= 1 for v in acc.values())


def test_exercises_compute_their_answers():
    from labkit.check import check

    check("05.sliding_cache_bytes", vram.kv_cache_bytes("gemma-3-270m", 2048, kv_dtype="fp32"),
          model="gemma-3-270m", tokens=2048)
    with pytest.raises(AssertionError, match="Hint"):
        check("05.sliding_cache_bytes", 2 * vram.kv_cache_bytes("gemma-3-270m", 2048, kv_dtype="fp32"),
              model="gemma-3-270m", tokens=2048)


def test_sliding_cache_slips_are_named():
    from labkit.check import evaluate

    inputs = dict(model="gemma-3-270m", tokens=2048, kv_dtype="fp32")
    right = vram.kv_cache_bytes("gemma-3-270m", 2048, kv_dtype="fp32")
    for answer, named in [(2 * 18 * 1 * 256 * 2048 * 4, "every layer as global"), (right / 2, "only K or only V"),
                          (right * 4, "query heads"), (right / 2**30, "GiB")]:
        verdict = evaluate("05.sliding_cache_bytes", answer, **inputs)
        assert not verdict.passed and named in verdict.slip and named in verdict.message


# ----------------------------------------------------------------------------- what notebook 05 says in numbers


def _run(use_cache, seconds):
    return kvcache.DecodeRun(use_cache, [1] * len(seconds), list(seconds), [5 + i for i in range(len(seconds))], 5)


def test_decode_summary_says_whether_the_total_bent():
    bent = kvcache.decode_summary_markdown(_run(False, [0.1] * 4 + [0.15] * 4 + [0.3] * 4),
                                           _run(True, [0.5] + [0.1] * 11))
    assert "(3.0x)" in bent and "bends upwards" in bent and "**100 ms**" in bent
    flat = kvcache.decode_summary_markdown(_run(False, [0.1] * 11 + [0.11]), _run(True, [0.5] + [0.1] * 11))
    assert "bends upwards" not in flat and "grew only 1.0x" in flat
    with pytest.raises(LabkitError, match="two runs"):
        kvcache.decode_summary_markdown(_run(False, []), _run(True, [0.1]))


def _trial(context, depth, found):
    return kvcache.NeedleTrial(context, depth, "4821", "4821" if found else "1234", found)


def test_needle_markdown_counts_and_names_the_misses():
    all_found = kvcache.needle_markdown([_trial(256, d, True) for d in (0, 0.5, 1)])
    assert "**3 of 3**" in all_found and "no weak spot" in all_found
    some = kvcache.needle_markdown([_trial(8192, 0.5, True), _trial(65536, 0.5, False), _trial(65536, 0, False)],
                                   window=32768)
    assert "**1 of 3**" in some and "65,536 tokens (beyond its window): 0/2" in some and "'1234' for 4821" in some
    runs = kvcache.committed_needle_results({"gpu": "H100", "window": 32768, "needle": [
        {"context_tokens": 4096, "depth": 0.5, "secret": "1", "answer": "1", "found": True}]})
    assert runs["device"] == "H100" and runs["trials"][0].found
    assert kvcache.committed_needle_results({"needle": []}) is None


def test_gpu_results_say_what_the_committed_run_measured():
    gpu = kvcache.committed_gpu_results()
    if gpu is None:
        pytest.skip("no committed kv_cache_gpu results")
    table = kvcache.gpu_results_table(gpu)
    assert "int4 (" not in table and "\nint4 " in table  # the label is whole, the backend in the header
    text = kvcache.gpu_results_markdown(gpu, sum(vram.weight_bytes("llama-3.1-8b", "bf16").values()))
    assert "16.06 GB (14.96 GiB)" in text and "slower" in text
    off = [r for r in gpu["quantized"] if r.get("cache_tensor_bytes", 0) > 1.05 * r.get("formula_bytes", 1)]
    assert ("real memory" in text) == bool(off)


def test_family_table_flags_a_context_beyond_the_window():
    rows = {r["model"]: r for r in kvcache.attention_family_table(["phi-3-mini", "llama-3.1-8b"], tokens=32768)}
    assert rows["phi-3-mini"]["context window"] == "4k ⚠ beyond" and rows["llama-3.1-8b"]["context window"] == "128k"
    assert rows["phi-3-mini"]["KiB/token"] == 3 * rows["llama-3.1-8b"]["KiB/token"]  # 384 vs 128 KiB: notebook 05
