import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def bundled_dense():
    """The bundled model in transformers (fp32, CPU); converted once, then cached."""
    from labkit.models import load_bundled_transformers

    return load_bundled_transformers()


@pytest.fixture(scope="session")
def bundled_llama():
    pytest.importorskip("llama_cpp")
    from labkit.models import load_llama_cpp

    return load_llama_cpp(n_ctx=512)

# The grading corpus holds sample submissions, one with a student's conftest.py: never collected here.
collect_ignore = ["grading_corpus"]
