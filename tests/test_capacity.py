"""labkit.capacity: the roofline estimate of serving (by hand), the parameters a token multiplies, and the capacity
planner's limits (memory, ITL, TTFT), consistent with each other."""

import pytest

from labkit import capacity, loadgen
from labkit.errors import LabkitError


def test_estimate_load_by_hand():
    # 1 GB of weights at 100 GB/s: a step of one user reads for 10 ms; 2 GFLOP per user at 1 TFLOP/s is 2 ms
    e = capacity.estimate_load(1, 500, 100, 1e9, 0.0, 100e9, 1e12, decode_params=1e9, prefill_params=0.5e9)
    assert (e.step_s, e.bound, e.itl_s) == (pytest.approx(0.01), "memory", pytest.approx(0.01))
    assert e.prefill_s == pytest.approx(2 * 0.5e9 * 500 / 1e12)  # 0.5 s of arithmetic for the prompt
    assert e.tokens_per_s == pytest.approx(100 / (0.5 + 100 * 0.01))
    e8 = capacity.estimate_load(8, 500, 100, 1e9, 0.0, 100e9, 1e12, decode_params=1e9, prefill_params=0.5e9)
    assert e8.bound == "compute" and e8.step_s == pytest.approx(0.016)
    assert e8.itl_s == pytest.approx(0.016 + 7 * 0.5 / 100)  # the other 7 users' prompts, spread over 100 tokens
    assert e8.ttft_burst_s == pytest.approx(8 * 0.5 + 0.016)
    with pytest.raises(LabkitError):
        capacity.estimate_load(0, 500, 100, 1e9, 0.0, 100e9, 1e12, 1e9)


def test_model_parameters_leave_out_what_a_token_does_not_multiply():
    from labkit.vram import parameter_count

    decode, prefill = capacity.model_parameters("gemma-3-270m")  # tied embedding: the output layer reads it
    assert decode == parameter_count("gemma-3-270m") and prefill < decode / 2
    decode8, prefill8 = capacity.model_parameters("llama-3.1-8b")  # untied: the input embedding is only gathered
    assert parameter_count("llama-3.1-8b") - decode8 == pytest.approx(525_336_576)
    assert decode8 - prefill8 == pytest.approx(525_336_576)


def test_plan_capacity_limits_are_consistent():
    slo = loadgen.Slo(1.0, 0.1)
    plan = capacity.plan_capacity("llama-3.1-8b", "T4", "Q4_K_M", prompt_tokens=512, new_tokens=256, slo=slo,
                                 efficiency=0.5)
    assert plan.users == min(plan.users_by_memory, plan.users_by_itl, plan.users_by_ttft) > 0
    # the ITL limit is the last user count whose estimated ITL meets the target
    assert plan.at(plan.users_by_itl).itl_s <= slo.itl_s < plan.at(plan.users_by_itl + 1).itl_s
    # memory: KV caches of users_by_memory fit, one more does not
    free = plan.device.memory_bytes - plan.weight_bytes - plan.device.overhead_bytes
    assert plan.users_by_memory * plan.kv_bytes_per_user <= free < (plan.users_by_memory + 1) * plan.kv_bytes_per_user
    longer = capacity.plan_capacity("llama-3.1-8b", "T4", "Q4_K_M", 16384, 256, slo)
    assert longer.users_by_memory < plan.users_by_memory
    faster = capacity.plan_capacity("llama-3.1-8b", "T4", "Q4_K_M", 512, 256, slo, efficiency=1.0)
    assert faster.users_by_itl > plan.users_by_itl
    assert "limited by" in plan.text()
    measured = capacity.this_machine(10e9, 50e9, memory_bytes=2**33, compute_efficiency=0.8)
    assert capacity.plan_capacity("gemma-3-270m", measured, "Q4_K_M", 128, 16, slo, 0.4).compute_efficiency == 0.8


def test_plan_capacity_says_zero_when_the_weights_alone_are_too_slow():
    plan = capacity.plan_capacity("llama-3.1-70b", "T4", "bf16", 4096, 512, loadgen.Slo(1.0, 0.01))
    assert plan.users_by_itl == 0 and plan.users_by_memory == 0 and plan.users == 0


@pytest.mark.parametrize("kwargs", [dict(weights="fp8"), dict(efficiency=0), dict(efficiency=1.5),
                                    dict(prompt_tokens=0), dict(new_tokens=0), dict(device="GTX 9")])
def test_plan_capacity_bad_input(kwargs):
    with pytest.raises(LabkitError):
        capacity.plan_capacity(**kwargs)


def test_measured_efficiency_is_the_share_of_the_roofline():
    assert capacity.measured_efficiency(50, 1e9, 0, 100e9) == pytest.approx(0.5)
    assert capacity.measured_efficiency(500, 1e9, 0, 100e9) == 1.0
