"""Plots of the local and global results, with seaborn on matplotlib.

Every function takes a result object (or the DataFrame it was made from) and
draws one figure ready to paste into a report: title, axis labels and colour
bar say what is shown and what was left out. Axes-level functions take
``ax=None`` and return the :class:`~matplotlib.axes.Axes` they drew on (a new
figure sized to the content when ``ax`` is None); the multi-panel
:func:`plot_local_explanation` returns its :class:`~matplotlib.figure.Figure`.
Nothing here calls ``plt.show()`` or ``savefig()``, and no global style is
changed.

Large blocks stay readable: the filter heatmaps show the ``top_k`` filters
(ranked as documented per function) and the title says how many were left
out; dead (constant) filters are marked.

Examples
--------
>>> from keras_hybrid_interp import plotting
>>> ax = plotting.plot_layer_accuracy(interp.evaluate_layers(x_test, y_test))
>>> fig = plotting.plot_local_explanation(interp.explain(x_test[0]))
>>> ax = plotting.plot_filter_correlation(ga.filter_correlation(x, "conv3"), top_k=64)
>>> ax.figure.savefig("correlation.png", dpi=150)   # saving is the caller's choice
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import colors as mcolors
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

__all__ = [
    "plot_layer_accuracy",
    "plot_local_explanation",
    "plot_filter_correlation",
    "plot_filter_importance",
    "plot_filter_class_association",
    "plot_layer_similarity",
    "plot_training_dynamics",
    "upsample",
]

_METRICS = ("accuracy", "agreement")
_DEAD_COLOR = "#c0392b"
_HIGHLIGHT = "#1f4e9c"
_NAN_FACE = "#eeeeee"
_NAN_HATCH_COLOR = "#b0b0b0"


# ----------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------
def _new_ax(ax, figsize):
    if ax is None:
        _, ax = plt.subplots(figsize=figsize, layout="constrained")
        return ax
    if not hasattr(ax, "figure") or not hasattr(ax, "plot"):
        raise TypeError(f"`ax` must be a matplotlib Axes or None; received {type(ax).__name__}.")
    return ax


def _check_top_k(top_k, name="top_k"):
    if top_k is None:
        return None
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"`{name}` must be a positive int or None (show all); received {top_k!r}.")
    return int(top_k)


def _hatch_nan(ax):
    """Cells seaborn masks (NaN) show the axes background: make it a hatched grey."""
    ax.patch.set_facecolor(_NAN_FACE)
    ax.patch.set_hatch("///")
    ax.patch.set_edgecolor(_NAN_HATCH_COLOR)


def _tick_step(n, max_labels):
    return 1 if n <= max_labels else int(math.ceil(n / max_labels))


def _label_size(n, base=9.0, lo=5.0):
    return float(np.clip(base * 40.0 / max(n, 40), lo, base))


def _as_square_matrix(obj, argname, kind):
    """(values, row labels) of a square result object or DataFrame."""
    if isinstance(obj, pd.DataFrame):
        df = obj
    elif hasattr(obj, "matrix"):
        df = obj.matrix
        if not isinstance(df, pd.DataFrame):
            df = pd.DataFrame(np.asarray(df))
    elif hasattr(obj, "values") and np.ndim(getattr(obj, "values")) == 2:
        df = pd.DataFrame(np.asarray(obj.values, dtype=np.float64))
    else:
        raise TypeError(
            f"`{argname}` must be a {kind} result (with `.matrix`) or a square DataFrame; "
            f"received {type(obj).__name__}."
        )
    values = np.asarray(df.to_numpy(), dtype=np.float64)
    if values.ndim != 2 or values.shape[0] != values.shape[1]:
        raise ValueError(f"`{argname}` must hold a square matrix; received shape {values.shape}.")
    return values, list(df.index)


def _common_scope(names):
    """The common ``"scope/"`` prefix of nested layer names ("" if none or if it would empty a name)."""
    if len(names) < 2 or not all("/" in n for n in names):
        return ""
    prefix = names[0].rsplit("/", 1)[0] + "/"
    while prefix and not all(n.startswith(prefix) and len(n) > len(prefix) for n in names):
        prefix = prefix[:-1].rsplit("/", 1)[0] + "/" if "/" in prefix[:-1] else ""
    return prefix


def _ellipsize(text, max_len):
    text = str(text)
    if len(text) <= max_len:
        return text
    keep = max_len - 1
    return text[: keep - keep // 2] + "\u2026" + text[len(text) - keep // 2:]


def _short_list(items, limit=8):
    items = [int(i) if isinstance(i, (np.integer,)) else i for i in items]
    if len(items) <= limit:
        return str(list(items))
    return str(list(items[:limit]))[:-1] + f", ... +{len(items) - limit}]"


# ----------------------------------------------------------------------
# Local: layer table
# ----------------------------------------------------------------------
def plot_layer_accuracy(table, *, ax=None, metrics=_METRICS, title=None):
    """Probe accuracy and agreement with the model, block by block.

    Parameters
    ----------
    table : pandas.DataFrame
        The table of :meth:`HybridInterpreter.evaluate_layers`: columns
        ``block``, ``accuracy``, ``agreement``, ``chance`` (and ``depth``), one
        row per block shallow to deep, and a last row ``block == "output"``
        for the model itself.
    ax : matplotlib Axes, optional
        Draws on it; a new figure when None.
    metrics : sequence of {"accuracy", "agreement"}
        The columns drawn as lines. When ``accuracy`` is all NaN (the table
        was computed without labels) only agreement is drawn, and the legend
        says so.
    title : str, optional
        Replaces the default title.

    Returns
    -------
    matplotlib.axes.Axes
        x: the blocks in order (positions 0..L-1, labelled with the names);
        y: fraction of samples. Lines carry ``gid`` ``"accuracy"``,
        ``"agreement"``, ``"chance"`` (majority-class rate) and
        ``"model_accuracy"`` (the ``output`` row, a reference line).
    """
    if not isinstance(table, pd.DataFrame):
        raise TypeError(
            "`table` must be the DataFrame returned by HybridInterpreter.evaluate_layers(); "
            f"received {type(table).__name__}."
        )
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
            "Pass the DataFrame of HybridInterpreter.evaluate_layers()."
        )
    is_out = table["block"].astype(str) == "output"
    blocks = table.loc[~is_out]
    out_row = table.loc[is_out].iloc[-1] if is_out.any() else None
    if len(blocks) == 0:
        raise ValueError("`table` has no block rows (only the 'output' row).")
    full_names = blocks["block"].astype(str).tolist()
    scope = _common_scope(full_names)
    names = [_ellipsize(n[len(scope):], 30) for n in full_names]
    x = np.arange(len(names))

    unlabeled = "accuracy" in table.columns and bool(np.all(np.isnan(table["accuracy"].to_numpy(dtype=float))))
    drawn = [m for m in metrics if not (m == "accuracy" and unlabeled)]
    if not drawn:  # accuracy asked for, but there are no labels: fall back on agreement
        if "agreement" not in table.columns:
            raise ValueError("`table` has no labels (accuracy is NaN) and no 'agreement' column to plot.")
        drawn = ["agreement"]

    longest = max(len(n) for n in names)
    rotate = len(names) > 6 or longest * len(names) > 60
    ax = _new_ax(ax, (max(6.0, 0.5 * len(names) + 3.0), 4.4 if rotate else 4.0))
    palette = dict(zip(_METRICS, sns.color_palette("deep", 2)))
    label = {"accuracy": "Probe accuracy (vs. labels)", "agreement": "Probe agreement with the model"}
    marker = {"accuracy": "o", "agreement": "s"}
    for m in drawn:
        y = blocks[m].to_numpy(dtype=float)
        ax.plot(x, y, marker=marker[m], lw=2, ms=6, color=palette[m], label=label[m], gid=m, zorder=3)

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
                       rotation_mode="anchor", fontsize=_label_size(len(names), 10, 6))
    ax.set_xlim(-0.4, len(names) - 0.6)
    ax.set_ylim(0.0, 1.05)
    ax.set_xlabel(f"Block{' in ' + scope.rstrip('/') if scope else ''} (shallow \u2192 deep)")
    ax.set_ylabel("Fraction of samples")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    legend_title = "No labels: accuracy not shown,\nagreement only" if unlabeled and "accuracy" in metrics else None
    ax.legend(loc="best", fontsize=8.5, title=legend_title, title_fontsize=8.5, framealpha=0.9)
    if title is None:
        title = ("Layer-wise probe agreement with the model" if drawn == ["agreement"]
                 else "Layer-wise probe accuracy")
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
            raise ValueError(f"`class_index` {class_index!r} is not a class name; classes: {_short_list(class_names, 20)}.")
        return class_names.index(class_index)
    if isinstance(class_index, bool) or not isinstance(class_index, (int, np.integer)) or not 0 <= class_index < k:
        raise ValueError(f"`class_index` must be an int in [0, {k - 1}] or a class name; received {class_index!r}.")
    return int(class_index)


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
        elif isinstance(b, (int, np.integer)) and not isinstance(b, bool) and -len(names) <= b < len(names):
            out.append(int(b) % len(names))
        else:
            raise ValueError(f"`blocks` must hold block names or indices into {names}; received {b!r}.")
    if not out:
        raise ValueError("`blocks` is empty; pass None to show every block.")
    return out


def plot_local_explanation(explanation, *, blocks=None, class_index=None, figsize=None, max_classes=12,
                           upsampling="bilinear", alpha=0.55, cmap="inferno", scale="shared", fig=None):
    """Layer-by-layer explanation of one input, in one figure.

    Top left: the input image. Top right: a heatmap of the probe
    probabilities (rows: blocks shallow to deep, then the model itself;
    columns: classes), the model's class outlined and its name in bold, and
    a line above the decision depth (the first block from which every probe
    predicts the model's class). Bottom: one small panel per block with the
    block's class-evidence map for the model's class (or ``class_index``),
    upsampled to the image size and overlaid on the image in grey.

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
        states which.
    fig : matplotlib Figure, optional
        Draw into this (empty) figure instead of a new one.

    Returns
    -------
    matplotlib.figure.Figure
        Axes labels (``Axes.get_label()``): ``"image"``, ``"probabilities"``
        and ``"evidence:<block>"`` per panel.
    """
    for attr in ("image", "blocks", "probabilities", "model_probabilities", "decision_depth", "evidence_maps",
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
    max_classes = _check_top_k(max_classes, "max_classes")
    names = [str(b) for b in explanation.blocks]
    class_names = [str(c) for c in explanation.class_names]
    probs = np.asarray(explanation.probabilities, dtype=np.float64)
    model_p = np.asarray(explanation.model_probabilities, dtype=np.float64)
    L, K = probs.shape
    model_cls = int(np.argmax(model_p))
    cls = _resolve_class(class_index, class_names, model_cls)
    shown = _resolve_blocks(blocks, names)
    decision = explanation.decision_depth

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
    scope = _common_scope(names)
    short = [_ellipsize(n[len(scope):], 28) for n in names]
    row_labels = [short[i] for i in rows] + ["model output"]
    col_labels = [_ellipsize(class_names[k], 24) for k in cols]

    # Layout.
    n_panels = len(shown)
    ncols = min(n_panels, 6)
    nrows = int(math.ceil(n_panels / ncols))
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

    ax_img, ax_heat = top.subplots(1, 2, width_ratios=[1.0, 2.4])
    img, img_cmap = _display_image(explanation.image)
    ax_img.imshow(img, cmap=img_cmap, interpolation="nearest")
    ax_img.set_label("image")
    ax_img.set_xticks([])
    ax_img.set_yticks([])
    ax_img.set_title(f"Input\nmodel: {_ellipsize(class_names[model_cls], 18)}\n(p={model_p[model_cls]:.2f})",
                     fontsize=10)

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
        tick.set_color(_HIGHLIGHT)
    if decision is not None and decision in rows:
        r = rows.index(decision)
        ax_heat.axhline(r, color="#e67e22", lw=2.5, gid="decision_depth")
        tick = ax_heat.get_yticklabels()[r]
        tick.set_fontweight("bold")
        tick.set_color("#e67e22")
    ax_heat.tick_params(axis="x", labelrotation=45 if long_cols else 0, labelsize=_label_size(len(cols), 9, 5))
    if long_cols:
        for t in ax_heat.get_xticklabels():
            t.set_ha("right")
            t.set_rotation_mode("anchor")
    ax_heat.tick_params(axis="y", labelrotation=0, labelsize=_label_size(len(row_labels), 9, 5))
    ax_heat.set_xlabel("Class" + (f" (top {len(cols)} of {K} by probability)" if len(cols) < K else ""))
    ax_heat.set_ylabel(f"Block (in {scope.rstrip('/')})" if scope else "")
    if decision is None:
        dtext = "the probes never settle on the model's class"
    else:
        dtext = f"decided at '{short[decision]}' (orange line)"
    ax_heat.set_title(f"Probe probabilities per block; model's class outlined\n{dtext}", fontsize=10)

    # Evidence panels.
    axes = np.atleast_1d(bottom.subplots(nrows, ncols, squeeze=False)).ravel()
    gray = _grayscale(img)
    H, W = gray.shape
    maps = explanation.evidence_maps
    norm_cmap = plt.get_cmap(cmap)
    ups = []
    for i in shown:
        ev = np.asarray(maps[i], dtype=np.float64)
        if ev.ndim != 3 or ev.shape[-1] != K:
            raise ValueError(f"evidence_maps[{i}] must have shape (H_l, W_l, {K}); received {ev.shape}.")
        ups.append(upsample(ev[..., cls], (H, W), upsampling))
    g_lo = min(float(u.min()) for u in ups)
    g_hi = max(float(u.max()) for u in ups)
    for ax, i, up in zip(axes, shown, ups):
        ev = np.asarray(maps[i], dtype=np.float64)
        lo, hi = (g_lo, g_hi) if scale == "shared" else (float(up.min()), float(up.max()))
        ax.imshow(gray, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.imshow(up, cmap=norm_cmap, alpha=alpha, vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
        ax.set_label(f"evidence:{names[i]}")
        ax.set_xticks([])
        ax.set_yticks([])
        h_l, w_l = ev.shape[:2]
        ax.set_title(f"{_ellipsize(short[i], 20)}\n{h_l}\u00d7{w_l}, p={probs[i, cls]:.2f}", fontsize=8)
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
    which = "model's class" if cls == model_cls else "chosen class"
    bottom.suptitle(f"Class evidence for '{_ellipsize(class_names[cls], 30)}' ({which}) per block, "
                    f"upsampled ({upsampling}) onto the input ({norm_text}); p = probe probability of that class",
                    fontsize=10)
    return fig


# ----------------------------------------------------------------------
# Global: filter correlation
# ----------------------------------------------------------------------
def _cluster_order(sub):
    """Leaf order of average linkage on 1 - |r| (NaN treated as r = 0)."""
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    n = len(sub)
    if n < 3:
        return np.arange(n), None
    d = 1.0 - np.abs(np.nan_to_num(sub, nan=0.0))
    d = np.clip((d + d.T) / 2, 0.0, None)
    np.fill_diagonal(d, 0.0)
    z = linkage(squareform(d, checks=False), method="average")
    return leaves_list(z), z


def plot_filter_correlation(corr, *, ax=None, top_k=64, cluster=True, threshold=0.5, filters=None,
                            cmap="vlag", annot="auto", title=None):
    """Heatmap of the correlation between the filters of a block.

    Parameters
    ----------
    corr : FilterCorrelation or pandas.DataFrame
        From :meth:`GlobalAnalyzer.filter_correlation` (``.matrix``,
        ``.dead_filters``, ``.block``), or a ``C x C`` correlation DataFrame
        (filters whose row is all NaN are then taken as dead).
    ax : matplotlib Axes, optional
    top_k : int or None
        With more filters than this, shows the ``top_k`` filters with the
        largest mean ``|r|`` to the other live filters (the most redundant
        ones), plus dead filters up to a quarter of ``top_k``; the title says
        how many were left out. None shows every filter.
    cluster : bool
        Orders the shown live filters by average-linkage clustering on
        ``1 - |r|`` (as :meth:`FilterCorrelation.clusters`), and outlines the
        clusters cut at ``threshold``; else by filter index. Dead filters come last.
    threshold : float in [0, 1] or None
        Distance at which the outlined clusters are cut; None draws no outlines.
    filters : list of int, optional
        Exactly these filters (in this order unless ``cluster``); overrides ``top_k``.
    cmap : str
        Diverging colour map, centred at 0 over [-1, 1].
    annot : "auto" or bool
        Writes ``r`` in the cells; "auto" does it for at most 12 filters.
    title : str, optional

    Returns
    -------
    matplotlib.axes.Axes
        The heatmap (``ax.collections[0]``) holds the shown sub-matrix, rows
        and columns labelled with the filter indices. Dead filters are hatched
        and their labels red.
    """
    values, labels = _as_square_matrix(corr, "corr", "FilterCorrelation")
    C = len(values)
    top_k = _check_top_k(top_k)
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating))
                                  or not 0 <= threshold <= 1):
        raise ValueError(f"`threshold` must be a float in [0, 1] (a distance 1 - |r|) or None; received {threshold!r}.")
    if getattr(corr, "dead_filters", None) is not None and not isinstance(corr, pd.DataFrame):
        dead = np.asarray(corr.dead_filters, dtype=int).ravel()
    else:
        dead = np.flatnonzero(np.all(np.isnan(values), axis=1))
    is_dead = np.zeros(C, dtype=bool)
    is_dead[dead] = True
    live = np.flatnonzero(~is_dead)
    block = getattr(corr, "block", None)

    # Mean |r| of each live filter to the other live filters.
    sub_abs = np.abs(values[np.ix_(live, live)])
    if len(live) > 1:
        off = ~np.eye(len(live), dtype=bool)
        with np.errstate(invalid="ignore"):
            mean_abs = np.nanmean(np.where(off, sub_abs, np.nan), axis=1)
        mean_abs = np.nan_to_num(mean_abs, nan=0.0)
    else:
        mean_abs = np.zeros(len(live))

    if filters is not None:
        sel = np.asarray(filters).ravel()
        if sel.dtype.kind not in "iu" or len(sel) == 0 or sel.min() < 0 or sel.max() >= C:
            raise ValueError(f"`filters` must be a non-empty list of filter indices in 0..{C - 1}; received {filters!r}.")
        sel_live = np.array([f for f in sel if not is_dead[f]], dtype=int)
        sel_dead = np.array([f for f in sel if is_dead[f]], dtype=int)
        how = f"showing {len(sel)} chosen of {C} filters"
    elif top_k is None or C <= top_k:
        sel_live, sel_dead = live, dead
        how = f"all {C} filters"
    else:
        n_dead = min(len(dead), top_k // 4)
        n_live = min(len(live), top_k - n_dead)
        rank = np.argsort(-mean_abs, kind="stable")[:n_live]
        sel_live = np.sort(live[rank])
        sel_dead = dead[:n_dead]
        how = (f"showing {len(sel_live) + len(sel_dead)} of {C} filters "
               f"(the {len(sel_live)} with the largest mean |r|)")

    order_live = sel_live
    z = leaves = None
    if cluster and len(sel_live) >= 3:
        leaves, z = _cluster_order(values[np.ix_(sel_live, sel_live)])
        order_live = sel_live[leaves]
    order = np.concatenate([order_live, sel_dead]).astype(int)
    n = len(order)
    sub = values[np.ix_(order, order)]
    names = [str(labels[i]) for i in order]
    frame = pd.DataFrame(sub, index=names, columns=names)

    side = float(np.clip(0.13 * n + 2.5, 4.5, 10.0))
    ax = _new_ax(ax, (side + 1.3, side))
    step = _tick_step(n, 64)
    if annot == "auto":
        annot = n <= 12
    stat = getattr(corr, "statistic", None)
    cbar_label = "Pearson r" + (f" of per-sample spatial {stat}" if stat else "")
    sns.heatmap(frame, ax=ax, cmap=cmap, vmin=-1.0, vmax=1.0, square=True,
                xticklabels=step, yticklabels=step, annot=bool(annot), fmt=".2f", annot_kws={"fontsize": 7},
                cbar_kws={"label": cbar_label, "shrink": 0.75, "ticks": [-1, -0.5, 0, 0.5, 1]})
    _hatch_nan(ax)
    fs = _label_size(n / step, 9, 5)
    ax.tick_params(axis="both", labelsize=fs)
    dead_set = {str(labels[i]) for i in sel_dead}
    for t in list(ax.get_xticklabels()) + list(ax.get_yticklabels()):
        if t.get_text() in dead_set:
            t.set_color(_DEAD_COLOR)
            t.set_fontweight("bold")
    ax.set_xlabel("Filter")
    ax.set_ylabel("Filter")

    n_out = 0
    if cluster and z is not None and threshold is not None:
        from scipy.cluster.hierarchy import fcluster

        lab = fcluster(z, t=float(threshold), criterion="distance")
        lab = lab[leaves]
        start = 0
        for i in range(1, len(lab) + 1):
            if i == len(lab) or lab[i] != lab[start]:
                if i - start >= 2:
                    ax.add_patch(Rectangle((start, start), i - start, i - start, fill=False, ec="black", lw=1.2,
                                           gid="cluster"))
                    n_out += 1
                start = i

    parts = [how]
    if len(dead):
        shown_dead = len(sel_dead)
        if shown_dead == len(dead):
            parts.append(f"{len(dead)} dead filter{'s' if len(dead) != 1 else ''} hatched (constant, r undefined)")
        else:
            parts.append(f"{len(dead)} dead filters, {shown_dead} shown hatched")
    if cluster and z is not None:
        parts.append("clustered on 1-|r|" + (f"; boxes: mean |r| \u2265 {1 - threshold:.2g}"
                                             if threshold is not None and n_out else ""))
    ns = getattr(corr, "n_samples", None)
    if ns is not None:
        parts.append(f"n={ns}")
    if title is None:
        title = "Filter correlation" + (f" \u2014 {block}" if block else "")
    ax.set_title(title + "\n" + _subtitle(parts), fontsize=10)
    return ax


def _subtitle(parts, width=80):
    """Joins the parts with "; " into lines of at most ``width`` characters, breaking between parts."""
    lines, cur = [], ""
    for p in parts:
        cand = f"{cur}; {p}" if cur else p
        if cur and len(cand) > width:
            lines.append(cur + ";")
            cur = p
        else:
            cur = cand
    if cur:
        lines.append(cur)
    return "\n".join(lines)


# ----------------------------------------------------------------------
# Global: filter importance
# ----------------------------------------------------------------------
def _importance_data(imp):
    """(mean, std, labels, n_repeats, dead set, meta dict) from a FilterImportance or its frame."""
    if isinstance(imp, pd.DataFrame):
        if "importance" not in imp.columns:
            raise ValueError(f"`imp` DataFrame needs an 'importance' column (FilterImportance.to_frame()); has {list(imp.columns)}.")
        key = "filter" if "filter" in imp.columns else "group" if "group" in imp.columns else None
        if key is None:
            raise ValueError("`imp` DataFrame needs a 'filter' or 'group' column (FilterImportance.to_frame()).")
        g = imp.groupby(key, sort=True)["importance"]
        mean = g.mean().to_numpy(dtype=float)
        std = g.std(ddof=0).fillna(0.0).to_numpy(dtype=float)
        ids = g.mean().index.tolist()
        if key == "group" and "filters" in imp.columns:
            members = imp.groupby("group", sort=True)["filters"].first().tolist()
            labels = [_group_label(i, str(m).split(",")) for i, m in zip(ids, members)]
        else:
            labels = [f"filter {i}" if key == "filter" else f"group {i}" for i in ids]
        reps = int(imp.groupby(key).size().max())
        meta = {"block": imp["block"].iloc[0] if "block" in imp.columns else None,
                "method": imp["method"].iloc[0] if "method" in imp.columns else None,
                "grouped": key == "group"}
        return mean, std, labels, reps, set(), meta
    if not hasattr(imp, "importances"):
        raise TypeError(
            "`imp` must be a FilterImportance (from GlobalAnalyzer.filter_importance()) or its .to_frame(); "
            f"received {type(imp).__name__}."
        )
    arr = np.asarray(imp.importances, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    mean = np.asarray(getattr(imp, "importances_mean", arr.mean(axis=1)), dtype=np.float64)
    std = np.asarray(getattr(imp, "importances_std", arr.std(axis=1)), dtype=np.float64)
    groups = getattr(imp, "groups", None)
    dead = set(np.asarray(getattr(imp, "dead_filters", []), dtype=int).ravel().tolist())
    if groups is None:
        labels = [f"filter {i}" + (" (dead)" if i in dead else "") for i in range(len(mean))]
    else:
        labels = [_group_label(i, g) for i, g in enumerate(groups)]
    meta = {k: getattr(imp, k, None) for k in ("block", "method", "scoring", "baseline_score", "n_samples")}
    meta["grouped"] = groups is not None
    return mean, std, labels, arr.shape[1], dead, meta


def _group_label(i, members, limit=3):
    members = [str(int(m)) if not isinstance(m, str) else m.strip() for m in members]
    body = ",".join(members[:limit]) + (f",\u2026 (+{len(members) - limit})" if len(members) > limit else "")
    return f"group {i}: {body}"


def plot_filter_importance(imp, *, ax=None, top_k=20, color=None, title=None):
    """Horizontal bars of the most important filters (or groups), with error bars.

    Parameters
    ----------
    imp : FilterImportance or pandas.DataFrame
        From :meth:`GlobalAnalyzer.filter_importance`, or its ``.to_frame()``
        (then the baseline score and scoring are unknown and not shown).
    ax : matplotlib Axes, optional
    top_k : int or None
        Number of filters (groups) shown, by decreasing mean importance
        (ties by index); None shows all.
    color : colour, optional
    title : str, optional

    Returns
    -------
    matplotlib.axes.Axes
        The :class:`~matplotlib.container.BarContainer` in ``ax.containers``: bar widths are
        ``importances_mean`` of the shown filters, most important on top;
        error bars are ``importances_std`` (over the permutation repeats; none
        for a single repeat). Labels of dead filters say "(dead)". Bars whose
        importance cannot be told apart from 0 (``FilterImportance.within_noise``)
        are hatched and pale, and the subtitle counts them.
    """
    top_k = _check_top_k(top_k)
    mean, std, labels, reps, dead, meta = _importance_data(imp)
    G = len(mean)
    order = np.argsort(-np.nan_to_num(mean, nan=-np.inf), kind="stable")
    if top_k is not None:
        order = order[:top_k]
    k = len(order)
    ax = _new_ax(ax, (7.0, float(np.clip(0.28 * k + 1.6, 3.0, 12.0))))
    y = np.arange(k)
    color = sns.color_palette("deep")[0] if color is None else color
    bars = ax.barh(y, mean[order], xerr=std[order] if reps > 1 else None, color=color, alpha=0.9, height=0.7,
                   error_kw={"ecolor": "0.2", "capsize": 2.5, "elinewidth": 1.0}, zorder=3)
    # Filters whose importance cannot be told apart from 0 (FilterImportance.within_noise).
    noisy = np.asarray(getattr(imp, "within_noise", np.zeros(G, bool))) if reps > 1 else np.zeros(G, bool)
    for bar, i in zip(bars, order):
        if noisy[i]:
            bar.set_alpha(0.35)
            bar.set_hatch("///")
            bar.set_gid("within_noise")
    ax.set_yticks(y)
    ax.set_yticklabels([labels[i] for i in order], fontsize=_label_size(k, 9, 5))
    for t, i in zip(ax.get_yticklabels(), order):
        if not meta.get("grouped") and i in dead:
            t.set_color(_DEAD_COLOR)
    ax.set_ylim(k - 0.5, -0.5)  # most important on top
    ax.axvline(0.0, color="0.3", lw=0.8, zorder=2)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)

    method = meta.get("method")
    scoring = meta.get("scoring")
    base = meta.get("baseline_score")
    if method == "taylor":
        xlabel = "Estimated loss increase |mean a\u00b7\u2202L/\u2202a| (cross-entropy)"
        if base is not None:
            xlabel += f"\nbaseline loss {-float(base):.3g}"
    elif scoring == "loss":
        xlabel = "Importance: increase in cross-entropy loss"
        if base is not None:
            xlabel += f" (baseline loss {-float(base):.3g})"
    elif scoring is not None:
        xlabel = f"Importance: drop in {scoring}"
        if base is not None:
            xlabel += f" (baseline {scoring} {float(base):.3g})"
    else:
        xlabel = "Importance: drop in score"
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Group" if meta.get("grouped") else "Filter")

    unit = "groups" if meta.get("grouped") else "filters"
    parts = [f"top {k} of {G} {unit}" if k < G else f"all {G} {unit}"]
    if method is not None:
        parts.insert(0, f"{method}" + (f", {reps} repeats (error bars: std)" if reps > 1 else ""))
    if meta.get("n_samples") is not None:
        parts.append(f"n={meta['n_samples']}")
    if noisy[order].any():
        parts.append(f"hatched: {int(noisy[order].sum())} within noise (95% interval covers 0)")
    if title is None:
        block = meta.get("block")
        title = "Filter importance" + (f" \u2014 {block}" if block else "")
    ax.set_title(title + "\n" + _subtitle(parts), fontsize=10)
    return ax


# ----------------------------------------------------------------------
# Global: filter-class association
# ----------------------------------------------------------------------
def plot_filter_class_association(assoc, *, ax=None, top_k=32, class_names=None, cmap="vlag", annot="auto",
                                  title=None):
    """Heatmap of the association between filters (rows) and classes (columns).

    Parameters
    ----------
    assoc : FilterClassAssociation or pandas.DataFrame
        From :meth:`GlobalAnalyzer.filter_class_association` (``.values`` or
        ``.table``: ``C x K`` point-biserial ``r``), or a ``C x K`` DataFrame.
    ax : matplotlib Axes, optional
    top_k : int or None
        With more filters than this, shows the ``top_k`` with the largest
        ``max_k |r_ck|``; dead filters (all NaN) are never shown. The title
        says how many were left out.
    class_names : list of str, optional
        Column labels; default the DataFrame's columns or the class indices.
    cmap : str
        Diverging colour map centred at 0 over [-1, 1].
    annot : "auto" or bool
        Writes ``r`` in the cells; "auto" does it for at most 120 cells.
    title : str, optional

    Returns
    -------
    matplotlib.axes.Axes
        Rows are grouped by the class each filter is most positively
        associated with (classes in order), then by decreasing ``r``; row
        labels are the filter indices.
    """
    top_k = _check_top_k(top_k)
    if isinstance(assoc, pd.DataFrame):
        df = assoc
    elif hasattr(assoc, "values") and np.ndim(getattr(assoc, "values")) == 2:
        df = pd.DataFrame(np.asarray(assoc.values, dtype=np.float64))
    elif hasattr(assoc, "table"):
        df = assoc.table
    else:
        raise TypeError(
            "`assoc` must be a FilterClassAssociation (from GlobalAnalyzer.filter_class_association()) "
            f"or a C x K DataFrame; received {type(assoc).__name__}."
        )
    values = np.asarray(df.to_numpy(), dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"`assoc` must hold a (filters, classes) matrix; received shape {values.shape}.")
    C, K = values.shape
    row_ids = list(df.index)
    if class_names is None:
        class_names = getattr(assoc, "class_names", None) or [str(c) for c in df.columns]
    class_names = [str(c) for c in class_names]
    if len(class_names) != K:
        raise ValueError(f"`class_names` has {len(class_names)} names but `assoc` has {K} classes.")

    all_nan = np.all(np.isnan(values), axis=1)
    if getattr(assoc, "dead_filters", None) is not None and not isinstance(assoc, pd.DataFrame):
        n_dead = len(np.asarray(assoc.dead_filters).ravel())
    else:
        n_dead = int(all_nan.sum())
    cand = np.flatnonzero(~all_nan)
    strength = np.nanmax(np.abs(values[cand]), axis=1) if len(cand) else np.zeros(0)
    rank = cand[np.argsort(-strength, kind="stable")]
    sel = rank if top_k is None else rank[:top_k]
    if len(sel) == 0:
        raise ValueError("`assoc` has no filter with a finite association (all dead or NaN).")
    best = np.nanargmax(np.where(np.isnan(values[sel]), -np.inf, values[sel]), axis=1)
    best_r = values[sel, best]
    order = sel[np.lexsort((-best_r, best))]
    sub = values[order]
    rows = [str(row_ids[i]) for i in order]
    frame = pd.DataFrame(sub, index=rows, columns=class_names)

    n = len(order)
    long_cols = max(len(c) for c in class_names) > 3 or K > 12
    ax = _new_ax(ax, (float(np.clip(0.45 * K + 3.0, 5.0, 14.0)),
                      float(np.clip(0.22 * n + 2.0 + (0.8 if long_cols else 0), 3.5, 12.0))))
    if annot == "auto":
        annot = sub.size <= 120
    stat = getattr(assoc, "statistic", None)
    sns.heatmap(frame, ax=ax, cmap=cmap, vmin=-1.0, vmax=1.0, annot=bool(annot), fmt=".2f",
                annot_kws={"fontsize": 7}, xticklabels=_tick_step(K, 50), yticklabels=_tick_step(n, 64),
                linewidths=0.3 if sub.size <= 2000 else 0, linecolor="white",
                cbar_kws={"label": "Point-biserial r" + (f" (per-sample spatial {stat})" if stat else ""),
                          "shrink": 0.8, "ticks": [-1, -0.5, 0, 0.5, 1]})
    _hatch_nan(ax)
    ax.tick_params(axis="y", labelrotation=0, labelsize=_label_size(n, 9, 5))
    ax.tick_params(axis="x", labelsize=_label_size(K, 9, 5))
    if long_cols:
        for t in ax.get_xticklabels():
            t.set_rotation(45)
            t.set_ha("right")
            t.set_rotation_mode("anchor")
    ax.set_xlabel("Class")
    ax.set_ylabel("Filter")

    if n < len(cand):
        parts = [f"showing {n} of {C} filters (largest max |r| over classes)"]
    else:
        parts = [f"all {n} live filters" if n < C else f"all {C} filters"]
    if n_dead:
        parts.append(f"{n_dead} dead filter{'s' if n_dead != 1 else ''} not shown")
    absent = int(np.all(np.isnan(sub), axis=0).sum())
    if absent:
        parts.append(f"{absent} class{'es' if absent != 1 else ''} absent from the data (hatched)")
    src = getattr(assoc, "label_source", None)
    ns = getattr(assoc, "n_samples", None)
    if src or ns is not None:
        parts.append(", ".join(p for p in (f"labels from {src}" if src else "", f"n={ns}" if ns is not None else "") if p))
    if title is None:
        block = getattr(assoc, "block", None)
        title = "Filter\u2013class association" + (f" \u2014 {block}" if block else "")
    ax.set_title(title + "\n" + _subtitle(parts), fontsize=10)
    return ax


# ----------------------------------------------------------------------
# Global: layer similarity
# ----------------------------------------------------------------------
def plot_layer_similarity(sim, *, ax=None, annot="auto", cmap="rocket_r", title=None):
    """Heatmap of the linear CKA between blocks.

    Parameters
    ----------
    sim : LayerSimilarity or pandas.DataFrame
        From :meth:`GlobalAnalyzer.layer_similarity` (``.matrix``: ``L x L``
        labelled by block), or an ``L x L`` DataFrame.
    ax : matplotlib Axes, optional
    annot : "auto" or bool
        Writes the CKA in the cells; "auto" does it for at most 12 blocks.
    cmap : str
        Sequential colour map over [0, 1].
    title : str, optional

    Returns
    -------
    matplotlib.axes.Axes
        Rows and columns are the blocks in order, shallow (top/left) to deep.
    """
    values, labels = _as_square_matrix(sim, "sim", "LayerSimilarity")
    if not isinstance(sim, pd.DataFrame) and getattr(sim, "blocks", None) is not None:
        labels = list(sim.blocks)
    full_names = [str(b) for b in labels]
    scope = _common_scope(full_names)
    names = [_ellipsize(n[len(scope):], 30) for n in full_names]
    L = len(names)
    if annot == "auto":
        annot = L <= 12
    longest = max((len(n) for n in names), default=1)
    side = float(np.clip(0.45 * L + 0.07 * longest + 2.5, 4.5, 11.0))
    ax = _new_ax(ax, (side + 1.2, side))
    step = _tick_step(L, 60)
    sns.heatmap(pd.DataFrame(values, index=names, columns=names), ax=ax, vmin=0.0, vmax=1.0, cmap=cmap,
                square=True, annot=bool(annot), fmt=".2f", annot_kws={"fontsize": 8 if L <= 8 else 6.5},
                xticklabels=step, yticklabels=step, linewidths=0.5 if L <= 30 else 0, linecolor="white",
                cbar_kws={"label": "Linear CKA", "shrink": 0.8})
    _hatch_nan(ax)
    fs = _label_size(L / step, 9, 5)
    ax.tick_params(axis="y", labelrotation=0, labelsize=fs)
    ax.tick_params(axis="x", labelsize=fs)
    if longest > 6 or L > 8:
        for t in ax.get_xticklabels():
            t.set_rotation(45)
            t.set_ha("right")
            t.set_rotation_mode("anchor")
    else:
        ax.tick_params(axis="x", labelrotation=0)
    where = f" (in {scope.rstrip('/')})" if scope else ""
    ax.set_xlabel("Block" + where)
    ax.set_ylabel("Block" + where)
    rep = getattr(sim, "representation", None)
    ns = getattr(sim, "n_samples", None)
    sub = "; ".join(p for p in (f"features: {rep}" if rep else None, f"n={ns}" if ns is not None else None) if p)
    if np.isnan(values).any():
        sub += ("; " if sub else "") + "hatched: undefined (constant features)"
    if title is None:
        title = "Layer similarity (linear CKA)"
    ax.set_title(title + (f"\n{sub}" if sub else ""), fontsize=10)
    return ax


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
