"""The roofline's view of serving, and the capacity planner built on it.

`estimate_load`: `users` users decoding together. A decode step reads the weights once for everyone plus each
user's KV cache (memory time at the bandwidth), and does 2 FLOPs per parameter per user (compute time at the FLOP/s);
it takes the longer. Prompts are processed at the compute ceiling while decoding waits, which stretches everyone's
ITL and queues TTFTs. `plan_capacity`: for a model, a card, prompt and answer lengths and a latency target, the
users that fit in memory (KV cache), meet the ITL target and meet the TTFT target; the smallest wins.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .architecture import active_parameter_count, weight_tensors
from .bench import read_gguf_header, roofline_tokens_per_s
from .errors import LabkitError, require_count, require_positive, unknown
from .hardware import find_gpu, usable_memory
from .loadgen import Slo
from .vram import kv_cache_bytes, weight_bytes

MAX_PLANNED_USERS = 100_000  # the planner's (and the estimate's) upper bound



@dataclass(frozen=True)
class LoadEstimate:
    """The roofline's view of `users` users each asking for `new_tokens` after a `prompt_tokens` prompt."""

    users: int
    step_s: float  # one decode step: one new token for every user
    prefill_s: float  # one request's prompt
    itl_s: float  # a user's gap between tokens: its steps, plus the other users' prompts processed meanwhile
    ttft_burst_s: float  # the last of `users` requests that arrive at once: every prompt before its own, then a step
    tokens_per_s: float  # all users, prefills included
    bound: str  # what limits a decode step: "memory" or "compute"


def estimate_load(users: int, prompt_tokens: float, new_tokens: int, weight_bytes: float, kv_bytes_per_user: float,
                  bandwidth_bytes_per_s: float, flops: float, decode_params: float,
                  prefill_params: float | None = None) -> LoadEstimate:
    """Throughput and latency of `users` users decoding together, from bandwidth and FLOP/s alone.

    A decode step reads the weights once for everyone plus each user's KV cache (memory time), and does 2 FLOPs per
    parameter per user (compute time); it takes the longer of the two. A prompt is processed at the compute
    ceiling, and decoding waits meanwhile. So one round of `users` requests takes users x prefill + new_tokens x
    step and yields users x new_tokens tokens; while one user's answer is generated, the other users' prompts
    (users - 1 of them) are processed too, which stretches its ITL.
    """
    require_count("users", users, 1, MAX_PLANNED_USERS)
    require_count("new_tokens", new_tokens, 1, 1 << 20)
    for name, value in (("weight_bytes", weight_bytes), ("bandwidth_bytes_per_s", bandwidth_bytes_per_s),
                        ("flops", flops), ("decode_params", decode_params)):
        require_positive(name, value)
    require_positive("kv_bytes_per_user", kv_bytes_per_user, allow_zero=True)
    require_positive("prompt_tokens", prompt_tokens, allow_zero=True)
    memory = (weight_bytes + users * kv_bytes_per_user) / bandwidth_bytes_per_s
    compute = users * 2 * decode_params / flops
    step = max(memory, compute)
    prefill = 2 * (prefill_params if prefill_params is not None else decode_params) * prompt_tokens / flops
    return LoadEstimate(users, step, prefill, step + (users - 1) * prefill / new_tokens, users * prefill + step,
                        users * new_tokens / (users * prefill + new_tokens * step),
                        "memory" if memory >= compute else "compute")


def gguf_parameters(path: str | Path) -> tuple[float, float]:
    """Parameters one decode step and one prompt token multiply with, from a GGUF's tensor table.

    Decode skips the input embedding (a row gather) unless it is tied to the output layer, whose product every
    new token needs. A prompt token needs neither: llama.cpp computes the output layer for the last one only.
    """
    _, tensors = read_gguf_header(path)
    sizes = {t.name: math.prod(t.shape) for t in tensors}
    total = float(sum(sizes.values()))
    embedding, output = sizes.get("token_embd.weight", 0), sizes.get("output.weight")
    decode = total - embedding if output is not None else total
    prefill = total - embedding - (output or 0)
    return decode, prefill


GIB = 1024**3
GPU_RUNTIME_OVERHEAD_BYTES = 1.5 * GIB  # CUDA context (~0.7 GiB, notebook 03) + llama.cpp's compute buffers
WEIGHT_FORMATS = ("Q4_K_M", "Q8_0", "bf16")


@dataclass(frozen=True)
class Device:
    """What the planner needs from a machine: memory a model may use, bandwidth, and FLOP/s."""

    name: str
    memory_bytes: float  # usable (after the course's 5% margin)
    bandwidth_bytes_per_s: float
    flops: float
    overhead_bytes: float
    source: str
    compute_efficiency: float | None = None  # measured share of `flops` the runtime reaches; None: the plan's own


def gpu_device(name: str) -> Device:
    """A card from datasets/gpus.json: usable memory as CUDA shows it, datasheet bandwidth and fp16 FLOP/s."""
    gpu = find_gpu(name)
    return Device(gpu["name"], usable_memory(gpu).bytes, gpu["bandwidth_gbps"] * 1e9, gpu["fp16_tflops"] * 1e12,
                  GPU_RUNTIME_OVERHEAD_BYTES, gpu["source"])


def this_machine(bandwidth_bytes_per_s: float, flops: float, memory_bytes: float | None = None,
                 compute_efficiency: float | None = None) -> Device:
    """This machine as measured: a timed copy's bandwidth, a timed matrix product's FLOP/s, available memory, and
    (optionally) the share of those FLOP/s the runtime was measured to reach on prompts."""
    require_positive("bandwidth_bytes_per_s", bandwidth_bytes_per_s)
    require_positive("flops", flops)
    if compute_efficiency is not None:
        _require_fraction("compute_efficiency", compute_efficiency)
    memory = memory_bytes if memory_bytes is not None else usable_memory().bytes
    return Device("this machine", memory, bandwidth_bytes_per_s, flops, 0.0, "measured in this notebook",
                  compute_efficiency)


def _require_fraction(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise LabkitError(f"{name} must be a fraction above 0 and at most 1 (of the peak), got {value!r}")


def model_parameters(model: str) -> tuple[float, float]:
    """Parameters one decode step and one prompt token multiply with (see `gguf_parameters`), from a config:
    the active parameters (a mixture of experts uses a few experts per token), less the input embedding (a
    gather) unless the output layer is tied to it, less the output layer for prompt tokens."""
    by_kind: dict[str, float] = {}
    for t in weight_tensors(model):
        by_kind[t.kind] = by_kind.get(t.kind, 0) + t.numel
    active = float(active_parameter_count(model))
    embedding, head = by_kind.get("embedding", 0.0), by_kind.get("lm_head")
    decode = active - embedding if head is not None else active
    return decode, active - embedding - (head or 0.0)


@dataclass(frozen=True)
class CapacityPlan:
    """How many users decode at once within the latency target, and what limits it."""

    model: str
    device: Device
    weights: str
    prompt_tokens: int
    new_tokens: int
    slo: Slo
    efficiency: float  # share of the peak bandwidth (and FLOP/s, unless the device says) the runtime reaches
    weight_bytes: float
    kv_bytes_per_user: float
    decode_params: float
    prefill_params: float
    users_by_memory: int
    users_by_itl: int
    users_by_ttft: int

    @property
    def compute_efficiency(self) -> float:
        return self.device.compute_efficiency or self.efficiency

    @property
    def users(self) -> int:
        return min(self.users_by_memory, self.users_by_itl, self.users_by_ttft)

    @property
    def limit(self) -> str:
        limits = {"memory (KV cache)": self.users_by_memory, "ITL target": self.users_by_itl,
                  "TTFT target": self.users_by_ttft}
        return min(limits, key=limits.get)

    def with_compute_efficiency(self, share: float) -> CapacityPlan:
        """The same plan, with the device reaching `share` of its peak FLOP/s (a measured figure, e.g.
        serving.measured_compute_share) instead of the bandwidth efficiency."""
        device = dataclasses.replace(self.device, compute_efficiency=share)
        return plan_capacity(self.model, device, self.weights, self.prompt_tokens, self.new_tokens, self.slo,
                             self.efficiency)

    def at(self, users: int) -> LoadEstimate:
        """The estimate at `users` users (`estimate_load` at the plan's efficiencies)."""
        return estimate_load(max(1, users), self.prompt_tokens, self.new_tokens, self.weight_bytes,
                             self.kv_bytes_per_user, self.device.bandwidth_bytes_per_s * self.efficiency,
                             self.device.flops * self.compute_efficiency, self.decode_params, self.prefill_params)

    def text(self) -> str:
        u = self.users
        one = self.at(1)
        lines = [f"{self.model} ({self.weights}, {self.weight_bytes / 1e9:.1f} GB) on {self.device.name}: prompts of "
                 f"{self.prompt_tokens:,} tokens, answers of {self.new_tokens:,}, {self.slo}; the runtime at "
                 f"{self.efficiency:.0%} of peak bandwidth and {self.compute_efficiency:.0%} of peak FLOP/s",
                 f"  memory : {self.users_by_memory:>6,} users ({self.kv_bytes_per_user / 2**20:,.0f} MiB of KV "
                 f"cache each)",
                 f"  ITL    : {self.users_by_itl:>6,} users (decode steps + the others' prompts ≤ "
                 f"{self.slo.itl_s * 1000:,.0f} ms a token)",
                 f"  TTFT   : {self.users_by_ttft:>6,} users (own prompt {one.prefill_s * 1000:,.0f} ms + one step ≤ "
                 f"{self.slo.ttft_s * 1000:,.0f} ms, arrivals spread out)",
                 f"→ {u:,} concurrent users, limited by {self.limit}"]
        if u:
            e = self.at(u)
            lines.append(f"  at {u:,} users: ITL {e.itl_s * 1000:,.0f} ms ({1 / e.itl_s:,.1f} tok/s each), "
                         f"{e.tokens_per_s:,.0f} tok/s in all; if all {u:,} arrived at once, the last would wait "
                         f"{e.ttft_burst_s:,.1f} s for its first token")
        return "\n".join(lines)



def plan_capacity(model: str = "llama-3.1-8b", device: str | Device = "H100", weights: str = "Q4_K_M",
                  prompt_tokens: int = 1024, new_tokens: int = 256, slo: Slo | None = None,
                  efficiency: float = 0.5) -> CapacityPlan:
    """Concurrent users a card serves within a latency target, from the roofline (an estimate, not a promise).

    Memory: the weights plus one KV cache of prompt + answer per user must fit. ITL: `estimate_load`'s gap between
    a user's tokens (a decode step of all users, plus the other users' prompts processed meanwhile). TTFT: a
    prompt's prefill plus one step, with arrivals spread out (a burst queues prefills; the text says how long).
    `efficiency` is the share of the datasheet peak the runtime reaches (your measurement: 1 user's tokens/s ÷ the
    roofline, `measured_efficiency`).
    """
    slo = slo or Slo()
    dev = gpu_device(device) if isinstance(device, str) else device
    if weights not in WEIGHT_FORMATS:
        raise unknown("weight format", weights, WEIGHT_FORMATS)
    require_count("prompt_tokens", prompt_tokens, 1, 1 << 21)
    require_count("new_tokens", new_tokens, 1, 1 << 20)
    _require_fraction("efficiency", efficiency)
    w = float(sum(weight_bytes(model, weights).values()))
    kv = float(kv_cache_bytes(model, prompt_tokens + new_tokens, kv_dtype="fp16"))
    decode_params, prefill_params = model_parameters(model)
    by_memory = max(0, min(MAX_PLANNED_USERS, int((dev.memory_bytes - w - dev.overhead_bytes) // kv)))
    plan = CapacityPlan(model, dev, weights, prompt_tokens, new_tokens, slo, float(efficiency), w, kv, decode_params,
                        prefill_params, by_memory, 0, 0)

    def most_users(fits) -> int:  # the largest user count that still fits (both latencies grow with users)
        if not fits(1):
            return 0
        low, high = 1, MAX_PLANNED_USERS
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if fits(mid) else (low, mid - 1)
        return low

    by_itl = most_users(lambda u: plan.at(u).itl_s <= slo.itl_s)
    by_ttft = most_users(lambda u: plan.at(u).prefill_s + plan.at(u).step_s <= slo.ttft_s)
    return CapacityPlan(model, dev, weights, prompt_tokens, new_tokens, slo, float(efficiency), w, kv, decode_params,
                        prefill_params, by_memory, by_itl, by_ttft)


def measured_efficiency(tokens_per_s: float, weight_bytes: float, kv_bytes: float, bandwidth_bytes_per_s: float) -> float:
    """The share of the bandwidth roofline one user's measured decode speed reached (≤ 1)."""
    return min(1.0, tokens_per_s / roofline_tokens_per_s(weight_bytes + kv_bytes, bandwidth_bytes_per_s))
