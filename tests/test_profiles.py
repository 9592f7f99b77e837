"""labkit.profiles: the cpu profile, and a GPU profile sized by the memory labkit may use on mocked cards of every
tier (8, 16, 24, 40+ GB, the capped runs of make gpu-check, Apple silicon)."""

from dataclasses import replace

import pytest

from labkit import vram
from labkit.errors import LabkitError
from labkit.hardware import GIB, SAFETY_MARGIN, Hardware, detect_hardware
from labkit.models import load_config
from labkit.profiles import PROFILES, TIERS, profile, tier_for


@pytest.fixture(autouse=True)
def no_profile_override(monkeypatch):
    """The tests choose the profile from the (mocked) hardware: a LABKIT_PROFILE of the caller (`make test` sets
    cpu) must not decide it."""
    monkeypatch.delenv("LABKIT_PROFILE", raising=False)
    monkeypatch.delenv("LABKIT_GPU_MEMORY", raising=False)


def card(shown_gib: float, device: str = "cuda", name: str = "a card", unified: bool = False) -> Hardware:
    """A machine whose GPU shows `shown_gib` to labkit (after any LABKIT_GPU_MEMORY cap)."""
    base = detect_hardware(check_online=False)
    return replace(base, device=device, gpu_name=name, vram_total_bytes=int(shown_gib * GIB),
                   vram_free_bytes=int(shown_gib * GIB), vram_card_bytes=int(shown_gib * GIB), unified_memory=unified)


def test_profile_follows_env_and_rejects_unknown(monkeypatch):
    monkeypatch.setenv("LABKIT_PROFILE", "cpu")
    prof = profile()
    assert prof.name == "cpu" and prof.device == "cpu" and not prof.is_gpu and prof.tier == "cpu"
    assert prof.seq_lens == PROFILES["cpu"]["seq_lens"] and prof.usable_bytes is None
    monkeypatch.setenv("LABKIT_PROFILE", "tpu")
    with pytest.raises(LabkitError, match="'cpu', 'gpu', 'mps'"):
        profile()


def test_gpu_profiles_are_refused_without_their_gpu(monkeypatch):
    cpu_only = replace(detect_hardware(check_online=False), device="cpu")
    with pytest.raises(LabkitError, match="needs a CUDA GPU"):
        profile("gpu", hardware=cpu_only)
    with pytest.raises(LabkitError, match="needs Apple silicon"):
        profile("mps", hardware=cpu_only)
    assert profile(hardware=cpu_only).name == "cpu"


# (what the card shows to labkit in GiB, the tier): real cards from datasets/gpus.json and the capped runs
CARDS = [
    (7.5, "8 GB"),     # make gpu-check's LABKIT_GPU_MEMORY=7.5GiB
    (7.63, "8 GB"),    # an 8 GB laptop card (RTX 4060)
    (11.7, "8 GB"),    # a 12 GB RTX 3060: between tiers, so the smaller one's sizes
    (14.58, "16 GB"),  # Colab's T4
    (15.0, "16 GB"),   # LABKIT_GPU_MEMORY=15GiB
    (15.7, "16 GB"),   # a 16 GB card
    (23.64, "24 GB"),  # RTX 4090
    (31.4, "24 GB"),   # a 32 GB card
    (39.39, "40 GB+"),  # A100 40GB
    (79.18, "40 GB+"),  # H100
    (139.8, "40 GB+"),  # H200
]


@pytest.mark.parametrize("shown_gib, tier", CARDS)
def test_a_gpu_profile_is_sized_by_the_cards_usable_memory(monkeypatch, shown_gib, tier):
    prof = profile(hardware=card(shown_gib))
    assert prof.name == "gpu" and prof.device == "cuda" and prof.is_gpu and prof.dtype == "bf16"
    assert prof.tier == tier and prof.usable_bytes == pytest.approx(shown_gib * GIB * (1 - SAFETY_MARGIN))
    assert prof.is_full_size == (tier == "40 GB+")
    assert f"{tier} tier" in prof.describe()


@pytest.mark.parametrize("tier", TIERS, ids=lambda t: t.name)
def test_every_tier_fits_its_smallest_card(tier):
    """The sizes of a tier fit the least memory it is chosen for (the 8 GB tier: the 7.5 GiB capped run): the first
    random model at the longest sequence length, and notebook 03's pick among the rest."""
    usable = max(tier.min_usable_gib, 7.5 * (1 - SAFETY_MARGIN)) * GIB
    first = vram.estimate_inference(tier.random_models[0], "bf16", context=tier.seq_lens[-1], new_tokens=8)
    assert first.total < usable, (tier.name, first.total / GIB)
    fitting = [m for m in tier.random_models  # notebook 03: largest_that_fits at 8,192 tokens
               if vram.estimate_inference(m, "bf16", context=8192, new_tokens=8).total <= 0.9 * usable]
    assert fitting, f"notebook 03 finds no model of the {tier.name} tier that fits"
    assert list(tier.seq_lens) == sorted(tier.seq_lens) and tier.seq_lens[0] >= 512
    windows = {m: load_config(m)["max_position_embeddings"] for m in tier.random_models}
    assert min(windows.values()) >= 8192, f"notebook 03 measures at 8,192 tokens: {windows}"


def test_tiers_grow_with_memory():
    assert [t.min_usable_gib for t in TIERS] == sorted(t.min_usable_gib for t in TIERS)
    assert [len(t.seq_lens) for t in TIERS] == sorted(len(t.seq_lens) for t in TIERS)
    assert tier_for(0).name == "8 GB" and tier_for(1000 * GIB).name == "40 GB+"
    assert TIERS[-1].seq_lens == (512, 1024, 2048, 4096, 8192, 16384)  # the true sizes the course quotes


def test_apple_silicon_gets_the_mps_profile_sized_by_its_gpu_share(monkeypatch):
    mac = replace(card(10.7, device="mps", name="Apple GPU (MPS, Apple M2)", unified=True), bf16_supported=False)
    prof = profile(hardware=mac)
    assert prof.name == "mps" and prof.device == "mps" and not prof.is_gpu  # CUDA-only cells stay skipped
    assert prof.tier == "8 GB" and prof.dtype == "fp32"  # no bf16 before macOS 14, and Gemma overflows fp16
    assert profile(hardware=replace(mac, bf16_supported=True)).dtype == "bf16"
    big_mac = card(96, device="mps", unified=True)
    assert profile(hardware=big_mac).tier == "40 GB+"
    assert profile("cpu", hardware=mac).device == "cpu"  # LABKIT_PROFILE=cpu still works there


def test_fits_compares_an_estimate_with_the_tiers_memory():
    prof = profile(hardware=card(15.0))
    assert prof.fits(10 * GIB) and not prof.fits(15 * GIB)
    assert not profile("cpu", hardware=card(15.0)).fits(1)


def test_fits_here_says_what_a_bigger_card_shows(capsys):
    from labkit.course import fits_here

    small = profile(hardware=card(7.5))
    assert not fits_here(20 * GIB, "the 8B cache", "Llama 3.1 8B's cache up to 16k tokens", prof=small)
    out = capsys.readouterr().out
    assert "the 8B cache needs about 20.0 GiB" in out and "7.1 GiB usable" in out and "8 GB tier" in out
    assert "Llama 3.1 8B's cache up to 16k tokens" in out
    assert fits_here(2 * GIB, "x", "y", prof=small) and capsys.readouterr().out == ""
