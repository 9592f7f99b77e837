"""labkit.errors: bad input is refused with what is accepted; a missing package names its install command."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labkit.errors import LabkitError, MissingPackageError, require_positive, require_tokens


@given(st.one_of(st.floats(allow_infinity=False, max_value=0), st.just(float("nan")), st.integers(max_value=0)))
def test_require_positive_rejects_non_positive(value):
    with pytest.raises(LabkitError):
        require_positive("context", value)


@given(st.floats(min_value=1e-9, max_value=1e12))
def test_require_positive_accepts_positive(value):
    require_positive("context", value)
    assert not math.isnan(value)


def test_require_positive_rejects_non_numbers():
    with pytest.raises(LabkitError, match="must be a number"):
        require_positive("batch", "4")
    with pytest.raises(LabkitError):
        require_positive("batch", True)


def test_missing_package_error_gives_the_install_command():
    err = MissingPackageError("llama-cpp-python", "Running GGUF models", extra="llama")
    assert "pip install llama-cpp-python" in str(err) and ".[llama]" in str(err)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "8", None])
def test_require_tokens_wants_a_whole_number_of_one_or_more(bad):
    with pytest.raises(LabkitError, match="context_tokens must be a whole number of tokens"):
        require_tokens("context_tokens", bad)
    assert require_tokens("context_tokens", 1) == 1
