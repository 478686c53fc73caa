"""``HybridInterpreter``: the one-line wrap and its local interpretability."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

import keras

from . import _graph
from ._data import as_stream, to_class_indices
from ._engine import resolve_entropy
from .probes import FeaturePooling, LinearProbe, OutputProbabilities
from .results import LayerPredictions, LocalExplanation
from ._distribute import active_strategy, check_in_scope, fit_distributed, predict_on_batch

__all__ = ["HybridInterpreter", "BlockList"]

_EPS = 1e-7  # probabilities are clipped to [eps, 1] in log-losses, as Keras does

#: Probes on at most this many pooled features whiten their input (a D x D
#: matrix); wider probes standardize each feature instead.
MAX_WHITEN_DIM = 2048


class BlockList(Sequence):
    """Read-only sequence of :class:`~keras_hybrid_interp.Block` with ``.to_frame()``."""

    def __init__(self, blocks):
        self._blocks = tuple(blocks)

    def __getitem__(self, i):
        return self._blocks[i]

    def __len__(self):
        return len(self._blocks)

    def __repr__(self):
        return "BlockList([\n" + "".join(f"    {b!r},\n" for b in self._blocks) + "])"

    @property
    def names(self) -> list[str]:
        return [b.name for b in self]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({
            "block": [b.name for b in self],
            "output_shape": [b.output_shape for b in self],
            "filters": [b.filters for b in self],
            "depth": [b.depth for b in self],
        })


def _resolve_verbose(verbose):
    if verbose == "auto":
        return 1
    if verbose not in (0, 1, 2):
        raise ValueError(f"`verbose` must be 'auto', 0, 1 or 2; received {verbose!r}.")
    return verbose


def _check_pooling(pooling):
    if pooling in ("avg", "max"):
        return pooling
    if isinstance(pooling, (int, np.integer)) and not isinstance(pooling, bool) and pooling >= 1:
        return int(pooling)
    raise ValueError(
        "`pooling` must be 'avg' (global average, the default), 'max' (global max) or a "
        f"positive int k (adaptive average pooling to a k x k grid); received {pooling!r}."
    )


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
        A Functional or Sequential classifier (softmax multi-class or sigmoid
        binary output), possibly nesting a backbone such as a
        ``keras.applications`` model.
    blocks : "auto", str, int, Layer or list of them
        Block ends. ``"auto"`` finds them from the graph (see README, "Block
        discovery"). Otherwise layer names (``"resnet50/conv3_block1_out"``
        for nested layers), indices into ``model.layers`` or layer objects.
    pooling : "avg", "max" or int
        How a (H, W, C) block output becomes the probe input: global average
        (default), global max, or adaptive average pooling to k x k.
    input_shape : tuple, optional
        Shape of one input (no batch axis); only needed for a Sequential
        model that was never built.
    output : "auto", "softmax", "sigmoid" or "logits"
        What the model outputs. "auto" reads the activation of the output
        layer and refuses non-classifiers.
    class_names : list of str, optional
        Names of the K classes, used in tables and plots.

    Examples
    --------
    >>> interp = HybridInterpreter(model)
    >>> interp.fit_probes(x_train, y_train, verbose=0)
    >>> interp.evaluate_layers(x_test, y_test)        # one row per block
    >>> interp.explain(x_test[0]).decision_block      # where the model decides
    """

    def __init__(
        self,
        model,
        blocks="auto",
        *,
        pooling="avg",
        input_shape=None,
        output="auto",
        class_names=None,
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
        if len(graph.output_keys) != 1:
            raise ValueError(
                f"HybridInterpreter needs a model with one classification output; model "
                f"{model.name!r} has {len(graph.output_keys)} outputs. Wrap the output you want: "
                "keras.Model(model.inputs, model.outputs[i])."
            )
        if len(graph.input_keys) != 1:
            raise ValueError(
                f"HybridInterpreter needs a single-input image model; model {model.name!r} has "
                f"{len(graph.input_keys)} inputs."
            )
        self.output_kind = self._output_kind(model, graph, output)
        self.pooling = _check_pooling(pooling)
        keys, names, infos = _graph.select_blocks(graph, blocks)
        if "output" in names:
            raise ValueError("A block named 'output' would clash with the model output key; rename that layer.")
        out_shape = graph.tensors[graph.output_keys[0]].shape
        self.num_classes = 2 if self.output_kind == "sigmoid" else int(out_shape[-1])
        if class_names is None:
            class_names = [str(i) for i in range(self.num_classes)]
        class_names = [str(c) for c in class_names]
        if len(class_names) != self.num_classes:
            raise ValueError(
                f"`class_names` has {len(class_names)} names but the model has {self.num_classes} classes."
            )
        if isinstance(self.pooling, int):
            small = [n for n, b in zip(names, infos) if min(b.output_shape[1:3]) < self.pooling]
            if small:
                raise ValueError(
                    f"`pooling`={self.pooling} needs feature maps of at least {self.pooling}x"
                    f"{self.pooling}; blocks {small} are smaller. Use pooling='avg' or a smaller k."
                )

        self.wrapped_model = model
        self.class_names = class_names
        self._input_shape_arg = None if input_shape is None else tuple(input_shape)
        self._graph = graph
        self.block_keys = keys
        self.blocks = BlockList(infos)
        self.block_names = names
        self.fitted = False

        # Pooled features of every block and the model's probabilities, one pass.
        # Pooling, probes and probabilities compute in float32 whatever the global
        # dtype policy: under mixed_float16 the block outputs (float16) are cast
        # up exactly, and the statistics never run in float16.
        self._pools = [FeaturePooling(self.pooling, name=f"pool_{i}", dtype="float32") for i in range(len(keys))]
        self._to_probs = OutputProbabilities(self.output_kind, name="output_probabilities", dtype="float32")
        pooled = [p(graph.symbolic(k)) for p, k in zip(self._pools, keys)]
        probs = self._to_probs(graph.symbolic(graph.output_keys[0]))
        self._features = keras.Model(graph.symbolic_inputs[0], pooled + [probs], name="block_features")
        self._probes = []
        for i, f in enumerate(pooled):
            dim = int(f.shape[-1])
            probe = LinearProbe(self.num_classes, whiten=dim <= MAX_WHITEN_DIM, name=f"probe_{i}", dtype="float32")
            probe.build((None, dim))
            self._probes.append(probe)
        # Raw block outputs, for the evidence maps of explain().
        self._maps_model = keras.Model(
            graph.symbolic_inputs[0], [graph.symbolic(k) for k in keys] + [probs], name="block_maps"
        )
        self.built = True  # every part is built above; saving needs no build() call

    # ------------------------------------------------------------------
    @staticmethod
    def _output_kind(model, graph, output):
        if output not in ("auto", "softmax", "sigmoid", "logits"):
            raise ValueError(
                f"`output` must be 'auto', 'softmax', 'sigmoid' or 'logits'; received {output!r}."
            )
        shape = graph.tensors[graph.output_keys[0]].shape
        if len(shape) != 2:
            raise ValueError(
                f"HybridInterpreter needs a classifier with output shape (batch, classes); model "
                f"{model.name!r} outputs shape {shape}."
            )
        if output == "auto":
            output = _graph.classifier_activation(graph)
            if output is None:
                raise ValueError(
                    f"Model {model.name!r} does not end in a softmax or sigmoid, so it does not look "
                    "like a classifier (keras-hybrid-interp supports classification models: softmax "
                    "multi-class or sigmoid binary). If it outputs class logits, pass output='logits'; "
                    "regression models are not supported."
                )
        if output == "sigmoid" and shape[-1] != 1:
            raise ValueError(
                f"A sigmoid output must have one unit (binary classification); model {model.name!r} "
                f"outputs {shape[-1]} units (multi-label outputs are not supported)."
            )
        if output in ("softmax", "logits") and shape[-1] is not None and shape[-1] < 2:
            raise ValueError(f"A {output} classifier needs at least 2 classes; the output has {shape[-1]}.")
        return output

    @property
    def graph(self):
        """The flattened model graph (:class:`~keras_hybrid_interp._graph.ModelGraph`)."""
        return self._graph

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
        outs = self._features(inputs, training=False)
        result = {name: probe(f) for name, probe, f in zip(self.block_names, self._probes, outs[:-1])}
        result["output"] = outs[-1]
        return result

    def fit(self, *args, **kwargs):
        raise TypeError(
            "HybridInterpreter is not trained with fit(): the wrapped model stays frozen. "
            "Use interp.fit_probes(x, y) to train the probes."
        )

    # ------------------------------------------------------------------
    # Data
    # ------------------------------------------------------------------
    def _stream(self, x, y=None, batch_size=64, max_samples=None, argname="x"):
        shape = self._graph.tensors[self._graph.input_keys[0]].shape[1:]
        return as_stream(x, y, batch_size=batch_size, input_shape=shape, max_samples=max_samples, argname=argname)

    def _extract(self, stream, verbose=0, need_labels=False):
        """One forward pass over ``stream``: pooled features, model probs, labels."""
        feats = [[] for _ in self._probes]
        probs, labels = [], []
        bar = keras.utils.Progbar(None, verbose=verbose, unit_name="batch") if verbose else None
        has_y = None
        for b, (xb, yb) in enumerate(stream):
            if has_y is None:
                has_y = yb is not None
            elif has_y != (yb is not None):
                raise ValueError(f"`{stream.argname}` yields labels for some batches but not others.")
            outs = predict_on_batch(self._features, xb)
            for i, f in enumerate(outs[:-1]):
                feats[i].append(np.asarray(f, dtype=np.float32))
            probs.append(np.asarray(outs[-1], dtype=np.float32))
            if yb is not None:
                labels.append(to_class_indices(yb, self.num_classes, argname=stream.label_argname))
            if bar is not None:
                bar.update(b + 1)
        if need_labels and not has_y:
            raise ValueError(
                f"Labels are needed, but `{stream.argname}` has none: pass `y=` with arrays, or a "
                "dataset yielding (x, y) pairs."
            )
        feats = [np.concatenate(f) for f in feats]
        probs = np.concatenate(probs)
        for name, f in zip(self.block_names, feats):
            if not np.all(np.isfinite(f)):
                raise ValueError(
                    f"Block {name!r} produced NaN or infinite activations on finite inputs; the "
                    "model is numerically unstable there, and probes on it would be meaningless."
                )
        if not np.all(np.isfinite(probs)):
            raise ValueError("The model produced NaN or infinite outputs on finite inputs.")
        y = np.concatenate(labels) if labels else None
        return feats, probs, y

    def _targets(self, probs, y):
        if y is None:
            return probs.astype(np.float32)
        return np.eye(self.num_classes, dtype=np.float32)[y]

    # ------------------------------------------------------------------
    # Local interpretability
    # ------------------------------------------------------------------
    def fit_probes(
        self,
        x,
        y=None,
        *,
        validation_data=None,
        validation_split=0.0,
        epochs=50,
        batch_size=256,
        learning_rate=0.05,
        warm_start=False,
        random_state=None,
        max_samples=None,
        verbose="auto",
    ):
        """Trains every block probe on frozen, pooled block outputs.

        One forward pass of the wrapped model (in inference mode) computes
        the pooled features of all blocks; the probes then train on those
        cached features, so the backbone is never re-run per probe or epoch.

        Parameters
        ----------
        x : array (N, H, W, C), tf.data.Dataset or keras.utils.PyDataset
        y : array (N,) of int or (N, K) one-hot, optional
            Labels. With ``y=None`` (and a dataset yielding ``x`` only) the
            probes learn the model's own predicted distribution (soft
            targets, as in the tuned lens), so unlabeled data works.
        validation_data : tuple (x_val, y_val), array or dataset, optional
        validation_split : float
            Fraction of the (last) samples held out for validation.
        epochs, batch_size, learning_rate : training settings (Adam).
        warm_start : bool
            Continue from the current probe weights and standardization
            instead of starting from zero.
        random_state : None, int, numpy Generator or SeedSequence
            Seeds the mini-batch order (a private generator: the global
            random streams are untouched). None draws fresh entropy.
        max_samples : int, optional
            Use at most this many (first) samples.
        verbose : "auto", 0, 1 or 2

        Returns
        -------
        keras.callbacks.History
            Per-probe training (and validation) loss per epoch.
        """
        verbose = _resolve_verbose(verbose)
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
            raise ValueError(f"`epochs` must be a positive int; received {epochs!r}.")
        if not (isinstance(validation_split, (int, float)) and 0.0 <= validation_split < 1.0):
            raise ValueError(f"`validation_split` must be a float in [0, 1); received {validation_split!r}.")
        if validation_data is not None and validation_split:
            raise ValueError("Pass either `validation_data` or `validation_split`, not both.")
        if isinstance(validation_data, tuple) and len(validation_data) != 2:
            raise ValueError(
                "`validation_data` must be a tuple (x_val, y_val), an array x_val or a dataset; received a "
                f"tuple of {len(validation_data)} items (sample weights are not supported)."
            )
        if not (callable(learning_rate) or isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule)):
            if (isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float, np.integer, np.floating))
                    or not np.isfinite(learning_rate) or learning_rate <= 0):
                raise ValueError(
                    "`learning_rate` must be a positive, finite float (or a keras LearningRateSchedule); "
                    f"received {learning_rate!r}."
                )
        entropy = resolve_entropy(random_state)
        stream = self._stream(x, y, batch_size=batch_size, max_samples=max_samples)
        feats, probs, labels = self._extract(stream, verbose=verbose)
        targets = self._targets(probs, labels)
        n = len(targets)
        val = None
        if validation_split:
            n_val = int(round(n * validation_split))
            if n_val < 1 or n_val >= n:
                raise ValueError(
                    f"`validation_split`={validation_split} leaves {n - n_val} training and {n_val} "
                    f"validation samples out of {n}; both need at least one."
                )
            val = ([f[n - n_val:] for f in feats], targets[n - n_val:])
            feats, targets = [f[: n - n_val] for f in feats], targets[: n - n_val]
        elif validation_data is not None:
            if isinstance(validation_data, tuple) and len(validation_data) == 2:
                vstream = self._stream(validation_data[0], validation_data[1], batch_size=batch_size,
                                       argname="validation_data")
            else:
                vstream = self._stream(validation_data, batch_size=batch_size, argname="validation_data")
            vfeats, vprobs, vlabels = self._extract(vstream)
            if labels is not None and vlabels is None:
                raise ValueError("`validation_data` has no labels, but the probes are trained on labels `y`.")
            val = (vfeats, self._targets(vprobs, vlabels if labels is not None else None))
        if len(targets) < 2:
            raise ValueError(f"Probes need at least 2 training samples; received {len(targets)}.")

        if not warm_start or not self.fitted:
            for probe, f in zip(self._probes, feats):
                probe.set_input_transform(f)
                probe.reset()

        inputs = [keras.Input((f.shape[1],), name=f"features_{i}") for i, f in enumerate(feats)]
        outputs = [probe(inp) for probe, inp in zip(self._probes, inputs)]
        trainer = keras.Model(inputs if len(inputs) > 1 else inputs[0],
                              outputs if len(outputs) > 1 else outputs[0], name="probe_trainer")
        trainer.compile(
            optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
            loss=["categorical_crossentropy"] * len(outputs) if len(outputs) > 1 else "categorical_crossentropy",
        )
        n_train = len(targets)

        # Mini-batch order from a private RNG: the global random streams are untouched.
        # Drawn one epoch at a time (never epochs x N indices held at once), and the
        # same sequence on every call (tf.data may start the generator more than once).
        def epoch_batches():
            rng = np.random.default_rng(np.random.SeedSequence(entropy))
            for _ in range(int(epochs)):
                order = rng.permutation(n_train)
                yield [np.sort(order[s:s + batch_size]) for s in range(0, n_train, batch_size)]

        strategy = active_strategy()
        if strategy is not None:
            check_in_scope(strategy, [w for p in self._probes for w in p.weights], "the HybridInterpreter")
            history = fit_distributed(trainer, feats, targets, epoch_batches, int(epochs),
                                      math.ceil(n_train / batch_size), val, batch_size, verbose)
            self.fitted = True
            return history

        history = keras.callbacks.History()
        history.set_model(trainer)
        history.on_train_begin()
        bar = keras.utils.Progbar(int(epochs), verbose=verbose, unit_name="epoch") if verbose else None

        def pack(f, t, idx):
            fs = [a[idx] for a in f]
            return (fs[0], t[idx]) if len(fs) == 1 else (tuple(fs), tuple(t[idx] for _ in fs))

        # A plain loop of train_on_batch calls: one compiled train step and no
        # per-epoch set-up cost (Keras fit() spends ~60 ms per epoch on it).
        for epoch, batches in enumerate(epoch_batches()):
            trainer.reset_metrics()
            for idx in batches:
                logs = trainer.train_on_batch(*pack(feats, targets, idx), return_dict=True)
            logs = {k: float(v) for k, v in logs.items()}
            if val is not None:
                trainer.reset_metrics()
                vf, vt = val
                for start in range(0, len(vt), batch_size):
                    vlogs = trainer.test_on_batch(*pack(vf, vt, np.arange(start, min(start + batch_size, len(vt)))),
                                                  return_dict=True)
                logs.update({f"val_{k}": float(v) for k, v in vlogs.items()})
            history.on_epoch_end(epoch, logs)
            if bar is not None:
                bar.update(epoch + 1, values=[("loss", logs["loss"])])
        self.fitted = True
        return history

    def _require_fitted(self):
        if not self.fitted:
            raise ValueError("The probes are not fitted yet: call interp.fit_probes(x, y) first.")

    def layer_predictions(self, x, *, batch_size=64, max_samples=None) -> LayerPredictions:
        """Per-block probe probabilities for every sample of ``x``.

        Holds (L, N, K) probabilities in memory: use ``max_samples`` or
        :meth:`evaluate_layers` for large data.
        """
        self._require_fitted()
        stream = self._stream(x, batch_size=batch_size, max_samples=max_samples)
        feats, probs, _ = self._extract(stream)
        block_probs = np.stack([
            np.asarray(keras.ops.convert_to_numpy(p(f)), dtype=np.float32) for p, f in zip(self._probes, feats)
        ])
        return LayerPredictions(
            blocks=list(self.block_names),
            depths=np.array([b.depth for b in self.blocks]),
            probabilities=block_probs,
            model_probabilities=probs,
            class_names=list(self.class_names),
        )

    def evaluate_layers(self, x, y=None, *, batch_size=64, max_samples=None) -> pd.DataFrame:
        """Layer-by-layer table: one row per block, then one for the model output.

        Columns: ``block``, ``depth``, ``filters``, ``accuracy`` (probe top
        class equals the label; NaN without labels), ``loss`` (mean
        cross-entropy against the labels, or against the model's own
        distribution without labels), ``agreement`` (probe top class equals
        the model's top class) and ``chance`` (frequency of the most common
        label, or of the most common model prediction without labels).
        Statistics stream in batches and accumulate in float64.
        """
        self._require_fitted()
        stream = self._stream(x, y, batch_size=batch_size, max_samples=max_samples)
        L, K = len(self._probes), self.num_classes
        correct = np.zeros(L + 1)
        agree = np.zeros(L + 1)
        loss = np.zeros(L + 1)
        counts = np.zeros(K)
        n = 0
        has_y = None
        for xb, yb in stream:
            outs = predict_on_batch(self._features, xb)
            model_p = np.asarray(outs[-1], dtype=np.float64)
            ps = [np.asarray(keras.ops.convert_to_numpy(p(f)), dtype=np.float64) for p, f in zip(self._probes, outs[:-1])]
            ps.append(model_p)
            model_cls = model_p.argmax(axis=1)
            if has_y is None:
                has_y = yb is not None
            elif has_y != (yb is not None):
                raise ValueError(f"`{stream.argname}` yields labels for some batches but not others.")
            if yb is not None:
                yi = to_class_indices(yb, K, argname=stream.label_argname)
                counts += np.bincount(yi, minlength=K)
            else:
                if has_y:
                    raise ValueError(f"`{stream.argname}` yields labels for some batches but not others.")
                counts += np.bincount(model_cls, minlength=K)
            for i, p in enumerate(ps):
                cls = p.argmax(axis=1)
                agree[i] += np.sum(cls == model_cls)
                logp = np.log(np.clip(p, _EPS, 1.0))
                if yb is not None:
                    correct[i] += np.sum(cls == yi)
                    loss[i] += -np.sum(logp[np.arange(len(yi)), yi])
                else:
                    loss[i] += -np.sum(model_p * logp)
            n += len(xb)
        names = list(self.block_names) + ["output"]
        depths = [b.depth for b in self.blocks] + [self._graph.tensors[self._graph.output_keys[0]].producer]
        filters = pd.array([b.filters for b in self.blocks] + [None], dtype="Int64")
        return pd.DataFrame({
            "block": names,
            "depth": depths,
            "filters": filters,
            "accuracy": correct / n if has_y else np.full(L + 1, np.nan),
            "loss": loss / n,
            "agreement": agree / n,
            "chance": np.full(L + 1, counts.max() / n),
        })

    def explain(self, x) -> LocalExplanation:
        """Local explanation of one input ``x`` of shape (H, W, C) or (1, H, W, C).

        Gives per-block probe probabilities, the decision depth and the
        per-block class-evidence maps (see :class:`LocalExplanation`).
        """
        self._require_fitted()
        x = np.asarray(keras.ops.convert_to_numpy(x) if not isinstance(x, np.ndarray) else x)
        shape = self._graph.tensors[self._graph.input_keys[0]].shape[1:]
        if x.ndim == len(shape):
            x = x[None]
        if x.ndim != len(shape) + 1 or x.shape[0] != 1:
            raise ValueError(
                f"`x` must be one input of shape {tuple(shape)} or (1, {', '.join(map(str, shape))}); "
                f"received shape {x.shape}. For several inputs use layer_predictions()."
            )
        self._stream(x, argname="x")  # validates shape and finiteness
        outs = predict_on_batch(self._maps_model, x)
        maps = [np.asarray(m[0], dtype=np.float64) for m in outs[:-1]]
        model_p = np.asarray(outs[-1][0], dtype=np.float64)
        probs, evidence = [], []
        for probe, pool, a in zip(self._probes, self._pools, maps):
            h, w, c = a.shape
            W, b = probe.effective_weights()
            pooled = np.asarray(keras.ops.convert_to_numpy(pool(a[None].astype(np.float32))), np.float64)[0]
            logits = pooled @ W + b
            z = np.exp(logits - logits.max())
            probs.append(z / z.sum())
            flat = a.reshape(h * w, c)
            if self.pooling in ("avg", "max"):
                ev = flat @ W + b
            else:
                pw = pool.position_weights(h, w)  # (HW, cells)
                cells = pw.shape[1]
                per_cell = np.einsum("pc,jck->pjk", flat, W.reshape(cells, c, -1))
                ev = (h * w) * np.einsum("pj,pjk->pk", pw, per_cell) + b
            evidence.append(ev.reshape(h, w, -1))
        probs = np.array(probs)
        pred = probs.argmax(axis=1)
        model_cls = int(model_p.argmax())
        decision = None
        for i in range(len(pred) - 1, -1, -1):
            if pred[i] != model_cls:
                break
            decision = i
        return LocalExplanation(
            image=x[0],
            blocks=list(self.block_names),
            depths=np.array([b.depth for b in self.blocks]),
            probabilities=probs,
            model_probabilities=model_p,
            decision_depth=decision,
            evidence_maps=evidence,
            class_names=list(self.class_names),
            pooling=self.pooling,
        )

    def probe_model(self, block) -> keras.Model:
        """A standalone ``keras.Model`` from image to the probabilities of ``block``'s probe.

        It shares the wrapped model's layers (no copy): use it for inference,
        not training.
        """
        if isinstance(block, (int, np.integer)) and not isinstance(block, bool) and 0 <= block < len(self.block_names):
            i = int(block)
        elif block in self.block_names:
            i = self.block_names.index(block)
        else:
            raise ValueError(f"`block` must be one of the interpreter's blocks {self.block_names} (or its index); received {block!r}.")
        g = self._graph
        k = self.block_keys[i]
        out = self._probes[i](self._pools[i](g.symbolic(k)))
        return keras.Model(g.symbolic_inputs[0], out, name=f"probe_model_{i}")

    def report(self, x, y=None, **kwargs):
        """Runs the full hybrid analysis (local and global) and returns a :class:`~keras_hybrid_interp.report.Report`.

        ``report.save("report.html")`` writes one self-contained HTML file;
        ``report.save_dir(folder)`` writes every figure (PNG, PDF, SVG), every
        table (CSV) and a JSON summary. Keyword arguments go to
        :func:`~keras_hybrid_interp.report.build_report` (``block``,
        ``examples``, ``importance_repeats``, ``max_samples``, ``random_state``).
        """
        from .report import build_report

        return build_report(self, x, y, **kwargs)

    def global_analyzer(self, **kwargs):
        """A :class:`~keras_hybrid_interp.GlobalAnalyzer` sharing these blocks and graph."""
        from .analyzer import GlobalAnalyzer

        return GlobalAnalyzer(self, **kwargs)

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
            "output": self.output_kind,
            "class_names": list(self.class_names),
            "fitted": bool(self.fitted),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        model = keras.saving.deserialize_keras_object(config.pop("model"))
        fitted = config.pop("fitted", False)
        obj = cls(model, **config)
        obj.fitted = fitted
        return obj

    @classmethod
    def load(cls, filepath, *, safe_mode=True) -> "HybridInterpreter":
        """Loads an interpreter written by :meth:`save` (``.keras``, Keras safe mode).

        Equivalent to ``keras.models.load_model(filepath, safe_mode=True)``, with
        clear errors for a missing, truncated or tampered file, a file that
        needs unsafe deserialization (a Python lambda: refused unless
        ``safe_mode=False``, which lets the file run code), and a file that
        holds a plain model instead of an interpreter.
        """
        from ._saving import load_keras_file

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
