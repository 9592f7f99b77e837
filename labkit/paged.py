"""A PagedAttention simulator: how a server's KV-cache allocator wastes memory, or does not (notebook 05).

Requests arrive with a prompt and generate an output of a length nobody knows in advance. A contiguous
allocator reserves each request's cache in one piece up front (the maximum length, the next power of
two, or, as an oracle, exactly its length); paging (vLLM) hands out fixed-size blocks as the sequence
grows, so only the last block of each sequence is partly empty, and requests that share a prompt prefix
can share its full blocks. `simulate_serving` replays a request stream with continuous batching under
one allocator; `compare_allocators` runs them all on the same stream.

After Kwon et al., "Efficient Memory Management for Large Language Model Serving with PagedAttention",
SOSP 2023 (arXiv:2309.06180). Plain Python (no torch): the model enters only through `step_cost` (the
bandwidth roofline of a decode step) and `capacity_tokens` (the cache that fits next to the weights),
both from labkit.vram's formulas.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from . import vram
from .architecture import architecture
from .bench import kv_cache_bytes_read
from .check import exercise
from .errors import LabkitError, require_positive, require_tokens, unknown
from .formatting import GIB

# matplotlib is imported inside the functions that use it: `import labkit` stays quick and works without the
# optional extras.

# SimulatedRequest length mixes. Means from the vLLM paper's workloads (Kwon et al. 2023, §6.1, Fig. 11):
# ShareGPT conversations average 161 prompt and 338 output tokens, Alpaca instructions 19 and 58.
# The shapes here are log-normal with those means (the real traces are long-tailed too).
LENGTH_MIXES: dict[str, dict[str, float]] = {
    "sharegpt-like": {"prompt_mean": 161, "output_mean": 338, "sigma": 1.0},
    "alpaca-like": {"prompt_mean": 19, "output_mean": 58, "sigma": 0.8},
    "long prompts (RAG-like)": {"prompt_mean": 1200, "output_mean": 150, "sigma": 0.5},
}
ALLOCATORS = ("contiguous-max", "contiguous-pow2", "contiguous-oracle", "paged", "paged+prefix-sharing")


@dataclass(frozen=True)
class SimulatedRequest:
    prompt: int  # tokens, including any shared system prompt
    output: int  # tokens it will generate
    arrival_step: int = 0


def sample_requests(n: int, mix: str = "sharegpt-like", max_seq_len: int = 2048, arrival_rate: float | None = None,
                    shared_prefix: int = 0, seed: int = 0) -> list[SimulatedRequest]:
    """`n` requests with log-normal prompt/output lengths (see LENGTH_MIXES), each fitting `max_seq_len`.

    `arrival_rate`: requests per decode step (Poisson arrivals); None = all waiting at step 0.
    `shared_prefix`: tokens of a system prompt every request starts with (added to its prompt).
    """
    require_positive("n", n)
    if mix not in LENGTH_MIXES:
        raise unknown("length mix", mix, LENGTH_MIXES)
    require_tokens("max_seq_len", max_seq_len)
    require_positive("shared_prefix", shared_prefix, allow_zero=True)
    if shared_prefix + 2 > max_seq_len:
        raise LabkitError(f"shared_prefix={shared_prefix} leaves no room in max_seq_len={max_seq_len}")
    if arrival_rate is not None:
        require_positive("arrival_rate", arrival_rate)
    m = LENGTH_MIXES[mix]
    rng = random.Random(seed)

    def draw(mean: float) -> int:
        sigma = m["sigma"]
        return max(1, round(rng.lognormvariate(math.log(mean) - sigma**2 / 2, sigma)))

    out, t = [], 0.0
    for _ in range(int(n)):
        prompt = min(draw(m["prompt_mean"]), max_seq_len - shared_prefix - 1) + shared_prefix
        output = min(draw(m["output_mean"]), max_seq_len - prompt)
        if arrival_rate is not None:
            t += rng.expovariate(arrival_rate)
        out.append(SimulatedRequest(prompt, output, int(t)))
    return out


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def reserved_slots(request: SimulatedRequest, allocator: str, max_seq_len: int) -> int:
    """Token slots a contiguous allocator reserves for a request when it starts (the paper's three
    Orca baselines): the maximum length, the next power of two of its true length, or exactly its
    true length (an oracle that knows the output length in advance)."""
    true_len = request.prompt + request.output
    if allocator == "contiguous-max":
        return max_seq_len
    if allocator == "contiguous-pow2":
        return min(max_seq_len, _next_pow2(true_len))
    if allocator == "contiguous-oracle":
        return true_len
    raise unknown("contiguous allocator", allocator, ALLOCATORS[:3])


def blocks_for(tokens: int, block_size: int) -> int:
    """Blocks of `block_size` token slots that `tokens` tokens occupy."""
    return -(-tokens // block_size)


def paged_slack(lengths: Sequence[int], block_size: int) -> int:
    """Empty slots in the last block of each sequence: paging's only waste."""
    require_positive("block_size", block_size)
    return sum(blocks_for(n, block_size) * block_size - n for n in lengths)


@dataclass
class ServingResult:
    """One simulated serving run. Memory figures are time averages over the steps with work running."""

    allocator: str
    block_size: int
    capacity_tokens: int
    requests: int
    finished: int
    steps: int
    generated_tokens: int
    mean_running: float  # requests decoding at once, on average
    max_running: int
    memory: dict[str, float]  # share of the allocated KV memory: token states, reserved, fragmentation
    waste_percent: float  # 100 - token states
    preemptions: int
    seconds: float  # simulated time (each step from the bandwidth model), or steps if none was given
    tokens_per_request: float = 0.0  # allocated token slots per running request (time average; shared blocks split)
    slack_per_request: float = 0.0  # of those, empty or reserved-but-unused slots per running request
    timeline: dict[str, list[float]] = field(default_factory=dict, repr=False)

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds else float("nan")

    def row(self) -> dict:
        return {"allocator": self.allocator, "waste %": round(self.waste_percent, 1),
                "token states %": round(self.memory["token states"], 1), "mean batch": round(self.mean_running, 1),
                "max batch": self.max_running, "finished": f"{self.finished}/{self.requests}", "steps": self.steps,
                "tokens/s": round(self.tokens_per_second, 1), "preemptions": self.preemptions}


@dataclass(frozen=True)
class StepCost:
    """Seconds per decode step from the bandwidth roofline: the weights once, plus every running
    sequence's cache (labkit.bench.kv_cache_bytes_read's per-token figure times the tokens held)."""

    weight_bytes: float
    kv_bytes_per_token: float
    bandwidth_bytes_per_s: float

    def seconds(self, tokens_held: int) -> float:
        return (self.weight_bytes + self.kv_bytes_per_token * tokens_held) / self.bandwidth_bytes_per_s


def step_cost(model: str = "llama-3.1-8b", dtype: str = "bf16", bandwidth_bytes_per_s: float = 3.35e12) -> StepCost:
    """The roofline step time of `model` (weights in `dtype`, bf16 cache) on a GPU of this bandwidth
    (default: an H100 SXM's 3.35 TB/s)."""
    a = architecture(model)
    weights = sum(vram.weight_bytes(a, dtype).values())
    per_token = kv_cache_bytes_read(a.num_layers, a.num_kv_heads, a.head_dim, 1) if not a.is_mla else \
        sum(vram.kv_cache_bytes_per_token(a).values())
    return StepCost(weights, per_token, bandwidth_bytes_per_s)


def capacity_tokens(model: str, gpu_gib: float, dtype: str = "bf16", overhead_gib: float = 2.0) -> int:
    """Tokens of KV cache that fit next to the weights on a GPU of `gpu_gib` (what vLLM pre-allocates)."""
    require_positive("gpu_gib", gpu_gib)
    a = architecture(model)
    free = gpu_gib * GIB - sum(vram.weight_bytes(a, dtype).values()) - overhead_gib * GIB
    if free <= 0:
        raise LabkitError(f"{model} in {dtype} does not fit {gpu_gib} GiB at all; no room for a cache.")
    return int(free // sum(vram.kv_cache_bytes_per_token(a).values()))


def simulate_serving(requests: Sequence[SimulatedRequest], capacity_tokens: int, allocator: str = "paged",
                     block_size: int = 16, max_seq_len: int = 2048, shared_prefix: int = 0,
                     cost: StepCost | None = None, max_steps: int = 200_000) -> ServingResult:
    """Serve `requests` with continuous batching and one KV allocator, one decode step at a time.

    Each step: requests that have arrived are admitted first-come-first-served while their memory
    fits; every running request then adds one token to its cache; finished requests free theirs.
    - contiguous-*: a request reserves one contiguous region up front (see `reserved_slots`) and
      keeps it until it finishes. Waste = reserved-but-unused slots (for tokens not generated yet,
      or never).
    - paged: a request holds ceil(tokens / block_size) blocks, taking a new block only when the last
      is full; when no block is free the newest request is preempted (its blocks freed, recomputed later).
    - paged+prefix-sharing: as paged, but the full blocks of the `shared_prefix` are stored once.
    Memory shares are averaged over steps, relative to the memory allocated at that step.
    """
    if allocator not in ALLOCATORS:
        raise unknown("allocator", allocator, ALLOCATORS)
    require_tokens("capacity_tokens", capacity_tokens)
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise LabkitError(f"block_size must be a whole number of tokens, 1 or more; got {block_size!r}")
    require_positive("shared_prefix", shared_prefix, allow_zero=True)
    paged = allocator.startswith("paged")
    sharing = allocator == "paged+prefix-sharing"
    for r in requests:
        if r.prompt + r.output > max_seq_len:
            raise LabkitError(f"a request of {r.prompt}+{r.output} tokens exceeds max_seq_len={max_seq_len}")
        if r.prompt < shared_prefix:
            raise LabkitError(f"shared_prefix={shared_prefix} is longer than a request's prompt ({r.prompt})")
    if (max_seq_len if not paged else blocks_for(max_seq_len, block_size) * block_size) > capacity_tokens:
        raise LabkitError(f"capacity_tokens={capacity_tokens} cannot hold even one request of max_seq_len="
                          f"{max_seq_len}: give the cache more memory or lower max_seq_len.")
    total_blocks = capacity_tokens // block_size
    shared_blocks = shared_prefix // block_size if sharing else 0  # full blocks of the common prefix
    shared_tokens = shared_blocks * block_size

    pending = sorted(range(len(requests)), key=lambda i: requests[i].arrival_step)
    waiting: list[int] = []
    running: list[dict] = []  # {"i", "held", "made", "slots"}  slots: reserved tokens or blocks
    used_blocks = 0  # including the shared prefix's blocks while any request uses them
    shared_live = False
    reserved_total = 0
    step = finished = generated = preemptions = 0
    sum_alloc = sum_states = sum_reserved = sum_internal = 0.0
    sum_running, max_running, seconds = 0, 0, 0.0
    timeline: dict[str, list[float]] = {"allocated": [], "token states": [], "running": []}
    nxt = 0

    def own_blocks(tokens: int) -> int:
        return blocks_for(tokens - shared_tokens, block_size) if tokens > shared_tokens else 0

    while (nxt < len(pending) or waiting or running) and step < max_steps:
        while nxt < len(pending) and requests[pending[nxt]].arrival_step <= step:
            waiting.append(pending[nxt])
            nxt += 1
        # admit first come, first served while memory allows
        while waiting:
            r = requests[waiting[0]]
            if paged:
                need = own_blocks(r.prompt) + (0 if shared_live else shared_blocks)
                if used_blocks + need + len(running) > total_blocks:  # keep one block of headroom per request
                    break
                used_blocks += need
                shared_live = sharing
                running.append({"i": waiting.pop(0), "held": r.prompt, "made": 0, "slots": own_blocks(r.prompt)})
            else:
                need = reserved_slots(r, allocator, max_seq_len)
                if reserved_total + need > capacity_tokens:
                    break
                reserved_total += need
                running.append({"i": waiting.pop(0), "held": r.prompt, "made": 0, "slots": need})
        if not running:
            step += 1
            continue
        # one decode step: every running request produces a token and stores its K/V
        held = sum(s["held"] for s in running)
        seconds += cost.seconds(held) if cost else 1.0
        for s in list(running):
            if s not in running:  # preempted earlier in this step
                continue
            s["held"] += 1
            s["made"] += 1
            generated += 1
            if paged:
                grow = own_blocks(s["held"]) - s["slots"]
                while grow > 0 and used_blocks + grow > total_blocks:  # out of blocks: preempt the newest
                    victim = running[-1]
                    used_blocks -= victim["slots"]
                    running.remove(victim)
                    waiting.insert(0, victim["i"])
                    generated -= victim["made"]
                    preemptions += 1
                    if victim is s:
                        grow = 0
                if s in running and grow > 0:
                    used_blocks += grow
                    s["slots"] += grow
        # memory accounting for this step (before finished requests leave)
        states = sum(s["held"] - (shared_tokens if sharing else 0) for s in running) + (
            shared_tokens if sharing and running else 0)
        if paged:
            allocated = used_blocks * block_size
            internal = allocated - states
            reserved = 0
        else:
            allocated = reserved_total
            reserved = sum(min(s["slots"], requests[s["i"]].prompt + requests[s["i"]].output) - s["held"]
                           for s in running)
            internal = allocated - states - reserved
        sum_alloc += allocated
        sum_states += states
        sum_reserved += reserved
        sum_internal += internal
        sum_running += len(running)
        max_running = max(max_running, len(running))
        timeline["allocated"].append(allocated)
        timeline["token states"].append(states)
        timeline["running"].append(len(running))
        for s in list(running):
            if s["made"] >= requests[s["i"]].output:
                running.remove(s)
                finished += 1
                if paged:
                    used_blocks -= s["slots"]
                else:
                    reserved_total -= s["slots"]
        if shared_live and not running:  # the last request using the shared prefix left: free its blocks
            used_blocks -= shared_blocks
            shared_live = False
        step += 1
    busy = len(timeline["running"]) or 1
    memory = {"token states": 100 * sum_states / sum_alloc if sum_alloc else 0.0,
              "reserved for later tokens": 100 * sum_reserved / sum_alloc if sum_alloc else 0.0,
              "fragmentation": 100 * sum_internal / sum_alloc if sum_alloc else 0.0}
    return ServingResult(
        allocator=allocator, block_size=block_size if paged else 0, capacity_tokens=capacity_tokens,
        requests=len(requests), finished=finished, steps=step, generated_tokens=generated,
        mean_running=sum_running / busy, max_running=max_running, memory=memory,
        waste_percent=100 - memory["token states"], preemptions=preemptions, seconds=seconds, timeline=timeline,
        tokens_per_request=sum_alloc / sum_running if sum_running else 0.0,
        slack_per_request=(sum_alloc - sum_states) / sum_running if sum_running else 0.0)


def compare_allocators(n_requests: int = 300, mix: str = "sharegpt-like", capacity: int = 65536,
                       block_size: int = 16, max_seq_len: int = 2048, arrival_rate: float | None = None,
                       shared_prefix: int = 0, allocators: Sequence[str] = ALLOCATORS,
                       cost: StepCost | None = None, seed: int = 0) -> list[ServingResult]:
    """The same request stream served by each allocator."""
    requests = sample_requests(n_requests, mix, max_seq_len, arrival_rate, shared_prefix, seed)
    return [simulate_serving(requests, capacity, a, block_size, max_seq_len, shared_prefix, cost) for a in allocators]


def serving_table(results: Sequence[ServingResult]) -> str:
    rows = [r.row() for r in results]
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    lines = ["  ".join(k.rjust(widths[k]) if i else k.ljust(widths[k]) for i, k in enumerate(keys))]
    for r in rows:
        lines.append("  ".join(str(r[k]).rjust(widths[k]) if i else str(r[k]).ljust(widths[k])
                               for i, k in enumerate(keys)))
    return "\n".join(lines)


def plot_serving(results: Sequence[ServingResult], title: str = "Where the KV memory goes"):
    """Left: the allocated KV memory split into token states / reserved / fragmentation per allocator.
    Right: how many requests decode at once, over time."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [1.1, 1]})
    names = [r.allocator for r in results]
    bottom = [0.0] * len(results)
    for part, colour in (("token states", "tab:green"), ("reserved for later tokens", "tab:orange"),
                         ("fragmentation", "tab:red")):
        vals = [r.memory[part] for r in results]
        left.barh(names, vals, left=bottom, color=colour, label=part)
        bottom = [b + v for b, v in zip(bottom, vals)]
    for i, r in enumerate(results):
        left.text(101, i, f"{r.waste_percent:.0f}% waste", va="center", fontsize=8)
    left.set_xlim(0, 125)
    left.set_xlabel("% of allocated KV memory (time average)")
    left.invert_yaxis()
    left.legend(fontsize=7, loc="lower right")
    left.set_title(title)
    for r in results:
        right.plot(r.timeline["running"], label=f"{r.allocator} (mean {r.mean_running:.0f})", lw=1)
    right.set_xlabel("decode step")
    right.set_ylabel("requests decoding at once")
    right.set_title("Batch size the memory allows")
    right.legend(fontsize=7)
    fig.tight_layout()
    return fig


def prefix_sharing_saved_tokens(n_requests: int, shared_prefix: int, block_size: int) -> int:
    """Token slots saved when `n_requests` running requests share the full blocks of a common prefix."""
    require_positive("n_requests", n_requests)
    require_positive("shared_prefix", shared_prefix, allow_zero=True)
    require_positive("block_size", block_size)
    return (n_requests - 1) * (shared_prefix // block_size) * block_size


# ============================================================================ exercises


@exercise("05.paged_slack_tokens",
          hint="Only the last block of a sequence can be partly empty. How many slots does each sequence's last block "
               "leave unused, and what if a sequence fills its blocks exactly?",
          slips={"counting a whole empty block when a length fills its blocks exactly":
                     lambda expected, lengths, block_size: sum(block_size - n % block_size for n in lengths),
                 "counting the filled slots of the last blocks instead of the empty ones":
                     lambda expected, lengths, block_size: sum(n % block_size for n in lengths),
                 "giving every slot the blocks hold, filled or not":
                     lambda expected, lengths, block_size: sum(blocks_for(n, block_size) * block_size for n in lengths)})
def _expected_paged_slack(lengths: Sequence[int], block_size: int) -> int:
    return paged_slack(lengths, block_size)


@exercise("05.requests_that_fit", answer="numbers", labels=("contiguous", "paged"),
          hint="A contiguous allocator reserves the worst case up front; paging hands out whole blocks as the sequence "
               "grows. How many slots does one request hold under each, at its final length? Answer (contiguous, paged).",
          slips={"not rounding the paged request up to whole blocks":
                     lambda expected, capacity, max_seq_len, length, block_size: (capacity // max_seq_len,
                                                                                capacity // length),
                 "swapping the two (the answer is (contiguous, paged))": lambda expected, **_: tuple(reversed(expected)),
                 "reserving the true length for the contiguous one too (only an oracle knows it in advance)":
                     lambda expected, capacity, length, **_: (capacity // length, expected[1])})
def _expected_requests_that_fit(capacity: int, max_seq_len: int, length: int, block_size: int) -> tuple[int, int]:
    return capacity // max_seq_len, capacity // (blocks_for(length, block_size) * block_size)


@exercise("05.prefix_saved_tokens",
          hint="Somebody has to store the prefix once; everyone else points at its blocks. Which of the prefix's "
               "blocks can be shared, and how many requests no longer store them?",
          slips={"sharing the partly filled last block too (only FULL blocks are shared)":
                     lambda expected, n_requests, shared_prefix, block_size: (n_requests - 1) * shared_prefix,
                 "saving a copy for every request, the first too (one copy is still stored)":
                     lambda expected, n_requests, shared_prefix, block_size:
                     n_requests * (shared_prefix // block_size) * block_size,
                 "giving blocks where token slots are asked":
                     lambda expected, n_requests, shared_prefix, block_size: expected / block_size})
def _expected_prefix_saved(n_requests: int, shared_prefix: int, block_size: int) -> int:
    return prefix_sharing_saved_tokens(n_requests, shared_prefix, block_size)
