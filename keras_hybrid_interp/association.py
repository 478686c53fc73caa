"""Filter-class association.

Definition
----------
Each filter ``c`` is summarised per sample ``n`` by its spatial mean (or
max) ``s_nc``. Its association with class ``k`` is the **point-biserial
correlation**: the Pearson correlation over samples between ``s_nc`` and the
class indicator ``1[y_n = k]``::

    r_ck = (mean(s_c | y = k) - mean(s_c)) / sd(s_c) * sqrt(p_k / (1 - p_k))

with ``sd`` the population standard deviation over all samples and ``p_k``
the fraction of samples of class ``k``. ``r_ck`` lies in [-1, 1]: positive
when the filter responds more strongly on class ``k`` than on the other
classes, 0 when its mean response on ``k`` equals its overall mean, and it
is scale-free, so filters of different magnitude compare. It is NaN for a
dead (constant) filter and for a class that is absent from, or makes up all
of, the analysed samples. Statistics are accumulated in one streaming pass in
float64 (per-class means and per-filter variance, Chan's update).
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd

from ._data import to_class_indices
from .correlation import check_statistic, summarize, warn_dead
from ._distribute import predict_on_batch

__all__ = ["FilterClassAssociation", "filter_class_association"]


@dataclasses.dataclass(frozen=True, eq=False)
class FilterClassAssociation:
    """Point-biserial correlation between filters and classes.

    Attributes
    ----------
    values : ndarray, shape (C, K)
        ``r_ck`` (see the module docstring); NaN for dead filters and for
        classes absent from (or filling) the analysed samples.
    class_means : ndarray, shape (C, K)
        Mean per-sample summary of filter ``c`` over samples of class ``k``
        (NaN for an absent class).
    class_counts : ndarray of int, shape (K,)
    dead_filters : ndarray of int
    block, statistic, label_source : str
        ``label_source`` is ``"y"``, ``"dataset"`` or ``"model predictions"``.
    n_samples : int
    """

    values: np.ndarray
    class_means: np.ndarray
    class_counts: np.ndarray
    dead_filters: np.ndarray
    block: str
    statistic: str
    label_source: str
    n_samples: int

    def __post_init__(self):
        for a in (self.values, self.class_means, self.class_counts, self.dead_filters):
            a.setflags(write=False)

    @property
    def table(self) -> pd.DataFrame:
        """``C x K`` DataFrame of ``r_ck`` (rows: filters, columns: classes)."""
        c, k = self.values.shape
        return pd.DataFrame(self.values.copy(), index=pd.RangeIndex(c, name="filter"),
                            columns=pd.RangeIndex(k, name="class"))

    def top_filters(self, cls: int, k: int = 5) -> np.ndarray:
        """Indices of the ``k`` filters most positively associated with class ``cls`` (NaN last)."""
        col = self.values[:, cls]
        order = np.argsort(np.where(np.isnan(col), np.inf, -col), kind="stable")  # NaN (dead) last
        return order[:k]

    def to_frame(self) -> pd.DataFrame:
        """Long form: one row per (filter, class) with ``r`` and ``class_mean``."""
        c, k = self.values.shape
        f, cl = np.meshgrid(np.arange(c), np.arange(k), indexing="ij")
        return pd.DataFrame({
            "block": self.block,
            "filter": f.ravel(),
            "class": cl.ravel(),
            "r": self.values.ravel(),
            "class_mean": self.class_means.ravel(),
        })

    def __repr__(self):
        c, k = self.values.shape
        return (f"FilterClassAssociation(block={self.block!r}, filters={c}, classes={k}, "
                f"n_samples={self.n_samples}, labels from {self.label_source})")


class _ClassMoments:
    def __init__(self, c, k):
        self.n = 0
        self.mean = np.zeros(c)
        self.m2 = np.zeros(c)
        self.counts = np.zeros(k, dtype=np.int64)
        self.sums = np.zeros((k, c))  # per-class sums of (s - shift)
        self.shift = None
        self.min = np.full(c, np.inf)
        self.max = np.full(c, -np.inf)

    def update(self, s, y):
        nb = len(s)
        if self.shift is None:
            self.shift = s[0].copy()
        mb = s.mean(0)
        m2b = ((s - mb) ** 2).sum(0)
        tot = self.n + nb
        delta = mb - self.mean
        self.m2 += m2b + delta ** 2 * (self.n * nb / tot)
        self.mean += delta * (nb / tot)
        self.n = tot
        np.add.at(self.sums, y, s - self.shift)
        self.counts += np.bincount(y, minlength=len(self.counts))
        np.minimum(self.min, s.min(0), out=self.min)
        np.maximum(self.max, s.max(0), out=self.max)

    def result(self):
        dead = self.max == self.min
        with np.errstate(invalid="ignore", divide="ignore"):
            cm = self.sums / self.counts[:, None] + self.shift  # (K, C)
            cm[self.counts == 0] = np.nan
            p = self.counts / self.n
            sd = np.sqrt(self.m2 / self.n)
            sd[dead] = np.nan
            r = (cm - self.mean) / sd * np.sqrt(p / (1 - p))[:, None]
        r[(self.counts == 0) | (self.counts == self.n)] = np.nan
        return r.T.copy(), cm.T.copy(), np.flatnonzero(dead)


def filter_class_association(graph, key, stream, num_classes, y_given, out_kind, statistic="mean",
                             block_name=None) -> FilterClassAssociation:
    """Streams once; see :meth:`GlobalAnalyzer.filter_class_association`."""
    statistic = check_statistic(statistic)
    c = int(graph.tensors[key].shape[-1])
    model = graph.build([key] + list(graph.output_keys), name="khi_assoc")
    acc = _ClassMoments(c, num_classes)
    source = None
    for xb, yb in stream:
        act, out = predict_on_batch(model, xb)[:2]
        s = summarize(np.asarray(act), statistic)
        if yb is not None:
            src = "y" if y_given else "dataset"
            labels = to_class_indices(yb, num_classes, argname=getattr(stream, "label_argname", "y"))
        else:
            src = "model predictions"
            labels = predicted_classes(np.asarray(out), out_kind)
        if source is None:
            source = src
        elif source != src:
            raise ValueError("`x` yields labels for some batches and not for others; label every batch or none.")
        acc.update(s, labels)
    if acc.n < 2:
        raise ValueError(f"`x` must hold at least 2 samples; received {acc.n}.")
    r, cm, dead = acc.result()
    name = block_name or graph.tensors[key].name
    warn_dead(dead, name, "class association", stacklevel=4)
    absent = np.flatnonzero(acc.counts == 0)
    if len(absent):
        warnings.warn(
            f"Classes {absent[:20].tolist()} do not occur among the {acc.n} analysed samples "
            f"(labels from {source}); their association is NaN.", UserWarning, stacklevel=4)
    return FilterClassAssociation(r, cm, acc.counts.copy(), dead, name, statistic, source, acc.n)


def predicted_classes(out: np.ndarray, out_kind) -> np.ndarray:
    """Class indices predicted by a model output of shape (n, K) or (n, 1) (sigmoid)."""
    out = out.reshape(len(out), -1)
    if out.shape[1] == 1:
        thr = 0.5 if out_kind == "sigmoid" else 0.0
        return (out[:, 0] > thr).astype(np.int64)
    return np.argmax(out, axis=1).astype(np.int64)
