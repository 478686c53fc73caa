"""Multi-device execution through TensorFlow's own ``tf.distribute``.

When the TensorFlow backend is active and the caller is inside the scope of
a ``tf.distribute`` strategy with more than one replica (for example
``tf.distribute.MirroredStrategy()`` on a multi-GPU machine), every forward
pass of the package splits its batch into one contiguous shard per replica,
runs the shards with ``strategy.run`` and gathers the outputs back in the
original order. Outside such a scope, or on another backend, it is a plain
``model.predict_on_batch``. Nothing here is a home-made distribution layer:
TensorFlow places, runs and gathers; this module only decides when to ask.

Usage::

    strategy = tf.distribute.MirroredStrategy()
    with strategy.scope():
        interp = HybridInterpreter(model)   # probe variables are mirrored
        interp.fit_probes(x, y)             # the features' forward pass uses every replica
        GlobalAnalyzer(interp).filter_correlation(x, block="block3_pool")
"""

from __future__ import annotations

import weakref

import numpy as np

import keras

from .graph import predict_batch, tensor_numpy, trace_free_batch

__all__ = ["active_strategy", "predict_on_batch", "predict_few", "EAGER_MAX_SAMPLES"]

#: At most this many samples, :func:`predict_few` calls a model eagerly instead of tracing it (TensorFlow).
EAGER_MAX_SAMPLES = 16

#: model -> {id(strategy): _DistributedPredictor}. Weak on the model, and no
#: value refers to its key (a predictor holds its model by weak reference
#: only), so an entry goes when its model is garbage-collected.
_PREDICTORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def active_strategy():
    """The current multi-replica ``tf.distribute`` strategy, or None."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    if not tf.distribute.has_strategy():
        return None
    strategy = tf.distribute.get_strategy()
    return strategy if strategy.num_replicas_in_sync > 1 else None


class _DistributedPredictor:
    """One compiled, distributed forward function per (model, strategy).

    It refers to its model by weak reference only: it is the value of the
    model's entry in ``_PREDICTORS`` and must not keep that key alive. The
    traced function captures the model's variables by reference, so it
    computes with the current weights at every call.
    """

    def __init__(self, model, strategy):
        import tensorflow as tf

        model_ref = weakref.ref(model)
        self.strategy = strategy
        self.replicas_fed = set()  # replica ids that received a shard (for tests and debugging)

        def replica_fn(*xs):
            m = model_ref()
            if m is None:  # pragma: no cover - the entry goes with its model
                raise RuntimeError("The model of this distributed predictor has been garbage-collected.")
            out = m(list(xs) if len(xs) > 1 else xs[0], training=False)
            return out if isinstance(out, (list, tuple)) else [out]

        def step(*dist_xs):
            per_replica = strategy.run(replica_fn, args=dist_xs)
            return [strategy.gather(p, axis=0) for p in per_replica]

        self._step = tf.function(step, reduce_retracing=True)

    def __call__(self, x):
        xs = list(x) if isinstance(x, (list, tuple)) else [x]
        n = self.strategy.num_replicas_in_sync
        shards = [np.array_split(np.asarray(a), n) for a in xs]
        def shard_fn(ctx, s):
            self.replicas_fed.add(ctx.replica_id_in_sync_group)
            return s[ctx.replica_id_in_sync_group]

        dist = [
            self.strategy.experimental_distribute_values_from_function(lambda ctx, s=s: shard_fn(ctx, s))
            for s in shards
        ]
        outs = [np.asarray(o) for o in self._step(*dist)]
        return outs if len(outs) > 1 else outs[0]


def predict_on_batch(model, x):
    """``model.predict_on_batch(x)``, split across replicas under a strategy scope.

    Returns NumPy arrays: one array for a single-output model, else a list. On
    TensorFlow they may be read-only views of the outputs' buffers
    (:func:`.graph.predict_batch`): copy before writing into them.
    """
    strategy = active_strategy()
    if strategy is None:
        trace_free_batch(model, x)  # at the first call: one trace for every batch size (TensorFlow)
        return predict_batch(model, x)
    per_model = _PREDICTORS.setdefault(model, {})
    predictor = per_model.get(id(strategy))
    if predictor is None or predictor.strategy is not strategy:
        predictor = per_model[id(strategy)] = _DistributedPredictor(model, strategy)
    return predictor(x)


def predict_few(model, x):
    """The outputs of a model run once on a few samples (the explained inputs), as NumPy arrays.

    On TensorFlow, tracing a large side model costs more than running it
    eagerly on a handful of samples (ResNet50 at 160 px, 2 CPU cores: 0.6-0.8 s
    to trace and run its predict function once, 0.17-0.22 s eagerly for 2
    samples), and the side model of the explained inputs' raw maps runs once
    per pass. So with at most :data:`EAGER_MAX_SAMPLES` samples, outside a
    multi-replica strategy, the model is called directly in inference mode
    (``model(x, training=False)``). Otherwise, and on JAX (whose op-by-op
    eager call compiled each operation: 3.3 s against 0.7 s for the jitted
    function, same case) and torch (whose ``predict_on_batch`` traces
    nothing), this is :func:`predict_on_batch`. Returns one array for a
    single-output model, else a list.
    """
    from .data import x_rows

    if (keras.backend.backend() != "tensorflow" or active_strategy() is not None
            or x_rows(x) > EAGER_MAX_SAMPLES):
        return predict_on_batch(model, x)
    out = model(list(x) if isinstance(x, tuple) else x, training=False)
    if isinstance(out, (list, tuple)):
        return [tensor_numpy(o) for o in out]
    return tensor_numpy(out)
