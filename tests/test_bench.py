"""labkit.bench: timing medians, the roofline, bytes read per token, the plot, the widget, the exercises."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from labkit import bench, check
from labkit.errors import LabkitError
from labkit.models import build_random_model
from labkit.runtimes import Generation

# ----------------------------------------------------------------------------- the roofline


def test_roofline_of_an_8b_bf16_model_on_an_h100():
    # 8.03e9 parameters x 2 bytes at 3350 GB/s: about 209 tokens/s, whatever the runtime
    assert bench.roofline_tokens_per_s(8.03e9 * 2, 3350e9) == pytest.approx(208.6, rel=1e-3)
    est = bench.roofline_estimate(8.03, 16, 3350, vram_gb=80)
    assert est["weights_gb"] == pytest.approx(16.06)
    assert est["max_tokens_per_s"] == pytest.approx(208.6, rel=1e-3)
    assert est["ms_per_token"] == pytest.approx(1000 / 208.6, rel=1e-3)
    assert est["fits"] is True
    assert bench.roofline_estimate(70, 16, 3350, vram_gb=80)["fits"] is False
    assert bench.roofline_estimate(8, 4.89, 1008)["fits"] is None


def test_quantization_raises_the_ceiling_in_proportion_to_bits():
    bf16 = bench.roofline_estimate(8, 16, 1000)["max_tokens_per_s"]
    q4 = bench.roofline_estimate(8, 4, 1000)["max_tokens_per_s"]
    assert q4 == pytest.approx(4 * bf16)


@given(st.one_of(st.just(0), st.just(-1.0), st.just(float("nan")), st.just("1e9"), st.none(), st.just(True)))
def test_roofline_rejects_bad_numbers(bad):
    with pytest.raises(LabkitError):
        bench.roofline_tokens_per_s(bad, 1e9)
    with pytest.raises(LabkitError):
        bench.roofline_tokens_per_s(1e9, bad)


def test_percent_of_roofline():
    assert bench.percent_of_roofline(50, 200) == 25
    assert bench.percent_of_roofline(0, 200) == 0
    with pytest.raises(LabkitError):
        bench.percent_of_roofline(50, 0)


def test_kv_cache_read_matches_the_hand_formula():
    # the seeds' example: Llama 3.1 8B, fp16, 128K context = 2 x 32 x 8 x 128 x 131072 x 2 bytes = ~17.2 GB
    assert bench.kv_cache_bytes_read(32, 8, 128, 131072, 2) == 2 * 32 * 8 * 128 * 131072 * 2
    assert bench.kv_cache_bytes_read(32, 8, 128, 131072, 2) / 1e9 == pytest.approx(17.18, abs=0.01)
    # sliding-window layers read at most the window
    full = bench.kv_cache_bytes_read(6, 1, 256, 4096, 2)
    windowed = bench.kv_cache_bytes_read(6, 1, 256, 4096, 2, sliding_window=512, sliding_layers=5)
    assert windowed == pytest.approx(full * (1 * 4096 + 5 * 512) / (6 * 4096))
    assert bench.kv_cache_bytes_read(6, 1, 256, 100, 2, sliding_window=512, sliding_layers=5) == \
        bench.kv_cache_bytes_read(6, 1, 256, 100, 2)
    with pytest.raises(LabkitError):
        bench.kv_cache_bytes_read(6, 1, 256, 100, sliding_window=512, sliding_layers=7)
    with pytest.raises(LabkitError):
        bench.kv_cache_bytes_read(0, 1, 256, 100)


# ----------------------------------------------------------------------------- bytes per token from files and models


def _write_gguf(path, tied: bool):
    gguf = pytest.importorskip("gguf")
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(2)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_embedding_length(64)
    w.add_tensor("token_embd.weight", np.ones((100, 64), dtype=np.float32))  # 25,600 bytes
    if not tied:
        w.add_tensor("output.weight", np.ones((100, 64), dtype=np.float16))  # 12,800 bytes
    w.add_tensor("blk.0.attn_q.weight", np.ones((64, 64), dtype=np.float32))  # 16,384 bytes
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_header_and_bytes_per_token_untied(tmp_path):
    path = _write_gguf(tmp_path / "untied.gguf", tied=False)
    meta, tensors = bench.read_gguf_header(path)
    assert meta["llama.block_count"] == 2 and meta["general.architecture"] == "llama"
    assert {t.name: t.n_bytes for t in tensors} == {"token_embd.weight": 25600, "output.weight": 12800,
                                                    "blk.0.attn_q.weight": 16384}
    bpt = bench.gguf_bytes_per_token(path, context_tokens=10)
    assert bpt.weights == 25600 + 12800 + 16384
    assert bpt.embedding_not_read == pytest.approx(25600 * 99 / 100)  # a gather reads one row of 100
    assert bpt.kv_cache == 2 * 2 * 16 * 2 * 10 * 2  # K+V x kv heads x head_dim 64/4 x layers x ctx x f16
    assert bpt.total == pytest.approx(bpt.weights - bpt.embedding_not_read + bpt.kv_cache)


def test_gguf_tied_embedding_is_read_in_full(tmp_path):
    bpt = bench.gguf_bytes_per_token(_write_gguf(tmp_path / "tied.gguf", tied=True))
    assert bpt.embedding_not_read == 0
    assert bpt.weights == 25600 + 16384


def test_gguf_reader_rejects_damaged_files(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 20)
    with pytest.raises(LabkitError, match="damaged"):
        bench.read_gguf_header(bad)
    with pytest.raises(LabkitError, match="not a GGUF"):
        (tmp_path / "x.gguf").write_bytes(b"NOPE" * 10)
        bench.read_gguf_header(tmp_path / "x.gguf")


def test_bundled_gguf_bytes_per_token():
    from labkit.models import bundled_gguf_path

    path = bundled_gguf_path()
    bpt = bench.gguf_bytes_per_token(path, context_tokens=100)
    size = path.stat().st_size
    assert 0.95 * size < bpt.weights < size  # tensors are the file minus its header (vocabulary, metadata)
    assert bpt.embedding_not_read == 0  # Gemma ties the embedding to the LM head: read in full
    # Gemma 3 270M: 18 layers, 1 KV head, head_dim 256, f16 cache
    assert bpt.kv_cache == 2 * 18 * 1 * 256 * 100 * 2


def test_gguf_tensor_types(tmp_path):
    types = bench.gguf_tensor_types(_write_gguf(tmp_path / "m.gguf", tied=False))
    assert list(types) == ["F32", "F16"]  # largest first
    assert types["F32"] == {"tensors": 2, "bytes": 25600 + 16384, "share": pytest.approx(41984 / 54784)}
    assert sum(t["share"] for t in types.values()) == pytest.approx(1)


def test_bundled_q4_k_m_file_is_mostly_8_bit():
    from labkit.models import bundled_gguf_path

    types = bench.gguf_tensor_types(bundled_gguf_path())
    # the 262k x 640 embedding (tied to the LM head) is kept in Q8_0 and dominates this small model
    assert next(iter(types)) == "Q8_0" and types["Q8_0"]["share"] > 0.6
    assert "Q4_K" in types


@pytest.mark.parametrize("tied", [False, True])
def test_model_bytes_per_token(tied, tiny_config):
    cfg = {**tiny_config, "tie_word_embeddings": tied}
    model = build_random_model(cfg, dtype="fp32").model
    bpt = bench.model_bytes_per_token(model, context_tokens=10)
    params = sum(p.numel() * 4 for p in model.parameters())
    assert bpt.weights == params
    vocab, hidden, layers, kv_heads = (cfg[k] for k in ("vocab_size", "hidden_size", "num_hidden_layers",
                                                        "num_key_value_heads"))
    embed = vocab * hidden * 4
    assert bpt.embedding_not_read == (0 if tied else pytest.approx(embed * (vocab - 1) / vocab))
    head_dim = hidden // cfg["num_attention_heads"]
    assert bpt.kv_cache == 2 * layers * kv_heads * head_dim * 10 * 4  # fp32 cache
    assert bench.model_bytes_per_token(model, 10, kv_bytes_per_value=2).kv_cache == bpt.kv_cache / 2


# ----------------------------------------------------------------------------- timing


def _gen(times, prompt_tokens=10, text="x"):
    return Generation("fake", "p", text, prompt_tokens, list(times), times[-1] if times else 0.0)


def test_generation_rates():
    g = _gen([0.5, 0.6, 0.7, 0.8, 0.9])
    assert g.ttft_s == 0.5
    assert g.new_tokens == 5
    assert g.decode_tokens_per_s == pytest.approx(4 / 0.4)
    assert g.prompt_tokens_per_s == pytest.approx(20)
    assert math.isnan(_gen([0.5]).decode_tokens_per_s)
    assert "TTFT 500 ms" in str(g)


def test_benchmark_takes_medians_after_warmup_and_varies_the_prompt():
    seen = []
    plans = iter([[9.0, 9.1], [0.2, 0.3, 0.4], [0.1, 0.15, 0.2], [0.3, 0.5, 0.7]])  # first is the warm-up

    def fake(prompt):
        seen.append(prompt)
        return _gen(next(plans), prompt_tokens=20)

    r = bench.benchmark("fake", fake, "Hello", runs=3, warmup=1, bytes_per_token=1e6, bandwidth_bytes_per_s=1e8)
    assert len(seen) == 4 and len(set(seen)) == 4 and all(p.endswith("Hello") for p in seen)
    assert r.ttft_s == pytest.approx(0.2)  # median of 0.2, 0.1, 0.3
    assert r.decode_tokens_per_s == pytest.approx(10.0)  # median of 10, 20, 5
    assert r.prompt_tokens_per_s == pytest.approx(100)
    assert r.roofline_tokens_per_s == pytest.approx(100)
    assert r.percent_of_roofline == pytest.approx(10)
    assert r.as_row()["percent_of_roofline"] == pytest.approx(10)
    assert "10%" in str(r)


def test_benchmark_refuses_runs_without_two_tokens():
    with pytest.raises(LabkitError, match="fewer than 2 tokens"):
        bench.benchmark("fake", lambda p: _gen([0.1]), "Hi", runs=2, warmup=0)
    with pytest.raises(LabkitError):
        bench.benchmark("fake", lambda p: _gen([0.1, 0.2]), "Hi", runs=0)


def test_no_roofline_without_bandwidth():
    r = bench.benchmark("fake", lambda p: _gen([0.1, 0.2, 0.3]), "Hi", runs=1, warmup=0)
    assert r.roofline_tokens_per_s is None and r.percent_of_roofline is None
    assert "n/a" in bench.results_table([r])


# ----------------------------------------------------------------------------- showing results


def _results():
    a = bench.BenchResult("llama.cpp", 3, 90, 32, 0.2, 40.0, 450.0, bytes_per_token=2.5e8, bandwidth_bytes_per_s=2e10)
    b = bench.BenchResult("transformers", 3, 90, 32, 0.5, 8.0, 180.0, bytes_per_token=1.07e9,
                          bandwidth_bytes_per_s=2e10)
    return [a, b]


def test_results_table():
    table = bench.results_table(_results())
    lines = table.splitlines()
    assert len(lines) == 4
    assert "| llama.cpp | 200 | 40.0 | 450 | 250 | 80 | 50% |" in lines


def test_the_roofline_reading_follows_the_percentages():
    below = bench.roofline_reading_markdown(_results(), 20.0)
    assert below.startswith("Nobody reached 100%") and "llama.cpp at **50%**" in below
    fast = bench.BenchResult("llama.cpp", 3, 90, 32, 0.2, 120.0, 450.0, bytes_per_token=2.5e8, bandwidth_bytes_per_s=2e10)
    above = bench.roofline_reading_markdown([fast, _results()[1]], 20.0)
    assert above.startswith("Above 100% here: llama.cpp **150%**") and "transformers" not in above.split(".")[0]
    assert bench.roofline_reading_markdown([bench.BenchResult("x", 1, 1, 1, 0.1, 1.0, 1.0)], 20.0) == ""


def test_the_ceiling_reading_follows_the_share():
    assert "**50%** of the ceiling" in bench.ceiling_reading_markdown(30, 60, 14.6)
    above = bench.ceiling_reading_markdown(90, 60, 14.6)
    assert "**above** the ceiling (150% of it)" in above and "14.6 GB/s" in above


def test_plot_draws_bars_and_each_roofline():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = bench.plot_runtimes(_results())
    ax_ttft, ax_tps = fig.axes
    assert [p.get_height() for p in ax_ttft.patches] == pytest.approx([200, 500])
    assert [p.get_height() for p in ax_tps.patches] == pytest.approx([40, 8])
    roof_y = sorted(seg[0][1] for coll in ax_tps.collections for seg in coll.get_segments())
    assert roof_y == pytest.approx(sorted([2e10 / 2.5e8, 2e10 / 1.07e9]))
    assert {t.get_text() for t in ax_tps.texts} == {"50%", "43%"}
    plt.close(fig)
    with pytest.raises(LabkitError):
        bench.plot_runtimes([])


# ----------------------------------------------------------------------------- exercises


def test_exercises_accept_right_and_reject_wrong_answers():
    check("02.roofline_tokens_per_s", 3350e9 / (8.03e9 * 2), parameters=8.03e9, bytes_per_parameter=2,
          bandwidth_gbps=3350)
    with pytest.raises(AssertionError, match="Hint"):
        check("02.roofline_tokens_per_s", 3350e9 / 8.03e9, parameters=8.03e9, bytes_per_parameter=2,
              bandwidth_gbps=3350)  # forgot the 2 bytes per parameter
    check("02.percent_of_roofline", 25.0, tokens_per_s=50, roofline=200)
    with pytest.raises(AssertionError):
        check("02.percent_of_roofline", 0.25, tokens_per_s=50, roofline=200)
    check("02.decode_tokens_per_s", 10.0, token_times=[0.5, 0.6, 0.7, 0.8, 0.9])
    with pytest.raises(AssertionError):
        check("02.decode_tokens_per_s", 5 / 0.9, token_times=[0.5, 0.6, 0.7, 0.8, 0.9])


# ----------------------------------------------------------------------------- committed GPU results


def test_committed_gpu_results_as_bench_results():
    fake = {"bytes_per_token": {"total": 1e9}, "roofline_measured_tokens_per_s": 100.0, "prompt_tokens": 8,
            "new_tokens": 16, "model": "m", "dtype": "bf16", "gpu": "G",
            "variants": [{"variant": "compiled_loop", "ttft_s": 0.01, "decode_tokens_per_s": 70.0,
                          "prompt_tokens_per_s": 800.0, "runs": [{}, {}, {}]},
                         {"variant": "plain", "ttft_s": 0.02, "decode_tokens_per_s": 20.0,
                          "prompt_tokens_per_s": 400.0, "runs": [{}, {}, {}]},
                         {"variant": "broken", "runs": []}]}
    rows = bench.committed_gpu_results(fake)
    assert [r.runtime for r in rows] == ["generate (eager)", "compiled decode loop"]
    assert [r.percent_of_roofline for r in rows] == pytest.approx([20, 70])
    assert rows[0].runs == 3 and "G" in rows[0].note
    assert bench.committed_gpu_results({}) == []


def test_committed_gpu_results_are_complete():
    results = bench.load_benchmark_results()
    assert results["model"] == "llama-3.1-8b" and results["dtype"] == "bf16"
    assert results["bytes_per_token"]["total"] > 14e9
    variants = {v["variant"]: v for v in results["variants"] if "decode_tokens_per_s" in v}
    assert "plain" in variants and len(variants) >= 2
    for v in variants.values():
        roof = v.get("roofline_measured_tokens_per_s", results["roofline_measured_tokens_per_s"])
        assert v["percent_of_roofline_measured_bw"] == pytest.approx(100 * v["decode_tokens_per_s"] / roof)
        assert v["ttft_s"] > 0 and len(v["runs"]) >= 3
    faster = max(v["percent_of_roofline_measured_bw"] for name, v in variants.items() if name != "plain")
    assert faster >= 50 > variants["plain"]["percent_of_roofline_measured_bw"]


def test_committed_llama_cpp_gpu_results():
    fake = {"bandwidth_gbps": 1000.0, "runs": 5, "new_tokens": 128, "gpu": "G",
            "results": [{"gguf_type": t, "flash_attn": fa, "prompt_tokens": 90, "ttft_ms": 20.0,
                         "decode_tokens_per_s": tps, "prompt_tokens_per_s": 5000.0, "bytes_per_token": b}
                        for t, b, tps in (("F16", 10e9, 70.0), ("Q4_K_M", 2.5e9, 200.0)) for fa in (False, True)]}
    rows = bench.committed_llama_cpp_gpu_results(fake)
    assert [r.runtime for r in rows] == ["llama.cpp CUDA F16", "llama.cpp CUDA Q4_K_M"]
    assert [r.percent_of_roofline for r in rows] == pytest.approx([70, 50])
    assert all("flash attention on" in r.note for r in rows)
    assert len(bench.committed_llama_cpp_gpu_results(fake, flash_attn=False)) == 2
    assert bench.committed_llama_cpp_gpu_results({}) == []
    committed = bench.committed_llama_cpp_gpu_results()  # the real file, when this checkout has it
    if committed:
        f16 = next(r for r in committed if r.runtime.endswith("F16"))
        assert f16.bytes_per_token > 14e9 and 0 < f16.percent_of_roofline < 100
