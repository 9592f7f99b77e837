"""Notebook 08's widget: monthly tokens, GPU offer, utilisation, API price and batch in; both monthly bills,
the break-even volume and the cost-vs-volume plot out. A thin ipywidgets view over `labkit.cost.break_even_for`."""

from __future__ import annotations

import html
from typing import Any

from .cost import api_prices, break_even_for, plot_cost_vs_volume, widget_gpu_offers
from .errors import LabkitError, unknown

# ipywidgets, matplotlib and IPython are imported inside the function: labkit imports without the [lab] extra.


def break_even_explorer(monthly_tokens: float = 100e6, gpu: str = "H100", api: str = "GPT-6.2 Sol",
                      utilization: float = 0.5, batch: int = 8):
    """Sliders for monthly tokens, GPU offer, utilisation, API price and batch; shows both monthly bills,
    the break-even volume, and the cost-vs-volume plot."""
    import ipywidgets as w
    import matplotlib.pyplot as plt
    from IPython.display import display

    offers = {o.label: o for o in widget_gpu_offers()}
    apis = {a.label: a for a in api_prices()}

    def first(labels: dict, text: str, what: str) -> str:
        """The first label that contains `text` (case-insensitive); an unknown name is refused, not replaced."""
        match = next((k for k in labels if str(text).lower() in k.lower()), None)
        if match is None:
            raise unknown(what, text, list(labels))
        return match

    controls = {
        "monthly_tokens": w.FloatLogSlider(value=monthly_tokens, base=10, min=5, max=11, step=0.1,
                                           description="tokens/month", readout_format=".2e",
                                           style={"description_width": "initial"}),
        "offer": w.Dropdown(options=list(offers), value=first(offers, gpu, "GPU offer"), description="GPU",
                            layout=w.Layout(width="460px")),
        "utilization": w.FloatSlider(value=utilization, min=0.05, max=1.0, step=0.05, description="utilisation",
                                     readout_format=".0%"),
        "api": w.Dropdown(options=list(apis), value=first(apis, api, "API"), description="API",
                          layout=w.Layout(width="460px")),
        "batch": w.SelectionSlider(options=[1, 2, 4, 8, 16, 32, 64], value=batch, description="batch"),
    }
    summary, plot = w.HTML(), w.Output()

    def update(*_: Any) -> None:
        try:
            be = break_even_for(controls["monthly_tokens"].value, offers[controls["offer"].value],
                                apis[controls["api"].value], controls["utilization"].value, controls["batch"].value)
        except LabkitError as err:
            summary.value = f"<pre style='color:#a00'>{html.escape(str(err))}</pre>"
            return
        summary.value = be.html()
        with plot:
            plot.clear_output(wait=True)
            fig = plot_cost_vs_volume(be)
            display(fig)
            plt.close(fig)

    for c in controls.values():
        c.observe(update, names="value")
    update()
    box = w.VBox([controls["monthly_tokens"], controls["offer"], controls["utilization"], controls["batch"],
                  controls["api"], summary, plot])
    box.controls, box.summary, box.update = controls, summary, update
    return box
