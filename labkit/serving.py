"""Notebook 09, serving: the workloads it sends, the sweep's pictures, speculation and JSON checks, the committed
GPU run, and the exercises.

The pieces it stands on have modules of their own: `llama_server` (llama.cpp's server with parallel slots),
`loadgen` (the load generator and its metrics: TTFT, ITL, percentiles, goodput) and `capacity` (the roofline
estimate of serving and the capacity planner). Here:

1. **Sizes** of the notebook's runs per profile.
2. **Prompts**: a length mix, a shared system prompt, a copy-heavy and a free-form task.
3. **Pictures**: a run as a timeline of requests; a sweep against users beside the estimate.
4. **Speculation and structured output**: drafted/accepted tokens; answers checked against a JSON schema.
5. **Committed GPU results** (benchmarks/serving_gpu.py, shipped as datasets/results/serving_gpu.json).
6. **Exercises**: P99 from a sample, goodput under a target, the break-even batch.
"""

from __future__ import annotations

import json
import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .capacity import CapacityPlan, LoadEstimate
from .check import exercise
from .errors import LabkitError, MissingPackageError, require_count, require_positive, unknown
from .hardware import find_gpu, gpu_table
from .loadgen import (
    MAX_REQUESTS,
    MAX_TOKENS,
    LoadResult,
    Prompt,
    Slo,
    format_ms,
    knee_users,
    max_users_meeting,
    percentile,
)
from .lora import load_task
from .paths import datasets_dir

# ============================================================================ 1. sizes


@dataclass(frozen=True)
class NotebookSizes:
    """How much load notebook 09 generates in a profile (CI runs the cpu profile on one core per notebook)."""

    users: tuple[int, ...]  # the concurrency sweep
    requests_per_user: int
    max_tokens: int  # new tokens per request in the sweep
    long_words: int | None  # the long prompts' length in words (None: whole paragraphs)
    ctx_per_slot: int
    time_limit_s: float  # per run: a slow machine stops there and reports what it measured
    prefix_requests: int
    spec_requests: int
    spec_tokens: int
    json_requests: int


NOTEBOOK_SIZES = {
    "cpu": NotebookSizes(users=(1, 2, 4, 8, 16), requests_per_user=2, max_tokens=16, long_words=60, ctx_per_slot=1024,
                         time_limit_s=40, prefix_requests=3, spec_requests=2, spec_tokens=32, json_requests=4),
    "gpu": NotebookSizes(users=(1, 2, 4, 8, 16, 32, 64), requests_per_user=2, max_tokens=64, long_words=None,
                         ctx_per_slot=1024, time_limit_s=60, prefix_requests=8, spec_requests=4, spec_tokens=128, json_requests=16),
}


def notebook_sizes(prof: Any) -> NotebookSizes:
    """The sizes for a `labkit.profile()` (or a profile name)."""
    name = prof if isinstance(prof, str) else prof.name
    if name not in NOTEBOOK_SIZES:
        raise unknown("profile", name, NOTEBOOK_SIZES)
    return NOTEBOOK_SIZES[name]


# ============================================================================ 2. prompts


QUESTIONS = [
    "What is the boiling point of water at sea level?", "Why is the sky blue?", "What does a compiler do?",
    "How many legs does a spider have?", "What is the capital of Japan?", "Why do leaves change colour in autumn?",
    "What is a prime number?", "How does a bicycle stay upright?", "What is the speed of light?",
    "Who wrote the play Hamlet?", "What is photosynthesis?", "How far is the Moon from the Earth?",
    "What is the largest ocean on Earth?", "Why does bread rise?", "What is an atom made of?",
    "How do bees make honey?",
]


def _passages() -> list[str]:
    """Paragraphs of the course's own prose (datasets/texts/evaluation.txt, CC0)."""
    text = (datasets_dir() / "texts" / "evaluation.txt").read_text()
    return [p.strip() for p in text.split("\n\n") if len(p.split()) > 40]


def prompt_mix(n: int, max_tokens: int, long_share: float = 0.5, long_words: int | None = None,
               seed: int = 0) -> list[Prompt]:
    """`n` prompts, a share of them long (a paragraph to summarise, ~100-200 tokens, or its first `long_words`
    words) and the rest short (a one-line question), spread evenly. Every prompt starts differently, so no request
    reuses another's prefix."""
    require_count("n", n, 1, MAX_REQUESTS)
    require_count("max_tokens", max_tokens, 1, MAX_TOKENS)
    if not 0 <= long_share <= 1:
        raise LabkitError(f"long_share must be a fraction from 0 to 1, got {long_share!r}")
    passages = _passages()
    # spread evenly, so any run of consecutive prompts has about the same share of long ones (a sweep's points compare)
    kinds = ["long" if math.floor((i + 1) * long_share + 1e-9) > math.floor(i * long_share + 1e-9) else "short"
             for i in range(n)]
    start = random.Random(seed).randrange(len(passages))
    out = []
    for i, kind in enumerate(kinds):
        if kind == "long":
            passage = passages[(start + i) % len(passages)]
            passage = _opening(passage, long_words) if long_words else passage
            text = f"Document {i + 1}.\n{passage}\n\nIn one sentence, this document is about"
        else:
            text = f"Question {i + 1}: {QUESTIONS[i % len(QUESTIONS)]}\nAnswer:"
        out.append(Prompt(text, max_tokens, kind))
    return out


def shared_prefix_prompts(n: int, max_tokens: int, paragraphs: int = 2) -> list[Prompt]:
    """`n` questions after the SAME long system prompt (a document and instructions): what prefix caching is for."""
    require_count("n", n, 1, MAX_REQUESTS)
    document = "\n\n".join(_passages()[:paragraphs])
    system = ("You are the archive assistant of a maritime museum. Answer visitors' questions about the document "
              f"below in one short sentence.\n\nDOCUMENT\n{document}\n\n")
    return [Prompt(f"{system}Visitor question {i + 1}: {QUESTIONS[i % len(QUESTIONS)]}\nAssistant:", max_tokens,
                   "shared prefix") for i in range(n)]


def _opening(passage: str, words: int) -> str:
    """The first sentences of a passage, about `words` words."""
    out: list[str] = []
    for sentence in passage.replace("\n", " ").split(". "):
        out.append(sentence.rstrip("."))
        if sum(len(s.split()) for s in out) >= words:
            break
    return ". ".join(out) + "."


def copy_prompts(n: int, max_tokens: int, words: int = 50) -> list[Prompt]:
    """A task whose answer repeats its prompt (a text, then the same text in capitals, then the text again): the
    answer is the capitals once more, and n-gram drafts find every next token in the prompt."""
    require_count("n", n, 1, MAX_REQUESTS)
    passages = _passages()
    out = []
    for i in range(n):
        text = _opening(passages[i % len(passages)], words)
        shouty = text.upper()
        out.append(Prompt(f"Write each text in capitals.\n\nTEXT: {text}\n\nTEXT IN CAPITALS: {shouty}\n\n"
                          f"TEXT: {text}\n\nTEXT IN CAPITALS:", max_tokens, "copy"))
    return out


def freeform_prompts(n: int, max_tokens: int) -> list[Prompt]:
    """Open-ended writing: little of the answer is in the prompt, so n-gram drafts rarely match."""
    require_count("n", n, 1, MAX_REQUESTS)
    topics = ["a lighthouse keeper who finds a message in a bottle", "the first day of a new school",
              "a storm over a small fishing village", "a robot that learns to bake bread",
              "two friends lost in a forest", "a train journey across the mountains"]
    return [Prompt(f"Story {i + 1}. Here is a short story about {topics[i % len(topics)]}.\n\n", max_tokens,
                   "free-form") for i in range(n)]


# ============================================================================ 3. pictures


def plot_timeline(result: LoadResult, title: str | None = None, ax=None):
    """Every request as a bar from when it was sent to its last token: waiting + prefill (light) until the
    first token, then decoding (dark). Overlapping bars are requests served at the same time."""
    import matplotlib.pyplot as plt

    if not result.records:
        raise LabkitError("the run has no requests to draw")
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 0.28 * len(result.records) + 1.5))
    for row, r in enumerate(result.records):
        ttft = r.ttft_s if not math.isnan(r.ttft_s) else r.e2e_s
        ax.barh(row, ttft, left=r.sent_s, color="#fdae6b", height=0.7,
                label="waiting + prefill (TTFT)" if row == 0 else None)
        ax.barh(row, max(r.e2e_s - ttft, 0), left=r.sent_s + ttft, color="#3182bd" if r.ok else "#d62728",
                height=0.7, label="decoding" if row == 0 else None)
    ax.set_yticks(range(len(result.records)))
    ax.set_yticklabels([f"#{r.index} u{r.user}" if r.user is not None else f"#{r.index}" for r in result.records],
                       fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the run started")
    ax.set_title(title or f"{result.label}: each request from sent to last token")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.figure.tight_layout()
    return ax.figure


def plot_sweep(results: Sequence[LoadResult], estimate: dict[int, LoadEstimate] | None = None,
               slo: Slo | None = None, title: str = ""):
    """Left: throughput (all users) against users, measured beside the roofline estimate. Right: P50 and P99 of
    TTFT and ITL against users, with the latency target (and the estimate's ITL)."""
    import matplotlib.pyplot as plt

    slo = slo or Slo()
    results = [r for r in results if r.users]
    if not results:
        raise LabkitError("plot_sweep needs closed-loop results (run_load with users=...)")
    users = [r.users for r in results]
    fig, (ax_tp, ax_lat) = plt.subplots(1, 2, figsize=(12, 4.4))
    ax_tp.plot(users, [r.tokens_per_s for r in results], "o-", color="#1a7f37", label="measured", linewidth=2)
    if estimate:
        ax_tp.plot(list(estimate), [e.tokens_per_s for e in estimate.values()], "--", color="#d62728",
                   label="estimate: roofline (bandwidth, then compute)")
    knee = knee_users(results)
    if knee:
        ax_tp.axvline(knee, color="grey", linestyle=":", linewidth=1)
        top = max([r.tokens_per_s for r in results] + [e.tokens_per_s for e in (estimate or {}).values()])
        ax_tp.annotate(f" knee: {knee} user{'s' * (knee > 1)}", (knee, top * 0.05), fontsize=8, color="grey")
    ax_tp.set_ylim(bottom=0)
    ax_tp.set_xlabel("concurrent users")
    ax_tp.set_ylabel("generated tokens / s (all users)")
    ax_tp.set_title("Throughput")
    ax_tp.legend(fontsize=8)
    for metric, color, target in (("ttft_s", "#e6550d", slo.ttft_s), ("itl_s", "#3182bd", slo.itl_s)):
        name = metric[:-2].upper()
        ax_lat.plot(users, [r.percentile(metric, 50) * 1000 for r in results], "o-", color=color,
                    label=f"{name} P50")
        ax_lat.plot(users, [r.percentile(metric, 99) * 1000 for r in results], "s--", color=color,
                    label=f"{name} P99")
        ax_lat.axhline(target * 1000, color=color, linewidth=0.8, alpha=0.6)
        ax_lat.annotate(f"{name} target", (users[0], target * 1000), fontsize=7, color=color, va="bottom")
    if estimate:
        ax_lat.plot(list(estimate), [e.itl_s * 1000 for e in estimate.values()], ":", color="#3182bd",
                    label="ITL estimate")
        ax_lat.plot(list(estimate), [e.ttft_burst_s * 1000 for e in estimate.values()], ":", color="#e6550d",
                    label="TTFT estimate (all arrive at once)")
    ax_lat.set_yscale("log")
    ax_lat.set_xlabel("concurrent users")
    ax_lat.set_ylabel("milliseconds")
    ax_lat.set_title("Latency: median and P99")
    ax_lat.legend(fontsize=8, ncol=2)
    for ax in (ax_tp, ax_lat):
        ax.set_xscale("log", base=2)
        ax.set_xticks(users, [str(u) for u in users])
        ax.minorticks_off()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def speculation_stats(result: LoadResult) -> dict:
    """Drafted and accepted tokens (llama.cpp's timings) and the decode speed one user saw."""
    drafted = sum(r.draft_tokens or 0 for r in result.completed)
    accepted = sum(r.draft_accepted or 0 for r in result.completed)
    return {"drafted": drafted, "accepted": accepted,
            "acceptance": accepted / drafted if drafted else float("nan"),
            "decode_tokens_per_s": result.percentile("decode_tokens_per_s", 50),
            "e2e_p50_s": result.percentile("e2e_s", 50)}


# ============================================================================ 4. structured output

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 1, "maxLength": 40},
        "sky": {"type": "string", "enum": ["sunny", "cloudy", "rainy", "snowy", "windy", "foggy"]},
        "temp_c": {"type": "integer", "minimum": -60, "maximum": 60},
    },
    "required": ["city", "sky", "temp_c"],
    "additionalProperties": False,
}


def weather_prompts(n: int, max_tokens: int = 40, examples: int = 0) -> list[Prompt]:
    """Weather sentences to turn into JSON (notebook 07's held-out task), after `examples` solved ones; each
    Prompt carries the right answer."""
    require_count("n", n, 1, MAX_REQUESTS)
    shots = "".join(f"Sentence: {r['sentence']}\nJSON: {r['answer']}\n\n" for r in load_task("train")[:examples])
    rows = load_task("heldout")
    head = ('Turn the weather sentence into JSON with the keys "city" (a string), "sky" (one of sunny, cloudy, rainy, '
            'snowy, windy, foggy) and "temp_c" (an integer).\n\n')
    return [Prompt(f"{head}{shots}Sentence: {row['sentence']}\nJSON:", max_tokens, "json", row["answer"])
            for row in (rows[i % len(rows)] for i in range(n))]


@dataclass(frozen=True)
class JsonCheck:
    parses: bool
    valid: bool
    problem: str

    def __str__(self) -> str:
        return "valid" if self.valid else self.problem


def check_json(text: str, schema: dict) -> JsonCheck:
    """Does `text` parse as JSON, and does it match `schema` (the jsonschema library decides)?"""
    try:
        import jsonschema
    except ImportError as err:
        raise MissingPackageError("jsonschema", "Checking answers against a JSON schema", extra="lab") from err
    try:
        value = json.loads(text.strip())
    except ValueError as err:
        return JsonCheck(False, False, f"not JSON ({err.msg} at character {err.pos})")
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as err:
        return JsonCheck(True, False, f"JSON, but {err.message}")
    return JsonCheck(True, True, "")


def json_share(result: LoadResult, schema: dict, prompts: Sequence[Prompt] | None = None) -> dict:
    """How many completed answers parse, how many match the schema and, given the prompts (with their expected
    answers), how many are also right."""
    done = result.completed
    checks = [check_json(r.text, schema) for r in done]
    n = len(checks)
    out = {"answers": n, "parse": sum(c.parses for c in checks) / n if n else float("nan"),
           "valid": sum(c.valid for c in checks) / n if n else float("nan"), "checks": checks}
    if prompts:
        expected = [prompts[r.index % len(prompts)].expected for r in done]
        right = [c.valid and e is not None and json.loads(r.text) == json.loads(e)
                 for r, c, e in zip(done, checks, expected)]
        out["correct"] = sum(right) / n if n else float("nan")
    return out


# ============================================================================ 5. committed GPU results


def gpu_results_path() -> Path:
    return datasets_dir() / "results" / "serving_gpu.json"


def load_gpu_results(path: str | Path | None = None) -> dict | None:
    """The committed llama-server run on a GPU (benchmarks/serving_gpu.py), or None when this copy has none."""
    path = Path(path) if path else gpu_results_path()
    return json.loads(path.read_text()) if path.is_file() else None


def committed_gpu_name(results: dict) -> str:
    """The datasets/gpus.json name of the card a committed run used (its device string names it)."""
    device = results.get("device", "")
    squeezed = device.replace(" ", "").replace("-", "")
    candidates = [g for g in gpu_table() if g["name"].replace("NVIDIA ", "").split()[-1 if "RTX" in g["name"] else 0]
                  in device]  # "H100", "A100", "4090" ...
    if not candidates:
        raise LabkitError(f"the committed run's device {device!r} is not a card of datasets/gpus.json")
    sized = [g for g in candidates if f"{g['vram_gb']}GB" in squeezed]  # A100 40GB or 80GB
    return find_gpu((sized or candidates)[0]["name"])["name"]


def committed_gpu_throughput(results: dict | None = None) -> dict[int, float]:
    """Measured aggregate decode tokens/s by number of concurrent users on the GPU ({} without results).

    Notebook 08 uses this in place of its batch projection: `{1: ..., 2: ..., ..., 64: ...}`.
    """
    results = results if results is not None else load_gpu_results()
    if not results:
        return {}
    return {int(row["users"]): float(row["tokens_per_s"]) for row in results.get("sweep", [])
            if row.get("completed")}


def committed_gpu_runs() -> list[tuple[str, dict]]:
    """Every committed llama-server GPU run as (file name, results): serving_gpu.json (the card notebook 08 prices,
    an H100) and any serving_gpu_<card>.json beside it."""
    folder = datasets_dir() / "results"
    return [(p.name, json.loads(p.read_text())) for p in sorted(folder.glob("serving_gpu*.json"))]


def measured_gpu_tokens_per_s(gpu: str, batch: int) -> tuple[float, str] | None:
    """The committed, measured aggregate tokens/s of Llama 3.1 8B Q4_K_M behind llama-server on `gpu` with `batch`
    concurrent users, and a note that says how it was obtained; None where no run measured that card.

    Between two measured user counts the value is interpolated on log-log axes (the note says so); outside the
    measured range there is no measurement, and None lets the caller project."""
    want = find_gpu(gpu)["name"]
    require_count("batch", batch, 1, 1_000_000)
    for name, results in committed_gpu_runs():
        try:
            card = committed_gpu_name(results)
        except LabkitError:
            continue
        curve = committed_gpu_throughput(results)
        if card != want or not curve:
            continue
        setting = (f"llama-server, {results.get('gguf_type', '?')}, prompts of {results.get('prompt_tokens_mean', 0):.0f} "
                   f"tokens + {results.get('max_tokens', '?')} new · datasets/results/{name}, {results.get('date', '?')}")
        if batch in curve:
            return curve[batch], f"measured on an {card} with {batch} concurrent users · {setting}"
        lower = max((b for b in curve if b < batch), default=None)
        upper = min((b for b in curve if b > batch), default=None)
        if upper is None and batch > results.get("slots", batch):  # more users than slots queue for a free one
            return curve[lower], (f"measured on an {card} with {lower} concurrent users, the server's {lower} "
                                  f"slots: more users queue for a free slot · {setting}")
        if lower is None or upper is None:
            return None
        share = math.log(batch / lower) / math.log(upper / lower)
        value = math.exp(math.log(curve[lower]) + share * math.log(curve[upper] / curve[lower]))
        return value, (f"interpolated between the {lower} and {upper} concurrent users measured on an {card} "
                       f"· {setting}")
    return None


VLLM_H100_REFERENCE = (5777, "MLPerf Inference v5.1, Llama 3.1 8B, Offline scenario: Red Hat's submission, vLLM 0.10.0, "
                             "FP8 weights, one H100")


def is_measured(note: str) -> bool:
    """Whether a throughput note of `cost.gpu_tokens_per_s` comes from a committed measurement (measured, or
    interpolated between measured user counts) rather than a projection."""
    return note.startswith(("measured", "interpolated"))


def batch_curve_markdown(card: str, curve: dict[int, tuple[float, str]], projection: dict[int, float]) -> str:
    """Notebook 08's reading of a GPU's batch curve: measured (which users, against the projection) or projected."""
    measured = [b for b, (_, note) in curve.items() if is_measured(note)]
    if not measured:
        return (f"The {card} curve is a **projection** from a batch-1 measurement, not a measurement: at large batches "
                "attention over long contexts, prompts processed between decode steps, scheduling and the KV cache's "
                "memory (notebook 05) push real servers below it. Notebook 09's GPU benchmark "
                "(`benchmarks/serving_gpu.py`) measures it; once a run for this card is committed, every number here "
                "that depends on batched throughput uses it instead.")
    top = max(measured)
    tps, note = curve[top]
    low = min(measured)
    ratio = projection[top] / tps
    side = (f"**{ratio:.1f}x too high**" if ratio > 1.1 else f"{1 / ratio:.1f}x too low" if ratio < 0.9
            else "close to it")
    return (f"The {card} curve is **measured** ({note}). From {low} to {top} concurrent users throughput grew "
            f"{curve[low][0]:,.0f} → {tps:,.0f} tok/s ({tps / curve[low][0]:.1f}x); the memory-bound projection from "
            f"batch 1 (dashed) said {projection[top]:,.0f} tok/s at {top}, {side}. The projection counts one read of the "
            "weights per step and nothing else; the server also processes each new request's prompt between decode "
            "steps, runs attention over every user's cache, schedules the slots and streams each token over HTTP. "
            f"A serving engine tuned for throughput gets further: vLLM reached {VLLM_H100_REFERENCE[0]:,} tok/s on an "
            f"H100 ({VLLM_H100_REFERENCE[1]}), with many more requests in flight. Every number in this notebook "
            "that depends on batched throughput (the utilisation plot, the break-even, the widget) uses the measured "
            "curve where it exists.")


def gpu_reading_markdown(results: dict) -> str:
    """What the committed GPU run says, in sentences built from its numbers (notebook 09, section 9)."""
    curve = committed_gpu_throughput(results)
    if not curve:
        return ""
    low, top = min(curve), max(curve)
    sweep = {int(r["users"]): r for r in results["sweep"] if r.get("completed")}
    parts = [f"On the {results['device']} throughput grew from {curve[low]:,.0f} tok/s with {low} user to "
             f"{curve[top]:,.0f} with {top} ({curve[top] / curve[low]:.1f}x), while each user's own decode speed fell "
             f"from {sweep[low]['decode_tokens_per_s_p50']:,.0f} to {sweep[top]['decode_tokens_per_s_p50']:,.0f} tok/s "
             f"and the P99 TTFT rose from {format_ms(sweep[low]['ttft_p99_s'])} to {format_ms(sweep[top]['ttft_p99_s'])}."]
    schema = results.get("json_schema") or {}
    if schema.get("off", {}).get("completed") and schema.get("on", {}).get("completed"):
        slower = schema["on"]["itl_p50_s"] / schema["off"]["itl_p50_s"]
        parts.append(
            f"The JSON schema made each token {slower:.1f}x slower here (section 7 measured the bundled model). "
            "That is the random weights: llama.cpp samples a token first and checks only that one against the "
            "grammar, which a model that wants to write the JSON passes almost always; random weights almost never "
            "do, so every step falls back to checking the whole vocabulary (128k tokens for Llama 3). This is the "
            "grammar's worst case, not what a trained model pays.")
    speculation = results.get("speculation") or {}
    accepted = [runs["ngram"]["acceptance"] for runs in speculation.values() if "ngram" in runs]
    if accepted:
        parts.append(f"n-gram drafts were accepted {min(accepted):.0%}–{max(accepted):.0%} of the time: random "
                     "weights do not copy their prompt, so these rows show only what drafting costs when it fails.")
    return " ".join(parts)


def measured_compute_share(results: dict, plan: CapacityPlan) -> float:
    """The share of the card's peak FLOP/s the committed run's busiest point turned into decode work
    (tokens/s x 2 x parameters per token ÷ peak): the compute efficiency to calibrate the planner with."""
    curve = committed_gpu_throughput(results)
    if not curve:
        raise LabkitError("the committed GPU run has no completed sweep point to calibrate with")
    return min(1.0, curve[max(curve)] * 2 * plan.decode_params / plan.device.flops)


def planner_gap_markdown(results: dict, plan: CapacityPlan, calibrated: CapacityPlan, slo: Slo) -> str:
    """Why the roofline planner and the committed GPU run disagree, from their numbers (notebook 09, section 9)."""
    sweep = {int(r["users"]): r for r in results["sweep"] if r.get("completed")}
    top = max(sweep)
    met = max_users_meeting(results["sweep"], slo)
    share = measured_compute_share(results, plan)
    broke = next((u for u in sorted(sweep) if u > met), None)
    text = (f"The planner calibrated on one user's speed expected **{plan.users:,}** users; the run met the target with "
            f"**{met}**. At {top} users it expected an ITL of {format_ms(plan.at(top).itl_s)}; the run measured "
            f"{format_ms(sweep[top]['itl_p50_s'])} (P50). The roofline takes a decode step to cost one read of the "
            "weights until the arithmetic of all users fills the card's peak FLOP/s; here every extra user made the "
            f"step longer. At {top} users the run turned {share:.1%} of the card's "
            f"{plan.device.flops / 1e12:,.0f} TFLOP/s into decode work: llama.cpp's batched 4-bit matrix products, "
            "attention over every user's cache and the host's work between steps come nowhere near the peak. "
            f"Calibrated with that share, the planner says **{calibrated.users:,}** users ({calibrated.limit}).")
    if broke is not None:
        row = sweep[broke]
        which = ("the TTFT target" if row["ttft_p99_s"] > slo.ttft_s else "the ITL target")
        text += (f" The run broke {which} first, at {broke} users (P99 TTFT {format_ms(row['ttft_p99_s'])}, P99 ITL "
                 f"{format_ms(row['itl_p99_s'])}): its users all start at once, so the last prompt waits behind "
                 "everyone else's, the burst the planner reports as a wait, not as its limit.")
    return text


def gpu_features_markdown(results: dict) -> str:
    """The committed GPU run's prefix-cache, JSON-schema and speculation measurements as a Markdown table."""
    lines = ["| feature | without | with | change |", "|---|---:|---:|---|"]
    cache = results.get("prefix_cache")
    if cache and cache["off"].get("completed") and cache["on"].get("completed"):
        off, on = cache["off"]["ttft_p50_s"], cache["on"]["ttft_p50_s"]
        lines.append(f"| prefix cache ({cache['off'].get('prompt_tokens', '?')}-token prompts, TTFT P50) | "
                     f"{format_ms(off)} | {format_ms(on)} | {off / on:.1f}x faster |")
    schema = results.get("json_schema")
    if schema and schema["off"].get("completed") and schema["on"].get("completed"):
        off, on = schema["off"]["itl_p50_s"], schema["on"]["itl_p50_s"]
        lines.append(f"| JSON schema (ITL P50; valid answers {schema['off']['valid']:.0%} → {schema['on']['valid']:.0%}) "
                     f"| {format_ms(off)} | {format_ms(on)} | {on / off:.2f}x the time per token |")
    for task, runs in (results.get("speculation") or {}).items():
        if "off" not in runs or "ngram" not in runs:
            continue
        off, on = runs["off"]["decode_tokens_per_s"], runs["ngram"]["decode_tokens_per_s"]
        lines.append(f"| n-gram speculation, {task} task (decode tok/s; {runs['ngram']['acceptance']:.0%} of drafts "
                     f"accepted) | {off:,.1f} | {on:,.1f} | {on / off:.2f}x |")
    return "\n".join(lines)


def gpu_sweep_markdown(results: dict, slo: Slo | None = None) -> str:
    """The committed GPU sweep as a Markdown table."""
    slo = slo or Slo()
    lines = ["| users | done | tok/s (all users) | tok/s per user (P50) | TTFT P50 | TTFT P99 | ITL P50 | ITL P99 |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in results.get("sweep", []):
        lines.append(f"| {s['users']} | {s['completed']} | {s['tokens_per_s']:,.0f} | "
                     f"{s['decode_tokens_per_s_p50']:,.1f} | {format_ms(s['ttft_p50_s'])} | {format_ms(s['ttft_p99_s'])} | "
                     f"{format_ms(s['itl_p50_s'])} | {format_ms(s['itl_p99_s'])} |")
    return "\n".join(lines)


# ============================================================================ 6. exercises




@exercise("09.p99_ttft_ms",
          hint="Sort the TTFTs; P99 sits 99% of the way from the smallest to the largest, interpolated between the "
               "two nearest values (numpy.percentile(values, 99) does exactly this). Then seconds → milliseconds.",
          rtol=1e-3,
          slips={"taking the largest value (P99 of a small sample lies between the two largest)":
                     lambda expected, ttft_s: max(ttft_s) * 1000,
                 "averaging (the mean hides the slow requests a percentile shows)":
                     lambda expected, ttft_s: statistics.fmean(ttft_s) * 1000,
                 "taking the median (P50) instead of P99":
                     lambda expected, ttft_s: percentile(ttft_s, 50) * 1000,
                 "leaving it in seconds (× 1000 for milliseconds)": 1e-3})
def _expected_p99_ttft_ms(ttft_s: Sequence[float]) -> float:
    return percentile(list(ttft_s), 99) * 1000


def _good(ttft_s, itl_s, ttft_target_s, itl_target_s, use_ttft=True, use_itl=True) -> int:
    return sum((not use_ttft or t <= ttft_target_s) and (not use_itl or i <= itl_target_s)
               for t, i in zip(ttft_s, itl_s))


@exercise("09.goodput",
          hint="Count the requests whose TTFT AND ITL both meet their targets, then divide by the run's wall time "
               "in seconds: goodput is requests per second, like throughput, but only the good ones.",
          rtol=1e-3,
          slips={"counting every request (that is throughput, not goodput)":
                     lambda expected, ttft_s, wall_s, **_: len(ttft_s) / wall_s,
                 "checking only the TTFT target":
                     lambda expected, ttft_s, itl_s, wall_s, ttft_target_s, itl_target_s:
                     _good(ttft_s, itl_s, ttft_target_s, itl_target_s, use_itl=False) / wall_s,
                 "checking only the ITL target":
                     lambda expected, ttft_s, itl_s, wall_s, ttft_target_s, itl_target_s:
                     _good(ttft_s, itl_s, ttft_target_s, itl_target_s, use_ttft=False) / wall_s,
                 "giving the share of good requests instead of good requests per second":
                     lambda expected, ttft_s, wall_s, **_: expected * wall_s / len(ttft_s)})
def _expected_goodput(ttft_s: Sequence[float], itl_s: Sequence[float], wall_s: float, ttft_target_s: float,
                      itl_target_s: float) -> float:
    if len(ttft_s) != len(itl_s) or not ttft_s:
        raise LabkitError("ttft_s and itl_s must be two lists of the same, non-zero length")
    return _good(ttft_s, itl_s, ttft_target_s, itl_target_s) / wall_s


@exercise("09.break_even_batch",
          hint="At batch B a decode step reads the weights once (parameters × bytes per parameter ÷ bandwidth) and "
               "does 2 FLOPs per parameter per sequence (2 × parameters × B ÷ FLOP/s). Set the two times equal and "
               "solve for B: the parameters cancel. Mind the units: TFLOP/s × 1e12, GB/s × 1e9.",
          rtol=0.01,
          slips={"forgetting that a multiply-add is 2 FLOPs": 2.0,
                 "using bits per weight where bytes are asked (÷ 8)": 8.0,
                 "mixing TFLOP/s and GB/s without converting both to per-second units": 1e-3})
def _expected_break_even_batch(tflops: float, bandwidth_gbps: float, bytes_per_parameter: float) -> float:
    for name, value in (("tflops", tflops), ("bandwidth_gbps", bandwidth_gbps),
                        ("bytes_per_parameter", bytes_per_parameter)):
        require_positive(name, value)
    return tflops * 1e12 * bytes_per_parameter / (2 * bandwidth_gbps * 1e9)
