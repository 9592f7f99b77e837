"""The committed GPU check of LoRA/QLoRA training memory (benchmarks/lora_gpu.py, datasets/results/lora_gpu.json)
against today's `labkit.vram.estimate_training`: the measurements stay, the estimate beside them is this labkit's, so
an improved estimator shows in notebook 07 and the planner. labkit.lora re-exports these names."""

from __future__ import annotations

from . import vram
from .bench import load_benchmark_results
from .models import list_configs


def committed_estimate_check(results: dict | None = None) -> dict[bool, list[tuple[str, float]]]:
    """The committed GPU check of `vram.estimate_training` (benchmarks/lora_gpu.py): {gradient checkpointing on?:
    [(method, estimate / measured - 1), ...]}, the estimate made by THIS labkit for each committed measurement (the
    estimator improves; the measurements stay); empty when no result is committed."""
    results = load_benchmark_results("lora_gpu") if results is None else results
    out: dict[bool, list[tuple[str, float]]] = {}
    for row in (results or {}).get("rows", []):
        if "skipped" not in row:
            out.setdefault(bool(row["gradient_checkpointing"]), []).append(
                (row["method"], current_estimate_gib(results, row) / row["measured_gib"] - 1))
    return out


def current_estimate_gib(results: dict, row: dict) -> float:
    """This labkit's estimate for a committed lora_gpu row (bf16 on CUDA, all linear layers, batch 1); the row's own
    `estimate_gib` for a model labkit ships no config for."""
    if results.get("model") not in list_configs():
        return float(row["estimate_gib"])
    return vram.estimate_training(results["model"], row["method"], dtype="bf16", lora_rank=row.get("rank", 16),
                                  target_modules="all-linear", seq_len=row.get("seq_len", results.get("seq_len")),
                                  gradient_checkpointing=bool(row["gradient_checkpointing"]), device="cuda").total / 2**30


def estimate_accuracy_note(gradient_checkpointing: bool, results: dict | None = None) -> str:
    """One line: how far the estimate was from the measurement in the committed GPU check, for this setting."""
    results = load_benchmark_results("lora_gpu") if results is None else results
    rows = committed_estimate_check(results or {}).get(bool(gradient_checkpointing))
    if not rows:
        return "no committed GPU check of the estimate for this setting"
    setting = "with" if gradient_checkpointing else "without"
    errors = ", ".join(f"{m} {e:+.1%}" for m, e in rows)
    return (f"estimate vs measured {setting} gradient checkpointing on the committed GPU check "
            f"({results.get('device_name', 'GPU')}, {results.get('model', '')}, {results.get('seq_len', '?')} "
            f"tokens): {errors}")
