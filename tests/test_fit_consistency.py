"""What notebooks 00-03 say must agree with what their tables compute (issue 17).

Two rules are mechanical, so they are checked here rather than by reading:
1. every fit verdict (vram.fits, vram.hardware_table, the calculator, catalog.recommend, the 00 fit widget)
   compares against a card's *usable* memory: what it shows to CUDA, less the safety margin;
2. a context longer than a model's window is flagged wherever a table or plot shows one.
"""

import matplotlib
import pytest

from labkit import basecamp, catalog, vram, vram_widget
from labkit.errors import LabkitError
from labkit.hardware import GIB, SAFETY_MARGIN, find_gpu, gpu_table, shown_gib, usable_memory

matplotlib.use("Agg")


def test_every_gpu_says_what_it_shows_to_cuda_and_where_that_comes_from():
    for gpu in gpu_table():
        assert 0.85 * gpu["vram_gb"] <= gpu["cuda_gib"] <= gpu["vram_gb"], gpu["name"]
        assert gpu["cuda_gib_source"], gpu["name"]
    # ECC takes 6.25% of a T4's GDDR6: it shows less than 15 GiB of its 16 GB
    assert shown_gib(find_gpu("T4")) < 15


def test_usable_memory_is_what_the_card_shows_less_the_margin():
    t4 = usable_memory("T4")
    assert t4.shown_bytes == pytest.approx(find_gpu("T4")["cuda_gib"] * GIB)
    assert t4.bytes == pytest.approx(t4.shown_bytes * (1 - SAFETY_MARGIN))
    assert usable_memory(24).bytes == pytest.approx(24 * GIB * (1 - SAFETY_MARGIN))
    assert usable_memory("4090", margin=0).bytes == pytest.approx(23.64 * GIB)
    assert "usable" in str(t4) and "14.6 GiB shown" in str(t4)
    this = usable_memory()
    assert 0 < this.bytes < this.shown_bytes


@pytest.mark.parametrize("bad", [-1, 0, float("nan"), "Voodoo 3"])
def test_usable_memory_refuses_bad_input(bad):
    with pytest.raises(LabkitError):
        usable_memory(bad)


@pytest.mark.parametrize("margin", [-0.1, 1, 1.5, True, "5%"])
def test_usable_memory_refuses_a_bad_margin(margin):
    with pytest.raises(LabkitError, match="margin"):
        usable_memory("T4", margin=margin)


def _estimate_of(total_gib: float) -> vram.MemoryEstimate:
    return vram.MemoryEstimate(weights=total_gib * GIB, kv_cache=0.0, activations=0.0, overhead=0.0, label="synthetic")


def test_fits_uses_usable_memory_not_the_sold_size():
    # between the usable and the sold size: the old verdict said "fits", the card says out of memory
    for card in ("T4", "RTX 4090", "A100 40GB", "H100"):
        usable = usable_memory(card).bytes / GIB
        sold = find_gpu(card)["vram_gb"]
        assert usable < sold
        assert not vram.fits(_estimate_of((usable + sold) / 2), card)
        assert vram.fits(_estimate_of(usable * 0.99), card)
        assert not vram.fits(_estimate_of(usable * 1.01), card)
    assert not vram.fits(_estimate_of(23.0), 24)  # 24 GiB shown, 22.8 usable


def test_hardware_table_verdicts_use_usable_memory():
    models = ["mistral-7b-v0.3", "llama-3.1-8b", "llama-3.1-70b", "mixtral-8x7b", "gemma-2-2b"]
    table = vram.hardware_table(models, dtypes=("bf16", "nf4", "Q4_K_M"), context=4096)
    by_usable = sorted(vram.COMMON_GPUS, key=lambda g: usable_memory(g).bytes)
    for row in table:
        need = row["GiB @4096"] * GIB
        smallest = row["smallest GPU"]
        fitting = [g for g in by_usable if usable_memory(g).bytes >= need * 1.0005]
        if smallest.startswith("none"):
            assert not [g for g in by_usable if usable_memory(g).bytes >= need * 1.0005], row
            continue
        assert usable_memory(smallest).bytes >= need * 0.9995, row  # rounding of the GiB column
        assert fitting and find_gpu(fitting[0])["name"] == smallest, row
    rows = {(r["model"], r["dtype"]): r for r in table}
    # the two contradictions a learner found: 15.2 GiB does not fit a T4, 39.9 GiB does not fit an A100 40GB
    assert rows[("mistral-7b-v0.3", "bf16")]["smallest GPU"] != "NVIDIA T4"
    assert rows[("llama-3.1-70b", "nf4")]["smallest GPU"] != "NVIDIA A100 40GB"


def test_calculator_rows_use_usable_memory():
    calc = vram_widget.calculate("mistral-7b-v0.3", "bf16", context=4096)
    rows = {r.name: r for r in calc.rows}
    t4 = rows["T4"]
    assert t4.vram_gib == pytest.approx(usable_memory("T4").bytes / GIB)
    assert t4.fits == (calc.estimate.total <= usable_memory("T4").bytes)
    assert not t4.fits


def test_recommendations_fit_usable_memory():
    for vram_gb in (6, 12, 24):
        usable_gib = usable_memory(vram_gb).bytes / GIB
        for r in catalog.recommend("general", vram_gb, top=None):
            assert r.memory.total / GIB <= usable_gib, r.model.id
            assert f"of {usable_gib:.1f} GiB usable" in r.reason


def test_fit_widget_rows_use_usable_memory():
    memory = 16 * GIB
    rows = basecamp.what_runs_where(memory, dtypes=("bf16",), sizes_b={"7B": 7.0, "6B": 6.0})
    usable = usable_memory(16).bytes
    for r in rows:
        assert r.usable_bytes == pytest.approx(usable)
        assert r.fits == (r.needed_bytes <= usable)
    # 7B in bf16 with 20% headroom is 15.6 GiB: below the 16 on the slider, above its 15.2 usable
    assert not {r.model: r.fits for r in rows}["7B"]
    assert "usable: 15.2 GiB" in basecamp.fit_table(rows)


def test_kv_table_flags_contexts_beyond_the_window():
    rows = {r["model"]: r for r in vram.kv_table(["phi-3-mini", "qwen2.5-0.5b", "llama-3.1-8b"], tokens=32768)}
    assert "beyond" in rows["phi-3-mini"]["window"]  # a 4k model at 32k
    assert "beyond" not in rows["qwen2.5-0.5b"]["window"]  # exactly its 32k window
    assert "beyond" not in rows["llama-3.1-8b"]["window"]
    assert vram.beyond_window("qwen2.5-0.5b", 32769) and not vram.beyond_window("qwen2.5-0.5b", 32768)


def test_context_sweep_greys_out_what_the_model_cannot_read():
    fig = vram_widget.plot_context_sweep("qwen2.5-0.5b")
    labels = [h.get_label() for h in fig.axes[0].patches]
    assert any("beyond its 32,768-token window" in label for label in labels)
    fig = vram_widget.plot_context_sweep("llama-3.1-8b", contexts=(512, 131072))
    assert not any("beyond" in p.get_label() for p in fig.axes[0].patches)


def test_the_kv_crossing_the_notebook_discusses():
    # 03 says Llama 3.1 8B's cache passes its weights inside its window, Qwen2.5-0.5B's only beyond it,
    # and the exercise's Llama 3.2 1B inside it
    assert not vram.beyond_window("llama-3.1-8b", vram.kv_equals_weights_tokens("llama-3.1-8b"))
    assert vram.beyond_window("qwen2.5-0.5b", vram.kv_equals_weights_tokens("qwen2.5-0.5b"))
    assert not vram.beyond_window("llama-3.2-1b", vram.kv_equals_weights_tokens("llama-3.2-1b"))


def test_estimates_beyond_the_window_say_so():
    with pytest.warns(UserWarning, match="beyond the model's maximum context"):
        est = vram.estimate_inference("phi-3-mini", "bf16", context=32768)
    assert any("beyond" in n for n in est.notes)


def test_catalog_context_differences_are_explained():
    rows = catalog.context_rows()
    assert rows, "DeepSeek-V2-Lite's 32K vs 163,840 should be listed"
    for r in rows:
        assert not r["why"].startswith("(no explanation"), r["model"]


def test_the_code_pick_for_a_paid_product_has_an_unconditional_licence():
    pick = catalog.recommend("code", vram_gb=12, licence="permissive")[0].model
    assert pick.commercial == "yes" and pick.openness != "restricted"
    # Phi-4 is a general model, not a code specialist
    assert "general" in catalog.get_model("phi-4").specialities
