"""A ResNet-style stage for the coupled-importance tests (two residual blocks with BatchNorm)."""

import numpy as np

import keras
from keras import layers

C = 4


def resnet_stage_model(classes=3, seed=0):
    """stem conv-BN-ReLU, two identity residual blocks, a conv, GAP, softmax head.

    The residual stream (``C`` channels) is stem .. b2_out; ``b1_c1``, ``b2_c1``
    and ``after`` are convolutions reading it, so they are not tied.
    """
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 3))
    s = layers.Conv2D(C, 3, padding="same", name="stem")(inp)
    s = layers.BatchNormalization(name="stem_bn")(s)
    s = layers.ReLU(name="stem_relu")(s)
    h = layers.Conv2D(C, 3, padding="same", activation="relu", name="b1_c1")(s)
    h = layers.Conv2D(C, 3, padding="same", name="b1_c2")(h)
    h = layers.BatchNormalization(name="b1_bn")(h)
    a = layers.Add(name="b1_add")([s, h])
    a = layers.Activation("relu", name="b1_out")(a)
    h = layers.Conv2D(C, 3, padding="same", activation="relu", name="b2_c1")(a)
    h = layers.Conv2D(C, 3, padding="same", name="b2_c2")(h)
    b = layers.Add(name="b2_add")([a, h])
    b = layers.ReLU(name="b2_out")(b)
    z = layers.Conv2D(5, 3, padding="same", activation="relu", name="after")(b)
    z = layers.GlobalAveragePooling2D(name="gap")(z)
    out = layers.Dense(classes, activation="softmax", name="head")(z)
    model = keras.Model(inp, out, name="resnet_stage")
    rng = np.random.default_rng(seed)
    for name in ("stem_bn", "b1_bn"):  # a BatchNorm that is not the identity
        bn = model.get_layer(name)
        bn.set_weights([rng.uniform(0.5, 1.5, C).astype("float32"), rng.normal(0, 0.3, C).astype("float32"),
                        rng.normal(0, 0.3, C).astype("float32"), rng.uniform(0.5, 2.0, C).astype("float32")])
    return model


TIED = ["stem", "stem_bn", "stem_relu", "b1_c2", "b1_bn", "b1_add", "b1_out", "b2_c2", "b2_add", "b2_out"]
ORDER = ["stem", "stem_bn", "stem_relu", "b1_c1", "b1_c2", "b1_bn", "b1_add", "b1_out", "b2_c1", "b2_c2",
         "b2_add", "b2_out", "after", "gap", "head"]


def hand_forward(model, x, edit):
    """The model run eagerly layer by layer; ``edit(name, value) -> value`` after each layer."""
    v = {}
    L = model.get_layer

    def run(name, *args):
        out = keras.ops.convert_to_numpy(L(name)(*args, training=False))
        v[name] = edit(name, out)
        return v[name]

    s = run("stem", x)
    s = run("stem_bn", s)
    s = run("stem_relu", s)
    h = run("b1_c1", s)
    h = run("b1_c2", h)
    h = run("b1_bn", h)
    a = run("b1_add", [s, h])
    a = run("b1_out", a)
    h = run("b2_c1", a)
    h = run("b2_c2", h)
    b = run("b2_add", [a, h])
    b = run("b2_out", b)
    z = run("after", b)
    z = run("gap", z)
    return run("head", z)
