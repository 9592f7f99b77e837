"""The PagedAttention simulator's widget (notebook 05): block size, load, shared prefix and length mix in;
the allocators' table and plot out. A thin ipywidgets view over `labkit.paged.compare_allocators`."""

from __future__ import annotations

from .paged import LENGTH_MIXES, compare_allocators, plot_serving, serving_table, step_cost

# ipywidgets, matplotlib and IPython are imported inside the functions that use them: `import labkit` stays
# quick and works without the optional extras.


def simulator(n_requests: int = 200, capacity: int = 65536, model: str = "llama-3.1-8b"):
    """Sliders for block size, load and shared prefix, a menu for the length mix: the table and the plot
    update on every change. A thin view over `compare_allocators`."""
    import ipywidgets as w
    import matplotlib.pyplot as plt
    from IPython.display import display

    block = w.SelectionSlider(options=[1, 2, 4, 8, 16, 32, 64, 128, 256], value=16, description="block size")
    load = w.FloatLogSlider(value=2.0, base=10, min=-1, max=1.5, step=0.1, description="arrivals/step")
    prefix = w.IntSlider(value=0, min=0, max=512, step=32, description="shared prefix")
    mix = w.Dropdown(options=list(LENGTH_MIXES), value="sharegpt-like", description="lengths")
    table = w.HTML()
    plot = w.Output()
    cost = step_cost(model)

    def update(*_):
        results = compare_allocators(n_requests, mix.value, capacity, block.value, 2048, load.value,
                                     prefix.value, cost=cost)
        table.value = f"<pre class='kv-serving'>{serving_table(results)}</pre>"
        with plot:
            plot.clear_output(wait=True)
            fig = plot_serving(results, f"{mix.value}, block {block.value}, {load.value:.1f} req/step")
            display(fig)
            plt.close(fig)

    for control in (block, load, prefix, mix):
        control.observe(update, names="value")
    update()
    return w.VBox([w.HBox([block, load]), w.HBox([prefix, mix]), table, plot])
