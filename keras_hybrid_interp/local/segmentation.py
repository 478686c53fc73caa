"""Layer probes of a segmentation network: a per-position linear probe (a 1x1 convolution) on every block.

The model outputs a map of per-position class scores (batch, *S, K) (see
:class:`~keras_hybrid_interp.core.task.SegmentationTask`). A block's map is
(batch, *s, C), at its own resolution ``s`` (smaller than ``S`` in a U-Net's
encoder, equal in its last decoder block). The probe of a block is the
block's :class:`~.probes.LinearProbe` applied at every position: on the
standardized C features of one position it gives K class logits, i.e. a 1x1
convolution. Its prediction is a mask at the *model's output resolution*:

**How block and mask resolutions meet (nearest neighbour,** :mod:`~keras_hybrid_interp.core.resolution`**).** Output
position ``i`` (along each spatial axis ``a``) reads block position
``floor(i * s_a / S_a)``: the block cell that covers it when the block map is
stretched over the output. The probe's logits are computed at block
resolution and copied to the output positions that read them (nearest
upsampling of the logits, which for a linear probe is the same as upsampling
the features first). Fitting uses the same rule: a sampled output position's
target (its label, or the model's distribution there) is paired with the
features of the block position it reads. A block larger than the output is
read at the positions the rule picks.

**Fitting on a seeded subsample of positions.** For every sample, at most
``positions_per_sample`` (P) output positions are drawn uniformly without
replacement (all of them when the map has fewer), from a generator seeded
by ``(random_state, index of the sample in the stream)``: the same seed and
samples in the same order give the same positions bit for bit, whatever the
batch size. What is kept grows as ``N x P x (C_1 + ... + C_L)`` float32
features plus ``N x P`` targets (``N x P x K`` float64 for the label-free
distribution), never with the map sizes ``H x W`` nor with the batch. The
probe is then fitted by the one trainer (:func:`~keras_hybrid_interp.core.trainer.fit_probe`)
on the standardized features of those positions (``StandardScaler`` then L2
multinomial logistic regression, binary for K = 2), against the masks' classes at
those positions or, without masks, the model's per-position class
distribution (label-free soft targets, as the tuned lens).

**Evaluation over every position.** :class:`SegmentationScores`, a reducer of
the one pass, computes each block's full mask batch by batch and accumulates
a (K, K) confusion matrix (float64) against the masks (or the model's own
mask without masks), the summed pixel cross-entropy and the agreement with
the model's mask. From the confusion: per-class IoU ``tp / (tp + fp + fn)``
and Dice ``2 tp / (2 tp + fp + fn)``, each averaged (macro) over the classes
*present* in the targets or the predictions (scikit-learn's
``jaccard_score`` / ``f1_score`` with ``average="macro"`` on flattened
pixels), and the pixel accuracy.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from ..core import data_pass as _pass
from ..core import health as _health
from ..core.bootstrap import PoissonBootstrap, check_bootstrap, check_confidence
from ..core.output import OutputReader
from ..core.perturbation import resolve_entropy
from ..core.resolution import block_positions, index_maps, spatial_shape, upsample
from ..core.task import confusion, confusion_scores
from ..core.trainer import MAX_ITER, TOL, check_C, check_solver, fit_probe
from ..core.validation import check_int
from .probes import input_transform
from .results import LayerTable

__all__ = [
    "POSITIONS_PER_SAMPLE",
    "sample_positions",
    "PositionSample",
    "SegmentationScores",
    "SegmentationPredictions",
    "SegmentationExplanation",
    "fit_probes",
    "evaluate_layers",
    "layer_predictions",
    "explain",
    "explanation_from_maps",
]

#: Output positions drawn per sample to fit the probes (see the module docstring).
POSITIONS_PER_SAMPLE = 64


def sample_positions(entropy: int, start: int, n: int, size: int, per_sample: int) -> np.ndarray:
    """(n, P) flat output positions of samples ``start .. start + n - 1``, drawn without replacement.

    Sample ``i``'s positions come from ``numpy.random.default_rng([entropy, i])``
    alone, so they do not depend on the batching. P = ``min(per_sample, size)``;
    with ``per_sample >= size`` every position is taken (in order).
    """
    if per_sample >= size:
        return np.broadcast_to(np.arange(size, dtype=np.int64), (n, size)).copy()
    out = np.empty((n, per_sample), np.int64)
    for j in range(n):
        out[j] = np.random.default_rng([entropy, start + j]).choice(size, per_sample, replace=False)
    return out


# ----------------------------------------------------------------------
# Fitting: features and targets at sampled positions
# ----------------------------------------------------------------------
class PositionSample:
    """Reducer: every block's features and the target at ``positions_per_sample`` output positions per sample.

    ``features[l]`` is a list of float32 (n_b * P, C_l) chunks; ``targets`` the
    labels' classes (int) at those positions, or without labels the model's
    class distribution there (float64, (n_b * P, K)). See the module docstring.
    """

    def __init__(self, block_taps, output_tap, task, per_sample, entropy):
        self.block_taps = list(block_taps)
        self.output_tap = output_tap
        self.taps = self.block_taps + [output_tap]
        self.task = task
        self.per_sample = int(per_sample)
        self.entropy = int(entropy)
        self.features: list[list] = [[] for _ in self.block_taps]
        self.labels, self.soft = [], []
        self.positions = []

    def update(self, batch):
        out = batch.values[self.output_tap.ident]
        n = len(out)
        S = spatial_shape(out.shape)
        size = int(np.prod(S))
        pos = sample_positions(self.entropy, batch.start, n, size, self.per_sample)
        self.positions.append(pos)
        rows = np.arange(n)[:, None]
        flat_out = out.reshape(n, size, out.shape[-1])
        self.soft.append(self.task.reader.probabilities(flat_out[rows, pos].reshape(-1, out.shape[-1])))
        if batch.y is not None:
            self.labels.append(np.asarray(batch.y).reshape(n, size)[rows, pos].ravel())
        for store, tap in zip(self.features, self.block_taps):
            a = batch.values[tap.ident]
            s = spatial_shape(a.shape)
            idx = block_positions(pos, S, s)
            store.append(a.reshape(n, -1, a.shape[-1])[rows, idx].reshape(-1, a.shape[-1]).astype(np.float32))

    def result(self, l):
        return np.concatenate(self.features[l]) if self.features[l] else None

    def targets(self, labelled):
        return np.concatenate(self.labels) if labelled else np.concatenate(self.soft)


def _check_finite(graph, info):
    bad = [graph.tensors[k].name for k in sorted(info.nonfinite)]
    if bad:
        raise ValueError(
            f"{bad} produced NaN or infinite values on finite inputs; the model is numerically unstable "
            "there, and probes on it would be meaningless."
        )


def _check_per_sample(positions_per_sample):
    return check_int(positions_per_sample, "positions_per_sample",
                     what=", the number of output positions per sample the probes are fitted on")


def _check_probe_dims(interp):
    bad = [n for n, p, b in zip(interp.block_names, interp.probes, interp.blocks)
           if int(p.state()[2].shape[0]) != int(b.filters)]
    if bad:
        raise ValueError(
            f"`pooling`={interp.pooling!r}: a segmentation probe reads every position's channels (a 1x1 "
            f"convolution), so the probes of blocks {bad} cannot be pooled to a grid. Create the interpreter with "
            "pooling='avg' (the default), which segmentation probes do not use."
        )


def check_controls(controls) -> int:
    return check_int(controls, "controls", min_value=0,
                     what=", the number of control probes (trained on masks permuted across samples) per block")


def fit_probes(interp, x, y=None, *, C=1.0, max_iter=MAX_ITER, tol=TOL, warm_start=False, batch_size=64,
               max_samples=None, steps=None, controls=0, random_state=None, verbose="auto",
               positions_per_sample=POSITIONS_PER_SAMPLE):
    """Fits every block's per-position probe of a segmentation ``interp`` (see the module docstring).

    ``y``: masks (N, *S) of class indices or one-hot (N, *S, K) at the
    model's output resolution, optional (label-free without). Returns ``interp``.

    ``controls`` (Hewitt and Liang, 2019): per block, this many control
    probes, the same per-position probe (same features, standardization,
    trainer and ``C``) fitted on the targets permuted across samples: with
    ``rng = numpy.random.default_rng(random_state)``, control ``j`` gives
    sample ``i``'s features the targets of sample ``perm_j[i]`` (the ``j``-th
    ``rng.permutation(N)``), at the positions drawn for that sample: whole
    masks move between samples when every position is drawn. Only their
    ``(kernel, bias)`` are kept (``interp.control_states_``).
    """
    task = interp.reader
    C = check_C(C)
    check_solver(max_iter, tol)
    per_sample = _check_per_sample(positions_per_sample)
    controls = check_controls(controls)
    _check_probe_dims(interp)
    entropy = resolve_entropy(random_state)
    stream = interp._stream(x, y, batch_size=batch_size, max_samples=max_samples, steps=steps)
    sample = PositionSample([_pass.Tap(k, "raw") for k in interp.block_keys], interp._output_tap(), task,
                            per_sample, entropy)
    moments = _pass.InputMoments()
    info = _pass.run(interp.graph, stream, [sample, moments], task=task, verbose=0 if verbose == "auto" else verbose)
    if info.n == 0:
        raise ValueError("`x` holds no samples: the probes need at least one.")
    _check_finite(interp.graph, info)
    targets = sample.targets(info.has_labels)
    K = task.num_classes
    # Control tasks: each sample's targets (at its drawn positions) moved to another sample, whole.
    rng = np.random.default_rng(random_state)
    perms = [rng.permutation(info.n) for _ in range(controls)]
    per = len(targets) // info.n
    by_sample = targets.reshape((info.n, per) + targets.shape[1:])
    rows, not_conv, control_states, control_not_conv = [], [], [], []
    for l, (name, probe) in enumerate(zip(interp.block_names, interp.probes)):
        f = sample.result(l)
        mean, scale = input_transform(f)
        z = (f.astype(np.float64) - mean) * scale
        init = None
        if warm_start and interp.fitted:
            old_mean, old_scale, kernel, bias = probe.state()
            from ..core.trainer import restandardize

            init = restandardize(old_mean, old_scale, kernel, bias, mean, scale)
        sol = fit_probe(z, targets, K, C=C, max_iter=max_iter, tol=tol, init=init)
        probe.set_state(mean, scale, sol.kernel, sol.bias)
        rows.append((name, sol.n_iter, sol.converged, sol.loss))
        if not sol.converged:
            not_conv.append(name)
        block_controls = []
        for perm in perms:  # the same probe on the permuted targets
            ctl = fit_probe(z, by_sample[perm].reshape(targets.shape), K, C=C, max_iter=max_iter, tol=tol)
            block_controls.append((ctl.kernel, ctl.bias))
            if not ctl.converged and name not in control_not_conv:
                control_not_conv.append(name)
        control_states.append(block_controls)
        del z
    if not_conv:
        _health.warn(
            "not_converged",
            f"Segmentation probes of blocks {not_conv} did not converge within max_iter={max_iter} L-BFGS "
            "iterations; their scores may be understated. Raise `max_iter`, or lower `C`.",
        )
    if control_not_conv:
        _health.warn(
            "not_converged",
            f"Control probes (permuted masks) of blocks {control_not_conv} did not converge within "
            f"max_iter={max_iter} L-BFGS iterations; their mean IoU, and so the selectivity, may be off. "
            "Raise `max_iter` or lower `C`.",
        )
    interp.control_states_ = control_states if controls else []
    interp.convergence_ = pd.DataFrame(rows, columns=["block", "n_iter", "converged", "loss"])
    interp.input_statistics = moments.statistics()
    interp.fitted = True
    return interp


# ----------------------------------------------------------------------
# Evaluation: every position, streamed
# ----------------------------------------------------------------------
def _effective(states):
    out = []
    for mean, scale, kernel, bias in states:
        w = kernel * scale[:, None]
        out.append((w, bias - mean @ w))
    return out


def block_logits(a, w, b, out_spatial):
    """Probe logits (n, *S, K) at the output resolution of block maps ``a`` (n, *s, C), float64."""
    s = spatial_shape(a.shape)
    logits = np.asarray(a, np.float64).reshape(-1, a.shape[-1]) @ w + b
    return upsample(logits.reshape((len(a),) + s + (w.shape[1],)), index_maps(s, out_spatial))


#: Bytes of the float64 copy of a block's maps that :func:`_probe_logits` converts at a time.
LOGITS_CHUNK_BYTES = 8 * 2**20


def _probe_logits(a, w, b, controls=()):
    """A probe's class-major float64 logits ``(K, n * prod(s))`` on maps ``a`` (n, *s, C), and its controls' classes.

    ``a @ w + b`` per position, laid out class-major (each class's row of positions contiguous, so the
    per-pixel loss and argmax below run class by class on long rows), with the maps converted to
    float64 a chunk of positions at a time (:data:`LOGITS_CHUNK_BYTES`), never the whole batch (a
    U-Net's last block, 16 samples at 256 px and 32 filters: 268 MB as float64); each chunk's copy
    also serves every control probe ``(cw, cb)`` of ``controls``, whose argmax classes
    ``(n * prod(s),)`` are returned in a list.
    """
    flat = a.reshape(-1, a.shape[-1])
    rows = len(flat)
    wt = np.ascontiguousarray(np.asarray(w, np.float64).T)  # (K, C)
    logits = np.empty((wt.shape[0], rows), dtype=np.float64)
    cpreds = [np.empty(rows, dtype=np.intp) for _ in controls]
    step = max(1, LOGITS_CHUNK_BYTES // (8 * max(1, flat.shape[1])))
    for s in range(0, rows, step):
        e = min(rows, s + step)
        xc = flat[s:e].astype(np.float64)
        logits[:, s:e] = wt @ xc.T
        for cpred, (cw, cb) in zip(cpreds, controls):
            cpred[s:e] = (xc @ cw + cb).argmax(axis=1)
    logits += np.asarray(b, np.float64)[:, None]
    return logits, cpreds


def _max_and_argmax(lt):
    """Per position of class-major logits ``(K, P)``: the largest logit and its class (ties to the lower).

    Class by class, on contiguous rows. The class is ``np.argmax(lt, axis=0)``'s (a NaN's position included:
    it keeps NumPy's answer).
    """
    m = lt[0].copy()
    pred = np.zeros(lt.shape[1], dtype=np.intp)
    for j in range(1, len(lt)):
        pred[lt[j] > m] = j
        np.maximum(m, lt[j], out=m)
    bad = np.flatnonzero(np.isnan(m))
    if bad.size:
        pred[bad] = np.argmax(lt[:, bad], axis=0)
    return m, pred


def _target_log_loss(lt, reads, hard, top=None):
    """``-log softmax(logits)[read, target]`` at every output position, from class-major block-resolution logits.

    ``lt`` (K, P) float64 logits at the block's positions, ``reads`` (Q,) the block position each output
    position reads (None: the same positions), ``hard`` (Q,) the targets, ``top`` (P,) the largest logit
    of each position when known (:func:`_max_and_argmax`). The terms of
    :meth:`OutputReader.log_probabilities` (``z - max``, then ``log sum exp``, the sum class by class)
    are computed once per block position, on contiguous rows; at the output's resolution only the
    targets' logits are read: ``(z[target] - max) - lse``, the numbers of the whole (P, K)
    log-probabilities.
    """
    k, p = lt.shape
    m = _max_and_argmax(lt)[0] if top is None else top
    total = np.exp(lt[0] - m)
    for j in range(1, k):
        total += np.exp(lt[j] - m)
    lse = np.log(total)
    at = np.arange(p) if reads is None else np.asarray(reads)
    z = np.take(lt, np.asarray(hard, np.int64) * p + at)  # each output position's target logit
    return -((z - np.take(m, at)) - np.take(lse, at)) if reads is not None else -((z - m) - lse)


class SegmentationScores:
    """Reducer of the segmentation layer table (float64 sums).

    Per block and for the model (the last row): a (K, K) confusion matrix
    against the targets (masks, or the model's own mask without masks), the
    summed per-pixel cross-entropy (against the masks, or the model's
    per-pixel distribution), and the pixels where the mask equals the model's.
    """

    def __init__(self, block_taps, states, output_tap, task, *, controls=None, bootstrap=0, random_state=None):
        self.block_taps = list(block_taps)
        self.output_tap = output_tap
        self.taps = self.block_taps + [output_tap]
        self.task = task
        self.weights = _effective(states)
        K = task.num_classes
        L1 = len(self.block_taps) + 1
        #: Per block, the control probes' effective (w, b) (the probe's standardization, the control's kernel).
        self.controls = [
            [(kernel * scale[:, None], bias - mean @ (kernel * scale[:, None])) for kernel, bias in ctl]
            for (mean, scale, _, _), ctl in zip(states, controls)
        ] if controls else None
        self.n_controls = len(controls[0]) if controls else 0
        #: (L, n_controls, K, K) confusion of each control probe against the masks.
        self.control_cm = np.zeros((L1 - 1, self.n_controls, K, K))
        self.bootstrap = (PoissonBootstrap(bootstrap, self.bootstrap_width(L1, K, self.n_controls), random_state)
                          if bootstrap else None)
        self.cm = np.zeros((L1, K, K))
        self.loss = np.zeros(L1)
        self.agree = np.zeros(L1)
        self.n = 0
        self.pixels = 0
        self.labelled = None
        self.logits_reader = OutputReader("logits", K)

    def _reads(self, n, block_spatial, out_spatial):
        """Flat block positions (n * prod(S),) read by the output positions of ``n`` samples; None where equal."""
        if tuple(block_spatial) == tuple(out_spatial):
            return None
        cache = self.__dict__.setdefault("_reads_cache", {})
        key = (n, tuple(block_spatial), tuple(out_spatial))
        if key not in cache:
            size = int(np.prod(out_spatial))
            pos = block_positions(np.arange(size), out_spatial, block_spatial)
            flat = np.arange(n, dtype=np.int64)[:, None] * int(np.prod(block_spatial)) + pos[None]
            # Kept for the whole pass: int32 (half the memory) where a batch's block positions fit in it.
            cache[key] = flat.ravel().astype(np.int32 if flat.size and flat.max() < 2**31 else np.int64)
        return cache[key]

    @staticmethod
    def bootstrap_width(L1, K, n_controls) -> int:
        """Per-sample statistics fed to the bootstrap: per row ``3K + 2``, per control ``3K``, and the pixels."""
        return L1 * (3 * K + 2) + (L1 - 1) * n_controls * 3 * K + 1

    def update(self, batch):
        task, K = self.task, self.task.num_classes
        out = batch.values[self.output_tap.ident]
        n = len(out)
        S = spatial_shape(out.shape)
        probs = task.probabilities(out).reshape(-1, K)
        model_mask = probs.argmax(axis=1)
        labelled = batch.y is not None
        self.labelled = labelled
        hard = np.asarray(batch.y).ravel() if labelled else model_mask
        soft = hard if labelled else probs
        L = len(self.block_taps)
        boot = self.bootstrap is not None
        rows = []  # per row, per sample: (n, 3K + 2) [tp_k, predicted_k, true_k, loss, agreement]
        sample = np.repeat(np.arange(n), len(hard) // n)

        def per_sample(pred, loss, agree):
            tp = np.bincount(sample * K + pred, weights=(pred == hard), minlength=n * K).reshape(n, K)
            pk = np.bincount(sample * K + pred, minlength=n * K).reshape(n, K)
            tk = np.bincount(sample * K + hard, minlength=n * K).reshape(n, K)
            parts = [tp, pk, tk]
            if loss is not None:
                parts += [np.bincount(sample, weights=loss, minlength=n)[:, None],
                          np.bincount(sample, weights=agree, minlength=n)[:, None]]
            return np.concatenate(parts, axis=1).astype(np.float64)

        model_loss = task.reader.cross_entropy(out.reshape(-1, task.units), soft)
        self.cm[L] += confusion(hard, model_mask, K)
        self.loss[L] += float(np.sum(model_loss))
        self.agree[L] += len(model_mask)
        ctl_rows = []
        for l, (tap, (w, b)) in enumerate(zip(self.block_taps, self.weights)):
            a = batch.values[tap.ident]
            # Logits at the block's own resolution; the output positions read them by index (nearest
            # neighbour: core/resolution.py), so the class map and each position's log-probability of
            # its target are gathered, not K float64 logits upsampled: the same numbers, row for row.
            ctl = self.controls[l] if self.controls is not None and labelled else []
            logits, cpreds = _probe_logits(a, w, b, ctl)  # (K, block positions), class-major
            reads = self._reads(n, spatial_shape(a.shape), S)
            top, pred = _max_and_argmax(logits)
            pred = pred if reads is None else pred[reads]
            if labelled:
                loss = _target_log_loss(logits, reads, hard, top)
            else:
                loss = self.logits_reader.cross_entropy(logits.T if reads is None else logits.T[reads], soft)
            self.cm[l] += confusion(hard, pred, K)
            self.loss[l] += float(np.sum(loss))
            self.agree[l] += float(np.sum(pred == model_mask))
            if boot:
                rows.append(per_sample(pred, loss, (pred == model_mask).astype(np.float64)))
            if ctl:
                for j, cpred in enumerate(cpreds):
                    cpred = cpred if reads is None else cpred[reads]
                    self.control_cm[l, j] += confusion(hard, cpred, K)
                    if boot:
                        ctl_rows.append(per_sample(cpred, None, None))
        if self.bootstrap is not None:  # boot
            rows.append(per_sample(model_mask, model_loss, np.ones(len(model_mask))))
            if self.controls is not None and not labelled:
                ctl_rows = [np.zeros((n, 3 * K))] * (L * self.n_controls)
            pixels = np.full((n, 1), len(hard) // n, np.float64)
            self.bootstrap.update(np.concatenate(rows + ctl_rows + [pixels], axis=1))
        self.n += n
        self.pixels += len(model_mask)

    def resampled_metrics(self) -> dict:
        """Per bootstrap resample (B, L + 1): every metric of :meth:`metrics` from the resample's weighted sums.

        A resample's confusion sums are ``sum_n w_n c_n`` over the samples' own
        sums ``c_n`` (``w_n`` its Poisson multiplicities), so its IoU, Dice and
        pixel accuracy are those of the resampled data; a class absent from
        the resample's targets and predictions is left out of its means.
        """
        boot, K = self.bootstrap, self.task.num_classes
        assert boot is not None  # called for the intervals, which need the bootstrap
        keep = boot.weights > 0
        sums = boot.sums[keep]
        B, L1, J = len(sums), len(self.cm), self.n_controls
        head = sums[:, :L1 * (3 * K + 2)].reshape(B, L1, 3 * K + 2)
        ctl = sums[:, L1 * (3 * K + 2):-1].reshape(B, L1 - 1, J, 3 * K)
        pixels = sums[:, -1][:, None]

        def scores(block):  # (..., 3K) -> mean IoU, Dice, pixel accuracy
            tp, pk, tk = block[..., :K], block[..., K:2 * K], block[..., 2 * K:3 * K]
            union, denom = pk + tk - tp, pk + tk
            with np.errstate(all="ignore"), _nan_mean_quiet():
                iou = np.nanmean(np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan), axis=-1)
                dice = np.nanmean(np.where(union > 0, 2 * tp / np.where(denom > 0, denom, 1), np.nan), axis=-1)
            return iou, dice, tp.sum(axis=-1)

        iou, dice, correct = scores(head[..., :3 * K])
        out = {
            "mean_iou": iou,
            "dice": dice,
            "pixel_accuracy": correct / pixels,
            "loss": head[..., 3 * K] / pixels,
            "agreement": head[..., 3 * K + 1] / pixels,
        }
        if J and self.labelled:
            c_iou = scores(ctl)[0].mean(axis=2)  # (B, L): mean over the controls
            out["control_mean_iou"] = np.concatenate([c_iou, np.full((B, 1), np.nan)], axis=1)
            out["selectivity"] = iou - out["control_mean_iou"]
        return out

    def intervals(self, confidence) -> tuple[dict, dict]:
        """``(lower, upper)``: per metric, the percentile interval of the resampled values (NaN where undefined)."""
        alpha = 1.0 - confidence
        lower, upper = {}, {}
        for name, values in self.resampled_metrics().items():
            with np.errstate(all="ignore"), _nan_mean_quiet():
                lo, hi = np.nanquantile(values, [alpha / 2, 1 - alpha / 2], axis=0) if len(values) else (
                    np.full(values.shape[1], np.nan),) * 2
            lower[name], upper[name] = np.asarray(lo), np.asarray(hi)
        return lower, upper

    def metrics(self) -> dict:
        """Per row (blocks, then the model): mean_iou, dice, pixel_accuracy, loss, agreement."""
        scores = [confusion_scores(cm) for cm in self.cm]
        with np.errstate(all="ignore"), _nan_mean_quiet():
            return {
                "mean_iou": np.array([np.nanmean(s["iou"]) for s in scores]),
                "dice": np.array([np.nanmean(s["dice"]) for s in scores]),
                "pixel_accuracy": np.array([s["pixel_accuracy"] for s in scores]),
                "loss": self.loss / self.pixels,
                "agreement": self.agree / self.pixels,
            }

    def control_mean_iou(self) -> np.ndarray:
        """(L + 1,) mean IoU of the control probes against the masks, averaged over the controls; NaN at the output."""
        with np.errstate(all="ignore"), _nan_mean_quiet():
            per = np.array([[np.nanmean(confusion_scores(cm)["iou"]) for cm in block] for block in self.control_cm])
        return np.concatenate([per.mean(axis=1), [np.nan]])


class _nan_mean_quiet:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._w.__exit__(*exc)


def evaluate_layers(interp, x, y=None, *, batch_size=64, max_samples=None, steps=None, controls=0, bootstrap=0,
                    confidence=0.95, random_state=None) -> LayerTable:
    """The segmentation layer table: one row per block, then ``output`` (see the module docstring).

    ``metrics``: ``mean_iou``, ``dice``, ``pixel_accuracy`` (against the
    masks ``y``, or the model's own mask without masks), ``loss`` (mean pixel
    cross-entropy against the masks, or the model's per-pixel distribution)
    and ``agreement`` (fraction of pixels where the block's mask equals the
    model's). ``accuracy`` is the pixel accuracy against the masks (NaN without).

    ``controls``: the first ``controls`` control probes of the fit
    (:func:`fit_probes`), evaluated on every pixel as the probe is:
    ``control_mean_iou`` (their mean IoU against the masks, averaged over the
    controls) and ``selectivity`` (``mean_iou - control_mean_iou``). Needs masks.

    ``bootstrap``: resamples of a streaming Poisson bootstrap over the
    samples (:class:`~keras_hybrid_interp.core.bootstrap.PoissonBootstrap`,
    seeded by ``random_state``), fed per sample with each row's per-class
    true positives, predicted and true pixel counts, summed loss and
    agreement (and each control's counts): every resample's mean IoU, Dice,
    pixel accuracy, loss, agreement, control mean IoU and selectivity are
    those of its weighted sums. Memory ``bootstrap x (L + 1) x (3K + 2)``
    float64 (plus ``bootstrap x L x controls x 3K``), whatever N and the map
    sizes. Percentile intervals at ``confidence`` in ``lower``/``upper``.
    """
    interp._require_fitted()
    controls = check_controls(controls)
    fitted = len(interp.control_states_[0]) if interp.control_states_ else 0
    if controls > fitted:
        raise ValueError(
            f"`controls`={controls} asks for {controls} control probes per block, but the probes were fitted "
            f"with {fitted}. Fit them with interp.fit_probes(x_train, y_train, controls={controls}, "
            "random_state=...) first."
        )
    bootstrap = check_bootstrap(bootstrap)
    confidence = check_confidence(confidence)
    task = interp.reader
    stream = interp._stream(x, y, batch_size=batch_size, max_samples=max_samples, steps=steps)
    ctl = [c[:controls] for c in interp.control_states_] if controls else None
    scores = SegmentationScores([_pass.Tap(k, "raw") for k in interp.block_keys], interp._probe_states(),
                                interp._output_tap(), task, controls=ctl, bootstrap=bootstrap,
                                random_state=random_state)
    moments = _pass.InputMoments()
    info = _pass.run(interp.graph, stream, [scores, moments], task=task)
    if info.n == 0:
        raise ValueError("`x` holds no samples to evaluate.")
    if controls and not info.has_labels:
        raise ValueError(
            "`controls` needs masks: the control probes' mean IoU is measured against the evaluation masks. Pass "
            "`y` (or a dataset yielding (x, y)), or controls=0."
        )
    interp._check_drift(moments)
    return segmentation_table(interp, scores, confidence)


def segmentation_table(interp, scores: SegmentationScores, confidence=0.95) -> LayerTable:
    """The :class:`LayerTable` of a :class:`SegmentationScores` reducer that has seen a pass."""
    graph = interp.graph
    labelled = bool(scores.labelled)
    m = scores.metrics()
    if scores.n_controls and labelled:
        m["control_mean_iou"] = scores.control_mean_iou()
        m["selectivity"] = m["mean_iou"] - m["control_mean_iou"]
    lower, upper = scores.intervals(confidence) if scores.bootstrap is not None else ({}, {})
    counts = scores.cm[-1].sum(axis=1) if labelled else scores.cm[-1].sum(axis=0)
    _health.check_classes(counts, interp.class_names, "the masks" if labelled else "the model's masks")
    depths = [b.depth for b in interp.blocks] + [graph.tensors[graph.output_keys[0]].producer]
    return LayerTable(
        blocks=tuple(interp.block_names) + ("output",),
        depths=np.asarray(depths),
        filters=tuple(None if b.filters is None else int(b.filters) for b in interp.blocks) + (None,),
        accuracy=m["pixel_accuracy"] if labelled else np.full(len(depths), np.nan),
        loss=m["loss"],
        agreement=m["agreement"],
        chance=float(counts.max() / max(counts.sum(), 1)),
        n=int(scores.n),
        labelled=labelled,
        task="segmentation",
        metrics=m,
        headline="mean_iou",
        lower=lower,
        upper=upper,
        confidence=confidence if lower else None,
        n_resamples=scores.bootstrap.n_resamples if scores.bootstrap is not None else 0,
    )


# ----------------------------------------------------------------------
# Per-sample masks and one input's explanation
# ----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SegmentationPredictions:
    """Every block's predicted mask of every sample.

    Attributes
    ----------
    blocks : list of str
    depths : ndarray (L,)
    masks : ndarray (L, N, *S) of int
        Each block's probe mask at the model's output resolution.
    model_masks : ndarray (N, *S) of int
    class_names : list of str
    """

    blocks: list
    depths: np.ndarray
    masks: np.ndarray
    model_masks: np.ndarray
    class_names: list

    @property
    def agreement(self) -> np.ndarray:
        """(L, N): fraction of each sample's pixels where the block's mask equals the model's."""
        axes = tuple(range(2, self.masks.ndim))
        return np.mean(self.masks == self.model_masks[None], axis=axes)

    def to_frame(self) -> pd.DataFrame:
        """One row per block and sample: ``block``, ``depth``, ``sample``, ``agreement``, and per class
        ``fraction_<class>`` (the share of the sample's pixels the block assigns to it)."""
        L, N = self.masks.shape[:2]
        flat = self.masks.reshape(L, N, -1)
        frame = pd.DataFrame({
            "block": np.repeat(self.blocks, N),
            "depth": np.repeat(np.asarray(self.depths), N),
            "sample": np.tile(np.arange(N), L),
            "agreement": self.agreement.ravel(),
        })
        for k, name in enumerate(self.class_names):
            frame[f"fraction_{name}"] = np.mean(flat == k, axis=2).ravel()
        return frame

    def plot(self, ax=None, **kwargs):
        """Mean agreement with the model's mask per block (:func:`~keras_hybrid_interp.plotting.segmentation.
        plot_segmentation_agreement`); returns the Axes."""
        from ..plotting.segmentation import plot_segmentation_agreement

        return plot_segmentation_agreement(self, ax=ax, **kwargs)


class MaskCollector:
    """Reducer: every block's mask (and the model's) of every sample, kept as small ints."""

    def __init__(self, block_taps, states, output_tap, task):
        self.block_taps = list(block_taps)
        self.output_tap = output_tap
        self.taps = self.block_taps + [output_tap]
        self.task = task
        self.weights = _effective(states)
        self.masks: list[list] = [[] for _ in self.block_taps]
        self.model = []

    def update(self, batch):
        out = batch.values[self.output_tap.ident]
        S = spatial_shape(out.shape)
        self.model.append(self.task.predicted(out).astype(np.int32))
        for store, tap, (w, b) in zip(self.masks, self.block_taps, self.weights):
            a = batch.values[tap.ident]
            s = spatial_shape(a.shape)
            # The class map at the block's resolution, read at the output positions by index (nearest neighbour).
            pred = (np.asarray(a, np.float64) @ w + b).argmax(axis=-1).astype(np.int32)
            store.append(upsample(pred, index_maps(s, S)))


def layer_predictions(interp, x, *, batch_size=64, max_samples=None, steps=None) -> SegmentationPredictions:
    """Every block's mask of every sample of ``x``: holds L x N x H x W ints (use ``max_samples`` on large data)."""
    interp._require_fitted()
    stream = interp._stream(x, batch_size=batch_size, max_samples=max_samples, steps=steps)
    red = MaskCollector([_pass.Tap(k, "raw") for k in interp.block_keys], interp._probe_states(),
                        interp._output_tap(), interp.reader)
    moments = _pass.InputMoments()
    info = _pass.run(interp.graph, stream, [red, moments])
    if info.n == 0:
        raise ValueError("`x` holds no samples.")
    interp._check_drift(moments)
    return SegmentationPredictions(
        blocks=list(interp.block_names),
        depths=np.array([b.depth for b in interp.blocks]),
        masks=np.stack([np.concatenate(m) for m in red.masks]),
        model_masks=np.concatenate(red.model),
        class_names=list(interp.class_names),
    )


@dataclasses.dataclass(frozen=True)
class SegmentationExplanation:
    """What every block believes about one input's mask.

    Attributes
    ----------
    image : ndarray (*S_in, channels)
        The input.
    blocks : list of str
    depths : ndarray (L,)
    probabilities : ndarray (L, *S, K)
        Each block's per-position class probabilities at the model's output resolution.
    masks : ndarray (L, *S) of int
        Each block's predicted mask (argmax; ties to the lower class).
    model_probabilities : ndarray (*S, K)
    model_mask : ndarray (*S) of int
    iou_with_model : ndarray (L,)
        Mean IoU of each block's mask against the model's mask (macro over the
        classes present in either): at what depth the model's mask forms.
    class_names : list of str
    """

    image: np.ndarray
    blocks: list
    depths: np.ndarray
    probabilities: np.ndarray
    masks: np.ndarray
    model_probabilities: np.ndarray
    model_mask: np.ndarray
    iou_with_model: np.ndarray
    class_names: list

    @property
    def agreement(self) -> np.ndarray:
        """(L,): fraction of pixels where each block's mask equals the model's."""
        return np.mean(self.masks.reshape(len(self.blocks), -1) == self.model_mask.ravel()[None], axis=1)

    def to_frame(self) -> pd.DataFrame:
        """One row per block, then ``output``: ``block``, ``depth``, ``iou_with_model``, ``agreement`` and
        per class ``fraction_<class>`` (share of pixels assigned to it)."""
        names = list(self.blocks) + ["output"]
        masks = np.concatenate([self.masks, self.model_mask[None]]).reshape(len(names), -1)
        frame = pd.DataFrame({
            "block": names,
            "depth": list(np.asarray(self.depths)) + [np.nan],
            "iou_with_model": list(self.iou_with_model) + [1.0],
            "agreement": list(self.agreement) + [1.0],
        })
        for k, name in enumerate(self.class_names):
            frame[f"fraction_{name}"] = np.mean(masks == k, axis=1)
        return frame

    def plot(self, fig=None, **kwargs):
        """A row of masks over the input, shallow to deep, then the model's (see :func:`plot_segmentation_masks`)."""
        from ..plotting.segmentation import plot_segmentation_masks

        return plot_segmentation_masks(self, fig=fig, **kwargs)

    def __repr__(self):
        ious = ", ".join(f"{b}: {v:.2f}" for b, v in zip(self.blocks, self.iou_with_model))
        return f"SegmentationExplanation(IoU with the model's mask: {ious})"


def _mean_iou(t, p, k):
    with _nan_mean_quiet():
        return float(np.nanmean(confusion_scores(confusion(t, p, k))["iou"]))


def explain(interp, x) -> SegmentationExplanation:
    """The segmentation explanation of one input ``x`` (a sample, or a batch of one)."""
    interp._require_fitted()
    graph = interp.graph
    shape = tuple(graph.tensors[graph.input_keys[0]].shape[1:])
    x = np.asarray(x)
    if x.ndim == len(shape):
        x = x[None]
    if x.ndim != len(shape) + 1 or x.shape[0] != 1:
        raise ValueError(
            f"`x` must be one input of shape {shape} or (1, {', '.join(map(str, shape))}); received shape "
            f"{x.shape}. For several inputs use layer_predictions()."
        )
    collects = [_pass.Collect(_pass.Tap(k, "raw")) for k in interp.block_keys] + [_pass.Collect(interp._output_tap())]
    moments = _pass.InputMoments()
    _pass.run(graph, interp._stream(x), collects + [moments])
    interp._check_drift(moments)
    return explanation_from_maps(interp, x[0], [c.result()[:1] for c in collects])


def explanation_from_maps(interp, image, maps) -> SegmentationExplanation:
    """The :class:`SegmentationExplanation` of one input from its raw maps (no pass).

    ``maps`` is ``[block maps (1, *s, C) for each block] + [model output (1, *S, K)]``, as
    ``interp._explanation_taps`` collects them in a pass (the report's); ``image`` the input.
    """
    task = interp.reader
    x = np.asarray(image)[None]
    out = maps[-1]
    S = spatial_shape(out.shape)
    K = task.num_classes
    model_p = task.probabilities(out)[0]
    model_mask = model_p.argmax(axis=-1)
    reader = OutputReader("logits", K)
    probs, block_masks = [], []
    for a, (w, b) in zip(maps[:-1], _effective(interp._probe_states())):
        logits = block_logits(a, w, b, S)[0]
        probs.append(reader.probabilities(logits.reshape(-1, K)).reshape(S + (K,)))
        block_masks.append(logits.argmax(axis=-1))
    masks = np.stack(block_masks)
    return SegmentationExplanation(
        image=x[0],
        blocks=list(interp.block_names),
        depths=np.array([b.depth for b in interp.blocks]),
        probabilities=np.stack(probs),
        masks=masks,
        model_probabilities=model_p,
        model_mask=model_mask,
        iou_with_model=np.array([_mean_iou(model_mask, m, K) for m in masks]),
        class_names=list(interp.class_names),
    )
