"""Build llama.cpp's `llama-server` in the same compile as the llama-cpp-python wheel, once per machine.

llama-cpp-python's own server (`python -m llama_cpp.server`) answers one request at a time; llama.cpp's
`llama-server` runs several slots with continuous batching, prefix caching, JSON-schema grammars and n-gram
speculation (notebook 09). The llama-cpp-python sdist vendors all of llama.cpp, so the wheel we build anyway can
carry the server too: the CMake switches below turn on llama.cpp's tools, and its install rule puts the binary
in the wheel (`<site-packages>/bin/llama-server`, next to `<site-packages>/lib/libllama.so`).

pip's wheel cache ignores CMAKE_ARGS (it would hand back the plain wheel it built before), so the wheel is built
with `--no-cache-dir` into a folder of our own, keyed by version, switches and machine: a second checkout on the
same machine installs it in seconds instead of compiling again.

    python labkit/llama_server_build.py            # prints the wheel's path (builds it first when missing)
    python -m labkit.llama_server_build --install  # and installs it (Colab, or a pip install of labkit)

Standard library only: the Makefile runs it before labkit is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

# llama.cpp's tools and server on, and installed (llama-server links a library of its own); everything that
# downloads (the web UI's prebuilt assets), needs npm (building the UI) or is not needed (tests, examples) off.
# LLAVA_BUILD=OFF: with the tools on, llama.cpp builds its multimodal library itself, and llama-cpp-python's second
# copy of it would clash.
SERVER_CMAKE_ARGS = [
    "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_SERVER=ON", "-DLLAVA_BUILD=OFF", "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF", "-DLLAMA_TOOLS_INSTALL=ON",
]
# The binary finds libllama next to it in the installed wheel (bin/../lib).
RPATH = "@loader_path/../lib" if sys.platform == "darwin" else "$ORIGIN/../lib"
TESTED_VERSIONS = Path(__file__).resolve().parent / "tested_versions.txt"


def cmake_args(extra: str | None = None) -> str:
    """The CMAKE_ARGS for the build: the server switches, then yours (CMAKE_ARGS, e.g. -DGGML_CUDA=on)."""
    extra = os.environ.get("CMAKE_ARGS", "") if extra is None else extra
    return " ".join([*SERVER_CMAKE_ARGS, f"-DCMAKE_INSTALL_RPATH={RPATH}", extra]).strip()


def tested_version() -> str:
    """The llama-cpp-python version in labkit/tested_versions.txt."""
    match = re.search(r"^llama-cpp-python==(\S+)", TESTED_VERSIONS.read_text(), re.M)
    if not match:
        raise SystemExit(f"no llama-cpp-python pin in {TESTED_VERSIONS}")
    return match.group(1)


def cache_root() -> Path:
    """LABKIT_WHEELS, else the user cache (the folder labkit.paths.cache_dir() uses on Linux: ~/.cache/labkit)."""
    if os.environ.get("LABKIT_WHEELS"):
        return Path(os.environ["LABKIT_WHEELS"])
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    elif os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home()))
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Path(os.environ.get("LABKIT_CACHE") or base / "labkit") / "wheels"


def wheel_dir(version: str, args: str) -> Path:
    """One folder per version, switches and machine (GGML_NATIVE compiles for this CPU)."""
    key = hashlib.sha256(f"{version}|{args}|{platform.machine()}|{platform.system()}".encode()).hexdigest()[:12]
    return cache_root() / f"llama-cpp-python-{version}-server-{key}"


def find_wheel(folder: Path) -> Path | None:
    wheels = sorted(folder.glob("llama_cpp_python-*.whl"))
    return wheels[-1] if wheels else None


def server_in_wheel(wheel: Path) -> str | None:
    """The llama-server member of the wheel, or None."""
    with zipfile.ZipFile(wheel) as zf:
        return next((n for n in zf.namelist() if n.rsplit("/", 1)[-1] in ("llama-server", "llama-server.exe")), None)


def build(version: str, args: str, folder: Path, quiet: bool = False) -> Path:
    """Compile llama-cpp-python `version` with `args` into `folder`; record how long it took."""
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, CMAKE_ARGS=args)
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "--no-binary", "llama-cpp-python",
           "-w", str(folder), f"llama-cpp-python=={version}"]
    print(f"building llama-cpp-python {version} with llama-server (CMAKE_ARGS={args!r}); "
          f"this compiles llama.cpp once, about 10 minutes on 2 cores", file=sys.stderr, flush=True)
    start = time.time()
    cpu_before = os.times()
    result = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL if quiet else sys.stderr, stderr=sys.stderr)
    cpu_after = os.times()
    if result.returncode != 0:
        raise SystemExit(f"the llama-cpp-python build failed (exit code {result.returncode}); see the log above")
    wheel = find_wheel(folder)
    if wheel is None or server_in_wheel(wheel) is None:
        raise SystemExit(f"the build finished but {folder} holds no wheel with a llama-server binary")
    record = {"version": version, "cmake_args": args, "wall_s": round(time.time() - start, 1),
              "cpu_s": round((cpu_after.children_user - cpu_before.children_user)
                             + (cpu_after.children_system - cpu_before.children_system), 1),
              "cores": os.cpu_count(), "machine": platform.machine(), "system": platform.system(),
              "built_at": time.strftime("%Y-%m-%d %H:%M:%S"), "wheel": wheel.name}
    (folder / "build.json").write_text(json.dumps(record, indent=2))
    print(f"built {wheel.name} in {record['wall_s'] / 60:.1f} min ({record['cpu_s'] / 60:.1f} CPU-min)",
          file=sys.stderr, flush=True)
    return wheel


def ensure_wheel(version: str | None = None, extra_args: str | None = None, quiet: bool = False) -> Path:
    """The cached wheel with llama-server for this machine, built first when missing."""
    version = version or tested_version()
    args = cmake_args(extra_args)
    folder = wheel_dir(version, args)
    wheel = find_wheel(folder)
    if wheel is not None and server_in_wheel(wheel):
        return wheel
    return build(version, args, folder, quiet=quiet)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--version", default=None, help="llama-cpp-python version (default: labkit/tested_versions.txt)")
    ap.add_argument("--quiet", action="store_true", help="hide the compiler's output")
    ap.add_argument("--show-args", action="store_true", help="print the CMAKE_ARGS and exit")
    ap.add_argument("--install", action="store_true",
                    help="also pip-install the wheel (with its [server] extra) into this Python (Colab, pip users)")
    args = ap.parse_args(argv)
    if args.show_args:
        print(cmake_args())
        return 0
    wheel = ensure_wheel(args.version, quiet=args.quiet)
    if args.install:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", str(wheel)],
                       check=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"{wheel}[server]"], check=True)
    print(wheel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
