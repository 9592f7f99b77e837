"""labkit.gguf_files: the one GGUF reader and writer (metadata, tensor table, bits per weight, atomic writes)."""

import numpy as np
import pytest

from labkit import gguf_files
from labkit.errors import LabkitError

gguf = pytest.importorskip("gguf")


def _template(path, with_tensors=True):
    """A small llama-style GGUF with a tokenizer-like array, an uint32 key and two tensors."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(2)
    w.add_head_count(4)
    w.add_embedding_length(8)
    w.add_name("tiny template")
    w.add_token_list([f"tok{i}" for i in range(2000)])  # longer than max_array: summarized
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    if with_tensors:
        rng = np.random.default_rng(0)
        w.add_tensor("token_embd.weight", rng.standard_normal((64, 32)).astype(np.float32),
                     raw_dtype=None)
        w.add_tensor("output_norm.weight", np.ones(32, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_read_gguf_metadata_tensors_and_bits(tmp_path):
    info = gguf_files.read_gguf(_template(tmp_path / "t.gguf"))
    assert info.architecture == "llama" and info.metadata["llama.block_count"] == 2
    assert info.metadata["tokenizer.ggml.tokens"] == "<array of 2000>"
    assert info.file_type == "Q8_0"
    embd = info.tensor("token_embd.weight")
    assert embd.shape == (32, 64) and embd.type == "F32" and embd.n_bytes == 64 * 32 * 4  # GGUF order
    assert embd.bits_per_weight == 32
    assert info.n_parameters == 64 * 32 + 32
    assert info.bits_per_weight == pytest.approx(32)
    with pytest.raises(LabkitError, match="unknown tensor"):
        info.tensor("nope")


def test_bundled_q4_k_m_reads_as_a_mix_of_types():
    from labkit.models import bundled_gguf_path

    info = gguf_files.read_gguf(bundled_gguf_path())
    assert info.file_type == "Q4_K_M" and info.architecture == "gemma3"
    assert 260e6 < info.n_parameters < 275e6  # Gemma 3 270M
    types = info.tensor_types()
    assert {"Q8_0", "Q4_K", "F32"} <= set(types)
    assert sum(t["params"] for t in types.values()) == info.n_parameters
    # the average sits between the 4.5 bits of Q4_K and the 8.5 of Q8_0 (the big embedding is Q8_0)
    assert 4.5 < info.bits_per_weight < 8.5
    w = gguf_files.read_tensor(bundled_gguf_path(), "blk.0.attn_q.weight")
    assert w.dtype == np.float32 and w.shape == tuple(reversed(info.tensor("blk.0.attn_q.weight").shape))
    assert np.isfinite(w).all() and 0 < np.abs(w).max() < 10


@pytest.mark.parametrize("dtype, tol", [("F32", 0), ("F16", 1e-3), ("BF16", 8e-3)])
def test_write_gguf_like_round_trips_tensors_and_keeps_metadata(tmp_path, dtype, tol):
    template = _template(tmp_path / "t.gguf")
    rng = np.random.default_rng(1)
    new = {"token_embd.weight": rng.standard_normal((64, 32)).astype(np.float32),
           "output_norm.weight": rng.standard_normal(32).astype(np.float32)}
    out = gguf_files.write_gguf_like(template, new, tmp_path / "out.gguf", dtype=dtype,
                                     metadata={"general.name": "copy", "llama.block_count": 3})
    info = gguf_files.read_gguf(out)
    assert info.file_type == dtype
    assert info.metadata["general.name"] == "copy" and info.metadata["llama.block_count"] == 3
    assert info.metadata["tokenizer.ggml.tokens"] == "<array of 2000>"  # the tokenizer came along
    assert info.tensor("token_embd.weight").type == dtype
    assert info.tensor("output_norm.weight").type == "F32"  # 1-D tensors stay F32
    back = gguf_files.read_tensor(out, "token_embd.weight")
    assert back.shape == (64, 32)
    np.testing.assert_allclose(back, new["token_embd.weight"], rtol=tol, atol=tol)
    # the override kept the template key's type (uint32), which llama.cpp checks
    reader = gguf.GGUFReader(out)
    assert reader.fields["llama.block_count"].types[0] == gguf.GGUFValueType.UINT32
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def test_write_gguf_like_leaves_no_file_when_writing_fails(tmp_path, monkeypatch):
    template = _template(tmp_path / "t.gguf")
    tensors = {"token_embd.weight": np.zeros((64, 32), np.float32), "output_norm.weight": np.ones(32, np.float32)}

    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", disk_full)
    with pytest.raises(OSError):
        gguf_files.write_gguf_like(template, tensors, tmp_path / "out.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.gguf"]


def test_write_gguf_like_refuses_when_the_disk_is_too_small(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    template = _template(tmp_path / "t.gguf")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(LabkitError, match="disk space"):
        gguf_files.write_gguf_like(template, {"token_embd.weight": np.zeros((64, 32), np.float32),
                                              "output_norm.weight": np.ones(32, np.float32)}, tmp_path / "o.gguf")
    assert not (tmp_path / "o.gguf").exists()


def test_write_gguf_like_rejects_bad_input(tmp_path):
    template = _template(tmp_path / "t.gguf")
    good = {"token_embd.weight": np.zeros((64, 32), np.float32), "output_norm.weight": np.ones(32, np.float32)}
    with pytest.raises(LabkitError, match="Accepted: 'F32', 'F16', 'BF16'"):
        gguf_files.write_gguf_like(template, good, tmp_path / "o.gguf", dtype="Q4_K")
    with pytest.raises(LabkitError, match="missing"):
        gguf_files.write_gguf_like(template, {"token_embd.weight": good["token_embd.weight"]}, tmp_path / "o.gguf")
    with pytest.raises(LabkitError, match="shape"):
        gguf_files.write_gguf_like(template, {**good, "token_embd.weight": np.zeros((32, 64), np.float32)},
                                   tmp_path / "o.gguf")
    with pytest.raises(LabkitError, match="float"):
        gguf_files.write_gguf_like(template, {**good, "output_norm.weight": np.ones(32, np.int32)}, tmp_path / "o.gguf")
    with pytest.raises(LabkitError, match="numpy"):
        gguf_files.write_gguf_like(template, {**good, "output_norm.weight": [1.0] * 32}, tmp_path / "o.gguf")
    with pytest.raises(LabkitError, match=".gguf"):
        gguf_files.write_gguf_like(template, good, tmp_path / "o.bin")
    # strict=False writes any set of tensors (a vocab-only template has none)
    out = gguf_files.write_gguf_like(_template(tmp_path / "v.gguf", with_tensors=False),
                                     {"x.weight": np.ones((4, 8), np.float32)}, tmp_path / "any.gguf", strict=False)
    assert [t.name for t in gguf_files.read_gguf(out).tensors] == ["x.weight"]
    assert not list(tmp_path.glob("o.*"))


def test_files_that_are_not_gguf_get_a_clear_error(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(LabkitError, match="not a GGUF file"):
        gguf_files.read_gguf(tmp_path / "x.gguf")
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 20)
    with pytest.raises(LabkitError, match="damaged"):
        gguf_files.read_gguf(tmp_path / "bad.gguf")
    with pytest.raises(LabkitError, match="not a GGUF file"):
        gguf_files.write_gguf_like(tmp_path / "x.gguf", {"a": np.ones((2, 2), np.float32)}, tmp_path / "o.gguf")
