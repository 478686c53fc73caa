"""The plot of training dynamics recorded by :class:`~keras_hybrid_interp.InterpretationCallback`."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator


def plot_training_dynamics(history, *, metric=None, ax=None, annot=None, cmap="viridis"):
    """Per-block ``metric`` against epoch (lines) and as an epochs x blocks heatmap.

    Parameters
    ----------
    history : pandas.DataFrame or InterpretationCallback
        ``InterpretationCallback.history`` (columns ``epoch, block, metric, value``).
    metric : str, optional
        Which metric to draw; default ``"accuracy"`` when recorded, else
        ``"agreement"``. Must be one value per (epoch, block) (not ``importance``).
    ax : pair of matplotlib Axes, optional
        Axes for the line plot and the heatmap; by default a new figure with
        two side-by-side panels.
    annot : bool, optional
        Write the values in the heatmap cells (default: when there are at most
        20 epochs and 12 blocks).
    cmap : str
        Heatmap colormap.

    Returns
    -------
    matplotlib.figure.Figure
        The figure holding the two panels (never shown or saved here).
    """
    if not isinstance(history, pd.DataFrame) and isinstance(getattr(history, "history", None), pd.DataFrame):
        history = history.history  # an InterpretationCallback
    if not isinstance(history, pd.DataFrame) or not {"epoch", "block", "metric", "value"} <= set(history.columns):
        raise TypeError("`history` must be InterpretationCallback.history (a DataFrame with columns epoch, "
                        f"block, metric, value) or the callback; received {type(history).__name__}.")
    available = list(dict.fromkeys(history["metric"]))
    if metric is None:
        metric = "accuracy" if "accuracy" in available else "agreement"
    if metric not in available:
        raise ValueError(f"`metric`={metric!r} was not recorded; available: {available}.")
    data = history[history["metric"] == metric]
    if data.duplicated(["epoch", "block"]).any():
        raise ValueError(f"`metric`={metric!r} has several values per epoch and block (per filter); "
                         "plot it from the history directly, e.g. with seaborn.lineplot(hue='filter').")
    blocks = list(dict.fromkeys(data["block"]))
    if "output" in blocks:  # the model last, after the deepest block
        blocks = [b for b in blocks if b != "output"] + ["output"]
    table = data.pivot(index="epoch", columns="block", values="value")[blocks].sort_index()

    if ax is None:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [1.2, 1]})
    else:
        if not isinstance(ax, (list, tuple, np.ndarray)) or len(ax) != 2:
            raise TypeError("`ax` must be a pair of matplotlib Axes (lines, heatmap); "
                            f"received {type(ax).__name__}.")
        axes = list(ax)
        fig = axes[0].figure

    line_ax, heat_ax = axes
    palette = sns.color_palette("viridis", n_colors=max(len(blocks) - ("output" in blocks), 1))
    i = 0
    for b in blocks:
        if b == "output":
            line_ax.plot(table.index, table[b], color="black", linestyle="--", marker="o", ms=3, label="output (model)")
        else:
            line_ax.plot(table.index, table[b], color=palette[i], marker="o", ms=3, label=b)
            i += 1
    line_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    line_ax.set_xlabel("epoch")
    line_ax.set_ylabel(metric)
    line_ax.set_title(f"{metric} per block (epoch 0 = before training)")
    line_ax.legend(fontsize="small", loc="best", ncol=1 if len(blocks) <= 8 else 2)

    if annot is None:
        annot = table.shape[0] <= 20 and table.shape[1] <= 12
    sns.heatmap(table, ax=heat_ax, annot=annot, fmt=".2f", cmap=cmap, cbar_kws={"label": metric})
    heat_ax.set_xlabel("block (shallow to deep)")
    heat_ax.set_ylabel("epoch")
    heat_ax.tick_params(axis="y", labelrotation=0)  # epoch numbers read horizontally, never overlap
    heat_ax.set_title(f"{metric}: epochs x blocks")
    if ax is None:
        fig.tight_layout()
    return fig

