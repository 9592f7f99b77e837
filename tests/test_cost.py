"""labkit.cost: price tables (every row sourced and dated), the cost formulas against hand-worked examples,
throughput measurement and the break-even widget (the hybrid router: test_router.py)."""

import csv
import math
from urllib.parse import urlparse

import pytest

from labkit import check, cost
from labkit.check import evaluate
from labkit.errors import LabkitError

# ----------------------------------------------------------------------------- price tables


@pytest.mark.parametrize("table", list(cost.PRICE_TABLES))
def test_every_shipped_price_has_a_source_url_and_the_date_it_was_read(table):
    rows = cost.load_prices(table)
    assert len(rows) >= 3
    for row in rows:
        assert all(s.strip().startswith("https://") for s in row["source"].split(";")), row
        assert len(row["read_on"]) == 10 and row["read_on"][4] == "-", row


def test_api_table_covers_open_models_on_several_providers_and_each_frontier_providers_line_up():
    prices = cost.api_prices()
    for model in ("8B", "70B"):
        providers = {p.provider for p in prices if p.open_weights and model in p.model}
        assert len(providers) >= 3, (model, providers)
    for provider in ("OpenAI", "Anthropic", "Google"):
        tiers = {p.tier for p in prices if p.provider == provider and not p.open_weights}
        assert {"mid", "small"} <= tiers, (provider, tiers)
    assert {p.provider for p in prices if p.tier == "flagship"} >= {"OpenAI", "Anthropic"}
    assert all(p.usd_per_1m_output >= p.usd_per_1m_input for p in prices)  # generating costs at least as much


@pytest.mark.parametrize("table", list(cost.PRICE_TABLES))
def test_every_price_says_whether_it_was_read_on_the_providers_page(table):
    rows = cost.load_prices(table)
    assert all(r["source_kind"] in cost.SOURCE_KINDS for r in rows)
    for r in rows:
        if r["source_kind"] == "secondary":
            assert r["note"].strip(), f"a secondary source must say what it is: {r}"


def test_the_openai_and_anthropic_prices_come_from_their_own_pages():
    for p in cost.api_prices():
        if p.provider in ("OpenAI", "Anthropic"):
            assert p.source_kind == "provider", p
            hosts = {urlparse(s.strip()).netloc for s in p.source.split(";")}
            assert hosts <= {"developers.openai.com", "platform.claude.com"}, p


def test_rental_table_covers_the_gpus_the_course_compares():
    gpus = {o.gpu for o in cost.gpu_offers()}
    for wanted in ("T4", "L4", "A10", "A100 40GB", "A100 80GB", "H100", "H200"):
        assert any(wanted in g for g in gpus), wanted


def _write(tmp_path, rows, name="prices.csv"):
    path = tmp_path / name
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


GOOD = {"provider": "X", "model": "m", "open_weights": "yes", "usd_per_1m_input": "1", "usd_per_1m_output": "2",
        "source": "https://example.com/pricing", "source_date": "", "read_on": "2026-12-01", "note": ""}


@pytest.mark.parametrize("change, message", [
    ({"source": ""}, "source"),
    ({"source": "the vendor's website"}, "source"),
    ({"read_on": ""}, "read_on"),
    ({"read_on": "last week"}, "read_on"),
    ({"usd_per_1m_input": "-1"}, "zero or more"),
    ({"usd_per_1m_output": "free"}, "must be a number"),
])
def test_a_price_row_without_source_or_date_or_with_a_bad_number_is_refused(tmp_path, change, message):
    assert cost.api_prices(_write(tmp_path, [GOOD]))[0].usd_per_1m_output == 2.0  # the good row loads
    path = _write(tmp_path, [GOOD, {**GOOD, **change}], "bad.csv")
    with pytest.raises(LabkitError, match=message) as err:
        cost.load_prices(path)
    assert "line 3" in str(err.value)


def test_unknown_tables_providers_models_and_gpus_name_what_is_accepted():
    with pytest.raises(LabkitError, match="Accepted"):
        cost.load_prices("hotels")
    with pytest.raises(LabkitError, match="Accepted.*OpenAI"):
        cost.find_api_price("OpenAl", "GPT-6.2 Sol")
    with pytest.raises(LabkitError, match="Accepted"):
        cost.find_api_price("OpenAI", "GPT-9")
    with pytest.raises(LabkitError, match="Accepted"):
        cost.cheapest_gpu_offer("TPU v5")


def test_lookups_pick_exact_names_before_substrings_and_the_cheapest_offer():
    assert cost.find_api_price("openai", "gpt-6 luna").model == "GPT-6 Luna"
    assert cost.find_api_price("OpenAI", "luna").model == "GPT-6 Luna"
    with pytest.raises(LabkitError, match="Accepted"):
        cost.find_api_price("OpenAI", "GPT-6")  # in several names: refused, not guessed
    h100 = [o for o in cost.gpu_offers() if o.gpu == "NVIDIA H100 80GB"]
    assert cost.cheapest_gpu_offer("H100").usd_per_gpu_hour == min(o.usd_per_gpu_hour for o in h100)
    table = cost.prices_markdown(cost.api_prices())
    assert table.count("\n") == len(cost.api_prices()) + 1 and "2026-12-06" in table and "](https://" in table
    assert "provider's page: [developers.openai.com]" in table and "secondary: [" in table


def test_this_machine_is_priced_as_its_own_gpu(capsys):
    """Seen on the H200 run of 08: the GPU machine's throughput was priced at the 2-vCPU CPU rate."""
    offers = cost.gpu_offers()
    for torch_name, table_name in [("NVIDIA H200", "NVIDIA H200"), ("NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB"),
                                   ("NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB"), ("Tesla T4", "NVIDIA T4"),
                                   ("NVIDIA A10", "NVIDIA A10"), ("NVIDIA A10G", "NVIDIA A10G")]:
        offer = cost.offer_for_this_machine(torch_name)
        assert offer.gpu == table_name, torch_name
        assert offer.usd_per_gpu_hour == min(o.usd_per_gpu_hour for o in offers if o.gpu == table_name)
    cpu = cost.offer_for_this_machine(None)
    assert cpu.gpu.startswith("CPU")
    assert cost.offer_for_this_machine("NVIDIA GeForce RTX 4090") == cpu
    assert "no rental price for NVIDIA GeForce RTX 4090" in capsys.readouterr().out


# ----------------------------------------------------------------------------- formulas, worked by hand


def test_api_cost_and_blended_price():
    # 2,000 input tokens at $0.20/1M = $0.0004; 500 output at $0.60/1M = $0.0003
    assert cost.api_cost(2000, 500, 0.20, 0.60) == pytest.approx(0.0007)
    # a quarter of the tokens generated: 0.75 x 2.50 + 0.25 x 10 = 4.375
    assert cost.blended_price_per_1m(2.50, 10.0, 0.25) == pytest.approx(4.375)
    assert cost.find_api_price("OpenAI", "GPT-6.2 Sol").blended(0.25) == pytest.approx(0.75 * 2 + 0.25 * 10)


def test_self_hosted_cost_per_million_tokens():
    # $2/h, 1,000 tokens/s, busy half the time: 1.8M tokens an hour -> 2 / 1.8 = $1.111 per 1M
    assert cost.self_hosted_cost_per_1m(2.0, 1000, 0.5) == pytest.approx(1.1111, rel=1e-4)
    # utilisation divides: 10x less busy, 10x dearer per token
    assert cost.self_hosted_cost_per_1m(2.0, 1000, 0.05) == pytest.approx(10 * cost.self_hosted_cost_per_1m(2.0, 1000, 0.5))
    # electricity only: 1M tokens at 1,000/s = 1,000 s = 0.2778 h x 0.45 kW = 0.125 kWh x $0.30 = $0.0375
    assert cost.self_hosted_cost_per_1m(0.0, 1000, 1.0, power_w=450, usd_per_kwh=0.30) == pytest.approx(0.0375)


def test_break_even_payback_and_capacity():
    # H100 at $4.29/h for 730 h = $3,131.70 a month; GPT-4o blended $4.375/1M -> 715.8M tokens
    assert cost.break_even_tokens_per_month(4.29 * 730, 4.375) == pytest.approx(3131.7 / 4.375 * 1e6)
    assert cost.break_even_tokens_per_month(100, 1.0, variable_usd_per_1m=0.5) == pytest.approx(200e6)
    assert math.isinf(cost.break_even_tokens_per_month(100, 0.5, variable_usd_per_1m=0.5))
    # an RTX 4090 ($1,599) replacing a $300 API bill, $30 of electricity: 1599 / 270 = 5.92 months
    assert cost.payback_months(1599, 300, 30) == pytest.approx(5.9222, rel=1e-4)
    assert math.isinf(cost.payback_months(1599, 30, 30))
    assert cost.capacity_tokens_per_month(100, 0.5) == pytest.approx(100 * 3600 * 730 * 0.5)
    assert cost.electricity_usd_per_month(450, 200, 0.30) == pytest.approx(27.0)


def test_monthly_bill_of_a_described_workload():
    support = cost.Workload("support bot", requests_per_day=10_000, input_tokens=500, output_tokens=200, days=30)
    assert support.monthly_input_tokens == 150e6 and support.monthly_output_tokens == 60e6
    gpt4o = cost.ApiPrice("OpenAI", "GPT-4o", False, 2.50, 10.0, "https://example.com", "2026-12-01")
    h100 = cost.GpuOffer("test", "NVIDIA H100 80GB", "1x", 2.69, "https://example.com", "2026-12-01")
    bill = cost.monthly_bill(support, gpt4o, h100, tokens_per_s=1000, max_utilization=0.5)
    assert bill["api_usd"] == pytest.approx(150 * 2.50 + 60 * 10.0)  # $975
    assert bill["gpus"] == 1 and bill["self_hosted_usd"] == pytest.approx(2.69 * 730)
    assert bill["utilization"] == pytest.approx(210e6 / (1000 * 3600 * 730))
    busy = cost.Workload("batch job", 1_000_000, 500, 200, 30)  # 21B tokens: needs several GPUs
    assert cost.monthly_bill(busy, gpt4o, h100, 1000, 0.5)["gpus"] == math.ceil(21e9 / (1000 * 3600 * 730 * 0.5))


def test_break_even_object_steps_and_crossing():
    gpu = cost.GpuOffer("test", "NVIDIA H100 80GB", "1x", 2.0, "https://example.com", "2026-12-01")
    api = cost.ApiPrice("test", "m", False, 4.0, 4.0, "https://example.com", "2026-12-01")
    be = cost.BreakEven(100e6, gpu, api, tokens_per_s=1000, utilization=0.5)
    assert be.gpu_usd_per_month == pytest.approx(1460)
    assert be.break_even_tokens == pytest.approx(1460 / 4.0 * 1e6)  # 365M tokens
    assert be.cheaper == "API" and be.api_usd(100e6) == pytest.approx(400)
    cap = be.capacity  # 1.314B tokens per GPU
    assert be.gpus_needed(cap) == 1 and be.gpus_needed(cap + 1) == 2
    assert be.self_hosted_usd(cap + 1) == pytest.approx(2 * 1460)
    assert "break-even" in be.summary() and "labkit-break-even" in be.html()
    slow = cost.BreakEven(1e9, gpu, api, tokens_per_s=10, utilization=0.5)  # $111 per 1M > $4 API
    assert math.isinf(slow.break_even_tokens) and "never" in slow.summary()


def test_batching_projection():
    # 100 tokens/s at batch 1 reading 1 GB of weights + 0.1 GB of KV: 110 GB/s achieved.
    # batch 4 reads 1 + 4 x 0.1 = 1.4 GB per step -> 4 x 110 / 1.4 = 314.3 tokens/s
    assert cost.projected_batch_tokens_per_s(100, 4, 1e9, 1e8) == pytest.approx(4 * 110 / 1.4)
    assert cost.projected_batch_tokens_per_s(100, 1, 1e9, 1e8) == pytest.approx(100)
    assert cost.projected_batch_tokens_per_s(100, 8, 1e9, 0) == pytest.approx(800)  # no KV: linear
    assert cost.projected_batch_tokens_per_s(100, 64, 1e9, 1e8, compute_tokens_per_s=500) == 500


def test_gpu_throughput_starts_from_the_committed_h100_measurement():
    ref = cost.reference_gpu_result("Q4_K_M")
    tps, note = cost.gpu_tokens_per_s("H100", batch=1)
    # the committed llama-server run (one user, prefill and HTTP included) and llama-bench's batch-1 decode measure
    # the same card and model two ways: they agree within 15%
    assert "measured" in note and tps == pytest.approx(ref.decode_tokens_per_s, rel=0.15)
    a100, note = cost.gpu_tokens_per_s("A100 80GB", batch=1)  # no serving run: the same share of its bandwidth
    assert a100 == pytest.approx(ref.decode_tokens_per_s * 2039 / 3350, rel=0.02) and "scaled" in note
    speeds = [cost.gpu_tokens_per_s("H100", batch=b)[0] for b in (1, 4, 16, 64)]
    assert speeds == sorted(speeds) and speeds[-1] < 64 * speeds[0]  # KV reads grow with the batch


@pytest.mark.parametrize("call", [
    lambda: cost.api_cost(-1, 0, 1, 1),
    lambda: cost.api_cost(1, 1, -0.5, 1),
    lambda: cost.self_hosted_cost_per_1m(2.0, 0, 0.5),
    lambda: cost.self_hosted_cost_per_1m(-2.0, 100, 0.5),
    lambda: cost.self_hosted_cost_per_1m(2.0, 100, 0),
    lambda: cost.self_hosted_cost_per_1m(2.0, 100, 1.5),
    lambda: cost.break_even_tokens_per_month(100, 0),
    lambda: cost.payback_months(-5, 10),
    lambda: cost.Workload("w", -10, 100, 100),
    lambda: cost.projected_batch_tokens_per_s(100, 0, 1e9, 0),
    lambda: cost.break_even_for(-1, cost.cheapest_gpu_offer("H100"), cost.find_api_price("OpenAI", "GPT-6.2 Sol"), 0.5,
                                1),
    lambda: cost.gpu_tokens_per_s("Voodoo 2"),
    lambda: cost.find_consumer_gpu("RTX 9999"),
])
def test_bad_input_is_a_labkit_error(call):
    with pytest.raises(LabkitError):
        call()


# ----------------------------------------------------------------------------- measurement, widget, exercises


@pytest.mark.slow
def test_batched_generation_is_measured_per_batch_size(bundled_dense):
    points = cost.measure_batch_throughput(bundled_dense.model, bundled_dense.tokenizer, "The sky is",
                                           batch_sizes=(1, 2), new_tokens=3)
    assert [p.batch for p in points] == [1, 2] and all(p.seconds > 0 and p.tokens_per_s > 0 for p in points)
    assert points[1].tokens_per_s == pytest.approx(2 * 3 / points[1].seconds)
    with pytest.raises(LabkitError):
        cost.measure_batch_throughput(bundled_dense.model, bundled_dense.tokenizer, "x", batch_sizes=(0,))


def test_matmul_flops_is_plausible():
    assert 1e8 < cost.measure_matmul_flops("cpu", size=256, repeats=2) < 1e15


def test_the_break_even_widget_offers_only_gpus_it_can_project():
    offers = cost.widget_gpu_offers()
    assert offers and all(o.gpu != "NVIDIA A10G" for o in offers)  # no datasheet entry to project from


def test_exercise_checks_pass_on_the_right_answer_and_fail_with_a_hint():
    check("08.cost_per_1m_tokens", 2.0 / (1000 * 3600 * 0.5) * 1e6, usd_per_hour=2.0, tokens_per_s=1000,
          utilization=0.5)
    check("08.break_even_tokens", 2.0 * 730 / 4.0 * 1e6, usd_per_hour=2.0, api_usd_per_1m=4.0)
    check("08.payback_months", 1599 / (300 - 0.45 * 200 * 0.3), purchase_usd=1599, monthly_api_usd=300,
          power_w=450, busy_hours=200, usd_per_kwh=0.3)
    with pytest.raises(AssertionError, match="Hint"):
        check("08.cost_per_1m_tokens", 2.0 / 1000, usd_per_hour=2.0, tokens_per_s=1000, utilization=0.5)


COST_INPUTS = dict(usd_per_hour=2.69, tokens_per_s=234.0, utilization=0.3)
BREAK_EVEN_INPUTS = dict(usd_per_hour=2.69, api_usd_per_1m=0.18)
PAYBACK_INPUTS = dict(purchase_usd=1599, monthly_api_usd=300, power_w=450, busy_hours=232, usd_per_kwh=0.1898)


@pytest.mark.parametrize("exercise_id, inputs, slip, answer", [
    ("08.cost_per_1m_tokens", COST_INPUTS, "forgetting the utilisation", 2.69 / (234 * 3600) * 1e6),
    ("08.cost_per_1m_tokens", COST_INPUTS, "multiplying by the utilisation", 2.69 / (234 * 3600) * 1e6 * 0.3),
    ("08.cost_per_1m_tokens", COST_INPUTS, "3,600 seconds", 2.69 / (234 * 0.3) * 1e6),
    ("08.cost_per_1m_tokens", COST_INPUTS, "one token", 2.69 / (234 * 3600 * 0.3)),
    ("08.break_even_tokens", BREAK_EVEN_INPUTS, "one hour of rent", 2.69 / 0.18 * 1e6),
    ("08.break_even_tokens", BREAK_EVEN_INPUTS, "millions of tokens", 2.69 * 730 / 0.18),
    ("08.break_even_tokens", BREAK_EVEN_INPUTS, "30-day month", 2.69 * 720 / 0.18 * 1e6),
    ("08.payback_months", PAYBACK_INPUTS, "leaving out the electricity", 1599 / 300),
    ("08.payback_months", PAYBACK_INPUTS, "adding the electricity", 1599 / (300 + 0.45 * 232 * 0.1898)),
    ("08.payback_months", {**PAYBACK_INPUTS, "busy_hours": 1.0}, "using watts", 1599 / (300 - 450 * 1.0 * 0.1898)),
    ("08.payback_months", PAYBACK_INPUTS, "in years", 1599 / (300 - 0.45 * 232 * 0.1898) / 12),
])
def test_each_slip_of_the_cost_exercises_is_named_when_made(exercise_id, inputs, slip, answer):
    """(Watts for kW is tested at 1 busy hour: at 232 hours the slipped electricity exceeds the bill.)"""
    verdict = evaluate(exercise_id, answer, **inputs)
    assert not verdict.passed and verdict.slip and slip in verdict.slip, verdict


def test_every_exercise_of_notebook_08_declares_at_least_two_slips():
    from labkit.check import exercises
    from labkit.router import LUHN_SLIPS

    for exercise_id in ("08.cost_per_1m_tokens", "08.break_even_tokens", "08.payback_months"):
        assert len(exercises()[exercise_id].slips) >= 2, exercise_id
    assert len(LUHN_SLIPS) >= 2


# ----------------------------------------------------------------------------- what notebook 08 says about the tables


def test_price_landscape_claims_hold_on_the_shipped_table():
    land = cost.api_price_landscape()
    low, high = land.ratio_range(land.flagships, land.small_open)
    assert 1 < low <= high  # every flagship costs more than every hosted small open model
    assert all(land.price(c) <= land.price(o) for c, o in land.closed_under_open)
    text = cost.price_landscape_markdown(land)
    assert f"{low:,.0f}x to {high:,.0f}x" in text
    eights = [r.usd_per_1m_input for r in land.small_open if "8B" in r.model]
    assert f"${min(eights):.2f}" in text and f"${max(eights):.2f}" in text


def test_price_landscape_says_so_when_every_closed_model_is_dearer(tmp_path):
    rows = [{**GOOD, "model": "open 8B", "tier": "small", "source_kind": "secondary", "note": "a copy"},
            {**GOOD, "model": "closed", "open_weights": "no", "tier": "flagship", "usd_per_1m_input": "5",
             "usd_per_1m_output": "20", "source_kind": "provider"}]
    land = cost.api_price_landscape(cost.api_prices(_write(tmp_path, rows)))
    assert not land.closed_under_open
    assert "Every closed model costs more" in cost.price_landscape_markdown(land)
    with pytest.raises(LabkitError, match="source_kind"):
        cost.load_prices(_write(tmp_path, [{**rows[0], "source_kind": "blog"}], "bad.csv"))
    with pytest.raises(LabkitError, match="tier"):
        cost.load_prices(_write(tmp_path, [{**rows[0], "tier": "huge"}], "bad2.csv"))


def test_gpu_price_range_spans_the_rows_of_that_gpu():
    a100 = [o.usd_per_gpu_hour for o in cost.gpu_offers() if "A100" in o.gpu]
    assert cost.gpu_price_range("A100") == (min(a100), max(a100))
    with pytest.raises(LabkitError, match="Accepted"):
        cost.gpu_price_range("TPU")


def test_additive_batching_is_slower_than_the_memory_bound_projection_and_equal_at_batch_1():
    step1, params, flops = 0.35, 268e6, 25e9  # 2.9 tokens/s at batch 1, 0.021 s of arithmetic per token
    assert cost.additive_batch_tokens_per_s(step1, 1, params, flops) == pytest.approx(1 / step1)
    add8 = cost.additive_batch_tokens_per_s(step1, 8, params, flops)
    assert add8 == pytest.approx(8 / (step1 + 7 * 2 * params / flops))
    assert add8 < cost.projected_batch_tokens_per_s(1 / step1, 8, 1e9, 0)


def test_a_batch_point_separates_prefill_from_decode():
    point = cost.BatchPoint(batch=8, new_tokens=8, seconds=7.2, prefill_seconds=1.6)
    assert point.tokens_per_s == pytest.approx(64 / 7.2)
    assert point.decode_tokens_per_s == pytest.approx(8 * 7 / 5.6)
    assert point.step_seconds == pytest.approx(5.6 / 7)
    assert math.isnan(cost.BatchPoint(8, 8, 7.2).decode_tokens_per_s)  # no prefill timing


def test_batching_markdown_quotes_the_measured_and_estimated_values():
    points = [cost.BatchPoint(1, 8, 2.8, 0.5), cost.BatchPoint(8, 8, 7.2, 1.6)]
    projected = {1: 2.9, 8: 23.2}
    additive = {1: 2.9, 8: 9.0}
    text = cost.batching_markdown(points, projected, additive, 25e9, 46, gpu_ratio=28.4)
    assert "2.9 → 8.9" in text and "23.2" in text and "9.0" in text and "28x" in text
    assert "1.60 s of the 7.20 s" in text and f"{points[1].decode_tokens_per_s:.1f}" in text
    assert "lies **between the two estimates**" in text  # 10.0 tokens/s decode, between 9.0 and 23.2


def test_flops_per_byte_ratio_compares_the_datasheet_with_this_machine():
    h100 = cost.find_gpu("H100")
    ratio = cost.flops_per_byte_ratio("H100", cpu_flops_per_s=25e9, cpu_bytes_per_s=10e9)
    assert ratio == pytest.approx((h100["fp16_tflops"] * 1e12 / (h100["bandwidth_gbps"] * 1e9)) / 2.5)


def test_a_committed_serving_measurement_replaces_the_projection(monkeypatch):
    monkeypatch.setattr(cost, "measured_batch_tokens_per_s", lambda gpu, batch: (1234.0, "measured on an H100"))
    assert cost.gpu_tokens_per_s("H100", batch=32) == (1234.0, "measured on an H100")
    assert cost.break_even_for(1e9, cost.cheapest_gpu_offer("H100"), cost.find_api_price("OpenAI", "GPT-6 Luna"),
                               0.5, 32).tokens_per_s == 1234.0


def test_batching_markdown_names_the_thin_products_rate():
    points = [cost.BatchPoint(1, 8, 2.8, 0.5), cost.BatchPoint(8, 8, 7.2, 1.6)]
    text = cost.batching_markdown(points, {1: 2.9, 8: 23.2}, {1: 2.9, 8: 20.0}, 25e9, 46, thin=((8, 640, 2048), 10e9))
    assert "8 x 640 by 640 x 2048" in text and "10 GFLOP/s (40% of it)" in text and "below both" in text
