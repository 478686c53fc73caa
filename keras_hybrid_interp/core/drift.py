"""The input-drift check: is new data on the scale of the data the probes were fitted on?

When probes are fitted, the per-channel statistics of their inputs are kept
(:meth:`InputMoments.statistics <keras_hybrid_interp.core.data_pass.InputMoments.statistics>`:
``mean``, ``std``, ``min`` and ``max`` over samples and positions, float64).
Every later pass of data through a fitted interpreter (its layer table, layer
predictions and explanations, and the global analyses of a
:class:`~keras_hybrid_interp.GlobalAnalyzer` built from it) collects the same
statistics of the new data and calls :func:`check_drift`, which warns
(``input_drift``) through :func:`keras_hybrid_interp.core.health.warn`:

- **from** :data:`DRIFT_MIN_SAMPLES` **samples on** (the moments): a channel
  whose mean moved by more than :data:`DRIFT_MEAN_SDS` standard deviations of
  the fitting data, or whose standard deviation changed by more than a factor
  :data:`DRIFT_SCALE_FACTOR` (up or down);
- **below** :data:`DRIFT_MIN_SAMPLES` **samples** (the range): the spread of a
  handful of images says little about the data (one green image's red channel
  is nearly constant), so a few samples are checked against the fitted
  *range* instead: a channel with a value more than :data:`DRIFT_RANGE_MARGIN`
  times the width of the fitted range (``max - min``) below its minimum or
  above its maximum. An image scaled to 0-255 fed to probes fitted on 0-1
  is caught from one sample; data shrunk into the fitted range (0-1 fed to
  probes fitted on 0-255) is caught only from :data:`DRIFT_MIN_SAMPLES`
  samples on, by the moments.

Statistics saved without a range (an interpreter saved before the range was
recorded) are checked by the moments only.
"""

from __future__ import annotations

import numpy as np

from . import health as _health

__all__ = ["DRIFT_MEAN_SDS", "DRIFT_SCALE_FACTOR", "DRIFT_MIN_SAMPLES", "DRIFT_RANGE_MARGIN", "drift_message",
           "range_drift_message", "check_drift"]

#: Input drift: a channel whose mean moved by more than this many standard
#: deviations of the probes' training data, or whose spread changed by more
#: than this factor, is reported.
DRIFT_MEAN_SDS = 3.0
DRIFT_SCALE_FACTOR = 4.0
#: Data with fewer samples than this is checked against the fitted range, not the moments: the spread of a
#: handful of images (one green image's red channel) says nothing about the data.
DRIFT_MIN_SAMPLES = 30
#: A few samples drift when a channel leaves the fitted range [min, max] by more than this many widths
#: (max - min) of it.
DRIFT_RANGE_MARGIN = 0.5

_ADVICE = ("Probe results on it are not comparable: preprocess it as the fitting data (e.g. the same scaling "
           "to 0-1), or refit the probes.")


def _tiny(ref):
    return 1e-12 + 1e-6 * np.maximum(np.abs(ref), 1.0)


def drift_message(ref_mean, ref_std, mean, std):
    """A description of gross input drift between two per-channel statistics (the moments), or None."""
    ref_mean, ref_std = np.asarray(ref_mean, np.float64), np.asarray(ref_std, np.float64)
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    if ref_mean.shape != mean.shape:
        return None
    tiny = _tiny(ref_mean)
    shift = np.abs(mean - ref_mean) / np.maximum(ref_std, tiny)
    ratio = np.maximum(std, tiny) / np.maximum(ref_std, tiny)
    bad = (shift > DRIFT_MEAN_SDS) | (ratio > DRIFT_SCALE_FACTOR) | (ratio < 1 / DRIFT_SCALE_FACTOR)
    if not np.any(bad):
        return None
    c = int(np.flatnonzero(bad)[0])
    return (
        f"Input drift: channel {c} of this data has mean {mean[c]:.4g} and standard deviation {std[c]:.4g}, "
        f"but the probes were fitted on data with mean {ref_mean[c]:.4g} and standard deviation "
        f"{ref_std[c]:.4g} ({int(np.sum(bad))} of {len(bad)} channels differ grossly). " + _ADVICE
    )


def range_drift_message(ref_min, ref_max, low, high, samples):
    """A description of values of ``samples`` samples (per channel in [low, high]) far outside the fitted range."""
    ref_min, ref_max = np.asarray(ref_min, np.float64), np.asarray(ref_max, np.float64)
    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
    if ref_min.shape != low.shape:
        return None
    margin = DRIFT_RANGE_MARGIN * np.maximum(ref_max - ref_min, _tiny(ref_max))
    bad = (low < ref_min - margin) | (high > ref_max + margin)
    if not np.any(bad):
        return None
    c = int(np.flatnonzero(bad)[0])
    return (
        f"Input drift: channel {c} of these {samples} samples takes values in [{low[c]:.4g}, {high[c]:.4g}], but "
        f"the probes were fitted on data in [{ref_min[c]:.4g}, {ref_max[c]:.4g}] ({int(np.sum(bad))} of "
        f"{len(bad)} channels leave that range by more than {DRIFT_RANGE_MARGIN:g} of its width; with fewer "
        f"than {DRIFT_MIN_SAMPLES} samples only the range is checked). " + _ADVICE
    )


def check_drift(reference, moments) -> None:
    """Warns (``input_drift``) when the data seen by ``moments`` (an InputMoments) drifted from ``reference``.

    ``reference`` is the fitted interpreter's ``input_statistics`` (a dict with
    ``mean`` and ``std``, and ``min`` and ``max`` when recorded), or None (no
    check). See the module docstring for the rules.
    """
    if reference is None or moments.mean is None:
        return
    if moments.samples >= DRIFT_MIN_SAMPLES:
        msg = drift_message(reference["mean"], reference["std"], moments.mean, moments.std)
    elif "min" in reference and "max" in reference and moments.min is not None:
        msg = range_drift_message(reference["min"], reference["max"], moments.min, moments.max, moments.samples)
    else:
        msg = None
    if msg:
        _health.warn("input_drift", msg)
