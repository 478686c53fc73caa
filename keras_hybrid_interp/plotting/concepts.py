"""Plots of concept results (:class:`~keras_hybrid_interp.local.concepts.ConceptResult`): accuracy by depth,
TCAV scores with their significance, concept maps. They read the result's attributes and compute nothing."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from .common import common_scope, ellipsize, new_ax
from .local import upsample, upsample_curve

__all__ = ["plot_concept_accuracy", "plot_tcav_scores", "plot_concept_maps", "plot_concept_training",
           "CONCEPT_METRIC"]

#: The metric of ``InterpretationCallback``'s concept accuracy rows: ``"concept_accuracy/<concept name>"``.
CONCEPT_METRIC = "concept_accuracy/"


def _short_blocks(blocks):
    scope = common_scope(list(blocks))
    return [ellipsize(b[len(scope):], 18) for b in blocks]


def plot_concept_accuracy(result, *, ax=None, concepts=None, title=None):
    """Concept accuracy by depth: one line per concept, its bootstrap interval and its random-label control.

    The accuracy is the held-out accuracy of the concept probes (concept
    against random examples, balanced: chance is 0.5); a filled marker
    shows a block where the concept is separable (the accuracy beats its
    control), so the first filled marker is where the network starts to
    represent the concept. Returns the Axes.
    """
    names = list(result.concepts) if concepts is None else list(concepts)
    for c in names:
        if c not in result.concepts:
            raise ValueError(f"`concepts`: {c!r} is not one of {list(result.concepts)}.")
    L = len(result.blocks)
    ax = new_ax(ax, (max(5.0, 0.6 * L + 3), 3.6))
    pos = np.arange(L)
    sep = result.separable()
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, name in enumerate(names):
        c = result.concepts.index(name)
        col = colours[j % len(colours)]
        ax.plot(pos, result.accuracy[c], "-", color=col, label=name)
        ax.scatter(pos[sep[c]], result.accuracy[c][sep[c]], color=col, zorder=3, s=28)
        ax.scatter(pos[~sep[c]], result.accuracy[c][~sep[c]], facecolor="white", edgecolor=col, zorder=3, s=28)
        if "accuracy" in result.lower:
            ax.fill_between(pos, result.lower["accuracy"][c], result.upper["accuracy"][c], color=col, alpha=0.15,
                            linewidth=0)
        if np.any(np.isfinite(result.control_accuracy[c])):
            ax.plot(pos, result.control_accuracy[c], ":", color=col, alpha=0.8)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(pos)
    ax.set_xticklabels(_short_blocks(result.blocks), rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("block (shallow to deep)")
    ax.set_ylabel("concept accuracy (held out)")
    level = f"{result.confidence:.0%} bootstrap interval, " if result.confidence else ""
    ax.set_title(title or f"Concept accuracy by depth ({level}dotted: random-label control; filled: separable)",
                 fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    return ax


def plot_tcav_scores(result, *, ax=None, class_name=None, statistic=None, title=None):
    """TCAV of one class: a bar per (block, concept), with significance marks.

    ``statistic``: "sign" draws the TCAV scores (fraction of the class's
    inputs with a positive directional derivative, 0-1), "magnitude" the
    mean directional derivative *in units of the random sets' spread*: the
    magnitude minus the random-vs-random mean, over the standard deviation
    of random sets' mean magnitudes at that block (the test's yardstick; raw
    magnitudes differ by orders of magnitude from block to block); None: the
    result's headline statistic. Bars show the mean over the CAVs with their
    spread (standard deviation); grey: what random sets give (their mean,
    and two standard deviations of random sets' means around it). Results
    significant by that statistic's test (corrected p-value below alpha) are
    solid and starred; the others are faded, hatched and marked "n.s.": they
    are not findings. ``class_name``: one of ``result.classes`` (default:
    the first). Returns the Axes.
    """
    classes = list(result.classes)
    if class_name is None:
        k = 0
    elif class_name in classes:
        k = classes.index(class_name)
    else:
        raise ValueError(f"`class_name` must be one of the tested classes {classes}; received {class_name!r}.")
    statistic = result.statistic if statistic is None else statistic
    if statistic not in ("sign", "magnitude"):
        raise ValueError(f"`statistic` must be 'sign', 'magnitude' or None; received {statistic!r}.")
    magnitude = statistic == "magnitude"
    values = result.magnitudes if magnitude else result.scores
    random = result.random_magnitudes if magnitude else result.random_scores
    significant = result.significant_magnitude if magnitude else result.significant_sign
    C, L = len(result.concepts), len(result.blocks)
    ax = new_ax(ax, (max(5.0, 0.5 * L * C + 4), 3.6))
    width = 0.8 / max(C, 1)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    with np.errstate(invalid="ignore", divide="ignore"):
        values = values[:, :, k]
        rnd = np.nanmean(random[:, :, k].reshape(C, L, -1), axis=-1)
        counts = np.sum(np.isfinite(random[:, :, k]), axis=-1)  # (C, L, J): each random set's mean
        set_means = np.where(counts > 0, np.nansum(random[:, :, k], axis=-1) / np.maximum(counts, 1), np.nan)
        sd = np.nanstd(set_means, axis=-1, ddof=1)
        if magnitude:  # in random-set standard deviations, centred on the random mean
            values = (values - rnd[..., None]) / sd[..., None]
            rnd, sd = np.zeros_like(rnd), np.ones_like(sd)
        mean = np.nanmean(values, axis=-1)
        spread = np.nanstd(values, axis=-1)
    for c, name in enumerate(result.concepts):
        x = np.arange(L) + (c - (C - 1) / 2) * width
        for i in range(L):
            sig = bool(significant[c, i, k])
            ax.bar(x[i], mean[c, i], width * 0.9, yerr=spread[c, i], color=colours[c % len(colours)],
                   alpha=1.0 if sig else 0.3, hatch=None if sig else "///", edgecolor="black" if sig else "grey",
                   linewidth=0.5, error_kw={"elinewidth": 0.8}, label=name if i == 0 else None)
            ax.plot([x[i] - width * 0.4, x[i] + width * 0.4], [rnd[c, i]] * 2, color="dimgrey", lw=1.5)
            ax.plot([x[i]] * 2, [rnd[c, i] - 2 * sd[c, i], rnd[c, i] + 2 * sd[c, i]], color="dimgrey", lw=3,
                    alpha=0.35, solid_capstyle="butt")
            if np.isfinite(mean[c, i]):
                up = mean[c, i] >= (0.0 if magnitude else -1.0)
                top = mean[c, i] + (spread[c, i] if up else -spread[c, i])
                ax.text(x[i], min(1.0, top) + 0.02 if not magnitude else top, "*" if sig else "n.s.", ha="center",
                        va="bottom" if up else "top", fontsize=9 if sig else 6)
    ax.axhline(0.0 if magnitude else 0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(np.arange(L))
    ax.set_xticklabels(_short_blocks(result.blocks), rotation=45, ha="right", fontsize=8)
    if not magnitude:
        ax.set_ylim(0.0, 1.12)
    ax.set_xlabel("block (shallow to deep)")
    ax.set_ylabel("TCAV magnitude\n(random-set sd from random)" if magnitude else "TCAV score")
    ax.set_title(title or (f"TCAV for class {classes[k]!r} (n={int(result.n_inputs[k])})\n*: significant "
                           f"({result.correction}, alpha={result.alpha}); grey: random sets +/- 2 sd"), fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return ax


def plot_concept_maps(maps, *, fig=None, cmap="RdBu_r", alpha=0.6, figsize=None):
    """Concept maps of one input (:class:`~keras_hybrid_interp.local.concepts.ConceptMaps`): a row per concept,
    a column per block, each map upsampled over the input. Red: the concept's side of its probe's boundary.
    Returns the Figure."""
    C, L = len(maps.concepts), len(maps.blocks)
    if fig is None:
        fig = plt.figure(figsize=figsize or (2.2 * (L + 1), 2.2 * C), layout="constrained")
    axes = np.asarray(fig.subplots(C, L + 1, squeeze=False))
    image = np.asarray(maps.image)
    signal = image.ndim == 2 and image.shape[-1] < image.shape[0] // 2 or image.ndim == 1
    for c, name in enumerate(maps.concepts):
        ax = axes[c, 0]
        if signal:
            ax.plot(image if image.ndim == 1 else image.mean(axis=-1), color="black", lw=0.8)
        else:
            img = _image(image if image.ndim in (2, 3) else image[image.shape[0] // 2])
            ax.imshow(img, cmap=None if img.ndim == 3 else "gray")
        ax.set_ylabel(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        if c == 0:
            ax.set_title("input", fontsize=8)
        for i, block in enumerate(maps.blocks):
            ax = axes[c, i + 1]
            m = np.asarray(maps.maps[i][c], np.float64)
            lim = float(np.max(np.abs(m))) or 1.0
            if signal or m.ndim == 1:
                ax.plot(upsample_curve(m, len(image)) if m.ndim == 1 else m.ravel(), color="C3")
                ax.axhline(0, color="grey", lw=0.6)
            else:
                if m.ndim == 3:  # a volume: its middle slice
                    m = m[m.shape[0] // 2]
                size = img.shape[:2]
                ax.imshow(_grayscale_of(img), cmap="gray")
                ax.imshow(upsample(m, size), cmap=cmap, vmin=-lim, vmax=lim, alpha=alpha)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_title(ellipsize(block, 18), fontsize=8)
    fig.suptitle("Concept maps: the mean CAV at every position (red: concept side)", fontsize=9)
    return fig


def plot_concept_training(history, *, concepts=None, fig=None, cmap="viridis", figsize=None):
    """When each concept forms during training: its accuracy at every block against the epoch.

    ``history``: ``InterpretationCallback.history`` (or the frame of
    ``InterpretationCallback.load_history``) of a callback given
    ``concepts=``: its rows of metric ``"concept_accuracy/<name>"``. One
    panel per concept (``concepts``: which, default all), one line per block
    (shallow to deep: light to dark in ``cmap``); the dashed line is chance
    (0.5: the held-out sets are balanced). Returns the Figure.
    """
    import pandas as pd

    if not isinstance(history, pd.DataFrame) or not {"epoch", "block", "metric", "value"} <= set(history.columns):
        raise TypeError("`history` must be InterpretationCallback.history (a DataFrame with columns epoch, block, "
                        f"metric, value); received {type(history).__name__}.")
    metric = history["metric"].astype(str)
    rows = history[metric.str.startswith(CONCEPT_METRIC)]
    recorded = list(dict.fromkeys(m[len(CONCEPT_METRIC):] for m in rows["metric"]))
    if not recorded:
        raise ValueError("`history` holds no concept accuracy: pass InterpretationCallback(..., concepts={name: "
                         "examples}) to record it.")
    names = recorded if concepts is None else ([concepts] if isinstance(concepts, str) else list(concepts))
    for name in names:
        if name not in recorded:
            raise ValueError(f"`concepts`: {name!r} was not recorded; recorded: {recorded}.")
    blocks = list(dict.fromkeys(rows["block"]))
    n = len(names)
    cols = min(n, 3)
    nrows = -(-n // cols)
    if fig is None:
        fig = plt.figure(figsize=figsize or (4.6 * cols, 3.4 * nrows), layout="constrained")
    axes = np.asarray(fig.subplots(nrows, cols, squeeze=False)).ravel()
    colours = plt.get_cmap(cmap)(np.linspace(0.15, 0.95, len(blocks)))
    labels = _short_blocks(blocks)
    for ax, name in zip(axes, names):
        data = rows[rows["metric"] == CONCEPT_METRIC + name]
        for block, colour, label in zip(blocks, colours, labels):
            b = data[data["block"] == block].sort_values("epoch")
            if len(b):
                ax.plot(b["epoch"], b["value"], "o-", color=colour, ms=3, lw=1.2, label=label)
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_ylim(0.0, 1.02)
        ax.set_xlabel("epoch (0: before training)")
        ax.set_ylabel("concept accuracy (held out)")
        ax.set_title(f"Concept {name!r} by block over training", fontsize=9)
    axes[0].legend(fontsize=7, title="block", title_fontsize=7, loc="lower right")
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig


def _image(image):
    """An (H, W), (H, W, 1), (H, W, 3) or (H, W, C) input scaled to [0, 1] for imshow."""
    img = np.asarray(image, np.float64)
    if img.ndim == 3 and img.shape[-1] != 3:
        img = img.mean(axis=-1)
    lo, hi = np.nanmin(img), np.nanmax(img)
    return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)


def _grayscale_of(img):
    return img if img.ndim == 2 else img @ np.array([0.299, 0.587, 0.114])
