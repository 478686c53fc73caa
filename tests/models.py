"""Tiny models built in code for the tests (random init, no downloads)."""

import numpy as np

import keras
from keras import layers


def small_cnn(input_shape=(16, 16, 1), classes=10, name="small_cnn"):
    inp = keras.Input(input_shape)
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inp)
    x = layers.MaxPooling2D(name="pool1")(x)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(name="pool2")(x)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv3")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    out = layers.Dense(classes, activation="softmax", name="head")(x)
    return keras.Model(inp, out, name=name)


def residual_cnn(input_shape=(16, 16, 3), classes=4, operator_add=False, name="residual_cnn"):
    """Stem conv, pool, one residual block (Add then ReLU), pool, head."""
    inp = keras.Input(input_shape)
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inp)
    x = layers.MaxPooling2D(name="stem_pool")(x)
    y = layers.Conv2D(8, 3, padding="same", activation="relu", name="res_conv1")(x)
    y = layers.Conv2D(8, 3, padding="same", name="res_conv2")(y)
    z = (x + y) if operator_add else layers.Add(name="res_add")([x, y])
    z = layers.Activation("relu", name="res_out")(z)
    z = layers.Conv2D(12, 3, padding="same", activation="relu", name="conv_after")(z)
    z = layers.MaxPooling2D(name="pool_after")(z)
    z = layers.GlobalAveragePooling2D(name="gap")(z)
    out = layers.Dense(classes, activation="softmax", name="head")(z)
    return keras.Model(inp, out, name=name)


def dense_cnn(input_shape=(16, 16, 3), classes=4, name="dense_cnn"):
    inp = keras.Input(input_shape)
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inp)
    y = layers.Conv2D(4, 3, padding="same", activation="relu", name="branch")(x)
    x = layers.Concatenate(name="concat")([x, y])
    x = layers.MaxPooling2D(name="pool")(x)
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_last")(x)
    x = layers.GlobalAveragePooling2D()(x)
    out = layers.Dense(classes, activation="softmax", name="head")(x)
    return keras.Model(inp, out, name=name)


def sequential_cnn(classes=5, with_input=True, input_shape=(12, 12, 1)):
    stack = [
        layers.Conv2D(4, 3, padding="same", activation="relu", name="s_conv1"),
        layers.MaxPooling2D(name="s_pool1"),
        layers.Conv2D(6, 3, padding="same", activation="relu", name="s_conv2"),
        layers.MaxPooling2D(name="s_pool2"),
        layers.Conv2D(6, 3, padding="same", name="s_conv3"),
        layers.ReLU(name="s_relu3"),
        layers.Flatten(name="s_flatten"),
        layers.Dense(classes, activation="softmax", name="s_head"),
    ]
    if with_input:
        stack = [keras.Input(input_shape)] + stack
    return keras.Sequential(stack, name="seq_cnn")


def nested_model(input_shape=(16, 16, 3), classes=3):
    """A functional 'backbone' nested in a transfer-learning model."""
    binp = keras.Input(input_shape)
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="b_conv1")(binp)
    x = layers.MaxPooling2D(name="b_pool1")(x)
    y = layers.Conv2D(8, 3, padding="same", name="b_res")(x)
    x = layers.Add(name="b_add")([x, y])
    x = layers.ReLU(name="b_out")(x)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="b_conv2")(x)
    backbone = keras.Model(binp, x, name="backbone")
    inp = keras.Input(input_shape)
    h = backbone(inp, training=False)
    h = layers.GlobalAveragePooling2D(name="gap")(h)
    h = layers.Dropout(0.5, name="drop")(h)
    out = layers.Dense(classes, activation="softmax", name="head")(h)
    return keras.Model(inp, out, name="transfer")


def gap_head_cnn(input_shape=(12, 12, 3), classes=4):
    """conv blocks -> last block -> GAP -> Dense softmax (probe exactness)."""
    inp = keras.Input(input_shape)
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inp)
    x = layers.MaxPooling2D(name="p1")(x)
    x = layers.Conv2D(12, 3, padding="same", activation="relu", name="c2")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    out = layers.Dense(classes, activation="softmax", name="head")(x)
    return keras.Model(inp, out, name="gap_head")


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.conv = layers.Conv2D(4, 3)
        self.gap = layers.GlobalAveragePooling2D()
        self.head = layers.Dense(3, activation="softmax")

    def call(self, x):
        return self.head(self.gap(self.conv(x)))


def snapshot(model, x):
    """Everything 'never change the user's model' promises, bit for bit."""

    def flags(m, prefix=""):
        out = [(prefix + m.name, m.trainable)]
        for layer in getattr(m, "layers", []):
            out.extend(flags(layer, prefix + m.name + "/"))
        return out

    return {
        "weights": [np.array(w, copy=True) for w in model.get_weights()],
        "variables": [(v.path, v.trainable, str(v.dtype)) for v in model.variables],
        "flags": flags(model),
        "pred": [keras.ops.convert_to_numpy(o) for o in keras.tree.flatten(model(x, training=False))],
        "compiled": getattr(model, "compiled", False),
        "optimizer": getattr(model, "optimizer", None),
        "loss": getattr(model, "loss", None),
        "n_layers": len(model.layers),
        "config": model.get_config(),
    }


def assert_unchanged(before, after):
    assert len(before["weights"]) == len(after["weights"])
    for a, b in zip(before["weights"], after["weights"]):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert before["variables"] == after["variables"]
    assert before["flags"] == after["flags"]
    assert len(before["pred"]) == len(after["pred"])
    assert all(np.array_equal(a, b) for a, b in zip(before["pred"], after["pred"]))
    assert before["compiled"] == after["compiled"]
    assert before["optimizer"] is after["optimizer"]
    assert before["loss"] == after["loss"]
    assert before["n_layers"] == after["n_layers"]
    assert before["config"] == after["config"]


def edit_keras_config(src, dst, edit):
    """Copies the .keras archive ``src`` to ``dst`` with ``edit(config)`` applied to its config.json."""
    import json
    import zipfile

    with zipfile.ZipFile(src) as z:
        items = {n: z.read(n) for n in z.namelist()}
    config = json.loads(items["config.json"])
    edit(config)
    items["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(dst, "w") as z:
        for n, b in items.items():
            z.writestr(n, b)


# ----------------------------------------------------------------------
# The user's node lists (what a side model must never grow)
# ----------------------------------------------------------------------
def user_operations(model):
    """(path, operation) for the model, every operation of it and of its nested models, once each."""
    found, seen = [(model.name, model)], {id(model)}

    def walk(m, prefix):
        for op in m.operations if hasattr(m, "operations") else m.layers:
            if id(op) not in seen:
                seen.add(id(op))
                found.append((prefix + op.name, op))
                if isinstance(op, keras.Model):
                    walk(op, prefix + op.name + "/")

    walk(model, model.name + "/")
    return found


def node_counts(model):
    return {path: (len(op._inbound_nodes), len(op._outbound_nodes)) for path, op in user_operations(model)}


def node_lists(model):
    """Per operation: its two node lists (the objects) and what they hold now (copies)."""
    return {
        path: (op._inbound_nodes, op._outbound_nodes, tuple(op._inbound_nodes), tuple(op._outbound_nodes))
        for path, op in user_operations(model)
    }


def assert_same_node_lists(before, after):
    """The very list objects, holding the very nodes they held."""
    assert before.keys() == after.keys()
    counts = {path: (len(v[2]), len(v[3])) for path, v in before.items()}
    assert {path: (len(v[2]), len(v[3])) for path, v in after.items()} == counts
    for path, (inbound, outbound, held_in, held_out) in before.items():
        now_in, now_out, now_held_in, now_held_out = after[path]
        assert now_in is inbound and now_out is outbound, path
        assert all(a is b for a, b in zip(now_held_in + now_held_out, held_in + held_out)), path
