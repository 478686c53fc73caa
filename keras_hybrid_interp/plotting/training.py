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



# ----------------------------------------------------------------------
# The Training section of a report (a TrainingStory: report_sections/training.py)
# ----------------------------------------------------------------------
def _block_colors(blocks):
    """viridis over the blocks, shallow to deep; the model itself ("output") black."""
    inner = [b for b in blocks if b != "output"]
    palette = sns.color_palette("viridis", n_colors=max(len(inner), 1))
    colors = dict(zip(inner, palette))
    colors["output"] = (0.0, 0.0, 0.0)
    return colors


def plot_training_metric(story, ax=None):
    """The headline probe metric of every block against epoch; blocks that fell late in training are marked.

    Parameters
    ----------
    story : TrainingStory
        From :func:`~keras_hybrid_interp.report_sections.training.training_story`.
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.axes.Axes
        A line per block (the model itself dashed black); for a block whose
        value fell late, an open circle at its best value of the second half of
        training and a cross at its last value, and ``(fell)`` in its legend entry.
    """
    from .common import new_ax

    if story.metric is None:
        raise ValueError("`story` holds no probe metric (the callback ran with probes=False).")
    ax = new_ax(ax, (7.5, 4.2))
    colors = _block_colors(story.blocks)
    fell = set(story.fell_late)
    for j, b in enumerate(story.blocks):
        label = ("output (model)" if b == "output" else b) + (" (fell)" if b in fell else "")
        ax.plot(story.epochs, story.values[:, j], color=colors[b], linestyle="--" if b == "output" else "-",
                marker="o", ms=3, label=label)
        if b in fell:
            ax.plot([story.late_best_epoch[j]], [story.late_best[j]], "o", mfc="none", mec=colors[b], ms=10)
            ax.plot([story.epochs[-1]], [story.values[-1, j]], "x", color=colors[b], ms=10, mew=2)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch (0 = before training)")
    ax.set_ylabel(story.metric)
    ax.set_title(f"Probe {story.metric} per block over training"
                 + (f" ({len(fell)} fell late)" if fell else ""))
    ax.legend(fontsize="small", loc="best", ncol=1 if len(story.blocks) <= 8 else 2)
    return ax


def plot_dead_filters_over_epochs(story, ax=None):
    """The number of dead filters of every block against epoch.

    Returns
    -------
    matplotlib.axes.Axes
        A step line per block; blocks in which filters died during training
        (more dead at the last record than at the first) say how many in their
        legend entry.
    """
    from .common import new_ax

    if not story.dead_blocks:
        raise ValueError("`story` holds no dead-filter counts (the callback ran with correlation=False).")
    ax = new_ax(ax, (7.5, 4.2))
    colors = _block_colors(story.dead_blocks)
    for j, b in enumerate(story.dead_blocks):
        died = story.died[j]
        label = b + (f" (+{int(died)} died)" if died > 0 else "")
        ax.step(story.epochs, story.dead_filters[:, j], where="post", color=colors[b], marker="o", ms=3, label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch (0 = before training)")
    ax.set_ylabel("dead filters")
    ax.set_title("Dead filters per block over training")
    ax.legend(fontsize="small", loc="best", ncol=1 if len(story.dead_blocks) <= 8 else 2)
    return ax


def plot_importance_over_epochs(story, ax=None):
    """The permutation importance of the recorded filters of one block against epoch.

    Returns
    -------
    matplotlib.axes.Axes
        A line per filter (gaps where the filter was not among the recorded
        top filters at that epoch), the filters most important at the last
        record first in the legend.
    """
    from .common import new_ax

    if story.importance_block is None:
        raise ValueError("`story` holds no importance (the callback ran without importance=ImportanceOptions(...)).")
    ax = new_ax(ax, (7.5, 4.2))
    palette = sns.color_palette("tab10" if len(story.importance_filters) <= 10 else "husl",
                                n_colors=max(len(story.importance_filters), 1))
    for j, f in enumerate(story.importance_filters):
        ax.plot(story.epochs, story.importance[:, j], color=palette[j], marker="o", ms=3, label=f"filter {int(f)}")
    ax.axhline(0.0, color="0.6", linewidth=0.8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch (0 = before training)")
    ax.set_ylabel("permutation importance")
    ax.set_title(f"Importance of the top filters of {story.importance_block} over training")
    ax.legend(fontsize="small", loc="best", ncol=1 if len(story.importance_filters) <= 10 else 2)
    return ax


def plot_training_story(story, fig=None):
    """Every panel a :class:`TrainingStory` holds: probe metric, dead filters, importance (those recorded).

    Parameters
    ----------
    story : TrainingStory
    fig : matplotlib Figure, optional
        Drawn into (its axes cleared); by default a new figure.

    Returns
    -------
    matplotlib.figure.Figure
    """
    panels = [fn for fn, ok in ((plot_training_metric, story.metric is not None),
                                (plot_dead_filters_over_epochs, bool(story.dead_blocks)),
                                (plot_importance_over_epochs, story.importance_block is not None)) if ok]
    if not panels:
        raise ValueError("`story` holds nothing to draw.")
    if fig is None:
        fig = plt.figure(figsize=(6.5 * len(panels), 4.2), layout="constrained")
    else:
        fig.clf()
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for fn, ax in zip(panels, axes):
        fn(story, ax=ax)
    return fig
