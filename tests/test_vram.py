"""labkit.vram: the estimates pinned against what transformers actually allocates (tiny configs, CPU), against
the H100 measurements committed under datasets/results/, and bad input. The model's shape is tested in
test_architecture.py, the measuring in test_vram_measure.py, the calculator in test_vram_widget.py."""

import json
import math
import warnings
from contextlib import nullcontext
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit import vram
from labkit.check import check
from labkit.errors import LabkitError
from labkit.models import build_random_model, load_config, to_transformers_config
from labkit.paths import results_dir
from labkit.vram_band import GENERIC_BANDS
from labkit.vram_measure import TensorMemoryTracker, cache_storage_bytes, measure_training

RESULTS = results_dir()


def generate(model, context: int, new_tokens: int = 2, track: bool = False):
    """Greedy generate on random ids; with `track`, a TensorMemoryTracker counts every tensor it creates."""
    ids = torch.randint(3, 500, (1, context))
    tracker = TensorMemoryTracker()
    with torch.no_grad(), (tracker if track else nullcontext()):
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, return_dict_in_generate=True, pad_token_id=0)
    return out, tracker


# ----------------------------------------------------------------------------- weights


def test_quantized_weight_bytes_follow_bitsandbytes_storage():
    tensors = vram.weight_tensors("llama-3.1-8b")
    lin = sum(t.numel for t in tensors if t.kind == "linear")
    rest = vram.parameter_count("llama-3.1-8b") - lin
    rows = sum(t.shape[0] * t.count for t in tensors if t.kind == "linear")
    nf4 = vram.weight_bytes("llama-3.1-8b", "nf4")
    assert nf4["quantized"] == lin / 2  # two 4-bit weights per byte
    assert nf4["scales"] == pytest.approx(lin / 64 + lin / 64 / 256 * 4)  # 8-bit absmax + fp32 per 256 of them
    assert vram.weight_bytes("llama-3.1-8b", "nf4", double_quant=False)["scales"] == pytest.approx(lin / 64 * 4)
    int8 = vram.weight_bytes("llama-3.1-8b", "int8")
    assert int8 == {"quantized": lin, "unquantized": rest * 2, "scales": rows * 4}
    # GGUF: the effective bits per weight, the output matrix at Q6_K (Q8_0 when tied to the embedding);
    # the published Q4_K_M files of Llama 3.1 8B and Mistral 7B v0.3 are 4.92 GB and 4.37 GB
    q4 = vram.weight_bytes("llama-3.1-8b", "Q4_K_M")
    out = 128256 * 4096
    assert sum(q4.values()) == pytest.approx(((vram.parameter_count("llama-3.1-8b") - out) * 4.84 + out * 6.56) / 8)
    assert sum(q4.values()) == pytest.approx(4.92e9, rel=0.02)
    assert sum(vram.weight_bytes("mistral-7b-v0.3", "Q4_K_M").values()) == pytest.approx(4.37e9, rel=0.02)


def test_weights_match_what_the_h100_allocated():
    """The benchmark recorded torch.cuda.memory_allocated() after loading each model: bf16, int8, nf4."""
    raw = json.loads((RESULTS / "vram_accuracy_raw.json").read_text())
    seen = {}
    for cell in raw["cells"]:
        if cell.get("weights_bytes"):
            seen[(cell["arch"], cell["dtype"])] = cell["weights_bytes"]
    assert len(seen) >= 20
    for (arch, dtype), measured in seen.items():
        estimate = sum(vram.weight_bytes(arch, dtype).values())
        assert estimate == pytest.approx(measured, rel=0.01), (arch, dtype)


def test_gpt_oss_weights_are_priced_at_the_bytes_the_model_holds(tiny_configs):
    net = build_random_model(tiny_configs["gpt_oss"], dtype="bf16", device="meta").model
    built = sum(p.numel() * p.element_size() for p in net.parameters())
    assert sum(vram.weight_bytes(tiny_configs["gpt_oss"], "bf16").values()) == built


# ----------------------------------------------------------------------------- KV cache


def test_kv_cache_matches_the_tensors_generate_keeps(tiny_family, tiny_configs):
    model = build_random_model(tiny_configs[tiny_family], dtype="fp32").model
    context, new = 200, 3
    out, _ = generate(model, context, new)
    kept = cache_storage_bytes(out.past_key_values)
    # the last generated token is never fed back, so the cache holds context + new - 1 tokens
    assert kept == vram.kv_cache_bytes(tiny_configs[tiny_family], context + new - 1, kv_dtype="fp32")


def test_kv_formula_gqa_mqa_mha_sliding_and_mla():
    per = lambda name: sum(vram.kv_cache_bytes_per_token(name).values())  # noqa: E731
    # Llama 3.1 8B: 2 x 32 layers x 8 KV heads x 128 x 2 bytes = 128 KiB per token
    assert per("llama-3.1-8b") == 2 * 32 * 8 * 128 * 2
    assert vram.kv_cache_bytes("llama-3.1-8b", 131072) == vram.kv_cache_formula_bytes(32, 8, 128, 131072, 2)
    assert per("phi-3-mini") == 2 * 32 * 32 * 96 * 2  # MHA: every head has its own K and V
    assert per("gemma-3-270m") == 2 * 18 * 1 * 256 * 2  # MQA
    # sliding-window layers stop at the window; full layers keep growing
    g = vram.kv_cache_bytes_per_token("gemma-3-270m")
    assert vram.kv_cache_bytes("gemma-3-270m", 32768) == g["full"] * 32768 + g["sliding"] * 512
    # MLA caches the 512-wide latent and the 64-wide RoPE key per layer, not K and V per head
    assert per("deepseek-v2-lite") == 27 * (512 + 64) * 2
    assert vram.kv_cache_bytes("llama-3.1-8b", 1000, kv_dtype="Q8_0") == pytest.approx(
        vram.kv_cache_bytes("llama-3.1-8b", 1000) * 8.5 / 16)


def test_kv_per_token_of_known_models_and_the_seeds_example():
    per = lambda name, dtype="bf16": sum(vram.kv_cache_bytes_per_token(name, dtype).values())  # noqa: E731
    assert per("llama-3.1-8b", "fp32") == 2 * 2 * 32 * 8 * 128 * 2
    assert per("gemma-2-9b") == 2 * 42 * 8 * 256 * 2
    # the seeds' worked example: Llama 3.1 8B at 128K tokens in fp16 is ~17.2 GB
    assert abs(per("llama-3.1-8b", "fp16") * 131072 / 1e9 - 17.2) < 0.05
    # Gemma 2 9B: half its 42 layers hold at most their 4,096-token window
    per_layer = 2 * 8 * 256 * 2
    assert vram.kv_cache_bytes("gemma-2-9b", 8192) == 21 * per_layer * 8192 + 21 * per_layer * 4096
    assert vram.kv_cache_bytes("gemma-2-9b", 1000) == 42 * per_layer * 1000


def test_kv_equals_weights_tokens():
    n = vram.kv_equals_weights_tokens("llama-3.1-8b")
    assert vram.kv_cache_bytes("llama-3.1-8b", n) >= sum(vram.weight_bytes("llama-3.1-8b", "bf16").values())
    assert vram.kv_cache_bytes("llama-3.1-8b", n - 1) < sum(vram.weight_bytes("llama-3.1-8b", "bf16").values())
    g = vram.kv_equals_weights_tokens("gemma-3-270m")  # sliding layers: found by search
    assert vram.kv_cache_bytes("gemma-3-270m", g) >= sum(vram.weight_bytes("gemma-3-270m", "bf16").values())


# ----------------------------------------------------------------------------- the prefill peak


@pytest.mark.parametrize("context", [128, 512])
def test_peak_of_generate_matches_the_tensors_transformers_allocates(tiny_family, tiny_configs, context):
    """Every tensor created during generate is counted (TensorMemoryTracker); the estimate's KV cache +
    activations must match its peak: the prefill's largest step, masks, RoPE, sliding-window spill..."""
    model = build_random_model(tiny_configs[tiny_family], dtype="fp32").model
    _, tracker = generate(model, context, new_tokens=2, track=True)
    est = vram.estimate_inference(tiny_configs[tiny_family], "fp32", context=context, new_tokens=2, device="cpu")
    assert est.kv_cache + est.activations == pytest.approx(tracker.peak, rel=0.06), est.details


def test_bf16_adds_the_float32_copies_of_rmsnorm_and_softmax(tiny_configs):
    model = build_random_model(tiny_configs["gemma2"], dtype="bf16").model
    _, tracker = generate(model, 256, track=True)
    est = vram.estimate_inference(tiny_configs["gemma2"], "bf16", context=256, new_tokens=2, device="cpu")
    assert est.kv_cache + est.activations == pytest.approx(tracker.peak, rel=0.06)
    assert any("eager" in k for k in est.details)


def test_phi3_reruns_the_prompt_when_generation_crosses_its_original_length(tiny_configs):
    cfg = dict(tiny_configs["phi3"], original_max_position_embeddings=128)
    model = build_random_model(cfg, dtype="fp32").model
    _, tracker = generate(model, 128, new_tokens=3, track=True)
    est = vram.estimate_inference(cfg, "fp32", context=128, new_tokens=3, device="cpu")
    plain = vram.estimate_inference(cfg, "fp32", context=128, new_tokens=0, device="cpu")
    assert est.total > plain.total
    assert est.kv_cache + est.activations == pytest.approx(tracker.peak, rel=0.06)


# ----------------------------------------------------------------------------- accuracy on the H100


def test_committed_h100_results_meet_the_goal_with_this_estimator():
    """Recompute every measured cell with the current estimator: within 5%, bf16/fp16 within 3%."""
    raw = json.loads((RESULTS / "vram_accuracy_raw.json").read_text())
    cells = [c for c in raw["cells"] if c.get("status") == "ok"]
    assert len(cells) >= 100
    assert len({c["arch"] for c in cells}) >= 6
    for c in cells:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est = vram.estimate_inference(c["arch"], c["dtype"], context=c["context"], batch=c["batch"],
                                          new_tokens=c["new_tokens"])
        measured = c["peak_allocated_bytes"] + c["context_bytes"]
        limit = 0.03 if c["dtype"] in ("bf16", "fp16") else 0.05
        assert abs(est.total - measured) / measured < limit, (c["arch"], c["dtype"], c["context"], c["batch"])


def test_weights_plus_kv_alone_underestimates_long_contexts():
    est = vram.estimate_inference("llama-3.1-8b", context=32768)
    naive = est.weights + est.kv_cache
    assert naive < 0.85 * est.total
    assert est.activations > 3 * vram.GIB  # the MLP's intermediate tensors over 32k tokens


# ----------------------------------------------------------------------------- training


def test_full_finetune_is_16_bytes_per_parameter_with_mixed_precision_adamw():
    """Mixed precision as the Trainer runs it (an fp32 model under autocast): 4 + 4 + 8 bytes per parameter; at
    the optimizer step torch's foreach AdamW adds a sqrt(v) the size of the moments' half."""
    p = vram.parameter_count("llama-3.1-8b")
    est = vram.estimate_training("llama-3.1-8b", "full", seq_len=512)
    grads = est.details["gradients (all, at the optimizer step)"]
    moments = est.optimizer_states - est.details.get("optimizer: AdamW step temporaries (foreach)", 0.0)
    assert (est.weights + grads + moments) / p == pytest.approx(16)
    assert est.notes[-1] == "the peak is the optimizer step" and est.total / p > 20  # 16 + 4 of temporaries
    pure = vram.estimate_training("llama-3.1-8b", "full", seq_len=512, mixed_precision=False)
    assert (pure.weights + pure.details["gradients (all, at the optimizer step)"]) / p == pytest.approx(4)
    assert vram.estimate_training("llama-3.1-8b", "full", optimizer="adamw8bit").optimizer_states < \
        est.optimizer_states * 0.3  # 2 bytes of 8-bit moments (and no foreach temporary), against 8 + 4
    assert vram.estimate_training("llama-3.1-8b", "full", optimizer="sgd").optimizer_states == 0


def test_lora_trainable_parameters_match_peft(tiny_config):
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = build_random_model(tiny_config, dtype="fp32").model
    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules=targets))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    est = vram.estimate_training(tiny_config, "lora", lora_rank=8, target_modules=targets)
    assert est.inputs["trainable_parameters"] == trainable
    # Llama 3.1 8B, r=16 on all seven projections: the figure peft prints is 41,943,040
    big = vram.estimate_training("llama-3.1-8b", "lora", lora_rank=16, target_modules="all-linear")
    assert big.inputs["trainable_parameters"] == 41_943_040


def test_qlora_base_is_nf4_and_checkpointing_cuts_activations():
    lora = vram.estimate_training("llama-3.1-8b", "lora")
    qlora = vram.estimate_training("llama-3.1-8b", "qlora")
    assert qlora.weights < lora.weights / 2.5
    ckpt = vram.estimate_training("llama-3.1-8b", "lora", gradient_checkpointing=True)
    assert ckpt.activations < lora.activations / 3


def _training_estimate_against_the_tracker(cfg: dict, method: str, dtype: str, checkpointing: bool, vocab: int):
    """Two real training steps on the CPU, every tensor counted (TensorMemoryTracker): what the estimate puts
    beyond the weights (activations, gradients, AdamW's moments and temporaries) within 3% of the peak of the
    tensors the steps made; the weights exactly. dtype "amp": full fine-tuning in mixed precision (autocast)."""
    cfg = dict(cfg, vocab_size=vocab)
    amp = dtype == "amp"
    kwargs = dict(lora_rank=8, gradient_checkpointing=checkpointing, mixed_precision=amp, device="cpu")
    measured = measure_training(cfg, method, "bf16" if amp else dtype, seq_len=128, **kwargs)
    est = vram.estimate_training(cfg, method, "bf16" if amp else dtype, seq_len=128, **kwargs)
    assert est.weights == pytest.approx(measured.weights, rel=1e-3)
    beyond_weights = est.total - est.weights - est.overhead
    assert beyond_weights == pytest.approx(measured.activations, rel=0.03), (est.notes[-1], est.details)


# The vocabulary is 32x the width, as in real models (Llama 3.1 8B: 31x, Qwen2.5 0.5B: 170x), so that the loss path
# weighs what it does at true size; 512 (8x) makes the re-run layer the peak instead.
def test_lora_training_estimate_matches_what_autograd_keeps(tiny_family, tiny_configs):
    """Every family, LoRA in bf16 (the common case)."""
    _training_estimate_against_the_tracker(tiny_configs[tiny_family], "lora", "bf16", False, 2048)


# (family, method, dtype, checkpointing, vocabulary): the other paths once: full fine-tuning in bf16, fp32 and mixed
# precision (autocast), LoRA in fp32, with and without checkpointing.
TRAINING_CASES = [
    ("llama", "full", "amp", True, 2048), ("llama", "lora", "bf16", True, 512), ("qwen3", "full", "fp32", False, 2048),
    ("gemma2", "full", "bf16", True, 2048), ("gemma3", "lora", "fp32", False, 2048), ("phi3", "full", "amp", False, 2048),
    ("mixtral", "full", "bf16", True, 2048), ("qwen3_moe", "lora", "bf16", True, 2048),
]


@pytest.mark.parametrize("family, method, dtype, checkpointing, vocab", TRAINING_CASES,
                         ids=[f"{f}-{m}-{d}{'-ckpt' if c else ''}-V{v}" for f, m, d, c, v in TRAINING_CASES])
def test_training_estimate_matches_what_autograd_keeps(family, method, dtype, checkpointing, vocab, tiny_configs):
    _training_estimate_against_the_tracker(tiny_configs[family], method, dtype, checkpointing, vocab)


def test_lora_targets_are_what_peft_adapts(tiny_family, tiny_configs):
    """peft 0.21 moves the expert projections of the MoE types transformers 5 re-lays out onto the experts'
    stacked weights (and the router); lora_targets follows it, checked against peft on the meta device."""
    from peft import LoraConfig, get_peft_model

    net = build_random_model(tiny_configs[tiny_family], device="meta").model
    peft_model = get_peft_model(net, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert vram.lora_targets(tiny_configs[tiny_family], 8).trainable == trainable


def test_committed_gpu_training_results_meet_the_goal_with_this_estimator():
    """The H200 run of benchmarks/lora_gpu.py (Llama 3.1 8B, LoRA and QLoRA r=16, 2,048 tokens): within 5% with
    and without checkpointing. (It measured -15% and -20% without checkpointing with the estimator it was run
    against; none of the constants of the training model were fitted on it.)"""
    run = json.loads((RESULTS / "lora_gpu.json").read_text())
    rows = [r for r in run["rows"] if "skipped" not in r]
    assert {r["gradient_checkpointing"] for r in rows} == {True, False}
    for r in rows:
        est = vram.estimate_training(run["model"], r["method"], "bf16", lora_rank=r["rank"], seq_len=r["seq_len"],
                                     gradient_checkpointing=r["gradient_checkpointing"])
        assert est.total / vram.GIB == pytest.approx(r["measured_gib"], rel=0.05), r


# ----------------------------------------------------------------------------- several GPUs, fitting


def test_tensor_parallel_split():
    est = vram.estimate_inference("llama-3.1-70b", context=8192)
    two = vram.split_tensor_parallel(est, 2)
    assert two.weights == est.weights / 2
    assert two.kv_cache == est.kv_cache / 2
    sixteen = vram.split_tensor_parallel(est, 16)  # only 8 KV heads: each GPU keeps one of them
    assert sixteen.kv_cache == est.kv_cache / 8
    assert vram.split_tensor_parallel(est, 1) is est
    mla = vram.split_tensor_parallel(vram.estimate_inference("deepseek-v2-lite"), 4)
    assert mla.kv_cache == vram.estimate_inference("deepseek-v2-lite").kv_cache  # one shared latent
    assert vram.gpus_needed(est, 80) == 2


def test_fits_numbers_gpu_names_and_this_machine():
    est = vram.estimate_inference("llama-3.1-8b", "bf16", context=4096)
    assert vram.fits(est, 24) and not vram.fits(est, 16)
    assert vram.fits(est, "4090").where.startswith("NVIDIA RTX 4090")
    assert not vram.fits(est, "T4")
    assert "does NOT fit" in str(vram.fits(est, "RTX 3060"))
    assert isinstance(bool(vram.fits(est)), bool)
    with pytest.raises(LabkitError, match="unknown GPU"):
        vram.fits(est, "Voodoo 3")
    with pytest.raises(LabkitError):
        vram.fits(est, -8)


# ----------------------------------------------------------------------------- bad input


@settings(max_examples=40, deadline=None)
@given(st.one_of(st.integers(max_value=0), st.floats(max_value=0, allow_nan=False), st.just(float("nan")),
                 st.floats(min_value=0.1, max_value=1000).filter(lambda x: not float(x).is_integer())))
def test_bad_sizes_are_refused_with_a_clear_message(bad):
    for kwargs in ({"context": bad}, {"batch": bad}):
        with pytest.raises(LabkitError, match="context|batch"):
            vram.estimate_inference("llama-3.2-1b", **kwargs)
    with pytest.raises(LabkitError, match="seq_len"):
        vram.estimate_training("llama-3.2-1b", seq_len=bad)


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=1, max_value=1 << 20), st.integers(min_value=1, max_value=64))
def test_estimates_grow_with_context_and_batch(context, batch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = vram.estimate_inference("qwen2.5-0.5b", context=context, batch=batch)
        more = vram.estimate_inference("qwen2.5-0.5b", context=context + 1, batch=batch)
    assert more.total >= one.total > one.weights > 0
    assert math.isfinite(one.total)


def test_unknown_names_list_what_is_accepted():
    with pytest.raises(LabkitError, match="unknown dtype 'int3'.*Q4_K_M"):
        vram.estimate_inference("llama-3.2-1b", "int3")
    with pytest.raises(LabkitError, match="unknown runtime"):
        vram.estimate_inference("llama-3.2-1b", runtime="vllm-ish")
    with pytest.raises(LabkitError, match="unknown training method 'dpo'.*qlora"):
        vram.estimate_training("llama-3.2-1b", "dpo")
    with pytest.raises(LabkitError, match="unknown optimizer"):
        vram.estimate_training("llama-3.2-1b", optimizer="lion")
    with pytest.raises(LabkitError, match="unknown LoRA target module 'qkv'"):
        vram.estimate_training("llama-3.2-1b", "lora", target_modules=["qkv"])
    with pytest.raises(LabkitError, match="unknown KV-cache dtype"):
        vram.estimate_inference("llama-3.2-1b", kv_dtype="int3")
    with pytest.raises(LabkitError, match="unknown model config"):
        vram.estimate_inference("llama-9-1t")
    with pytest.raises(LabkitError, match="model_type"):
        vram.estimate_inference({"hidden_size": 8})


def test_gguf_types_belong_to_llama_cpp():
    est = vram.estimate_inference("llama-3.1-8b", "Q4_K_M")  # the runtime follows the dtype
    assert est.inputs["runtime"] == "llama.cpp"
    with pytest.raises(LabkitError, match="GGUF"):
        vram.estimate_inference("llama-3.1-8b", "Q4_K_M", runtime="transformers")
    with pytest.raises(LabkitError, match="bitsandbytes"):
        vram.estimate_inference("llama-3.1-8b", "nf4", runtime="llama.cpp")


def test_context_beyond_the_model_maximum_warns_and_still_computes():
    with pytest.warns(UserWarning, match="beyond the model's maximum context of 4,096"):
        est = vram.estimate_inference("phi-3-mini", context=16384)
    assert est.total > vram.estimate_inference("phi-3-mini", context=4000).total
    assert est.notes


def test_context_beyond_the_window_is_flagged_in_the_tables():
    rows = vram.hardware_table(["phi-3-mini", "llama-3.1-8b"], dtypes=("bf16",), context=8192)
    assert [("⚠" in str(r.values())) for r in rows] == [True, False]
    kv = vram.kv_table(["phi-3-mini", "qwen2.5-0.5b"], tokens=65536)
    assert ["⚠" in str(r.values()) for r in kv] == [True, True]


LLAMA_CPP_RSS = """
import re, sys
rss = lambda k: int(re.search(k + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024
import llama_cpp
from labkit.models import bundled_gguf_path
path = str(bundled_gguf_path())
before = rss("VmRSS")
llm = llama_cpp.Llama(model_path=path, n_ctx=int(sys.argv[1]), n_threads=2, verbose=False)
llm.eval(list(range(3, int(sys.argv[1]) - 13)))
print(rss("VmHWM") - before)
"""


@pytest.mark.slow
@pytest.mark.llama
def test_llama_cpp_estimate_matches_the_process_growth_on_cpu():
    import subprocess
    import sys

    pytest.importorskip("llama_cpp")
    for context in (1024, 4096):
        done = subprocess.run([sys.executable, "-c", LLAMA_CPP_RSS, str(context)], capture_output=True, text=True,
                              check=True)
        grown = int(done.stdout.split()[-1])
        est = vram.estimate_inference("gemma-3-270m", "Q4_K_M", context=context, device="cpu")
        assert est.total == pytest.approx(grown, rel=0.1), (context, est)


def test_repr_is_in_gib():
    text = repr(vram.estimate_inference("llama-3.1-8b"))
    assert "GiB" in text and "weights=14.96" in text


# ----------------------------------------------------------------------------- any model a learner brings


def test_a_qwen3_moe_is_counted_with_all_its_experts_not_as_dense():
    """The issue's example: Qwen3-30B-A3B was counted as a 3.3 B dense model and its memory 9x too low."""
    est = vram.estimate_inference("qwen3-30b-a3b", "bf16", context=4096)
    assert est.weights / vram.GIB > 56  # 30.5 B parameters x 2 bytes
    assert not vram.fits(est, "A100 40GB") and vram.fits(est, "H100")
    assert any("equal the meta-device model's" in n for n in est.notes)


def test_a_model_type_without_a_formula_is_estimated_from_the_meta_device():
    cfg = dict(model_type="starcoder2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, vocab_size=300, max_position_embeddings=2048)
    net = build_random_model(cfg, device="meta").model
    est = vram.estimate_inference(cfg, "bf16", context=1024, device="cpu")
    assert est.weights == pytest.approx(sum(p.numel() for p in net.parameters()) * 2)
    assert any("no formula" in n for n in est.notes)


def test_estimate_reads_a_config_json_path_a_folder_a_transformers_config_and_a_dict(tmp_path):
    raw = load_config("qwen3-30b-a3b")
    folder = tmp_path / "my-moe"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(raw))
    expected = vram.estimate_inference("qwen3-30b-a3b").total
    for source in (str(folder / "config.json"), folder, str(folder), raw, to_transformers_config(raw)):
        assert vram.estimate_inference(source).total == expected, source


@pytest.mark.parametrize("config, message", [
    (dict(model_type="mamba", hidden_size=64, num_hidden_layers=2, vocab_size=100), "no attention layers"),
    (dict(model_type="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=100,
          rope_parameters={"rope_type": "no-such-rope"}), "transformers cannot build"),
])
def test_configs_it_cannot_estimate_are_refused_with_what_is_wrong(config, message):
    """labkit.architecture refuses them (test_architecture.py has every case); the estimate passes that on."""
    with pytest.raises(LabkitError, match=message) as info:
        vram.estimate_inference(config)
    assert "Traceback" not in str(info.value)


# ----------------------------------------------------------------------------- exercises


def test_exercises_pass_with_the_right_answer_and_fail_with_a_wrong_one():
    p = 8_030_261_248
    check("03.weights_gib", p * 2 / 2**30, parameters=p, dtype="bf16")
    with pytest.raises(AssertionError, match="bytes per parameter"):
        check("03.weights_gib", p * 2 / 1e9, parameters=p, dtype="bf16")
    kv = 2 * 32 * 8 * 128 * 131072 * 2 / 2**30
    check("03.kv_cache_gib", kv, layers=32, kv_heads=8, head_dim=128, tokens=131072, bytes_per_value=2)
    with pytest.raises(AssertionError, match="KV heads"):
        check("03.kv_cache_gib", kv * 4, layers=32, kv_heads=8, head_dim=128, tokens=131072, bytes_per_value=2)
    n = vram.kv_equals_weights_tokens("qwen2.5-0.5b")
    check("03.kv_equals_weights_tokens", n, model="qwen2.5-0.5b")
    with pytest.raises(AssertionError):
        check("03.kv_equals_weights_tokens", n * 2, model="qwen2.5-0.5b")
    check("03.full_finetune_gib", p * 16 / 2**30, parameters=p)
    with pytest.raises(AssertionError, match="16 bytes"):
        check("03.full_finetune_gib", p * 2 / 2**30, parameters=p)
    check("03.min_gpus", 2, model="llama-3.1-70b", dtype="bf16", context=8192, gb=80)
    with pytest.raises(AssertionError, match="does NOT fit|fewest"):
        check("03.min_gpus", 1, model="llama-3.1-70b", dtype="bf16", context=8192, gb=80)


# ----------------------------------------------------------------------------- families without a formula
# (held_out_configs, traced_family: tiny copies of model types no formula knows, in conftest.py)

BF16_ONLY = ("deepseek_v3", "ernie4_5_moe")  # grouped_mm on a CPU takes bf16 only


def test_prefill_of_a_family_without_a_formula_is_what_transformers_allocates(traced_family, held_out_configs):
    """The meta-device trace against every tensor generate makes on the CPU (sliding windows, masks, MLA, experts
    run on every token or grouped): within 3% at 512 tokens, and the estimate carries its band."""
    cfg, dtype = held_out_configs[traced_family], "bf16" if traced_family in BF16_ONLY else "fp32"
    model = build_random_model(cfg, dtype=dtype).model
    _, tracker = generate(model, 512, new_tokens=2, track=True)
    est = vram.estimate_inference(cfg, dtype, context=512, new_tokens=2, device="cpu")
    assert est.kv_cache + est.activations == pytest.approx(tracker.peak, rel=0.03), est.details
    assert est.band == GENERIC_BANDS["inference (traced)"][0] and "band measured on" in est.table()


@pytest.mark.parametrize("name, method, checkpointing", [("starcoder2", "lora", True), ("phi", "full", False),
                                                         ("gpt_neox", "lora", False), ("llama4_text", "full", True)])
def test_training_of_a_family_without_a_formula_is_traced(name, method, checkpointing, held_out_configs):
    """LayerNorm with biases, plain GELU MLPs, partial rotary, every expert on every token: the traced forward and
    backward within 3% of the tensors two real steps keep (beyond the weights)."""
    cfg = dict(held_out_configs[name], vocab_size=2048)
    kwargs = dict(lora_rank=8, gradient_checkpointing=checkpointing, mixed_precision=False, device="cpu")
    measured = measure_training(cfg, method, "bf16", seq_len=128, **kwargs)
    est = vram.estimate_training(cfg, method, "bf16", seq_len=128, **kwargs)
    assert est.total - est.weights - est.overhead == pytest.approx(measured.activations, rel=0.03), est.details
    assert est.band and "traced" in " ".join(est.notes)


def test_the_trace_gives_the_formulas_on_formula_families():
    """Traced as if no formula existed, a formula family gets what its formulas give (which are within 0.7% of
    the H100 in bf16): the trace stands on the same measurements."""
    for name, context in (("qwen2.5-0.5b", 8192), ("gemma-3-270m", 16384), ("qwen3-30b-a3b", 2048)):
        a = vram.architecture(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            formula = vram.estimate_inference(a, "bf16", context=context, new_tokens=8)
            traced = vram.estimate_inference(replace(a, generic=True), "bf16", context=context, new_tokens=8)
        assert traced.total == pytest.approx(formula.total, rel=0.005), name
    a = vram.architecture("qwen2.5-0.5b")
    formula = vram.estimate_training(a, "lora", seq_len=1024)
    traced = vram.estimate_training(replace(a, generic=True), "lora", seq_len=1024)
    assert traced.total == pytest.approx(formula.total, rel=0.01)


def test_experts_dispatch_is_read_from_transformers_code_and_agrees_with_the_meta_device(tiny_configs,
                                                                                          held_out_configs):
    """Grouped (the experts interface) and every-expert models trace on the meta device; a loop over the routed
    experts depends on values and cannot: the estimate refuses it, saying why."""
    assert vram.experts_dispatch(tiny_configs["mixtral"]) == "grouped"
    assert vram.experts_dispatch(tiny_configs["qwen3_moe"]) == "grouped"
    assert vram.experts_dispatch(held_out_configs["llama4_text"]) == "every expert"
    assert vram.experts_dispatch(held_out_configs["jetmoe"]) == "loop"
    assert vram.experts_dispatch(tiny_configs["llama"]) is None
    # every expert on every token: memory grows with experts x tokens (Llama 4's text model)
    llama4 = vram.architecture(held_out_configs["llama4_text"])
    small = vram.estimate_inference(llama4, "bf16", context=1024, device="cpu").activations
    more = vram.estimate_inference(replace(llama4, num_experts=8, config_json=json.dumps(
        dict(held_out_configs["llama4_text"], num_local_experts=8))), "bf16", context=1024, device="cpu").activations
    assert more > 1.5 * small
    for name in ("jetmoe", "dbrx"):
        with pytest.raises(LabkitError, match=r"cannot be traced.*±50%.*Measure it instead"):
            vram.estimate_inference(held_out_configs[name], "bf16", context=256, device="cpu")


def test_estimates_without_a_formula_refuse_where_the_band_is_wider_than_10_percent(held_out_configs):
    with pytest.raises(LabkitError, match=r"mixed precision.*mixed_precision=False.*±15%"):
        vram.estimate_training(held_out_configs["phi"], "full", "bf16")
    assert vram.estimate_training(held_out_configs["phi"], "full", "bf16", mixed_precision=False, seq_len=64).band
    assert vram.estimate_inference("llama-3.1-8b").band == 0  # a formula family: measured, no band


def test_the_band_shows_in_the_estimate(held_out_configs):
    est = vram.estimate_inference(held_out_configs["starcoder2"], "bf16", context=1024)
    band = GENERIC_BANDS["inference (traced)"][0]
    assert f"±{band:.0%}" in repr(est) and "no formula for this model type" in est.band_text
    assert f"{est.total * (1 - band) / vram.GIB:.2f} to {est.total * (1 + band) / vram.GIB:.2f} GiB" in est.band_text
    assert f"band ±{band:.0%}" in est.table() and "band" not in vram.estimate_inference("llama-3.2-1b").table()
