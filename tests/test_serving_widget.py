"""labkit.serving_widget: the capacity planner's text (the estimate, and a measurement of the same setup), and the
widget reacting to a control."""

from labkit import capacity, serving_widget


def test_planner_widget_shows_the_estimate_and_a_matching_measurement():
    here = capacity.this_machine(10e9, 50e9, memory_bytes=8 * 2**30)
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
