"""Plot details a reader needs: tick values on the search's y axis, legends off the data lines."""

import re

from qcheck.report.analysis_plots import distribution
from qcheck.report.plots import search_tradeoff


def _search(chosen):
    cands = [{"id": i, "cost": float(i), "shortfall": s, "passes": s == 0} for i, s in enumerate([0.02, 0.004, 0.0])]
    return {"search": {"candidates": cands, "pareto": [0, 1, 2], "chosen": chosen, "target": "cpu",
                       "cost": "profile"}}  # the keys results.json always has (results/load.py)


def test_search_plot_y_axis_has_tick_values_and_the_star_only_when_chosen():
    svg = search_tradeoff(_search(chosen=2))
    texts = re.findall(r"<text[^>]*>([^<]*)</text>", svg) or re.findall(r"<!-- ([^>]*) -->", svg)
    assert {"0", "0.001", "0.01", "0.1"} <= set(texts), texts
    assert "chosen" in svg and "chosen" not in search_tradeoff(_search(chosen=None))


def test_histogram_legend_sits_above_the_axes():
    import matplotlib.pyplot as plt

    seen = {}
    real_close = plt.close

    def keep(fig=None):  # look at the figure before the renderer closes it
        if fig is not None and hasattr(fig, "axes"):
            a = fig.axes[0]
            legend = a.get_legend()
            fig.canvas.draw()
            seen["legend_bottom"] = legend.get_window_extent().y0
            seen["axes_top"] = a.get_window_extent().y1
        return real_close(fig)

    plt.close = keep
    try:
        distribution({"edges": [0, 1, 2, 3], "float_counts": [5, 9, 2], "quant_counts": [5, 8, 3], "calib_min": 0.5,
                      "calib_max": 2.5, "max_abs": 2.9, "tensor": "t", "error_edges": [-0.1, 0, 0.1],
                      "error_counts": [3, 4], "max_abs_error": 0.1})
    finally:
        plt.close = real_close
    assert seen and seen["legend_bottom"] >= seen["axes_top"] - 1
