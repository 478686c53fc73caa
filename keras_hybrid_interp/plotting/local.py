"""Plots of the local half: the layer table (accuracy and agreement per block) and local explanations.

Both take the result objects of :class:`~keras_hybrid_interp.HybridInterpreter` and compute nothing."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import colors as mcolors
from matplotlib.patches import Rectangle

from ..core.validation import check_int, is_int
from .common import (
    HIGHLIGHT,
    check_top_k,
    common_scope,
    ellipsize,
    label_size,
    new_ax,
    short_list,
)

_METRICS = ("accuracy", "agreement", "control_accuracy", "selectivity")
_DEFAULT_METRICS = ("accuracy", "agreement")


# ----------------------------------------------------------------------
# Local: layer table
# ----------------------------------------------------------------------
def plot_layer_accuracy(table, *, ax=None, metrics=None, title=None):
    """Probe accuracy and agreement with the model, block by block.

    Parameters
    ----------
    table : LayerTable or pandas.DataFrame
        The :class:`~keras_hybrid_interp.LayerTable` of
        :meth:`HybridInterpreter.evaluate_layers`, or its ``.to_frame()``:
        columns ``block``, ``accuracy``, ``agreement``, ``chance`` (and
        ``depth``), one row per block shallow to deep, and a last row
        ``block == "output"`` for the model itself; optionally
        ``control_accuracy``, ``selectivity`` and ``<metric>_low`` /
        ``<metric>_high`` bootstrap bounds, drawn as error bars.
    ax : matplotlib Axes, optional
        Draws on it; a new figure when None.
    metrics : sequence of {"accuracy", "agreement", "control_accuracy", "selectivity"}, optional
        The columns drawn as lines; default accuracy and agreement, plus
        control accuracy and selectivity when the table has them. When
        ``accuracy`` is all NaN (the table was computed without labels) only
        agreement is drawn, and the legend says so.
    title : str, optional
        Replaces the default title.

    Returns
    -------
    matplotlib.axes.Axes
        x: the blocks in order (positions 0..L-1, labelled with the names);
        y: fraction of samples. Lines carry ``gid`` ``"accuracy"``,
        ``"agreement"``, ``"control_accuracy"``, ``"selectivity"``,
        ``"chance"`` (majority-class rate) and ``"model_accuracy"`` (the
        ``output`` row, a reference line); the error bars of a metric carry
        ``gid`` ``"<metric>_ci"``.
    """
    confidence = None
    if not isinstance(table, pd.DataFrame) and callable(getattr(table, "to_frame", None)) \
            and hasattr(table, "selectivity"):
        confidence = getattr(table, "confidence", None)
        table = table.to_frame()
    if not isinstance(table, pd.DataFrame):
        raise TypeError(
            "`table` must be the LayerTable returned by HybridInterpreter.evaluate_layers() (or its "
            f".to_frame()); received {type(table).__name__}."
        )
    if metrics is None:
        metrics = _DEFAULT_METRICS + tuple(m for m in _METRICS[2:] if m in table.columns)
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = tuple(metrics)
    bad = [m for m in metrics if m not in _METRICS]
    if bad or not metrics:
        raise ValueError(f"`metrics` must be a non-empty subset of {list(_METRICS)}; received {list(metrics)!r}.")
    missing = [c for c in ("block",) + metrics if c not in table.columns]
    if missing:
        raise ValueError(
            f"`table` lacks column(s) {missing}; it has {list(table.columns)}. "
            "Pass the LayerTable of HybridInterpreter.evaluate_layers() (controls and selectivity need "
            "evaluate_layers(..., controls=n))."
        )
    is_out = table["block"].astype(str) == "output"
    blocks = table.loc[~is_out]
    out_row = table.loc[is_out].iloc[-1] if is_out.any() else None
    if len(blocks) == 0:
        raise ValueError("`table` has no block rows (only the 'output' row).")
    full_names = blocks["block"].astype(str).tolist()
    scope = common_scope(full_names)
    names = [ellipsize(n[len(scope):], 30) for n in full_names]
    x = np.arange(len(names))

    unlabeled = "accuracy" in table.columns and bool(np.all(np.isnan(table["accuracy"].to_numpy(dtype=float))))
    drawn = [m for m in metrics if not (m == "accuracy" and unlabeled)]
    if not drawn:  # accuracy asked for, but there are no labels: fall back on agreement
        if "agreement" not in table.columns:
            raise ValueError("`table` has no labels (accuracy is NaN) and no 'agreement' column to plot.")
        drawn = ["agreement"]

    longest = max(len(n) for n in names)
    rotate = len(names) > 6 or longest * len(names) > 60
    ax = new_ax(ax, (max(6.0, 0.5 * len(names) + 3.0), 4.4 if rotate else 4.0))
    palette = dict(zip(_METRICS, sns.color_palette("deep", 4)))
    label = {"accuracy": "Probe accuracy (vs. labels)", "agreement": "Probe agreement with the model",
             "control_accuracy": "Control accuracy (permuted labels)",
             "selectivity": "Selectivity (accuracy \u2212 control)"}
    marker = {"accuracy": "o", "agreement": "s", "control_accuracy": "v", "selectivity": "D"}
    style = {"control_accuracy": "--", "selectivity": "-."}
    intervals = []
    for m in drawn:
        y = blocks[m].to_numpy(dtype=float)
        ax.plot(x, y, marker=marker[m], lw=2, ms=6, color=palette[m], label=label[m], gid=m, zorder=3,
                ls=style.get(m, "-"))
        if f"{m}_low" in blocks.columns and f"{m}_high" in blocks.columns:
            low, high = blocks[f"{m}_low"].to_numpy(dtype=float), blocks[f"{m}_high"].to_numpy(dtype=float)
            intervals.append(low)
            bars = ax.errorbar(x, y,
                               yerr=np.vstack([np.clip(y - low, 0, None), np.clip(high - y, 0, None)]),
                               fmt="none", ecolor=palette[m], elinewidth=1.5, capsize=3, zorder=3)
            for part in bars.lines[2]:
                part.set_gid(f"{m}_ci")
    lowest = min([0.0] + [float(np.nanmin(v)) for v in intervals + [blocks[m].to_numpy(dtype=float) for m in drawn]
                          if np.isfinite(v).any()])
    if intervals:
        what = f"{confidence:.0%} bootstrap interval" if confidence else "bootstrap interval"
        ax.plot([], [], ls="none", marker="|", ms=10, mew=1.5, color="0.3", label=f"Error bars: {what}")

    if "chance" in table.columns and np.isfinite(table["chance"].to_numpy(dtype=float)).any():
        chance = float(np.nanmax(table["chance"].to_numpy(dtype=float)))
        what = "most common model prediction" if unlabeled else "majority class"
        ax.axhline(chance, ls=":", lw=1.5, color="0.4", gid="chance", label=f"Chance: {what} ({chance:.2f})", zorder=2)
    if out_row is not None and "accuracy" in drawn:
        acc = float(out_row["accuracy"])
        if np.isfinite(acc):
            ax.axhline(acc, ls="--", lw=1.5, color=palette["accuracy"], alpha=0.7, gid="model_accuracy",
                       label=f"Model accuracy ({acc:.2f})", zorder=2)

    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=40 if rotate else 0, ha="right" if rotate else "center",
                       rotation_mode="anchor", fontsize=label_size(len(names), 10, 6))
    ax.set_xlim(-0.4, len(names) - 0.6)
    ax.set_ylim(0.0 if lowest >= 0 else lowest - 0.05, 1.05)
    if lowest < 0:
        ax.axhline(0.0, lw=0.8, color="0.6", zorder=1)
    ax.set_xlabel(f"Block{' in ' + scope.rstrip('/') if scope else ''} (shallow \u2192 deep)")
    ax.set_ylabel("Fraction of samples")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    legend_title = "No labels: accuracy not shown,\nagreement only" if unlabeled and "accuracy" in metrics else None
    ax.legend(loc="best", fontsize=8.5, title=legend_title, title_fontsize=8.5, framealpha=0.9)
    if title is None:
        title = ("Layer-wise probe agreement with the model" if drawn == ["agreement"]
                 else "Layer-wise probe accuracy and selectivity" if "selectivity" in drawn
                 else "Layer-wise probe accuracy")
    ax.set_title(title)
    return ax


#: How the task metrics of a layer table are named in plots and reports.
METRIC_LABELS = {
    "accuracy": "accuracy", "loss": "loss", "agreement": "agreement",
    "auroc": "AUROC", "average_precision": "average precision", "f1": "micro F1", "hamming": "Hamming loss",
    "r2": "R\u00b2", "mae": "MAE", "rmse": "RMSE",
    "mean_iou": "mean IoU", "dice": "Dice", "pixel_accuracy": "pixel accuracy",
    "selectivity": "selectivity",
}


def metric_label(name: str) -> str:
    """The display name of a layer-table metric (``"r2"`` -> ``"R²"``, ``"control_auroc"`` -> ``"control AUROC"``)."""
    if name.startswith("control_"):
        return "control " + METRIC_LABELS.get(name[len("control_"):], name[len("control_"):])
    return METRIC_LABELS.get(name, name)


def plot_layer_metrics(table, *, metrics=None, ax=None, title=None):
    """The task's metrics of a layer table, block by block: the headline first, with its interval.

    For the tables of multi-label, regression and segmentation models
    (:attr:`LayerTable.metrics`; a classification table draws
    :func:`plot_layer_accuracy`). Each metric is one line over the blocks,
    shallow to deep; where the table has a bootstrap interval for it
    (``LayerTable.lower`` / ``upper``), error bars; the model's own value (the
    ``output`` row) is a dashed reference line of the same colour.

    Parameters
    ----------
    table : LayerTable
        From :meth:`HybridInterpreter.evaluate_layers` (or the report's).
    metrics : sequence of str, optional
        Metric names of ``table.metrics``; default the headline only
        (``table.headline``: AUROC, R², mean IoU), and the control probes'
        headline when the table has it.
    ax : matplotlib Axes, optional
    title : str, optional

    Returns
    -------
    matplotlib.axes.Axes
        Lines carry ``gid`` ``"<metric>"``, the model's reference line
        ``"model_<metric>"``, the error bars ``"<metric>_ci"``.
    """
    for attr in ("blocks", "metrics", "headline", "lower", "upper"):
        if not hasattr(table, attr):
            raise TypeError("`table` must be the LayerTable of HybridInterpreter.evaluate_layers(); "
                            f"{type(table).__name__} has no `{attr}`.")
    available = dict(table.metrics)
    if not available:
        return plot_layer_accuracy(table, ax=ax, title=title)
    if metrics is None:
        metrics = (table.headline,) + tuple(m for m in (f"control_{table.headline}",) if m in available)
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = tuple(metrics)
    bad = [m for m in metrics if m not in available]
    if bad or not metrics:
        raise ValueError(f"`metrics` must be a non-empty list of the table's metrics {list(available)}; "
                         f"received {list(metrics)!r}.")
    full_names = [str(b) for b in table.blocks]
    is_out = np.array([b == "output" for b in full_names])
    rows = np.flatnonzero(~is_out)
    if len(rows) == 0:
        raise ValueError("`table` has no block rows (only the 'output' row).")
    scope = common_scope([full_names[i] for i in rows])
    names = [ellipsize(full_names[i][len(scope):], 30) for i in rows]
    x = np.arange(len(names))
    longest = max(len(n) for n in names)
    rotate = len(names) > 6 or longest * len(names) > 60
    ax = new_ax(ax, (max(6.0, 0.5 * len(names) + 3.0), 4.4 if rotate else 4.0))
    palette = sns.color_palette("deep", max(len(metrics), 3))
    confidence = getattr(table, "confidence", None)
    values_drawn, intervals = [], False
    for j, m in enumerate(metrics):
        v = np.asarray(available[m], dtype=float)
        y = v[rows]
        ax.plot(x, y, marker="os^vD"[j % 5], lw=2, ms=6, color=palette[j], gid=m, zorder=3,
                ls="--" if m.startswith("control_") else "-", label=f"Probe {metric_label(m)}")
        values_drawn.append(y)
        if m in table.lower and m in table.upper:
            low, high = np.asarray(table.lower[m], float)[rows], np.asarray(table.upper[m], float)[rows]
            bars = ax.errorbar(x, y, yerr=np.vstack([np.clip(y - low, 0, None), np.clip(high - y, 0, None)]),
                               fmt="none", ecolor=palette[j], elinewidth=1.5, capsize=3, zorder=3)
            for part in bars.lines[2]:
                part.set_gid(f"{m}_ci")
            values_drawn += [low, high]
            intervals = True
        if is_out.any() and np.isfinite(v[is_out][-1]):
            ref = float(v[is_out][-1])
            ax.axhline(ref, ls="--", lw=1.5, color=palette[j], alpha=0.7, gid=f"model_{m}",
                       label=f"Model {metric_label(m)} ({ref:.3g})", zorder=2)
            values_drawn.append(np.array([ref]))
    if intervals:
        what = f"{confidence:.0%} bootstrap interval" if confidence else "bootstrap interval"
        ax.plot([], [], ls="none", marker="|", ms=10, mew=1.5, color="0.3", label=f"Error bars: {what}")
    finite = np.concatenate([np.ravel(a) for a in values_drawn])
    finite = finite[np.isfinite(finite)]
    bounded = all(m.split("control_")[-1] in ("auroc", "average_precision", "f1", "hamming", "mean_iou", "dice",
                                              "pixel_accuracy", "agreement") for m in metrics)
    if bounded:
        ax.set_ylim(min(0.0, float(finite.min()) - 0.05) if finite.size else 0.0, 1.05)
    if finite.size and finite.min() < 0:
        ax.axhline(0.0, lw=0.8, color="0.6", zorder=1)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=40 if rotate else 0, ha="right" if rotate else "center",
                       rotation_mode="anchor", fontsize=label_size(len(names), 10, 6))
    ax.set_xlim(-0.4, len(names) - 0.6)
    ax.set_xlabel(f"Block{' in ' + scope.rstrip('/') if scope else ''} (shallow \u2192 deep)")
    ax.set_ylabel(", ".join(metric_label(m) for m in metrics))
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    against = "against the labels" if getattr(table, "labelled", True) else "against the model's own outputs"
    ax.legend(loc="best", fontsize=8.5, framealpha=0.9)
    if title is None:
        title = f"Layer-wise probe {metric_label(metrics[0])} ({against})"
    ax.set_title(title)
    return ax


# ----------------------------------------------------------------------
# Local: layer predictions over a set of inputs
# ----------------------------------------------------------------------
def plot_layer_predictions(predictions, *, ax=None, samples=None, annot="auto", cmap="rocket_r", title=None):
    """What the network believes at each depth: mean probe probability per class, block by block.

    Parameters
    ----------
    predictions : LayerPredictions
        The result of :meth:`HybridInterpreter.layer_predictions`.
    ax : matplotlib Axes, optional
        Draws on it; a new figure when None.
    samples : int, sequence of int or boolean mask, optional
        The samples averaged (default: all). One index shows one input's
        belief, block by block; the indices of one class show what the
        network believes about that class at each depth.
    annot : bool or "auto"
        Write the probabilities in the cells ("auto": at most 12 classes and
        30 rows).
    cmap : str
    title : str, optional

    Returns
    -------
    matplotlib.axes.Axes
        A heatmap: one row per block (shallow to deep) and a last row
        ``model`` (the model's own probabilities), one column per class; the
        cell is the mean probability over the chosen samples, in [0, 1].
    """
    for attr in ("blocks", "probabilities", "model_probabilities", "class_names"):
        if not hasattr(predictions, attr):
            raise TypeError("`predictions` must be a LayerPredictions (from HybridInterpreter.layer_predictions()); "
                            f"received {type(predictions).__name__}.")
    probs = np.asarray(predictions.probabilities, dtype=float)
    model = np.asarray(predictions.model_probabilities, dtype=float)
    n = probs.shape[1]
    if samples is None:
        index = np.arange(n)
    else:
        index = np.atleast_1d(np.asarray(samples))
        if index.dtype == bool:
            if index.shape != (n,):
                raise ValueError(f"`samples` as a mask must have shape ({n},); received {index.shape}.")
            index = np.flatnonzero(index)
        elif not np.issubdtype(index.dtype, np.integer):
            raise TypeError(f"`samples` must be int indices or a boolean mask; received dtype {index.dtype}.")
        if index.size == 0 or index.min() < -n or index.max() >= n:
            raise ValueError(f"`samples` must hold indices in [0, {n}); received {samples!r}.")
    table = np.vstack([probs[:, index].mean(axis=1), model[index].mean(axis=0)[None, :]])
    full_names = [str(b) for b in predictions.blocks]
    scope = common_scope(full_names)
    rows = [ellipsize(b[len(scope):], 30) for b in full_names] + ["model"]
    classes = [str(c) for c in predictions.class_names]
    if annot == "auto":
        annot = len(classes) <= 12 and len(rows) <= 30
    ax = new_ax(ax, (max(6.0, 0.55 * len(classes) + 3.0), max(3.2, 0.35 * len(rows) + 1.8)))
    sns.heatmap(table, ax=ax, vmin=0.0, vmax=1.0, cmap=cmap, annot=bool(annot), fmt=".2f",
                annot_kws={"fontsize": label_size(len(classes), 8, 5)}, xticklabels=classes, yticklabels=rows,
                cbar_kws={"label": "Mean probability"}, linewidths=0.5, linecolor="white")
    ax.axhline(len(rows) - 1, color="white", lw=3)
    ax.set_xlabel("Class")
    ax.set_ylabel(f"Block{' in ' + scope.rstrip('/') if scope else ''} (shallow \u2192 deep)")
    ax.tick_params(axis="y", labelrotation=0, labelsize=label_size(len(rows), 9, 5))
    if title is None:
        which = (f"sample {int(index[0])}" if index.size == 1
                 else f"mean over {index.size} of {n} samples" if index.size < n else f"mean over all {n} samples")
        title = f"What the network believes at each depth\n({which})"
    ax.set_title(title)
    return ax


# ----------------------------------------------------------------------
# Local: one explanation
# ----------------------------------------------------------------------
def upsample(a, size, method="bilinear"):
    """Resizes a 2-D map to ``size = (H, W)`` with NumPy only.

    ``"nearest"`` repeats cells; ``"bilinear"`` interpolates between cell
    centres (half-pixel centres, edges clamped, as ``align_corners=False``),
    so an integer-factor nearest upsampling equals ``np.kron`` with ones and a
    constant map stays constant.

    Parameters
    ----------
    a : ndarray, shape (h, w)
    size : tuple (H, W)
    method : {"bilinear", "nearest"}

    Returns
    -------
    ndarray, shape (H, W), float64
    """
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"`a` must be a 2-D map; received shape {a.shape}.")
    if method not in ("bilinear", "nearest"):
        raise ValueError(f"`method` must be 'bilinear' or 'nearest'; received {method!r}.")
    H, W = (int(s) for s in size)
    h, w = a.shape

    if method == "nearest":
        ri = np.minimum((np.arange(H) * h) // H, h - 1)
        ci = np.minimum((np.arange(W) * w) // W, w - 1)
        return a[np.ix_(ri, ci)]

    def coords(n_out, n_in):
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0, n_in - 1)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    r0, r1, fr = coords(H, h)
    c0, c1, fc = coords(W, w)
    top = a[r0][:, c0] * (1 - fc) + a[r0][:, c1] * fc
    bottom = a[r1][:, c0] * (1 - fc) + a[r1][:, c1] * fc
    return top * (1 - fr)[:, None] + bottom * fr[:, None]


def _display_image(image):
    """(array for imshow in [0, 1], cmap) for an (H, W), (H, W, 1), (H, W, 3) or (H, W, C) input."""
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    elif img.ndim == 3 and img.shape[-1] != 3:
        img = img.mean(axis=-1)
    elif img.ndim not in (2, 3):
        raise ValueError(f"`explanation.image` must have shape (H, W) or (H, W, C); received {img.shape}.")
    lo, hi = np.nanmin(img), np.nanmax(img)
    img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    return img, (None if img.ndim == 3 else "gray")


def _grayscale(img):
    return img if img.ndim == 2 else img @ np.array([0.299, 0.587, 0.114])


def _resolve_class(class_index, class_names, default):
    k = len(class_names)
    if class_index is None:
        return default
    if isinstance(class_index, str):
        if class_index not in class_names:
            raise ValueError(
                f"`class_index` {class_index!r} is not a class name; classes: {short_list(class_names, 20)}."
            )
        return class_names.index(class_index)
    return check_int(class_index, "class_index", min_value=0, max_value=k - 1,
                     expected=f"an int in [0, {k - 1}] or a class name")


def _resolve_blocks(blocks, names):
    if blocks is None:
        return list(range(len(names)))
    if isinstance(blocks, (str, int, np.integer)):
        blocks = [blocks]
    out = []
    for b in blocks:
        if isinstance(b, str):
            if b not in names:
                raise ValueError(f"`blocks` names an unknown block {b!r}; available blocks: {names}.")
            out.append(names.index(b))
        elif is_int(b) and -len(names) <= b < len(names):
            out.append(int(b) % len(names))
        else:
            raise ValueError(f"`blocks` must hold block names or indices into {names}; received {b!r}.")
    if not out:
        raise ValueError("`blocks` is empty; pass None to show every block.")
    return out


def plot_local_explanation(explanation, *, blocks=None, class_index=None, figsize=None, max_classes=12,
                           upsampling="bilinear", alpha=0.55, cmap="inferno", scale="shared", slice_at=None,
                           fig=None):
    """Layer-by-layer explanation of one input, in one figure.

    Top left: the input image. Top right: a heatmap of the probe
    probabilities (rows: blocks shallow to deep, then the model itself;
    columns: classes), the model's class outlined and its name in bold, and
    a line above the decision depth (the first block from which every probe
    predicts the model's class). Bottom: one small panel per block with the
    block's class-evidence map for the model's class (or ``class_index``),
    upsampled to the image size and overlaid on the image in grey.

    The shape of the evidence maps says what the input is:

    * 1-D CNN (maps (T_l, K), input (T, C)): the input panel draws the
      signal; each block panel draws its evidence as a curve along time
      (upsampled to the signal's length), with the signal underneath in grey.
    * 2-D CNN (maps (H_l, W_l, K)): the panels described above.
    * 3-D CNN (maps (D_l, H_l, W_l, K), input (D, H, W, C)): each block gets
      one row of three orthogonal slices of the input (fixed depth, height,
      width index), with the evidence slice through the same point overlaid.
      The slices pass through the block's point of peak evidence for the
      shown class, or through ``slice_at``. The input panel shows the fixed-depth
      slice through the peak of the deepest shown block (or ``slice_at``).

    Parameters
    ----------
    explanation : LocalExplanation
        From :meth:`HybridInterpreter.explain`.
    blocks : list of str or int, optional
        Blocks to show (names or indices); all by default.
    class_index : int or str, optional
        Class whose evidence maps are drawn; default the model's class.
    figsize : tuple, optional
        Default: sized from the number of blocks.
    max_classes : int or None
        With more classes than this (e.g. ImageNet), the heatmap shows the
        ``max_classes`` classes with the highest probability at any block
        (the model's and ``class_index`` always included) and says so.
    upsampling : {"bilinear", "nearest"}
        How the evidence maps are brought to the image size (see :func:`upsample`).
    alpha : float
        Opacity of the evidence overlay.
    cmap : str
        Colour map of the evidence overlay.
    scale : {"shared", "per_block"}
        ``"shared"`` (default): one colour scale for every panel, from the
        smallest to the largest evidence (logit) of the shown class over all
        shown blocks, so blocks compare; the colour bar reads logits.
        ``"per_block"``: each panel scaled to its own minimum and maximum
        (the colour bar reads low to high within a panel). The figure title
        states which. For a 1-D CNN the same choice sets the panels' y-axes.
    slice_at : tuple of 3 ints, optional
        3-D CNNs only: the input voxel ``(d, h, w)`` the three slices pass
        through, for every block. Default: each block's point of peak
        evidence (mapped to the centre of its cell in the input).
    fig : matplotlib Figure, optional
        Draw into this (empty) figure instead of a new one.

    Returns
    -------
    matplotlib.figure.Figure
        Axes labels (``Axes.get_label()``): ``"image"``, ``"probabilities"``
        and ``"evidence:<block>"`` per panel (1-D and 2-D), or
        ``"evidence:<block>:axis<a>"`` for the slice at a fixed index along
        spatial axis ``a`` (0: depth, 1: height, 2: width; 3-D). A 3-D panel's
        ``gid`` is ``"slice:<d>,<h>,<w>"``, the voxel it passes through.
    """
    for attr in ("image", "blocks", "probabilities", "model_probabilities", "decision_index", "evidence_maps",
                 "class_names"):
        if not hasattr(explanation, attr):
            raise TypeError(
                "`explanation` must be a LocalExplanation (from HybridInterpreter.explain()); "
                f"{type(explanation).__name__} has no `{attr}`."
            )
    if upsampling not in ("bilinear", "nearest"):
        raise ValueError(f"`upsampling` must be 'bilinear' or 'nearest'; received {upsampling!r}.")
    if scale not in ("shared", "per_block"):
        raise ValueError(f"`scale` must be 'shared' or 'per_block'; received {scale!r}.")
    max_classes = check_top_k(max_classes, "max_classes")
    names = [str(b) for b in explanation.blocks]
    class_names = [str(c) for c in explanation.class_names]
    probs = np.asarray(explanation.probabilities, dtype=np.float64)
    model_p = np.asarray(explanation.model_probabilities, dtype=np.float64)
    L, K = probs.shape
    model_cls = int(np.argmax(model_p))
    cls = _resolve_class(class_index, class_names, model_cls)
    shown = _resolve_blocks(blocks, names)
    decision = explanation.decision_index
    maps = [np.asarray(explanation.evidence_maps[i], dtype=np.float64) for i in range(len(names))]
    rank = maps[0].ndim - 1
    for i in shown:
        if maps[i].ndim != rank + 1 or maps[i].ndim not in (2, 3, 4) or maps[i].shape[-1] != K:
            raise ValueError(
                f"evidence_maps[{i}] must have shape (T_l, {K}) for a 1-D CNN, (H_l, W_l, {K}) for 2-D or "
                f"(D_l, H_l, W_l, {K}) for 3-D, the same rank for every block; received {maps[i].shape}."
            )
    if slice_at is not None and rank != 3:
        raise ValueError(f"`slice_at` applies to 3-D CNNs (volume evidence maps); these maps are {rank}-D.")

    # Classes shown in the heatmap.
    if max_classes is not None and K > max_classes:
        score = np.max(np.vstack([probs, model_p[None]]), axis=0)
        must = [model_cls] if cls == model_cls else [model_cls, cls]
        rest = [k for k in np.argsort(-score, kind="stable") if k not in must]
        cols = sorted(must + rest[: max(max_classes - len(must), 0)])
    else:
        cols = list(range(K))
    rows = shown
    heat = np.vstack([probs[rows][:, cols], model_p[cols][None]])
    scope = common_scope(names)
    short = [ellipsize(n[len(scope):], 28) for n in names]
    row_labels = [short[i] for i in rows] + ["model output"]
    col_labels = [ellipsize(class_names[k], 24) for k in cols]

    # Layout.
    n_panels = len(shown)
    ncols = min(n_panels, 6) if rank != 3 else 3
    nrows = int(math.ceil(n_panels / ncols)) if rank != 3 else n_panels
    long_cols = max(len(c) for c in col_labels) > 3 or len(cols) > 12
    heat_h = 0.32 * len(row_labels) + (1.6 if long_cols else 1.0)
    top_h = max(2.8, heat_h)
    if figsize is None:
        width = max(9.0, 1.75 * ncols + 0.9, 0.42 * len(cols) + 5.0)
        figsize = (width, top_h + 2.15 * nrows + 0.6)
    if fig is None:
        fig = plt.figure(figsize=figsize, layout="constrained")
    else:
        fig.set_size_inches(*figsize)
        fig.set_layout_engine("constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[top_h, 2.15 * nrows + 0.2], hspace=0.02)

    ax_img, ax_heat = top.subplots(1, 2, width_ratios=[1.0 if rank == 2 else 1.6, 2.4])
    if rank == 1:
        signal = _display_signal(explanation.image)
        ax_img.plot(np.arange(len(signal)), signal, color="0.3", lw=1)
        ax_img.set_xlim(0, len(signal) - 1)
        ax_img.set_xlabel("Time step", fontsize=8)
        ax_img.set_yticks([])
    elif rank == 3:
        volume = _display_volume(explanation.image)
        points = [_slice_point(maps[i][..., cls], volume.shape, slice_at) for i in shown]
        ax_img.imshow(volume[points[-1][0]], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax_img.set_xticks([])
        ax_img.set_yticks([])
        ax_img.set_xlabel(f"depth slice {points[-1][0]}", fontsize=8)
    else:
        img, img_cmap = _display_image(explanation.image)
        ax_img.imshow(img, cmap=img_cmap, interpolation="nearest")
        ax_img.set_xticks([])
        ax_img.set_yticks([])
    ax_img.set_label("image")
    title = f"Input\nmodel: {ellipsize(class_names[model_cls], 18)}\n(p={model_p[model_cls]:.2f})"
    true = explanation.target_text() if getattr(explanation, "target", None) is not None else None
    if true is not None:  # the true label, when the explanation has one (explain(x, y), the report with y)
        title += f"\ntrue: {ellipsize(true.strip(chr(39)), 18)}"
    ax_img.set_title(title, fontsize=10)

    annot = heat.size <= 120
    sns.heatmap(heat, ax=ax_heat, vmin=0.0, vmax=1.0, cmap="Blues", annot=annot, fmt=".2f",
                annot_kws={"fontsize": 7}, linewidths=0.5, linecolor="white",
                xticklabels=col_labels, yticklabels=row_labels,
                cbar_kws={"label": "Probability", "shrink": 0.9})
    ax_heat.set_label("probabilities")
    ax_heat.axhline(len(rows), color="0.25", lw=2)  # separates the model row
    if model_cls in cols:
        j = cols.index(model_cls)
        ax_heat.add_patch(Rectangle((j, 0), 1, len(row_labels), fill=False, ec="black", lw=2, clip_on=False,
                                    gid="model_class"))
        tick = ax_heat.get_xticklabels()[j]
        tick.set_fontweight("bold")
        tick.set_color(HIGHLIGHT)
    if decision is not None and decision in rows:
        r = rows.index(decision)
        ax_heat.axhline(r, color="#e67e22", lw=2.5, gid="decision_index")
        tick = ax_heat.get_yticklabels()[r]
        tick.set_fontweight("bold")
        tick.set_color("#e67e22")
    ax_heat.tick_params(axis="x", labelrotation=45 if long_cols else 0, labelsize=label_size(len(cols), 9, 5))
    if long_cols:
        for t in ax_heat.get_xticklabels():
            t.set_ha("right")
            t.set_rotation_mode("anchor")
    ax_heat.tick_params(axis="y", labelrotation=0, labelsize=label_size(len(row_labels), 9, 5))
    ax_heat.set_xlabel("Class" + (f" (top {len(cols)} of {K} by probability)" if len(cols) < K else ""))
    ax_heat.set_ylabel(f"Block (in {scope.rstrip('/')})" if scope else "")
    if decision is None:
        dtext = "the probes never settle on the model's class"
    else:
        dtext = f"decided at '{short[decision]}' (orange line)"
    ax_heat.set_title(f"Probe probabilities per block; model's class outlined\n{dtext}", fontsize=10)

    # Evidence panels.
    axes = np.atleast_1d(bottom.subplots(nrows, ncols, squeeze=False)).ravel()
    norm_cmap = plt.get_cmap(cmap)
    which = "model's class" if cls == model_cls else "chosen class"
    if rank == 1:
        _signal_panels(bottom, axes, shown, maps, cls, signal, names, short, probs, decision, upsampling, scale,
                       class_names, which)
        return fig
    if rank == 3:
        _volume_panels(bottom, axes, shown, maps, cls, volume, points, names, short, probs, decision, upsampling,
                       scale, alpha, norm_cmap, class_names, which, slice_at is not None)
        return fig
    gray = _grayscale(img)
    # A model with several inputs: each block's map is drawn over the image input it depends on.
    images, block_images = getattr(explanation, "images", None), getattr(explanation, "block_images", None)
    grays = {i: gray if not images or block_images is None or block_images[i] not in images
             else _grayscale(_display_image(images[block_images[i]])[0]) for i in shown}
    ups = []
    for i in shown:
        ups.append(upsample(maps[i][..., cls], grays[i].shape, upsampling))
    g_lo = min(float(u.min()) for u in ups)
    g_hi = max(float(u.max()) for u in ups)
    for ax, i, up in zip(axes, shown, ups):
        ev = np.asarray(maps[i], dtype=np.float64)
        lo, hi = (g_lo, g_hi) if scale == "shared" else (float(up.min()), float(up.max()))
        ax.imshow(grays[i], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.imshow(up, cmap=norm_cmap, alpha=alpha, vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
        ax.set_label(f"evidence:{names[i]}")
        ax.set_xticks([])
        ax.set_yticks([])
        h_l, w_l = ev.shape[:2]
        ax.set_title(f"{ellipsize(short[i], 20)}\n{h_l}\u00d7{w_l}, p={probs[i, cls]:.2f}", fontsize=8)
        if decision is not None and i == decision:
            for s in ax.spines.values():
                s.set_edgecolor("#e67e22")
                s.set_linewidth(2.5)
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    shrink = 0.8 if nrows == 1 else 0.5
    if scale == "shared":
        sm = plt.cm.ScalarMappable(norm=mcolors.Normalize(g_lo, g_hi if g_hi > g_lo else g_lo + 1), cmap=norm_cmap)
        cb = bottom.colorbar(sm, ax=list(axes[:n_panels]), shrink=shrink, aspect=15)
        cb.set_label("Evidence (logit), one scale for all blocks", fontsize=8.5)
        norm_text = "one colour scale across blocks"
    else:
        sm = plt.cm.ScalarMappable(norm=mcolors.Normalize(0, 1), cmap=norm_cmap)
        cb = bottom.colorbar(sm, ax=list(axes[:n_panels]), shrink=shrink, aspect=15, ticks=[0, 1])
        cb.ax.set_yticklabels(["panel min", "panel max"])
        cb.set_label("Evidence, scaled per panel", fontsize=8.5)
        norm_text = "each panel scaled to its own range"
    bottom.suptitle(f"Class evidence for '{ellipsize(class_names[cls], 30)}' ({which}) per block, "
                    f"upsampled ({upsampling}) onto the input ({norm_text}); p = probe probability of that class",
                    fontsize=10)
    return fig



# ----------------------------------------------------------------------
# Local: 1-D signals and 3-D volumes
# ----------------------------------------------------------------------
def _display_signal(image):
    """A (T,) or (T, C) input as one curve scaled to [0, 1] (channels averaged)."""
    sig = np.asarray(image, dtype=np.float64)
    if sig.ndim == 2:
        sig = sig.mean(axis=-1)
    if sig.ndim != 1:
        raise ValueError(f"`explanation.image` of a 1-D CNN must have shape (T,) or (T, C); received {sig.shape}.")
    lo, hi = np.nanmin(sig), np.nanmax(sig)
    return (sig - lo) / (hi - lo) if hi > lo else np.zeros_like(sig)


def _display_volume(image):
    """A (D, H, W) or (D, H, W, C) input as a grey volume in [0, 1] (channels averaged)."""
    vol = np.asarray(image, dtype=np.float64)
    if vol.ndim == 4:
        vol = vol.mean(axis=-1)
    if vol.ndim != 3:
        raise ValueError(
            f"`explanation.image` of a 3-D CNN must have shape (D, H, W) or (D, H, W, C); received {vol.shape}."
        )
    lo, hi = np.nanmin(vol), np.nanmax(vol)
    return (vol - lo) / (hi - lo) if hi > lo else np.zeros_like(vol)


def _slice_point(ev, shape, slice_at):
    """Input voxel the slices pass through: ``slice_at``, or the centre of the cell of peak evidence."""
    if slice_at is not None:
        ok = (isinstance(slice_at, (tuple, list)) and len(slice_at) == 3
              and all(is_int(v) for v in slice_at)
              and all(0 <= v < n for v, n in zip(slice_at, shape)))
        if not ok:
            raise ValueError(
                f"`slice_at` must be a voxel (d, h, w) of the input, each within {tuple(shape)}; received {slice_at!r}."
            )
        return tuple(int(v) for v in slice_at)
    peak = np.unravel_index(int(np.argmax(ev)), ev.shape)
    return tuple(min(int((p + 0.5) * n / m), n - 1) for p, n, m in zip(peak, shape, ev.shape))


def upsample_curve(a, length, method="bilinear"):
    """Resizes a 1-D curve to ``length`` samples (linear or nearest), as :func:`upsample` does for maps."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"`a` must be a 1-D curve; received shape {a.shape}.")
    return upsample(a[None], (1, int(length)), method)[0]


def _signal_panels(fig, axes, shown, maps, cls, signal, names, short, probs, decision, upsampling, scale,
                   class_names, which):
    T = len(signal)
    ups = [upsample_curve(maps[i][..., cls], T, upsampling) for i in shown]
    g_lo = min(float(u.min()) for u in ups)
    g_hi = max(float(u.max()) for u in ups)
    t = np.arange(T)
    for ax, i, up in zip(axes, shown, ups):
        lo, hi = (g_lo, g_hi) if scale == "shared" else (float(up.min()), float(up.max()))
        if hi <= lo:
            hi = lo + 1.0
        pad = 0.05 * (hi - lo)
        # The signal underneath, drawn in the evidence axis' range.
        ax.fill_between(t, lo - pad, lo - pad + signal * (hi - lo + 2 * pad), color="0.85", lw=0, zorder=1)
        ax.plot(t, lo - pad + signal * (hi - lo + 2 * pad), color="0.55", lw=0.8, zorder=2, gid="signal")
        ax.plot(t, up, color=HIGHLIGHT, lw=1.8, zorder=3, gid="evidence")
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_xlim(0, T - 1)
        ax.set_label(f"evidence:{names[i]}")
        ax.tick_params(labelsize=7)
        ax.set_title(f"{ellipsize(short[i], 20)}\n{maps[i].shape[0]} steps, p={probs[i, cls]:.2f}", fontsize=8)
        if decision is not None and i == decision:
            for sp in ax.spines.values():
                sp.set_edgecolor("#e67e22")
                sp.set_linewidth(2.5)
    for ax in axes[len(shown):]:
        ax.set_visible(False)
    axes[0].set_ylabel("Evidence (logit)" if scale == "shared" else "Evidence (own range)", fontsize=8)
    norm_text = "one y-scale across blocks" if scale == "shared" else "each panel on its own y-scale"
    fig.suptitle(f"Class evidence for '{ellipsize(class_names[cls], 30)}' ({which}) along time per block, "
                 f"upsampled ({upsampling}) to the signal\n(grey, underneath; {norm_text}); "
                 "p = probe probability of that class", fontsize=10)


def _volume_panels(fig, axes, shown, maps, cls, volume, points, names, short, probs, decision, upsampling, scale,
                   alpha, norm_cmap, class_names, which, chosen):
    axes = np.asarray(axes).reshape(len(shown), 3)
    D, H, W = volume.shape
    rows = []
    for i, point in zip(shown, points):
        ev = maps[i][..., cls]
        cell = tuple(min(int(p * m / n), m - 1) for p, n, m in zip(point, volume.shape, ev.shape))
        row = []
        for axis in range(3):
            img = np.take(volume, point[axis], axis=axis)
            sl = np.take(ev, cell[axis], axis=axis)
            row.append((img, upsample(sl, img.shape, upsampling)))
        rows.append(row)
    g_lo = min(float(u.min()) for row in rows for _, u in row)
    g_hi = max(float(u.max()) for row in rows for _, u in row)
    axis_names = ("depth", "height", "width")
    for r, (i, point, row) in enumerate(zip(shown, points, rows)):
        ev_all = [u for _, u in row]
        p_lo = min(float(u.min()) for u in ev_all)
        p_hi = max(float(u.max()) for u in ev_all)
        lo, hi = (g_lo, g_hi) if scale == "shared" else (p_lo, p_hi)
        for axis, (img, up) in enumerate(row):
            ax = axes[r, axis]
            ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.imshow(up, cmap=norm_cmap, alpha=alpha, vmin=lo, vmax=hi if hi > lo else lo + 1,
                      interpolation="nearest")
            ax.set_label(f"evidence:{names[i]}:axis{axis}")
            ax.set_gid("slice:" + ",".join(str(v) for v in point))
            ax.set_xticks([])
            ax.set_yticks([])
            title = f"{axis_names[axis]} = {point[axis]}"
            if axis == 0:
                title = f"{ellipsize(short[i], 20)} ({'x'.join(map(str, maps[i].shape[:3]))}), " \
                        f"p={probs[i, cls]:.2f}\n" + title
            ax.set_title(title, fontsize=8)
            if decision is not None and i == decision:
                for sp in ax.spines.values():
                    sp.set_edgecolor("#e67e22")
                    sp.set_linewidth(2.5)
    if scale == "shared":
        sm = plt.cm.ScalarMappable(norm=mcolors.Normalize(g_lo, g_hi if g_hi > g_lo else g_lo + 1), cmap=norm_cmap)
        cb = fig.colorbar(sm, ax=list(axes.ravel()), shrink=0.6, aspect=20)
        cb.set_label("Evidence (logit), one scale for all blocks", fontsize=8.5)
        norm_text = "one colour scale across blocks"
    else:
        sm = plt.cm.ScalarMappable(norm=mcolors.Normalize(0, 1), cmap=norm_cmap)
        cb = fig.colorbar(sm, ax=list(axes.ravel()), shrink=0.6, aspect=20, ticks=[0, 1])
        cb.ax.set_yticklabels(["row min", "row max"])
        cb.set_label("Evidence, scaled per block", fontsize=8.5)
        norm_text = "each block scaled to its own range"
    fig.suptitle(f"Class evidence for '{ellipsize(class_names[cls], 30)}' ({which}) per block: three orthogonal "
                 f"slices through {'the chosen voxel' if chosen else 'the peak evidence of each block'},\n"
                 f"upsampled ({upsampling}) onto the input ({norm_text}); p = probe probability of that class",
                 fontsize=10)
