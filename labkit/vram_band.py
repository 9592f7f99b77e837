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
from .paths import datasets_dir

# Until a GPU run of benchmarks/vram_heldout.py is committed, the traced kinds rest on two measurements: the CPU
# (every tensor counted) on the held-out families of tests/test_vram.py (HELD_OUT_TINY: 19 traced, 2 that route
# experts in a loop), and the trace's agreement (0.5%) with the formulas, which are within 0.7% (bf16) and 3.6%
# (int8/nf4) of an H100 and 1% of an H200 in training. The held-out run's report prints the band each kind needs;
# tests/test_vram_band.py checks committed runs against these.
GENERIC_BANDS = {
    "inference (traced)": (0.03, "19 held-out families on a CPU (within 3%), and the trace's 0.5% agreement with "
                                 "the formulas measured on an H100"),
    "inference, bitsandbytes (traced)": (0.05, "the trace, plus bitsandbytes' temporaries from the formula "
                                               "(within 3.6% on an H100 for the formula families)"),
    "training (traced)": (0.03, "held-out families on a CPU (within 3%), and the trace's 1% agreement with the "
                                "formulas measured on an H200"),
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
