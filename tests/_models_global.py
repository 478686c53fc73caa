"""Tiny hand-built models and reference computations for the global-analysis tests."""

import numpy as np

import keras
from keras import layers, ops


def residual_model(classes=4, name="res_global"):
    """Stem, a residual block (two convs, Add, ReLU), a conv, GAP, softmax head.

    ``res_conv1`` lies inside the residual block: a cut there is crossed by
    the skip connection from ``stem_pool``.
    """
    inp = keras.Input((12, 12, 3))
    x = layers.Conv2D(6, 3, padding="same", activation="relu", name="stem")(inp)
    x = layers.MaxPooling2D(name="stem_pool")(x)
    y = layers.Conv2D(6, 3, padding="same", activation="relu", name="res_conv1")(x)
    y = layers.Conv2D(6, 3, padding="same", name="res_conv2")(y)
    z = layers.Add(name="res_add")([x, y])
    z = layers.Activation("relu", name="res_out")(z)
    z = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_after")(z)
    z = layers.GlobalAveragePooling2D(name="gap")(z)
    out = layers.Dense(classes, activation="softmax", name="head")(z)
    return keras.Model(inp, out, name=name)


def ignored_filter_model(ignored=2, filters=5, classes=3):
    """``block`` has ``filters`` channels; a 1x1 depthwise conv multiplies channel
    ``ignored`` by exactly zero, the others by one, before the rest of the model."""
    inp = keras.Input((10, 10, 2))
    x = layers.Conv2D(filters, 3, padding="same", activation="relu", name="block")(inp)
    dw = layers.DepthwiseConv2D(1, use_bias=False, name="mask")
    x = dw(x)
    k = np.ones((1, 1, filters, 1), dtype="float32")
    k[0, 0, ignored, 0] = 0.0
    dw.set_weights([k])
    x = layers.Conv2D(6, 3, padding="same", activation="relu", name="conv_after")(x)
    x = layers.GlobalAveragePooling2D()(x)
    out = layers.Dense(classes, activation="softmax", name="head")(x)
    return keras.Model(inp, out, name="ignored_filter")


def planted_data(n=200, seed=0):
    """Two classes; input channel 0 carries the label, channel 1 is noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(0, 1, size=(n, 8, 8, 2)).astype("float32")
    x[..., 0] = (2 * y - 1)[:, None, None] * 0.7 + 0.5 * rng.normal(size=(n, 8, 8))
    return x, y


def planted_model(planted=2):
    """Block of 4 linear 1x1 filters: filter ``planted`` copies input channel 0
    (the label), the others mix in channel 1 (noise). The head reads all of them."""
    inp = keras.Input((8, 8, 2))
    conv = layers.Conv2D(4, 1, name="block")
    x = conv(inp)
    k = np.zeros((1, 1, 2, 4), dtype="float32")
    for c, w in zip([c for c in range(4) if c != planted], [0.5, 1.0, -1.5]):
        k[0, 0, 1, c] = w
    k[0, 0, 0, planted] = 1.0
    conv.set_weights([k, np.zeros(4, "float32")])
    x = layers.GlobalAveragePooling2D()(x)
    dense = layers.Dense(2, activation="softmax", name="head")
    out = dense(x)
    w = np.zeros((4, 2), dtype="float32")
    w[:, 1] = 0.4
    w[planted, 1] = 4.0
    dense.set_weights([w, np.zeros(2, "float32")])
    return keras.Model(inp, out, name="planted")


def gap_head_model(filters=8, classes=3, seed=0):
    """conv block -> GAP -> Dense softmax; head rows scaled so filters differ in importance."""
    inp = keras.Input((8, 8, 3))
    x = layers.Conv2D(filters, 3, padding="same", activation="relu", name="block")(inp)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    dense = layers.Dense(classes, activation="softmax", name="head")
    out = dense(x)
    model = keras.Model(inp, out, name="gap_head")
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(filters, classes)).astype("float32")
    w *= (1.6 ** np.arange(filters))[rng.permutation(filters), None].astype("float32")
    dense.set_weights([w, np.zeros(classes, "float32")])
    return model


class Perturb(layers.Layer):
    """Test-only layer that perturbs channels inside the full graph (the reference)."""

    def __init__(self, channels, channels_total, perm=None, fill=0.0, **kwargs):
        super().__init__(**kwargs)
        mask = np.zeros(channels_total, dtype=bool)
        mask[np.asarray(channels)] = True
        self.mask = mask
        self.perm = None if perm is None else np.asarray(perm, dtype="int32")
        self.fill = fill

    def call(self, x):
        mask = ops.convert_to_tensor(self.mask)
        if self.perm is not None:
            other = ops.take(x, ops.convert_to_tensor(self.perm), axis=0)
        else:
            other = ops.cast(ops.zeros_like(x) + self.fill, x.dtype)
        return ops.where(mask, other, x)

    def compute_output_shape(self, input_shape):
        # Same shape as the input. Without this, Keras infers the symbolic shape by
        # tracing ``call``; JAX then sees the fixed length of ``perm`` against a
        # dynamic batch size and refuses to broadcast them.
        return input_shape


def full_model_with_perturbation(graph, key, perturb):
    """A full model (input -> output) with ``perturb`` inserted at tensor ``key``."""
    inp = keras.Input(graph.tensors[graph.input_keys[0]].shape[1:])
    vals = graph.replay({graph.input_keys[0]: inp}, graph.frontier(key))
    vals = dict(vals)
    vals[key] = perturb(vals[key])
    out = graph.replay(vals, graph.output_keys)[graph.output_keys[0]]
    return keras.Model(inp, out)


def model_state(model):
    """Everything the analyses must leave untouched."""
    return (
        [w.copy() for w in model.get_weights()],
        [l.trainable for l in model.layers],
        model.trainable,
        model.compiled,
        getattr(model, "optimizer", None),
    )


def assert_state_equal(model, before, x):
    after = model_state(model)
    assert len(before[0]) == len(after[0])
    for a, b in zip(before[0], after[0]):
        np.testing.assert_array_equal(a, b)
    assert before[1:] == after[1:]
