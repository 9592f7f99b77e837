"""llama.cpp's importance matrix (imatrix): quantizing with calibration data (notebook 04).

Round-to-nearest treats every weight alike. An **imatrix** records, for each weight matrix, how large the activations
that multiply each of its input columns are on some sample text, the **calibration data**; llama.cpp's quantizer
then weighs each weight's rounding error by that importance, so the columns that matter keep more precision. The
**IQ** types (IQ4_XS, IQ3_XXS, IQ2_XS ...) were designed around it (the 1-3 bit ones refuse to quantize without
one), and it helps the k-quants most at 2-3 bits.

llama-cpp-python's quantize call cannot take an imatrix (llama.cpp's C API passes it as a C++ object), so this module
runs llama.cpp's own tools, `llama-imatrix` and `llama-quantize`. `make setup` builds them beside llama-server
(labkit/llama_server_build.py); a llama.cpp release or `brew install llama.cpp` has them too. `missing_tools()`
says what is missing and how to get it.

The files join the quant ladder of labkit.quant (same F16 reference, same cache folder), labelled `<type>+imatrix`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from .errors import LabkitError, unknown
from .gguf_files import read_gguf, require_disk_space
from .hardware import cpu_threads
from .kvcache import filler_text
from .llama_server import llama_cpp_dirs
from .quant import REFERENCE, ladder_dir, reference_gguf

TOOLS = ("llama-imatrix", "llama-quantize")
TOOLS_ENV = "LABKIT_LLAMA_TOOLS"  # a folder holding llama-imatrix and llama-quantize wins over every other place
# Q2_K with an imatrix against Q2_K without (the same type: what the imatrix alone buys), and two IQ types
IMATRIX_LEVELS = ("Q2_K", "IQ4_XS", "IQ2_XS")
# llama-quantize's own list: the bits of each IQ type's codes (a file keeps a few tensors larger, so averages more)
IQ_BITS = {"IQ4_XS": 4.25, "IQ4_NL": 4.5, "IQ3_M": 3.66, "IQ3_XXS": 3.06, "IQ2_M": 2.7, "IQ2_XS": 2.31,
           "IQ2_XXS": 2.06, "IQ1_M": 1.75}
IMATRIX_TYPES = ("Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", *IQ_BITS)


def label(qtype: str) -> str:
    """The ladder's name for a level quantized with the imatrix."""
    return f"{qtype}+imatrix"


def find_tool(name: str) -> Path | None:
    """Where llama.cpp's tool `name` is: $LABKIT_LLAMA_TOOLS, next to llama-cpp-python (the wheel `make setup`
    builds installs it in `<site-packages>/bin/`), or on PATH. None when it is nowhere."""
    exe = name + (".exe" if os.name == "nt" else "")
    folder = os.environ.get(TOOLS_ENV)
    candidates = [Path(folder) / exe] if folder else []
    candidates += [folder / exe for folder in llama_cpp_dirs()]
    on_path = shutil.which(exe)
    candidates += [Path(on_path)] if on_path else []
    return next((c for c in candidates if c.is_file() and os.access(c, os.X_OK)), None)


def missing_tools() -> str | None:
    """None when llama-imatrix and llama-quantize are both found, else what is missing and how to get it."""
    missing = [t for t in TOOLS if find_tool(t) is None]
    if not missing:
        return None
    return (f"llama.cpp's {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed here. "
            "`make setup` builds them with llama-server (python -m labkit.llama_server_build --install does the "
            "same on Colab, about 10 minutes); a llama.cpp release (github.com/ggml-org/llama.cpp/releases) or "
            f"`brew install llama.cpp` has them too; or point ${TOOLS_ENV} at the folder that holds them.")


def _require_tools() -> dict[str, Path]:
    problem = missing_tools()
    if problem:
        raise LabkitError(problem)
    return {t: find_tool(t) for t in TOOLS}


def _run(cmd: Sequence[str | Path], what: str) -> str:
    """Run one of llama.cpp's tools; its log is kept out of the notebook and shown only when it fails."""
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, errors="replace")
    if done.returncode != 0:
        log = (done.stdout + done.stderr)[-1500:]
        raise LabkitError(f"{what} failed (exit code {done.returncode}):\n{log}")
    return done.stdout + done.stderr


def calibration_text() -> str:
    """The calibration data: plain prose of the course (datasets/kv_cache/filler.txt, about 600 tokens), NOT the
    evaluation text the ladder is scored on. Published imatrix files use 100k tokens or more of varied text."""
    return filler_text()


def build_imatrix(model: str | Path | None = None, text: str | None = None, n_ctx: int = 128,
                  threads: int | None = None) -> Path:
    """The importance matrix of `model` (default: the ladder's F16 reference) on `text` (default:
    `calibration_text()`), computed by llama-imatrix in chunks of `n_ctx` tokens. Cached next to the ladder."""
    tools = _require_tools()
    source = Path(model) if model is not None else reference_gguf()
    out = source.with_name(f"{source.stem}.imatrix.gguf")
    if out.exists() and text is None:
        return out
    folder = ladder_dir()
    folder.mkdir(parents=True, exist_ok=True)
    calibration = folder / f".calibration-{os.getpid()}.txt"
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    calibration.write_text(text if text is not None else calibration_text())
    try:
        _run([tools["llama-imatrix"], "-m", source, "-f", calibration, "-c", str(n_ctx), "-o", tmp,
              "-t", str(threads or cpu_threads()), "--no-ppl"], "llama-imatrix")
        os.replace(tmp, out)
    finally:
        calibration.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return out


def quantize_with_imatrix(source: str | Path, qtype: str, imatrix: str | Path, out_path: str | Path,
                          threads: int | None = None) -> Path:
    """`llama-quantize --imatrix imatrix source out qtype`, written under a temporary name and renamed when complete."""
    tools = _require_tools()
    if qtype not in IMATRIX_TYPES:
        raise unknown("type to quantize with an imatrix", qtype, IMATRIX_TYPES)
    source, out_path = Path(source), Path(out_path)
    require_disk_space(out_path.parent, read_gguf(source).n_parameters * 8.5 / 8, f"quantizing to {qtype}")
    tmp = out_path.with_name(f".{out_path.name}.partial-{os.getpid()}")
    try:
        _run([tools["llama-quantize"], "--imatrix", imatrix, source, tmp, qtype, str(threads or cpu_threads())],
             f"llama-quantize to {qtype}")
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path


def build_imatrix_ladder(levels: Sequence[str] = IMATRIX_LEVELS, threads: int | None = None) -> dict[str, Path]:
    """{"<type>+imatrix": GGUF path} for each type in `levels`, quantized from the ladder's F16 reference with its
    imatrix. Files already in the cache are reused (the IQ types take a minute or two each on 2 cores)."""
    from tqdm.auto import tqdm

    for qtype in levels:
        if qtype not in IMATRIX_TYPES:
            raise unknown("type to quantize with an imatrix", qtype, IMATRIX_TYPES)

    reference = reference_gguf()
    targets = {label(t): reference.with_name(reference.name.replace(REFERENCE, label(t))) for t in levels}
    missing = [name for name, path in targets.items() if not path.exists()]
    if not missing:
        return targets
    imatrix = build_imatrix(reference, threads=threads)
    for qtype in tqdm(levels, desc="imatrix levels"):
        path = targets[label(qtype)]
        if not path.exists():
            quantize_with_imatrix(reference, qtype, imatrix, path, threads)
    return targets
