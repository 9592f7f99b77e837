"""labkit.gguf_choice: which GGUF file to download for a GPU or a Mac and a context, with partial offload."""

import pytest

from labkit import gguf_choice, vram
from labkit.errors import LabkitError
from labkit.formatting import GIB
from labkit.hardware import usable_memory


def test_the_pick_is_the_most_bits_that_fit_entirely():
    card = gguf_choice.target("NVIDIA RTX 3060", ram_bandwidth_gbps=50)
    options, pick = gguf_choice.choose_gguf("llama-3.1-8b", card, 16384)
    assert pick.whole_model_on_gpu and pick.plan.gpu_bytes <= card.gpu_bytes
    bigger = [o for o in options if o.file_gb > pick.file_gb]
    assert bigger and not any(o.whole_model_on_gpu for o in bigger)
    assert card.gpu_bytes == pytest.approx(usable_memory("NVIDIA RTX 3060").bytes)  # the course's one rule


def test_files_shrink_with_bits_and_match_vram():
    options, _ = gguf_choice.choose_gguf("llama-3.1-8b", gguf_choice.target(80), 4096)
    by = {o.level: o for o in options}
    assert by["Q8_0"].file_gb > by["Q4_K_M"].file_gb > by["IQ4_XS"].file_gb > by["Q2_K"].file_gb > by["IQ2_M"].file_gb
    assert by["Q4_K_M"].file_gb * 1e9 == pytest.approx(sum(vram.weight_bytes("llama-3.1-8b", "Q4_K_M").values()))
    assert all(o.whole_model_on_gpu for o in options)  # 80 GiB holds every level of an 8B model


def test_a_model_too_big_gets_partial_offload_with_more_layers_at_fewer_bits():
    card = gguf_choice.target("NVIDIA RTX 4090", ram_bandwidth_gbps=50)
    options, pick = gguf_choice.choose_gguf("llama-3.1-70b", card, 8192)
    assert not any(o.whole_model_on_gpu for o in options)
    by = {o.level: o for o in options}
    assert 0 < by["Q8_0"].plan.layers_on_gpu < by["Q4_K_M"].plan.layers_on_gpu < by["IQ2_M"].plan.layers_on_gpu < 80
    assert by["Q8_0"].decode_tokens_per_s < by["Q4_K_M"].decode_tokens_per_s < by["IQ2_M"].decode_tokens_per_s
    assert pick.level == "IQ2_M" and pick.row()["-ngl"] == pick.plan.layers_on_gpu
    text = gguf_choice.pick_markdown("llama-3.1-70b", card, 8192, options, pick)
    assert f"-ngl {pick.plan.layers_on_gpu}" in text and "llama-server -m llama-3.1-70b-IQ2_M.gguf -c 8192" in text


def test_partial_offload_is_slower_than_the_whole_model_on_the_gpu():
    """The roofline of a split: the CPU side's bytes over RAM bandwidth dominate."""
    card = gguf_choice.target("NVIDIA RTX 3060", ram_bandwidth_gbps=50)
    options, _ = gguf_choice.choose_gguf("qwen2.5-7b", card, 32768)
    whole = [o.decode_tokens_per_s for o in options if o.whole_model_on_gpu]
    split = [o.decode_tokens_per_s for o in options if not o.whole_model_on_gpu and o.plan.layers_on_gpu]
    assert whole and split and max(split) < min(whole)


def test_a_mac_shares_its_unified_memory():
    small, large = gguf_choice.target(mac_memory_gb=16), gguf_choice.target(mac_memory_gb=64)
    assert small.unified and small.gpu_bytes == pytest.approx(16e9 * 2 / 3 * 0.95)
    assert large.gpu_bytes == pytest.approx(64e9 * 3 / 4 * 0.95)
    options, pick = gguf_choice.choose_gguf("llama-3.1-8b", small, 8192)
    assert pick.whole_model_on_gpu and pick.plan.gpu_bytes <= small.gpu_bytes
    assert pick.decode_tokens_per_s is None  # no bandwidth given: no speed claimed


def test_bad_targets_say_what_is_accepted():
    with pytest.raises(LabkitError, match="mac_memory_gb"):
        gguf_choice.target()
    with pytest.raises(LabkitError, match="RTX 4090"):
        gguf_choice.target("RTX 9999")
    with pytest.raises(LabkitError, match="context"):
        gguf_choice.choose_gguf("llama-3.1-8b", gguf_choice.target(24), 0)


def test_the_plan_agrees_with_offload_for_a_real_file():
    """For the bundled GGUF, the estimate from the config and the plan from the file's own tensor table agree on
    how many layers fit a tight budget."""
    pytest.importorskip("gguf")
    from labkit.models import bundled_gguf_path
    from labkit.offload import plan_offload

    sizes = gguf_choice._level_sizes("gemma-3-270m", "Q4_K_M", 2048)  # the bundled file's level
    budget = 0.5 * GIB + sizes["compute_bytes"] + 9 * (sizes["layer_bytes"][0] + sizes["kv_bytes_per_layer"]) + 1
    from labkit.offload import fit_layers

    estimated = fit_layers(sizes["layer_bytes"], sizes["kv_bytes_per_layer"], sizes["output_bytes"],
                           sizes["compute_bytes"], budget)
    real = plan_offload(bundled_gguf_path(), 2048, usable_bytes=budget)
    assert estimated.layers_on_gpu == 9 and abs(real.layers_on_gpu - estimated.layers_on_gpu) <= 3


def test_a_model_larger_than_a_macs_memory_is_not_offloaded_there():
    mac = gguf_choice.target(mac_memory_gb=16)
    options, pick = gguf_choice.choose_gguf("llama-3.1-70b", mac, 8192)
    text = gguf_choice.pick_markdown("llama-3.1-70b", mac, 8192, options, pick)
    assert "no file fits" in text and "llama-server" not in text
    assert not pick.fits_memory and {o.row()["where"] for o in options} == {"does not fit this memory"}
    card = gguf_choice.target("NVIDIA RTX 3060")  # a discrete card offloads, and says how much RAM that needs
    options, pick = gguf_choice.choose_gguf("llama-3.1-70b", card, 8192)
    assert not pick.whole_model_on_gpu and "GB of weights must fit there" in gguf_choice.pick_markdown(
        "llama-3.1-70b", card, 8192, options, pick)
