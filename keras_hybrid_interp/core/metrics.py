"""Streaming metrics of the tasks: the one place that scores predictions against targets.

:class:`MetricSums` accumulates, batch by batch and in float64, what the
metrics of a :class:`~keras_hybrid_interp.core.task.Task` need, for several
predictors at once (every block's probe and the model), and gives the
metrics at the end. The layer table, the callback and the concept probes use
it; their numbers are checked against scikit-learn in the tests.

- **multi-label**: ``auroc`` and ``average_precision`` (macro over the
  labels that have both values in the targets; scikit-learn's
  ``roc_auc_score`` and ``average_precision_score``), ``f1`` (micro, at
  probability 0.5), ``hamming`` (fraction of wrong label decisions), ``loss``
  (binary cross-entropy averaged over labels), ``agreement`` (fraction of
  label decisions equal to the model's). The two ranking metrics need every
  score: they hold (N, K) float32 scores per predictor, the one part whose
  memory grows with N (4 N K bytes a block; the rest are sums).
- **regression**: ``r2`` (uniform average over targets, scikit-learn's
  ``r2_score``), ``mae``, ``rmse`` (over samples and targets) and ``loss``
  (mean squared error), all from sums.

Without labels the targets are the model's own outputs (its label decisions,
its values): the metrics then measure how well a probe reproduces the model.

``bootstrap`` > 0 feeds a streaming Poisson bootstrap
(:mod:`~keras_hybrid_interp.core.bootstrap`) with per-sample statistics from
which every metric that is a function of means follows (``loss``,
``hamming``, ``f1``, ``agreement``, ``mae``, ``rmse``, ``r2``): intervals in
memory ``bootstrap x`` (a few statistics per predictor), whatever N. The
ranking metrics (AUROC, AP) are computed once per resample at the end, from
the scores they hold anyway, with the *same* Poisson weights: the weights
are drawn again from the streaming bootstrap's integer seed, sample by sample
in stream order, so both see the same resamples (an (N, B) matrix of uint8
multiplicities, and at most 2^22 float64 per array for a chunk of resamples,
while they are computed). Regression sums are taken of the targets shifted by the first
sample's, so the variance of targets far from 0 keeps its digits, and a
constant target has none (R^2 is then 1 for exact predictions, else 0, as
scikit-learn's).
"""

from __future__ import annotations

import warnings

import numpy as np

from .bootstrap import PoissonBootstrap
from .perturbation import resolve_entropy
from .task import binary_metrics, r2_from_sums

__all__ = ["MetricSums", "INTERVAL_TASK_METRICS"]

#: Elements (samples x resamples) of the ranking metrics' resamples computed at once: 2^22 float64 (32 MiB)
#: per array, so all resamples at once for a few thousand samples, fewer at a time for more.
RESAMPLE_BLOCK = 2 ** 22

#: Per task, the metrics that get bootstrap intervals.
INTERVAL_TASK_METRICS = {
    "multilabel": ("auroc", "average_precision", "f1", "hamming", "loss", "agreement"),
    "regression": ("r2", "mae", "rmse", "loss"),
}


def _variance_sum(sq, mean_sq):
    """``sq - mean_sq`` (a sum or mean of squared deviations), 0 where it is within rounding of 0.

    ``sq`` is a sum of squares of shifted targets and ``mean_sq`` its squared-mean part: their difference
    cancels to rounding noise (16 eps of ``sq``) for a constant target, which then has no variance.
    """
    out = sq - mean_sq
    return np.where(out > 16 * np.finfo(np.float64).eps * sq, out, 0.0)


class MetricSums:
    """Streaming metrics of ``rows`` predictors for ``task`` (multi-label or regression).

    ``update(outputs, targets, model_decisions)``: ``outputs`` is a list of
    (n, K) outputs, one per predictor, each read with ``readers[i]`` (a Task:
    the probes' task in logits, the model's own task for the last row);
    ``targets`` (n, K) the labels or the model's targets; ``model_decisions``
    the model's (n, K) decisions for the agreement (multi-label only).
    """

    def __init__(self, task, readers, *, bootstrap=0, random_state=None):
        self.task = task
        self.name = task.name
        if self.name not in INTERVAL_TASK_METRICS:
            raise ValueError(f"MetricSums scores multi-label and regression predictors; received a {self.name} task.")
        self.readers = list(readers)
        self.rows = len(self.readers)
        k = task.num_outputs
        self.k = k
        r = self.rows
        self.n = 0
        self.loss = np.zeros(r)
        if self.name == "multilabel":
            self.tp = np.zeros(r)
            self.fp = np.zeros(r)
            self.fn = np.zeros(r)
            self.wrong = np.zeros(r)
            self.agree = np.zeros(r)
            self.scores: list[list] = [[] for _ in range(r)]
            self.targets = []
            stats = 6  # tp, fp, fn, wrong, loss, agree (per sample, per row)
        else:
            self.sse = np.zeros((r, k))
            self.sae = np.zeros((r, k))
            # Sums of the targets shifted by the first sample's (R^2 does not move under a shift, and the
            # shifted sums keep the variance of targets far from 0: 1e8 +- 1 as well as 0 +- 1).
            self.shift = None
            self.sy = np.zeros(k)
            self.syy = np.zeros(k)
            stats = k + 2  # per sample: squared errors (K), mean absolute error, loss
        self.stats = stats
        self.bootstrap = None
        if bootstrap:
            width = r * stats + (2 * k if self.name == "regression" else 0)
            #: One integer seed for the streaming bootstrap and the ranking metrics' redraw of its weights
            #: (a Generator contributes one draw, None fresh entropy: both still see the same resamples).
            self.entropy = resolve_entropy(random_state)
            self.bootstrap = PoissonBootstrap(bootstrap, width, self.entropy)

    def update(self, outputs, targets, model_decisions=None):
        t = np.asarray(targets, np.float64)
        b = len(t)
        per = []
        for i, (out, reader) in enumerate(zip(outputs, self.readers)):
            loss = reader.loss(out, t)
            self.loss[i] += loss.sum()
            if self.name == "multilabel":
                p = reader.probabilities(out)
                dec = self.task.decide(p).astype(np.float64)
                tp = (dec * t).sum(axis=1)
                fp = (dec * (1 - t)).sum(axis=1)
                fn = ((1 - dec) * t).sum(axis=1)
                wrong = (dec != t).mean(axis=1)
                agree = (dec == model_decisions).mean(axis=1) if model_decisions is not None else np.full(b, np.nan)
                self.tp[i] += tp.sum()
                self.fp[i] += fp.sum()
                self.fn[i] += fn.sum()
                self.wrong[i] += wrong.sum()
                self.agree[i] += np.nansum(agree)
                # The ranking metrics' scores: logits where the reader has them (a float32 probability
                # rounds confident logits to a tie at 1.0), else the probabilities.
                score = reader.logits(out) if reader.kind == "logits" else p
                self.scores[i].append(np.asarray(score, np.float32))
                per.append(np.stack([tp, fp, fn, wrong, loss, np.nan_to_num(agree)], axis=1))
            else:
                v = reader.values(out)
                err = v - t
                self.sse[i] += np.square(err).sum(axis=0)
                self.sae[i] += np.abs(err).sum(axis=0)
                # Per sample: squared error per target, mean absolute error, loss.
                per.append(np.concatenate([np.square(err), np.abs(err).mean(axis=1, keepdims=True),
                                           loss[:, None]], axis=1))
        if self.name == "multilabel":
            self.targets.append(t.astype(np.float32))
        else:
            if self.shift is None:
                self.shift = t[0].copy()
            d = t - self.shift
            self.sy += d.sum(axis=0)
            self.syy += np.square(d).sum(axis=0)
            per.append(np.concatenate([d, np.square(d)], axis=1))
        if self.bootstrap is not None:
            self.bootstrap.update(np.concatenate(per, axis=1))
        self.n += b

    # ------------------------------------------------------------------
    def result(self) -> dict:
        """``{metric: (rows,) array}`` over everything seen."""
        n = self.n
        out = {"loss": self.loss / n}
        if self.name == "multilabel":
            y = np.concatenate(self.targets)
            auroc, ap = np.full(self.rows, np.nan), np.full(self.rows, np.nan)
            for i in range(self.rows):
                s = np.concatenate(self.scores[i])
                per = np.array([binary_metrics(y[:, k], s[:, k]) for k in range(self.k)])
                if not np.all(np.isnan(per[:, 0])):
                    auroc[i], ap[i] = np.nanmean(per[:, 0]), np.nanmean(per[:, 1])
            out["auroc"] = auroc
            out["average_precision"] = ap
            denom = 2 * self.tp + self.fp + self.fn
            out["f1"] = np.where(denom > 0, 2 * self.tp / np.where(denom > 0, denom, 1), 0.0)
            out["hamming"] = self.wrong / n
            out["agreement"] = self.agree / n
        else:
            sst = _variance_sum(self.syy, np.square(self.sy) / n)
            out["r2"] = np.array([np.mean(r2_from_sums(self.sse[i], sst)) for i in range(self.rows)])
            out["mae"] = self.sae.mean(axis=1) / n
            out["rmse"] = np.sqrt(self.sse.mean(axis=1) / n)
        return out

    def missing_labels(self) -> list[int]:
        """Multi-label: the labels whose targets hold one value only (no AUROC or AP for them)."""
        if self.name != "multilabel" or not self.targets:
            return []
        s = np.concatenate(self.targets).sum(axis=0)
        return [int(k) for k in np.flatnonzero((s == 0) | (s == self.n))]

    def _ranking_resamples(self):
        """(B', rows) macro AUROC and AP of every resample that drew a sample (weighted, scikit-learn's ties)."""
        assert self.bootstrap is not None  # called by the intervals, after their check for a bootstrap
        y = np.concatenate(self.targets).astype(np.float64)
        n, b = len(y), self.bootstrap.n_resamples
        w = np.random.default_rng(self.entropy).poisson(1.0, size=(n, b)).astype(np.uint8)
        w = w[:, w.sum(axis=0, dtype=np.int64) > 0]
        auroc = np.full((w.shape[1], self.rows, self.k), np.nan)
        ap = np.full_like(auroc, np.nan)
        for i in range(self.rows):
            s = np.concatenate(self.scores[i])
            chunk = max(1, RESAMPLE_BLOCK // max(n, 1))
            for k in range(self.k):
                order = np.argsort(-s[:, k], kind="mergesort")
                sk, yk = s[order, k], y[order, k][:, None]
                distinct = np.r_[np.flatnonzero(np.diff(sk)), n - 1]
                for c0 in range(0, w.shape[1], chunk):  # N x chunk float64 at a time
                    cols = slice(c0, c0 + chunk)
                    wk = w[order, cols].astype(np.float64)
                    tps = np.cumsum(wk * yk, axis=0)[distinct]
                    fps = np.cumsum(wk * (1 - yk), axis=0)[distinct]
                    pos, neg = tps[-1], fps[-1]
                    ok = (pos > 0) & (neg > 0)
                    if not ok.any():
                        continue
                    with np.errstate(invalid="ignore", divide="ignore"):
                        zero = np.zeros((1, len(pos)))
                        tpr = np.vstack([zero, tps / pos])
                        fpr = np.vstack([zero, fps / neg])
                        area = np.sum(np.diff(fpr, axis=0) * (tpr[1:] + tpr[:-1]) / 2, axis=0)
                        precision = np.where(tps + fps > 0, tps / np.where(tps + fps > 0, tps + fps, 1), 0.0)
                        prec_area = np.sum(np.diff(tpr, axis=0) * precision, axis=0)  # recall = tpr
                    auroc[c0:c0 + len(pos)][ok, i, k] = area[ok]
                    ap[c0:c0 + len(pos)][ok, i, k] = prec_area[ok]
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a resample where no label has both values
            return np.nanmean(auroc, axis=2), np.nanmean(ap, axis=2)

    def intervals(self, confidence) -> tuple[dict, dict]:
        """``(lower, upper)``: per metric of :data:`INTERVAL_TASK_METRICS`, (rows,) percentile bounds."""
        if self.bootstrap is None:
            return {}, {}
        means = self.bootstrap.resampled_means()  # (B, width)
        r, k, st = self.rows, self.k, self.stats
        values = {}
        if self.name == "multilabel":
            m = means[:, : r * st].reshape(len(means), r, st)
            tp, fp, fn, wrong, loss, agree = (m[..., j] for j in range(6))
            denom = 2 * tp + fp + fn
            values["f1"] = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), 0.0)
            values["hamming"], values["loss"], values["agreement"] = wrong, loss, agree
            values["auroc"], values["average_precision"] = self._ranking_resamples()
        else:
            m = means[:, : r * st].reshape(len(means), r, st)
            se, ae, loss = m[..., :k], m[..., k], m[..., k + 1]
            ty = means[:, r * st:]
            var = _variance_sum(ty[:, k:], np.square(ty[:, :k]))  # (B, K), of the shifted targets
            with np.errstate(invalid="ignore", divide="ignore"):
                r2 = np.where(var[:, None, :] > 0, 1 - se / np.where(var[:, None, :] > 0, var[:, None, :], 1),
                              np.where(se == 0, 1.0, 0.0))
            values["r2"] = r2.mean(axis=2)
            values["mae"], values["rmse"], values["loss"] = ae, np.sqrt(se.mean(axis=2)), loss
        alpha = 1 - confidence
        lower, upper = {}, {}
        for name, v in values.items():
            lo, hi = np.quantile(v, [alpha / 2, 1 - alpha / 2], axis=0)
            lower[name], upper[name] = lo, hi
        return lower, upper
