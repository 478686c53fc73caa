"""The one bootstrap: streaming percentile intervals for means over samples (Poisson bootstrap).

A statistic that is a mean over samples (a probe's accuracy is the mean of
per-sample correctness, its loss the mean of per-sample cross-entropies) gets
a confidence interval from ``B`` bootstrap resamples of the samples. The
ordinary bootstrap draws each resample's multiplicities from a multinomial
over all ``N`` samples, so it must hold every sample's value. The *Poisson
bootstrap* (Hanley and MacGibbon, 2006; Chamandy et al., 2012) draws each
sample's multiplicity in resample ``b`` independently, ``w_nb ~ Poisson(1)``,
the large-``N`` limit of the multinomial, so it streams::

    mean_b = sum_n w_nb v_n / sum_n w_nb        (one per resample and statistic)

Memory is ``B x M`` float64 sums for ``M`` statistics, whatever ``N``.
The interval at ``confidence`` ``1 - alpha`` is the percentile interval, the
``alpha / 2`` and ``1 - alpha / 2`` quantiles of the ``B`` resampled means.

The weights come from one ``numpy.random.Generator`` seeded by
``random_state``, drawn sample by sample in stream order: the same seed and
the same samples in the same order give the same interval whatever the batch
size (NumPy draws an (n, B) block of Poisson variates as the concatenation of
its rows' draws).
"""

from __future__ import annotations

import numpy as np

from .validation import check_int, check_real

__all__ = ["PoissonBootstrap", "check_bootstrap", "check_confidence"]


def check_bootstrap(n_resamples, argname="bootstrap") -> int:
    """``n_resamples`` as an int: 0 (no interval) or at least 2."""
    expected = "0 (no confidence intervals) or a number of bootstrap resamples >= 2 (1000 is typical)"
    n = check_int(n_resamples, argname, min_value=0, expected=expected)
    if n == 1:
        raise ValueError(f"`{argname}` must be {expected}; received {n_resamples!r}.")
    return n


def check_confidence(confidence, argname="confidence") -> float:
    return check_real(confidence, argname, low=0, high=1, low_open=True, high_open=True,
                      expected="a float strictly between 0 and 1 (e.g. 0.95)")


class PoissonBootstrap:
    """Streaming Poisson bootstrap of the means of ``n_stats`` per-sample statistics.

    Feed ``update(values)`` with an (n, M) array per batch (finite float
    values, one row per sample, in stream order); :meth:`interval` gives the
    percentile interval of each column's mean. ``random_state``: an int, a
    ``numpy.random.Generator`` or None.
    """

    def __init__(self, n_resamples: int, n_stats: int, random_state=None):
        self.n_resamples = check_bootstrap(n_resamples, "n_resamples")
        if self.n_resamples == 0:
            raise ValueError("`n_resamples` must be >= 2 for a PoissonBootstrap.")
        self.rng = np.random.default_rng(random_state)
        self.sums = np.zeros((self.n_resamples, int(n_stats)))
        self.weights = np.zeros(self.n_resamples)
        self.n = 0

    def update(self, values) -> None:
        values = np.asarray(values, np.float64)
        if values.ndim != 2 or values.shape[1] != self.sums.shape[1]:
            raise ValueError(f"values must be (n, {self.sums.shape[1]}); received shape {values.shape}.")
        w = self.rng.poisson(1.0, size=(values.shape[0], self.n_resamples)).astype(np.float64)
        self.sums += w.T @ values
        self.weights += w.sum(axis=0)
        self.n += values.shape[0]

    def resampled_means(self) -> np.ndarray:
        """(B, M) means of the resamples (a resample that drew no sample is left out)."""
        keep = self.weights > 0
        return self.sums[keep] / self.weights[keep, None]

    def interval(self, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """``(low, high)``, each (M,): the percentile interval of every column's mean."""
        confidence = check_confidence(confidence)
        means = self.resampled_means()
        if len(means) == 0:
            nan = np.full(self.sums.shape[1], np.nan)
            return nan, nan.copy()
        alpha = 1.0 - confidence
        low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2], axis=0)
        return low, high
