"""labkit.llama_server: finding the binary, saying how to get it, bad arguments, and the real llama-server with the
bundled model (continuous batching, prefix cache, JSON schema, n-gram speculation, no orphans), plus the
one-request-at-a-time fallback."""

import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from labkit import llama_server, loadgen, serving
from labkit.errors import LabkitError

needs_server = pytest.mark.skipif(llama_server.llama_server_path() is None,
                                  reason="no llama-server (make setup builds it; see llama_server.how_to_get_llama_server)")


def test_llama_server_path_honours_the_environment(tmp_path, monkeypatch):
    fake = tmp_path / "llama-server"
    fake.write_text("not a program")
    monkeypatch.setenv(llama_server.SERVER_ENV, str(fake))
    with pytest.raises(LabkitError, match="not an executable"):
        llama_server.llama_server_path()
    fake.chmod(0o755)
    assert llama_server.llama_server_path() == fake


def test_the_missing_server_message_says_how_to_get_it(monkeypatch, capsys):
    monkeypatch.delenv(llama_server.SERVER_ENV, raising=False)
    monkeypatch.setattr(llama_server, "llama_server_path", lambda: None)
    assert llama_server.llama_server_or_skip("prefix caching") is None
    out = capsys.readouterr().out
    assert "Skipped: prefix caching" in out and "-DLLAMA_BUILD_SERVER=ON" in out and "make lab" in out
    with pytest.raises(LabkitError, match="llama-server"):
        llama_server.LlamaCppServer().start()


@pytest.mark.slow
def test_without_llama_server_the_fallback_answers_one_request_at_a_time(monkeypatch, capsys):
    pytest.importorskip("llama_cpp.server")
    monkeypatch.setattr(llama_server, "llama_server_path", lambda: None)
    with pytest.raises(LabkitError, match="llama-server"):
        llama_server.start_server(slots=2, fallback=False)
    server = llama_server.start_server(slots=2, ctx_per_slot=512, threads=1)
    try:
        assert "ONE request at a time" in capsys.readouterr().out
        assert not llama_server.batching_or_skip(server, "prefix caching")
        assert "Skipped: prefix caching" in capsys.readouterr().out
        result = loadgen.run_load(server.base_url, server.model, serving.prompt_mix(2, 6, long_share=0.0), users=2,
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
        llama_server.LlamaCppServer(**kwargs)


@pytest.fixture(scope="module")
def server():
    if llama_server.llama_server_path() is None:
        pytest.skip("no llama-server")
    with llama_server.LlamaCppServer(slots=2, ctx_per_slot=1024, threads=1) as srv:
        yield srv


@needs_server
@pytest.mark.slow
def test_two_users_are_decoded_together(server):
    assert llama_server.batching_or_skip(server, "anything")
    prompts = serving.prompt_mix(2, 24, long_share=0.0)
    result = loadgen.run_load(server.base_url, server.model, prompts, users=2, requests=2, max_tokens=24,
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
    off = loadgen.run_load(server.base_url, server.model, shared, users=1, requests=2, max_tokens=4,
                           extra_body={"cache_prompt": False}, progress=False)
    on = loadgen.run_load(server.base_url, server.model, shared, users=1, requests=2, max_tokens=4,
                          extra_body={"cache_prompt": True}, progress=False)
    prompt = on.records[1].prompt_tokens
    assert all(not r.cached_tokens for r in off.records)
    assert on.records[1].cached_tokens > prompt * 0.8  # the whole shared prefix came from the cache


@needs_server
@pytest.mark.slow
def test_json_schema_is_enforced(server):
    prompts = serving.weather_prompts(2)
    result = loadgen.run_load(server.base_url, server.model, prompts, users=2, requests=2, max_tokens=40,
                              ignore_eos=False, extra_body={"json_schema": serving.WEATHER_SCHEMA}, progress=False)
    share = serving.json_share(result, serving.WEATHER_SCHEMA, prompts)
    assert share["answers"] == 2 and share["valid"] == 1.0, [c.problem for c in share["checks"]]
    assert 0 <= share["correct"] <= 1


@needs_server
@pytest.mark.slow
def test_ngram_speculation_drafts_tokens():
    with llama_server.LlamaCppServer(slots=1, ctx_per_slot=1024, threads=1, speculation="ngram") as srv:
        result = loadgen.run_load(srv.base_url, srv.model, serving.copy_prompts(1, 32), users=1, requests=1,
                                  max_tokens=32, progress=False)
    stats = serving.speculation_stats(result)
    assert stats["drafted"] > 0 and 0 <= stats["accepted"] <= stats["drafted"]


@needs_server
@pytest.mark.slow
def test_a_stopped_server_is_a_clear_error():
    with llama_server.LlamaCppServer(slots=1, ctx_per_slot=256, threads=1) as srv:
        url, pid = srv.base_url, srv.pid
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    with pytest.raises(LabkitError, match="connection refused"):
        loadgen.run_load(url, "m", ["hi"], users=1)


@needs_server
def test_a_broken_model_fails_with_the_server_log(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + bytes(4096))
    with pytest.raises(LabkitError, match="exited during start-up"):
        llama_server.LlamaCppServer(model_path=broken, slots=1, threads=1, startup_timeout_s=60).start()


@needs_server
@pytest.mark.slow
def test_the_server_dies_with_a_killed_parent(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        from labkit import llama_server
        srv = llama_server.LlamaCppServer(slots=1, ctx_per_slot=256, threads=1).start()
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
