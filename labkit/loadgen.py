"""The load generator: many users against any OpenAI-compatible server, and what they measured.

A chat user feels two numbers: how long until the first word appears (TTFT, time to first token) and how fast the
rest follows (ITL, inter-token latency: the average gap between two tokens of one answer). A server with many users
adds two more: tokens per second for all of them (throughput), and requests per second finished *within a latency
target* (goodput). Averages hide the users who wait, so runs are read as percentiles (P50, P99).

`run_load` is an asyncio client that streams from the server and plays a fixed number of users (closed loop) or an
arrival rate (open loop), bounded in users, requests and time: a run that reaches its time limit stops by itself and
reports what it measured. Each request's `RequestRecord` holds the arrival time of every token; a `LoadResult` gives
percentiles, throughput and goodput under an `Slo`. Loopback only (`runtimes.require_loopback`).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import LabkitError, require_count, require_positive, unknown
from .runtimes import require_loopback

# ============================================================================ requests, records, runs

MAX_USERS = 256  # concurrent users (or requests in flight) one run may drive
MAX_REQUESTS = 5000
MAX_TOKENS = 8192
MAX_TIME_LIMIT_S = 3600.0


@dataclass(frozen=True)
class Prompt:
    """One request's text, how many tokens it may generate, and a label for grouping ('short', 'long', ...)."""

    text: str
    max_tokens: int
    kind: str = "prompt"
    expected: str | None = None  # the right answer, where the task has one (JSON tasks)


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
                f" | TTFT P50 {format_ms(s['ttft_p50_s'])} P99 {format_ms(s['ttft_p99_s'])}"
                f" | ITL P50 {format_ms(s['itl_p50_s'])} P99 {format_ms(s['itl_p99_s'])}{fail}{stop}")


METRICS = ("ttft_s", "itl_s", "e2e_s", "decode_tokens_per_s")


def format_ms(seconds: float) -> str:
    """Seconds as rounded milliseconds ("1,234 ms"), or "n/a"."""
    return "n/a" if seconds is None or math.isnan(seconds) else f"{seconds * 1000:,.0f} ms"


# ============================================================================ the load generator


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
    from tqdm.auto import tqdm  # progress bars: imported when a run starts

    if (users is None) == (rate is None):
        raise LabkitError("give either users (a fixed number of concurrent users) or rate (requests per second), "
                          "not both and not neither")
    if users is not None:
        require_count("users", users, 1, MAX_USERS)
    if rate is not None:
        require_positive("rate", rate)
        if rate > 1000:
            raise LabkitError(f"rate must be at most 1000 requests per second, got {rate!r}")
    require_count("max_tokens", max_tokens, 1, MAX_TOKENS)
    n_requests = requests if requests is not None else 2 * (users or 1)
    require_count("requests", n_requests, 1, MAX_REQUESTS)
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


# ============================================================================ metrics


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
        lines.append(f"| {r.label} | {done} | {s['tokens_per_s']:,.1f} | {format_ms(s['ttft_p50_s'])} | "
                     f"{format_ms(s['ttft_p99_s'])} | {format_ms(s['itl_p50_s'])} | {format_ms(s['itl_p99_s'])} | "
                     f"{s['e2e_p99_s']:.2f} s | {s['goodput_rps']:.2f} ({s['slo_share']:.0%}) |")
    return "\n".join(lines)


# ============================================================================ sweeps


def sweep_users(base_url: str, model: str | None, prompts: Sequence[Prompt], users: Sequence[int] = (1, 2, 4, 8),
                requests_per_user: int = 2, time_limit_s: float = 60.0, **kwargs: Any) -> list[LoadResult]:
    """`run_load` at each number of users (closed loop), `requests_per_user` requests each, in order."""
    from tqdm.auto import tqdm

    if not users:
        raise LabkitError("users is empty: give the numbers of users to try, e.g. (1, 2, 4, 8)")
    require_count("requests_per_user", requests_per_user, 1, MAX_REQUESTS)
    return [run_load(base_url, model, prompts, users=u, requests=u * requests_per_user, time_limit_s=time_limit_s,
                     **kwargs) for u in tqdm(list(users), desc="users")]


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
