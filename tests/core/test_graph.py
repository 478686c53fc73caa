"""The model-graph layer: flattening, cut points, block discovery, sub-models."""

import numpy as np
import pytest

import keras
from keras import layers, ops

from keras_hybrid_interp.core.blocks import cut_points, discover_blocks, select_blocks
from keras_hybrid_interp.core.graph import ModelGraph

from models import Subclassed, dense_cnn, nested_model, residual_cnn, sequential_cnn, small_cnn


def block_names(model, **kw):
    g = ModelGraph(model, **kw)
    keys, notes = discover_blocks(g)
    return [g.tensors[k].name for k in keys]


def brute_force_cuts(g):
    """Tensors whose removal disconnects every input from every output."""
    n = len(g.tensors)
    cuts = []
    for t in range(n):
        if t in g.input_keys:
            continue
        reach = set(g.input_keys)
        for o in g.ops:
            if any(i in reach for i in o.inputs):
                reach.update(k for k in o.outputs if k != t)
        if not any(k in reach for k in g.output_keys):
            cuts.append(t)
    return cuts


@pytest.mark.parametrize("factory", [small_cnn, residual_cnn, dense_cnn, nested_model,
                                     lambda: residual_cnn(operator_add=True)])
def test_cut_points_match_brute_force(factory):
    g = ModelGraph(factory())
    assert cut_points(g) == brute_force_cuts(g)


def test_vgg16_blocks_are_the_five_pools():
    m = keras.applications.VGG16(weights=None, input_shape=(32, 32, 3), classes=10)
    assert block_names(m) == [f"block{i}_pool" for i in range(1, 6)]


def test_resnet50_blocks_are_stem_pool_and_16_block_outputs():
    m = keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3), classes=10)
    stages = {2: 3, 3: 4, 4: 6, 5: 3}
    expected = ["pool1_pool"] + [f"conv{s}_block{b}_out" for s, n in stages.items() for b in range(1, n + 1)]
    assert block_names(m) == expected


def test_plain_sequential_blocks_are_pools_and_last_conv():
    assert block_names(sequential_cnn()) == ["s_pool1", "s_pool2", "s_relu3"]


def test_residual_block_end_is_after_the_add_activation():
    # The add closes the residual region; the block extends to the ReLU after it.
    assert block_names(residual_cnn()) == ["stem_pool", "res_out", "pool_after"]


def test_operator_merge_counts_as_a_merge():
    names = block_names(residual_cnn(operator_add=True))
    assert names[0] == "stem_pool" and names[1] == "res_out" and len(names) == 3


def test_concatenate_closes_a_region_and_extends_to_the_pool():
    assert block_names(dense_cnn()) == ["pool", "conv_last"]


def test_block_never_inside_a_residual_block():
    g = ModelGraph(residual_cnn())
    keys, _ = discover_blocks(g)
    cuts = set(cut_points(g))
    assert set(keys) <= cuts
    assert g.resolve("res_conv1") not in cuts


def test_nested_backbone_layers_are_addressable_and_equal_inner_outputs():
    m = nested_model()
    g = ModelGraph(m)
    assert block_names(m) == ["backbone/b_pool1", "backbone/b_out", "backbone/b_conv2"]
    x = np.random.default_rng(0).random((3, 16, 16, 3), dtype=np.float32)
    backbone = m.get_layer("backbone")
    inner = keras.Model(backbone.input, backbone.get_layer("b_out").output)(x)
    sub = g.build([g.resolve("backbone/b_out")])
    np.testing.assert_array_equal(ops.convert_to_numpy(sub(x)), ops.convert_to_numpy(inner))
    # the bare inner name resolves too when unique; the backbone name is its output
    assert g.resolve("b_out") == g.resolve("backbone/b_out")
    assert g.resolve("backbone") == g.resolve("backbone/b_conv2")
    assert g.resolve(backbone.get_layer("b_add")) == g.resolve("backbone/b_add")


def test_full_replay_equals_model():
    for m in (small_cnn(), residual_cnn(), dense_cnn(), nested_model()):
        g = ModelGraph(m)
        x = np.random.default_rng(1).random((2,) + tuple(m.input_shape[1:]), dtype=np.float32)
        np.testing.assert_array_equal(ops.convert_to_numpy(g.build(g.output_keys)(x)),
                                      ops.convert_to_numpy(m(x, training=False)))


def test_tail_from_inside_residual_block_equals_full_model():
    m = residual_cnn()
    g = ModelGraph(m)
    k = g.resolve("res_conv1")
    front = g.frontier(k)
    assert [g.tensors[i].name for i in front] == ["res_conv1", "stem_pool"]  # the skip crosses the cut
    head = g.build(front)
    tail = g.build(g.output_keys, inputs=front)
    x = np.random.default_rng(2).random((4, 16, 16, 3), dtype=np.float32)
    np.testing.assert_array_equal(ops.convert_to_numpy(tail(head(x))), ops.convert_to_numpy(m(x)))


def test_sequential_three_ways():
    x = np.random.default_rng(3).random((2, 12, 12, 1), dtype=np.float32)
    with_input = sequential_cnn()
    assert block_names(with_input) == ["s_pool1", "s_pool2", "s_relu3"]
    called = sequential_cnn(with_input=False)
    called(x)
    assert block_names(called) == ["s_pool1", "s_pool2", "s_relu3"]
    never = sequential_cnn(with_input=False)
    with pytest.raises(ValueError, match="input_shape"):
        ModelGraph(never)
    assert block_names(never, input_shape=(12, 12, 1)) == ["s_pool1", "s_pool2", "s_relu3"]


def test_input_shape_must_match_a_built_model():
    with pytest.raises(ValueError, match="does not match"):
        ModelGraph(sequential_cnn(), input_shape=(10, 10, 1))


def test_reloaded_model_has_the_same_blocks(tmp_path):
    m = nested_model()
    path = tmp_path / "m.keras"
    m.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert block_names(loaded) == block_names(m)


def test_subclassed_model_gets_a_type_error_with_the_rewrite_hint():
    m = Subclassed()
    m(np.zeros((1, 8, 8, 1), np.float32))
    with pytest.raises(TypeError, match="functional API"):
        ModelGraph(m)


def test_not_a_model_is_a_type_error():
    with pytest.raises(TypeError, match="keras.Model"):
        ModelGraph("model.keras")


def test_dense_only_model_has_no_block():
    inp = keras.Input((10,))
    m = keras.Model(inp, layers.Dense(3, activation="softmax")(layers.Dense(8)(inp)))
    with pytest.raises(ValueError, match="no convolution: it is a Dense-only") as err:
        discover_blocks(ModelGraph(m))
    assert "1-D, 2-D and 3-D convolutional blocks" in str(err.value)


def test_single_block_is_explained():
    inp = keras.Input((8, 8, 1))
    x = layers.Conv2D(4, 3)(inp)
    out = layers.Dense(2, activation="softmax")(layers.Flatten()(x))
    g = ModelGraph(keras.Model(inp, out))
    keys, notes = discover_blocks(g)
    assert len(keys) == 1 and "Only one block" in notes[0]
    with pytest.warns(UserWarning, match="Only one block"):
        select_blocks(g, "auto")


def test_unknown_name_lists_available_layers():
    g = ModelGraph(small_cnn())
    with pytest.raises(ValueError, match=r"no layer named 'conv9'.*conv1"):
        g.resolve("conv9")


def test_user_blocks_by_name_index_and_object():
    m = small_cnn()
    g = ModelGraph(m)
    keys, names, infos = select_blocks(g, ["pool2", 2, m.get_layer("conv3")])  # model.layers[2] is pool1
    assert names == ["pool1", "pool2", "conv3"]
    assert [b.filters for b in infos] == [8, 16, 16]
    assert infos[0].output_shape == (None, 8, 8, 8)
    assert infos[0].depth < infos[1].depth < infos[2].depth
    with pytest.raises(ValueError, match="not a feature map"):
        select_blocks(g, ["gap"])
    with pytest.raises(ValueError, match="out of range"):
        select_blocks(g, [99])


def test_channels_first_is_refused():
    inp = keras.Input((1, 8, 8))
    x = layers.Conv2D(4, 3, data_format="channels_first")(inp)
    out = layers.Dense(2, activation="softmax")(layers.Flatten()(x))
    with pytest.raises(ValueError, match="channels_first"):
        select_blocks(ModelGraph(keras.Model(inp, out)), "auto")
