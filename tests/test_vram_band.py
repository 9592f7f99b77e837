"""labkit.vram_band: the bands estimates of model types without a formula carry, the refusal beyond BAND_LIMIT, the
held-out configs, and committed GPU runs of benchmarks/vram_heldout.py held to the bands."""

import importlib.util
import json
from pathlib import Path

import pytest

from labkit import vram_band
from labkit.architecture import FORMULA_FAMILIES, architecture
from labkit.errors import LabkitError
from labkit.paths import results_dir

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_only_the_kinds_that_refuse_have_a_band_wider_than_the_limit():
    assert all(band <= vram_band.BAND_LIMIT or "loop" in kind or "mixed" in kind
               for kind, (band, _) in vram_band.GENERIC_BANDS.items())
    assert vram_band.band_for("inference (traced)", "unused") == vram_band.GENERIC_BANDS["inference (traced)"]
    with pytest.raises(LabkitError, match=r"no estimate: a loop\. .*±50%.*Measure it instead.*llama"):
        vram_band.band_for("experts routed in a loop (not traceable)", "a loop")


def test_held_out_configs_are_real_model_types_without_a_formula():
    index = json.loads((vram_band.heldout_config("starcoder2-3b").parent / "index.json").read_text())
    assert len(index) >= 6
    for name in index:
        a = architecture(vram_band.heldout_config(name))
        assert a.generic and a.model_type not in FORMULA_FAMILIES, name
    with pytest.raises(LabkitError, match="held-out config.*starcoder2-3b"):
        vram_band.heldout_config("no-such-model")


def test_committed_held_out_results_are_within_the_stated_band():
    """benchmarks/vram_heldout.py on the held-out configs (a GPU run): every estimate a family without a formula
    gets is within its band of the measurement, or refuses; the formula family checked at true size within 5%."""
    path = results_dir() / "vram_heldout_raw.json"
    if not path.exists():
        pytest.skip("no GPU run of benchmarks/vram_heldout.py committed yet (see the script's docstring)")
    raw = json.loads(path.read_text())
    spec = importlib.util.spec_from_file_location("vram_heldout", BENCHMARKS / "vram_heldout.py")
    heldout = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(heldout)
    rows = heldout.compare(raw)  # the current estimator against the committed measurements
    assert len({r["arch"] for r in rows}) >= 6
    for r in rows:
        assert r.get("refused") or r["formula"] or r["within_band"], r
        if r["formula"]:
            assert abs(r["error_pct"]) < 5, r


def test_the_committed_held_out_summary_counts_the_run():
    summary = vram_band.committed_heldout_summary()
    if summary is None:
        pytest.skip("no GPU run of benchmarks/vram_heldout.py committed")
    run = json.loads((results_dir() / "vram_heldout.json").read_text())
    measured = [r for r in run["rows"] if r.get("error_pct") is not None and not r.get("formula")]
    assert f"{len(measured)} cells" in summary and f"{sum(r['within_band'] for r in measured)} within" in summary
