"""``HybridInterpreter``: the one-line wrap and its local interpretability."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

import keras

from ..core import blocks as _blocks
from ..core import data_pass as _pass
from ..core import graph as _graph
from ..core import health as _health
from ..core.bootstrap import PoissonBootstrap, check_bootstrap, check_confidence
from ..core.data import model_stream, x_rows
from ..core.drift import check_drift as _check_input_drift
from ..core.drift import drift_message  # re-exported (__all__)
from ..core.metrics import MetricSums
from ..core.output import OutputReader
from ..core.pooling import FeaturePooling
from ..core.task import ClassificationTask, MultiLabelTask, Task, task_for
from ..core.trainer import (
    MAX_ITER,
    TOL,
    RidgeSolution,
    check_C,
    check_solver,
    fit_task_probe,
    probe_logits,
    restandardize,
)
from ..core.validation import check_int, is_int
from . import segmentation as _segmentation
from .probes import LinearProbe, input_transform
from .results import INTERVAL_METRICS, LayerPredictions, LayerTable, LocalExplanation

__all__ = ["HybridInterpreter", "BlockList", "ProbeScores", "drift_message"]


class BlockList(Sequence):
    """Read-only sequence of :class:`~keras_hybrid_interp.Block` with ``.to_frame()``."""

    def __init__(self, blocks):
        self._blocks = tuple(blocks)

    def __getitem__(self, i):
        return self._blocks[i]

    def __len__(self):
        return len(self._blocks)

    def __repr__(self):
        names = [b.name for b in self._blocks]
        shown = names if len(names) <= 4 else names[:2] + ["..."] + names[-2:]
        return f"BlockList({len(names)} blocks: {', '.join(shown)})"

    @property
    def names(self) -> list[str]:
        return [b.name for b in self]

    def to_frame(self) -> pd.DataFrame:
        frame = pd.DataFrame({
            "block": [b.name for b in self],
            "output_shape": [b.output_shape for b in self],
            "filters": [b.filters for b in self],
            "depth": [b.depth for b in self],
        })
        if any(getattr(b, "branch", None) is not None for b in self):  # a model with several inputs
            frame["branch"] = [b.branch for b in self]
        if any(getattr(b, "stage", None) is not None for b in self):  # an encoder-decoder network (a U-Net)
            frame["stage"] = [b.stage for b in self]
        return frame


def _resolve_verbose(verbose):
    if verbose == "auto":
        return 1
    if verbose not in (0, 1, 2):
        raise ValueError(f"`verbose` must be 'auto', 0, 1 or 2; received {verbose!r}.")
    return verbose


def _check_pooling(pooling):
    if pooling in ("avg", "max"):
        return pooling
    if is_int(pooling) and pooling >= 1:
        return int(pooling)
    raise ValueError(
        "`pooling` must be 'avg' (global average, the default), 'max' (global max) or a "
        f"positive int k (adaptive average pooling to a k x k grid); received {pooling!r}."
    )


class ProbeScores:
    """Reducer of the layer table: per-block probe accuracy, loss and agreement (float64 sums).

    ``probes`` is a list of ``(tap, mean, scale, kernel, bias)``; the model
    output tap is read with ``reader``. ``controls``, if given, holds per
    block a list of control probes ``(kernel, bias)`` in the probe's own
    standardized coordinates (the same ``mean``, ``scale``): their accuracy
    is summed too. ``bootstrap`` > 0 feeds every sample's correctness, loss,
    agreement, mean control correctness and selectivity to a streaming
    :class:`~keras_hybrid_interp.core.bootstrap.PoissonBootstrap` seeded by
    ``random_state``: ``bootstrap x 5 (L + 1)`` float64 sums, whatever the
    number of samples.
    """

    def __init__(self, probes, output_tap, reader, num_classes, *, controls=None, bootstrap=0, random_state=None):
        self.probes = probes
        self.output_tap = output_tap
        self.reader = reader
        self.taps = tuple(p[0] for p in probes) + (output_tap,)
        self._logits_reader = OutputReader("logits", num_classes)
        L = len(probes)
        self.correct = np.zeros(L + 1)
        self.agree = np.zeros(L + 1)
        self.loss = np.zeros(L + 1)
        self.counts = np.zeros(num_classes)
        self.model_counts = np.zeros(num_classes)
        self.n = 0
        self.labelled = None
        self.controls = controls
        self.n_controls = len(controls[0]) if controls else 0
        #: (n_controls, L) summed correctness of each control probe against the labels.
        self.control_correct = np.zeros((self.n_controls, L))
        self.bootstrap = (PoissonBootstrap(bootstrap, len(INTERVAL_METRICS) * (L + 1), random_state)
                          if bootstrap else None)

    def log_probabilities(self, batch):
        """Per-block probe log-probabilities and the model's, for one batch (float64)."""
        out = [self._logits_reader.log_probabilities(probe_logits(batch.values[tap.ident], *w))
               for tap, *w in self.probes]
        out.append(self.reader.log_probabilities(batch.values[self.output_tap.ident]))
        return out

    def update(self, batch):
        logps = self.log_probabilities(batch)
        model_logp = logps[-1]
        model_cls = model_logp.argmax(axis=1)
        model_p = np.exp(model_logp)
        k = model_logp.shape[1]
        b, L1 = len(model_cls), len(logps)
        self.model_counts += np.bincount(model_cls, minlength=k)
        self.labelled = batch.y is not None
        if batch.y is not None:
            self.counts += np.bincount(batch.y, minlength=k)
        per_sample = np.full((len(INTERVAL_METRICS), b, L1), np.nan)  # metric, sample, row
        for i, logp in enumerate(logps):
            cls = logp.argmax(axis=1)
            per_sample[2, :, i] = cls == model_cls
            if batch.y is not None:
                per_sample[0, :, i] = cls == batch.y
                per_sample[1, :, i] = -logp[np.arange(b), batch.y]
            else:
                per_sample[1, :, i] = -np.sum(model_p * logp, axis=1)
        self.correct += np.nansum(per_sample[0], axis=0)
        self.loss += per_sample[1].sum(axis=0)
        self.agree += per_sample[2].sum(axis=0)
        if self.n_controls and batch.y is not None:
            for i, ((tap, mean, scale, _, _), controls) in enumerate(zip(self.probes, self.controls)):
                z = (np.asarray(batch.values[tap.ident], np.float64) - mean) * scale
                hits = np.stack([(z @ kernel + bias).argmax(axis=1) == batch.y for kernel, bias in controls])
                self.control_correct[:, i] += hits.sum(axis=1)
                per_sample[3, :, i] = hits.mean(axis=0)
            per_sample[4] = per_sample[0] - per_sample[3]
        if self.bootstrap is not None:
            # Metrics a table lacks (accuracy without labels, controls not asked for) stay NaN: 0 here.
            self.bootstrap.update(np.nan_to_num(per_sample, nan=0.0).transpose(1, 0, 2).reshape(b, -1))
        self.n += b


class TaskProbeScores:
    """Reducer of the layer table of a multi-label or regression model (see :mod:`~keras_hybrid_interp.core.metrics`).

    ``probes`` is a list of ``(tap, mean, scale, kernel, bias)``; ``probe_task``
    reads the probes' outputs (logits, or values), ``task`` the model's. The
    targets are the labels, or the model's own decisions (values) without
    labels. ``controls`` as in :class:`ProbeScores`: their headline metric is
    scored against the labels.
    """

    def __init__(self, probes, output_tap, task, probe_task, *, controls=None, bootstrap=0, random_state=None):
        self.probes = probes
        self.output_tap = output_tap
        self.task = task
        self.taps = tuple(p[0] for p in probes) + (output_tap,)
        L = len(probes)
        self.sums = MetricSums(task, [probe_task] * L + [task], bootstrap=bootstrap, random_state=random_state)
        self.controls = controls
        self.n_controls = len(controls[0]) if controls else 0
        self.control_sums = (MetricSums(task, [probe_task] * (L * self.n_controls)) if self.n_controls else None)
        self.labelled = None
        self.n = 0

    @property
    def bootstrap(self):
        return self.sums.bootstrap

    def update(self, batch):
        out = np.asarray(batch.values[self.output_tap.ident], np.float64)
        model_targets = self.task.hard_targets(out)
        self.labelled = batch.y is not None
        targets = batch.y if batch.y is not None else model_targets
        feats = [np.asarray(batch.values[tap.ident], np.float64) for tap, *_ in self.probes]
        outputs = [probe_logits(f, *w) for f, (_, *w) in zip(feats, self.probes)] + [out]
        decisions = model_targets if self.task.name == "multilabel" else None
        self.sums.update(outputs, targets, decisions)
        if self.control_sums is not None and batch.y is not None:
            ctl = [probe_logits(f, mean, scale, kernel, bias)
                   for f, (_, mean, scale, _, _), controls in zip(feats, self.probes, self.controls)
                   for kernel, bias in controls]
            self.control_sums.update(ctl, batch.y, decisions)
        self.n += len(out)


@keras.saving.register_keras_serializable(package="keras_hybrid_interp")
class HybridInterpreter(keras.Model):
    """Wraps a Keras CNN with one trainable dense probe per block.

    The probes read the output of each block (pooled over space) and predict
    the class: what the network "believes" at that depth. The wrapped model
    is never changed: its weights, ``trainable`` flags, compile state and
    layers stay as they are, and every forward pass runs it in inference
    mode (``training=False``).

    Parameters
    ----------
    model : keras.Model
        A Functional or Sequential classifier (softmax multi-class, sigmoid
        binary, or logits), possibly nesting a backbone such as a
        ``keras.applications`` model.
    blocks : "auto", str, int, Layer or list of them
        Block ends. ``"auto"`` finds them from the graph (see README, "Block
        discovery"). Otherwise layer names (``"resnet50/conv3_block1_out"``
        for nested layers), indices into ``model.layers`` or layer objects.
    pooling : "avg", "max" or int
        How a block output (T, C), (H, W, C) or (D, H, W, C) becomes the probe
        input: global average over its spatial axes (default), global max, or
        adaptive average pooling to k cells along each spatial axis (k x k for 2-D).
    input_shape : tuple, optional
        Shape of one input (no batch axis); only needed for a Sequential
        model that was never built.
    task : "auto", "multiclass", "binary", "multilabel", "regression" or "segmentation"
        What the output means (see :mod:`~keras_hybrid_interp.core.task`).
        "auto" infers it from the output's shape and final activation
        (softmax: multi-class; one sigmoid unit: binary; K sigmoid units:
        multi-label; a spatial output map: segmentation) and refuses linear
        units, which may be logits or regression values. A declared task
        that contradicts the output is refused.
    output : "auto", an output's name or index, or "softmax", "sigmoid", "logits"
        Which output to interpret, for a model with several outputs (by
        its layer's name or its index; the error lists them). For a
        single-output model, an output kind as in earlier versions:
        "logits" declares class logits (the same as ``task="multiclass"``
        or ``"binary"`` on linear units).
    class_names : list of str, optional
        Names of the K classes (labels, regression targets), used in tables and plots.

    Examples
    --------
    >>> interp = HybridInterpreter(model)
    >>> interp.fit_probes(x_train, y_train, verbose=0)
    >>> interp.evaluate_layers(x_test, y_test)        # one row per block
    >>> interp.explain(x_test[0]).decision_block      # where the model decides
    """

    wrapped_model: keras.Model  # the model interpreted (set in __init__)

    def __init__(
        self,
        model,
        blocks="auto",
        *,
        pooling="avg",
        input_shape=None,
        output="auto",
        task="auto",
        class_names=None,
        input_statistics=None,
        name="hybrid_interpreter",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        if isinstance(model, HybridInterpreter):
            raise TypeError(
                f"`model` must be the classifier to interpret; received a HybridInterpreter (wrapping "
                f"{model.wrapped_model.name!r}). Use it directly, or wrap its model: "
                "HybridInterpreter(interp.wrapped_model)."
            )
        graph = _graph.ModelGraph(model, input_shape=input_shape)
        out_key, self._task = task_for(graph, task, output, model.name)
        graph.select_output(out_key)
        self._output_arg = output if isinstance(output, str) else int(output)
        self._reader = self._task
        #: How the output is read ("softmax", "sigmoid", "logits"; "linear" for regression).
        self.output_kind = self._task.kind
        #: The task's name (see ``task``).
        self.task = self._task.name
        self.pooling = _check_pooling(pooling)
        keys, names, infos = _blocks.select_blocks(graph, blocks)
        if "output" in names:
            raise ValueError("A block named 'output' would clash with the model output key; rename that layer.")
        #: Classes, labels or regression targets (K).
        self.num_classes = self._task.num_outputs
        if class_names is None:
            class_names = self._task.default_names()
        if isinstance(class_names, (str, bytes)) or not hasattr(class_names, "__len__"):
            raise TypeError(f"`class_names` must be a list of {self.num_classes} names; received {class_names!r}.")
        class_names = [str(c) for c in class_names]
        if len(class_names) != self.num_classes:
            what = {"multilabel": "labels", "regression": "targets"}.get(self._task.name, "classes")
            raise ValueError(
                f"`class_names` has {len(class_names)} names but the model has {self.num_classes} {what}."
            )
        if isinstance(self.pooling, int):
            small = [n for n, b in zip(names, infos)
                     if any(d is not None and d < self.pooling for d in b.output_shape[1:-1])]
            if small:
                grids = sorted({len(b.output_shape) - 2 for b in infos})
                grid = " or ".join("x".join([str(self.pooling)] * d) for d in grids)
                raise ValueError(
                    f"`pooling`={self.pooling} needs feature maps of at least {grid}; "
                    f"blocks {small} are smaller. Use pooling='avg' or a smaller k."
                )

        self.wrapped_model = model
        self.class_names = class_names
        self._input_shape_arg = None if input_shape is None else tuple(input_shape)
        self._graph = graph
        self.block_keys = keys
        self.blocks = BlockList(infos)
        self.block_names = names
        self.fitted = False
        #: Per-channel input (mean, std) of the data the probes were fitted on (drift check).
        self.input_statistics = None if input_statistics is None else {
            k: np.asarray(v, np.float64) for k, v in dict(input_statistics).items()}
        #: Convergence of the last fit: one row per block (block, n_iter, converged, loss).
        self.convergence_ = None
        #: Caveats found by the last fit (a list of ``_health.Caveat``).
        self.fit_health_ = []
        #: Per block, the control probes ``(kernel, bias)`` of the last fit (``fit_probes(controls=n)``).
        self.control_states_ = []

        # Pooling and probes compute in float32 whatever the global dtype policy:
        # under mixed_float16 the block outputs (float16) are cast up exactly.
        self._pools = [FeaturePooling(self.pooling, name=f"pool_{i}", dtype="float32") for i in range(len(keys))]
        self._probes = []
        for i, info in enumerate(infos):
            c = int(info.filters)
            dim = c if self.pooling in ("avg", "max") else self.pooling ** (len(info.output_shape) - 2) * c
            probe = LinearProbe(self.num_classes, activation=self._probe_activation(), name=f"probe_{i}",
                                dtype="float32")
            probe.build((None, dim))
            self._probes.append(probe)
        self.built = True  # every part is built above; saving needs no build() call

    # ------------------------------------------------------------------
    @property
    def graph(self):
        """The flattened model graph (:class:`~keras_hybrid_interp.core.graph.ModelGraph`)."""
        return self._graph

    @property
    def reader(self) -> Task:
        """The model's task (:class:`~keras_hybrid_interp.core.task.Task`): how its output is read."""
        return self._reader

    def _probe_activation(self) -> str:
        return {"multilabel": "sigmoid", "regression": "linear"}.get(self._task.name, "softmax")

    def _probe_task(self) -> Task:
        """The probes' own task: the model's task read from logits (values for regression)."""
        from ..core.task import RegressionTask

        name = self._task.name
        if name == "multilabel":
            return MultiLabelTask("logits", self.num_classes)
        if name == "regression":
            return RegressionTask(self.num_classes)
        return ClassificationTask("logits", self.num_classes)

    def _probe_values(self, logits):
        """Probe outputs in the task's terms, from their logits (values for regression), float64."""
        if self._task.name == "regression":
            return np.asarray(logits, np.float64)
        task = self._probe_task()
        assert isinstance(task, (ClassificationTask, MultiLabelTask))  # the regression probe returned above
        return task.probabilities(logits)

    def _output_values(self, out, xp=np):
        """The model's outputs in the task's terms: class or label probabilities, or regression values."""
        if self._task.name == "regression":
            return self._task.values(out, xp=xp)
        return self._task.probabilities(out, xp=xp)

    @property
    def probes(self) -> list:
        """The probe layers (:class:`LinearProbe`), one per block."""
        return list(self._probes)

    @property
    def trainable_weights(self):
        """Only the probes' kernels and biases: the wrapped model is never trained."""
        return [w for p in self._probes for w in p.trainable_weights]

    @property
    def non_trainable_weights(self):
        trainable = {id(w) for w in self.trainable_weights}
        return [w for w in self.weights if id(w) not in trainable]

    def call(self, inputs, training=False):
        """Returns ``{block_name: probe probabilities, ..., "output": model probabilities}``."""
        g = self._graph
        if len(g.input_keys) > 1:  # several inputs: a list in model input order, or a dict by input name
            given = [inputs[n] for n in g.input_names] if isinstance(inputs, dict) else list(inputs)
            feed = dict(zip(g.input_keys, given))
        else:
            feed = {g.input_keys[0]: inputs}
        values = g.replay(feed, list(self.block_keys) + list(g.output_keys))
        result = {name: probe(pool(values[k])) for name, probe, pool, k
                  in zip(self.block_names, self._probes, self._pools, self.block_keys)}
        result["output"] = self._output_values(values[g.output_keys[0]], xp=keras.ops)
        return result

    def fit(self, x, y=None, **kwargs):
        """Trains the probes: the same as :meth:`fit_probes`, under the Keras verb. Returns ``self``.

        ``HybridInterpreter`` is a ``keras.Model`` so that it saves to and
        loads from ``.keras`` files (``safe_mode=True``) and runs as one
        multi-output model (``interp(x)``, ``interp.predict(x)``: the
        probability of every probe and of the wrapped model). Its only
        trainable weights are the probes', so ``fit`` fits them, with the one
        probe trainer (no ``compile()`` needed: the objective is fixed, see
        :meth:`fit_probes`). The wrapped model is never trained.
        """
        return self.fit_probes(x, y, **kwargs)

    def compile(self, *args, **kwargs):
        raise TypeError(
            "HybridInterpreter needs no compile(): fit(x, y) trains the probes with a fixed objective "
            "(L2 logistic regression, see fit_probes), and the wrapped model stays frozen."
        )

    def train_on_batch(self, *args, **kwargs):
        raise TypeError(
            "HybridInterpreter is not trained batch by batch: fit(x, y) (or fit_probes) trains the "
            "probes on the whole stream, and the wrapped model stays frozen."
        )

    # ------------------------------------------------------------------
    # Data and taps
    # ------------------------------------------------------------------
    def _stream(self, x, y=None, *, batch_size=64, max_samples=None, steps=None, argname="x"):
        """``x`` (and ``y``) as a checked stream of batches for this model."""
        return model_stream(self._graph, x, y, batch_size=batch_size, max_samples=max_samples, steps=steps,
                            argname=argname)

    def _feature_taps(self):
        """One pass tap per block: its pooled output (the probes' input)."""
        return [_pass.Tap(k, self.pooling) for k in self.block_keys]

    def _output_tap(self):
        return _pass.Tap(self._graph.output_keys[0], "raw")

    def _probe_states(self):
        """Per block ``(mean, scale, kernel, bias)`` of the probe, float64."""
        return [p.state() for p in self._probes]

    def _probe_scores(self, *, controls=0, bootstrap=0, random_state=None) -> ProbeScores | TaskProbeScores:
        """A fresh reducer computing the layer table in a pass (see :meth:`evaluate_layers`).

        ``controls``: how many of the control probes fitted by :meth:`fit_probes` to evaluate;
        ``bootstrap``: resamples of the streaming bootstrap, seeded by ``random_state``.
        """
        self._require_fitted()
        controls = self._check_controls(controls, fitting=False)
        bootstrap = check_bootstrap(bootstrap)
        probes = list(zip(self._feature_taps(), *zip(*self._probe_states())))
        ctl = [c[:controls] for c in self.control_states_] if controls else None
        if not self._task.is_classification:
            return TaskProbeScores(probes, self._output_tap(), self._task, self._probe_task(), controls=ctl,
                                   bootstrap=bootstrap, random_state=random_state)
        return ProbeScores(probes, self._output_tap(), self._reader, self.num_classes, controls=ctl,
                           bootstrap=bootstrap, random_state=random_state)

    def _check_controls(self, controls, *, fitting):
        controls = check_int(controls, "controls", min_value=0,
                             what=", the number of control probes (trained on permuted labels) per block")
        fitted = len(self.control_states_[0]) if self.control_states_ else 0
        if not fitting and controls > fitted:
            raise ValueError(
                f"`controls`={controls} asks for {controls} control probes per block, but the probes were fitted "
                f"with {fitted}. Control probes are fitted with the probes, from the same cached features: call "
                f"interp.fit_probes(x_train, y_train, controls={controls}, random_state=...) first."
            )
        return controls

    def _check_drift(self, moments) -> None:
        """Warns when the inputs seen by ``moments`` (an InputMoments) drifted from the fit's.

        At any number of samples: the moments from
        :data:`~keras_hybrid_interp.core.drift.DRIFT_MIN_SAMPLES` samples on, the
        fitted range below (:func:`keras_hybrid_interp.core.drift.check_drift`).
        """
        _check_input_drift(self.input_statistics, moments)

    def _require_fitted(self):
        if not self.fitted:
            raise ValueError("The probes are not fitted yet: call interp.fit_probes(x, y) first.")

    # ------------------------------------------------------------------
    # Local interpretability
    # ------------------------------------------------------------------
    def fit_probes(self, x, y=None, *, C=1.0, max_iter=MAX_ITER, tol=TOL, warm_start=False, batch_size=64,
                   max_samples=None, steps=None, controls=0, random_state=None, verbose="auto",
                   positions_per_sample=None):
        """Fits every block probe on frozen, pooled block outputs.

        One forward pass of the wrapped model (in inference mode) computes
        the pooled features of all blocks; each probe is then fitted on
        those cached features by the one probe trainer
        (:mod:`~keras_hybrid_interp.core.trainer`): scikit-learn's
        ``StandardScaler`` followed by L2-regularised multinomial logistic
        regression (binary for a 2-class model), solved to its optimum by
        L-BFGS. The backbone is never re-run per probe.

        Parameters
        ----------
        x : array (N, H, W, C), tf.data.Dataset or keras.utils.PyDataset
        y : array (N,) of int or (N, K) one-hot, optional
            Labels. With ``y=None`` (and a dataset yielding ``x`` only) the
            probes learn the model's own predicted distribution (soft
            targets, as in the tuned lens), so unlabeled data works.
        C : float
            Inverse L2 penalty, as scikit-learn's ``LogisticRegression(C=...)``
            (``np.inf``: none).
        max_iter, tol : int, float
            L-BFGS iteration cap and gradient tolerance. A probe that does not
            converge is reported (warning and ``convergence_``).
        warm_start : bool
            Start from the current probes (saves iterations; the optimum is the same).
        batch_size : int
            Inference batch size of the backbone pass (arrays; datasets keep theirs).
        max_samples, steps : int, optional
            Use the first samples, or the first batches, only. One of them is
            required for a dataset that repeats forever.
        controls : int
            Also fit this many *control probes* per block (Hewitt and Liang,
            2019): the same probe (same cached features, same standardization,
            same trainer and ``C``) trained on the same fitting samples with
            their targets (labels, or the model's distributions without
            labels) permuted across samples. No extra pass over the data: the
            controls are fitted from the features this fit caches anyway, then
            only their ``(kernel, bias)`` are kept (``control_states_``, not
            saved with the interpreter). :meth:`evaluate_layers` with
            ``controls=n`` reports their accuracy and the selectivity.
        random_state : int, numpy Generator or None
            Seeds the permutations: with ``rng = np.random.default_rng(random_state)``,
            control ``j`` is trained on ``targets[perm_j]`` where ``perm_j`` is
            the ``j``-th draw of ``rng.permutation(n_samples)``; every block
            shares the same permuted targets.
        verbose : "auto", 0, 1 or 2
            Progress of the backbone pass.
        positions_per_sample : int, optional
            Segmentation models only: the output positions drawn per sample
            (seeded by ``random_state`` and the sample's index) on which the
            per-position probes are fitted; memory grows as ``N x P x C``.
            None: :data:`~keras_hybrid_interp.local.segmentation.POSITIONS_PER_SAMPLE`
            (64). At least the map's size: every position. Segmentation
            controls move each sample's drawn targets, whole, to another
            sample (see :func:`~keras_hybrid_interp.local.segmentation.fit_probes`).

        Returns
        -------
        self
            What the fit found that limits the probes (missing classes, no
            convergence, too few samples) is warned about and kept in
            ``fit_health_``; :meth:`report` lists it in its health section.
        """
        with _health.collect() as caveats:
            n_before = len(caveats)
            self._fit_probes(x, y, C, max_iter, tol, warm_start, batch_size, max_samples, steps, verbose,
                             controls, random_state, positions_per_sample)
            self.fit_health_ = list(caveats[n_before:])
        return self

    def _fit_probes(self, x, y, C, max_iter, tol, warm_start, batch_size, max_samples, steps, verbose,
                    controls=0, random_state=None, positions_per_sample=None):
        if self._task.spatial:  # per-position probes (local/segmentation.py)
            per = _segmentation.POSITIONS_PER_SAMPLE if positions_per_sample is None else positions_per_sample
            return _segmentation.fit_probes(self, x, y, C=C, max_iter=max_iter, tol=tol, warm_start=warm_start,
                                            batch_size=batch_size, max_samples=max_samples, steps=steps,
                                            controls=controls, random_state=random_state, verbose=verbose,
                                            positions_per_sample=per)
        if positions_per_sample is not None:
            raise ValueError(
                "`positions_per_sample` applies to segmentation models only (per-position probes on a spatial "
                f"output map); this model's task is {self._task.name!r}. Leave it out (None); received "
                f"{positions_per_sample!r}."
            )
        C = check_C(C)
        check_solver(max_iter, tol)
        controls = self._check_controls(controls, fitting=True)
        verbose = _resolve_verbose(verbose)
        stream = self._stream(x, y, batch_size=batch_size, max_samples=max_samples, steps=steps)
        collects = [_pass.Collect(t, dtype=np.float32) for t in self._feature_taps()]
        outputs = _pass.Collect(self._output_tap())
        labels = _pass.Collect.first("y", None)
        moments = _pass.InputMoments()
        info = _pass.run(self._graph, stream, collects + [outputs, labels, moments], task=self._task,
                         verbose=verbose)
        self._check_finite(info)
        feats = [f.result() for f in collects]
        y_idx = labels.result()
        if info.n < 2:
            raise ValueError(f"Probes need at least 2 training samples; received {info.n}.")
        targets = y_idx if y_idx is not None else self._task.model_targets(outputs.result())
        self._check_targets(targets, labelled=y_idx is not None)
        rng = np.random.default_rng(random_state)
        perms = [rng.permutation(info.n) for _ in range(controls)]
        rows, control_states, control_not_conv = [], [], []
        ridge = self._task.name == "regression"
        for name, probe, f in zip(self.block_names, self._probes, feats):
            mean, scale = input_transform(f)
            z = (f.astype(np.float64) - mean) * scale
            init = None
            if warm_start and self.fitted:
                init = restandardize(*probe.state(), mean, scale)
            sol = fit_task_probe(self._task, z, targets, C=C, max_iter=max_iter, tol=tol, init=init)
            probe.set_state(mean, scale, sol.kernel, sol.bias)
            alpha = (sol.alpha,) if isinstance(sol, RidgeSolution) else ()  # the ridge probe's penalty
            rows.append((name, sol.n_iter, sol.converged, sol.loss) + alpha)
            block_controls = []
            for perm in perms:  # control tasks: the same probe on permuted targets
                ctl = fit_task_probe(self._task, z, targets[perm], C=C, max_iter=max_iter, tol=tol)
                block_controls.append((ctl.kernel, ctl.bias))
                if not ctl.converged and name not in control_not_conv:
                    control_not_conv.append(name)
            control_states.append(block_controls)
            if z.shape[0] < z.shape[1]:
                _health.warn(
                    "few_samples",
                    f"Block {name!r}: its probe has {z.shape[1]} features but only {z.shape[0]} training samples, "
                    "so it can fit them perfectly whatever they encode; its accuracy on new data is the only "
                    "fair measure. Use more samples, a stronger penalty (smaller `C`) or coarser pooling.",
                )
        not_conv = [r[0] for r in rows if not r[2]]
        if not_conv:
            _health.warn(
                "not_converged",
                f"The probes of blocks {not_conv} did not converge within max_iter={max_iter} L-BFGS iterations; "
                "their accuracy may be understated. Raise `max_iter`, or lower `C` (stronger penalty) if the "
                "classes are separable.",
            )
        if control_not_conv:
            _health.warn(
                "not_converged",
                f"Control probes (permuted labels) of blocks {control_not_conv} did not converge within "
                f"max_iter={max_iter} L-BFGS iterations; their accuracy, and so the selectivity, may be off. "
                "Raise `max_iter` or lower `C`.",
            )
        self.control_states_ = control_states if controls else []
        self.convergence_ = pd.DataFrame(rows, columns=["block", "n_iter", "converged", "loss"]
                                         + (["alpha"] if ridge else []))
        self.input_statistics = moments.statistics()
        self.fitted = True

    def _check_targets(self, targets, *, labelled):
        """Warns about classes (labels) the probes never see: missing classes, or labels of one value only."""
        source = "the labels" if labelled else "the model's predictions"
        if self._task.is_classification:
            cls = targets if labelled else targets.argmax(axis=1)
            _health.check_classes(np.bincount(cls, minlength=self.num_classes), self.class_names, source)
        elif self._task.name == "multilabel":
            t = targets if labelled else self._task.decide(targets)
            pos = np.asarray(t).sum(axis=0)
            one_valued = [self.class_names[k] for k in np.flatnonzero((pos == 0) | (pos == len(t)))]
            if one_valued:
                _health.warn(
                    "missing_classes",
                    f"Labels {_health.listing(one_valued)} are not both present and absent in {source}: "
                    "their probes learn a constant, and their AUROC and average precision are "
                    "undefined (left out of the macro averages). Use data where every label occurs and is absent.",
                )

    def _check_finite(self, info):
        bad = [self._graph.tensors[k].name for k in sorted(info.nonfinite)]
        if bad:
            raise ValueError(
                f"{bad} produced NaN or infinite values on finite inputs; the model is numerically unstable "
                "there, and probes on it would be meaningless."
            )

    @_health.collecting
    def layer_predictions(self, x, *, batch_size=64, max_samples=None,
                          steps=None) -> LayerPredictions | _segmentation.SegmentationPredictions:
        """Per-block probe probabilities for every sample of ``x``.

        Holds (L, N, K) probabilities in memory: use ``max_samples`` or
        :meth:`evaluate_layers` for large data.
        """
        if self._task.spatial:  # every block's mask (local/segmentation.py)
            return _segmentation.layer_predictions(self, x, batch_size=batch_size, max_samples=max_samples,
                                                   steps=steps)
        self._require_fitted()
        stream = self._stream(x, batch_size=batch_size, max_samples=max_samples, steps=steps)
        feats = [_pass.Collect(t) for t in self._feature_taps()]
        outputs = _pass.Collect(self._output_tap())
        moments = _pass.InputMoments()
        info = _pass.run(self._graph, stream, feats + [outputs, moments])
        self._check_finite(info)
        self._check_drift(moments)
        block_probs = np.stack([
            self._probe_values(probe_logits(f.result(), *state))
            for f, state in zip(feats, self._probe_states())
        ])
        return LayerPredictions(
            blocks=list(self.block_names),
            depths=np.array([b.depth for b in self.blocks]),
            probabilities=block_probs,
            model_probabilities=self._output_values(outputs.result()),
            class_names=list(self.class_names),
            task=self._task.name,
        )

    @_health.collecting
    def evaluate_layers(self, x, y=None, *, batch_size=64, max_samples=None, steps=None, controls=0, bootstrap=0,
                        confidence=0.95, random_state=None) -> LayerTable:
        """Layer-by-layer table: one row per block, then one for the model output.

        Per block: ``accuracy`` (probe top class equals the label; NaN without
        labels), ``loss`` (mean cross-entropy against the labels, or against
        the model's own distribution without labels), ``agreement`` (probe
        top class equals the model's top class) and ``chance`` (frequency of
        the most common label, or of the most common model prediction without
        labels). Statistics stream in batches and accumulate in float64.

        Parameters
        ----------
        x, y : evaluation data (arrays, tf.data or PyDataset) and optional labels.
        batch_size, max_samples, steps : as in :meth:`fit_probes`.
        controls : int
            Report the first ``controls`` control probes fitted by
            ``fit_probes(..., controls=n)`` (n >= ``controls``; a ValueError
            otherwise): their mean ``control_accuracy``, evaluated on these
            samples against these labels exactly as the probe is, and the
            ``selectivity``, probe accuracy minus control accuracy. Needs labels.
            Segmentation: ``control_mean_iou`` and ``selectivity`` (mean IoU
            minus control mean IoU), and the bootstrap's intervals cover the
            mean IoU, Dice and pixel accuracy too, from per-sample confusion
            sums (see :func:`~keras_hybrid_interp.local.segmentation.evaluate_layers`).
        bootstrap : int
            Resamples (e.g. 1000) of a percentile bootstrap over the evaluation
            samples, for intervals on accuracy, loss, agreement, control
            accuracy and selectivity (the latter from each sample's probe
            correctness minus its mean control correctness). It streams (a
            Poisson bootstrap, :mod:`~keras_hybrid_interp.core.bootstrap`):
            memory is ``bootstrap x 5 (L + 1)`` float64 sums, not the samples.
            The intervals are over the evaluation samples with the probes held
            fixed: they say how much the numbers would move on other data from
            the same distribution, not how much refitting the probes would.
        confidence : float
            Level of the intervals.
        random_state : int, numpy Generator or None
            Seeds the bootstrap: the same seed and samples in the same order
            give the same intervals, whatever ``batch_size``.

        Returns
        -------
        LayerTable
            ``.to_frame()`` is the tidy table, ``.plot()`` draws it.
        """
        if self._task.spatial:  # mean IoU, Dice, pixel accuracy (local/segmentation.py)
            return _segmentation.evaluate_layers(self, x, y, batch_size=batch_size, max_samples=max_samples,
                                                 steps=steps, controls=controls, bootstrap=bootstrap,
                                                 confidence=confidence, random_state=random_state)
        self._require_fitted()
        confidence = check_confidence(confidence)
        stream = self._stream(x, y, batch_size=batch_size, max_samples=max_samples, steps=steps)
        scores = self._probe_scores(controls=controls, bootstrap=bootstrap, random_state=random_state)
        moments = _pass.InputMoments()
        info = _pass.run(self._graph, stream, [scores, moments], task=self._task)
        if scores.n_controls and not info.has_labels:
            raise ValueError(
                "`controls` needs labels: control accuracy is measured against the evaluation labels. Pass `y` "
                "(or a dataset yielding (x, y)), or controls=0."
            )
        self._check_drift(moments)
        return self._layer_table(scores, confidence=confidence)

    def _layer_table(self, scores: ProbeScores | TaskProbeScores, *, confidence=0.95) -> LayerTable:
        """The layer table from a :class:`ProbeScores` reducer that has seen a pass."""
        if isinstance(scores, TaskProbeScores):
            return self._task_layer_table(scores, confidence)
        n, L = scores.n, len(self.block_names)
        labelled = bool(scores.labelled)
        counts = scores.counts if labelled else scores.model_counts
        _health.check_classes(counts, self.class_names, "the labels" if labelled else "the model's predictions")
        names = list(self.block_names) + ["output"]
        depths = [b.depth for b in self.blocks] + [self._graph.tensors[self._graph.output_keys[0]].producer]
        accuracy = scores.correct / n if labelled else np.full(L + 1, np.nan)
        control_accuracies = selectivity = None
        if scores.n_controls and labelled:
            control_accuracies = np.concatenate(
                [scores.control_correct / n, np.full((scores.n_controls, 1), np.nan)], axis=1)
            selectivity = accuracy - control_accuracies.mean(axis=0)
        lower, upper = {}, {}
        if scores.bootstrap is not None:
            low, high = (a.reshape(len(INTERVAL_METRICS), L + 1) for a in scores.bootstrap.interval(confidence))
            for j, metric in enumerate(INTERVAL_METRICS):
                if metric == "accuracy" and not labelled:
                    continue
                if metric in ("control_accuracy", "selectivity"):
                    if control_accuracies is None:
                        continue
                    low[j, -1] = high[j, -1] = np.nan  # the model has no control
                lower[metric], upper[metric] = low[j], high[j]
        return LayerTable(
            blocks=tuple(names),
            depths=np.asarray(depths),
            filters=tuple(None if b.filters is None else int(b.filters) for b in self.blocks) + (None,),
            accuracy=accuracy,
            loss=scores.loss / n,
            agreement=scores.agree / n,
            chance=float(counts.max() / n),
            n=int(n),
            labelled=labelled,
            control_accuracies=control_accuracies,
            selectivity=selectivity,
            lower=lower,
            upper=upper,
            confidence=confidence if lower else None,
            n_resamples=scores.bootstrap.n_resamples if scores.bootstrap is not None else 0,
        )

    def _task_layer_table(self, scores: TaskProbeScores, confidence) -> LayerTable:
        """The layer table of a multi-label or regression model (:mod:`~keras_hybrid_interp.core.metrics`)."""
        n, L = scores.n, len(self.block_names)
        labelled = bool(scores.labelled)
        metrics = scores.sums.result()
        one_valued = scores.sums.missing_labels()
        if one_valued:
            source = "the labels" if labelled else "the model's predictions"
            _health.warn(
                "missing_classes",
                f"Labels {_health.listing([self.class_names[k] for k in one_valued])} are not both present and "
                f"absent in {source} of this data: their AUROC and average precision are undefined and left out "
                "of the macro averages.",
            )
        headline = self._task.metric_names[0]
        if scores.control_sums is not None and labelled:
            ctl = scores.control_sums.result()[headline].reshape(L, scores.n_controls)
            control = np.concatenate([ctl.mean(axis=1), [np.nan]])
            metrics[f"control_{headline}"] = control
            metrics["selectivity"] = metrics[headline] - control
        lower, upper = scores.sums.intervals(confidence) if scores.bootstrap is not None else ({}, {})
        nan = np.full(L + 1, np.nan)
        ordered = {m: metrics[m] for m in self._task.metric_names if m in metrics}
        ordered.update({m: v for m, v in metrics.items() if m not in ordered})
        return LayerTable(
            blocks=tuple(self.block_names) + ("output",),
            depths=np.asarray([b.depth for b in self.blocks]
                              + [self._graph.tensors[self._graph.output_keys[0]].producer]),
            filters=tuple(None if b.filters is None else int(b.filters) for b in self.blocks) + (None,),
            accuracy=nan,
            loss=metrics["loss"],
            agreement=metrics.get("agreement", nan.copy()),
            chance=float("nan"),
            n=int(n),
            labelled=labelled,
            lower=lower,
            upper=upper,
            confidence=confidence if lower else None,
            n_resamples=scores.bootstrap.n_resamples if scores.bootstrap is not None else 0,
            task=self._task.name,
            metrics=ordered,
            headline=headline,
        )

    def _explanation_taps(self, limit):
        """Pass taps of :meth:`explain`: every block's raw map, for the first ``limit`` samples."""
        return ([_pass.Tap(k, "raw", limit) for k in self.block_keys]
                + [_pass.Tap(self._graph.output_keys[0], "raw", limit)])

    @_health.collecting
    def explain(self, x, y=None) -> LocalExplanation | _segmentation.SegmentationExplanation:
        """Local explanation of one input ``x``: one sample (T, C), (H, W, C) or (D, H, W, C), or a batch of one.

        Gives per-block probe probabilities, the decision depth and the
        per-block class-evidence maps (see :class:`LocalExplanation`). ``y``,
        the sample's true label (a class index or one-hot row; a 0/1 label
        vector; target values), is shown beside the model's prediction (the
        explanation's :attr:`~LocalExplanation.target`). Segmentation models
        take no ``y`` here.
        """
        if self._task.spatial:  # every block's mask (local/segmentation.py)
            if y is not None:
                raise ValueError("`y` applies to the explanation of a classifier, multi-label or regression model; "
                                 "this segmentation model's explanation compares each block's mask with the "
                                 "model's. Call explain(x) without `y`.")
            return _segmentation.explain(self, x)
        self._require_fitted()
        target = None if y is None else self._one_target(y)
        if len(self._graph.input_keys) > 1:
            return self._explanations(self._one_sample(x), targets=target)[0]
        x = np.asarray(keras.ops.convert_to_numpy(x) if not isinstance(x, np.ndarray) else x)
        shape = self._graph.tensors[self._graph.input_keys[0]].shape[1:]
        if x.ndim == len(shape):
            x = x[None]
        if x.ndim != len(shape) + 1 or x.shape[0] != 1:
            raise ValueError(
                f"`x` must be one input of shape {tuple(shape)} or (1, {', '.join(map(str, shape))}); "
                f"received shape {x.shape}. For several inputs use layer_predictions()."
            )
        return self._explanations(x, targets=target)[0]

    def _one_target(self, y) -> np.ndarray:
        """The true label of one sample as a batch of one of the task's targets (checked, named ``y``)."""
        a = np.asarray(y if isinstance(y, np.ndarray) or np.isscalar(y) else keras.ops.convert_to_numpy(y))
        width = int(getattr(self._task, "num_classes", 0) or self._task.num_outputs)  # a one-hot or target row
        one_row = a.ndim == 0 or (a.ndim == 1 and width > 1 and a.shape[0] == width)
        targets = np.asarray(self._task.targets(a[None] if one_row else a, argname="y"))
        if targets.shape[0] != 1:
            raise ValueError(f"`y` must be the label of the one input `x`; received {targets.shape[0]} labels "
                             f"(shape {a.shape}).")
        return targets

    def _one_sample(self, x) -> list:
        """One sample of a model with several inputs (a list or dict; each with or without the batch axis of 1)."""
        g = self._graph
        names = g.input_names
        if isinstance(x, dict):
            missing = [n for n in names if n not in x]
            if missing:
                raise ValueError(f"`x` is a dict without the model input(s) {missing}: the model takes "
                                 f"{len(names)} inputs {names}; received the keys {list(x)}.")
            items, labels = [x[n] for n in names], [f"x[{n!r}]" for n in names]
        elif isinstance(x, (list, tuple)) and len(x) == len(names):
            items, labels = list(x), [f"x[{i}] (input {n!r})" for i, n in enumerate(names)]
        else:
            raise TypeError(f"`x` must be one sample of each of the model's {len(names)} inputs {names}: a list in "
                            f"that order or a dict keyed by input name; received {type(x).__name__}"
                            f"{f' of {len(x)}' if isinstance(x, (list, tuple)) else ''}.")
        out = []
        for a, label, k in zip(items, labels, g.input_keys):
            a = np.asarray(a if isinstance(a, np.ndarray) else keras.ops.convert_to_numpy(a))
            shape = g.tensors[k].shape[1:]
            if a.ndim == len(shape):
                a = a[None]
            if a.ndim != len(shape) + 1 or a.shape[0] != 1:
                raise ValueError(f"`{label}` must be one input of shape {tuple(shape)} or (1, "
                                 f"{', '.join(map(str, shape))}); received shape {a.shape}.")
            out.append(a)
        return out

    def _explanations(self, x, maps=None, targets=None) -> list:
        """Local explanations of the inputs ``x`` (n, ...), from their raw block maps if given.

        ``maps`` is ``[block maps (n, spatial..., C) for each block] + [model outputs (n, units)]``
        as collected by :meth:`_explanation_taps` in a pass; None runs a pass over ``x``. ``targets``: the
        inputs' true labels as the task's targets (n, ...), kept in each explanation, or None.
        """
        n = x_rows(x)
        if maps is None:
            collects = [_pass.Collect(t) for t in self._explanation_taps(n)]
            moments = _pass.InputMoments()
            info = _pass.run(self._graph, self._stream(x), collects + [moments])
            self._check_finite(info)
            self._check_drift(moments)
            maps = [c.result() for c in collects]
        model_probs = self._output_values(maps[-1])
        states = self._probe_states()
        out = []
        for j in range(n):
            image, inputs = self._sample_images(x, j)
            out.append(self._explain_one(image, [m[j].astype(np.float64) for m in maps[:-1]], model_probs[j], states,
                                         inputs, None if targets is None else targets[j]))
        return out

    def _sample_images(self, x, j):
        """``(image, extra LocalExplanation fields)`` of sample ``j``: several inputs show each block's image input."""
        if not isinstance(x, list):
            return x[j], None
        g = self._graph
        images = {n: x[i][j] for i, (n, k) in enumerate(zip(g.input_names, g.input_keys))
                  if _graph.is_feature_map(g.tensors[k].shape)}  # tabular inputs are never drawn
        block_images = tuple(b.image_input for b in self.blocks)
        first = next((b for b in block_images if b is not None), next(iter(images), None))
        return (None if first is None else images.get(first)), {"images": images, "block_images": block_images}

    def _explain_one(self, image, maps, model_p, states, inputs=None, target=None):
        block_probs, evidence = [], []
        for (mean, scale, kernel, bias), pool, a in zip(states, self._pools, maps):
            spatial, c = a.shape[:-1], a.shape[-1]
            size = int(np.prod(spatial))
            W = kernel * scale[:, None]
            b = bias - mean @ W
            pooled = np.asarray(keras.ops.convert_to_numpy(pool(a[None].astype(np.float32))), np.float64)[0]
            logits = pooled @ W + b
            block_probs.append(self._probe_values(logits[None])[0])
            flat = a.reshape(size, c)
            if self.pooling in ("avg", "max"):
                ev = flat @ W + b
            else:
                pw = pool.position_weights(*spatial)  # (positions, cells)
                cells = pw.shape[1]
                per_cell = np.einsum("pc,jck->pjk", flat, W.reshape(cells, c, -1))
                ev = size * np.einsum("pj,pjk->pk", pw, per_cell) + b
            evidence.append(ev.reshape(tuple(spatial) + (-1,)))
        probs = np.array(block_probs)
        decision = None
        if self._task.name != "regression":  # a value has no decision to reach
            if self._task.name == "multilabel":
                pred, model_dec = self._task.decide(probs), self._task.decide(model_p)
            else:
                pred, model_dec = probs.argmax(axis=1), int(model_p.argmax())
            for i in range(len(pred) - 1, -1, -1):
                if np.any(pred[i] != model_dec):
                    break
                decision = i
        return LocalExplanation(
            image=image,
            blocks=list(self.block_names),
            depths=np.array([b.depth for b in self.blocks]),
            probabilities=probs,
            model_probabilities=model_p,
            decision_index=decision,
            evidence_maps=evidence,
            class_names=list(self.class_names),
            pooling=self.pooling,
            task=self._task.name,
            target=None if target is None else np.asarray(target),
            **(inputs or {}),
        )

    @_health.collecting
    def concepts(self, concepts, x, y=None, *, random=None, n_random=20, random_state=None, **kwargs):
        """TCAV with significance: at what block each concept forms, and whether each class's output uses it.

        ``concepts`` maps names to examples (arrays, ``tf.data`` or PyDataset
        of inputs, at least 10 each); ``x`` (and ``y``) are the inputs whose
        class sensitivity is tested; ``random`` is the pool the ``n_random``
        random sets are drawn from (None: ``x``). Needs no fitted probes.
        Returns a :class:`~keras_hybrid_interp.local.concepts.ConceptResult`;
        every option (``blocks``, ``classes``, ``features``, ``method``,
        ``test``, ``correction``, ``alpha``, ``relative``, ``bootstrap``,
        ...) and every definition is in :func:`keras_hybrid_interp.local.concepts.concepts`
        and its module.
        """
        from . import concepts as _concepts

        return _concepts.concepts(self, concepts, x, y, random=random, n_random=n_random,
                                  random_state=random_state, **kwargs)

    def probe_model(self, *, block) -> keras.Model:
        """A standalone ``keras.Model`` from image to the probabilities of ``block``'s probe.

        It shares the wrapped model's layers (no copy): use it for inference,
        not training.
        """
        if is_int(block) and 0 <= block < len(self.block_names):
            i = int(block)
        elif block in self.block_names:
            i = self.block_names.index(block)
        else:
            raise ValueError(f"`block` must be one of the interpreter's blocks {self.block_names} (or its index); "
                             f"received {block!r}.")
        k = self.block_keys[i]
        probe, pool = self._probes[i], self._pools[i]
        return self._graph.build_side_model(lambda symbolic: [probe(pool(symbolic(k)))], name=f"probe_model_{i}")

    # ------------------------------------------------------------------
    # Serialization (.keras, safe_mode=True)
    # ------------------------------------------------------------------
    def get_config(self):
        return {
            "name": self.name,
            "model": keras.saving.serialize_keras_object(self.wrapped_model),
            "blocks": list(self.block_names),
            "pooling": self.pooling,
            "input_shape": self._input_shape_arg,
            "output": self._output_arg if self._output_arg not in ("auto",) else self._config_kind(),
            "task": self._task.name,
            "class_names": list(self.class_names),
            "fitted": bool(self.fitted),
            "input_statistics": None if self.input_statistics is None else {
                k: [float(v) for v in np.ravel(a)] for k, a in self.input_statistics.items()},
        }

    def _config_kind(self):
        """The output kind a saved single-label classifier is reloaded with ("auto" for the other tasks)."""
        return self.output_kind if self._task.is_classification and self._task.kind != "logits" else "auto"

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        model = keras.saving.deserialize_keras_object(config.pop("model"))
        fitted = config.pop("fitted", False)
        obj = cls(model, **config)
        obj.fitted = fitted
        return obj

    @classmethod
    def load(cls, filepath, *, safe_mode=True) -> HybridInterpreter:
        """Loads an interpreter written by :meth:`save` (``.keras``, Keras safe mode).

        Equivalent to ``keras.models.load_model(filepath, safe_mode=True)``, with
        clear errors for a missing, truncated or tampered file, a file that
        needs unsafe deserialization (a Python lambda: refused unless
        ``safe_mode=False``, which lets the file run code), and a file that
        holds a plain model instead of an interpreter.
        """
        from ..core.saving import load_keras_file

        obj = load_keras_file(filepath, safe_mode=safe_mode, argname="filepath")
        if not isinstance(obj, cls):
            raise TypeError(
                f"`filepath`: {filepath} holds a {type(obj).__name__} {getattr(obj, 'name', '')!r}, not a "
                "HybridInterpreter (expected a file written by interp.save()). To interpret that model: "
                "HybridInterpreter(keras.models.load_model(filepath))."
            )
        return obj

    def __repr__(self):
        return (
            f"HybridInterpreter(model={self.wrapped_model.name!r}, blocks={len(self.blocks)}, "
            f"classes={self.num_classes}, pooling={self.pooling!r}, fitted={self.fitted})"
        )
