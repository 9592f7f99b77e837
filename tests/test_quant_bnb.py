"""labkit.quant_bnb: the bundled model through bitsandbytes (int8, NF4), its bytes measured vs labkit.vram."""

import sys

import pytest

from labkit import quant, quant_bnb
from labkit.errors import LabkitError, MissingPackageError


def test_bnb_missing_gives_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(MissingPackageError, match="pip install bitsandbytes"):
        quant_bnb.load_bnb("nf4")
    assert quant_bnb.bnb_available()[0] is False
    with pytest.raises(LabkitError, match="Accepted"):
        quant_bnb.bnb_config("int3")


@pytest.mark.parametrize("fmt", quant_bnb.BNB_FORMATS)
def test_bnb_load_on_cpu_measured_vs_estimated(fmt, bundled_dense):
    ok, why = quant_bnb.bnb_available()
    if not ok:
        pytest.skip(f"bitsandbytes does not run here: {why}")
    loaded, mem = quant_bnb.load_bnb(fmt, device="cpu")
    measured, estimated = sum(mem["measured"].values()), sum(mem["estimated"].values())
    assert estimated == pytest.approx(measured, rel=0.05)
    assert mem["measured"]["quantized"] == pytest.approx(mem["estimated"]["quantized"], rel=0.01)
    dense_bytes = sum(p.numel() * p.element_size() for p in bundled_dense.model.parameters())
    assert measured < dense_bytes
    if fmt != "nf4":
        return  # bitsandbytes' CPU kernels are slow: quality is scored for NF4 only (the notebook does the same)
    ids = quant.tokenize_for_eval()
    w = quant.Windows(64, 32, 1)
    ref = quant.score(bundled_dense.model, ids, w, keep_full=True)
    v = quant.score(loaded.model, ids, w, reference=ref).versus(ref)
    assert 0 < v["kld"] < 0.5 and v["top1_agreement"] > 0.6


def test_time_linear_on_cpu():
    pytest.importorskip("torch")
    rows = quant_bnb.time_linear(("bf16",), batches=(1, 8), in_features=64, out_features=128, device="cpu", reps=2)
    assert [(r["format"], r["batch"]) for r in rows] == [("bf16", 1), ("bf16", 8)]
    assert all(r["ms"] > 0 and r["tflops"] > 0 for r in rows)
    with pytest.raises(LabkitError, match="Accepted"):
        quant_bnb.time_linear(("fp8",), device="cpu")
