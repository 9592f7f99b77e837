"""Which GGUF file to download for your GPU or Mac and the context you need (notebook 04, section 10).

A model on the Hub comes as a dozen GGUF files, one per level (Q8_0 ... Q2_K, IQ4_XS ...). For each level this
computes the file's size (labkit.vram's bits per weight), whether the weights, the cache for `context` tokens and
llama.cpp's buffers fit the GPU, and when they do not, how many layers llama.cpp can keep there: **partial offload**,
`-ngl N` / `n_gpu_layers=N`, labkit.offload's rule (the last layers first, each with its share of the cache). The
layers left on the CPU read their weights from system RAM at every token, so the decode roofline of a split is
(bytes on the GPU ÷ its bandwidth) + (bytes on the CPU ÷ RAM bandwidth) per token. On a Mac the GPU shares the
unified memory, of which macOS lets Metal use about 2/3 (up to 36 GB) or 3/4 (above): there is no split to make.

`choose_gguf` returns one row per level and the pick: the most bits that run entirely on the GPU, else the split that
keeps the most layers there. Quality per level is llama.cpp's published Llama 3 8B table (KLD), where it has the level.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import vram
from .architecture import architecture, weight_tensors
from .dtypes import BITS_PER_WEIGHT, normalize_dtype
from .errors import LabkitError, require_positive
from .formatting import GIB
from .hardware import find_gpu, shown_gib
from .offload import OffloadPlan, compute_buffer_bytes, fit_layers
from .quant import published_llama3_8b

DOWNLOAD_LEVELS = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "IQ4_XS", "Q4_0", "Q3_K_M", "IQ3_M", "Q2_K", "IQ2_M")
MAC_SHARE_SMALL, MAC_SHARE_LARGE, MAC_SHARE_THRESHOLD_GB = 2 / 3, 3 / 4, 36  # macOS's default GPU working set


@dataclass(frozen=True)
class Target:
    """Where the model will run: its GPU memory (usable, after the course's 5% margin) and bandwidths."""

    name: str
    gpu_bytes: float
    gpu_bandwidth: float | None  # bytes/s, None when unknown
    ram_bandwidth: float | None  # bytes/s of the CPU side (None on a Mac: no split)
    unified: bool = False
    memory_bytes: float | None = None  # a Mac's whole unified memory (after the margin): CPU and GPU share it


def target(gpu: Any = None, mac_memory_gb: float | None = None, ram_bandwidth_gbps: float | None = None,
           mac_bandwidth_gbps: float | None = None) -> Target:
    """A GPU from datasets/gpus.json ("RTX 4090"), a number of GiB of VRAM, or a Mac with `mac_memory_gb` of
    unified memory (macOS's default share for the GPU). `ram_bandwidth_gbps`: the CPU side's memory bandwidth
    (default: unknown, and the speed column stays empty for splits)."""
    from .hardware import SAFETY_MARGIN

    keep = 1 - SAFETY_MARGIN
    ram = ram_bandwidth_gbps * 1e9 if ram_bandwidth_gbps else None
    if mac_memory_gb is not None:
        require_positive("mac_memory_gb", mac_memory_gb)
        share = MAC_SHARE_LARGE if mac_memory_gb > MAC_SHARE_THRESHOLD_GB else MAC_SHARE_SMALL
        return Target(f"a Mac with {mac_memory_gb:g} GB (GPU share {share:.0%})", mac_memory_gb * 1e9 * share * keep,
                      mac_bandwidth_gbps * 1e9 if mac_bandwidth_gbps else None, None, unified=True,
                      memory_bytes=mac_memory_gb * 1e9 * keep)
    if gpu is None:
        raise LabkitError("say where the model runs: gpu='RTX 4090' (a name from datasets/gpus.json), gpu=12 (GiB of "
                          "VRAM), or mac_memory_gb=32 for a Mac")
    if isinstance(gpu, str):
        card = find_gpu(gpu)
        return Target(card["name"], shown_gib(card) * GIB * keep, card["bandwidth_gbps"] * 1e9, ram)
    require_positive("gpu (GiB)", gpu)
    return Target(f"{gpu:g} GiB of VRAM", float(gpu) * GIB * keep, None, ram)


def _level_sizes(model: str, level: str, context: int, n_batch: int = 512) -> dict:
    """The sizes labkit.offload's rule needs, for a file not downloaded yet: per-layer weights at the level's bits,
    the output head (Q6_K, or Q8_0 when tied to the embeddings), each layer's f16 cache, one batch's buffer."""
    a = architecture(model)
    bits = BITS_PER_WEIGHT[normalize_dtype(level)]
    tensors = weight_tensors(a)
    head = next((t for t in tensors if t.kind == "lm_head"), None)
    tied = head is None
    head = head or next(t for t in tensors if t.kind == "embedding")
    head_bits = max(bits, BITS_PER_WEIGHT["Q8_0" if tied else "Q6_K"])
    embedding = next(t for t in tensors if t.kind == "embedding").numel
    total = sum(t.numel for t in tensors)
    blocks = total - embedding - (0 if tied else head.numel)
    file_bytes = sum(vram.weight_bytes(a, level).values())
    kv = vram.kv_cache_bytes_per_layer(a, context, kv_dtype="fp16")
    return dict(file_bytes=file_bytes, layer_bytes=tuple([blocks * bits / 8 / a.num_layers] * a.num_layers),
                kv_bytes_per_layer=sum(kv) / len(kv), output_bytes=head.numel * head_bits / 8,
                compute_bytes=compute_buffer_bytes(context, n_batch, a.num_heads, a.intermediate_size, a.hidden_size,
                                                   a.vocab_size))


@dataclass(frozen=True)
class GgufOption:
    level: str
    file_gb: float
    plan: OffloadPlan
    decode_tokens_per_s: float | None  # roofline of the split, None when a bandwidth is unknown
    published_kld: float | None  # llama.cpp's Llama 3 8B table, for the levels it has
    fits_memory: bool = True  # False on a Mac whose whole unified memory is smaller than the file: no split helps

    @property
    def whole_model_on_gpu(self) -> bool:
        return self.plan.n_gpu_layers == -1

    def row(self) -> dict:
        plan = self.plan
        where = ("does not fit this memory" if not self.fits_memory else "all on the GPU" if self.whole_model_on_gpu
                 else f"{plan.layers_on_gpu} of {plan.block_count} layers on the GPU" if plan.layers_on_gpu else
                 "does not fit: CPU only")
        return {"level": self.level, "file GB": round(self.file_gb, 2), "where": where,
                "-ngl": plan.n_gpu_layers if plan.n_gpu_layers == -1 else plan.layers_on_gpu,
                "GPU GiB": round(plan.gpu_bytes / GIB, 2),
                "decode tok/s (roofline)": round(self.decode_tokens_per_s) if self.decode_tokens_per_s else "–",
                "KLD (Llama 3 8B)": self.published_kld if self.published_kld is not None else "–"}


def _decode_roofline(sizes: dict, plan: OffloadPlan, where: Target) -> float | None:
    """Bytes read per token on each side over that side's bandwidth (the cache of the offloaded layers is read on
    the GPU, the rest on the CPU)."""
    on_gpu = plan.layers_on_gpu
    layers = len(sizes["layer_bytes"])
    gpu = sum(sizes["layer_bytes"][layers - on_gpu:]) + on_gpu * sizes["kv_bytes_per_layer"]
    cpu = sum(sizes["layer_bytes"][:layers - on_gpu]) + (layers - on_gpu) * sizes["kv_bytes_per_layer"]
    head = sizes["output_bytes"]
    gpu, cpu = (gpu + head, cpu) if plan.n_gpu_layers == -1 else (gpu, cpu + head)
    if (gpu and not where.gpu_bandwidth) or (cpu and not where.ram_bandwidth):
        return None
    seconds = (gpu / where.gpu_bandwidth if gpu else 0.0) + (cpu / where.ram_bandwidth if cpu else 0.0)
    return 1 / seconds


def choose_gguf(model: str, where: Target, context: int = 8192,
                levels: Sequence[str] = DOWNLOAD_LEVELS) -> tuple[list[GgufOption], GgufOption]:
    """One option per level for `model` (a shipped config) on `where` (see `target`) with `context` tokens, and the
    pick: the most bits per weight that runs entirely on the GPU, else the level that keeps the most layers there
    (the larger file when two keep as many)."""
    require_positive("context", context)
    published = {p["level"]: p["kld"] for p in published_llama3_8b()}
    options = []
    for level in levels:
        sizes = _level_sizes(model, level, context)
        plan = fit_layers(sizes["layer_bytes"], sizes["kv_bytes_per_layer"], sizes["output_bytes"],
                          sizes["compute_bytes"], where.gpu_bytes)
        fits = not (where.unified and where.memory_bytes and sizes["file_bytes"] > where.memory_bytes)
        options.append(GgufOption(level, sizes["file_bytes"] / 1e9, plan, _decode_roofline(sizes, plan, where),
                                  published.get(level), fits))
    whole = [o for o in options if o.whole_model_on_gpu and o.fits_memory]
    fitting = [o for o in options if o.fits_memory]
    if whole:
        pick = whole[0]
    elif fitting:
        pick = max(fitting, key=lambda o: (o.plan.layers_on_gpu, o.file_gb))
    else:  # nothing fits: the smallest file, marked as not fitting (pick_markdown says so)
        pick = min(options, key=lambda o: o.file_gb)
    return options, pick


def pick_markdown(model: str, where: Target, context: int, options: Sequence[GgufOption], pick: GgufOption) -> str:
    """The choice in sentences, with the command that runs it."""
    if not pick.fits_memory:
        return (f"**{model} on {where.name}, {context:,} tokens of context: no file fits.** The smallest level here, "
                f"{pick.level}, is {pick.file_gb:.1f} GB, more than the whole {where.memory_bytes / 1e9:.1f} GB "
                "this Mac's memory offers (CPU and GPU share it, so there is nothing to offload to): it would page "
                "from the disk at every token. Pick a smaller model, or a Mac with more memory.")
    ngl = "-1" if pick.whole_model_on_gpu else str(pick.plan.layers_on_gpu)
    head = (f"**{model} on {where.name}, {context:,} tokens of context: download the {pick.level} file "
            f"({pick.file_gb:.1f} GB).** ")
    if pick.whole_model_on_gpu:
        smaller = [o for o in options if o.file_gb < pick.file_gb and o.whole_model_on_gpu]
        text = (f"It is the level with the most bits whose weights, cache and buffers fit the GPU "
                f"({pick.plan.gpu_bytes / GIB:.1f} GiB of {where.gpu_bytes / GIB:.1f} GiB usable); "
                f"{len(smaller)} smaller level{'s' if len(smaller) != 1 else ''} fit too, at a cost in quality.")
    elif pick.plan.layers_on_gpu:
        cpu_share = 1 - pick.plan.layers_on_gpu / pick.plan.block_count
        ram = ("the same unified memory" if where.unified else
               f"system RAM (about {pick.file_gb * cpu_share:.0f} GB of weights must fit there)")
        text = (f"No level fits entirely; with this one llama.cpp keeps {pick.plan.layers_on_gpu} of "
                f"{pick.plan.block_count} layers on the GPU (`-ngl {pick.plan.layers_on_gpu}`) and runs the rest on the "
                f"CPU, reading their weights from {ram} at every token: expect the speed of the slow side. The "
                "table shows the trade: each level with more bits keeps fewer layers on the GPU and decodes slower. A "
                "shorter context or a smaller model may run entirely on the GPU.")
    else:
        text = "Not even one layer fits next to the buffers: run it on the CPU, or pick a smaller model."
    tps = pick.decode_tokens_per_s
    speed = f" Decode roofline: about {tps:.1f} tokens/s." if tps and tps < 10 else (
        f" Decode roofline: about {tps:.0f} tokens/s." if tps else "")
    command = f"\n\n    llama-server -m {model}-{pick.level}.gguf -c {context} -ngl {ngl} -fa on"
    return head + text + speed + command
