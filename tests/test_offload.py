"""labkit.offload: how many of a GGUF's layers llama.cpp gets on the GPU, from the file's own tensor table, on mocked
cards of several sizes (the GPU run measures it: benchmarks/llama_cpp_offload.py)."""

from dataclasses import replace

import pytest

from labkit import hardware, models
from labkit.errors import LabkitError
from labkit.gguf_files import read_gguf
from labkit.hardware import GIB
from labkit.models import bundled_gguf_path
from labkit.offload import RUNTIME_BYTES, gpu_layers_for, plan_offload


@pytest.fixture(scope="module")
def gguf():
    return bundled_gguf_path()


def test_the_plan_accounts_for_every_tensor_of_the_file(gguf):
    plan = plan_offload(gguf, n_ctx=2048, usable_bytes=80 * GIB)
    g = read_gguf(gguf)
    assert plan.block_count == g.metadata["gemma3.block_count"] == len(plan.layer_bytes) == 18
    # Gemma's head is its embedding matrix (tied): layers + head + final norm are the whole file
    assert sum(plan.layer_bytes) + plan.output_bytes == g.tensor_bytes
    kv_heads, key = g.metadata["gemma3.attention.head_count_kv"], g.metadata["gemma3.attention.key_length"]
    assert plan.kv_bytes_per_layer == 2048 * kv_heads * 2 * key * 2  # K and V, f16
    assert plan.n_gpu_layers == -1 and plan.layers_on_gpu == 18 and plan.gpu_bytes == plan.full_bytes
    assert "all 18 layers and the output head on the GPU" in str(plan)


def test_a_model_larger_than_the_card_is_split(gguf):
    full = plan_offload(gguf, n_ctx=2048, usable_bytes=80 * GIB)
    fixed = full.compute_bytes + RUNTIME_BYTES
    half = fixed + sum(full.layer_bytes[9:]) + 9 * full.kv_bytes_per_layer + 1  # room for the last 9 layers
    plan = plan_offload(gguf, n_ctx=2048, usable_bytes=half)
    assert plan.n_gpu_layers == plan.layers_on_gpu == 9
    assert plan.gpu_bytes <= plan.usable_bytes < full.full_bytes
    assert "9 of 18 layers on the GPU, the rest on the CPU" in str(plan)
    all_layers = plan_offload(gguf, n_ctx=2048, usable_bytes=full.full_bytes - full.output_bytes)
    assert all_layers.n_gpu_layers == 18, "every layer fits but not the head: the head stays on the CPU"
    none = plan_offload(gguf, n_ctx=2048, usable_bytes=fixed / 2)
    assert none.n_gpu_layers == 0 and "every layer on the CPU" in str(none)


def test_more_memory_or_less_context_never_offloads_fewer_layers(gguf):
    full = plan_offload(gguf, n_ctx=2048, usable_bytes=80 * GIB)
    sizes = [full.compute_bytes + RUNTIME_BYTES + k * full.full_bytes / 20 for k in range(22)]
    counts = [plan_offload(gguf, 2048, usable_bytes=s).layers_on_gpu for s in sizes]
    assert counts == sorted(counts) and counts[0] == 0 and counts[-1] == 18
    tight = sizes[10]
    assert plan_offload(gguf, 512, usable_bytes=tight).layers_on_gpu >= plan_offload(gguf, 8192, usable_bytes=tight).layers_on_gpu


@pytest.mark.parametrize("kwargs", [dict(n_ctx=0), dict(n_ctx=-5), dict(n_ctx=2048, n_batch=0)])
def test_bad_sizes_are_refused(gguf, kwargs):
    with pytest.raises(LabkitError):
        plan_offload(gguf, usable_bytes=GIB, **kwargs)


def _cuda_machine(monkeypatch, free_gib: float):
    fake = replace(hardware.detect_hardware(check_online=False), device="cuda", gpu_name="a card",
                   vram_total_bytes=int(free_gib * GIB), vram_free_bytes=int(free_gib * GIB))
    monkeypatch.setattr(hardware, "detect_hardware", lambda check_online=True: fake)
    monkeypatch.setattr(models, "llama_cpp_gpu_offload", lambda: True)


def test_load_sizes_n_gpu_layers_from_the_plan_on_a_gpu_build(gguf, monkeypatch):
    full = plan_offload(gguf, n_ctx=2048, usable_bytes=80 * GIB)
    _cuda_machine(monkeypatch, free_gib=80)
    assert models.resolve_n_gpu_layers(None, gguf, n_ctx=2048) == -1
    nine_layers = full.compute_bytes + RUNTIME_BYTES + sum(full.layer_bytes[9:]) + 9 * full.kv_bytes_per_layer
    _cuda_machine(monkeypatch, free_gib=(nine_layers + 1) / (1 - hardware.SAFETY_MARGIN) / GIB)
    assert models.resolve_n_gpu_layers(None, gguf, n_ctx=2048) == 9 == gpu_layers_for(gguf, 2048)[1].layers_on_gpu
    assert models.resolve_n_gpu_layers(7, gguf) == 7  # an explicit count is kept
    assert models.resolve_n_gpu_layers(None) == -1  # no file to size from: every layer, as before


def test_no_gpu_seen_by_torch_means_every_layer(gguf, monkeypatch):
    """A CPU-only torch beside a CUDA llama.cpp: nothing says how much memory the GPU has, so all layers."""
    cpu = replace(hardware.detect_hardware(check_online=False), device="cpu")
    monkeypatch.setattr(hardware, "detect_hardware", lambda check_online=True: cpu)
    assert gpu_layers_for(gguf, 2048) == (-1, None)
