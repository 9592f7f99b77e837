"""labkit.loadgen: the metrics (percentiles, ITL, goodput, the knee) and the load generator against small
OpenAI-style servers that misbehave on purpose (no streaming, not OpenAI, too slow, no token counts)."""

import contextlib
import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from labkit import loadgen
from labkit.errors import LabkitError

# ----------------------------------------------------------------------------- a tiny OpenAI-style server
# Stands in for servers that misbehave (no streaming, very slow, no token counts) in ways the real llama-server does
# not on demand; tests/test_llama_server.py runs the load generator against the real one.


class _Handler(BaseHTTPRequestHandler):
    mode = "stream"  # "stream": one token per `gap_s`; "plain": a JSON answer (no streaming); "garbage": not JSON
    gap_s = 0.05
    tokens = 5
    usage = True  # False: streams carry no token counts (llama-cpp-python's server); plain answers still do

    def log_message(self, *args):
        pass

    def do_GET(self):
        body = b"<html>hello</html>" if self.mode == "garbage" else json.dumps({"data": [{"id": "stub"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        request = json.loads(self.rfile.read(length))
        if self.mode == "plain" or not request.get("stream"):
            words = len(request.get("prompt", "").split())
            body = json.dumps({"choices": [{"text": "hello", "finish_reason": "stop"}],
                               "usage": {"prompt_tokens": words, "completion_tokens": 1}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        n = min(self.tokens, request.get("max_tokens", self.tokens))
        try:
            for i in range(n):
                time.sleep(self.gap_s)
                chunk = {"choices": [{"text": f" t{i}", "finish_reason": None}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
            final = {"choices": [{"text": "", "finish_reason": "length"}]}
            if self.usage:
                final["usage"] = {"prompt_tokens": 3, "completion_tokens": n}
            self.wfile.write(f"data: {json.dumps(final)}\n\ndata: [DONE]\n\n".encode())
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):  # the client went away (time limit)
            pass


@contextlib.contextmanager
def stub_server(**attrs):
    handler = type("Handler", (_Handler,), attrs)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _record(ttft, itl, n=5, **kw):
    times = [ttft + i * itl for i in range(n)]
    return loadgen.RequestRecord(0, 0, "x", 0.0, token_times=times, e2e_s=times[-1], output_tokens=n, **kw)


@pytest.mark.parametrize("p", [0, 50, 90, 99, 100])
def test_percentile_is_numpys_linear_interpolation(p):
    values = [0.3, 0.1, 0.9, 0.5, 0.7, 0.2]
    assert loadgen.percentile(values, p) == pytest.approx(np.percentile(values, p))


def test_percentile_of_a_small_sample_lies_between_the_two_largest():
    values = list(range(1, 11))  # P99 of 10 values: 9 + 0.91 x (10 - 9)
    assert loadgen.percentile(values, 99) == pytest.approx(9.91)
    assert math.isnan(loadgen.percentile([], 50))
    assert loadgen.percentile([1.0, float("nan"), 3.0], 50) == 2.0  # failed requests (nan) are left out


@pytest.mark.parametrize("p", [-1, 101, "99", True, None])
def test_percentile_rejects_bad_p(p):
    with pytest.raises(LabkitError, match="percentile"):
        loadgen.percentile([1, 2], p)


def test_request_record_latencies():
    r = _record(ttft=0.5, itl=0.1, n=6)
    assert r.ttft_s == 0.5
    assert r.itl_s == pytest.approx(0.1)
    assert r.decode_tokens_per_s == pytest.approx(10)
    assert r.meets(loadgen.Slo(1.0, 0.1 + 1e-9)) and not r.meets(loadgen.Slo(0.4, 1.0))
    assert not r.meets(loadgen.Slo(1.0, 0.05))
    # several tokens in one chunk (speculation): ITL divides the time by the tokens the server counted
    r2 = loadgen.RequestRecord(0, 0, "x", 0.0, token_times=[0.2, 0.5], e2e_s=0.5, output_tokens=4)
    assert r2.itl_s == pytest.approx(0.1)
    failed = loadgen.RequestRecord(0, 0, "x", 0.0, error="HTTP 500")
    assert not failed.ok and math.isnan(failed.ttft_s) and not failed.meets(loadgen.Slo())


def test_goodput_counts_only_requests_meeting_both_targets():
    records = [_record(0.2, 0.05), _record(2.0, 0.05), _record(0.2, 0.3),
               loadgen.RequestRecord(3, 0, "x", 0.0, error="refused")]
    assert loadgen.goodput(records, 2.0, loadgen.Slo(1.0, 0.1)) == 0.5
    assert loadgen.goodput(records, 2.0, loadgen.Slo(5.0, 1.0)) == 1.5
    with pytest.raises(LabkitError):
        loadgen.goodput(records, 0, loadgen.Slo())


@pytest.mark.parametrize("ttft, itl", [(0, 0.1), (1, -1), (float("nan"), 1)])
def test_slo_rejects_non_positive_targets(ttft, itl):
    with pytest.raises(LabkitError):
        loadgen.Slo(ttft, itl)


def test_knee_and_users_meeting_a_target():
    def result(users, tps, ttft, itl):
        recs = [_record(ttft, itl) for _ in range(users)]
        return loadgen.LoadResult(f"{users}", "http://127.0.0.1:1/v1", "m", users, None, recs,
                                  wall_s=sum(r.output_tokens for r in recs) / tps, time_limit_s=60)

    runs = [result(1, 10, 0.1, 0.02), result(2, 19, 0.2, 0.03), result(4, 30, 0.5, 0.05), result(8, 31, 1.5, 0.09)]
    assert loadgen.knee_users(runs) == 4  # 30 >= 90% of 31
    assert loadgen.max_users_meeting(runs, loadgen.Slo(1.0, 0.1)) == 4
    assert loadgen.max_users_meeting(runs, loadgen.Slo(2.0, 0.1)) == 8
    assert loadgen.max_users_meeting([r.summary() for r in runs], loadgen.Slo(0.15, 1)) == 1
    assert loadgen.max_users_meeting(runs, loadgen.Slo(0.01, 1)) == 0
    with pytest.raises(LabkitError):
        loadgen.max_users_meeting(runs, loadgen.Slo(), p=90)


@pytest.mark.parametrize("kwargs, match", [
    (dict(), "either users"), (dict(users=2, rate=1.0), "either users"), (dict(users=0), "users"),
    (dict(users=loadgen.MAX_USERS + 1), "users"), (dict(users=True), "users"), (dict(rate=-1), "rate"),
    (dict(rate=5000), "rate"), (dict(users=1, requests=0), "requests"),
    (dict(users=1, requests=loadgen.MAX_REQUESTS + 1), "requests"), (dict(users=1, time_limit_s=0), "time_limit"),
    (dict(users=1, time_limit_s=1e6), "time_limit"), (dict(users=1, max_tokens=0), "max_tokens"),
])
def test_run_load_bounds(kwargs, match):
    with pytest.raises(LabkitError, match=match):
        loadgen.run_load("http://127.0.0.1:9/v1", "m", ["hi"], **kwargs)


def test_run_load_refuses_remote_hosts_and_empty_prompts():
    with pytest.raises(LabkitError, match="not on this machine"):
        loadgen.run_load("https://api.openai.com/v1", "gpt-4o", ["hi"], users=1)
    with pytest.raises(LabkitError, match="prompts is empty"):
        loadgen.run_load("http://127.0.0.1:9/v1", "m", [], users=1)


def test_nothing_listening_is_a_clear_error_naming_the_url():
    from labkit.runtimes import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(LabkitError, match="connection refused") as err:
        loadgen.run_load(url, "m", ["hi"], users=1)
    assert f"{url}/models" in str(err.value) and "OpenAI-compatible" in str(err.value)


def test_a_server_that_does_not_stream_is_a_clear_error():
    with stub_server(mode="plain") as url, pytest.raises(LabkitError, match="without streaming") as err:
        loadgen.run_load(url, None, ["hi"], users=1)
    assert f"{url}/completions" in str(err.value)


def test_a_server_that_is_not_openai_compatible_is_a_clear_error():
    with stub_server(mode="garbage") as url, pytest.raises(LabkitError, match="expected an OpenAI-compatible") as err:
        loadgen.run_load(url, None, ["hi"], users=1)
    assert f"{url}/models" in str(err.value)


def test_closed_loop_records_every_token_and_request():
    with stub_server(gap_s=0.01, tokens=5) as url:
        result = loadgen.run_load(url, None, ["a", "b", "c"], users=2, requests=5, max_tokens=4, progress=False)
    assert result.stopped is None and result.not_started == 0
    assert [r.index for r in result.records] == list(range(5))
    assert {r.user for r in result.records} == {0, 1}
    assert all(r.ok and r.output_tokens == 4 and len(r.token_times) == 4 for r in result.records)
    assert result.records[1].text == " t0 t1 t2 t3"
    assert result.output_tokens == 20
    assert result.tokens_per_s == pytest.approx(20 / result.wall_s)
    assert all(r.sent_s + r.e2e_s <= result.wall_s + 1e-6 for r in result.records)
    assert "5 requests" in str(result)


def test_prompt_tokens_are_counted_afterwards_when_streams_carry_no_usage():
    with stub_server(gap_s=0.0, tokens=3, usage=False) as url:
        result = loadgen.run_load(url, None, ["one two", "one two three four"], users=1, requests=3, max_tokens=3,
                                  progress=False)
    assert [r.prompt_tokens for r in result.records] == [2, 4, 2]  # one untimed count per distinct prompt
    assert [r.output_tokens for r in result.records] == [3, 3, 3]  # counted from the chunks
    assert result.mean_prompt_tokens == pytest.approx(8 / 3)


def test_a_run_past_its_time_limit_stops_by_itself_and_reports_what_it_measured():
    # each answer takes 50 x 0.1 s = 5 s: a 1 s limit cuts every one of them off mid-stream
    with stub_server(gap_s=0.1, tokens=50) as url:
        start = time.perf_counter()
        result = loadgen.run_load(url, None, ["a"], users=2, requests=6, max_tokens=50, time_limit_s=1.0,
                                  progress=False)
        took = time.perf_counter() - start
    assert result.stopped and result.stopped.startswith("time limit of 1 s reached")
    assert "2 requests cut off, 4 not sent" in result.stopped
    assert all(r.cut_off for r in result.records) and not result.completed
    assert result.output_tokens == sum(len(r.token_times) for r in result.records)
    assert took < 4.5  # it did not wait for the 5 s answers
    assert "STOPPED" in str(result)


def test_open_loop_sends_at_a_rate():
    with stub_server(gap_s=0.0, tokens=2) as url:
        result = loadgen.run_load(url, None, ["a"], rate=200.0, requests=12, max_tokens=2, progress=False, seed=1)
    assert len(result.completed) == 12 and result.users is None and result.rate == 200.0
    sent = [r.sent_s for r in result.records]
    assert sent == sorted(sent) and sent[-1] > 0
