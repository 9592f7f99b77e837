"""The band of an estimate for a model type without a formula: how far such estimates were from measurements on
families no formula knows and no constant was fitted on (held out), by how the estimate was made.

labkit.vram puts the band on every estimate of such a model (`MemoryEstimate.band`, `band_source`); an estimate
whose band would be wider than BAND_LIMIT refuses instead (`band_for` raises a LabkitError saying why). The held-out
configs the bands are measured on ship in datasets/heldout_configs/ (`heldout_config`); docs/vram_model.md has the
checks behind each figure.
"""

from __future__ import annotations

from pathlib import Path

from .architecture import FORMULA_FAMILIES
from .errors import LabkitError, unknown
from .paths import datasets_dir, results_dir

# The traced kinds' bands are what the held-out GPU run needed (benchmarks/vram_heldout.py on an H100, 2026-12-06,
# datasets/results/vram_heldout.md: 8 families no formula knows, 63 measured cells), rounded up to a whole percent,
# and never narrower than the CPU check of tests/test_vram.py (HELD_OUT_TINY: 19 traced families within 3%).
# tests/test_vram_band.py holds every committed cell to these.
GENERIC_BANDS = {
    "inference (traced)": (0.05, "8 held-out families on an H100 at 1k-32k tokens: 22 of 24 cells within 3%, worst "
                                 "-4.2% (ERNIE 4.5 0.3B, where a constant 60 MB is 4% of 1.4 GiB)"),
    "inference, bitsandbytes (traced)": (0.05, "held-out families in nf4 and int8 on an H100: 10 cells, worst -1.7%; "
                                               "the formula families' int8/nf4 within 3.6%"),
    "training (traced)": (0.03, "held-out families on an H100, LoRA, QLoRA and full fine-tuning at 512-4k tokens "
                                "with and without checkpointing: 27 cells, worst +2.6%"),
    "llama.cpp": (0.10, "the bundled model's process growth on a CPU (llama.cpp sizes its compute buffer from its "
                        "graph; approximate for every family)"),
    "training, mixed precision (standard decoder)": (0.15, "the standard decoder layer against held-out families on "
                                                           "a CPU: -13% (Llama 4's text model) to +8% (StarCoder2)"),
    "experts routed in a loop (not traceable)": (0.50, "the standard decoder layer against held-out families on a "
                                                       "CPU: +50% (DBRX) to -1% (JetMoE)"),
}
BAND_LIMIT = 0.10


def heldout_config(name: str) -> Path:
    """The path of a held-out config.json (datasets/heldout_configs/: real model types labkit has no formula
    for, used to measure the band; index.json there says what each exercises)."""
    folder = datasets_dir() / "heldout_configs"
    names = sorted(p.stem for p in folder.glob("*.json") if p.stem != "index")
    if name not in names:
        raise unknown("held-out config", name, names)
    return folder / f"{name}.json"


def band_for(kind: str, what: str) -> tuple[float, str]:
    """(band, where it was measured) for an estimate made `kind`-wise (a key of GENERIC_BANDS), or a LabkitError
    saying `what` could not be estimated when that band is wider than BAND_LIMIT."""
    band, source = GENERIC_BANDS[kind]
    if band > BAND_LIMIT:
        raise LabkitError(f"no estimate: {what}. Estimates made this way ({kind}) were off by up to ±{band:.0%} "
                          f"({source}), more than the {BAND_LIMIT:.0%} labkit accepts. Measure it instead "
                          "(labkit.vram_measure.measure_inference / measure_training), or pick a model type with a "
                          f"formula: {', '.join(FORMULA_FAMILIES)}.")
    return band, source


def committed_heldout_summary() -> str | None:
    """One paragraph on the committed held-out GPU run (datasets/results/vram_heldout.json), or None without one."""
    import json

    path = results_dir() / "vram_heldout.json"
    if not path.is_file():
        return None
    run = json.loads(path.read_text())
    rows = [r for r in run["rows"] if r.get("error_pct") is not None and not r.get("formula")]
    refused = [r for r in run["rows"] if r.get("error_pct") is None]
    gpu = next(iter(run["environments"].values())).get("gpu", "a GPU")
    worst = max(rows, key=lambda r: abs(r["error_pct"]))
    within = sum(r["within_band"] for r in rows)
    return (f"Committed held-out run on an {gpu} (benchmarks/vram_heldout.py, datasets/results/vram_heldout.md): "
            f"{len(rows)} cells of families labkit has no formula for, {within} within their band; worst "
            f"{worst['error_pct']:+.1f}% ({worst['cell']}); {len(refused)} refused.")
