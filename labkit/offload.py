"""How many of a GGUF model's layers llama.cpp can keep on this GPU: all of them when the model fits, else as many as
fit (partial offload: the rest run on the CPU, reading their weights from system RAM every token).

llama.cpp offloads the *last* `n_gpu_layers` repeating layers, each with its share of the KV cache; the output
head goes to the GPU only with `n_gpu_layers > block_count`, and the token embeddings always stay in system
memory (a lookup, no matmul). Beside the layers the GPU holds a compute buffer for one batch of `n_batch` tokens
and the runtime itself (CUDA context, cuBLAS workspace). The estimate adds those up from the GGUF's own tensor table
and metadata, and keeps the same 5% safety margin as every fit verdict (labkit.hardware.usable_memory).
`load_llama_cpp` and `LlamaServer` use `plan_offload` when no `n_gpu_layers` is given.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

GIB = 1024**3
# The CUDA context and cuBLAS/cuDNN workspaces a llama.cpp process holds on the GPU beside its buffers (about
# 0.3-0.5 GiB on an H100 with CUDA 12/13; Metal's is smaller). The larger figure, to stay on the safe side.
RUNTIME_BYTES = 0.5 * GIB
KV_BYTES_PER_VALUE = 2  # llama.cpp's default cache type is f16


@dataclass(frozen=True)
class OffloadPlan:
    """What `plan_offload` decided, and the estimate behind it."""

    n_gpu_layers: int  # what to pass to llama.cpp: -1 = every layer and the output head
    block_count: int
    layers_on_gpu: int
    layer_bytes: tuple[int, ...]  # weights of each repeating layer, layer 0 first
    kv_bytes_per_layer: float  # the f16 KV cache of one layer at n_ctx
    output_bytes: int  # the output head (a copy of the embeddings when they are tied) and the final norm
    compute_bytes: float  # one batch's compute buffer
    usable_bytes: float

    @property
    def gpu_bytes(self) -> float:
        """Estimated GPU memory of this plan: offloaded layers and their cache, output head, buffers, runtime."""
        layers = self.layer_bytes[len(self.layer_bytes) - self.layers_on_gpu:] if self.layers_on_gpu else ()
        head = self.output_bytes if self.n_gpu_layers == -1 else 0
        return sum(layers) + self.layers_on_gpu * self.kv_bytes_per_layer + head + self.compute_bytes + RUNTIME_BYTES

    @property
    def full_bytes(self) -> float:
        """Estimated GPU memory with every layer and the head on the GPU."""
        return (sum(self.layer_bytes) + self.block_count * self.kv_bytes_per_layer + self.output_bytes
                + self.compute_bytes + RUNTIME_BYTES)

    def __str__(self) -> str:
        if self.n_gpu_layers == -1:
            where = f"all {self.block_count} layers and the output head on the GPU"
        elif self.layers_on_gpu == 0:
            where = "no layer fits on the GPU: every layer on the CPU"
        else:
            where = f"{self.layers_on_gpu} of {self.block_count} layers on the GPU, the rest on the CPU"
        return (f"{where} (estimate {self.gpu_bytes / GIB:.2f} GiB of {self.usable_bytes / GIB:.2f} GiB usable; "
                f"all of it would need {self.full_bytes / GIB:.2f} GiB)")


def plan_offload(gguf_path: str | Path, n_ctx: int, usable_bytes: float | None = None,
                 n_batch: int = 512) -> OffloadPlan:
    """The most layers of `gguf_path` that fit `usable_bytes` of GPU memory (default: what this GPU has free for
    labkit, LABKIT_GPU_MEMORY included) with a context of `n_ctx` tokens."""
    from .errors import require_positive
    from .gguf_files import read_gguf

    require_positive("n_ctx", n_ctx)
    require_positive("n_batch", n_batch)
    if usable_bytes is None:
        from .hardware import usable_memory

        usable_bytes = usable_memory().bytes
    gguf = read_gguf(gguf_path)
    md, arch = gguf.metadata, gguf.architecture
    blocks = int(md[f"{arch}.block_count"])
    layer_bytes = [0] * blocks
    tensors = {t.name: t for t in gguf.tensors}
    for t in gguf.tensors:
        found = re.match(r"blk\.(\d+)\.", t.name)
        if found and int(found.group(1)) < blocks:
            layer_bytes[int(found.group(1))] += t.n_bytes
    head = tensors.get("output.weight") or tensors.get("token_embd.weight")  # tied: the head is the embeddings
    output_bytes = (head.n_bytes if head else 0) + (tensors["output_norm.weight"].n_bytes
                                                    if "output_norm.weight" in tensors else 0)
    heads = int(md.get(f"{arch}.attention.head_count", 1))
    kv_heads = int(md.get(f"{arch}.attention.head_count_kv", heads))
    width = int(md.get(f"{arch}.embedding_length", 0))
    key = int(md.get(f"{arch}.attention.key_length", width // max(heads, 1)))
    value = int(md.get(f"{arch}.attention.value_length", key))
    kv_per_layer = float(n_ctx * kv_heads * (key + value) * KV_BYTES_PER_VALUE)
    vocab = head.shape[-1] if head is not None and len(head.shape) > 1 else 0
    ffn = int(md.get(f"{arch}.feed_forward_length", 4 * width) or 4 * width)
    compute = compute_buffer_bytes(n_ctx, n_batch, heads, ffn, width, vocab)
    return fit_layers(layer_bytes, kv_per_layer, output_bytes, compute, usable_bytes)


def compute_buffer_bytes(n_ctx: int, n_batch: int, heads: int, ffn: int, width: int, vocab: int) -> float:
    """One batch's activations in f32: attention scores over the context, the FFN, and the logits of the batch."""
    ubatch = min(n_batch, n_ctx)
    return 4.0 * ubatch * (heads * n_ctx + 2 * ffn + 4 * width + vocab)


def fit_layers(layer_bytes: Sequence[float], kv_bytes_per_layer: float, output_bytes: float, compute_bytes: float,
               usable_bytes: float) -> OffloadPlan:
    """The plan for layers of these sizes (from a GGUF's tensor table, or estimated for a file not downloaded yet,
    labkit.gguf_choice): as many of the last layers as fit beside the buffers and the runtime, and the output head
    too when every layer does."""
    blocks = len(layer_bytes)
    budget = usable_bytes - RUNTIME_BYTES - compute_bytes
    on_gpu, used = 0, 0.0
    for size in reversed(layer_bytes):  # llama.cpp offloads the last layers first
        if used + size + kv_bytes_per_layer > budget:
            break
        used += size + kv_bytes_per_layer
        on_gpu += 1
    everything = on_gpu == blocks and used + output_bytes <= budget
    return OffloadPlan(n_gpu_layers=-1 if everything else on_gpu, block_count=blocks, layers_on_gpu=on_gpu,
                       layer_bytes=tuple(layer_bytes), kv_bytes_per_layer=float(kv_bytes_per_layer),
                       output_bytes=output_bytes, compute_bytes=compute_bytes, usable_bytes=float(usable_bytes))


def gpu_layers_for(gguf_path: str | Path, n_ctx: int, n_batch: int = 512) -> tuple[int, OffloadPlan | None]:
    """n_gpu_layers for a llama.cpp build with a GPU backend, sized from `plan_offload` when torch can see that GPU
    (CUDA or Apple's MPS) to say how much memory it has; every layer (-1) when it cannot (a CPU-only torch beside
    a CUDA llama.cpp: nothing to size from)."""
    from .hardware import detect_hardware

    if detect_hardware(check_online=False).device not in ("cuda", "mps"):
        return -1, None
    plan = plan_offload(gguf_path, n_ctx, n_batch=n_batch)
    return plan.n_gpu_layers, plan
