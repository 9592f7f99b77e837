"""labkit.serving (notebook 09): the prompt sets, JSON checks, the exercises and their slips, and the committed GPU
results read through the datasets folder."""

import json
import os

import numpy as np
import pytest

from labkit import check, serving
from labkit.check import evaluate
from labkit.errors import LabkitError


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
