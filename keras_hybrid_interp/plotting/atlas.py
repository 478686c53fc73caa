"""The filter atlas grid: for each filter, the input crops it responds to most."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import to_rgb

from ..core.validation import is_int
from .common import NAN_FACE, check_top_k

__all__ = ["plot_filter_examples"]


def _rows(examples, filters):
    all_filters = [int(f) for f in np.asarray(examples.filters)]
    if filters is None:
        return list(range(len(all_filters)))
    if is_int(filters):
        filters = [filters]
    rows = []
    for f in filters:
        if not is_int(f) or int(f) not in all_filters:
            raise ValueError(f"`filters` must hold filters of the examples, {all_filters}; received {filters!r}.")
        rows.append(all_filters.index(int(f)))
    if not rows:
        raise ValueError("`filters` must name at least one filter.")
    return rows


def _image(crop):
    """A crop (window..., channels) as something imshow draws: 2-D (grey) or RGB; 3-D inputs: the middle slice."""
    crop = np.asarray(crop, dtype=np.float64)
    while crop.ndim > 3:  # 3-D inputs: the middle slice along the first spatial axis
        crop = crop[crop.shape[0] // 2]
    if crop.ndim == 2:  # 1-D inputs: (length, channels) drawn as a strip
        crop = crop.T[..., None] if crop.shape[-1] != 3 else crop[None]
    if crop.shape[-1] == 1:
        return crop[..., 0]
    if crop.shape[-1] == 3:
        return crop
    # other channel counts: their mean (NaN outside the input, without nanmean's empty-slice warning)
    inside = ~np.isnan(crop)
    count = inside.sum(axis=-1)
    return np.where(count > 0, np.where(inside, crop, 0.0).sum(axis=-1) / np.maximum(count, 1), np.nan)


def plot_filter_examples(examples, *, filters=None, k=None, fig=None, cmap="gray", size=1.1, show_sample=True):
    """A grid of the top-k input crops of each filter: one row per filter, strongest first.

    Parameters
    ----------
    examples : FilterExamples
        From :meth:`GlobalAnalyzer.filter_examples` (needs its ``crops``).
    filters : None, int or list of int
        The filters to draw (rows, in this order); None: all of them.
    k : int, optional
        Crops per row (default: all kept).
    fig : matplotlib Figure, optional
        Drawn on (its existing axes are kept); a new figure sized to the grid when None.
    cmap : str
        Colour map of single-channel inputs. One colour scale for every crop, so that crops compare;
        positions outside the input (where a field is clipped at the border) are light grey.
    size : float
        Inches per crop of a new figure.
    show_sample : bool
        Put the sample index under each crop.

    Returns
    -------
    matplotlib.figure.Figure
        Each crop's title is the activation (the maximum of the filter's map). A filter whose
        activation is the same for every sample (``examples.constant_filters``: all samples tie) has
        no ranking: its row is labelled "all tied" and its crops are drawn faded.
    """
    crops = getattr(examples, "crops", None)
    if crops is None:
        raise ValueError("`examples` holds no crops (computed with crops=False, or not a FilterExamples).")
    k = check_top_k(k, "k")
    rows = _rows(examples, filters)
    values = np.asarray(examples.values)
    indices = np.asarray(examples.indices)
    n_col = values.shape[1] if k is None else min(k, values.shape[1])
    if fig is None:
        fig = plt.figure(figsize=(size * n_col + 0.9, size * len(rows) * 1.18 + 0.6), layout="constrained")
    elif not hasattr(fig, "add_subplot"):
        raise TypeError(f"`fig` must be a matplotlib Figure or None; received {type(fig).__name__}.")
    images = [[_image(crops[r, c]) for c in range(n_col)] for r in rows]
    finite = np.concatenate([im[np.isfinite(im)].ravel() for row in images for im in row] or [np.zeros(1)])
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    axes = fig.subplots(len(rows), n_col, squeeze=False)
    constant = set(np.asarray(getattr(examples, "constant_filters", [])).tolist())
    for i, r in enumerate(rows):
        flat = int(np.asarray(examples.filters)[r]) in constant
        for c in range(n_col):
            ax = axes[i, c]
            im = images[i][c]
            if im.ndim == 3:  # RGB: the common scale, blanks white
                rgb = np.clip((im - lo) / (hi - lo), 0.0, 1.0)
                ax.imshow(np.where(np.isfinite(rgb), rgb, np.array(to_rgb(NAN_FACE))), interpolation="nearest")
            else:
                ax.set_facecolor(NAN_FACE)
                ax.imshow(np.ma.masked_invalid(im), cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
            if flat:
                ax.images[-1].set_alpha(0.35)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{values[r, c]:.3g}", fontsize=8)
            if show_sample:
                ax.set_xlabel(f"#{int(indices[r, c])}", fontsize=7)
            if c == 0:
                label = f"filter {int(np.asarray(examples.filters)[r])}"
                ax.set_ylabel(label + "\n(all tied:\nno ranking)" if flat else label, fontsize=8)
    rf = getattr(examples, "receptive_field", None)
    field = ("" if rf is None else " (whole input)" if getattr(rf, "whole", False)
             else f" (receptive field {' x '.join(str(s) for s in rf.size)})")
    fig.suptitle(f"{getattr(examples, 'block', '')}: top-{n_col} samples per filter{field}; "
                 "title: max activation", fontsize=9)
    return fig
