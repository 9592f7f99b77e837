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


def test_a_measured_gpu_run_replaces_the_projection_for_its_card_only(monkeypatch):
    from labkit import cost

    rows = [{"users": u, "completed": 2 * u, "tokens_per_s": t} for u, t in ((1, 200.0), (4, 400.0), (16, 800.0))]
    run = {"device": "NVIDIA L4", "slots": 16, "gguf_type": "Q4_K_M", "sweep": rows, "date": "2026-12-06"}
    monkeypatch.setattr(serving, "committed_gpu_runs", lambda: [("serving_gpu_l4.json", run)])
    tps, note = cost.measured_batch_tokens_per_s("L4", 4)
    assert tps == 400.0 and note.startswith("measured on an NVIDIA L4 with 4") and "serving_gpu_l4.json" in note
    tps, note = serving.measured_gpu_tokens_per_s("L4", 2)  # halfway on log axes: the geometric mean
    assert tps == pytest.approx((200 * 400) ** 0.5) and note.startswith("interpolated between the 1 and 4")
    tps, note = serving.measured_gpu_tokens_per_s("L4", 32)  # 16 slots: more users wait for one
    assert tps == 800.0 and "queue" in note
    assert serving.measured_gpu_tokens_per_s("T4", 4) is None  # another card: no measurement
    assert "projected" in cost.gpu_tokens_per_s("T4", batch=4)[1]
    run["slots"] = 64  # 32 users on 64 slots were not measured: projected, not clamped
    assert serving.measured_gpu_tokens_per_s("L4", 32) is None
    with pytest.raises(LabkitError, match="batch"):
        serving.measured_gpu_tokens_per_s("L4", 0)


@pytest.mark.parametrize("device, name", [("NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB"), ("NVIDIA H200", "NVIDIA H200"),
                                          ("NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB"),
                                          ("NVIDIA GeForce RTX 4090", "NVIDIA RTX 4090")])
def test_committed_gpu_name_finds_the_card(device, name):
    assert serving.committed_gpu_name({"device": device}) == name


def test_committed_gpu_name_refuses_an_unknown_card():
    with pytest.raises(LabkitError, match="gpus.json"):
        serving.committed_gpu_name({"device": "CPU (2 cores)"})


def test_the_batch_curve_is_read_as_measured_or_projected_from_its_notes():
    projection = {1: 230.0, 64: 3400.0}
    measured = {1: (222.0, "measured on an NVIDIA H100 80GB with 1 concurrent users · x"),
                64: (906.0, "measured on an NVIDIA H100 80GB with 64 concurrent users · x")}
    text = serving.batch_curve_markdown("H100", measured, projection)
    assert "**measured**" in text and "222 → 906 tok/s (4.1x)" in text and "3.8x too high" in text
    projected = {b: (t, f"{t:,.0f} tokens/s: ... projected from ...") for b, t in projection.items()}
    assert "**projection**" in serving.batch_curve_markdown("H100", projected, projection)
    assert serving.is_measured(measured[1][1]) and not serving.is_measured(projected[1][1])


def test_the_gpu_reading_is_built_from_the_committed_numbers():
    results = serving.load_gpu_results()
    if results is None:
        pytest.skip("no committed GPU run in this copy")
    text = serving.gpu_reading_markdown(results)
    curve = serving.committed_gpu_throughput(results)
    assert f"{curve[max(curve)]:,.0f} with {max(curve)}" in text
    schema = results["json_schema"]
    assert f"{schema['on']['itl_p50_s'] / schema['off']['itl_p50_s']:.1f}x slower" in text
    assert serving.gpu_reading_markdown({"sweep": []}) == ""


def test_the_planner_gap_is_explained_from_the_run_and_the_calibrated_plan():
    from labkit import capacity

    results = serving.load_gpu_results()
    if results is None:
        pytest.skip("no committed GPU run in this copy")
    slo = serving.Slo()
    name = serving.committed_gpu_name(results)
    plan = capacity.plan_capacity("llama-3.1-8b", name, "Q4_K_M", prompt_tokens=65, new_tokens=128, slo=slo,
                                  efficiency=0.37)
    share = serving.measured_compute_share(results, plan)
    curve = serving.committed_gpu_throughput(results)
    assert share == pytest.approx(curve[max(curve)] * 2 * plan.decode_params / plan.device.flops)
    calibrated = plan.with_compute_efficiency(share)
    assert calibrated.device.compute_efficiency == share and calibrated.efficiency == plan.efficiency
    assert calibrated.users < plan.users  # less compute, fewer users
    text = serving.planner_gap_markdown(results, plan, calibrated, slo)
    assert f"**{plan.users:,}**" in text and f"**{calibrated.users:,}**" in text and f"{share:.1%}" in text
    with pytest.raises(LabkitError, match="sweep"):
        serving.measured_compute_share({"sweep": []}, plan)
