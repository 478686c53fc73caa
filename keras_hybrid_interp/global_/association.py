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

Other tasks
-----------
The same Pearson correlation, between ``s_nc`` and the task's target:

- **multi-label**: label ``k``'s 0/1 indicator ``y_nk`` (a point-biserial
  correlation per label; samples carry several labels at once, so a filter
  may associate with several); ``class_means`` is the mean summary over the
  samples that carry label ``k``;
- **regression**: target ``k``'s value (the filter-target correlation);
  ``class_means`` is NaN, ``class_counts`` the number of samples.

Without labels the target is the model's own (its label decisions at 0.5,
its predicted values). A label present in every sample or in none, and a
constant target, have no correlation (NaN).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from ..core.data_pass import ChannelRange, Tap
from ..core.health import check_classes, listing, warn
from .correlation import PASS_MODES, check_statistic, warn_dead

__all__ = ["FilterClassAssociation", "AssociationMoments", "association_result"]


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
    class_names : tuple of str, optional
        Names of the K classes (tables and plots use them).
    """

    values: np.ndarray
    class_means: np.ndarray
    class_counts: np.ndarray
    dead_filters: np.ndarray
    block: str
    statistic: str
    label_source: str
    n_samples: int
    class_names: tuple | None = None

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
        names = self.class_names or tuple(str(i) for i in range(k))
        return pd.DataFrame({
            "block": self.block,
            "filter": f.ravel(),
            "class": cl.ravel(),
            "class_name": [names[i] for i in cl.ravel()],
            "r": self.values.ravel(),
            "class_mean": self.class_means.ravel(),
        })

    def plot(self, ax=None, **kwargs):
        """Draws this result with :func:`~keras_hybrid_interp.plotting.plot_filter_class_association`; returns the Axes.

        Keyword arguments go to the plot function.
        """
        from ..plotting import plot_filter_class_association

        return plot_filter_class_association(self, ax=ax, **kwargs)

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
        self.shift = np.zeros(c)  # the first sample's values, set by the first update (stable sums)
        self.min = np.full(c, np.inf)
        self.max = np.full(c, -np.inf)

    def update(self, s, y):
        nb = len(s)
        if self.n == 0:
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


class _TargetMoments:
    """Streaming Pearson correlation between per-sample summaries ``s`` (n, C) and targets ``t`` (n, K), float64."""

    def __init__(self, c, k):
        self.n = 0
        self.shift_s = self.shift_t = None
        self.ss = np.zeros(c)
        self.ss2 = np.zeros(c)
        self.st = np.zeros(k)
        self.st2 = np.zeros(k)
        self.cross = np.zeros((c, k))
        self.pos_sums = np.zeros((c, k))  # sums of s over samples whose target is 1 (multi-label)
        self.counts = np.zeros(k)
        self.min = np.full(c, np.inf)
        self.max = np.full(c, -np.inf)

    def update(self, s, t):
        if self.shift_s is None:
            self.shift_s, self.shift_t = s[0].copy(), t[0].copy()
        a, b = s - self.shift_s, t - self.shift_t
        self.ss += a.sum(0)
        self.ss2 += np.einsum("ij,ij->j", a, a)
        self.st += b.sum(0)
        self.st2 += np.einsum("ij,ij->j", b, b)
        self.cross += a.T @ b
        self.pos_sums += s.T @ t
        self.counts += t.sum(0)
        self.n += len(s)
        np.minimum(self.min, s.min(0), out=self.min)
        np.maximum(self.max, s.max(0), out=self.max)

    def result(self, indicator: bool):
        n = self.n
        dead = self.max == self.min
        with np.errstate(invalid="ignore", divide="ignore"):
            var_s = self.ss2 / n - np.square(self.ss / n)
            var_t = self.st2 / n - np.square(self.st / n)
            cov = self.cross / n - np.outer(self.ss / n, self.st / n)
            r = cov / np.sqrt(np.outer(var_s, var_t))
            means = self.pos_sums / self.counts[None, :] if indicator else np.full(r.shape, np.nan)
        r[dead] = np.nan
        r[:, ~(var_t > 0)] = np.nan
        if indicator:
            means[:, self.counts == 0] = np.nan
        return np.clip(r, -1.0, 1.0), means, np.flatnonzero(dead)


class AssociationMoments:
    """Reducer of the association: per-class moments of the per-sample filter summaries.

    Labels come from the batch (``y`` or the dataset) or, without labels,
    from the model's predicted class (read with ``reader``).
    """

    def __init__(self, graph, key, statistic, reader, y_given):
        statistic = check_statistic(statistic)
        self.statistic = statistic
        self.tap = Tap(key, PASS_MODES[statistic])
        self.out_tap = Tap(graph.output_keys[0], "raw")
        self.range = ChannelRange(key)
        self.taps = (self.tap, self.out_tap) + self.range.taps
        self.reader = reader
        self.y_given = y_given
        c = int(graph.tensors[key].shape[-1])
        #: Class indicators (classification) or a target matrix (multi-label, regression).
        self.by_class = reader.is_classification
        self.acc = _ClassMoments(c, reader.num_classes) if self.by_class else _TargetMoments(c, reader.num_outputs)
        self.source = None

    def update(self, batch):
        s = np.asarray(batch.values[self.tap.ident], dtype=np.float64)
        if batch.y is not None:
            src, labels = ("y" if self.y_given else "dataset"), batch.y
        else:
            src, labels = "model predictions", self.reader.hard_targets(batch.values[self.out_tap.ident])
        self.source = src
        self.acc.update(s, labels if self.by_class else np.asarray(labels, np.float64))
        self.range.update(batch)


def association_result(red: AssociationMoments, block: str, class_names=None) -> FilterClassAssociation:
    """The :class:`FilterClassAssociation` of a reducer that has seen a pass."""
    acc = red.acc
    if acc.n < 2:
        raise ValueError(f"`x` must hold at least 2 samples; received {acc.n}.")
    assert red.source is not None  # set by every update
    source = "the model's predictions" if red.source == "model predictions" else "the labels"
    names = class_names or [str(k) for k in range(len(acc.counts))]
    dead = red.range.dead
    warn_dead(dead, block)
    if isinstance(acc, _ClassMoments):  # red.by_class
        r, cm, _ = acc.result()  # NaN rows for constant summaries (the dead filters among them)
        check_classes(acc.counts, names, source)
        counts = acc.counts.copy()
    else:
        multilabel = red.reader.name == "multilabel"
        r, cm, _ = acc.result(indicator=multilabel)
        counts = acc.counts.astype(np.int64) if multilabel else np.full(len(acc.counts), acc.n, dtype=np.int64)
        flat = [names[k] for k in np.flatnonzero(np.all(np.isnan(r), axis=0))] if r.size else []
        if flat and len(dead) < r.shape[0]:
            what = "are present in every sample or in none" if multilabel else "are constant"
            warn("missing_classes", f"{'Labels' if multilabel else 'Targets'} {listing(flat)} {what} in {source}: "
                                    "they have no correlation with any filter (NaN).")
    return FilterClassAssociation(r, cm, counts, dead, block, red.statistic, red.source, acc.n, tuple(names))
