"""Plots of the global half: filter correlation, filter importance, filter-class association and layer similarity.

Each takes the result object of :class:`~keras_hybrid_interp.GlobalAnalyzer` and computes nothing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from ..core.clustering import average_linkage, flat_clusters, leaf_order
from ..core.validation import check_real
from .common import (
    DEAD_COLOR,
    as_square_matrix,
    check_top_k,
    common_scope,
    ellipsize,
    hatch_nan,
    label_size,
    new_ax,
    tick_step,
)


# ----------------------------------------------------------------------
# Global: filter correlation
# ----------------------------------------------------------------------
def _cluster_order(sub):
    """Leaf order and linkage of the shown live filters (None when fewer than 3)."""
    if len(sub) < 3:
        return np.arange(len(sub)), None
    z = average_linkage(sub)
    return leaf_order(z), z


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
    values, labels = as_square_matrix(corr, "corr", "FilterCorrelation")
    C = len(values)
    top_k = check_top_k(top_k)
    check_real(threshold, "threshold", low=0, high=1, allow_none=True,
               expected="a float in [0, 1] (a distance 1 - |r|) or None")
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
        # Over the defined pairs (a constant live filter has none: 0), without nanmean's empty-slice warning.
        defined = ~np.eye(len(live), dtype=bool) & ~np.isnan(sub_abs)
        mean_abs = np.where(defined, sub_abs, 0.0).sum(axis=1) / np.maximum(defined.sum(axis=1), 1)
    else:
        mean_abs = np.zeros(len(live))

    if filters is not None:
        sel = np.asarray(filters).ravel()
        if sel.dtype.kind not in "iu" or len(sel) == 0 or sel.min() < 0 or sel.max() >= C:
            raise ValueError(
                f"`filters` must be a non-empty list of filter indices in 0..{C - 1}; received {filters!r}."
            )
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
    ax = new_ax(ax, (side + 1.3, side))
    step = tick_step(n, 64)
    if annot == "auto":
        annot = n <= 12
    stat = getattr(corr, "statistic", None)
    cbar_label = "Pearson r" + (f" of per-sample spatial {stat}" if stat else "")
    sns.heatmap(frame, ax=ax, cmap=cmap, vmin=-1.0, vmax=1.0, square=True,
                xticklabels=step, yticklabels=step, annot=bool(annot), fmt=".2f", annot_kws={"fontsize": 7},
                cbar_kws={"label": cbar_label, "shrink": 0.75, "ticks": [-1, -0.5, 0, 0.5, 1]})
    hatch_nan(ax)
    fs = label_size(n / step, 9, 5)
    ax.tick_params(axis="both", labelsize=fs)
    dead_set = {str(labels[i]) for i in sel_dead}
    for t in list(ax.get_xticklabels()) + list(ax.get_yticklabels()):
        if t.get_text() in dead_set:
            t.set_color(DEAD_COLOR)
            t.set_fontweight("bold")
    ax.set_xlabel("Filter")
    ax.set_ylabel("Filter")

    n_out = 0
    if cluster and z is not None and threshold is not None:
        lab = flat_clusters(z, float(threshold))[leaves]
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
            raise ValueError(
                f"`imp` DataFrame needs an 'importance' column (FilterImportance.to_frame()); has {list(imp.columns)}."
            )
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
    meta = {k: getattr(imp, k, None) for k in ("block", "method", "scoring", "baseline_score", "n_samples", "taylor",
                                               "coupled")}
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
    top_k = check_top_k(top_k)
    mean, std, labels, reps, dead, meta = _importance_data(imp)
    G = len(mean)
    order = np.argsort(-np.nan_to_num(mean, nan=-np.inf), kind="stable")
    if top_k is not None:
        order = order[:top_k]
    k = len(order)
    ax = new_ax(ax, (7.0, float(np.clip(0.28 * k + 1.6, 3.0, 12.0))))
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
    ax.set_yticklabels([labels[i] for i in order], fontsize=label_size(k, 9, 5))
    for t, i in zip(ax.get_yticklabels(), order):
        if not meta.get("grouped") and i in dead:
            t.set_color(DEAD_COLOR)
    ax.set_ylim(k - 0.5, -0.5)  # most important on top
    ax.axvline(0.0, color="0.3", lw=0.8, zorder=2)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)

    method = meta.get("method")
    scoring = meta.get("scoring")
    base = meta.get("baseline_score")
    if method == "taylor":
        z = "\u03a3 a\u00b7\u2202L/\u2202a"
        xlabel = {"abs_mean": f"Estimated loss increase |mean {z}| (cross-entropy)",
                  "abs_per_sample": f"Estimated loss change, per-sample mean |{z}| (cross-entropy)",
                  "molchanov": f"Squared loss change (Molchanov et al. 2019), per-sample mean ({z})\u00b2"}.get(
            meta.get("taylor"), "Estimated loss change (first-order Taylor, cross-entropy)")
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
    if meta.get("coupled"):
        parts.append(f"coupled: channel i of {len(meta['coupled'])} tied tensors perturbed jointly")
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
    top_k = check_top_k(top_k)
    if isinstance(assoc, pd.DataFrame):
        df = assoc
    elif hasattr(assoc, "values") and np.ndim(assoc.values) == 2:
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
    ax = new_ax(ax, (float(np.clip(0.45 * K + 3.0, 5.0, 14.0)),
                      float(np.clip(0.22 * n + 2.0 + (0.8 if long_cols else 0), 3.5, 12.0))))
    if annot == "auto":
        annot = sub.size <= 120
    stat = getattr(assoc, "statistic", None)
    sns.heatmap(frame, ax=ax, cmap=cmap, vmin=-1.0, vmax=1.0, annot=bool(annot), fmt=".2f",
                annot_kws={"fontsize": 7}, xticklabels=tick_step(K, 50), yticklabels=tick_step(n, 64),
                linewidths=0.3 if sub.size <= 2000 else 0, linecolor="white",
                cbar_kws={"label": "Point-biserial r" + (f" (per-sample spatial {stat})" if stat else ""),
                          "shrink": 0.8, "ticks": [-1, -0.5, 0, 0.5, 1]})
    hatch_nan(ax)
    ax.tick_params(axis="y", labelrotation=0, labelsize=label_size(n, 9, 5))
    ax.tick_params(axis="x", labelsize=label_size(K, 9, 5))
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
        parts.append(
            ", ".join(p for p in (f"labels from {src}" if src else "", f"n={ns}" if ns is not None else "") if p)
        )
    if title is None:
        block = getattr(assoc, "block", None)
        title = "Filter\u2013class association" + (f" \u2014 {block}" if block else "")
    ax.set_title(title + "\n" + _subtitle(parts), fontsize=10)
    return ax


# ----------------------------------------------------------------------
# Global: layer similarity
# ----------------------------------------------------------------------
def plot_layer_similarity(sim, *, ax=None, annot="auto", cmap="rocket_r", title=None):
    """Heatmap of the linear CKA between blocks (of one model, or of two).

    Parameters
    ----------
    sim : LayerSimilarity or pandas.DataFrame
        From :meth:`GlobalAnalyzer.layer_similarity` (``.matrix``: ``L x L``
        labelled by block, or ``L x L_other`` rows of one model and columns of
        another, with ``.models`` naming them), or a DataFrame.
    ax : matplotlib Axes, optional
    annot : "auto" or bool
        Writes the CKA in the cells; "auto" does it for at most 12 blocks a side.
    cmap : str
        Sequential colour map over [0, 1].
    title : str, optional

    Returns
    -------
    matplotlib.axes.Axes
        Rows and columns are the blocks in order, shallow (top/left) to deep;
        with two models, rows are the first model's blocks and columns the
        other's, each axis labelled with its model's name.
    """
    models = None if isinstance(sim, pd.DataFrame) else getattr(sim, "models", None)
    if isinstance(sim, pd.DataFrame) and sim.ndim == 2 and sim.shape[0] != sim.shape[1]:
        values, rows, cols = np.asarray(sim.to_numpy(), dtype=np.float64), list(sim.index), list(sim.columns)
    elif not isinstance(sim, pd.DataFrame) and getattr(sim, "columns", None) is not None and hasattr(sim, "matrix"):
        df = sim.matrix
        values, rows, cols = np.asarray(df.to_numpy(), dtype=np.float64), list(sim.blocks), list(sim.columns)
        if values.shape != (len(rows), len(cols)):
            raise ValueError(f"`sim` must hold a {len(rows)} x {len(cols)} matrix (its blocks by its columns); "
                             f"received shape {values.shape}.")
    else:
        values, rows = as_square_matrix(sim, "sim", "LayerSimilarity")
        if not isinstance(sim, pd.DataFrame) and getattr(sim, "blocks", None) is not None:
            rows = list(sim.blocks)
        cols = rows
    row_full, col_full = [str(b) for b in rows], [str(b) for b in cols]
    row_scope, col_scope = common_scope(row_full), common_scope(col_full)
    row_names = [ellipsize(n[len(row_scope):], 30) for n in row_full]
    col_names = [ellipsize(n[len(col_scope):], 30) for n in col_full]
    # Two models may share block names: the heatmap's labels must stay unique per axis.
    R, Cn = len(row_names), len(col_names)
    L = max(R, Cn)
    if annot == "auto":
        annot = L <= 12
    longest = max((len(n) for n in row_names + col_names), default=1)
    height = float(np.clip(0.45 * R + 0.07 * longest + 2.5, 4.5, 11.0))
    width = float(np.clip(0.45 * Cn + 0.07 * longest + 2.5, 4.5, 11.0))
    ax = new_ax(ax, (width + 1.2, height))
    rstep, cstep = tick_step(R, 60), tick_step(Cn, 60)
    frame = pd.DataFrame(values, index=pd.RangeIndex(R), columns=pd.RangeIndex(Cn))
    sns.heatmap(frame, ax=ax, vmin=0.0, vmax=1.0, cmap=cmap,
                square=True, annot=bool(annot), fmt=".2f", annot_kws={"fontsize": 8 if L <= 8 else 6.5},
                xticklabels=False, yticklabels=False, linewidths=0.5 if L <= 30 else 0, linecolor="white",
                cbar_kws={"label": "Linear CKA", "shrink": 0.8})
    ax.set_yticks(np.arange(0, R, rstep) + 0.5, [row_names[i] for i in range(0, R, rstep)])
    ax.set_xticks(np.arange(0, Cn, cstep) + 0.5, [col_names[i] for i in range(0, Cn, cstep)])
    hatch_nan(ax)
    ax.tick_params(axis="y", labelrotation=0, labelsize=label_size(R / rstep, 9, 5))
    ax.tick_params(axis="x", labelsize=label_size(Cn / cstep, 9, 5))
    if max((len(n) for n in col_names), default=1) > 6 or Cn > 8:
        for t in ax.get_xticklabels():
            t.set_rotation(45)
            t.set_ha("right")
            t.set_rotation_mode("anchor")
    else:
        ax.tick_params(axis="x", labelrotation=0)
    row_where = f" (in {row_scope.rstrip('/')})" if row_scope else ""
    col_where = f" (in {col_scope.rstrip('/')})" if col_scope else ""
    if models is not None:
        ax.set_ylabel(f"{models[0]}: block" + row_where)
        ax.set_xlabel(f"{models[1]}: block" + col_where)
    else:
        ax.set_xlabel("Block" + col_where)
        ax.set_ylabel("Block" + row_where)
    rep = getattr(sim, "representation", None)
    ns = getattr(sim, "n_samples", None)
    est = None if isinstance(sim, pd.DataFrame) else getattr(sim, "estimator", None)
    if est is not None:
        est = {"minibatch": "minibatch unbiased HSIC", "full": "full-data HSIC"}.get(est, est)
    sub = "; ".join(p for p in (f"features: {rep}" if rep else None, f"n={ns}" if ns is not None else None,
                                est) if p)
    if np.isnan(values).any():
        sub += ("; " if sub else "") + "hatched: undefined (constant features)"
    if title is None:
        title = "Layer similarity (linear CKA)" if models is None else f"Linear CKA: {models[0]} vs {models[1]}"
    ax.set_title(title + (f"\n{sub}" if sub else ""), fontsize=10)
    return ax

