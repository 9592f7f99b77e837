"""Serving: one model behind an endpoint, many users at once, measured.

A chat user feels two numbers: how long until the first word appears (TTFT, time to first token) and how fast
the rest follows (ITL, inter-token latency: the average gap between two tokens of one answer). A server with
many users adds two more: how many tokens per second it makes in all (throughput), and how many requests per
second it finishes *within a latency target* (goodput). Averages hide the users who wait: serving is judged on
percentiles (P50 the median, P99 the slowest 1 in 100).

This module, top to bottom:

1. **llama.cpp's `llama-server`**: finding the binary (built with llama-cpp-python, labkit/llama_server_build.py)
   and running it on loopback with N parallel slots (continuous batching), optionally with n-gram speculation.
2. **Prompts**: a length mix, a shared system prompt, a copy-heavy and a free-form task, a JSON task.
3. **The load generator**: an asyncio client that streams from any OpenAI-compatible server and drives a fixed
   number of users (closed loop) or an arrival rate (open loop), bounded in users, requests and time. A run
   that reaches its time limit stops by itself and reports what it measured.
4. **Metrics**: per request TTFT, ITL, end-to-end latency, tokens/s; per run percentiles, throughput, goodput.
5. **Sweeps and estimates**: throughput against users beside the bandwidth/compute roofline, the knee.
6. **Structured output**: JSON-schema checks of what came back.
7. **The capacity planner**: model, card, context and latency targets in, concurrent users out.
8. **Committed GPU results** (benchmarks/serving_gpu.py, shipped as datasets/results/serving_gpu.json).

Loopback only: the client refuses other hosts (`runtimes.require_loopback`), the server binds 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .check import exercise
from .errors import LabkitError, require_positive
from .runtimes import (
    LOOPBACK_HOSTS,
    _http_get,
    _stop_process,
    _tail,
    free_port,
    port_in_use,
    require_loopback,
)

# ============================================================================ 1. llama.cpp's llama-server

SERVER_ENV = "LABKIT_LLAMA_SERVER"  # an explicit path to a llama-server binary wins over every other place
_EXE = "llama-server.exe" if os.name == "nt" else "llama-server"


def _llama_cpp_dirs() -> list[Path]:
    """Where an installed llama-cpp-python wheel keeps its files (without importing it: no library load)."""
    import importlib.util

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
    for folder in _llama_cpp_dirs():
        candidate = folder / _EXE
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("llama-server")
    return Path(found) if found else None


def how_to_get_llama_server() -> str:
    """What to run to get llama-server, for this machine's situation."""
    from .llama_server_build import cmake_args, tested_version

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
    libs = [str(p) for p in (binary.parent.parent / "lib", *_llama_cpp_dirs()[1:2]) if p.is_dir()]
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


class LlamaCppServer:
    """llama.cpp's `llama-server` on loopback: `slots` requests decode together (continuous batching).

        with LlamaCppServer(slots=8) as server:          # the bundled model on a free port
            result = run_load(server.base_url, server.model, prompts, users=8)

    Each slot holds one request's KV cache, `ctx_per_slot` tokens long. `speculation="ngram"` turns on prompt-lookup
    speculative decoding. `swa_full` keeps sliding-window layers' whole cache, so prefixes can be reused. Like `runtimes.LlamaServer`, the process never outlives you: the `with` block, `stop()`,
    a finalizer at exit, its own process group, and a watchdog parent that exits with your kernel.
    """

    def __init__(self, model_path: str | Path | None = None, slots: int = 4, ctx_per_slot: int = 1024,
                 threads: int | None = None, speculation: str | None = None, n_gpu_layers: int | None = None,
                 api_key: str | None = None, port: int | None = None, host: str = "127.0.0.1",
                 alias: str | None = None, startup_timeout_s: float = 120.0, binary: str | Path | None = None,
                 swa_full: bool = True, extra_args: Iterable[str] = ()):
        from .hardware import cpu_threads

        if host not in LOOPBACK_HOSTS:
            raise LabkitError(f"host {host!r} would expose the server to the network. Accepted: "
                              f"{', '.join(LOOPBACK_HOSTS)}.")
        if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536):
            raise LabkitError(f"port must be an integer from 1 to 65535 (or None for a free one), got {port!r}")
        _require_int("slots", slots, 1, MAX_USERS)
        _require_int("ctx_per_slot", ctx_per_slot, 64, 1 << 20)
        if speculation is not None and speculation not in SPECULATION:
            from .errors import unknown

            raise unknown("speculation", speculation, [None, *SPECULATION])
        require_positive("startup_timeout_s", startup_timeout_s)
        self.model_path, self.binary = model_path, binary
        self.slots, self.ctx_per_slot, self.speculation = slots, ctx_per_slot, speculation
        self.threads = threads or cpu_threads()
        self.n_gpu_layers, self.api_key = n_gpu_layers, api_key
        self.host, self.requested_port, self.port = host, port, port
        self.model = alias
        self.startup_timeout_s = startup_timeout_s
        self.swa_full = swa_full
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self.startup_s = 0.0
        self._finalizer: weakref.finalize | None = None

    @property
    def root_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible API (`/v1/completions`, `/v1/chat/completions`, `/v1/models`)."""
        return f"{self.root_url}/v1"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

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
        from .models import BUNDLED, bundled_gguf_path, validate_gguf

        binary = Path(self.binary) if self.binary else llama_server_path()
        if binary is None:
            raise LabkitError(how_to_get_llama_server())
        path = bundled_gguf_path() if self.model_path is None else validate_gguf(self.model_path)
        self.model = self.model or (BUNDLED if self.model_path is None else path.stem)
        if self.requested_port is None:
            self.port = free_port(self.host)
        elif port_in_use(self.requested_port, self.host):
            raise LabkitError(f"port {self.requested_port} on {self.host} is already in use (another program, or a "
                              "server you started earlier). Pick another port, or pass port=None for a free one.")
        cmd = self.command(binary, path)
        known = llama_server_help(binary)
        missing = [flag for flag in cmd[1:] if flag.startswith("--") and flag not in known]
        if missing:
            raise LabkitError(f"{binary} does not know {', '.join(missing)}: it is not the llama.cpp version the "
                              f"course is tested with.\n{how_to_get_llama_server()}")
        env = _server_env(binary)
        if self.api_key:
            env["LLAMA_API_KEY"] = self.api_key  # from the environment, so the key is not visible in `ps`
        fd, log = tempfile.mkstemp(prefix="labkit-llama-server-", suffix=".log")
        self.log_path = Path(log)
        start = time.perf_counter()
        with os.fdopen(fd, "wb") as log_file:
            self.process = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), *cmd],
                                            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                            env=env, start_new_session=True)
        self._finalizer = weakref.finalize(self, _stop_process, self.process)
        try:
            self._wait_until_ready()
        except BaseException:  # including KeyboardInterrupt: never leave a half-started server behind
            self.stop()
            raise
        self.startup_s = time.perf_counter() - start
        return self

    def _wait_until_ready(self) -> None:
        assert self.process is not None
        deadline = time.perf_counter() + self.startup_timeout_s
        while True:
            code = self.process.poll()
            if code is not None:
                raise LabkitError(f"llama-server exited during start-up (exit code {code}). "
                                  f"Last lines of its log ({self.log_path}):\n{_tail(self.log_path)}")
            status, _ = _http_get(f"{self.root_url}/health", {}, timeout_s=1.0)
            if status == 200:
                return
            if time.perf_counter() > deadline:
                raise LabkitError(f"llama-server did not become ready within {self.startup_timeout_s:.0f} s. "
                                  f"Last lines of its log ({self.log_path}):\n{_tail(self.log_path)}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop the server and everything it started. Safe to call more than once."""
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        elif self.process is not None:
            _stop_process(self.process)

    def log(self, lines: int = 15) -> str:
        return _tail(self.log_path, lines) if self.log_path else "(not started)"

    def get(self, endpoint: str) -> Any:
        """GET one of the server's own endpoints (`/props`, `/slots`, `/health`) as parsed JSON."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        status, body = _http_get(f"{self.root_url}/{endpoint.lstrip('/')}", headers, timeout_s=5.0)
        if status != 200:
            raise LabkitError(f"GET {self.root_url}/{endpoint.lstrip('/')} answered {status or body}")
        return json.loads(body)

    def __enter__(self) -> LlamaCppServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

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
    from .runtimes import LlamaServer

    print("This notebook goes on with llama-cpp-python's server, which serves ONE request at a time (the others "
          "wait in line).")
    # by default it abandons the answer it is streaming when the next request arrives: make the others wait instead
    return LlamaServer(n_ctx=kwargs.get("ctx_per_slot", 1024), n_threads=kwargs.get("threads"), chat_format=None,
                       extra_args=["--interrupt_requests", "false"]).start()


@dataclass(frozen=True)
class NotebookSizes:
    """How much load notebook 09 generates in a profile (CI runs the cpu profile on one core per notebook)."""

    users: tuple[int, ...]  # the concurrency sweep
    requests_per_user: int
    max_tokens: int  # new tokens per request in the sweep
    long_words: int | None  # the long prompts' length in words (None: whole paragraphs)
    ctx_per_slot: int
    time_limit_s: float  # per run: a slow machine stops there and reports what it measured
    prefix_requests: int
    spec_requests: int
    spec_tokens: int
    json_requests: int


NOTEBOOK_SIZES = {
    "cpu": NotebookSizes(users=(1, 2, 4, 8, 16), requests_per_user=2, max_tokens=16, long_words=60, ctx_per_slot=1024,
                         time_limit_s=40, prefix_requests=3, spec_requests=2, spec_tokens=32, json_requests=4),
    "gpu": NotebookSizes(users=(1, 2, 4, 8, 16, 32, 64), requests_per_user=2, max_tokens=64, long_words=None,
                         ctx_per_slot=1024, time_limit_s=60, prefix_requests=8, spec_requests=4, spec_tokens=128, json_requests=16),
}


def notebook_sizes(prof: Any) -> NotebookSizes:
    """The sizes for a `labkit.profile()` (or a profile name)."""
    name = prof if isinstance(prof, str) else prof.name
    if name not in NOTEBOOK_SIZES:
        from .errors import unknown

        raise unknown("profile", name, NOTEBOOK_SIZES)
    return NOTEBOOK_SIZES[name]


# ============================================================================ 2. prompts


@dataclass(frozen=True)
class Prompt:
    """One request's text, how many tokens it may generate, and a label for grouping ('short', 'long', ...)."""

    text: str
    max_tokens: int
    kind: str = "prompt"
    expected: str | None = None  # the right answer, where the task has one (JSON tasks)


QUESTIONS = [
    "What is the boiling point of water at sea level?", "Why is the sky blue?", "What does a compiler do?",
    "How many legs does a spider have?", "What is the capital of Japan?", "Why do leaves change colour in autumn?",
    "What is a prime number?", "How does a bicycle stay upright?", "What is the speed of light?",
    "Who wrote the play Hamlet?", "What is photosynthesis?", "How far is the Moon from the Earth?",
    "What is the largest ocean on Earth?", "Why does bread rise?", "What is an atom made of?",
    "How do bees make honey?",
]


def _passages() -> list[str]:
    """Paragraphs of the course's own prose (datasets/texts/evaluation.txt, CC0)."""
    from .paths import datasets_dir

    text = (datasets_dir() / "texts" / "evaluation.txt").read_text()
    return [p.strip() for p in text.split("\n\n") if len(p.split()) > 40]


def prompt_mix(n: int, max_tokens: int, long_share: float = 0.5, long_words: int | None = None,
               seed: int = 0) -> list[Prompt]:
    """`n` prompts, a share of them long (a paragraph to summarise, ~100-200 tokens, or its first `long_words`
    words) and the rest short (a one-line question), spread evenly. Every prompt starts differently, so no request
    reuses another's prefix."""
    _require_int("n", n, 1, MAX_REQUESTS)
    _require_int("max_tokens", max_tokens, 1, MAX_TOKENS)
    if not 0 <= long_share <= 1:
        raise LabkitError(f"long_share must be a fraction from 0 to 1, got {long_share!r}")
    passages = _passages()
    # spread evenly, so any run of consecutive prompts has about the same share of long ones (a sweep's points compare)
    kinds = ["long" if math.floor((i + 1) * long_share + 1e-9) > math.floor(i * long_share + 1e-9) else "short"
             for i in range(n)]
    start = random.Random(seed).randrange(len(passages))
    out = []
    for i, kind in enumerate(kinds):
        if kind == "long":
            passage = passages[(start + i) % len(passages)]
            passage = _opening(passage, long_words) if long_words else passage
            text = f"Document {i + 1}.\n{passage}\n\nIn one sentence, this document is about"
        else:
            text = f"Question {i + 1}: {QUESTIONS[i % len(QUESTIONS)]}\nAnswer:"
        out.append(Prompt(text, max_tokens, kind))
    return out


def shared_prefix_prompts(n: int, max_tokens: int, paragraphs: int = 2) -> list[Prompt]:
    """`n` questions after the SAME long system prompt (a document and instructions): what prefix caching is for."""
    _require_int("n", n, 1, MAX_REQUESTS)
    document = "\n\n".join(_passages()[:paragraphs])
    system = ("You are the archive assistant of a maritime museum. Answer visitors' questions about the document "
              f"below in one short sentence.\n\nDOCUMENT\n{document}\n\n")
    return [Prompt(f"{system}Visitor question {i + 1}: {QUESTIONS[i % len(QUESTIONS)]}\nAssistant:", max_tokens,
                   "shared prefix") for i in range(n)]


def _opening(passage: str, words: int) -> str:
    """The first sentences of a passage, about `words` words."""
    out: list[str] = []
    for sentence in passage.replace("\n", " ").split(". "):
        out.append(sentence.rstrip("."))
        if sum(len(s.split()) for s in out) >= words:
            break
    return ". ".join(out) + "."


def copy_prompts(n: int, max_tokens: int, words: int = 50) -> list[Prompt]:
    """A task whose answer repeats its prompt (a text, then the same text in capitals, then the text again): the
    answer is the capitals once more, and n-gram drafts find every next token in the prompt."""
    _require_int("n", n, 1, MAX_REQUESTS)
    passages = _passages()
    out = []
    for i in range(n):
        text = _opening(passages[i % len(passages)], words)
        shouty = text.upper()
        out.append(Prompt(f"Write each text in capitals.\n\nTEXT: {text}\n\nTEXT IN CAPITALS: {shouty}\n\n"
                          f"TEXT: {text}\n\nTEXT IN CAPITALS:", max_tokens, "copy"))
    return out


def freeform_prompts(n: int, max_tokens: int) -> list[Prompt]:
    """Open-ended writing: little of the answer is in the prompt, so n-gram drafts rarely match."""
    _require_int("n", n, 1, MAX_REQUESTS)
    topics = ["a lighthouse keeper who finds a message in a bottle", "the first day of a new school",
              "a storm over a small fishing village", "a robot that learns to bake bread",
              "two friends lost in a forest", "a train journey across the mountains"]
    return [Prompt(f"Story {i + 1}. Here is a short story about {topics[i % len(topics)]}.\n\n", max_tokens,
                   "free-form") for i in range(n)]


# ============================================================================ 3. the load generator

MAX_USERS = 256  # concurrent users (or requests in flight) one run may drive
MAX_REQUESTS = 5000
MAX_TOKENS = 8192
MAX_TIME_LIMIT_S = 3600.0
MAX_PLANNED_USERS = 100_000  # the capacity planner's (and estimate's) upper bound


@dataclass
class RequestRecord:
    """What happened to one request. Times are seconds; `token_times` count from when the request was sent."""

    index: int
    user: int | None  # closed loop: which user sent it; open loop: None
    kind: str
    sent_s: float  # after the run started
    token_times: list[float] = field(default_factory=list)
    e2e_s: float = float("nan")  # until the last byte of the answer
    output_tokens: int = 0  # as the server counted them (usage), else the chunks that carried text
    prompt_tokens: int | None = None
    cached_tokens: int | None = None  # llama.cpp: prompt tokens reused from the slot's cache (timings.cache_n)
    draft_tokens: int | None = None  # llama.cpp with speculation: tokens drafted ...
    draft_accepted: int | None = None  # ... and kept
    text: str = ""
    error: str | None = None
    cut_off: bool = False  # still running when the run's time limit came

    @property
    def ok(self) -> bool:
        return self.error is None and not self.cut_off and self.output_tokens > 0

    @property
    def ttft_s(self) -> float:
        """Time to first token: queueing + prefill + one decode step, as the user sees it."""
        return self.token_times[0] if self.token_times else float("nan")

    @property
    def itl_s(self) -> float:
        """Inter-token latency: the average gap between two tokens of this answer (some tools call it TPOT)."""
        if self.output_tokens < 2 or not self.token_times:
            return float("nan")
        return (self.token_times[-1] - self.token_times[0]) / (self.output_tokens - 1)

    @property
    def decode_tokens_per_s(self) -> float:
        """What one user sees once the answer flows: 1 / ITL."""
        itl = self.itl_s
        return 1 / itl if itl and itl > 0 else float("nan")

    def meets(self, slo: Slo) -> bool:
        return self.ok and self.ttft_s <= slo.ttft_s and (self.output_tokens < 2 or self.itl_s <= slo.itl_s)


@dataclass
class LoadResult:
    """One load-generator run: every request's record, the run's wall time, and why it stopped early (if it did)."""

    label: str
    base_url: str
    model: str
    users: int | None
    rate: float | None
    records: list[RequestRecord]
    wall_s: float
    time_limit_s: float
    stopped: str | None = None  # e.g. "time limit of 30 s reached: 3 requests cut off, 5 not sent"
    not_started: int = 0
    settings: dict = field(default_factory=dict)

    @property
    def completed(self) -> list[RequestRecord]:
        return [r for r in self.records if r.ok]

    @property
    def failed(self) -> list[RequestRecord]:
        return [r for r in self.records if r.error is not None]

    @property
    def output_tokens(self) -> int:
        """Tokens generated during the run, including those of requests cut off at the time limit."""
        return sum(r.output_tokens if r.ok else len(r.token_times) for r in self.records)

    @property
    def tokens_per_s(self) -> float:
        """Throughput: every user's generated tokens per second of the run."""
        return self.output_tokens / self.wall_s if self.wall_s > 0 else float("nan")

    @property
    def requests_per_s(self) -> float:
        return len(self.completed) / self.wall_s if self.wall_s > 0 else float("nan")

    @property
    def mean_prompt_tokens(self) -> float:
        """The average prompt length the server counted (nan when it reported none)."""
        counted = [r.prompt_tokens for r in self.completed if r.prompt_tokens]
        return statistics.fmean(counted) if counted else float("nan")

    def values(self, metric: str) -> list[float]:
        """A metric of every completed request: 'ttft_s', 'itl_s', 'e2e_s' or 'decode_tokens_per_s'."""
        if metric not in METRICS:
            from .errors import unknown

            raise unknown("metric", metric, METRICS)
        return [v for v in (getattr(r, metric) for r in self.completed) if not math.isnan(v)]

    def percentile(self, metric: str, p: float) -> float:
        return percentile(self.values(metric), p)

    def goodput(self, slo: Slo) -> float:
        return goodput(self.records, self.wall_s, slo)

    def summary(self, slo: Slo | None = None) -> dict:
        """One row: counts, TTFT/ITL/E2E percentiles, throughput, goodput under `slo`."""
        slo = slo or Slo()
        row = {"label": self.label, "users": self.users, "rate": self.rate, "completed": len(self.completed),
               "failed": len(self.failed), "cut_off": sum(r.cut_off for r in self.records),
               "not_started": self.not_started, "wall_s": self.wall_s, "output_tokens": self.output_tokens,
               "tokens_per_s": self.tokens_per_s, "requests_per_s": self.requests_per_s,
               "prompt_tokens_mean": self.mean_prompt_tokens}
        for metric in ("ttft_s", "itl_s", "e2e_s"):
            for p in (50, 95, 99):
                row[f"{metric[:-2]}_p{p}_s"] = self.percentile(metric, p)
        row["decode_tokens_per_s_p50"] = self.percentile("decode_tokens_per_s", 50)
        row["goodput_rps"] = self.goodput(slo)
        row["slo_share"] = (sum(r.meets(slo) for r in self.records) / len(self.records)) if self.records else 0.0
        row["slo"] = str(slo)
        return row

    def __str__(self) -> str:
        s = self.summary()
        stop = f" | STOPPED: {self.stopped}" if self.stopped else ""
        fail = f" | {s['failed']} failed ({self.failed[0].error})" if self.failed else ""
        return (f"{self.label}: {s['completed']} requests in {self.wall_s:.1f} s | {self.tokens_per_s:.1f} tok/s in all"
                f" | TTFT P50 {_ms(s['ttft_p50_s'])} P99 {_ms(s['ttft_p99_s'])} | ITL P50 {_ms(s['itl_p50_s'])} "
                f"P99 {_ms(s['itl_p99_s'])}{fail}{stop}")


METRICS = ("ttft_s", "itl_s", "e2e_s", "decode_tokens_per_s")


def _ms(seconds: float) -> str:
    return "n/a" if seconds is None or math.isnan(seconds) else f"{seconds * 1000:,.0f} ms"


def _require_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise LabkitError(f"{name} must be a whole number from {low} to {high:,}, got {value!r}")


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def check_endpoint(base_url: str, model: str | None = None, api_key: str | None = None, chat: bool = False,
                   timeout_s: float = 30.0) -> str:
    """Make sure an OpenAI-compatible server answers at `base_url` and streams; return the model to ask for.

    Raises LabkitError naming the URL and what was expected: nothing listening (connection refused), an API key
    wanted, an answer that is not an OpenAI model list, or a server that does not stream.
    """
    import httpx

    base_url = require_loopback(base_url)
    models_url = f"{base_url}/models"
    try:
        reply = httpx.get(models_url, headers=_headers(api_key), timeout=timeout_s)
    except httpx.ConnectError as err:
        raise LabkitError(f"nothing answers at {models_url} (connection refused): expected an OpenAI-compatible "
                          "server there. Start one first (serving.LlamaCppServer(...).start()), or check the "
                          "port in the URL.") from err
    except httpx.TimeoutException as err:
        raise LabkitError(f"{models_url} did not answer within {timeout_s:g} s: expected an OpenAI-compatible "
                          "server that lists its models.") from err
    if reply.status_code == 401:
        raise LabkitError(f"{models_url} wants an API key (HTTP 401): pass api_key=...")
    try:
        listed = [m["id"] for m in reply.json()["data"]] if reply.status_code == 200 else None
    except (ValueError, KeyError, TypeError):
        listed = None
    if listed is None:
        raise LabkitError(f"{models_url} answered HTTP {reply.status_code} with {reply.text[:120]!r}: expected an "
                          "OpenAI-compatible server (GET /models returns {'data': [{'id': ...}, ...]}).")
    model = model or (listed[0] if listed else "model")
    body = _body(Prompt("Hello", 2), model, chat, {}, ignore_eos=False)
    try:
        with httpx.stream("POST", _endpoint(base_url, chat), json=body, headers=_headers(api_key),
                          timeout=timeout_s) as resp:
            kind = resp.headers.get("content-type", "")
            resp.read()
    except httpx.HTTPError as err:
        raise LabkitError(f"a streaming request to {_endpoint(base_url, chat)} failed ({err}): expected an "
                          "OpenAI-compatible server that streams.") from err
    if resp.status_code != 200:
        raise LabkitError(f"{_endpoint(base_url, chat)} answered HTTP {resp.status_code} with "
                          f"{resp.text[:200]!r}: expected a streamed completion of model {model!r}.")
    if "text/event-stream" not in kind:
        raise LabkitError(f"{_endpoint(base_url, chat)} answered a streaming request without streaming "
                          f"(content-type {kind or 'none'}): the load generator needs a server that streams each "
                          "token as a server-sent event (stream=true), or it cannot measure TTFT and ITL.")
    return model


def _count_prompt_tokens(base_url: str, model: str, records: list[RequestRecord], prompts: list[Prompt],
                         api_key: str | None, chat: bool) -> None:
    """For a server whose streams carry no token counts (llama-cpp-python's): ask once per distinct prompt, after
    the timed run, with a one-token request that is not streamed (its `usage` says)."""
    import httpx

    counted: dict[str, int | None] = {}
    for record in records:
        prompt = prompts[record.index % len(prompts)]
        if prompt.text not in counted:
            body = {**_body(Prompt(prompt.text, 1), model, chat, {}, ignore_eos=False), "stream": False}
            body.pop("stream_options")
            try:
                reply = httpx.post(_endpoint(base_url, chat), json=body, headers=_headers(api_key), timeout=60.0)
                counted[prompt.text] = int(reply.json()["usage"]["prompt_tokens"])
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                counted[prompt.text] = None
        record.prompt_tokens = counted[prompt.text]


def _endpoint(base_url: str, chat: bool) -> str:
    return f"{base_url}/chat/completions" if chat else f"{base_url}/completions"


def _body(prompt: Prompt, model: str, chat: bool, extra: dict, ignore_eos: bool) -> dict:
    body: dict[str, Any] = {"model": model, "max_tokens": prompt.max_tokens, "temperature": 0.0, "stream": True,
                            "stream_options": {"include_usage": True}}
    if chat:
        body["messages"] = [{"role": "user", "content": prompt.text}]
    else:
        body["prompt"] = prompt.text
    if ignore_eos:
        body["ignore_eos"] = True  # llama.cpp and vLLM: generate exactly max_tokens (comparable runs)
    body.update(extra)
    return body


class _Run:
    """One load-generator run on its own event loop (in a thread, so it works inside Jupyter's running loop)."""

    def __init__(self, base_url: str, model: str, prompts: list[Prompt], users: int | None, rate: float | None,
                 n_requests: int, time_limit_s: float, request_timeout_s: float, api_key: str | None, chat: bool,
                 extra_body: dict, ignore_eos: bool, seed: int):
        self.url = _endpoint(base_url, chat)
        self.model, self.prompts, self.users, self.rate = model, prompts, users, rate
        self.n_requests, self.time_limit_s, self.request_timeout_s = n_requests, time_limit_s, request_timeout_s
        self.headers, self.chat, self.extra, self.ignore_eos, self.seed = _headers(api_key), chat, extra_body, \
            ignore_eos, seed
        self.records: list[RequestRecord] = []
        self.finished = 0
        self.next_index = 0
        self.stopped: str | None = None
        self.error: BaseException | None = None
        self.wall_s = 0.0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task | None = None

    def run(self) -> None:
        try:
            asyncio.run(self.main())
        except BaseException as err:  # handed to the caller's thread
            self.error = err

    def interrupt(self) -> None:
        if self.loop is not None and self.task is not None:
            self.loop.call_soon_threadsafe(self.task.cancel)

    async def main(self) -> None:
        import httpx

        self.loop, self.task = asyncio.get_running_loop(), asyncio.current_task()
        in_flight = self.users or MAX_USERS
        limits = httpx.Limits(max_connections=in_flight + 4, max_keepalive_connections=in_flight + 4)
        timeout = httpx.Timeout(self.request_timeout_s, connect=10.0)
        async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
            self.t0 = time.perf_counter()
            try:
                await asyncio.wait_for(self.drive(client), timeout=self.time_limit_s)
            except TimeoutError:
                self.stopped = f"time limit of {self.time_limit_s:g} s reached"
            except asyncio.CancelledError:
                self.stopped = "interrupted"
            ends = [r.sent_s + r.e2e_s for r in self.records if not math.isnan(r.e2e_s)]
            elapsed = time.perf_counter() - self.t0
            self.wall_s = elapsed if self.stopped or not ends else max(ends)

    async def drive(self, client) -> None:
        if self.rate is None:
            await asyncio.gather(*(self.user(client, u) for u in range(self.users)))
            return
        rng, due, tasks = random.Random(self.seed), 0.0, []
        room = asyncio.Semaphore(MAX_USERS)
        try:
            for i in range(self.n_requests):
                due += rng.expovariate(self.rate)  # Poisson arrivals: exponential gaps
                delay = self.t0 + due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await room.acquire()
                task = asyncio.create_task(self.request(client, i, None))
                task.add_done_callback(lambda _t: room.release())
                tasks.append(task)
                self.next_index = i + 1
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def user(self, client, user: int) -> None:
        while self.next_index < self.n_requests:
            index = self.next_index
            self.next_index += 1
            await self.request(client, index, user)

    async def request(self, client, index: int, user: int | None) -> None:
        import httpx

        prompt = self.prompts[index % len(self.prompts)]
        record = RequestRecord(index, user, prompt.kind, time.perf_counter() - self.t0)
        self.records.append(record)
        body = _body(prompt, self.model, self.chat, self.extra, self.ignore_eos)
        start = time.perf_counter()
        pieces: list[str] = []
        try:
            async with client.stream("POST", self.url, json=body, headers=self.headers) as resp:
                if resp.status_code != 200:
                    text = (await resp.aread()).decode("utf-8", errors="replace")
                    record.error = f"HTTP {resp.status_code}: {text[:200]}"
                    return
                if "text/event-stream" not in resp.headers.get("content-type", ""):
                    record.error = f"{self.url} did not stream (content-type {resp.headers.get('content-type')})"
                    return
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    self._chunk(record, json.loads(data), time.perf_counter() - start, pieces)
        except asyncio.CancelledError:
            record.cut_off = True
            raise
        except httpx.ConnectError:
            record.error = f"connection refused at {self.url}: the server is not running"
        except httpx.TimeoutException:
            record.error = f"no answer within {self.request_timeout_s:g} s"
        except (httpx.HTTPError, ValueError) as err:
            record.error = f"{type(err).__name__}: {err}"
        finally:
            record.e2e_s = time.perf_counter() - start
            record.text = "".join(pieces)
            if record.output_tokens == 0:
                record.output_tokens = len(record.token_times)
            self.finished += 1

    def _chunk(self, record: RequestRecord, chunk: dict, now: float, pieces: list[str]) -> None:
        usage, timings = chunk.get("usage"), chunk.get("timings")
        if usage:
            record.output_tokens = int(usage.get("completion_tokens") or 0)
            record.prompt_tokens = usage.get("prompt_tokens")
        if timings:
            record.cached_tokens = timings.get("cache_n")
            record.draft_tokens = timings.get("draft_n")
            record.draft_accepted = timings.get("draft_n_accepted")
            if not record.output_tokens and timings.get("predicted_n"):
                record.output_tokens = int(timings["predicted_n"])
        for choice in chunk.get("choices") or []:
            piece = (choice.get("delta") or {}).get("content") if self.chat else choice.get("text")
            if piece is None:  # a chat stream's opening chunk carries only the role
                continue
            if piece or choice.get("finish_reason") is None:  # one chunk per token; the closing one is empty
                record.token_times.append(now)
                pieces.append(piece)


def run_load(base_url: str, model: str | None, prompts: Sequence[Prompt | str], users: int | None = None,
             rate: float | None = None, requests: int | None = None, time_limit_s: float = 60.0,
             request_timeout_s: float = 60.0, max_tokens: int = 32, api_key: str | None = None,
             chat: bool = False, extra_body: dict | None = None, ignore_eos: bool = True, label: str | None = None,
             seed: int = 0, progress: bool = True) -> LoadResult:
    """Drive an OpenAI-compatible server with `users` concurrent users, or with `rate` requests per second.

    Closed loop (`users`): each user sends a request, reads the whole streamed answer, sends the next; `requests`
    in all (default 2 per user), prompts taken in turn from `prompts`. Open loop (`rate`): requests arrive at
    random (Poisson) times, `rate` per second on average, whether or not earlier ones have finished (at most
    MAX_USERS in flight). The run stops by itself after `time_limit_s`: requests still streaming are recorded as
    cut off with what they had received, the rest as not sent, and `result.stopped` says so.

    Strings in `prompts` become `Prompt(text, max_tokens)`. `extra_body` goes into every request (e.g.
    `{"cache_prompt": False}` or `{"json_schema": ...}` for llama.cpp). With `ignore_eos` every answer is exactly
    `max_tokens` long, so runs compare (servers that do not know the field ignore it).
    """
    from tqdm.auto import tqdm

    if (users is None) == (rate is None):
        raise LabkitError("give either users (a fixed number of concurrent users) or rate (requests per second), "
                          "not both and not neither")
    if users is not None:
        _require_int("users", users, 1, MAX_USERS)
    if rate is not None:
        require_positive("rate", rate)
        if rate > 1000:
            raise LabkitError(f"rate must be at most 1000 requests per second, got {rate!r}")
    _require_int("max_tokens", max_tokens, 1, MAX_TOKENS)
    n_requests = requests if requests is not None else 2 * (users or 1)
    _require_int("requests", n_requests, 1, MAX_REQUESTS)
    for name, value in (("time_limit_s", time_limit_s), ("request_timeout_s", request_timeout_s)):
        require_positive(name, value)
        if value > MAX_TIME_LIMIT_S:
            raise LabkitError(f"{name} must be at most {MAX_TIME_LIMIT_S:g} s, got {value!r}")
    if not prompts:
        raise LabkitError("prompts is empty: give at least one prompt (a string or a serving.Prompt)")
    prompt_list = [p if isinstance(p, Prompt) else Prompt(str(p), max_tokens) for p in prompts]
    base_url = require_loopback(base_url)
    model = check_endpoint(base_url, model, api_key, chat)
    run = _Run(base_url, model, prompt_list, users, rate, n_requests, time_limit_s, request_timeout_s, api_key, chat,
               dict(extra_body or {}), ignore_eos, seed)
    label = label or (f"{users} user{'s' * (users != 1)}" if users else f"{rate:g} req/s")
    thread = threading.Thread(target=run.run, name="labkit-load", daemon=True)
    thread.start()
    with tqdm(total=n_requests, desc=label, disable=not progress, leave=False) as bar:
        try:
            while thread.is_alive():
                thread.join(0.2)
                bar.update(run.finished - bar.n)
        except KeyboardInterrupt:
            run.interrupt()
            thread.join()
            raise
    if run.error is not None:
        raise run.error
    cut = sum(r.cut_off for r in run.records)
    not_started = n_requests - len(run.records)
    stopped = run.stopped
    if stopped:
        stopped += f": {cut} request{'s' * (cut != 1)} cut off, {not_started} not sent"
    records = sorted(run.records, key=lambda r: r.index)
    if records and not any(r.prompt_tokens for r in records):
        _count_prompt_tokens(base_url, model, records, prompt_list, api_key, chat)
    return LoadResult(label, base_url, model, users, rate, records, run.wall_s, time_limit_s, stopped, not_started,
                      {"max_tokens": max_tokens, "requests": n_requests, "chat": chat, "extra_body": extra_body or {},
                       "ignore_eos": ignore_eos})


# ============================================================================ 4. metrics


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) with linear interpolation between the two nearest ranks (numpy's default).

    With fewer than 100 values, P99 lies between the two largest, close to the largest: a P99 from a small
    sample is a rough figure.
    """
    import numpy as np

    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 100:
        raise LabkitError(f"p must be a percentile from 0 to 100, got {p!r}")
    clean = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return float(np.percentile(clean, p)) if clean else float("nan")


@dataclass(frozen=True)
class Slo:
    """A latency target (service-level objective): a request counts as good when both hold."""

    ttft_s: float = 1.0
    itl_s: float = 0.1

    def __post_init__(self) -> None:
        require_positive("ttft_s", self.ttft_s)
        require_positive("itl_s", self.itl_s)

    def __str__(self) -> str:
        return f"TTFT ≤ {self.ttft_s * 1000:,.0f} ms and ITL ≤ {self.itl_s * 1000:,.0f} ms"


def goodput(records: Sequence[RequestRecord], wall_s: float, slo: Slo) -> float:
    """Requests per second that finished AND met the latency target: what users experience as served."""
    require_positive("wall_s", wall_s)
    return sum(r.meets(slo) for r in records) / wall_s


def results_markdown(results: Sequence[LoadResult], slo: Slo | None = None) -> str:
    """A Markdown table of runs (display it with IPython.display.Markdown)."""
    slo = slo or Slo()
    lines = [f"| run | done | tok/s (all users) | TTFT P50 | TTFT P99 | ITL P50 | ITL P99 | E2E P99 | "
             f"goodput (req/s, {slo}) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        s = r.summary(slo)
        done = f"{s['completed']}" + (f" (+{s['failed']} failed)" if s["failed"] else "") + (" ⏱" if r.stopped else "")
        lines.append(f"| {r.label} | {done} | {s['tokens_per_s']:,.1f} | {_ms(s['ttft_p50_s'])} | "
                     f"{_ms(s['ttft_p99_s'])} | {_ms(s['itl_p50_s'])} | {_ms(s['itl_p99_s'])} | "
                     f"{s['e2e_p99_s']:.2f} s | {s['goodput_rps']:.2f} ({s['slo_share']:.0%}) |")
    return "\n".join(lines)


# ============================================================================ 5. sweeps and estimates


def sweep_users(base_url: str, model: str | None, prompts: Sequence[Prompt], users: Sequence[int] = (1, 2, 4, 8),
                requests_per_user: int = 2, time_limit_s: float = 60.0, **kwargs: Any) -> list[LoadResult]:
    """`run_load` at each number of users (closed loop), `requests_per_user` requests each, in order."""
    from tqdm.auto import tqdm

    if not users:
        raise LabkitError("users is empty: give the numbers of users to try, e.g. (1, 2, 4, 8)")
    _require_int("requests_per_user", requests_per_user, 1, MAX_REQUESTS)
    return [run_load(base_url, model, prompts, users=u, requests=u * requests_per_user, time_limit_s=time_limit_s,
                     **kwargs) for u in tqdm(list(users), desc="users")]


@dataclass(frozen=True)
class LoadEstimate:
    """The roofline's view of `users` users each asking for `new_tokens` after a `prompt_tokens` prompt."""

    users: int
    step_s: float  # one decode step: one new token for every user
    prefill_s: float  # one request's prompt
    itl_s: float  # a user's gap between tokens: its steps, plus the other users' prompts processed meanwhile
    ttft_burst_s: float  # the last of `users` requests that arrive at once: every prompt before its own, then a step
    tokens_per_s: float  # all users, prefills included
    bound: str  # what limits a decode step: "memory" or "compute"


def estimate_load(users: int, prompt_tokens: float, new_tokens: int, weight_bytes: float, kv_bytes_per_user: float,
                  bandwidth_bytes_per_s: float, flops: float, decode_params: float,
                  prefill_params: float | None = None) -> LoadEstimate:
    """Throughput and latency of `users` users decoding together, from bandwidth and FLOP/s alone.

    A decode step reads the weights once for everyone plus each user's KV cache (memory time), and does 2 FLOPs per
    parameter per user (compute time); it takes the longer of the two. A prompt is processed at the compute
    ceiling, and decoding waits meanwhile. So one round of `users` requests takes users x prefill + new_tokens x
    step and yields users x new_tokens tokens; while one user's answer is generated, the other users' prompts
    (users - 1 of them) are processed too, which stretches its ITL.
    """
    _require_int("users", users, 1, MAX_PLANNED_USERS)
    _require_int("new_tokens", new_tokens, 1, MAX_TOKENS)
    for name, value in (("weight_bytes", weight_bytes), ("bandwidth_bytes_per_s", bandwidth_bytes_per_s),
                        ("flops", flops), ("decode_params", decode_params)):
        require_positive(name, value)
    require_positive("kv_bytes_per_user", kv_bytes_per_user, allow_zero=True)
    require_positive("prompt_tokens", prompt_tokens, allow_zero=True)
    memory = (weight_bytes + users * kv_bytes_per_user) / bandwidth_bytes_per_s
    compute = users * 2 * decode_params / flops
    step = max(memory, compute)
    prefill = 2 * (prefill_params if prefill_params is not None else decode_params) * prompt_tokens / flops
    return LoadEstimate(users, step, prefill, step + (users - 1) * prefill / new_tokens, users * prefill + step,
                        users * new_tokens / (users * prefill + new_tokens * step),
                        "memory" if memory >= compute else "compute")


def gguf_parameters(path: str | Path) -> tuple[float, float]:
    """Parameters one decode step and one prompt token multiply with, from a GGUF's tensor table.

    Decode skips the input embedding (a row gather) unless it is tied to the output layer, whose product every
    new token needs. A prompt token needs neither: llama.cpp computes the output layer for the last one only.
    """
    from .bench import read_gguf_header

    _, tensors = read_gguf_header(path)
    sizes = {t.name: math.prod(t.shape) for t in tensors}
    total = float(sum(sizes.values()))
    embedding, output = sizes.get("token_embd.weight", 0), sizes.get("output.weight")
    decode = total - embedding if output is not None else total
    prefill = total - embedding - (output or 0)
    return decode, prefill


def knee_users(results: Sequence[LoadResult], share: float = 0.9) -> int | None:
    """The fewest users at which throughput reaches `share` of the best measured: past the knee, more users
    mostly add waiting, not tokens."""
    points = [(r.users, r.tokens_per_s) for r in results if r.users and not math.isnan(r.tokens_per_s)]
    if not points:
        return None
    best = max(t for _, t in points)
    return min(u for u, t in points if t >= share * best)


def max_users_meeting(rows: Sequence[dict | LoadResult], slo: Slo, p: int = 99) -> int:
    """The most users at which the P-th percentile TTFT and ITL both met `slo` (0 when none did).

    `rows` are LoadResults or their `summary()` dicts (the committed GPU results store those).
    """
    if p not in (50, 95, 99):
        raise LabkitError(f"p must be 50, 95 or 99 (the percentiles a summary keeps), got {p!r}")
    best = 0
    for row in rows:
        s = row.summary(slo) if isinstance(row, LoadResult) else row
        if s.get("completed", 0) and not s.get("failed") and s[f"ttft_p{p}_s"] <= slo.ttft_s \
                and s[f"itl_p{p}_s"] <= slo.itl_s:
            best = max(best, int(s["users"]))
    return best


def plot_timeline(result: LoadResult, title: str | None = None, ax=None):
    """Every request as a bar from when it was sent to its last token: waiting + prefill (light) until the
    first token, then decoding (dark). Overlapping bars are requests served at the same time."""
    import matplotlib.pyplot as plt

    if not result.records:
        raise LabkitError("the run has no requests to draw")
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 0.28 * len(result.records) + 1.5))
    for row, r in enumerate(result.records):
        ttft = r.ttft_s if not math.isnan(r.ttft_s) else r.e2e_s
        ax.barh(row, ttft, left=r.sent_s, color="#fdae6b", height=0.7,
                label="waiting + prefill (TTFT)" if row == 0 else None)
        ax.barh(row, max(r.e2e_s - ttft, 0), left=r.sent_s + ttft, color="#3182bd" if r.ok else "#d62728",
                height=0.7, label="decoding" if row == 0 else None)
    ax.set_yticks(range(len(result.records)))
    ax.set_yticklabels([f"#{r.index} u{r.user}" if r.user is not None else f"#{r.index}" for r in result.records],
                       fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the run started")
    ax.set_title(title or f"{result.label}: each request from sent to last token")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.figure.tight_layout()
    return ax.figure


def plot_sweep(results: Sequence[LoadResult], estimate: dict[int, LoadEstimate] | None = None,
               slo: Slo | None = None, title: str = ""):
    """Left: throughput (all users) against users, measured beside the roofline estimate. Right: P50 and P99 of
    TTFT and ITL against users, with the latency target (and the estimate's ITL)."""
    import matplotlib.pyplot as plt

    slo = slo or Slo()
    results = [r for r in results if r.users]
    if not results:
        raise LabkitError("plot_sweep needs closed-loop results (run_load with users=...)")
    users = [r.users for r in results]
    fig, (ax_tp, ax_lat) = plt.subplots(1, 2, figsize=(12, 4.4))
    ax_tp.plot(users, [r.tokens_per_s for r in results], "o-", color="#1a7f37", label="measured", linewidth=2)
    if estimate:
        ax_tp.plot(list(estimate), [e.tokens_per_s for e in estimate.values()], "--", color="#d62728",
                   label="estimate: roofline (bandwidth, then compute)")
    knee = knee_users(results)
    if knee:
        ax_tp.axvline(knee, color="grey", linestyle=":", linewidth=1)
        top = max([r.tokens_per_s for r in results] + [e.tokens_per_s for e in (estimate or {}).values()])
        ax_tp.annotate(f" knee: {knee} user{'s' * (knee > 1)}", (knee, top * 0.05), fontsize=8, color="grey")
    ax_tp.set_ylim(bottom=0)
    ax_tp.set_xlabel("concurrent users")
    ax_tp.set_ylabel("generated tokens / s (all users)")
    ax_tp.set_title("Throughput")
    ax_tp.legend(fontsize=8)
    for metric, color, target in (("ttft_s", "#e6550d", slo.ttft_s), ("itl_s", "#3182bd", slo.itl_s)):
        name = metric[:-2].upper()
        ax_lat.plot(users, [r.percentile(metric, 50) * 1000 for r in results], "o-", color=color,
                    label=f"{name} P50")
        ax_lat.plot(users, [r.percentile(metric, 99) * 1000 for r in results], "s--", color=color,
                    label=f"{name} P99")
        ax_lat.axhline(target * 1000, color=color, linewidth=0.8, alpha=0.6)
        ax_lat.annotate(f"{name} target", (users[0], target * 1000), fontsize=7, color=color, va="bottom")
    if estimate:
        ax_lat.plot(list(estimate), [e.itl_s * 1000 for e in estimate.values()], ":", color="#3182bd",
                    label="ITL estimate")
        ax_lat.plot(list(estimate), [e.ttft_burst_s * 1000 for e in estimate.values()], ":", color="#e6550d",
                    label="TTFT estimate (all arrive at once)")
    ax_lat.set_yscale("log")
    ax_lat.set_xlabel("concurrent users")
    ax_lat.set_ylabel("milliseconds")
    ax_lat.set_title("Latency: median and P99")
    ax_lat.legend(fontsize=8, ncol=2)
    for ax in (ax_tp, ax_lat):
        ax.set_xscale("log", base=2)
        ax.set_xticks(users, [str(u) for u in users])
        ax.minorticks_off()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def speculation_stats(result: LoadResult) -> dict:
    """Drafted and accepted tokens (llama.cpp's timings) and the decode speed one user saw."""
    drafted = sum(r.draft_tokens or 0 for r in result.completed)
    accepted = sum(r.draft_accepted or 0 for r in result.completed)
    return {"drafted": drafted, "accepted": accepted,
            "acceptance": accepted / drafted if drafted else float("nan"),
            "decode_tokens_per_s": result.percentile("decode_tokens_per_s", 50),
            "e2e_p50_s": result.percentile("e2e_s", 50)}


# ============================================================================ 6. structured output

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 1, "maxLength": 40},
        "sky": {"type": "string", "enum": ["sunny", "cloudy", "rainy", "snowy", "windy", "foggy"]},
        "temp_c": {"type": "integer", "minimum": -60, "maximum": 60},
    },
    "required": ["city", "sky", "temp_c"],
    "additionalProperties": False,
}


def weather_prompts(n: int, max_tokens: int = 40, examples: int = 0) -> list[Prompt]:
    """Weather sentences to turn into JSON (notebook 07's held-out task), after `examples` solved ones; each
    Prompt carries the right answer."""
    from .lora import load_task

    _require_int("n", n, 1, MAX_REQUESTS)
    shots = "".join(f"Sentence: {r['sentence']}\nJSON: {r['answer']}\n\n" for r in load_task("train")[:examples])
    rows = load_task("heldout")
    head = ('Turn the weather sentence into JSON with the keys "city" (a string), "sky" (one of sunny, cloudy, rainy, '
            'snowy, windy, foggy) and "temp_c" (an integer).\n\n')
    return [Prompt(f"{head}{shots}Sentence: {row['sentence']}\nJSON:", max_tokens, "json", row["answer"])
            for row in (rows[i % len(rows)] for i in range(n))]


@dataclass(frozen=True)
class JsonCheck:
    parses: bool
    valid: bool
    problem: str

    def __str__(self) -> str:
        return "valid" if self.valid else self.problem


def check_json(text: str, schema: dict) -> JsonCheck:
    """Does `text` parse as JSON, and does it match `schema` (the jsonschema library decides)?"""
    try:
        import jsonschema
    except ImportError as err:
        from .errors import MissingPackageError

        raise MissingPackageError("jsonschema", "Checking answers against a JSON schema", extra="lab") from err
    try:
        value = json.loads(text.strip())
    except ValueError as err:
        return JsonCheck(False, False, f"not JSON ({err.msg} at character {err.pos})")
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as err:
        return JsonCheck(True, False, f"JSON, but {err.message}")
    return JsonCheck(True, True, "")


def json_share(result: LoadResult, schema: dict, prompts: Sequence[Prompt] | None = None) -> dict:
    """How many completed answers parse, how many match the schema and, given the prompts (with their expected
    answers), how many are also right."""
    done = result.completed
    checks = [check_json(r.text, schema) for r in done]
    n = len(checks)
    out = {"answers": n, "parse": sum(c.parses for c in checks) / n if n else float("nan"),
           "valid": sum(c.valid for c in checks) / n if n else float("nan"), "checks": checks}
    if prompts:
        expected = [prompts[r.index % len(prompts)].expected for r in done]
        right = [c.valid and e is not None and json.loads(r.text) == json.loads(e)
                 for r, c, e in zip(done, checks, expected)]
        out["correct"] = sum(right) / n if n else float("nan")
    return out


# ============================================================================ 7. the capacity planner

GIB = 1024**3
GPU_RUNTIME_OVERHEAD_BYTES = 1.5 * GIB  # CUDA context (~0.7 GiB, notebook 03) + llama.cpp's compute buffers
WEIGHT_FORMATS = ("Q4_K_M", "Q8_0", "bf16")


@dataclass(frozen=True)
class Device:
    """What the planner needs from a machine: memory a model may use, bandwidth, and FLOP/s."""

    name: str
    memory_bytes: float  # usable (after the course's 5% margin)
    bandwidth_bytes_per_s: float
    flops: float
    overhead_bytes: float
    source: str
    compute_efficiency: float | None = None  # measured share of `flops` the runtime reaches; None: the plan's own


def gpu_device(name: str) -> Device:
    """A card from datasets/gpus.json: usable memory as CUDA shows it, datasheet bandwidth and fp16 FLOP/s."""
    from .hardware import find_gpu, usable_memory

    gpu = find_gpu(name)
    return Device(gpu["name"], usable_memory(gpu).bytes, gpu["bandwidth_gbps"] * 1e9, gpu["fp16_tflops"] * 1e12,
                  GPU_RUNTIME_OVERHEAD_BYTES, gpu["source"])


def this_machine(bandwidth_bytes_per_s: float, flops: float, memory_bytes: float | None = None,
                 compute_efficiency: float | None = None) -> Device:
    """This machine as measured: a timed copy's bandwidth, a timed matrix product's FLOP/s, available memory, and
    (optionally) the share of those FLOP/s the runtime was measured to reach on prompts."""
    from .hardware import usable_memory

    require_positive("bandwidth_bytes_per_s", bandwidth_bytes_per_s)
    require_positive("flops", flops)
    if compute_efficiency is not None:
        _require_fraction("compute_efficiency", compute_efficiency)
    memory = memory_bytes if memory_bytes is not None else usable_memory().bytes
    return Device("this machine", memory, bandwidth_bytes_per_s, flops, 0.0, "measured in this notebook",
                  compute_efficiency)


def _require_fraction(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise LabkitError(f"{name} must be a fraction above 0 and at most 1 (of the peak), got {value!r}")


def model_parameters(model: str) -> tuple[float, float]:
    """Parameters one decode step and one prompt token multiply with (see `gguf_parameters`), from a config:
    the active parameters (a mixture of experts uses a few experts per token), less the input embedding (a
    gather) unless the output layer is tied to it, less the output layer for prompt tokens."""
    from .vram import active_parameter_count, weight_tensors

    by_kind: dict[str, float] = {}
    for t in weight_tensors(model):
        by_kind[t.kind] = by_kind.get(t.kind, 0) + t.numel
    active = float(active_parameter_count(model))
    embedding, head = by_kind.get("embedding", 0.0), by_kind.get("lm_head")
    decode = active - embedding if head is not None else active
    return decode, active - embedding - (head or 0.0)


@dataclass(frozen=True)
class CapacityPlan:
    """How many users decode at once within the latency target, and what limits it."""

    model: str
    device: Device
    weights: str
    prompt_tokens: int
    new_tokens: int
    slo: Slo
    efficiency: float  # share of the peak bandwidth (and FLOP/s, unless the device says) the runtime reaches
    weight_bytes: float
    kv_bytes_per_user: float
    decode_params: float
    prefill_params: float
    users_by_memory: int
    users_by_itl: int
    users_by_ttft: int

    @property
    def compute_efficiency(self) -> float:
        return self.device.compute_efficiency or self.efficiency

    @property
    def users(self) -> int:
        return min(self.users_by_memory, self.users_by_itl, self.users_by_ttft)

    @property
    def limit(self) -> str:
        limits = {"memory (KV cache)": self.users_by_memory, "ITL target": self.users_by_itl,
                  "TTFT target": self.users_by_ttft}
        return min(limits, key=limits.get)

    def at(self, users: int) -> LoadEstimate:
        """The estimate at `users` users (`estimate_load` at the plan's efficiencies)."""
        return estimate_load(max(1, users), self.prompt_tokens, self.new_tokens, self.weight_bytes,
                             self.kv_bytes_per_user, self.device.bandwidth_bytes_per_s * self.efficiency,
                             self.device.flops * self.compute_efficiency, self.decode_params, self.prefill_params)

    def text(self) -> str:
        u = self.users
        one = self.at(1)
        lines = [f"{self.model} ({self.weights}, {self.weight_bytes / 1e9:.1f} GB) on {self.device.name}: prompts of "
                 f"{self.prompt_tokens:,} tokens, answers of {self.new_tokens:,}, {self.slo}; the runtime at "
                 f"{self.efficiency:.0%} of peak bandwidth and {self.compute_efficiency:.0%} of peak FLOP/s",
                 f"  memory : {self.users_by_memory:>6,} users ({self.kv_bytes_per_user / 2**20:,.0f} MiB of KV "
                 f"cache each)",
                 f"  ITL    : {self.users_by_itl:>6,} users (decode steps + the others' prompts ≤ "
                 f"{self.slo.itl_s * 1000:,.0f} ms a token)",
                 f"  TTFT   : {self.users_by_ttft:>6,} users (own prompt {one.prefill_s * 1000:,.0f} ms + one step ≤ "
                 f"{self.slo.ttft_s * 1000:,.0f} ms, arrivals spread out)",
                 f"→ {u:,} concurrent users, limited by {self.limit}"]
        if u:
            e = self.at(u)
            lines.append(f"  at {u:,} users: ITL {e.itl_s * 1000:,.0f} ms ({1 / e.itl_s:,.1f} tok/s each), "
                         f"{e.tokens_per_s:,.0f} tok/s in all; if all {u:,} arrived at once, the last would wait "
                         f"{e.ttft_burst_s:,.1f} s for its first token")
        return "\n".join(lines)



def plan_capacity(model: str = "llama-3.1-8b", device: str | Device = "H100", weights: str = "Q4_K_M",
                  prompt_tokens: int = 1024, new_tokens: int = 256, slo: Slo | None = None,
                  efficiency: float = 0.5) -> CapacityPlan:
    """Concurrent users a card serves within a latency target, from the roofline (an estimate, not a promise).

    Memory: the weights plus one KV cache of prompt + answer per user must fit. ITL: `estimate_load`'s gap between
    a user's tokens (a decode step of all users, plus the other users' prompts processed meanwhile). TTFT: a
    prompt's prefill plus one step, with arrivals spread out (a burst queues prefills; the text says how long).
    `efficiency` is the share of the datasheet peak the runtime reaches (your measurement: 1 user's tokens/s ÷ the
    roofline, `measured_efficiency`).
    """
    from .vram import kv_cache_bytes, weight_bytes

    slo = slo or Slo()
    dev = gpu_device(device) if isinstance(device, str) else device
    if weights not in WEIGHT_FORMATS:
        from .errors import unknown

        raise unknown("weight format", weights, WEIGHT_FORMATS)
    _require_int("prompt_tokens", prompt_tokens, 1, 1 << 21)
    _require_int("new_tokens", new_tokens, 1, MAX_TOKENS)
    _require_fraction("efficiency", efficiency)
    w = float(sum(weight_bytes(model, weights).values()))
    kv = float(kv_cache_bytes(model, prompt_tokens + new_tokens, kv_dtype="fp16"))
    decode_params, prefill_params = model_parameters(model)
    by_memory = max(0, min(MAX_PLANNED_USERS, int((dev.memory_bytes - w - dev.overhead_bytes) // kv)))
    plan = CapacityPlan(model, dev, weights, prompt_tokens, new_tokens, slo, float(efficiency), w, kv, decode_params,
                        prefill_params, by_memory, 0, 0)

    def most_users(fits) -> int:  # the largest user count that still fits (both latencies grow with users)
        if not fits(1):
            return 0
        low, high = 1, MAX_PLANNED_USERS
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if fits(mid) else (low, mid - 1)
        return low

    by_itl = most_users(lambda u: plan.at(u).itl_s <= slo.itl_s)
    by_ttft = most_users(lambda u: plan.at(u).prefill_s + plan.at(u).step_s <= slo.ttft_s)
    return CapacityPlan(model, dev, weights, prompt_tokens, new_tokens, slo, float(efficiency), w, kv, decode_params,
                        prefill_params, by_memory, by_itl, by_ttft)


def measured_efficiency(tokens_per_s: float, weight_bytes: float, kv_bytes: float, bandwidth_bytes_per_s: float) -> float:
    """The share of the bandwidth roofline one user's measured decode speed reached (≤ 1)."""
    from .bench import roofline_tokens_per_s

    return min(1.0, tokens_per_s / roofline_tokens_per_s(weight_bytes + kv_bytes, bandwidth_bytes_per_s))


# ============================================================================ 8. committed GPU results


def gpu_results_path() -> Path:
    from .paths import datasets_dir

    return datasets_dir() / "results" / "serving_gpu.json"


def load_gpu_results(path: str | Path | None = None) -> dict | None:
    """The committed llama-server run on a GPU (benchmarks/serving_gpu.py), or None when this copy has none."""
    path = Path(path) if path else gpu_results_path()
    return json.loads(path.read_text()) if path.is_file() else None


def committed_gpu_name(results: dict) -> str:
    """The datasets/gpus.json name of the card a committed run used (its device string names it)."""
    from .hardware import find_gpu, gpu_table

    device = results.get("device", "")
    squeezed = device.replace(" ", "").replace("-", "")
    candidates = [g for g in gpu_table() if g["name"].replace("NVIDIA ", "").split()[-1 if "RTX" in g["name"] else 0]
                  in device]  # "H100", "A100", "4090" ...
    if not candidates:
        raise LabkitError(f"the committed run's device {device!r} is not a card of datasets/gpus.json")
    sized = [g for g in candidates if f"{g['vram_gb']}GB" in squeezed]  # A100 40GB or 80GB
    return find_gpu((sized or candidates)[0]["name"])["name"]


def committed_gpu_throughput(results: dict | None = None) -> dict[int, float]:
    """Measured aggregate decode tokens/s by number of concurrent users on the GPU ({} without results).

    Notebook 08 uses this in place of its batch projection: `{1: ..., 2: ..., ..., 64: ...}`.
    """
    results = results if results is not None else load_gpu_results()
    if not results:
        return {}
    return {int(row["users"]): float(row["tokens_per_s"]) for row in results.get("sweep", [])
            if row.get("completed")}


def gpu_features_markdown(results: dict) -> str:
    """The committed GPU run's prefix-cache, JSON-schema and speculation measurements as a Markdown table."""
    lines = ["| feature | without | with | change |", "|---|---:|---:|---|"]
    cache = results.get("prefix_cache")
    if cache and cache["off"].get("completed") and cache["on"].get("completed"):
        off, on = cache["off"]["ttft_p50_s"], cache["on"]["ttft_p50_s"]
        lines.append(f"| prefix cache ({cache['off'].get('prompt_tokens', '?')}-token prompts, TTFT P50) | "
                     f"{_ms(off)} | {_ms(on)} | {off / on:.1f}x faster |")
    schema = results.get("json_schema")
    if schema and schema["off"].get("completed") and schema["on"].get("completed"):
        off, on = schema["off"]["itl_p50_s"], schema["on"]["itl_p50_s"]
        lines.append(f"| JSON schema (ITL P50; valid answers {schema['off']['valid']:.0%} → {schema['on']['valid']:.0%}) "
                     f"| {_ms(off)} | {_ms(on)} | {on / off:.2f}x the time per token |")
    for task, runs in (results.get("speculation") or {}).items():
        if "off" not in runs or "ngram" not in runs:
            continue
        off, on = runs["off"]["decode_tokens_per_s"], runs["ngram"]["decode_tokens_per_s"]
        lines.append(f"| n-gram speculation, {task} task (decode tok/s; {runs['ngram']['acceptance']:.0%} of drafts "
                     f"accepted) | {off:,.1f} | {on:,.1f} | {on / off:.2f}x |")
    return "\n".join(lines)


def gpu_sweep_markdown(results: dict, slo: Slo | None = None) -> str:
    """The committed GPU sweep as a Markdown table."""
    slo = slo or Slo()
    lines = ["| users | done | tok/s (all users) | tok/s per user (P50) | TTFT P50 | TTFT P99 | ITL P50 | ITL P99 |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in results.get("sweep", []):
        lines.append(f"| {s['users']} | {s['completed']} | {s['tokens_per_s']:,.0f} | "
                     f"{s['decode_tokens_per_s_p50']:,.1f} | {_ms(s['ttft_p50_s'])} | {_ms(s['ttft_p99_s'])} | "
                     f"{_ms(s['itl_p50_s'])} | {_ms(s['itl_p99_s'])} |")
    return "\n".join(lines)


# ============================================================================ exercises


@exercise("09.p99_ttft_ms",
          hint="Sort the TTFTs; P99 sits 99% of the way from the smallest to the largest, interpolated between the "
               "two nearest values (numpy.percentile(values, 99) does exactly this). Then seconds → milliseconds.",
          rtol=1e-3,
          slips={"taking the largest value (P99 of a small sample lies between the two largest)":
                     lambda expected, ttft_s: max(ttft_s) * 1000,
                 "averaging (the mean hides the slow requests a percentile shows)":
                     lambda expected, ttft_s: statistics.fmean(ttft_s) * 1000,
                 "taking the median (P50) instead of P99":
                     lambda expected, ttft_s: percentile(ttft_s, 50) * 1000,
                 "leaving it in seconds (× 1000 for milliseconds)": 1e-3})
def _expected_p99_ttft_ms(ttft_s: Sequence[float]) -> float:
    return percentile(list(ttft_s), 99) * 1000


def _good(ttft_s, itl_s, ttft_target_s, itl_target_s, use_ttft=True, use_itl=True) -> int:
    return sum((not use_ttft or t <= ttft_target_s) and (not use_itl or i <= itl_target_s)
               for t, i in zip(ttft_s, itl_s))


@exercise("09.goodput",
          hint="Count the requests whose TTFT AND ITL both meet their targets, then divide by the run's wall time "
               "in seconds: goodput is requests per second, like throughput, but only the good ones.",
          rtol=1e-3,
          slips={"counting every request (that is throughput, not goodput)":
                     lambda expected, ttft_s, wall_s, **_: len(ttft_s) / wall_s,
                 "checking only the TTFT target":
                     lambda expected, ttft_s, itl_s, wall_s, ttft_target_s, itl_target_s:
                     _good(ttft_s, itl_s, ttft_target_s, itl_target_s, use_itl=False) / wall_s,
                 "checking only the ITL target":
                     lambda expected, ttft_s, itl_s, wall_s, ttft_target_s, itl_target_s:
                     _good(ttft_s, itl_s, ttft_target_s, itl_target_s, use_ttft=False) / wall_s,
                 "giving the share of good requests instead of good requests per second":
                     lambda expected, ttft_s, wall_s, **_: expected * wall_s / len(ttft_s)})
def _expected_goodput(ttft_s: Sequence[float], itl_s: Sequence[float], wall_s: float, ttft_target_s: float,
                      itl_target_s: float) -> float:
    if len(ttft_s) != len(itl_s) or not ttft_s:
        raise LabkitError("ttft_s and itl_s must be two lists of the same, non-zero length")
    return _good(ttft_s, itl_s, ttft_target_s, itl_target_s) / wall_s


@exercise("09.break_even_batch",
          hint="At batch B a decode step reads the weights once (parameters × bytes per parameter ÷ bandwidth) and "
               "does 2 FLOPs per parameter per sequence (2 × parameters × B ÷ FLOP/s). Set the two times equal and "
               "solve for B: the parameters cancel. Mind the units: TFLOP/s × 1e12, GB/s × 1e9.",
          rtol=0.01,
          slips={"forgetting that a multiply-add is 2 FLOPs": 2.0,
                 "using bits per weight where bytes are asked (÷ 8)": 8.0,
                 "mixing TFLOP/s and GB/s without converting both to per-second units": 1e-3})
def _expected_break_even_batch(tflops: float, bandwidth_gbps: float, bytes_per_parameter: float) -> float:
    for name, value in (("tflops", tflops), ("bandwidth_gbps", bandwidth_gbps),
                        ("bytes_per_parameter", bytes_per_parameter)):
        require_positive(name, value)
    return tflops * 1e12 * bytes_per_parameter / (2 * bandwidth_gbps * 1e9)
