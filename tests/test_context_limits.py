"""labkit.context_limits: the longest context a card holds, and the llama.cpp / vLLM flags that set it."""

import pytest

from labkit import context_limits, vram
from labkit.errors import LabkitError
from labkit.hardware import usable_memory


def test_the_longest_context_is_the_largest_that_fits():
    fit = context_limits.longest_context("llama-3.1-8b", "NVIDIA RTX 3060", "Q4_K_M", "f16")
    assert fit.limited_by == "memory" and 0 < fit.longest_tokens < fit.window
    budget = usable_memory("NVIDIA RTX 3060").bytes
    at = lambda n: vram.estimate_inference("llama-3.1-8b", "Q4_K_M", context=n, runtime="llama.cpp",  # noqa: E731
                                           kv_dtype="fp16").total
    assert at(fit.longest_tokens) <= budget < at(fit.longest_tokens + 1)
    assert f"-c {fit.longest_tokens} " in fit.command and "--cache-type-k f16 --cache-type-v f16" in fit.command


def test_a_smaller_cache_type_holds_more_and_the_window_caps_it():
    f16, q8, q4 = (context_limits.longest_context("llama-3.1-8b", "NVIDIA RTX 3060", cache_type=c)
                   for c in ("f16", "q8_0", "q4_0"))
    assert f16.longest_tokens < q8.longest_tokens <= q4.longest_tokens <= 131072
    assert q4.limited_by == "the model's context window" and q4.longest_tokens == q4.window == 131072
    assert "-fa on" in q8.command  # a quantized V cache needs flash attention


def test_vllm_takes_its_share_and_refuses_what_does_not_fit():
    auto = context_limits.longest_context("llama-3.1-8b", "NVIDIA RTX 4090", "bf16", "auto", runtime="vllm")
    fp8 = context_limits.longest_context("llama-3.1-8b", "NVIDIA RTX 4090", "bf16", "fp8", runtime="vllm")
    assert 0 < auto.longest_tokens < fp8.longest_tokens <= 2 * auto.longest_tokens + 1
    assert auto.budget_bytes == pytest.approx(0.9 * usable_memory("NVIDIA RTX 4090").shown_bytes)
    assert "--max-model-len" in auto.command and "--gpu-memory-utilization 0.9" in auto.command
    lower = context_limits.longest_context("llama-3.1-8b", "NVIDIA RTX 4090", "bf16", "auto", runtime="vllm",
                                           gpu_memory_utilization=0.8)
    assert lower.longest_tokens < auto.longest_tokens
    t4 = context_limits.longest_context("llama-3.1-8b", "NVIDIA T4", "bf16", runtime="vllm", cache_type="auto")
    assert t4.longest_tokens == 0 and t4.limited_by == "the weights do not fit" and "does not fit" in str(t4)


def test_bad_settings_name_what_is_accepted():
    with pytest.raises(LabkitError, match="q8_0"):
        context_limits.longest_context("llama-3.1-8b", "NVIDIA T4", cache_type="int4")
    with pytest.raises(LabkitError, match="vllm"):
        context_limits.longest_context("llama-3.1-8b", "NVIDIA T4", runtime="sglang")
    with pytest.raises(LabkitError, match="fraction"):
        context_limits.longest_context("llama-3.1-8b", "NVIDIA T4", "bf16", "auto", "vllm", gpu_memory_utilization=1.5)


def test_the_table_adds_vllm_on_a_named_card():
    rows = context_limits.context_table("qwen2.5-7b", "NVIDIA A100 80GB")
    assert [(f.runtime, f.cache_type) for f in rows] == [("llama.cpp", "f16"), ("llama.cpp", "q8_0"),
                                                         ("llama.cpp", "q4_0"), ("vllm", "auto"), ("vllm", "fp8")]
    assert all(f.row()["longest context"] for f in rows)
