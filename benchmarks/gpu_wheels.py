"""Wheels for a GPU machine that reaches no package index (the course's lent H100/H200), made here.

    .venv/bin/python benchmarks/gpu_wheels.py      # writes .gpu-wheels/c0, c1, ... (ignored by git)

The GPU image already has torch, transformers, accelerate, peft, matplotlib, pytest ... (DEVICE_HAS below,
read off the image's package list). Everything else this course installs (labkit's dependencies, the
`lab`, `llama` and `dev` extras) is downloaded here as a Python 3.12 x86-64 wheel at the version this
checkout's .venv runs, plus llama-cpp-python's source (built there with CUDA by gpu_setup.sh).

A transfer carries at most 64 MiB, so files over CHUNK_MIB are split into numbered parts that
benchmarks/gpu_setup.sh joins again there, and the files are grouped into folders c0, c1, ... of at most
60 MiB: carry one folder per call while the machine stays warm, then run gpu_setup.sh there.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WHEELS = ROOT / ".gpu-wheels"
CHUNK_MIB = 60
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64", "manylinux_2_31_x86_64", "manylinux_2_34_x86_64",
             "manylinux_2_35_x86_64", "linux_x86_64"]
# Read off the GPU image ('cuda'), 2026-11-17. Installing these again would replace CUDA builds with ours.
DEVICE_HAS = set("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning
lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson
ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
numpy numpyro onnx opencv-python-headless optax opt-einsum optimistix orbax-checkpoint packaging pandas pathspec
patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo
pygments pyparsing pyproject-hooks pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard threadpoolctl tifffile tiktoken timm tokenizers toolz torch
torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer
typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())
# Not needed to run notebooks and benchmarks there: the linters, the browser test, JupyterLab's server side.
NOT_NEEDED = re.compile(r"^(ruff|playwright|greenlet|pyee|nbstripout|jupyterlab|jupyter-lsp|jupyter-server.*|notebook.*"
                        r"|jupyterlab-server|async-lru|babel|json5|argon2.*|terminado|send2trash|bleach|tinycss2|"
                        r"webencodings|nbconvert|mistune|pandocfilters|jupyterlab-pygments|defusedxml|beautifulsoup4|"
                        r"soupsieve|overrides|rfc.*|uri-template|webcolors|fqdn|isoduration|arrow|jsonpointer|"
                        r"websocket-client|python-json-logger|jupyter-events|jupyter-client-.*|types-.*|nvidia-.*|"
                        r"llama-cpp-python|labkit|hypothesis|httptools|watchfiles|websockets|uvloop)$")
# The image has these, but at a version that breaks the course: carried at the tested version anyway.
# transformers 5.17 (the image, 2026-12-01) de-quantizes the bundled GGUF with a tokenizer that spends 160
# tokens on a 30-token training row, so 07's fine-tuning refused its data; 5.23 (tested) does not.
CARRY_ANYWAY = {"transformers"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wanted_packages() -> dict[str, str]:
    have = {canonical(n) for n in DEVICE_HAS}
    out = {}
    for dist in md.distributions():
        name = canonical(dist.metadata["Name"])
        if (name not in have or name in CARRY_ANYWAY) and not NOT_NEEDED.match(name):
            out[name] = dist.version
    return dict(sorted(out.items()))


def download(name: str, version: str) -> None:
    base = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(WHEELS)]
    binary = [*base, "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
              *[f"--platform={p}" for p in PLATFORMS], f"{name}=={version}"]
    if subprocess.run(binary).returncode == 0:
        return
    # Some packages publish only an sdist (hqq 0.2.8.post1): build the wheel here, and carry it if it is pure Python.
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(WHEELS),
                            f"{name}=={version}"])
    pure = list(WHEELS.glob(f"{name.replace('-', '_')}-{version}-py3-none-any.whl"))
    if built.returncode != 0 or not pure:
        raise SystemExit(f"no Python 3.12 x86-64 wheel of {name}=={version}, and no pure-Python wheel built from its sdist")


def split_large(path: Path) -> list[Path]:
    size = CHUNK_MIB * 2**20
    if path.stat().st_size <= size:
        return [path]
    parts = []
    with path.open("rb") as fh:
        for i, block in enumerate(iter(lambda: fh.read(size), b"")):
            part = path.with_name(f"{path.name}.part{i:02d}")
            part.write_bytes(block)
            parts.append(part)
    path.unlink()
    return parts


def group_into_carries() -> list[list[Path]]:
    """Move every file into folders c0, c1, ... of at most 60 MiB each (one transfer each)."""
    for folder in [d for d in WHEELS.iterdir() if d.is_dir() and re.fullmatch(r"c\d+", d.name)]:
        for f in folder.iterdir():
            f.rename(WHEELS / f.name)
        folder.rmdir()
    for f in sorted(WHEELS.iterdir()):
        if f.is_file() and ".part" not in f.name:
            split_large(f)
    carries, current, total = [], [], 0
    for f in sorted(p for p in WHEELS.iterdir() if p.is_file()):
        size = f.stat().st_size
        if current and total + size > CHUNK_MIB * 2**20:
            carries.append(current)
            current, total = [], 0
        current.append(f)
        total += size
    if current:
        carries.append(current)
    moved = []
    for i, group in enumerate(carries):
        folder = WHEELS / f"c{i}"
        folder.mkdir()
        moved.append([f.rename(folder / f.name) for f in group])
    return moved


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--regroup", action="store_true", help="only regroup what .gpu-wheels/ already holds")
    args = ap.parse_args()
    if not args.regroup:
        if WHEELS.exists():
            shutil.rmtree(WHEELS)
        WHEELS.mkdir()
        for name, version in wanted_packages().items():
            download(name, version)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary=:all:", "-d",
                        str(WHEELS), f"llama-cpp-python=={md.version('llama-cpp-python')}"], check=True)
    carries = group_into_carries()
    total = sum(f.stat().st_size for group in carries for f in group)
    print(f"{total / 2**20:.0f} MiB in {len(carries)} folders of at most {CHUNK_MIB} MiB; carry one per call:")
    for i, group in enumerate(carries):
        print(f"  .gpu-wheels/c{i}: {len(group)} files, {sum(f.stat().st_size for f in group) / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
