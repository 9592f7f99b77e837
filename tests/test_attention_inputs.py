"""labkit.attention_inputs: the shape of an attention problem, and every mismatch named."""

import pytest
import torch

from labkit import LabkitError
from labkit.attention_inputs import check_qkv


def test_the_shape_of_a_grouped_query_problem():
    q, kv = torch.zeros(2, 8, 5, 16), torch.zeros(2, 2, 7, 16)
    s = check_qkv(q, kv, kv)
    assert (s.batch, s.heads, s.kv_heads, s.n_q, s.n_k, s.head_dim, s.group) == (2, 8, 2, 5, 7, 16, 4)


@pytest.mark.parametrize("q, k, v, message", [
    (torch.zeros(1, 4, 8, 16), torch.zeros(1, 3, 8, 16), torch.zeros(1, 3, 8, 16), "multiple of"),
    (torch.zeros(1, 4, 8, 16), torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 8), "head_dim"),
    (torch.zeros(1, 4, 8, 16), torch.zeros(1, 4, 8, 16), torch.zeros(1, 4, 9, 16), "same shape"),
    (torch.zeros(2, 4, 8, 16), torch.zeros(1, 4, 8, 16), torch.zeros(1, 4, 8, 16), "batch"),
    (torch.zeros(4, 8, 16), torch.zeros(4, 8, 16), torch.zeros(4, 8, 16), "4 dimensions"),
    (torch.zeros(1, 4, 0, 16), torch.zeros(1, 4, 8, 16), torch.zeros(1, 4, 8, 16), "empty attention"),
    (torch.zeros(1, 4, 8, 16), torch.zeros(1, 4, 8, 16).double(), torch.zeros(1, 4, 8, 16).double(), "one dtype"),
    ([[0.0]], torch.zeros(1, 4, 8, 16), torch.zeros(1, 4, 8, 16), "torch.Tensor"),
])
def test_mismatches_are_refused_with_what_does_not_match(q, k, v, message):
    with pytest.raises(LabkitError, match=message):
        check_qkv(q, k, v)
