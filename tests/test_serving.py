"""labkit.serving: metrics, the load generator (bounds, time limit, bad servers), the capacity planner, the
exercises, the committed-results loader, and llama.cpp's llama-server with the bundled model (continuous batching,
prefix cache, JSON schema, n-gram speculation, no orphans)."""

import contextlib
import json
import math
import os
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import psutil
import pytest

from labkit import check, serving, serving_widget
from labkit import llama_server_build as build
from labkit.check import evaluate
from labkit.errors import LabkitError

# ----------------------------------------------------------------------------- a tiny OpenAI-style server
# Stands in for servers that misbehave (no streaming, very slow) in ways the real llama-server does not on demand.


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
    return serving.RequestRecord(0, 0, "x", 0.0, token_times=times, e2e_s=times[-1], output_tokens=n, **kw)


# ----------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("p", [0, 50, 90, 99, 100])
def test_percentile_is_numpys_linear_interpolation(p):
    values = [0.3, 0.1, 0.9, 0.5, 0.7, 0.2]
    assert serving.percentile(values, p) == pytest.approx(np.percentile(values, p))


def test_percentile_of_a_small_sample_lies_between_the_two_largest():
    values = list(range(1, 11))  # P99 of 10 values: 9 + 0.91 x (10 - 9)
    assert serving.percentile(values, 99) == pytest.approx(9.91)
    assert math.isnan(serving.percentile([], 50))
    assert serving.percentile([1.0, float("nan"), 3.0], 50) == 2.0  # failed requests (nan) are left out


@pytest.mark.parametrize("p", [-1, 101, "99", True, None])
def test_percentile_rejects_bad_p(p):
    with pytest.raises(LabkitError, match="percentile"):
        serving.percentile([1, 2], p)


def test_request_record_latencies():
    r = _record(ttft=0.5, itl=0.1, n=6)
    assert r.ttft_s == 0.5
    assert r.itl_s == pytest.approx(0.1)
    assert r.decode_tokens_per_s == pytest.approx(10)
    assert r.meets(serving.Slo(1.0, 0.1 + 1e-9)) and not r.meets(serving.Slo(0.4, 1.0))
    assert not r.meets(serving.Slo(1.0, 0.05))
    # several tokens in one chunk (speculation): ITL divides the time by the tokens the server counted
    r2 = serving.RequestRecord(0, 0, "x", 0.0, token_times=[0.2, 0.5], e2e_s=0.5, output_tokens=4)
    assert r2.itl_s == pytest.approx(0.1)
    failed = serving.RequestRecord(0, 0, "x", 0.0, error="HTTP 500")
    assert not failed.ok and math.isnan(failed.ttft_s) and not failed.meets(serving.Slo())


def test_goodput_counts_only_requests_meeting_both_targets():
    records = [_record(0.2, 0.05), _record(2.0, 0.05), _record(0.2, 0.3),
               serving.RequestRecord(3, 0, "x", 0.0, error="refused")]
    assert serving.goodput(records, 2.0, serving.Slo(1.0, 0.1)) == 0.5
    assert serving.goodput(records, 2.0, serving.Slo(5.0, 1.0)) == 1.5
    with pytest.raises(LabkitError):
        serving.goodput(records, 0, serving.Slo())


@pytest.mark.parametrize("ttft, itl", [(0, 0.1), (1, -1), (float("nan"), 1)])
def test_slo_rejects_non_positive_targets(ttft, itl):
    with pytest.raises(LabkitError):
        serving.Slo(ttft, itl)


def test_knee_and_users_meeting_a_target():
    def result(users, tps, ttft, itl):
        recs = [_record(ttft, itl) for _ in range(users)]
        return serving.LoadResult(f"{users}", "http://127.0.0.1:1/v1", "m", users, None, recs,
                                  wall_s=sum(r.output_tokens for r in recs) / tps, time_limit_s=60)

    runs = [result(1, 10, 0.1, 0.02), result(2, 19, 0.2, 0.03), result(4, 30, 0.5, 0.05), result(8, 31, 1.5, 0.09)]
    assert serving.knee_users(runs) == 4  # 30 >= 90% of 31
    assert serving.max_users_meeting(runs, serving.Slo(1.0, 0.1)) == 4
    assert serving.max_users_meeting(runs, serving.Slo(2.0, 0.1)) == 8
    assert serving.max_users_meeting([r.summary() for r in runs], serving.Slo(0.15, 1)) == 1
    assert serving.max_users_meeting(runs, serving.Slo(0.01, 1)) == 0
    with pytest.raises(LabkitError):
        serving.max_users_meeting(runs, serving.Slo(), p=90)


def test_prompt_sets():
    mix = serving.prompt_mix(10, 8, long_share=0.4)
    assert [p.kind for p in mix].count("long") == 4
    assert [p.kind for p in serving.prompt_mix(4, 8)] == ["short", "long"] * 2  # spread evenly: runs compare
    assert len({p.text.split()[1] for p in mix}) == 10  # every prompt starts differently (no shared prefix)
    shared = serving.shared_prefix_prompts(3, 8)
    prefix = os.path.commonprefix([p.text for p in shared])
    assert len(prefix) > 1000 and all(len(p.text) > len(prefix) for p in shared)
    weather = serving.weather_prompts(3, examples=2)
    assert all(p.text.endswith("JSON:") and p.text.count("JSON: {") == 2 for p in weather)
    assert all(serving.check_json(p.expected, serving.WEATHER_SCHEMA).valid for p in weather)
    with pytest.raises(LabkitError):
        serving.prompt_mix(0, 8)
    with pytest.raises(LabkitError):
        serving.prompt_mix(4, 8, long_share=2)


def test_check_json_against_the_schema():
    schema = serving.WEATHER_SCHEMA
    assert serving.check_json('{"city": "Oslo", "sky": "sunny", "temp_c": 3}', schema).valid
    c = serving.check_json('{"city": "Oslo", "sky": "purple", "temp_c": 3}', schema)
    assert c.parses and not c.valid and "purple" in c.problem
    c = serving.check_json('{"city": "Oslo", "sky": "sunny"', schema)
    assert not c.parses and "not JSON" in c.problem


# ----------------------------------------------------------------------------- the load generator: bounds and bad servers


@pytest.mark.parametrize("kwargs, match", [
    (dict(), "either users"), (dict(users=2, rate=1.0), "either users"), (dict(users=0), "users"),
    (dict(users=serving.MAX_USERS + 1), "users"), (dict(users=True), "users"), (dict(rate=-1), "rate"),
    (dict(rate=5000), "rate"), (dict(users=1, requests=0), "requests"),
    (dict(users=1, requests=serving.MAX_REQUESTS + 1), "requests"), (dict(users=1, time_limit_s=0), "time_limit"),
    (dict(users=1, time_limit_s=1e6), "time_limit"), (dict(users=1, max_tokens=0), "max_tokens"),
])
def test_run_load_bounds(kwargs, match):
    with pytest.raises(LabkitError, match=match):
        serving.run_load("http://127.0.0.1:9/v1", "m", ["hi"], **kwargs)


def test_run_load_refuses_remote_hosts_and_empty_prompts():
    with pytest.raises(LabkitError, match="not on this machine"):
        serving.run_load("https://api.openai.com/v1", "gpt-4o", ["hi"], users=1)
    with pytest.raises(LabkitError, match="prompts is empty"):
        serving.run_load("http://127.0.0.1:9/v1", "m", [], users=1)


def test_nothing_listening_is_a_clear_error_naming_the_url():
    from labkit.runtimes import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(LabkitError, match="connection refused") as err:
        serving.run_load(url, "m", ["hi"], users=1)
    assert f"{url}/models" in str(err.value) and "OpenAI-compatible" in str(err.value)


def test_a_server_that_does_not_stream_is_a_clear_error():
    with stub_server(mode="plain") as url, pytest.raises(LabkitError, match="without streaming") as err:
        serving.run_load(url, None, ["hi"], users=1)
    assert f"{url}/completions" in str(err.value)


def test_a_server_that_is_not_openai_compatible_is_a_clear_error():
    with stub_server(mode="garbage") as url, pytest.raises(LabkitError, match="expected an OpenAI-compatible") as err:
        serving.run_load(url, None, ["hi"], users=1)
    assert f"{url}/models" in str(err.value)


def test_closed_loop_records_every_token_and_request():
    with stub_server(gap_s=0.01, tokens=5) as url:
        result = serving.run_load(url, None, ["a", "b", "c"], users=2, requests=5, max_tokens=4, progress=False)
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
        result = serving.run_load(url, None, ["one two", "one two three four"], users=1, requests=3, max_tokens=3,
                                  progress=False)
    assert [r.prompt_tokens for r in result.records] == [2, 4, 2]  # one untimed count per distinct prompt
    assert [r.output_tokens for r in result.records] == [3, 3, 3]  # counted from the chunks
    assert result.mean_prompt_tokens == pytest.approx(8 / 3)


def test_a_run_past_its_time_limit_stops_by_itself_and_reports_what_it_measured():
    # each answer takes 50 x 0.1 s = 5 s: a 1 s limit cuts every one of them off mid-stream
    with stub_server(gap_s=0.1, tokens=50) as url:
        start = time.perf_counter()
        result = serving.run_load(url, None, ["a"], users=2, requests=6, max_tokens=50, time_limit_s=1.0,
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
        result = serving.run_load(url, None, ["a"], rate=200.0, requests=12, max_tokens=2, progress=False, seed=1)
    assert len(result.completed) == 12 and result.users is None and result.rate == 200.0
    sent = [r.sent_s for r in result.records]
    assert sent == sorted(sent) and sent[-1] > 0


# ----------------------------------------------------------------------------- the capacity planner


def test_estimate_load_by_hand():
    # 1 GB of weights at 100 GB/s: a step of one user reads for 10 ms; 2 GFLOP per user at 1 TFLOP/s is 2 ms
    e = serving.estimate_load(1, 500, 100, 1e9, 0.0, 100e9, 1e12, decode_params=1e9, prefill_params=0.5e9)
    assert (e.step_s, e.bound, e.itl_s) == (pytest.approx(0.01), "memory", pytest.approx(0.01))
    assert e.prefill_s == pytest.approx(2 * 0.5e9 * 500 / 1e12)  # 0.5 s of arithmetic for the prompt
    assert e.tokens_per_s == pytest.approx(100 / (0.5 + 100 * 0.01))
    e8 = serving.estimate_load(8, 500, 100, 1e9, 0.0, 100e9, 1e12, decode_params=1e9, prefill_params=0.5e9)
    assert e8.bound == "compute" and e8.step_s == pytest.approx(0.016)
    assert e8.itl_s == pytest.approx(0.016 + 7 * 0.5 / 100)  # the other 7 users' prompts, spread over 100 tokens
    assert e8.ttft_burst_s == pytest.approx(8 * 0.5 + 0.016)
    with pytest.raises(LabkitError):
        serving.estimate_load(0, 500, 100, 1e9, 0.0, 100e9, 1e12, 1e9)


def test_model_parameters_leave_out_what_a_token_does_not_multiply():
    from labkit.vram import parameter_count

    decode, prefill = serving.model_parameters("gemma-3-270m")  # tied embedding: the output layer reads it
    assert decode == parameter_count("gemma-3-270m") and prefill < decode / 2
    decode8, prefill8 = serving.model_parameters("llama-3.1-8b")  # untied: the input embedding is only gathered
    assert parameter_count("llama-3.1-8b") - decode8 == pytest.approx(525_336_576)
    assert decode8 - prefill8 == pytest.approx(525_336_576)


def test_plan_capacity_limits_are_consistent():
    slo = serving.Slo(1.0, 0.1)
    plan = serving.plan_capacity("llama-3.1-8b", "T4", "Q4_K_M", prompt_tokens=512, new_tokens=256, slo=slo,
                                 efficiency=0.5)
    assert plan.users == min(plan.users_by_memory, plan.users_by_itl, plan.users_by_ttft) > 0
    # the ITL limit is the last user count whose estimated ITL meets the target
    assert plan.at(plan.users_by_itl).itl_s <= slo.itl_s < plan.at(plan.users_by_itl + 1).itl_s
    # memory: KV caches of users_by_memory fit, one more does not
    free = plan.device.memory_bytes - plan.weight_bytes - plan.device.overhead_bytes
    assert plan.users_by_memory * plan.kv_bytes_per_user <= free < (plan.users_by_memory + 1) * plan.kv_bytes_per_user
    longer = serving.plan_capacity("llama-3.1-8b", "T4", "Q4_K_M", 16384, 256, slo)
    assert longer.users_by_memory < plan.users_by_memory
    faster = serving.plan_capacity("llama-3.1-8b", "T4", "Q4_K_M", 512, 256, slo, efficiency=1.0)
    assert faster.users_by_itl > plan.users_by_itl
    assert "limited by" in plan.text()
    measured = serving.this_machine(10e9, 50e9, memory_bytes=2**33, compute_efficiency=0.8)
    assert serving.plan_capacity("gemma-3-270m", measured, "Q4_K_M", 128, 16, slo, 0.4).compute_efficiency == 0.8


def test_plan_capacity_says_zero_when_the_weights_alone_are_too_slow():
    plan = serving.plan_capacity("llama-3.1-70b", "T4", "bf16", 4096, 512, serving.Slo(1.0, 0.01))
    assert plan.users_by_itl == 0 and plan.users_by_memory == 0 and plan.users == 0


@pytest.mark.parametrize("kwargs", [dict(weights="fp8"), dict(efficiency=0), dict(efficiency=1.5),
                                    dict(prompt_tokens=0), dict(new_tokens=0), dict(device="GTX 9")])
def test_plan_capacity_bad_input(kwargs):
    with pytest.raises(LabkitError):
        serving.plan_capacity(**kwargs)


def test_measured_efficiency_is_the_share_of_the_roofline():
    assert serving.measured_efficiency(50, 1e9, 0, 100e9) == pytest.approx(0.5)
    assert serving.measured_efficiency(500, 1e9, 0, 100e9) == 1.0


def test_planner_widget_shows_the_estimate_and_a_matching_measurement():
    here = serving.this_machine(10e9, 50e9, memory_bytes=8 * 2**30)
    rows = ({"users": 1, "completed": 2, "failed": 0, "ttft_p99_s": 0.2, "itl_p99_s": 0.03},
            {"users": 4, "completed": 8, "failed": 0, "ttft_p99_s": 0.9, "itl_p99_s": 0.08},
            {"users": 8, "completed": 16, "failed": 0, "ttft_p99_s": 2.5, "itl_p99_s": 0.15})
    measured = (serving_widget.Measured("this machine", "gemma-3-270m", "Q4_K_M", 130, 16, rows, "your sweep"),)
    text = serving_widget.planner_html("gemma-3-270m", "this machine", "Q4_K_M", 128, 16, 1000, 100, 0.3,
                                       devices={"this machine": here}, measured=measured)
    assert "ESTIMATE" in text and "MEASURED  your sweep: 4 concurrent users" in text
    other = serving_widget.planner_html("llama-3.1-8b", "NVIDIA T4", "Q4_K_M", 4096, 256, 1000, 100, 0.5,
                                        measured=measured)
    assert "MEASURED" not in other
    box = serving_widget.capacity_planner(device="NVIDIA T4")
    before = box.output.value
    box.controls["itl_ms"].value = 300
    assert box.output.value != before and "ITL ≤ 300 ms" in box.output.value


# ----------------------------------------------------------------------------- exercises


def test_p99_exercise_and_its_slips():
    ttft = [0.21, 0.25, 0.3, 0.33, 0.4, 0.52, 0.61, 0.9, 1.4, 2.2]
    check("09.p99_ttft_ms", np.percentile(ttft, 99) * 1000, ttft_s=ttft)
    assert evaluate("09.p99_ttft_ms", 2200, ttft_s=ttft).slip.startswith("taking the largest")
    assert evaluate("09.p99_ttft_ms", np.mean(ttft) * 1000, ttft_s=ttft).slip.startswith("averaging")
    assert evaluate("09.p99_ttft_ms", np.percentile(ttft, 99), ttft_s=ttft).slip.startswith("leaving it in seconds")


def test_goodput_exercise_and_its_slips():
    ttft = [0.2, 0.4, 1.5, 0.3, 2.0]
    itl = [0.05, 0.2, 0.05, 0.08, 0.3]
    ctx = dict(ttft_s=ttft, itl_s=itl, wall_s=4.0, ttft_target_s=1.0, itl_target_s=0.1)
    check("09.goodput", 2 / 4.0, **ctx)
    assert evaluate("09.goodput", 5 / 4.0, **ctx).slip.startswith("counting every request")
    assert evaluate("09.goodput", 3 / 4.0, **ctx).slip == "checking only the TTFT target"
    assert evaluate("09.goodput", 2 / 5, **ctx).slip.startswith("giving the share")
    with pytest.raises(LabkitError):
        evaluate("09.goodput", 1, ttft_s=[], itl_s=[], wall_s=1, ttft_target_s=1, itl_target_s=1)


def test_break_even_batch_exercise_and_its_slips():
    ctx = dict(tflops=989, bandwidth_gbps=3350, bytes_per_parameter=4.84 / 8)
    expected = 989e12 * (4.84 / 8) / (2 * 3350e9)
    check("09.break_even_batch", expected, **ctx)
    assert evaluate("09.break_even_batch", 2 * expected, **ctx).slip.startswith("forgetting")
    assert evaluate("09.break_even_batch", 8 * expected, **ctx).slip.startswith("using bits")
    with pytest.raises(AssertionError, match="Hint"):
        check("09.break_even_batch", expected * 3, **ctx)


# ----------------------------------------------------------------------------- committed results, finding the server


def test_committed_gpu_results_load_through_the_datasets_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_DATASETS", str(tmp_path))
    assert serving.load_gpu_results() is None and serving.committed_gpu_throughput() == {}
    (tmp_path / "results").mkdir()
    rows = [{"users": 1, "completed": 2, "tokens_per_s": 200.0, "decode_tokens_per_s_p50": 201.0,
             "ttft_p50_s": 0.02, "ttft_p99_s": 0.03, "itl_p50_s": 0.005, "itl_p99_s": 0.006},
            {"users": 8, "completed": 16, "tokens_per_s": 1400.0, "decode_tokens_per_s_p50": 176.0,
             "ttft_p50_s": 0.05, "ttft_p99_s": 0.09, "itl_p50_s": 0.006, "itl_p99_s": 0.007}]
    (tmp_path / "results" / "serving_gpu.json").write_text(json.dumps({"sweep": rows}))
    assert serving.committed_gpu_throughput() == {1: 200.0, 8: 1400.0}
    assert "| 8 | 16 | 1,400 |" in serving.gpu_sweep_markdown(serving.load_gpu_results())


@pytest.mark.parametrize("device, name", [("NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB"), ("NVIDIA H200", "NVIDIA H200"),
                                          ("NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB"),
                                          ("NVIDIA GeForce RTX 4090", "NVIDIA RTX 4090")])
def test_committed_gpu_name_finds_the_card(device, name):
    assert serving.committed_gpu_name({"device": device}) == name


def test_committed_gpu_name_refuses_an_unknown_card():
    with pytest.raises(LabkitError, match="gpus.json"):
        serving.committed_gpu_name({"device": "CPU (2 cores)"})


def test_llama_server_path_honours_the_environment(tmp_path, monkeypatch):
    fake = tmp_path / "llama-server"
    fake.write_text("not a program")
    monkeypatch.setenv(serving.SERVER_ENV, str(fake))
    with pytest.raises(LabkitError, match="not an executable"):
        serving.llama_server_path()
    fake.chmod(0o755)
    assert serving.llama_server_path() == fake


def test_the_missing_server_message_says_how_to_get_it(monkeypatch, capsys):
    monkeypatch.delenv(serving.SERVER_ENV, raising=False)
    monkeypatch.setattr(serving, "llama_server_path", lambda: None)
    assert serving.llama_server_or_skip("prefix caching") is None
    out = capsys.readouterr().out
    assert "Skipped: prefix caching" in out and "-DLLAMA_BUILD_SERVER=ON" in out and "make lab" in out
    with pytest.raises(LabkitError, match="llama-server"):
        serving.LlamaCppServer().start()


def test_server_build_switches_and_cache_key(tmp_path, monkeypatch):
    args = build.cmake_args("-DGGML_CUDA=on")
    assert "-DLLAMA_BUILD_SERVER=ON" in args and "-DLLAVA_BUILD=OFF" in args and args.endswith("-DGGML_CUDA=on")
    monkeypatch.setenv("LABKIT_WHEELS", str(tmp_path))
    assert build.wheel_dir("0.3.36", args) != build.wheel_dir("0.3.36", build.cmake_args(""))
    assert build.wheel_dir("0.3.36", args).parent == tmp_path
    assert build.tested_version() == "0.3.36"
    wheel = tmp_path / "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("llama_cpp/__init__.py", "")
    assert build.server_in_wheel(wheel) is None
    with zipfile.ZipFile(wheel, "a") as zf:
        zf.writestr("bin/llama-server", "")
    assert build.server_in_wheel(wheel) == "bin/llama-server"


@pytest.mark.slow
def test_without_llama_server_the_fallback_answers_one_request_at_a_time(monkeypatch, capsys):
    pytest.importorskip("llama_cpp.server")
    monkeypatch.setattr(serving, "llama_server_path", lambda: None)
    with pytest.raises(LabkitError, match="llama-server"):
        serving.start_server(slots=2, fallback=False)
    server = serving.start_server(slots=2, ctx_per_slot=512, threads=1)
    try:
        assert "ONE request at a time" in capsys.readouterr().out
        assert not serving.batching_or_skip(server, "prefix caching")
        assert "Skipped: prefix caching" in capsys.readouterr().out
        result = serving.run_load(server.base_url, server.model, serving.prompt_mix(2, 6, long_share=0.0), users=2,
                                  requests=2, max_tokens=6, progress=False)
    finally:
        server.stop()
    first, second = sorted(result.completed, key=lambda r: r.sent_s + r.ttft_s)
    assert second.sent_s + second.ttft_s >= first.sent_s + first.token_times[-1]  # it waited for the whole first answer
    assert all(r.prompt_tokens for r in result.records)  # counted afterwards: this server's streams carry no usage


@pytest.mark.parametrize("kwargs", [dict(host="0.0.0.0"), dict(slots=0), dict(slots=1000), dict(port=70000),
                                    dict(speculation="eagle"), dict(ctx_per_slot=8)])
def test_bad_server_arguments(kwargs):
    with pytest.raises(LabkitError):
        serving.LlamaCppServer(**kwargs)


# ----------------------------------------------------------------------------- the real llama-server, bundled model

needs_server = pytest.mark.skipif(serving.llama_server_path() is None,
                                  reason="no llama-server (make setup builds it; see serving.how_to_get_llama_server)")


@pytest.fixture(scope="module")
def server():
    if serving.llama_server_path() is None:
        pytest.skip("no llama-server")
    with serving.LlamaCppServer(slots=2, ctx_per_slot=1024, threads=1) as srv:
        yield srv


@needs_server
@pytest.mark.slow
def test_two_users_are_decoded_together(server):
    assert serving.batching_or_skip(server, "anything")
    prompts = serving.prompt_mix(2, 24, long_share=0.0)
    result = serving.run_load(server.base_url, server.model, prompts, users=2, requests=2, max_tokens=24,
                              extra_body={"cache_prompt": False}, progress=False)
    assert len(result.completed) == 2 and result.stopped is None
    assert all(r.output_tokens == 24 and r.prompt_tokens > 5 for r in result.records)  # ignore_eos: exactly 24
    first, second = sorted(result.records, key=lambda r: r.sent_s + r.ttft_s)
    # continuous batching: the second answer starts before the first one ends (one request at a time could not)
    assert second.sent_s + second.ttft_s < first.sent_s + first.e2e_s
    assert result.summary()["ttft_p99_s"] >= result.summary()["ttft_p50_s"] > 0


@needs_server
@pytest.mark.slow
def test_prefix_cache_reuses_the_shared_system_prompt(server):
    shared = serving.shared_prefix_prompts(2, 4)
    off = serving.run_load(server.base_url, server.model, shared, users=1, requests=2, max_tokens=4,
                           extra_body={"cache_prompt": False}, progress=False)
    on = serving.run_load(server.base_url, server.model, shared, users=1, requests=2, max_tokens=4,
                          extra_body={"cache_prompt": True}, progress=False)
    prompt = on.records[1].prompt_tokens
    assert all(not r.cached_tokens for r in off.records)
    assert on.records[1].cached_tokens > prompt * 0.8  # the whole shared prefix came from the cache


@needs_server
@pytest.mark.slow
def test_json_schema_is_enforced(server):
    prompts = serving.weather_prompts(2)
    result = serving.run_load(server.base_url, server.model, prompts, users=2, requests=2, max_tokens=40,
                              ignore_eos=False, extra_body={"json_schema": serving.WEATHER_SCHEMA}, progress=False)
    share = serving.json_share(result, serving.WEATHER_SCHEMA, prompts)
    assert share["answers"] == 2 and share["valid"] == 1.0, [c.problem for c in share["checks"]]
    assert 0 <= share["correct"] <= 1


@needs_server
@pytest.mark.slow
def test_ngram_speculation_drafts_tokens():
    with serving.LlamaCppServer(slots=1, ctx_per_slot=1024, threads=1, speculation="ngram") as srv:
        result = serving.run_load(srv.base_url, srv.model, serving.copy_prompts(1, 32), users=1, requests=1,
                                  max_tokens=32, progress=False)
    stats = serving.speculation_stats(result)
    assert stats["drafted"] > 0 and 0 <= stats["accepted"] <= stats["drafted"]


@needs_server
@pytest.mark.slow
def test_a_stopped_server_is_a_clear_error():
    with serving.LlamaCppServer(slots=1, ctx_per_slot=256, threads=1) as srv:
        url, pid = srv.base_url, srv.pid
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    with pytest.raises(LabkitError, match="connection refused"):
        serving.run_load(url, "m", ["hi"], users=1)


@needs_server
def test_a_broken_model_fails_with_the_server_log(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + bytes(4096))
    with pytest.raises(LabkitError, match="exited during start-up"):
        serving.LlamaCppServer(model_path=broken, slots=1, threads=1, startup_timeout_s=60).start()


@needs_server
@pytest.mark.slow
def test_the_server_dies_with_a_killed_parent(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        from labkit import serving
        srv = serving.LlamaCppServer(slots=1, ctx_per_slot=256, threads=1).start()
        print(srv.pid, flush=True)
        time.sleep(600)
    """))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        watchdog = int(parent.stdout.readline())
        server_pids = [c.pid for c in psutil.Process(watchdog).children()]
        assert server_pids, "the watchdog should have started llama-server"
    finally:
        parent.kill()
        parent.wait()
    for pid in [watchdog, *server_pids]:
        deadline = time.time() + 20
        while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            assert time.time() < deadline, f"process {pid} outlived its parent"
            time.sleep(0.2)
