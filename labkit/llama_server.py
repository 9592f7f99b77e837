"""llama.cpp's `llama-server`: finding it, and running it on loopback with parallel slots.

llama-cpp-python's own server (`runtimes.LlamaServer`) answers one request at a time. llama.cpp's C++ server runs
N slots with continuous batching, reuses cached prompt prefixes per slot, enforces grammars and JSON schemas, and
drafts tokens by n-gram lookup. The course builds it in the same compile as llama-cpp-python
(labkit/llama_server_build.py); `llama_server_path()` finds it, and when it is missing, `how_to_get_llama_server()`
says what to run. `LlamaCppServer` runs it on 127.0.0.1 and never lets it outlive you; `start_server` falls back to
llama-cpp-python's server when there is no llama-server.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import LabkitError, require_count, unknown
from .hardware import cpu_threads
from .llama_server_build import cmake_args, tested_version
from .models import BUNDLED, bundled_gguf_path, validate_gguf
from .runtimes import LlamaServer, ServerProcess, _http_get

MAX_SLOTS = 256
SERVER_ENV = "LABKIT_LLAMA_SERVER"  # an explicit path to a llama-server binary wins over every other place
_EXE = "llama-server.exe" if os.name == "nt" else "llama-server"


def llama_cpp_dirs() -> list[Path]:
    """Where an installed llama-cpp-python wheel keeps its files (without importing it: no library load)."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return []
    package = Path(next(iter(spec.submodule_search_locations)))
    return [package.parent / "bin", package / "lib", package / "bin"]


def llama_server_path() -> Path | None:
    """The `llama-server` binary labkit runs, or None when there is none.

    Looked for, in order: $LABKIT_LLAMA_SERVER; next to the installed llama-cpp-python (the course's build puts it
    in `<site-packages>/bin/`); `llama-server` on PATH (a llama.cpp release, `brew install llama.cpp`).
    """
    explicit = os.environ.get(SERVER_ENV)
    if explicit:
        path = Path(explicit).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise LabkitError(f"{SERVER_ENV}={explicit!r} is not an executable file. Accepted: the path of a "
                              "llama-server binary, or unset it to let labkit look next to llama-cpp-python.")
        return path
    for folder in llama_cpp_dirs():
        candidate = folder / _EXE
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("llama-server")
    return Path(found) if found else None


def how_to_get_llama_server() -> str:
    """What to run to get llama-server, for this machine's situation."""
    version = tested_version()
    return (
        "llama.cpp's `llama-server` was not found (looked at $LABKIT_LLAMA_SERVER, next to llama-cpp-python in "
        "<site-packages>/bin/, and on PATH). Get it one of these ways:\n"
        "  • in the course checkout: `make lab` (or `make setup`) builds it in the same compile as llama-cpp-python, "
        "once per machine (the wheel is cached under ~/.cache/labkit/wheels);\n"
        "  • anywhere with pip, Colab included (compiles llama.cpp once, 5-10 minutes):\n"
        f"      python -m labkit.llama_server_build --install\n"
        "    which runs\n"
        f"      CMAKE_ARGS='{cmake_args('')}' pip wheel --no-cache-dir --no-deps llama-cpp-python=={version}\n"
        "    and installs that wheel;\n"
        f"  • a llama.cpp release that ships llama-server (or `brew install llama.cpp`), then "
        f"{SERVER_ENV}=/path/to/llama-server.\n"
        "Then restart the kernel."
    )


_told_how = False


def batching_or_skip(server: Any, purpose: str) -> bool:
    """True when `server` is llama.cpp's llama-server; else print why the cell is skipped (for notebook cells)."""
    if isinstance(server, LlamaCppServer):
        return True
    print(f"⏭  Skipped: {purpose} needs llama.cpp's llama-server, and this notebook runs llama-cpp-python's server "
          "(see section 2 for how to get llama-server).")
    return False


def llama_server_or_skip(purpose: str) -> Path | None:
    """The binary, or None after printing why the cell is skipped and (the first time) how to get it."""
    global _told_how
    path = llama_server_path()
    if path is None:
        how = "" if _told_how else "\n" + how_to_get_llama_server()
        print(f"⏭  Skipped: {purpose} needs llama.cpp's llama-server{' (how to get it: see above)' if _told_how else '.'}"
              f"{how}")
        _told_how = True
    return path


_HELP_CACHE: dict[Path, str] = {}


def llama_server_help(binary: str | Path) -> str:
    """`llama-server --help` (cached per binary): which flags this build knows."""
    binary = Path(binary)
    if binary not in _HELP_CACHE:
        try:
            done = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=30,
                                  env=_server_env(binary))
        except (OSError, subprocess.TimeoutExpired) as err:
            raise LabkitError(f"{binary} did not run ({err}). Accepted: a working llama-server binary.\n"
                              f"{how_to_get_llama_server()}") from err
        _HELP_CACHE[binary] = done.stdout + done.stderr
    return _HELP_CACHE[binary]


def _server_env(binary: Path) -> dict[str, str]:
    """The environment for llama-server: its libraries found next to it even without an RPATH."""
    env = dict(os.environ)
    libs = [str(p) for p in (binary.parent.parent / "lib", *llama_cpp_dirs()[1:2]) if p.is_dir()]
    if libs:
        var = "DYLD_LIBRARY_PATH" if sys.platform == "darwin" else "LD_LIBRARY_PATH"
        env[var] = os.pathsep.join([*libs, *([env[var]] if env.get(var) else [])])
    env.pop("LLAMA_API_KEY", None)
    return env


# Prompt-lookup ("n-gram") speculation: no draft model. The server looks up the last few tokens in the text so far
# (prompt and answer) and, where they occurred before, drafts the tokens that followed; one batched pass of the
# model then checks them all and keeps the ones it would have produced itself.
NGRAM_LOOKUP = 3  # tokens looked up in the text so far ...
NGRAM_DRAFT_MAX = 8  # ... and at most this many drafted from what followed them
SPECULATION = {
    "ngram": ["--spec-type", "ngram-simple", "--spec-ngram-simple-size-n", str(NGRAM_LOOKUP),
              "--spec-ngram-simple-size-m", str(NGRAM_DRAFT_MAX)],
}

# Runs in a small Python parent of llama-server: when the notebook's kernel dies without cleaning up, the server
# goes too (a native binary cannot host the watchdog thread runtimes.LlamaServer uses).
_WATCHDOG = r"""
import os, signal, subprocess, sys, time
parent = int(sys.argv[1])
child = subprocess.Popen(sys.argv[2:])
def stop(*_):
    child.terminate()
    try:
        child.wait(5)
    except subprocess.TimeoutExpired:
        child.kill()
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
while child.poll() is None:
    if os.getppid() != parent:
        stop()
    time.sleep(0.5)
sys.exit(child.returncode)
"""


class LlamaCppServer(ServerProcess):
    """llama.cpp's `llama-server` on loopback: `slots` requests decode together (continuous batching).

        with LlamaCppServer(slots=8) as server:          # the bundled model on a free port
            result = run_load(server.base_url, server.model, prompts, users=8)

    Each slot holds one request's KV cache, `ctx_per_slot` tokens long. `speculation="ngram"` turns on prompt-lookup
    speculative decoding. `swa_full` keeps sliding-window layers' whole cache, so prefixes can be reused. Like
    `runtimes.LlamaServer` (their shared process handling is `runtimes.ServerProcess`), the process never outlives
    you: the `with` block, `stop()`, a finalizer at exit, its own process group, and a watchdog parent that exits with
    your kernel.
    """

    name = "llama-server"

    def __init__(self, model_path: str | Path | None = None, slots: int = 4, ctx_per_slot: int = 1024,
                 threads: int | None = None, speculation: str | None = None, n_gpu_layers: int | None = None,
                 api_key: str | None = None, port: int | None = None, host: str = "127.0.0.1",
                 alias: str | None = None, startup_timeout_s: float = 120.0, binary: str | Path | None = None,
                 swa_full: bool = True, extra_args: Iterable[str] = ()):
        self._init_process(host, port, startup_timeout_s)
        require_count("slots", slots, 1, MAX_SLOTS)
        require_count("ctx_per_slot", ctx_per_slot, 64, 1 << 20)
        if speculation is not None and speculation not in SPECULATION:
            raise unknown("speculation", speculation, [None, *SPECULATION])
        self.model_path, self.binary = model_path, binary
        self.slots, self.ctx_per_slot, self.speculation = slots, ctx_per_slot, speculation
        self.threads = threads or cpu_threads()
        self.n_gpu_layers, self.api_key = n_gpu_layers, api_key
        self.model = alias
        self.swa_full = swa_full
        self.extra_args = list(extra_args)

    @property
    def root_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible API (`/v1/completions`, `/v1/chat/completions`, `/v1/models`)."""
        return f"{self.root_url}/v1"

    def command(self, binary: Path, model_path: Path) -> list[str]:
        cmd = [str(binary), "--model", str(model_path), "--host", self.host, "--port", str(self.port),
               "--parallel", str(self.slots), "--ctx-size", str(self.slots * self.ctx_per_slot),
               "--threads", str(self.threads), "--threads-batch", str(self.threads), "--alias", self.model,
               "--cont-batching", "--metrics", "--no-webui"]
        if self.n_gpu_layers is not None:
            cmd += ["--n-gpu-layers", str(self.n_gpu_layers)]
        if self.speculation:
            cmd += SPECULATION[self.speculation]
        if self.swa_full:
            # Sliding-window layers (Gemma 2/3) keep only their window by default, and llama.cpp cannot roll such a
            # cache back to a shared prefix: with the full cache, prefix caching works for them too (more memory).
            cmd.append("--swa-full")
        return cmd + self.extra_args

    def start(self) -> LlamaCppServer:
        """Start the server and wait until `/health` says the model is loaded; LabkitError (with its log) if not."""
        if self.running:
            return self
        binary = Path(self.binary) if self.binary else llama_server_path()
        if binary is None:
            raise LabkitError(how_to_get_llama_server())
        path = bundled_gguf_path() if self.model_path is None else validate_gguf(self.model_path)
        self.model = self.model or (BUNDLED if self.model_path is None else path.stem)
        self._choose_port()
        cmd = self.command(binary, path)
        known = llama_server_help(binary)
        missing = [flag for flag in cmd[1:] if flag.startswith("--") and flag not in known]
        if missing:
            raise LabkitError(f"{binary} does not know {', '.join(missing)}: it is not the llama.cpp version the "
                              f"course is tested with.\n{how_to_get_llama_server()}")
        env = _server_env(binary)
        if self.api_key:
            env["LLAMA_API_KEY"] = self.api_key  # from the environment, so the key is not visible in `ps`
        self._launch([sys.executable, "-c", _WATCHDOG, str(os.getpid()), *cmd], env, f"{self.root_url}/health", {})
        return self

    def get(self, endpoint: str) -> Any:
        """GET one of the server's own endpoints (`/props`, `/slots`, `/health`) as parsed JSON."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        status, body = _http_get(f"{self.root_url}/{endpoint.lstrip('/')}", headers, timeout_s=5.0)
        if status != 200:
            raise LabkitError(f"GET {self.root_url}/{endpoint.lstrip('/')} answered {status or body}")
        return json.loads(body)

    def __repr__(self) -> str:
        state = f"running, pid {self.pid}" if self.running else "stopped"
        spec = f", speculation {self.speculation}" if self.speculation else ""
        return (f"LlamaCppServer({self.model or 'bundled model'} at {self.base_url}, {self.slots} slots of "
                f"{self.ctx_per_slot} tokens, {self.threads} threads{spec}, {state})")


def start_server(slots: int = 4, fallback: bool = True, **kwargs: Any):
    """llama-server with `slots` slots. Without the binary, or when it does not start (a different llama.cpp
    version), and with `fallback`: llama-cpp-python's own server, which answers one request at a time (a real
    server still: the load generator measures it the same way)."""
    global _told_how
    if llama_server_path() is not None:
        try:
            return LlamaCppServer(slots=slots, **kwargs).start()
        except LabkitError as err:
            if not fallback:
                raise
            print(f"llama-server did not start: {err}\n")
    elif not fallback:
        raise LabkitError(how_to_get_llama_server())
    else:
        print("llama-server not found. " + how_to_get_llama_server() + "\n")
    _told_how = True
    print("This notebook goes on with llama-cpp-python's server, which serves ONE request at a time (the others "
          "wait in line).")
    # by default it abandons the answer it is streaming when the next request arrives: make the others wait instead
    return LlamaServer(n_ctx=kwargs.get("ctx_per_slot", 1024), n_threads=kwargs.get("threads"), chat_format=None,
                       extra_args=["--interrupt_requests", "false"]).start()
