"""GGUF files: read what is inside one, and write a new one that looks like an existing one.

GGUF is llama.cpp's file format. One file holds everything a runtime needs:

    header      "GGUF", a version, the number of tensors and of metadata entries
    metadata    key/value pairs: the architecture and its hyper-parameters (`llama.block_count`, ...),
                the tokenizer (its whole vocabulary, merges, special tokens), the chat template,
                `general.file_type` (the quantization the file was made with: Q4_K_M, ...)
    tensor table  name, shape, type (F32, F16, Q8_0, Q4_K, ...) and offset of every tensor
    data        the tensors' bytes, each aligned to 32 bytes

This module is labkit's one reader and one writer, both built on the `gguf` package that ships with
llama.cpp: `read_gguf` (metadata, per-tensor types, shapes, bytes, bits per weight), `read_tensor`
(one tensor de-quantized to float32 numpy), `write_gguf_like` (a template's metadata and tokenizer,
new tensor data in F32 / F16 / BF16, written atomically).

Shapes follow GGUF's convention, fastest-varying dimension first, as llama.cpp prints them: a
(vocab x hidden) embedding matrix in PyTorch is `(hidden, vocab)` here. `read_tensor` and
`write_gguf_like` use numpy's order (the PyTorch one).
"""

from __future__ import annotations

import math
import os
import shutil
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .errors import LabkitError, MissingPackageError, unknown

# gguf is imported inside the functions that use it: `import labkit` stays quick and works without the
# optional extras.

# the float types `write_gguf_like` writes; one-dimensional tensors (norms, biases) always stay F32,
# as llama.cpp's own converter keeps them
WRITE_TYPES = ("F32", "F16", "BF16")
_FILE_TYPE_OF = {"F32": "ALL_F32", "F16": "MOSTLY_F16", "BF16": "MOSTLY_BF16"}
# keys the writer sets itself (or that would be wrong in the new file)
_NOT_COPIED = ("general.architecture", "general.file_type", "general.alignment", "general.quantization_version")


def _gguf():
    try:
        import gguf
    except ImportError as err:
        raise MissingPackageError("gguf", "Reading and writing GGUF files") from err
    return gguf


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class GgufTensor:
    """One entry of a GGUF file's tensor table."""

    name: str
    shape: tuple[int, ...]  # GGUF order: fastest dimension first
    type: str  # F32, F16, BF16, Q8_0, Q6_K, Q4_K, ...
    n_bytes: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.n_bytes / self.n_elements


@dataclass(frozen=True)
class GgufFile:
    """What `read_gguf` found: metadata (long arrays shown as their length) and the tensor table."""

    path: Path
    metadata: dict[str, Any]
    tensors: tuple[GgufTensor, ...]

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    @property
    def file_type(self) -> str:
        """The type the file was made as (`general.file_type`): 'Q4_K_M', 'F16', ... ('unknown' if absent)."""
        value = self.metadata.get("general.file_type")
        if value is None:
            return "unknown"
        try:
            return _gguf().LlamaFileType(value).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            return f"file type {value}"

    @property
    def n_parameters(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)

    @property
    def bits_per_weight(self) -> float:
        """Bits per weight of the whole file's tensors (scales included), the figure llama.cpp prints as BPW."""
        return 8 * self.tensor_bytes / self.n_parameters if self.tensors else float("nan")

    def tensor(self, name: str) -> GgufTensor:
        for t in self.tensors:
            if t.name == name:
                return t
        raise unknown("tensor", name, [t.name for t in self.tensors][:20] + (["..."] if len(self.tensors) > 20 else []))

    def tensor_types(self) -> dict[str, dict]:
        """How the tensors' bytes split over types: {type: {"tensors": n, "bytes": b, "share": f, "params": p}},
        largest first. A "Q4_K_M" file is a mix: some tensors get more bits than others."""
        total = self.tensor_bytes or 1
        out: dict[str, dict] = {}
        for t in self.tensors:
            entry = out.setdefault(t.type, {"tensors": 0, "bytes": 0, "share": 0.0, "params": 0})
            entry["tensors"] += 1
            entry["bytes"] += t.n_bytes
            entry["params"] += t.n_elements
        for entry in out.values():
            entry["share"] = entry["bytes"] / total
        return dict(sorted(out.items(), key=lambda kv: -kv[1]["bytes"]))

    def summary(self) -> str:
        size = self.path.stat().st_size if self.path.exists() else self.tensor_bytes
        return (f"{self.path.name}: {self.architecture}, made as {self.file_type}, {len(self.tensors)} tensors, "
                f"{self.n_parameters / 1e6:,.1f} M weights, {size / 1e6:,.1f} MB, "
                f"{self.bits_per_weight:.2f} bits per weight")


GGUF_MAGIC = b"GGUF"


def validate_gguf(path: str | Path) -> Path:
    """Return the path if it is a readable GGUF file; raise LabkitError naming the problem otherwise."""
    path = Path(path)
    if not path.is_file():
        raise LabkitError(f"no such GGUF file: {path}. Pass the path of a .gguf model file.")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise LabkitError(
            f"{path} is not a GGUF file (it starts with {magic!r}, a GGUF file starts with b'GGUF'). "
            "Accepted: a llama.cpp model file in GGUF format, e.g. from a Hub repo whose name ends in -GGUF."
        )
    return path


def _reader(path: str | Path):
    """(path, gguf.GGUFReader) for a file that starts like a GGUF file; LabkitError when it is not one.

    Parsing a header walks every tokenizer entry in Python (a second for a 262k vocabulary), so readers
    are kept per file version (path, size, modification time).
    """
    path = validate_gguf(path).resolve()
    st = path.stat()
    return path, _cached_reader(str(path), st.st_size, st.st_mtime_ns)


def _fast_reader_class():
    """gguf.GGUFReader, except that metadata arrays are read in one piece instead of element by element.

    The stock reader makes two numpy views per element of every array: for a 262k-token vocabulary
    (its tokens, scores and types) that is a million small objects and up to a minute on a busy CPU.
    Here a scalar array is one numpy view and a string array one byte blob, walked with `struct`
    (`_contents` decodes it). Same fields, same types, read in well under a second.
    """
    import struct

    gguf = _gguf()
    value_type = gguf.GGUFValueType

    class FastReader(gguf.GGUFReader):
        def _get_field_parts(self, orig_offs, raw_type):
            if value_type(raw_type) != value_type.ARRAY or self.byte_order != "I" or sys.byteorder != "little":
                return super()._get_field_parts(orig_offs, raw_type)
            raw_itype = self._get(orig_offs, np.uint32)
            alen = self._get(orig_offs + 4, np.uint64)
            itype, count, start = value_type(int(raw_itype[0])), int(alen[0]), orig_offs + 12
            nptype = self.gguf_scalar_to_np.get(itype)
            if nptype is not None:
                values = self._get(start, nptype, count)
                return 12 + int(values.nbytes), [raw_itype, alen, values], [2], [value_type.ARRAY, itype]
            if itype != value_type.STRING:  # nested arrays: rare, leave them to the stock reader
                return super()._get_field_parts(orig_offs, raw_type)
            pos, buf = start, self.data
            for _ in range(count):
                pos += 8 + struct.unpack_from("<Q", buf, pos)[0]
            blob = self._get(start, np.uint8, pos - start)
            self.string_blobs = getattr(self, "string_blobs", set()) | {orig_offs}
            return pos - orig_offs, [raw_itype, alen, blob], [2], [value_type.ARRAY, value_type.STRING]

    return FastReader


def _value_offset(field: Any) -> int:
    return int(field.offset) + sum(int(part.nbytes) for part in field.parts[:3])  # after key and type


def _array_length(field: Any) -> int | None:
    gguf = _gguf()
    if field.types and field.types[0] == gguf.GGUFValueType.ARRAY:
        return int(field.parts[4][0])  # parts: key length, key, type, element type, count, values
    return None


def _contents(field: Any, reader: Any) -> Any:
    """A field's value; a string array FastReader kept as one blob is decoded here."""
    import struct

    if _value_offset(field) in getattr(reader, "string_blobs", ()):
        blob, count = field.parts[-1].tobytes(), int(field.parts[4][0])
        out, pos = [], 0
        for _ in range(count):
            n = struct.unpack_from("<Q", blob, pos)[0]
            out.append(blob[pos + 8:pos + 8 + n].decode("utf-8"))
            pos += 8 + n
        return out
    return field.contents()


@lru_cache(maxsize=4)
def _cached_reader(path: str, size: int, mtime_ns: int):
    try:
        return _fast_reader_class()(path)
    except (ValueError, IndexError, KeyError, OverflowError, TypeError) as err:
        raise LabkitError(f"{path} has a damaged GGUF header ({err}). Accepted: a complete GGUF file "
                          "(version 2 or 3), such as llama.cpp's converter or labkit.write_gguf_like writes.") from err


def _field_value(field: Any, reader: Any, max_array: int) -> Any:
    count = _array_length(field)
    if count is not None and count > max_array:
        return f"<array of {count}>"
    return _contents(field, reader)


@lru_cache(maxsize=32)
def _read_cached(path: str, size: int, mtime_ns: int, max_array: int) -> GgufFile:
    path_obj, reader = _reader(path)
    meta = {key: _field_value(field, reader, max_array) for key, field in reader.fields.items() if not key.startswith("GGUF.")}
    tensors = tuple(GgufTensor(t.name, tuple(int(d) for d in t.shape), t.tensor_type.name, int(t.n_bytes))
                    for t in reader.tensors)
    return GgufFile(path_obj, meta, tensors)


def read_gguf(path: str | Path, max_array: int = 1024) -> GgufFile:
    """A GGUF file's metadata and tensor table (no weights are loaded: the file is memory-mapped).

    Arrays longer than `max_array` (the tokenizer's vocabulary) are recorded as "<array of N>".
    Results are cached per file (path, size and modification time).
    """
    p = validate_gguf(path).resolve()
    st = p.stat()
    return _read_cached(str(p), st.st_size, st.st_mtime_ns, max_array)


def read_tensor(path: str | Path, name: str) -> np.ndarray:
    """One tensor of a GGUF file, de-quantized to float32, in numpy (PyTorch) order."""
    path, reader = _reader(path)
    for t in reader.tensors:
        if t.name == name:
            return _dequantize(t)
    raise unknown("tensor", name, [t.name for t in reader.tensors][:20])


def _dequantize(t: Any) -> np.ndarray:
    gguf = _gguf()
    data = gguf.quants.dequantize(t.data, t.tensor_type)
    return np.asarray(data, dtype=np.float32).reshape(tuple(reversed([int(d) for d in t.shape])))


def iter_dequantized(path: str | Path) -> Iterator[tuple[str, np.ndarray]]:
    """Every tensor of a GGUF file as (name, float32 array in numpy order), one at a time."""
    path, reader = _reader(path)
    for t in reader.tensors:
        yield t.name, _dequantize(t)


# ----------------------------------------------------------------------------- writing


def _file_type_value(dtype: str) -> int:
    return int(_gguf().LlamaFileType[_FILE_TYPE_OF[dtype]])


def _tensor_type(array: np.ndarray, dtype: str) -> str:
    return "F32" if array.ndim <= 1 else dtype


def _as_writable(array: np.ndarray, dtype: str) -> tuple[np.ndarray, Any]:
    """The array in the bytes GGUF stores, and the raw GGML type (None: the writer infers it)."""
    gguf = _gguf()
    if dtype == "F32":
        return np.asarray(array, dtype=np.float32), None
    if dtype == "F16":
        return np.asarray(array, dtype=np.float16), None  # no copy when it is already float16
    return gguf.quants.quantize(np.asarray(array, dtype=np.float32), gguf.GGMLQuantizationType.BF16), \
        gguf.GGMLQuantizationType.BF16


def _check_tensors(tensors: Mapping[str, np.ndarray], template: GgufFile, strict: bool) -> None:
    if not isinstance(tensors, Mapping) or not tensors:
        raise LabkitError("tensors must be a non-empty dict {GGUF tensor name: numpy array}")
    for name, array in tensors.items():
        if not isinstance(name, str) or not isinstance(array, np.ndarray):
            raise LabkitError(f"tensors must map names (str) to numpy arrays; got {name!r}: {type(array).__name__}")
        if not np.issubdtype(array.dtype, np.floating) or array.size == 0:
            raise LabkitError(f"tensor {name!r} must be a non-empty float array (float32/float16), got "
                              f"{array.dtype} with {array.size} elements")
    if strict and template.tensors:
        expected = {t.name: tuple(reversed(t.shape)) for t in template.tensors}
        missing = sorted(set(expected) - set(tensors))
        extra = sorted(set(tensors) - set(expected))
        if missing or extra:
            raise LabkitError(f"the tensors do not match {template.path.name}'s: missing {missing[:5]}, "
                              f"unexpected {extra[:5]}. Accepted: exactly the template's tensor names "
                              "(strict=False writes any set)")
        for name, shape in expected.items():
            if tuple(tensors[name].shape) != shape:
                raise LabkitError(f"tensor {name!r} has shape {tensors[name].shape}; the template's is {shape}")


def write_gguf_like(template_path: str | Path, tensors: Mapping[str, np.ndarray], out_path: str | Path,
                    dtype: str = "F16", metadata: Mapping[str, Any] | None = None, strict: bool = True,
                    progress: bool = False) -> Path:
    """Write a new GGUF file with the template's metadata (architecture keys, tokenizer, chat template)
    and the given tensors, stored as `dtype` ("F32", "F16" or "BF16"; 1-D tensors stay F32).

    - `tensors`: {GGUF tensor name: numpy array in numpy/PyTorch order}. With `strict` (default) and a
      template that has tensors, the names and sizes must be the template's.
    - `metadata`: keys to add or replace (e.g. {"general.name": "my fine-tune", "llama.block_count": 2}).
    - Atomic: written to a temporary file next to `out_path`, renamed into place when complete; on any
      error (disk full, bad tensor) no file is left behind. Refuses up front when the disk lacks room.
    """
    if dtype not in WRITE_TYPES:
        raise unknown("GGUF tensor type to write", dtype, WRITE_TYPES)
    gguf = _gguf()
    template = read_gguf(template_path)
    _check_tensors(tensors, template, strict)
    out_path = Path(out_path)
    if out_path.suffix != ".gguf":
        raise LabkitError(f"out_path must end in .gguf, got {out_path}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    bytes_per = {"F32": 4, "F16": 2, "BF16": 2}
    needed = sum(a.size * bytes_per[_tensor_type(a, dtype)] for a in tensors.values())
    needed += template.path.stat().st_size - template.tensor_bytes  # the header: metadata and tokenizer
    require_disk_space(out_path.parent, needed, what=f"writing {out_path.name}")

    _, reader = _reader(template.path)
    arch = template.architecture
    tmp = out_path.with_name(f".{out_path.name}.partial-{os.getpid()}")
    writer = gguf.GGUFWriter(tmp, arch)
    try:
        overrides = dict(metadata or {})
        for key, field in reader.fields.items():
            if key.startswith("GGUF.") or key in _NOT_COPIED or key in overrides:
                continue
            vtype = field.types[0]
            sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(key, _contents(field, reader), vtype, sub_type=sub)
        writer.add_file_type(_file_type_value(dtype))
        for key, value in overrides.items():  # an existing key keeps its type (llama.cpp checks it)
            field = reader.fields.get(key)
            if field is not None:
                vtype, sub = field.types[0], field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
            else:
                vtype = gguf.GGUFValueType.get_type(value)
                sub = gguf.GGUFValueType.get_type(value[0]) if vtype == gguf.GGUFValueType.ARRAY and value else None
            writer.add_key_value(key, value, vtype, sub_type=sub)
        for name, array in tensors.items():
            data, raw = _as_writable(array, _tensor_type(array, dtype))
            writer.add_tensor(name, data, raw_dtype=raw)  # BF16 arrives as bytes; the writer derives its shape
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=progress)
        writer.close()
        os.replace(tmp, out_path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return out_path


def require_disk_space(folder: str | Path, needed_bytes: float, what: str = "this") -> None:
    """LabkitError unless `folder`'s disk has `needed_bytes` free (plus 5% and 64 MB to spare)."""
    free = shutil.disk_usage(Path(folder)).free
    if free < needed_bytes * 1.05 + 64e6:
        raise LabkitError(f"not enough disk space for {what}: it needs about {needed_bytes / 1e9:.2f} GB and "
                          f"{folder} has {free / 1e9:.2f} GB free. Free some space, or point LABKIT_CACHE at a "
                          "disk with room.")
