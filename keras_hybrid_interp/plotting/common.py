"""Shared drawing helpers of the plot modules: axes creation, label sizing, NaN hatching, colours."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..core.validation import check_int

DEAD_COLOR = "#c0392b"


HIGHLIGHT = "#1f4e9c"


NAN_FACE = "#eeeeee"


NAN_HATCH_COLOR = "#b0b0b0"


# ----------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------
def new_ax(ax, figsize):
    if ax is None:
        _, ax = plt.subplots(figsize=figsize, layout="constrained")
        return ax
    if not hasattr(ax, "figure") or not hasattr(ax, "plot"):
        raise TypeError(f"`ax` must be a matplotlib Axes or None; received {type(ax).__name__}.")
    return ax


def check_top_k(top_k, name="top_k"):
    return check_int(top_k, name, allow_none=True, what=" (show all)")


def hatch_nan(ax):
    """Cells seaborn masks (NaN) show the axes background: make it a hatched grey."""
    ax.patch.set_facecolor(NAN_FACE)
    ax.patch.set_hatch("///")
    ax.patch.set_edgecolor(NAN_HATCH_COLOR)


def tick_step(n, max_labels):
    return 1 if n <= max_labels else int(math.ceil(n / max_labels))


def label_size(n, base=9.0, lo=5.0):
    return float(np.clip(base * 40.0 / max(n, 40), lo, base))


def as_square_matrix(obj, argname, kind):
    """(values, row labels) of a square result object or DataFrame."""
    if isinstance(obj, pd.DataFrame):
        df = obj
    elif hasattr(obj, "matrix"):
        df = obj.matrix
        if not isinstance(df, pd.DataFrame):
            df = pd.DataFrame(np.asarray(df))
    elif hasattr(obj, "values") and np.ndim(obj.values) == 2:
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


def common_scope(names):
    """The common ``"scope/"`` prefix of nested layer names ("" if none or if it would empty a name)."""
    if len(names) < 2 or not all("/" in n for n in names):
        return ""
    prefix = names[0].rsplit("/", 1)[0] + "/"
    while prefix and not all(n.startswith(prefix) and len(n) > len(prefix) for n in names):
        prefix = prefix[:-1].rsplit("/", 1)[0] + "/" if "/" in prefix[:-1] else ""
    return prefix


def ellipsize(text, max_len):
    text = str(text)
    if len(text) <= max_len:
        return text
    keep = max_len - 1
    return text[: keep - keep // 2] + "\u2026" + text[len(text) - keep // 2:]


def short_list(items, limit=8):
    items = [int(i) if isinstance(i, (np.integer,)) else i for i in items]
    if len(items) <= limit:
        return str(list(items))
    return str(list(items[:limit]))[:-1] + f", ... +{len(items) - limit}]"

