"""labkit.dtypes: one table of bytes per weight, and names read the way people write them."""

import pytest

from labkit.dtypes import BITS_PER_WEIGHT, bytes_per_weight, normalize_dtype, torch_dtype
from labkit.errors import LabkitError


@pytest.mark.parametrize("alias,canonical", [("bfloat16", "bf16"), ("float16", "fp16"), ("FP32", "fp32"),
                                              ("q4_k_m", "Q4_K_M"), ("NF4", "nf4"), ("torch.bfloat16", "bf16")])
def test_normalize_dtype_accepts_aliases(alias, canonical):
    assert normalize_dtype(alias) == canonical


def test_unknown_dtype_names_what_is_accepted():
    with pytest.raises(LabkitError) as err:
        normalize_dtype("fp12")
    assert "fp12" in str(err.value) and "bf16" in str(err.value) and "Q4_K_M" in str(err.value)


def test_q8_0_and_q4_0_sizes_follow_their_block_layout():
    # a block of 32 weights = one fp16 scale (2 bytes) + 32 quants
    assert bytes_per_weight("Q8_0") == pytest.approx((2 + 32) / 32)
    assert bytes_per_weight("Q4_0") == pytest.approx((2 + 16) / 32)
    assert bytes_per_weight("nf4") == 0.5 and bytes_per_weight("bf16") == 2


def test_quantized_formats_are_not_torch_dtypes():
    import torch

    assert torch_dtype("bf16") is torch.bfloat16
    with pytest.raises(LabkitError, match="quantized format"):
        torch_dtype("Q4_K_M")


def test_formats_get_smaller_as_bits_drop():
    ordered = sorted(BITS_PER_WEIGHT.items(), key=lambda kv: kv[1])
    assert ordered[0][0] == "IQ2_M" and ordered[-1][0] == "fp32"
    assert [k for k, _ in ordered if k.startswith("Q")][0] == "Q2_K"
