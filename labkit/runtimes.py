"""Runtimes: one model, four ways to run it.

1. llama.cpp in-process (llama-cpp-python) on the GGUF file.
2. transformers in-process on a dense copy of the same weights.
3. llama-cpp-python's OpenAI-compatible server, started here as a subprocess on 127.0.0.1 and called
   with the official `openai` client (streaming and not).
4. Any other OpenAI-compatible server already running on this machine (Ollama, vLLM, TGI, LM Studio):
   the very same client code, a `base_url` away. When none answers, we say so and skip.

Every generator returns a `Generation`: the text plus the time of every token, so `labkit.bench`
can compute time-to-first-token and tokens/s the same way for all of them.

Safety rules of this module: servers bind to loopback only, clients only talk to loopback, the
server subprocess never outlives you (context manager, a finalizer that also runs at exit, its
own process group, and a watchdog inside the child that exits when its parent is gone).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .check import BITS_FOR_BYTES, GIB_FOR_GB, exercise
from .dtypes import BITS_PER_WEIGHT
from .errors import LabkitError, MissingPackageError, require_positive, unknown
from .formatting import table
from .hardware import cpu_threads
from .models import BUNDLED, bundled_gguf_path, check_n_gpu_layers, resolve_n_gpu_layers, validate_gguf

# torch, llama_cpp, openai and jinja2 are imported inside the functions that use them: `import labkit` stays
# quick and works without the optional extras.

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

# Where the usual local servers listen by default (all speak the OpenAI API under /v1).
KNOWN_ENDPOINTS = {
    "Ollama": "http://127.0.0.1:11434/v1",
    "vLLM": "http://127.0.0.1:8000/v1",
    "TGI": "http://127.0.0.1:8080/v1",
    "LM Studio": "http://127.0.0.1:1234/v1",
}

# The runtimes the course names, and when each one fits. Rendered as a table in notebook 02.
RUNTIME_GUIDE = [
    dict(runtime="Ollama", engine="llama.cpp inside", hardware="CPU, Apple, NVIDIA/AMD GPU",
         formats="GGUF (pulled by tag, e.g. llama3.1:8b)", api="OpenAI-compatible on :11434",
         fits="the quickest start on a laptop or workstation; one command pulls and serves"),
    dict(runtime="llama.cpp", engine="C/C++ (ggml)", hardware="CPU first; CUDA, Metal, Vulkan, ROCm",
         formats="GGUF, Q2_K ... Q8_0, F16", api="llama-server (OpenAI-compatible); Python: llama-cpp-python",
         fits="CPUs and small GPUs, partial GPU offload (-ngl), embedding in your own program"),
    dict(runtime="LM Studio", engine="llama.cpp (and MLX on Macs)", hardware="desktop CPU/GPU, Apple",
         formats="GGUF, MLX", api="OpenAI-compatible on :1234",
         fits="a GUI to browse, download and chat; non-programmers"),
    dict(runtime="transformers", engine="PyTorch", hardware="any PyTorch device",
         formats="safetensors (bf16/fp16/fp32), bitsandbytes, GPTQ/AWQ", api="Python (model.generate)",
         fits="research, fine-tuning, reading and changing the model; not a fast server"),
    dict(runtime="vLLM", engine="PyTorch + custom CUDA kernels", hardware="NVIDIA (also AMD, TPU)",
         formats="safetensors, AWQ, GPTQ, FP8", api="OpenAI-compatible on :8000",
         fits="production serving of many users: PagedAttention, continuous batching, tensor parallel"),
    dict(runtime="TGI", engine="Rust router + PyTorch kernels", hardware="NVIDIA, AMD, Gaudi",
         formats="safetensors, AWQ, GPTQ", api="OpenAI-compatible Messages API",
         fits="Hugging Face's production server; similar role to vLLM"),
    dict(runtime="ExLlamaV2", engine="custom CUDA kernels", hardware="NVIDIA consumer GPUs",
         formats="EXL2 (mixed bits per layer), GPTQ", api="TabbyAPI (OpenAI-compatible)",
         fits="the most model per GB of VRAM on a single gaming GPU"),
    dict(runtime="MLC LLM", engine="Apache TVM compiler", hardware="phones, browsers (WebGPU), Vulkan, Metal",
         formats="MLC-compiled weights", api="OpenAI-compatible REST; native SDKs",
         fits="shipping a model inside an app: mobile, web, edge"),
]


# ----------------------------------------------------------------------------- what a run returns


@dataclass
class Generation:
    """One generation: the text and when each new token arrived (seconds after the request)."""

    runtime: str
    prompt: str
    text: str
    prompt_tokens: int
    token_times: list[float] = field(default_factory=list)
    total_s: float = 0.0

    @property
    def new_tokens(self) -> int:
        return len(self.token_times)

    @property
    def ttft_s(self) -> float:
        """Time to first token: the prompt's processing (prefill) plus one decode step."""
        return self.token_times[0] if self.token_times else float("nan")

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens after the first, over the time after the first: pure decode speed."""
        if len(self.token_times) < 2:
            return float("nan")
        span = self.token_times[-1] - self.token_times[0]
        return (len(self.token_times) - 1) / span if span > 0 else float("nan")

    @property
    def prompt_tokens_per_s(self) -> float:
        """Prompt tokens over the time to first token (prefill speed, slightly understated)."""
        return self.prompt_tokens / self.ttft_s if self.token_times and self.ttft_s > 0 else float("nan")

    def __str__(self) -> str:
        return (f"{self.runtime}: {self.prompt_tokens} prompt tokens, {self.new_tokens} new tokens | "
                f"TTFT {self.ttft_s * 1000:.0f} ms | decode {self.decode_tokens_per_s:.1f} tok/s | "
                f"prompt {self.prompt_tokens_per_s:.0f} tok/s")


def _emit(on_text: Callable[[str], None] | None, piece: str) -> None:
    if on_text is not None and piece:
        on_text(piece)


# ----------------------------------------------------------------------------- llama.cpp in-process


def generate_llama_cpp(llm: Any, prompt: str, max_new_tokens: int = 32, on_text: Callable[[str], None] | None = None,
                       stop_at_eos: bool = True) -> Generation:
    """Greedy generation with llama-cpp-python's token generator (one token per step, timed).

    `llm` is a `llama_cpp.Llama` (e.g. `labkit.models.load_llama_cpp().model`). The model's state is
    reset first, so the prompt is processed in full every time (no reuse of the previous prompt).
    """
    require_positive("max_new_tokens", max_new_tokens)
    tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
    llm.reset()
    eos = llm.token_eos()
    times: list[float] = []
    out: list[int] = []
    pending = b""
    start = time.perf_counter()
    for token in llm.generate(tokens, top_k=1, temp=0.0, reset=True):
        times.append(time.perf_counter() - start)
        if stop_at_eos and token == eos:
            times.pop()
            break
        out.append(token)
        pending += llm.detokenize([token], prev_tokens=tokens + out[:-1])
        try:  # a multi-byte character may span tokens: print only whole characters
            _emit(on_text, pending.decode("utf-8"))
            pending = b""
        except UnicodeDecodeError:
            pass
        if len(out) >= max_new_tokens:
            break
    total = time.perf_counter() - start
    text = llm.detokenize(out, prev_tokens=tokens).decode("utf-8", errors="replace")
    return Generation("llama.cpp", prompt, text, len(tokens), times, total)


# ----------------------------------------------------------------------------- transformers in-process


class _TimingStreamer:
    """A transformers streamer that records when each new token arrives (the first `put` is the prompt)."""

    def __init__(self, tokenizer: Any, start: float, on_text: Callable[[str], None] | None):
        self.tokenizer, self.start, self.on_text = tokenizer, start, on_text
        self.times: list[float] = []
        self.ids: list[int] = []
        self._seen_prompt = False
        self._printed = ""

    def put(self, value: Any) -> None:
        if not self._seen_prompt:
            self._seen_prompt = True
            return
        now = time.perf_counter() - self.start
        for token in value.reshape(-1).tolist():
            self.times.append(now)
            self.ids.append(int(token))
        if self.on_text is not None:
            text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
            if not text.endswith("\ufffd"):
                _emit(self.on_text, text[len(self._printed):])
                self._printed = text

    def end(self) -> None:
        pass


def generate_transformers(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int = 32,
                          on_text: Callable[[str], None] | None = None, stop_at_eos: bool = True,
                          **generate_kwargs: Any) -> Generation:
    """Greedy `model.generate` with a streamer that times each token.

    `generate_kwargs` go to `generate`, e.g. `cache_implementation="static"` (on a GPU this also
    compiles the decode step with CUDA graphs).
    """
    import torch

    require_positive("max_new_tokens", max_new_tokens)
    inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
    prompt_tokens = int(inputs["input_ids"].shape[-1])
    extra: dict[str, Any] = dict(generate_kwargs)
    if not stop_at_eos:
        extra["min_new_tokens"] = max_new_tokens
    start = time.perf_counter()
    streamer = _TimingStreamer(tokenizer, start, on_text)
    with torch.inference_mode():
        model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, streamer=streamer,
                       pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id, **extra)
    total = time.perf_counter() - start
    ids, times = streamer.ids, streamer.times
    eos = tokenizer.eos_token_id
    if stop_at_eos and ids and ids[-1] == eos:  # the end-of-sequence token is not text
        ids, times = ids[:-1], times[:-1]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    return Generation("transformers", prompt, text, prompt_tokens, times, total)


# ----------------------------------------------------------------------------- OpenAI-compatible clients


def require_loopback(base_url: str) -> str:
    """Return base_url if it points at this machine (127.0.0.1, localhost, ::1); raise otherwise."""
    parsed = urlparse(base_url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise LabkitError(f"{base_url!r} is not a server address. Accepted: 'http://127.0.0.1:PORT/v1'.")
    if parsed.hostname not in LOOPBACK_HOSTS:
        raise LabkitError(f"{base_url!r} is not on this machine. This course only talks to local servers: "
                          f"use one of the hosts {', '.join(LOOPBACK_HOSTS)}.")
    return base_url.rstrip("/")


def openai_client(base_url: str, api_key: str | None = None, timeout_s: float = 120.0):
    """The official `openai` client, pointed at a local OpenAI-compatible server."""
    try:
        from openai import OpenAI
    except ImportError as err:
        raise MissingPackageError("openai", "Talking to an OpenAI-compatible server") from err
    return OpenAI(base_url=require_loopback(base_url), api_key=api_key or "not-needed", timeout=timeout_s,
                  max_retries=0)


def generate_openai(client: Any, model: str, prompt: str, max_new_tokens: int = 32, stream: bool = True,
                    chat: bool = False, on_text: Callable[[str], None] | None = None,
                    runtime: str = "server", prompt_tokens: int | None = None) -> Generation:
    """Greedy generation through any OpenAI-compatible server, with the official client.

    `chat=False` uses the completions endpoint (raw text in, the right call for a base model);
    `chat=True` sends `[{"role": "user", "content": prompt}]` and the server applies the chat template.
    Streaming: one chunk per token, timed on arrival. Not streaming: one timestamp when the whole
    answer arrives (so TTFT is the full latency, which is the point of showing both).
    Streams carry no token counts: pass `prompt_tokens` (see `count_prompt_tokens`) to record it.
    """
    require_positive("max_new_tokens", max_new_tokens)
    kwargs: dict[str, Any] = dict(model=model, max_tokens=max_new_tokens, temperature=0.0, stream=stream)
    if chat:
        call = client.chat.completions.create
        kwargs["messages"] = [{"role": "user", "content": prompt}]
    else:
        call = client.completions.create
        kwargs["prompt"] = prompt
    start = time.perf_counter()
    response = call(**kwargs)
    if not stream:
        total = time.perf_counter() - start
        choice = response.choices[0]
        text = choice.message.content if chat else choice.text
        usage = response.usage
        n = usage.completion_tokens if usage else 0
        _emit(on_text, text or "")
        counted = usage.prompt_tokens if usage else 0
        return Generation(runtime, prompt, text or "", prompt_tokens or counted, [total] * n, total)
    times: list[float] = []
    pieces: list[str] = []
    for chunk in response:
        usage = getattr(chunk, "usage", None)
        if usage and prompt_tokens is None:
            prompt_tokens = usage.prompt_tokens
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        piece = choice.delta.content if chat else choice.text
        if piece is None:  # the opening chunk of a chat stream carries only the role
            continue
        if piece or choice.finish_reason is None:  # one chunk per token; the closing chunk is empty
            times.append(time.perf_counter() - start)
            pieces.append(piece)
            _emit(on_text, piece)
    total = time.perf_counter() - start
    return Generation(runtime, prompt, "".join(pieces), prompt_tokens or 0, times, total)


def count_prompt_tokens(client: Any, model: str, prompt: str) -> int:
    """Prompt length as the server counts it (a 1-token non-streaming request; usage tells)."""
    response = client.completions.create(model=model, prompt=prompt, max_tokens=1, temperature=0.0)
    return int(response.usage.prompt_tokens) if response.usage else 0


@dataclass
class EndpointStatus:
    name: str
    base_url: str
    reachable: bool
    models: list[str]
    message: str

    def __str__(self) -> str:
        return self.message


def _http_get(url: str, headers: dict[str, str], timeout_s: float) -> tuple[int | None, bytes | str]:
    """GET with the standard library: (HTTP status, body), or (None, why) when nothing answered."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as err:
        return err.code, b""
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        if isinstance(reason, ConnectionRefusedError):
            return None, "nothing is listening there"
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return None, f"no answer within {timeout_s:g} s"
        return None, str(reason)


def probe_endpoint(base_url: str, name: str = "server", api_key: str | None = None,
                   timeout_s: float = 2.0) -> EndpointStatus:
    """Ask `GET {base_url}/models` once, waiting at most `timeout_s`. Never raises for a dead server."""
    import json

    base_url = require_loopback(base_url)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    status, body = _http_get(f"{base_url}/models", headers, timeout_s)
    if status is None:
        return EndpointStatus(name, base_url, False, [],
                              f"⏭  {name}: no server at {base_url} ({body}); skipped. "
                              f"Start one (see the commands above) and run this cell again.")
    if status == 401:
        return EndpointStatus(name, base_url, False, [],
                              f"⏭  {name} at {base_url} wants an API key (HTTP 401); pass api_key=...")
    if status != 200:
        return EndpointStatus(name, base_url, False, [],
                              f"⏭  {name} at {base_url} answered HTTP {status}; skipped.")
    try:
        models = [m["id"] for m in json.loads(body).get("data", [])]
    except (ValueError, KeyError, TypeError, AttributeError):
        models = []
    return EndpointStatus(name, base_url, True, models,
                          f"✅ {name} at {base_url} serves: {', '.join(models) or '(no model listed)'}")


def local_endpoints(timeout_s: float = 1.0, endpoints: dict[str, str] | None = None) -> list[EndpointStatus]:
    """Probe the usual local servers (Ollama, vLLM, TGI, LM Studio) on their default ports."""
    return [probe_endpoint(url, name, timeout_s=timeout_s) for name, url in (endpoints or KNOWN_ENDPOINTS).items()]


# ----------------------------------------------------------------------------- the local server


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


# Runs in the child: a watchdog thread that exits when the parent (your kernel) is gone, even when
# the parent was killed with no chance to clean up; then llama-cpp-python's own server entry point.
_LAUNCHER = r"""
import os, runpy, sys, threading, time
parent = int(sys.argv.pop(1))
def watch():
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(0)
threading.Thread(target=watch, daemon=True).start()
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""


def _stop_process(proc: subprocess.Popen, timeout_s: float = 5.0) -> None:
    """SIGTERM the process group, wait, then SIGKILL it. Safe to call twice."""
    if proc.poll() is None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                if hasattr(os, "killpg"):
                    os.killpg(proc.pid, sig)
                else:  # Windows
                    proc.terminate() if sig == signal.SIGTERM else proc.kill()
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=timeout_s)
                break
            except subprocess.TimeoutExpired:
                continue
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        pass


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:]) or "(the server printed nothing)"


class ServerProcess:
    """What labkit's two local servers share (`LlamaServer`, llama-cpp-python's, and `llama_server.LlamaCppServer`,
    llama.cpp's own): a loopback host and port, a subprocess in its own process group with its log in a temporary
    file, the wait until it answers, and a stop that always happens (the `with` block, `stop()`, a finalizer at exit).
    A subclass sets `name` and builds the command in `start()`, then calls `_launch`."""

    name = "server"

    def _init_process(self, host: str, port: int | None, startup_timeout_s: float) -> None:
        if host not in LOOPBACK_HOSTS:
            raise LabkitError(f"host {host!r} would expose the server to the network. Accepted: "
                              f"{', '.join(LOOPBACK_HOSTS)}.")
        if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536):
            raise LabkitError(f"port must be an integer from 1 to 65535 (or None for a free one), got {port!r}")
        require_positive("startup_timeout_s", startup_timeout_s)
        self.host, self.requested_port, self.port = host, port, port
        self.startup_timeout_s = startup_timeout_s
        self.process: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self.startup_s = 0.0
        self._finalizer: weakref.finalize | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _choose_port(self) -> None:
        if self.requested_port is None:
            self.port = free_port(self.host)
        elif port_in_use(self.requested_port, self.host):
            raise LabkitError(f"port {self.requested_port} on {self.host} is already in use (another program, or a "
                              "server you started earlier). Pick another port, or pass port=None for a free one.")

    def _launch(self, cmd: list[str], env: dict[str, str], ready_url: str, headers: dict[str, str]) -> None:
        """Start `cmd` with its output in a log file, then wait until `ready_url` answers 200; on any failure (an
        interrupt too) stop it again, so no half-started server is left behind."""
        fd, log = tempfile.mkstemp(prefix="labkit-llama-server-", suffix=".log")
        self.log_path = Path(log)
        start = time.perf_counter()
        with os.fdopen(fd, "wb") as log_file:
            self.process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                            env=env, start_new_session=True)
        self._finalizer = weakref.finalize(self, _stop_process, self.process)
        try:
            self._wait_until_ready(ready_url, headers)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.perf_counter() - start

    def _wait_until_ready(self, ready_url: str, headers: dict[str, str]) -> None:
        assert self.process is not None
        deadline = time.perf_counter() + self.startup_timeout_s
        while True:
            code = self.process.poll()
            if code is not None:
                raise LabkitError(f"{self.name} exited during start-up (exit code {code}). "
                                  f"Last lines of its log ({self.log_path}):\n{_tail(self.log_path)}")
            status, _ = _http_get(ready_url, headers, timeout_s=1.0)
            if status == 200:
                return
            if time.perf_counter() > deadline:
                raise LabkitError(f"{self.name} did not answer within {self.startup_timeout_s:.0f} s. "
                                  f"Last lines of its log ({self.log_path}):\n{_tail(self.log_path)}")
            time.sleep(0.2)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the server and everything it started. Safe to call more than once."""
        if self._finalizer is not None:
            self._finalizer()  # runs _stop_process once, then the finalizer is dead
            self._finalizer = None
        elif self.process is not None:
            _stop_process(self.process, timeout_s)

    def log(self, lines: int = 15) -> str:
        return _tail(self.log_path, lines) if self.log_path else "(not started)"

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LlamaServer(ServerProcess):
    """llama-cpp-python's OpenAI-compatible server, as a subprocess on loopback.

        with LlamaServer() as server:                  # the bundled model on a free port
            client = server.client()                   # the official openai client
            client.completions.create(model=server.model, prompt="Hello", max_tokens=8)

    The process is stopped when the `with` block ends (also on an exception or a notebook interrupt),
    when the object is garbage-collected, when Python exits (a `weakref.finalize`, which runs at
    exit), and, should your kernel be killed outright, by a watchdog inside the child. It runs in
    its own process group, so stopping it stops everything it started.
    """

    name = "the llama.cpp server"

    def __init__(self, model_path: str | Path | None = None, port: int | None = None, host: str = "127.0.0.1",
                 api_key: str | None = None, n_ctx: int = 2048, n_threads: int | None = None,
                 model_alias: str | None = None, chat_format: str | None = "gemma",
                 startup_timeout_s: float = 300.0, extra_args: Iterable[str] = (), n_gpu_layers: int | None = None):
        self._init_process(host, port, startup_timeout_s)
        self.model_path = model_path
        self.api_key, self.n_ctx = api_key, n_ctx
        self.n_threads = n_threads or cpu_threads()
        self.model = model_alias
        self.chat_format = chat_format
        self.extra_args = list(extra_args)
        self.n_gpu_layers = check_n_gpu_layers(n_gpu_layers)  # None: all layers when the build can offload

    # -- lifecycle

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def start(self) -> LlamaServer:
        """Start the server and wait until it answers; raise LabkitError (with its log) if it cannot."""
        if self.running:
            return self
        try:
            import llama_cpp.server  # noqa: F401  (fail here, not in the child)
        except ImportError as err:
            raise MissingPackageError("llama-cpp-python[server]", "The local OpenAI-compatible server",
                                      extra="llama") from err

        path = bundled_gguf_path() if self.model_path is None else validate_gguf(self.model_path)
        self.model = self.model or (BUNDLED if self.model_path is None else path.stem)
        self._choose_port()
        cmd = [sys.executable, "-c", _LAUNCHER, str(os.getpid()), "--model", str(path), "--host", self.host,
               "--port", str(self.port), "--n_ctx", str(self.n_ctx), "--n_threads", str(self.n_threads),
               "--model_alias", self.model, "--n_gpu_layers", str(resolve_n_gpu_layers(self.n_gpu_layers, path, self.n_ctx)),
               *self.extra_args]
        if self.chat_format:
            cmd += ["--chat_format", self.chat_format]
        env = dict(os.environ, HOST=self.host, PORT=str(self.port))  # the server reads these over its flags
        env.pop("API_KEY", None)
        if self.api_key:
            env["API_KEY"] = self.api_key  # from the environment, so the key is not visible in `ps`
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._launch(cmd, env, f"{self.base_url}/models", headers)
        return self

    def __repr__(self) -> str:
        state = f"running, pid {self.pid}" if self.running else "stopped"
        return f"LlamaServer({self.model or 'bundled model'} at {self.base_url}, {state})"

    # -- talking to it

    def client(self, timeout_s: float = 120.0):
        """The official openai client for this server (with its API key)."""
        return openai_client(self.base_url, api_key=self.api_key, timeout_s=timeout_s)


# ----------------------------------------------------------------------------- chat templates and GGUF names

# Chat templates are Jinja programs shipped with a model (tokenizer_config.json or GGUF metadata).
# Three common families, simplified from the real ones, to show that every family formats a chat differently.
CHAT_TEMPLATES = {
    "gemma": (
        "{{ bos_token }}{% for m in messages %}"
        "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
        "<start_of_turn>{{ role }}\n{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
        "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
    ),
    "chatml": (  # Qwen, SmolLM, many fine-tunes
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
    "llama3": (
        "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
        "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    ),
}
def guide_markdown(rows: list[dict] | None = None) -> str:
    """RUNTIME_GUIDE as a Markdown table (show it with IPython.display.Markdown)."""
    return table(rows or RUNTIME_GUIDE, "markdown", ["runtime", "engine", "hardware", "formats", "api", "fits"])


_BOS = {"gemma": "<bos>", "chatml": "", "llama3": "<|begin_of_text|>"}


def render_chat(messages: list[dict], style: str = "gemma", add_generation_prompt: bool = True) -> str:
    """The exact text a chat becomes before tokenization, in one of CHAT_TEMPLATES' styles."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    if style not in CHAT_TEMPLATES:
        raise unknown("chat template", style, CHAT_TEMPLATES)
    if not isinstance(messages, list) or not all(isinstance(m, dict) and {"role", "content"} <= m.keys()
                                                 for m in messages):
        raise LabkitError('messages must be a list of {"role": ..., "content": ...} dicts')
    env = ImmutableSandboxedEnvironment(trim_blocks=False, lstrip_blocks=False)
    return env.from_string(CHAT_TEMPLATES[style]).render(messages=messages, bos_token=_BOS[style],
                                                         add_generation_prompt=add_generation_prompt)


# Bits per weight of GGUF types: the course's one table (labkit.dtypes) plus the GGUF-only types,
# from llama.cpp's quantize table (effective bits, scales included; K-quant mixes vary a little by model).
GGUF_BITS_PER_WEIGHT = {
    "F32": BITS_PER_WEIGHT["fp32"], "F16": BITS_PER_WEIGHT["fp16"], "BF16": BITS_PER_WEIGHT["bf16"],
    **{k: v for k, v in BITS_PER_WEIGHT.items() if k.startswith("Q")},
    "Q5_K_S": 5.54, "Q5_0": 5.5, "Q4_K_S": 4.58, "IQ4_XS": 4.25, "Q3_K_S": 3.5, "IQ2_XS": 2.31,
}
_QUANT_RE = re.compile(r"[-_.](" + "|".join(sorted(GGUF_BITS_PER_WEIGHT, key=len, reverse=True)) + r")$", re.I)
_SIZE_RE = re.compile(r"(?:^|[-_])(\d+(?:\.\d+)?[BM])(?=$|[-_])", re.I)
_INSTRUCT_RE = re.compile(r"(?:^|[-_])(instruct|chat|it)(?=$|[-_])", re.I)


@dataclass(frozen=True)
class GgufName:
    model: str
    size: str | None
    instruct: bool
    quant: str
    bits_per_weight: float | None


def parse_gguf_name(filename: str) -> GgufName:
    """Read a GGUF file name the way the community writes them: Name-Size-Variant-QUANT.gguf.

    >>> parse_gguf_name("Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf").quant
    'Q4_K_M'
    """
    if not isinstance(filename, str) or not filename.lower().endswith(".gguf"):
        raise LabkitError(f"{filename!r} is not a GGUF file name (those end in .gguf, e.g. "
                          "'Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf').")
    stem = Path(filename).name[:-5]
    match = _QUANT_RE.search(stem)
    if not match:
        raise LabkitError(f"no quantization type found at the end of {filename!r}. Known types: "
                          f"{', '.join(GGUF_BITS_PER_WEIGHT)}")
    quant = match.group(1).upper()
    rest = stem[:match.start()]
    size = _SIZE_RE.search(rest)
    return GgufName(model=rest, size=size.group(1).upper() if size else None,
                    instruct=bool(_INSTRUCT_RE.search(rest)), quant=quant,
                    bits_per_weight=GGUF_BITS_PER_WEIGHT.get(quant))


@exercise("02.gguf_quant", hint="The quantization type is the last part of the name before '.gguf', "
                                "e.g. Q4_K_M or Q8_0.", answer="name")
def _expected_gguf_quant(filename: str) -> str:
    return parse_gguf_name(filename).quant


@exercise("02.gguf_file_gb", hint="File size ≈ parameters × bits per weight / 8 bytes; divide by 1e9 for GB. "
                                  "Look the bits up in runtimes.GGUF_BITS_PER_WEIGHT.", rtol=0.02,
          slips={**GIB_FOR_GB, **BITS_FOR_BYTES})
def _expected_gguf_gb(filename: str, parameters: float) -> float:
    bits = parse_gguf_name(filename).bits_per_weight
    return parameters * bits / 8 / 1e9
