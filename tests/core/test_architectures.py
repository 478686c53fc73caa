"""Automatic block discovery on keras.applications, in three forms, and probes on top.

Default part (fast): small hand-built models pin the refinements of the rule
(``core.blocks.discover_blocks``) that the keras.applications families needed:
the classifier head after a global pooling is no block, an activation written
as a merge (``x * sigmoid(x)``) closes no block, a squeeze-and-excitation gate
is a block end only outside a residual block, and in a network of cells that
each read the two previous cells the blocks are the cell outputs.

Slow part (``-m slow``): every family of docs/ARCHITECTURES.md except VGG16 and
ResNet50 (their discovery is tested in test_graph.py), as is
(``include_top=True``), nested as the backbone of a transfer-learning model,
and reloaded from ``.keras``: the exact block list, ``fit_probes`` on 8 random
images (as is and nested; the reloaded form builds the interpreter only, to
keep the group near 6 minutes on 2 cores), and the model unchanged afterwards. Each test starts with
``keras.backend.clear_session()`` so that the names Keras numbers per process
(``add_17``) are those of docs/ARCHITECTURES.md.
"""

import re
import string
import warnings

import numpy as np
import pytest

import keras
from keras import layers

from keras_hybrid_interp import HybridInterpreter
from keras_hybrid_interp.core.blocks import MAX_CONVS_WITHOUT_CUT, cut_points, discover_blocks
from keras_hybrid_interp.core.graph import ModelGraph
from keras_hybrid_interp.core.layers import is_conv

from models import assert_unchanged, snapshot


def block_names(model):
    g = ModelGraph(model)
    keys, notes = discover_blocks(g)
    return [g.tensors[k].name for k in keys], notes


def fit_and_check_unchanged(model, n=8, fit=True):
    """HybridInterpreter(model).fit_probes on n random images leaves the model as it was.

    With ``fit=False`` only the interpreter is built (graph replay, block
    features model), which must leave the model unchanged too.
    """
    shape = tuple(model.input_shape[1:])
    classes = int(model.output_shape[-1])
    rng = np.random.default_rng(0)
    x = (rng.random((n,) + shape) * 255).astype(np.float32)
    y = np.arange(n) % classes
    before = snapshot(model, x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        interp = HybridInterpreter(model)
        if fit:
            assert interp.fit_probes(x, y, verbose=0) is interp
            assert interp.fitted
            conv = interp.convergence_
            assert conv["block"].tolist() == interp.block_names
            assert np.isfinite(conv["loss"].to_numpy(float)).all()
            for probe in interp.probes:
                assert all(np.isfinite(a).all() for a in probe.state())
            # the probes read the same samples they were fitted on: their training loss is the table's
            table = interp.evaluate_layers(x, y).to_frame()
            np.testing.assert_allclose(table["loss"].to_numpy()[:-1], conv["loss"].to_numpy(float),
                                       rtol=1e-4, atol=1e-6)
    assert_unchanged(before, snapshot(model, x))
    return interp, [str(w.message) for w in caught]


# ----------------------------------------------------------------------
# Fast: the refinements of the rule on hand-built models
# ----------------------------------------------------------------------
def conv_head_model(reduce="layer"):
    """conv, pool, conv, global pooling with keepdims, a 1x1 Conv2D for the logits (MobileNetV3's head)."""
    inp = keras.Input((16, 16, 3))
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inp)
    x = layers.MaxPooling2D(name="p1")(x)
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="c2")(x)
    if reduce == "layer":
        x = layers.GlobalAveragePooling2D(keepdims=True, name="gap")(x)
    else:
        x = keras.ops.mean(x, axis=(1, 2), keepdims=True)
    x = layers.Conv2D(16, 1, activation="relu", name="features")(x)
    x = layers.Conv2D(4, 1, name="logits")(x)
    out = layers.Activation("softmax", name="predictions")(layers.Flatten()(x))
    return keras.Model(inp, out, name=f"conv_head_{reduce}")


@pytest.mark.parametrize("reduce", ["layer", "ops.mean"])
def test_classifier_head_after_a_global_pooling_is_not_a_block(reduce):
    m = conv_head_model(reduce)
    names, _ = block_names(m)
    assert names == ["p1", "c2"]  # not the 1x1 'logits' convolution, the last 4-D cut point
    fit_and_check_unchanged(m)


def swish_model():
    """Activations written as merges: swish x * sigmoid(x) and hard-swish x * relu6(x + 3) / 6."""
    inp = keras.Input((16, 16, 3))
    x = layers.Conv2D(8, 3, padding="same", name="c1")(inp)
    x = layers.Multiply(name="swish1")([x, layers.Activation("sigmoid")(x)])
    x = layers.Conv2D(8, 3, padding="same", name="c2")(x)
    x = layers.Multiply(name="swish2")([x, layers.Activation("sigmoid")(x)])
    x = layers.MaxPooling2D(name="p1")(x)
    x = layers.Conv2D(8, 3, padding="same", name="c3")(x)
    x = layers.Multiply(name="hard_swish3")([x, layers.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)])
    x = layers.MaxPooling2D(name="p2")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, layers.Dense(3, activation="softmax")(x), name="swish_cnn")


def test_activation_written_as_a_merge_closes_no_block():
    # swish1 merges two paths, but the region it closes holds no convolution:
    # it is an activation, like VGG's ReLU. The blocks are the pools, as for VGG.
    names, _ = block_names(swish_model())
    assert names == ["p1", "p2"]


def mbconv(x, expand, out, stride, name, residual):
    """Inverted residual block with a squeeze-and-excitation gate (EfficientNet, MobileNetV3)."""
    inp = x
    x = layers.Conv2D(expand, 1, activation="relu", name=f"{name}_expand")(x)
    x = layers.DepthwiseConv2D(3, strides=stride, padding="same", activation="relu", name=f"{name}_dw")(x)
    s = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_squeeze")(x)
    s = layers.Conv2D(4, 1, activation="relu", name=f"{name}_reduce")(s)
    s = layers.Conv2D(expand, 1, activation="sigmoid", name=f"{name}_excite")(s)
    x = layers.Multiply(name=f"{name}_se")([x, s])
    x = layers.Conv2D(out, 1, name=f"{name}_project")(x)  # linear bottleneck
    if residual:
        x = layers.Add(name=f"{name}_add")([inp, x])
    return x


def se_model():
    inp = keras.Input((16, 16, 3))
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inp)
    x = mbconv(x, 16, 12, 2, "b1", residual=False)
    x = mbconv(x, 24, 12, 1, "b2", residual=True)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, layers.Dense(3, activation="softmax")(x), name="se_cnn")


def test_squeeze_excitation_gate_is_a_block_end_only_outside_a_residual_block():
    m = se_model()
    names, _ = block_names(m)
    # b1 has no skip connection: its gate is the only merge, the block ends there
    # (before the linear projection). b2's gate is jumped over by the skip
    # connection: no split, the block ends at the Add. The squeeze (a global
    # pooling off the main path) does not start the classifier head.
    assert names == ["b1_se", "b2_add"]
    fit_and_check_unchanged(m)


def cell_network(n_after=4):
    """Cells that each read the two previous cells (NASNet), with one reduction cell.

    The cell after the reduction reads the older input through a reshaping skip
    (two strided 1x1 convolutions, concatenated), as NASNet's adjust block does.
    """

    def cell(x, p, name, stride=1):
        a = layers.Conv2D(4, 3, strides=stride, padding="same", name=f"{name}_a")(layers.ReLU()(x))
        b = layers.Conv2D(4, 3, strides=stride, padding="same", name=f"{name}_b")(layers.ReLU()(p))
        c = layers.Conv2D(4, 1, strides=stride, name=f"{name}_c")(x)
        d = layers.Conv2D(4, 1, strides=stride, name=f"{name}_d")(p)
        return layers.Concatenate(name=name)([layers.Add()([a, b]), layers.Add()([c, d])])

    inp = keras.Input((16, 16, 3))
    stem = layers.Conv2D(8, 3, padding="same", name="stem")(inp)
    c0 = cell(stem, stem, "cell_0")
    c1 = cell(c0, stem, "cell_1")
    red = cell(c1, c0, "reduction", stride=2)
    skip = layers.Concatenate(name="reshaped_skip")([
        layers.Conv2D(4, 1, strides=2, name="skip_a")(c1),
        layers.Conv2D(4, 1, name="skip_b")(layers.AveragePooling2D(1, strides=2)(c1)),
    ])
    p, x = skip, red
    for i in range(2, 2 + n_after):
        p, x = x, cell(x, p, f"cell_{i}")
    out = layers.Dense(3, activation="softmax")(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inp, out, name="cells")


def test_cells_reading_two_previous_cells_give_the_cell_outputs():
    m = cell_network()
    g = ModelGraph(m)
    assert [g.tensors[k].name for k in cut_points(g)][:2] == ["stem", "cell_5"]  # nothing in between
    names, notes = block_names(m)
    # Every cell output, the reduction cell included; not the reshaped skip, which
    # separates input and output together with the reduction cell too, but holds
    # fewer convolutions. cell_5, the last cell, is a real cut point.
    assert names == ["cell_0", "cell_1", "reduction", "cell_2", "cell_3", "cell_4", "cell_5"]
    assert len(notes) == 1 and "6 cell outputs" in notes[0] and "not cut points" in notes[0]
    interp, caught = fit_and_check_unchanged(m)
    assert interp.block_names == names
    assert any("cell outputs" in w for w in caught)


def test_short_stretch_without_cut_points_is_left_alone():
    # Fewer than MAX_CONVS_WITHOUT_CUT convolutions without a cut point: no cell rule.
    m = cell_network(n_after=1)
    g = ModelGraph(m)
    stretch = sum(1 for o in g.ops if is_conv(g, o)) - 1  # all but the stem
    assert stretch <= MAX_CONVS_WITHOUT_CUT
    names, notes = block_names(m)
    assert names == ["cell_2"] and "Only one block" in notes[-1]


def test_long_stretch_without_cells_gets_a_note():
    # Three parallel towers of 9 convolutions: no cut point inside, and no merge that
    # a single skip connection jumps over. No block inside; a note says why.
    inp = keras.Input((8, 8, 3))
    stem = layers.Conv2D(4, 3, padding="same", name="stem")(inp)
    towers = []
    for t in range(3):
        x = stem
        for i in range(9):
            x = layers.Conv2D(4, 3, padding="same", activation="relu", name=f"t{t}_conv{i}")(x)
        towers.append(x)
    x = layers.Concatenate(name="towers")(towers)
    m = keras.Model(inp, layers.Dense(2, activation="softmax")(layers.GlobalAveragePooling2D()(x)))
    names, notes = block_names(m)
    assert names == ["towers"]
    assert "no cut point for 27 convolutions" in notes[0] and "No merge there" in notes[0]


# ----------------------------------------------------------------------
# Slow: keras.applications families (docs/ARCHITECTURES.md)
# ----------------------------------------------------------------------
def _letters(n):
    return string.ascii_lowercase[:n]


def _efficientnet(repeats, gated):
    """First block of a stage ends at its SE gate (if it has one), the others at their add."""
    names = []
    for stage, (n, has_se) in enumerate(zip(repeats, gated), start=1):
        for j, letter in enumerate(_letters(n)):
            if j:
                names.append(f"block{stage}{letter}_add")
            elif has_se:
                names.append(f"block{stage}{letter}_se_excite")
    return names + ["top_activation"]


def _resnet_v2():
    names = []
    for stage, n in {2: 3, 3: 4, 4: 6, 5: 3}.items():
        names.append(f"conv{stage}_block1_preact_relu")
        names += [f"conv{stage}_block{b}_out" for b in range(1, n)]
    return names + ["post_relu"]


def _densenet():
    names = ["pool1"]
    for stage, n in {2: 6, 3: 12, 4: 24, 5: 16}.items():
        names += [f"conv{stage}_block{b}_concat" for b in range(1, n)]
        names += [f"pool{stage}_relu", f"pool{stage}_pool"] if stage < 5 else ["relu"]
    return names


def _convnext():
    names, k = [], 0
    for stage, depth in enumerate([3, 3, 9, 3]):
        for _ in range(depth):
            names.append("add" if k == 0 else f"add_{k}")
            k += 1
        if stage < 3:  # extended to the LayerNormalization of the downsampling layer
            names[-1] = (f"convnext_tiny_downsampling_block_{stage}/"
                         f"convnext_tiny_downsampling_layernorm_{stage}")
    return names


def _nasnet():
    names = ["reduction_concat_stem_1", "reduction_concat_stem_2"]
    names += [f"normal_concat_{i}" for i in range(0, 4)] + ["reduction_concat_reduce_4"]
    names += [f"normal_concat_{i}" for i in range(5, 9)] + ["reduction_concat_reduce_8"]
    names += [f"normal_concat_{i}" for i in range(9, 12)]
    return names + [re.compile(r"activation_\d+")]  # the ReLU after normal_concat_12


#: name: (input size, expected blocks of the model as is; a compiled pattern for auto-numbered names)
APPLICATIONS = {
    "ResNet50V2": (32, _resnet_v2),
    "MobileNetV2": (32, lambda: [f"block_{i}_add" for i in (2, 4, 5, 7, 8, 9, 11, 12, 14, 15)] + ["out_relu"]),
    "MobileNetV3Small": (32, lambda: [
        "expanded_conv_squeeze_excite_mul", "expanded_conv_2_add", "expanded_conv_3_squeeze_excite_mul",
        "expanded_conv_4_add", "expanded_conv_5_add", "expanded_conv_6_squeeze_excite_mul",
        "expanded_conv_7_add", "expanded_conv_8_squeeze_excite_mul", "expanded_conv_9_add",
        "expanded_conv_10_add",
        re.compile(r"activation_\d+"),  # hard-swish after conv_1, before the head's global pooling
    ]),
    "DenseNet121": (32, _densenet),
    "EfficientNetB0": (32, lambda: _efficientnet([1, 2, 2, 3, 3, 4, 1], [True] * 7)),
    "EfficientNetV2B0": (32, lambda: _efficientnet([1, 2, 2, 3, 5, 8], [False] * 3 + [True] * 3)),
    "InceptionV3": (75, lambda: ["max_pooling2d", "max_pooling2d_1"] + [f"mixed{i}" for i in range(11)]),
    "Xception": (71, lambda: ["add"] + [f"add_{i}" for i in range(1, 12)] + ["block14_sepconv2_act"]),
    "ConvNeXtTiny": (32, _convnext),
    "NASNetMobile": (32, _nasnet),
}
FORMS = ["as_is", "nested", "reloaded"]


def build(arch, form, tmp_path):
    """Returns (model, prefix of the block names)."""
    size = APPLICATIONS[arch][0]
    app = getattr(keras.applications, arch)
    shape = (size, size, 3)
    if form == "nested":
        base = app(include_top=False, weights=None, input_shape=shape)
        inp = keras.Input(shape)
        x = base(inp, training=False)
        x = layers.GlobalAveragePooling2D(name="gap")(x)
        out = layers.Dense(10, activation="softmax", name="head")(x)
        return keras.Model(inp, out, name="transfer"), base.name + "/"
    model = app(include_top=True, weights=None, input_shape=shape, classes=10)
    if form == "reloaded":
        path = tmp_path / f"{arch}.keras"
        model.save(path)
        model = keras.models.load_model(path, safe_mode=True)
    return model, ""


def expected_blocks(arch, form, prefix):
    names = APPLICATIONS[arch][1]()
    if arch == "ConvNeXtTiny" and form == "nested":
        # include_top=False ends with a LayerNormalization on the 4-D map (with the
        # top it comes after the global pooling); the last block extends to it.
        names[-1] = "layer_normalization"
    return [prefix + n if isinstance(n, str) else re.compile(re.escape(prefix) + n.pattern) for n in names]


def assert_blocks(names, expected):
    assert len(names) == len(expected), names
    for got, want in zip(names, expected):
        if isinstance(want, str):
            assert got == want, names
        else:
            assert want.fullmatch(got), (got, want.pattern)


@pytest.mark.slow
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("arch", list(APPLICATIONS))
def test_application_blocks_probes_and_model_unchanged(arch, form, tmp_path):
    keras.backend.clear_session()  # the per-process layer numbering starts afresh
    keras.utils.set_random_seed(1234)
    model, prefix = build(arch, form, tmp_path)
    g = ModelGraph(model)
    keys, notes = discover_blocks(g)
    names = [g.tensors[k].name for k in keys]
    assert_blocks(names, expected_blocks(arch, form, prefix))
    # Structural facts behind the names: every block is 4-D, deeper than the one before.
    assert all(len(g.tensors[k].shape) == 4 for k in keys) and keys == sorted(set(keys))
    if arch == "NASNetMobile":
        # The last block is the ReLU right after the last cell; the others are no cut points.
        last = g.ops[g.tensors[keys[-1]].producer]
        assert [g.tensors[i].name for i in last.inputs] == [prefix + "normal_concat_12"]
        assert not set(keys[:-1]) & set(cut_points(g))
        assert len(notes) == 1 and "15 cell outputs" in notes[0]
    elif arch == "MobileNetV3Small":
        last = g.ops[g.tensors[keys[-1]].producer]
        assert g.tensors[last.inputs[0]].name == prefix + "conv_1_bn"
        assert notes == []
    else:
        assert notes == []
    # fit_probes traces one side model with every block's pooled output (10-30 s for
    # these models), then fits each probe in NumPy; it runs on the in-memory and nested forms. A
    # reloaded model is an ordinary Functional model: building the interpreter
    # (graph replay on the loaded layers) is what differs, and is checked.
    interp, _ = fit_and_check_unchanged(model, fit=form != "reloaded")
    assert interp.block_names == names
    if form != "reloaded":
        check_importance_runs(model, interp, g, keys)


def check_importance_runs(model, interp, g, keys):
    """Permutation importance at a middle block and, where the architecture has
    residual or concatenation blocks, at a layer inside one (not a cut point)."""
    from keras_hybrid_interp import GlobalAnalyzer

    shape = tuple(model.input_shape[1:])
    x = (np.random.default_rng(1).random((4,) + shape) * 255).astype(np.float32)
    before = snapshot(model, x)
    ga = GlobalAnalyzer(interp)
    cuts = set(cut_points(g))
    first, last = keys[0], keys[-1]
    inside = [t.key for t in g.tensors
              if first < t.key < last and len(t.shape) == 4 and t.key not in cuts and t.producer is not None]
    layers = [g.tensors[keys[len(keys) // 2]].name] + ([g.tensors[inside[len(inside) // 2]].name] if inside else [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for layer in layers:
            res = ga.filter_importance(x, None, block=layer, n_repeats=1, groups=[[0], [1], [2]], max_samples=4,
                                       random_state=0)
            assert res.importances.shape == (3, 1) and np.isfinite(res.importances).all()
            assert res.baseline_score == 1.0  # agreement with the model's own predictions
    assert_unchanged(before, snapshot(model, x))


# ----------------------------------------------------------------------
# Other ranks: 1-D CNNs (signals), 3-D CNNs (volumes), Conv1D + LSTM hybrids
# (the rows of docs/ARCHITECTURES.md built in code, smaller)
# ----------------------------------------------------------------------
def resnet1d():
    inp = keras.Input((32, 1))
    x = layers.Conv1D(4, 5, padding="same", activation="relu", name="stem_conv")(inp)
    x = layers.MaxPooling1D(name="stem_pool")(x)
    y = layers.Conv1D(4, 3, padding="same", activation="relu", name="res_conv1")(x)
    y = layers.Conv1D(4, 3, padding="same", name="res_conv2")(y)
    x = layers.Activation("relu", name="res_out")(layers.Add(name="res_add")([x, y]))
    x = layers.SeparableConv1D(6, 3, strides=2, padding="same", activation="relu", name="sep_conv")(x)
    x = layers.Dense(6, name="pointwise")(x)  # a Dense after a Conv1D is a 1-wide convolution
    x = layers.GlobalAveragePooling1D(name="gap")(x)
    return keras.Model(inp, layers.Dense(3, activation="softmax", name="head")(x), name="resnet1d")


def cnn3d():
    inp = keras.Input((8, 8, 8, 1))
    x = layers.Conv3D(3, 3, padding="same", activation="relu", name="conv1")(inp)
    x = layers.MaxPooling3D(name="pool1")(x)
    x = layers.Conv3D(4, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.ops.mean(x, axis=(1, 2, 3))  # the head starts at a mean over every spatial axis
    return keras.Model(inp, layers.Dense(3, activation="softmax", name="head")(x), name="cnn3d")


def conv1d_lstm(bidirectional=False):
    inp = keras.Input((32, 1))
    x = layers.Conv1D(4, 5, padding="same", activation="relu", name="conv1")(inp)
    x = layers.MaxPooling1D(name="pool1")(x)
    x = layers.Conv1D(6, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling1D(name="pool2")(x)
    first = layers.LSTM(4, return_sequences=True, name="lstm1")
    x = (layers.Bidirectional(first, name="bi") if bidirectional else first)(x)
    x = layers.Dense(4, name="after_rnn")(x)  # rank 3 after a convolution, but inside the head
    x = layers.LSTM(4, name="lstm2")(x)
    return keras.Model(inp, layers.Dense(3, activation="softmax", name="head")(x), name="conv1d_lstm")


def image_cnn_reshaped_to_tokens():
    """A 2-D CNN whose map is reshaped to rank 3 (tokens) before the head: no 1-D block."""
    inp = keras.Input((8, 8, 1))
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(inp)
    x = layers.MaxPooling2D(name="pool1")(x)
    x = layers.Reshape((16, 4), name="tokens")(x)
    x = layers.Dense(4, name="token_dense")(x)
    x = layers.GlobalAveragePooling1D()(x)
    return keras.Model(inp, layers.Dense(3, activation="softmax")(x), name="tokens")


@pytest.mark.parametrize("build, expected", [
    (resnet1d, ["stem_pool", "res_out", "pointwise"]),
    (cnn3d, ["pool1", "conv2"]),
    (conv1d_lstm, ["pool1", "pool2"]),
    (lambda: conv1d_lstm(bidirectional=True), ["pool1", "pool2"]),
    (image_cnn_reshaped_to_tokens, ["pool1"]),
], ids=["resnet1d", "cnn3d", "conv1d_lstm", "conv1d_bilstm", "2d_reshaped_to_tokens"])
def test_blocks_of_1d_3d_and_recurrent_hybrids(build, expected):
    m = build()
    names, _ = block_names(m)
    assert names == expected
    g = ModelGraph(m)
    rank = len(g.tensors[g.resolve(expected[0])].shape)
    assert all(len(g.tensors[g.resolve(n)].shape) == rank for n in expected)
    # the LSTM outputs and what follows them are head, never blocks
    assert not any("lstm" in n or n in ("bi", "after_rnn") for n in names)
    fit_and_check_unchanged(m)
