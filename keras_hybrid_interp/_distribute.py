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
        interp.fit_probes(x, y)             # features and probe steps use every replica
        GlobalAnalyzer(interp).filter_correlation(x, "block3_pool")
"""

from __future__ import annotations

import weakref

import numpy as np

import keras

__all__ = ["active_strategy", "predict_on_batch"]

_PREDICTORS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


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
    """One compiled, distributed forward function per (model, strategy)."""

    def __init__(self, model, strategy):
        import tensorflow as tf

        self.model = model
        self.strategy = strategy
        self.replicas_fed = set()  # replica ids that received a shard (for tests and debugging)

        def replica_fn(*xs):
            out = model(list(xs) if len(xs) > 1 else xs[0], training=False)
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

    Returns NumPy arrays: one array for a single-output model, else a list.
    """
    strategy = active_strategy()
    if strategy is None:
        return model.predict_on_batch(x)
    per_model = _PREDICTORS.setdefault(model, {})
    predictor = per_model.get(id(strategy))
    if predictor is None or predictor.strategy is not strategy:
        predictor = per_model[id(strategy)] = _DistributedPredictor(model, strategy)
    return predictor(x)


def check_in_scope(strategy, variables, what):
    """ValueError unless ``variables`` were created under ``strategy``'s scope."""
    for v in variables:
        tf_var = getattr(v, "value", v)
        if not strategy.extended.variable_created_in_scope(tf_var):
            raise ValueError(
                f"A tf.distribute strategy with {strategy.num_replicas_in_sync} replicas is active, "
                f"but {what} was created outside its scope, so its variables are not mirrored. "
                "Create it inside `with strategy.scope():` as well."
            )


def fit_distributed(trainer, feats, targets, epoch_batches, epochs, steps_per_epoch, val, batch_size, verbose):
    """Trains ``trainer`` with Keras ``fit`` on the given mini-batches, split across replicas.

    ``epoch_batches()`` yields, per epoch, the list of mini-batches (arrays of
    sample indices). The batches are the same
    ones the single-device loop uses, so both paths take the same steps; each
    global batch is split across the replicas by Keras and the gradients are
    all-reduced by TensorFlow.
    """
    import tensorflow as tf

    multi = len(feats) > 1

    def pack(idx):
        fs = tuple(f[idx] for f in feats)
        t = targets[idx]
        return (fs, tuple(t for _ in fs)) if multi else (fs[0], t)

    def gen():
        for batches in epoch_batches():
            for idx in batches:
                yield pack(idx)

    feat_specs = tuple(tf.TensorSpec((None, f.shape[1]), tf.float32) for f in feats)
    t_spec = tf.TensorSpec((None, targets.shape[1]), tf.float32)
    signature = (feat_specs, tuple(t_spec for _ in feats)) if multi else (feat_specs[0], t_spec)
    data = tf.data.Dataset.from_generator(gen, output_signature=signature)
    val_data = None
    if val is not None:
        vf, vt = val
        val_sig = signature
        vidx = [np.arange(s, min(s + batch_size, len(vt))) for s in range(0, len(vt), batch_size)]

        def vgen():
            for idx in vidx:
                fs = tuple(f[idx] for f in vf)
                yield (fs, tuple(vt[idx] for _ in fs)) if multi else (fs[0], vt[idx])

        val_data = tf.data.Dataset.from_generator(vgen, output_signature=val_sig)
    return trainer.fit(
        data,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        validation_data=val_data,
        verbose=verbose,
        shuffle=False,  # the batches above are already in the seeded order
    )
