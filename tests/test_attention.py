"""labkit.attention: naive and tiled attention equal PyTorch's SDPA over many shapes (hypothesis), the
cost formulas match what the code allocates, the sweep measures, bad input is refused clearly."""

import math
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit import LabkitError, check
from labkit import attention as A

TOL = {torch.float32: 2e-5, torch.float64: 1e-10, torch.bfloat16: 2e-2}


def reference(q, k, v, causal=False, window=None):
    """SDPA's math backend in float64: the ground truth every implementation is held to."""
    mask = A.attention_mask(q.shape[2], k.shape[2], causal, window) if window else None
    return F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask,
                                          is_causal=causal and mask is None,
                                          enable_gqa=q.shape[1] != k.shape[1])


problems = st.fixed_dictionaries(dict(
    batch=st.integers(1, 2), kv_heads=st.integers(1, 3), group=st.sampled_from([1, 2, 4]),
    n_q=st.integers(1, 70), extra_k=st.integers(0, 40), head_dim=st.sampled_from([8, 16, 24, 64]),
    causal=st.booleans(), window=st.one_of(st.none(), st.integers(1, 50)),
    block_q=st.integers(1, 48), block_k=st.integers(1, 48), seed=st.integers(0, 2**16)))


def make(p, dtype=torch.float32):
    n_k = p["n_q"] + (0 if p["causal"] or p["window"] else p["extra_k"])
    g = torch.Generator().manual_seed(p["seed"])
    shape = lambda h, n: (p["batch"], h, n, p["head_dim"])  # noqa: E731
    q = torch.randn(shape(p["kv_heads"] * p["group"], p["n_q"]), generator=g)
    k, v = (torch.randn(shape(p["kv_heads"], n_k), generator=g) for _ in range(2))
    return q.to(dtype), k.to(dtype), v.to(dtype)


@settings(max_examples=40, deadline=None)
@given(problems)
def test_naive_and_tiled_equal_sdpa(p):
    q, k, v = make(p)
    ref = reference(q, k, v, p["causal"], p["window"])
    naive = A.naive_attention(q, k, v, causal=p["causal"], window=p["window"])
    tiled = A.tiled_attention(q, k, v, causal=p["causal"], window=p["window"], block_q=p["block_q"],
                              block_k=p["block_k"])
    sdpa = A.sdpa(q, k, v, causal=p["causal"], window=p["window"])
    for name, out in (("naive", naive), ("tiled", tiled), ("sdpa", sdpa)):
        assert out.shape == q.shape and out.dtype == q.dtype, name
        torch.testing.assert_close(out.double(), ref, atol=TOL[torch.float32] * 10, rtol=1e-4, msg=name)


@settings(max_examples=10, deadline=None)
@given(problems)
def test_bf16_within_bf16_tolerance(p):
    q, k, v = make(p, torch.bfloat16)
    ref = reference(q, k, v, p["causal"], p["window"])
    for fn in (A.naive_attention, A.tiled_attention):
        out = fn(q, k, v, causal=p["causal"], window=p["window"])
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.double(), ref, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("backend", ["math", "flash"])
def test_sdpa_backends_on_cpu_agree(backend):
    if backend not in A.supported_sdpa_backends(torch.float32, 64, "cpu"):
        pytest.skip(f"{backend} not on this CPU build")
    q, k, v = A.random_qkv(100, 4, 64, kv_heads=2)
    torch.testing.assert_close(A.sdpa(q, k, v, causal=True, backend=backend),
                               A.naive_attention(q, k, v, causal=True), atol=1e-5, rtol=1e-4)


def test_online_softmax_folds_to_the_exact_softmax():
    g = torch.Generator().manual_seed(1)
    scores, v = torch.randn(3, 12, generator=g) * 20, torch.randn(12, 5, generator=g)  # large scores: maxima move
    state = A.SoftmaxState.empty((3,), 5)
    for i in range(0, 12, 5):
        state = A.online_softmax_update(state, scores[:, i:i + 5], v[i:i + 5])
    torch.testing.assert_close(state.output(), scores.softmax(-1) @ v)
    torch.testing.assert_close(state.m.squeeze(-1), scores.amax(-1))


def test_a_fully_masked_block_changes_nothing():
    g = torch.Generator().manual_seed(2)
    scores, v = torch.randn(2, 4, generator=g), torch.randn(4, 3, generator=g)
    state = A.online_softmax_update(A.SoftmaxState.empty((2,), 3), torch.full((2, 4), float("-inf")), v)
    assert not torch.isnan(state.acc).any() and (state.l == 0).all()
    state = A.online_softmax_update(state, scores, v)
    torch.testing.assert_close(state.output(), scores.softmax(-1) @ v)


def test_tiled_never_holds_an_n_by_n_matrix():
    n, heads, d = 512, 2, 16
    q, k, v = A.random_qkv(n, heads, d)
    naive = A.peak_memory(lambda: A.naive_attention(q, k, v, causal=True), "cpu")
    tiled = A.peak_memory(lambda: A.tiled_attention(q, k, v, causal=True, block_q=64, block_k=64), "cpu")
    assert naive >= A.scores_bytes(n, heads, "fp32")  # the N x N matrix is there
    assert tiled < A.scores_bytes(n, heads, "fp32") / 4  # and here it is not


def test_naive_peak_estimate_matches_the_tensors_it_allocates():
    for dtype, n in (("fp32", 256), ("bf16", 384)):
        q, k, v = A.random_qkv(n, 4, 32, dtype=dtype)
        measured = A.peak_memory(lambda q=q, k=k, v=v: A.naive_attention(q, k, v, causal=True), "cpu")
        estimate = A.naive_peak_bytes(n, 4, 32, dtype, masked=True)
        assert abs(measured - estimate) / measured < 0.05, (dtype, measured, estimate)


def test_cost_formulas():
    assert A.attention_flops(1024, 8, 64) == 4 * 8 * 1024**2 * 64
    assert A.attention_flops(1024, 8, 64, causal=True) == 2 * 8 * 1024**2 * 64
    assert A.attention_flops(10, 1, 1, backward=True) == pytest.approx(3.5 * 400)
    assert A.scores_bytes(16384, 32, "bf16") == 16 * 2**30  # the 16 GiB in the module docstring
    assert A.hbm_bytes("sdpa", 100, 4, 8, "fp16", kv_heads=1) == 100 * 8 * 2 * (2 * 4 + 2 * 1)
    assert A.hbm_bytes("naive", 100, 4, 8, "fp16") - A.hbm_bytes("sdpa:flash", 100, 4, 8, "fp16") \
        == 4 * A.scores_bytes(100, 4, "fp16")
    assert A.flash_peak_bytes(100, 4, 8, "bf16") < A.naive_peak_bytes(100, 4, 8, "bf16")


def test_tile_skipping_matches_the_mask():
    for causal in (False, True):
        for window in (None, 1, 3, 7):
            keep = A.attention_mask(20, 20, causal, window)
            for q0 in range(0, 20, 5):
                for k0 in range(0, 20, 4):
                    visible = A._tile_visible(q0, q0 + 5, k0, k0 + 4, causal, window)
                    tile = torch.ones(5, 4, dtype=torch.bool) if keep is None else keep[q0:q0 + 5, k0:k0 + 4]
                    assert visible == bool(tile.any()), (causal, window, q0, k0)
                    assert A._tile_fully_visible(q0, q0 + 5, k0, k0 + 4, causal, window) == bool(tile.all())


def test_measure_and_sweep_on_cpu():
    runs = A.sweep(["naive", "tiled", "sdpa"], [32, 64], heads=2, head_dim=16, runs=1, progress=False)
    assert [(r.variant, r.seq_len) for r in runs] == [(v, n) for n in (32, 64) for v in ("naive", "tiled", "sdpa")]
    for r in runs:
        assert not r.error and r.ms > 0 and r.tflops > 0 and r.peak_bytes > 0
        assert r.intensity == pytest.approx(A.attention_flops(r.seq_len, 2, 16, causal=True) / r.bytes_moved)
    assert "naive" in A.results_table(runs)
    rows = A.speedup_table(runs)
    assert {r["variant"] for r in rows} == {"tiled", "sdpa"}
    back = A.measure_attention("sdpa", 32, 2, 16, backward=True, runs=1)
    assert back.ms > 0 and back.flops == A.attention_flops(32, 2, 16, causal=True, backward=True)


def test_unsupported_backend_is_recorded_not_raised():
    unsupported = [b for b in A.SDPA_BACKENDS if b not in A.supported_sdpa_backends(torch.float32, 16, "cpu")]
    if not unsupported:
        pytest.skip("every backend runs here")
    run = A.measure_attention(f"sdpa:{unsupported[0]}", 32, 2, 16, runs=1)
    assert run.ms is None and "Backends that can" in run.error


def test_plot_sweep_draws_measured_and_estimate():
    import matplotlib

    matplotlib.use("Agg")
    runs = A.sweep(["naive", "sdpa"], [32, 64], heads=2, head_dim=16, runs=1, progress=False)
    fig = A.plot_sweep(runs, estimates={"naive": lambda n: A.naive_peak_bytes(n, 2, 16, "fp32", masked=True)})
    labels = [line.get_label() for line in fig.axes[1].get_lines()]
    assert labels == ["naive", "sdpa", "naive (estimate)"]


def test_committed_gpu_results_load():
    results = A.load_gpu_results()
    runs = A.committed_runs(results)
    assert runs and all(r.seq_len > 0 for r in runs)
    assert any(r.variant == "sdpa:flash" and r.ms for r in runs)


@pytest.mark.slow
def test_transformers_eager_and_sdpa_on_a_real_architecture():
    rows = A.measure_transformers_attention("smollm2-135m", seq_len=64, runs=1, num_hidden_layers=1)
    assert [r["implementation"] for r in rows] == ["eager", "sdpa"]
    assert all(r["ms"] > 0 and r["peak_bytes"] > 0 and r["random_weights"] for r in rows)
    with pytest.raises(LabkitError, match="Accepted"):
        A.measure_transformers_attention("qwen2.5-0.5b", implementations=("flash",))


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("shapes, message", [
    (((1, 4, 8, 16), (1, 3, 8, 16), (1, 3, 8, 16)), "multiple of"),
    (((1, 4, 8, 16), (1, 4, 8, 8), (1, 4, 8, 8)), "head_dim"),
    (((1, 4, 8, 16), (1, 4, 8, 16), (1, 4, 9, 16)), "same shape"),
    (((2, 4, 8, 16), (1, 4, 8, 16), (1, 4, 8, 16)), "batch"),
    (((4, 8, 16), (4, 8, 16), (4, 8, 16)), "4 dimensions"),
])
def test_mismatched_shapes_are_refused(shapes, message):
    q, k, v = (torch.zeros(s) for s in shapes)
    for fn in (A.naive_attention, A.tiled_attention, A.sdpa):
        with pytest.raises(LabkitError, match=message):
            fn(q, k, v)


def test_other_bad_input():
    q, k, v = A.random_qkv(8, 2, 16)
    with pytest.raises(LabkitError, match="dtype"):
        A.naive_attention(q, k.double(), v)
    with pytest.raises(LabkitError, match="window"):
        A.tiled_attention(q, k, v, window=0)
    with pytest.raises(LabkitError, match="block_q"):
        A.tiled_attention(q, k, v, block_q=0)
    with pytest.raises(LabkitError, match="Accepted: 'flash', 'efficient', 'cudnn', 'math'"):
        A.sdpa(q, k, v, backend="flashy")
    with pytest.raises(LabkitError, match="Accepted"):
        A.sweep(["fast"], [8])
    with pytest.raises(LabkitError, match="Accepted"):
        A.hbm_bytes("fast", 8, 1, 1)


def test_a_backend_that_cannot_run_names_those_that_can():
    works = A.supported_sdpa_backends(torch.float64, 16, "cpu")
    missing = [b for b in A.SDPA_BACKENDS if b not in works]
    if not missing:
        pytest.skip("every backend runs float64 here")
    q, k, v = A.random_qkv(8, 2, 16)
    with pytest.raises(LabkitError, match="Backends that can: " + ", ".join(works)):
        A.sdpa(q.double(), k.double(), v.double(), backend=missing[0])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_triton_without_a_gpu_says_what_to_use():
    """Without an NVIDIA GPU the message names what runs here, and never tells a CPU learner to pip install triton
    (installing it would not help: seen on a CPU run of 06)."""
    q, k, v = A.random_qkv(8, 2, 16, dtype="bf16")
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("the interpreter runs Triton on the CPU")
    with pytest.raises(LabkitError, match="NVIDIA GPU.*tiled_attention") as err:
        A.triton_attention(q, k, v)
    assert "pip install" not in str(err.value)


def test_triton_kernel_source_is_readable_anywhere():
    src = A.triton_kernel_source()
    assert "@triton.jit" in src and "exp2" in src and "def flash_attention_forward" in src


@pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                    reason="needs CUDA, or TRITON_INTERPRET=1 with triton installed")
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_triton_kernel_equals_sdpa(causal, dtype):
    pytest.importorskip("triton")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and dtype == "bf16":
        pytest.skip("the Triton interpreter's tl.dot gets bf16 wrong (seen with triton 3.9); bf16 is checked on the GPU")
    for n_q, heads, kv_heads, d in ((37, 2, 1, 16), (64, 4, 4, 32), (100, 4, 2, 64)):
        q, k, v = A.random_qkv(n_q, heads, d, kv_heads, dtype=dtype, device=device, seed=n_q)
        out = A.triton_attention(q, k, v, causal=causal)
        ref = reference(q.float().cpu(), k.float().cpu(), v.float().cpu(), causal)
        torch.testing.assert_close(out.double().cpu(), ref, atol=2e-2, rtol=2e-2)
    with pytest.raises(LabkitError, match="bf16 or fp16"):
        A.triton_attention(q.float(), k.float(), v.float())


# ----------------------------------------------------------------------------- exercises


def test_exercises_check_real_answers_and_fail_wrong_ones():
    check("06.scores_bytes", 16 * 2**30, seq_len=16384, heads=32, dtype="bf16")
    with pytest.raises(AssertionError, match="Hint"):
        check("06.scores_bytes", 8 * 2**30, seq_len=16384, heads=32, dtype="bf16")
    check("06.online_update", A.online_softmax_update)
    wrong = lambda s, scores, v: A.SoftmaxState(s.m, s.l + scores.exp().sum(-1, keepdim=True),  # noqa: E731
                                                s.acc + scores.exp() @ v)
    with pytest.raises(AssertionError, match="Hint"):
        check("06.online_update", wrong)  # right only when no maximum ever moves: here they do
    with pytest.raises(AssertionError, match="raised"):
        check("06.online_update", lambda s, scores, v: 1 / 0)
    n, h, d = 4096, 32, 128
    check("06.arithmetic_intensity", 4 * n * n * h * d / (4 * n * h * d * 2), seq_len=n, heads=h, head_dim=d)
    assert math.isclose(4 * n * n * h * d / (4 * n * h * d * 2), n / 2)  # intensity grows with N
    check("06.speedup", 80 / 6.5, naive_ms=80, fused_ms=6.5)
    with pytest.raises(AssertionError):
        check("06.speedup", 6.5 / 80, naive_ms=80, fused_ms=6.5)


def _slip(exercise_id, answer, **inputs):
    from labkit.check import evaluate

    verdict = evaluate(exercise_id, answer, **inputs)
    assert not verdict.passed
    return verdict.slip or "", verdict.message


def test_numeric_slips_are_named():
    scores = dict(seq_len=8192, heads=32, dtype="bf16")
    right = 32 * 8192 * 8192 * 2
    for answer, named in [(right / 32, "one head"), (right * 2, "4 bytes"), (right / 2**30, "GiB")]:
        slip, message = _slip("06.scores_bytes", answer, **scores)
        assert named in slip and named in message
    n, h, d = 4096, 32, 128
    right = A.attention_flops(n, h, d) / (4 * n * h * d * 2)
    for answer, named in [(right * 4 / 3, "only Q, K and V"), (right / 2, "as if causal"),
                          (A.attention_flops(n, h, d) / A.hbm_bytes("naive", n, h, d), "N x N score traffic"),
                          (right * 2, "values instead of bytes")]:
        slip, message = _slip("06.arithmetic_intensity", answer, seq_len=n, heads=h, head_dim=d)
        assert named in slip and named in message
    for answer, named in [(6.5 / 80, "fused time by the naive"), (80 - 6.5, "milliseconds saved"),
                          (100 * (80 - 6.5) / 80, "percentage")]:
        slip, message = _slip("06.speedup", answer, naive_ms=80, fused_ms=6.5)
        assert named in slip and named in message


def _learner_update(keepdim=True, rescale_l=True, rescale_acc=True, subtract_max=True):
    """The online-softmax update as a learner might write it, with one of the usual mistakes."""
    import torch

    def update(state, scores, v_block):
        m_new = torch.maximum(state.m, scores.amax(-1, keepdim=keepdim))
        correction = torch.exp(state.m - m_new)
        p = torch.exp(scores - m_new) if subtract_max else torch.exp(scores)
        return A.SoftmaxState(m=m_new, l=(state.l * correction if rescale_l else state.l) + p.sum(-1, keepdim=keepdim),
                              acc=(state.acc * correction if rescale_acc else state.acc) + p @ v_block)

    return update


def test_online_update_names_its_slips_and_never_crashes():
    """A missing keepdim used to end in a raw RuntimeError from inside the check; now it is a message that names it."""
    from labkit.check import evaluate

    assert evaluate("06.online_update", _learner_update()).passed
    for kwargs, named in [({"keepdim": False}, "keepdim=True"),
                          ({"rescale_l": False, "rescale_acc": False}, "not rescaling the old sums"),
                          ({"rescale_acc": False}, "rescaling l but not acc"),
                          ({"rescale_l": False}, "rescaling acc but not l"),
                          ({"subtract_max": False}, "without subtracting the maximum")]:
        slip, message = _slip("06.online_update", _learner_update(**kwargs))
        assert named in slip and named in message, (kwargs, message)
    slip, message = _slip("06.online_update", lambda state, scores, v: state.m.view(-1, 7))  # an odd shape error
    assert "raised RuntimeError" in message
    assert "expected a function" in _slip("06.online_update", 3.0)[1]


def test_online_update_hint_does_not_hand_out_the_update():
    from labkit.check import exercises

    hint = exercises()["06.online_update"].hint
    assert "exp(m - m_new)" not in hint and "m_new = max" not in hint


def test_sweep_markdown_quotes_the_run():
    def run(variant, n, ms, mib):
        return A.AttentionRun(variant, n, 4, 4, 64, "fp32", "cpu", True, False, ms, mib * 2**20, 1.0, 1.0)

    runs = [run("naive", 128, 1.0, 1), run("naive", 1024, 100.0, 64), run("sdpa:flash", 128, 1.0, 0.1),
            run("sdpa:flash", 1024, 25.0, 0.8), run("tiled", 128, 1.0, 1), run("tiled", 1024, 50.0, 3)]
    text = A.sweep_markdown(runs, "sdpa:flash")
    assert "grew **64x** (N² would be 64x)" in text and "sdpa:flash's **8x**" in text
    assert "tiled version 50.0 ms: 2.0x naive's speed" in text and "beats naive attention" in text
    assert "trails the fused kernel" in text
    slower = [r if r.variant != "tiled" or r.seq_len != 1024 else run("tiled", 1024, 200.0, 3) for r in runs]
    assert "slower than naive" in A.sweep_markdown(slower, "sdpa:flash")
    with pytest.raises(LabkitError, match="two lengths"):
        A.sweep_markdown(runs[:1], "sdpa:flash")


def test_a_gpu_run_not_committed_yet_is_none_not_an_error(tmp_path, monkeypatch):
    import json

    import labkit.paths

    monkeypatch.setattr(labkit.paths, "results_dir", lambda: tmp_path)
    assert A.load_long_context_results() is None
    (tmp_path / "long_context_gpu.json").write_text(json.dumps({"device": "cuda", "flash": [], "needle": []}))
    monkeypatch.setattr("labkit.paths.shipped_file", lambda *parts: tmp_path / parts[-1])
    assert A.load_long_context_results()["device"] == "cuda"
