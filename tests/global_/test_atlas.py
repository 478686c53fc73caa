"""The filter atlas: top-k examples per filter, the receptive field, the crops, and their plot and report section.

Oracles: a brute-force argsort over the whole small data set's activations (any
batching, arrays and tf.data, planted ties); closed forms of the receptive field of
known conv stacks (strided, dilated, pooling, 1-D/2-D/3-D); the bounding box of the
input pixels that reach each output position, found with one impulse image per pixel
(an exact, slower reference path); the input sliced at the box.
"""

import warnings

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

import keras
from keras import layers

from keras_hybrid_interp import FilterExamples, GlobalAnalyzer, HybridInterpreter, InterpretationWarning, build_report
from keras_hybrid_interp.core.graph import ModelGraph
from keras_hybrid_interp.core.receptive_field import UnsupportedReceptiveField, receptive_field
from keras_hybrid_interp.plotting import plot_filter_examples

from models import residual_cnn, small_cnn


# ----------------------------------------------------------------------
# Top-k against brute force
# ----------------------------------------------------------------------
def _activations(model, name, x):
    side = keras.Model(model.inputs, model.get_layer(name).output)
    return np.asarray(side.predict(x, verbose=0), dtype=np.float64)


def _brute_force(acts, filters, k):
    """Per filter: the k samples of largest spatial maximum (ties: earlier sample), their argmax positions."""
    n, c = acts.shape[0], acts.shape[-1]
    flat = acts.reshape(n, -1, c)
    mx = flat.max(axis=1)
    out_idx, out_loc = [], []
    for f in filters:
        order = np.lexsort((np.arange(n), -mx[:, f]))[:k]  # primary: -value; ties: sample index
        out_idx.append(order)
        out_loc.append(np.stack(np.unravel_index(flat[order, :, f].argmax(axis=1), acts.shape[1:-1]), axis=-1))
    return np.array(out_idx), mx, np.array(out_loc)


@pytest.fixture(scope="module")
def cnn_data():
    keras.utils.set_random_seed(3)
    model = small_cnn(classes=3)
    rng = np.random.default_rng(3)
    return model, rng.random((26, 16, 16, 1), dtype=np.float32)


@pytest.mark.parametrize("batch_size", [1, 5, 26, 64])
@pytest.mark.parametrize("filters", [None, [9, 2, 15]])
def test_top_k_equals_brute_force_argsort_across_batches(cnn_data, batch_size, filters, monkeypatch):
    from keras_hybrid_interp.global_ import atlas as _atlas

    if batch_size == 5:  # the maxima found a sample at a time within each batch (a large map's path)
        monkeypatch.setattr(_atlas, "MAXIMA_CHUNK_BYTES", 1)
    model, x = cnn_data
    ga = GlobalAnalyzer(model)
    ex = ga.filter_examples(x, block="conv2", filters=filters, top_k=4, batch_size=batch_size)
    acts = _activations(model, "conv2", x)
    chosen = range(16) if filters is None else filters
    idx, mx, loc = _brute_force(acts, chosen, 4)
    np.testing.assert_array_equal(ex.filters, np.asarray(chosen))
    np.testing.assert_array_equal(ex.indices, idx)
    np.testing.assert_allclose(ex.values, np.take_along_axis(mx.T[list(chosen)], idx, axis=1), rtol=1e-6)
    np.testing.assert_array_equal(ex.locations, loc)
    assert ex.n_samples == len(x) and ex.top_k == 4


def _integer_cnn():
    """Integer kernels, no bias: on integer images every activation is an exact float32 integer (exact ties)."""
    inp = keras.Input((6, 6, 1))
    h = layers.Conv2D(3, 3, padding="same", activation="relu", use_bias=False, name="conv")(inp)
    model = keras.Model(inp, layers.Dense(2, activation="softmax")(layers.GlobalAveragePooling2D()(h)))
    kernel = np.random.default_rng(0).integers(-1, 2, (3, 3, 1, 3)).astype(np.float32)
    kernel[1, 1, 0, :] = 1.0
    model.get_layer("conv").set_weights([kernel])
    return model


@pytest.mark.parametrize("batch_size", [1, 4, 7, 40])
def test_ties_go_to_the_earlier_sample(batch_size):
    model = _integer_cnn()
    x = np.random.default_rng(1).integers(0, 3, (30, 6, 6, 1)).astype(np.float32)
    acts = _activations(model, "conv", x)
    mx = acts.reshape(30, -1, 3).max(axis=1)
    assert all(len(np.unique(mx[:, f])) < 15 for f in range(3))  # many ties
    ex = GlobalAnalyzer(model, blocks=["conv"]).filter_examples(x, block="conv", top_k=12, batch_size=batch_size)
    idx, mx, loc = _brute_force(acts, range(3), 12)
    np.testing.assert_array_equal(ex.indices, idx)
    np.testing.assert_array_equal(ex.values, np.take_along_axis(mx.T, idx, axis=1))
    np.testing.assert_array_equal(ex.locations, loc)
    for f in range(3):  # equal values appear in sample order
        for r in range(11):
            if ex.values[f, r] == ex.values[f, r + 1]:
                assert ex.indices[f, r] < ex.indices[f, r + 1]


@pytest.mark.parametrize("batch_size", [3, 40])
def test_filters_with_the_same_activation_on_every_sample_are_flagged(batch_size):
    model = _integer_cnn()
    kernel = model.get_layer("conv").get_weights()[0]
    kernel[..., 0] = 0.0  # filter 0: dead (0 everywhere after the ReLU)
    kernel[..., 2] = 0.0
    kernel[1, 1, 0, 2] = 1.0  # filter 2: the pixel itself, whose maximum is 2 on every image below
    model.get_layer("conv").set_weights([kernel])
    x = np.random.default_rng(1).integers(0, 3, (30, 6, 6, 1)).astype(np.float32)
    x[:, 0, 0, 0] = 2.0
    mx = _activations(model, "conv", x).reshape(30, -1, 3).max(axis=1)
    want = np.flatnonzero(np.ptp(mx, axis=0) == 0)  # oracle: the brute-force spread of each filter's maxima
    np.testing.assert_array_equal(want, [0, 2])
    with pytest.warns(InterpretationWarning, match=r"filter\(s\) \[0, 2\] reach the same maximum.*30 samples"):
        ex = GlobalAnalyzer(model, blocks=["conv"]).filter_examples(x, block="conv", top_k=5, batch_size=batch_size)
    np.testing.assert_array_equal(ex.constant_filters, want)
    np.testing.assert_array_equal(ex.indices[want], np.tile(np.arange(5), (2, 1)))  # stream order, no ranking
    frame = ex.to_frame()
    assert frame.groupby("filter")["constant"].all().to_dict() == {0: True, 1: False, 2: True}
    np.testing.assert_array_equal(ex.select([2, 1]).constant_filters, [2])
    fig = ex.plot()
    labels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert labels == ["filter 0\n(all tied:\nno ranking)", "filter 1", "filter 2\n(all tied:\nno ranking)"]
    import matplotlib.pyplot as plt

    plt.close(fig)
    with warnings.catch_warnings():  # a varied filter alone: no warning, nothing flagged
        warnings.simplefilter("error", InterpretationWarning)
        one = GlobalAnalyzer(model, blocks=["conv"]).filter_examples(x, block="conv", filters=[1], top_k=5)
    assert one.constant_filters.size == 0


def test_the_report_path_warns_only_about_kept_filters_it_has_not_reported():
    from keras_hybrid_interp.global_.atlas import examples_reducer, examples_result

    model = _integer_cnn()
    kernel = model.get_layer("conv").get_weights()[0]
    kernel[..., 0] = 0.0  # filter 0: dead
    kernel[..., 2] = 0.0
    kernel[1, 1, 0, 2] = 1.0  # filter 2: its maximum is 2 on every image below
    model.get_layer("conv").set_weights([kernel])
    x = np.random.default_rng(1).integers(0, 3, (30, 6, 6, 1)).astype(np.float32)
    x[:, 0, 0, 0] = 2.0
    ga = GlobalAnalyzer(model, blocks=["conv"])
    red = examples_reducer(ga.graph, ga.block_keys[0], "conv", k=3)
    ga._run(ga._stream(x), [red])

    def caught(**kw):
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            ex = examples_result(red, "conv", **kw)
        return ex, [str(w.message) for w in got if issubclass(w.category, InterpretationWarning)]

    ex, msgs = caught(keep=[1, 0], known_dead=[0])  # the dead one is reported elsewhere; 2 is not shown
    np.testing.assert_array_equal(ex.filters, [1, 0])
    np.testing.assert_array_equal(ex.constant_filters, [0])  # still listed in the result
    assert msgs == []
    ex, msgs = caught(keep=[2, 0], known_dead=[0])
    assert len(msgs) == 1 and "filter(s) [2] reach the same maximum" in msgs[0]
    ex, msgs = caught()
    assert len(msgs) == 1 and "filter(s) [0, 2] reach the same maximum" in msgs[0]


def test_top_k_on_tf_data_with_labels_and_chosen_filters(cnn_data):
    tf = pytest.importorskip("tensorflow")
    model, x = cnn_data
    y = np.arange(len(x)) % 3
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(6)
    ex = GlobalAnalyzer(model).filter_examples(ds, block="conv3", filters=[7, 2, 11], top_k=3)
    acts = _activations(model, "conv3", x)
    idx, mx, loc = _brute_force(acts, [7, 2, 11], 3)
    np.testing.assert_array_equal(ex.filters, [7, 2, 11])
    np.testing.assert_array_equal(ex.indices, idx)
    np.testing.assert_array_equal(ex.locations, loc)
    # the same from arrays, and from a tf.data stream cut by max_samples
    ex2 = GlobalAnalyzer(model).filter_examples(x, block="conv3", filters=[7, 2, 11], top_k=3, batch_size=4)
    np.testing.assert_array_equal(ex2.indices, ex.indices)
    ex3 = GlobalAnalyzer(model).filter_examples(ds, block="conv3", filters=7, top_k=2, max_samples=10)
    idx3, _, _ = _brute_force(acts[:10], [7], 2)
    np.testing.assert_array_equal(ex3.indices, idx3)
    assert ex3.n_samples == 10


def test_k_larger_than_the_data_keeps_every_sample(cnn_data):
    model, x = cnn_data
    ex = GlobalAnalyzer(model).filter_examples(x[:5], block="conv1", top_k=9, batch_size=2)
    assert ex.indices.shape == (8, 5)
    assert all(sorted(row) == [0, 1, 2, 3, 4] for row in ex.indices.tolist())


def test_memory_is_k_per_filter_not_the_data(cnn_data):
    from keras_hybrid_interp.core import data_pass as _pass
    from keras_hybrid_interp.global_.atlas import examples_reducer

    model, x = cnn_data
    ga = GlobalAnalyzer(model)
    key, name = ga._key("conv3")
    red = examples_reducer(ga.graph, key, name, k=3)
    sizes = []

    class Watch:
        taps = ()

        def update(self, batch):
            sizes.append((red.values.shape, None if red.crops is None else red.crops.shape))

    _pass.run(ga.graph, ga._stream(x, batch_size=2), [red, Watch()])
    assert max(s[0][0] for s in sizes) == 3  # never more than k rows per filter
    assert red.crops.shape == (3, 16, 16, 16, 1)  # k x F x window x channels


# ----------------------------------------------------------------------
# Crops
# ----------------------------------------------------------------------
def test_each_crop_is_the_input_sliced_at_its_box():
    keras.utils.set_random_seed(0)
    inp = keras.Input((20, 18, 3))
    h = layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inp)
    h = layers.Conv2D(5, 3, strides=2, padding="same", activation="relu", name="c2")(h)
    model = keras.Model(inp, layers.Dense(2, activation="softmax")(layers.GlobalAveragePooling2D()(h)))
    x = np.random.default_rng(0).random((13, 20, 18, 3), dtype=np.float32)
    ex = GlobalAnalyzer(model, blocks=["c2"]).filter_examples(x, block="c2", top_k=5, batch_size=4)
    rf = ex.receptive_field
    # 3x3 "same": r 3, start -1; then 3x3 stride 2 "same" on an even size pads 0 before: r 3 + 2, jump 2
    assert (rf.size, rf.jump, rf.start) == ((5, 5), (2, 2), (-1, -1))
    assert ex.crops.shape == (5, 5, 5, 5, 3)
    for f in range(5):
        for r in range(5):
            (a0, a1), (b0, b1) = ex.boxes[f, r]
            li, lj = ex.locations[f, r]
            # the box is the field at the location, clipped to the image
            assert (a0, a1, b0, b1) == (max(-1 + 2 * li, 0), min(-1 + 2 * li + 5, 20),
                                        max(-1 + 2 * lj, 0), min(-1 + 2 * lj + 5, 18))
            want = x[ex.indices[f, r], a0:a1, b0:b1]
            np.testing.assert_array_equal(ex.crop(f, r), want)
            window = ex.crops[f, r]
            # in the window, the box's content sits where the field puts it; the rest (outside the image) is NaN
            oi, oj = -1 + 2 * li, -1 + 2 * lj
            np.testing.assert_array_equal(window[a0 - oi:a1 - oi, b0 - oj:b1 - oj], want)
            assert np.isnan(window).sum() == (25 - (a1 - a0) * (b1 - b0)) * 3


def test_to_frame_is_tidy_and_select_keeps_rows(cnn_data):
    model, x = cnn_data
    ex = GlobalAnalyzer(model).filter_examples(x, block="conv2", filters=[3, 1], top_k=2)
    df = ex.to_frame()
    assert list(df.columns) == ["block", "filter", "rank", "sample", "value", "location", "box", "constant"]
    assert df["filter"].tolist() == [3, 3, 1, 1] and df["rank"].tolist() == [0, 1, 0, 1]
    assert df["sample"].tolist() == ex.indices.ravel().tolist()
    assert df["location"].iloc[2] == tuple(ex.locations[1, 0].tolist())
    assert df["box"].iloc[1] == tuple(map(tuple, ex.boxes[0, 1].tolist()))
    sub = ex.select([1])
    np.testing.assert_array_equal(sub.indices, ex.indices[1:])
    np.testing.assert_array_equal(sub.crops, ex.crops[1:])
    text = repr(ex)
    assert "\n" not in text and len(text) <= 200
    assert isinstance(ex, FilterExamples)


# ----------------------------------------------------------------------
# Receptive field: closed forms and the impulse oracle
# ----------------------------------------------------------------------
def _rf(model, name):
    g = ModelGraph(model)
    rf = receptive_field(g, g.resolve(name))
    return rf.size, rf.jump, rf.start


def _stack(input_shape, specs, conv=layers.Conv2D):
    inp = keras.Input(input_shape)
    h = inp
    for i, spec in enumerate(specs):
        kind, kw = spec
        if kind == "conv":
            h = conv(2, name=f"l{i}", **kw)(h)
        else:
            h = kind(name=f"l{i}", **kw)(h)
    return keras.Model(inp, h), f"l{len(specs) - 1}"


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_receptive_field_of_valid_3x3_stacks_is_2L_plus_1(depth):
    model, last = _stack((32, 32, 1), [("conv", {"kernel_size": 3})] * depth)
    assert _rf(model, last) == ((2 * depth + 1,) * 2, (1, 1), (0, 0))


@pytest.mark.parametrize("depth,k,s", [(2, 3, 2), (3, 3, 2), (3, 5, 3)])
def test_receptive_field_of_strided_stacks(depth, k, s):
    # r_L = 1 + (k - 1) (s^L - 1) / (s - 1), jump s^L, start 0 ("valid")
    model, last = _stack((128, 128, 1), [("conv", {"kernel_size": k, "strides": s})] * depth)
    r = 1 + (k - 1) * (s ** depth - 1) // (s - 1)
    assert _rf(model, last) == ((r, r), (s ** depth,) * 2, (0, 0))


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_receptive_field_of_dilated_stacks_doubles(depth):
    # 3x3 convolutions with dilations 1, 2, 4, ...: r = 2^(L+1) - 1 (WaveNet), start -(r - 1) / 2 with "same"
    specs = [("conv", {"kernel_size": 3, "dilation_rate": 2 ** i, "padding": "same"}) for i in range(depth)]
    model, last = _stack((40, 40, 1), specs)
    r = 2 ** (depth + 1) - 1
    assert _rf(model, last) == ((r, r), (1, 1), (-(r - 1) // 2,) * 2)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_receptive_field_of_conv_pool_stages(depth):
    # (3x3 "same" conv, 2x2 max pool) x L: r = 3 * 2^L - 2, jump 2^L, start -(2^L - 1)
    specs = []
    for _ in range(depth):
        specs += [("conv", {"kernel_size": 3, "padding": "same"}), (layers.MaxPooling2D, {})]
    model, last = _stack((32, 32, 1), specs)
    assert _rf(model, last) == ((3 * 2 ** depth - 2,) * 2, (2 ** depth,) * 2, (-(2 ** depth - 1),) * 2)


def test_receptive_field_per_axis_and_in_1d_and_3d():
    model, last = _stack((30, 30, 1), [("conv", {"kernel_size": (3, 5), "strides": (1, 2)}),
                                       ("conv", {"kernel_size": (1, 3), "dilation_rate": (1, 2)})])
    # axis 0: 3 then 1 -> r 3, j 1; axis 1: 5 then dilated 3 at jump 2 -> 5 + 2*2*2 = 13, j 2
    assert _rf(model, last) == ((3, 13), (1, 2), (0, 0))
    model, last = _stack((64, 1), [("conv", {"kernel_size": 3, "strides": 2})] * 3, conv=layers.Conv1D)
    assert _rf(model, last) == ((15,), (8,), (0,))
    model, last = _stack((16, 16, 16, 1), [("conv", {"kernel_size": 3, "padding": "same"}),
                                           (layers.MaxPooling3D, {})], conv=layers.Conv3D)
    assert _rf(model, last) == ((4, 4, 4), (2, 2, 2), (-1, -1, -1))


def test_receptive_field_where_paths_merge_is_the_larger_extent():
    model = residual_cnn()  # stem 3x3, pool, [res_conv1 3x3, res_conv2 3x3] + identity, ...
    stem = _rf(model, "stem_pool")
    assert stem == ((4, 4), (2, 2), (-1, -1))
    # the residual branch adds 2 * 2 * 2 on each side of the identity's field: it is the larger extent
    assert _rf(model, "res_add") == ((12, 12), (2, 2), (-5, -5))
    assert _rf(model, "res_add") == _rf(model, "res_conv2")


def _impulse_boxes(model, shape):
    """Bounding box of the input pixels that reach each output position (one impulse image per pixel)."""
    n = int(np.prod(shape))
    x = np.zeros((n, *shape, 1), np.float32)
    x[(np.arange(n), *np.unravel_index(np.arange(n), shape), 0)] = 1.0
    y = np.asarray(model.predict(x, batch_size=256, verbose=0))[..., 0] > 0  # (n, *out)
    boxes = {}
    for loc in np.ndindex(*y.shape[1:]):
        pix = np.array(np.unravel_index(np.flatnonzero(y[(slice(None), *loc)]), shape))
        boxes[loc] = tuple((int(p.min()), int(p.max()) + 1) for p in pix)
    return boxes


def test_clipped_boxes_equal_the_pixels_that_reach_each_position():
    # Positive weights, no bias, no activation: a position is > 0 exactly when an impulse lies in its field.
    ones = {"use_bias": False, "kernel_initializer": "ones"}
    inp = keras.Input((13, 11, 1))
    h = layers.Conv2D(1, 3, padding="same", **ones)(inp)
    h = layers.Conv2D(1, 3, strides=2, padding="same", **ones)(h)  # odd sizes: Keras pads unevenly
    h = layers.MaxPooling2D(2, padding="same")(h)
    b = layers.Conv2D(1, 3, dilation_rate=2, padding="same", **ones)(h)
    h = layers.Add()([h, b])
    h = layers.ZeroPadding2D(((1, 0), (0, 2)))(h)
    h = layers.Conv2D(1, (2, 3), strides=(1, 2), padding="valid", name="out", **ones)(h)
    model = keras.Model(inp, h)
    g = ModelGraph(model)
    rf = receptive_field(g, g.resolve("out"))
    boxes = _impulse_boxes(model, (13, 11))
    assert len(boxes) == int(np.prod(g.tensors[g.resolve("out")].shape[1:3]))
    for loc, box in boxes.items():
        assert rf.box(loc) == box, loc


def test_unknown_spatial_mappings_fall_back_to_the_whole_input_with_a_warning():
    inp = keras.Input((8, 8, 1))
    h = layers.Conv2D(3, 3, padding="same", name="c")(inp)
    h = layers.UpSampling2D(name="up")(h)
    h = layers.Conv2D(2, 3, padding="same", name="after")(h)
    model = keras.Model(inp, layers.Dense(2, activation="softmax")(layers.GlobalAveragePooling2D()(h)))
    g = ModelGraph(model)
    with pytest.raises(UnsupportedReceptiveField, match="up"):
        receptive_field(g, g.resolve("after"))
    x = np.random.default_rng(0).random((6, 8, 8, 1), dtype=np.float32)
    with pytest.warns(InterpretationWarning, match="whole input"):
        ex = GlobalAnalyzer(model, blocks=["c"]).filter_examples(x, block="after", top_k=2)
    assert ex.receptive_field.whole
    assert (ex.boxes == np.array([[0, 8], [0, 8]])).all()
    np.testing.assert_array_equal(ex.crop(0, 0), x[ex.indices[0, 0]])


# ----------------------------------------------------------------------
# Bad arguments
# ----------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    ({"filters": [0, 16]}, r"`filters` \[16\] out of range.*16 filters"),
    ({"filters": [-1]}, "`filters`"),
    ({"filters": [1, 1]}, "must not repeat"),
    ({"filters": ["a"]}, "`filters`"),
    ({"filters": []}, "`filters`"),
    ({"top_k": 0}, "`top_k` must be a positive int"),
    ({"top_k": 2.5}, "`top_k`"),
    ({"top_k": True}, "`top_k`"),
])
def test_bad_arguments_name_the_argument(cnn_data, kwargs, match):
    model, x = cnn_data
    with pytest.raises(ValueError, match=match):
        GlobalAnalyzer(model).filter_examples(x, block="conv3", **kwargs)


def test_bad_block_names_the_argument(cnn_data):
    model, x = cnn_data
    with pytest.raises(ValueError, match="`block`.*no layer named 'conv9'"):
        GlobalAnalyzer(model).filter_examples(x, block="conv9")
    with pytest.raises(TypeError, match="`block` is required"):
        GlobalAnalyzer(model).filter_examples(x, block=None)


def test_crop_and_select_reject_unknown_filters(cnn_data):
    model, x = cnn_data
    ex = GlobalAnalyzer(model).filter_examples(x, block="conv3", filters=[2, 5], top_k=2)
    with pytest.raises(ValueError, match="`filter` must be one of the analysed filters"):
        ex.crop(3)
    with pytest.raises(ValueError, match="`rank`"):
        ex.crop(2, 2)
    with pytest.raises(ValueError, match="`filters` must hold filters of the examples"):
        plot_filter_examples(ex, filters=[4])


# ----------------------------------------------------------------------
# Plot and report
# ----------------------------------------------------------------------
def test_plot_draws_each_crop_with_its_value_in_the_title(cnn_data):
    from matplotlib.figure import Figure

    model, x = cnn_data
    ex = GlobalAnalyzer(model).filter_examples(x, block="conv2", filters=[4, 0, 9], top_k=3)
    fig = ex.plot(filters=[0, 9], k=2)
    assert isinstance(fig, Figure)
    axes = np.array(fig.axes).reshape(2, 2)
    for i, f in enumerate([0, 9]):
        row = list(ex.filters).index(f)
        assert axes[i, 0].get_ylabel() == f"filter {f}"
        for r in range(2):
            ax = axes[i, r]
            assert ax.get_title() == f"{ex.values[row, r]:.3g}"
            assert ax.get_xlabel() == f"#{ex.indices[row, r]}"
            drawn = np.ma.filled(ax.images[0].get_array().astype(float), np.nan)
            np.testing.assert_array_equal(drawn, ex.crops[row, r][..., 0])
    import matplotlib.pyplot as plt

    given = plt.figure()
    assert plot_filter_examples(ex, fig=given) is given and len(given.axes) == 9


def test_report_shows_the_atlas_of_the_most_important_filters_in_its_one_pass(monkeypatch):
    from keras_hybrid_interp.core import data_pass as _pass

    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    x = rng.random((50, 16, 16, 1), dtype=np.float32)
    y = np.arange(50) % 4
    interp = HybridInterpreter(small_cnn(classes=4)).fit_probes(x[:30], y[:30], verbose=0)
    calls = []
    real_run = _pass.run
    monkeypatch.setattr(_pass, "run", lambda *a, **k: calls.append(1) or real_run(*a, **k))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = build_report(interp, x[30:], y[30:], block="conv3", examples=0, n_repeats=2,
                               atlas_filters=3, top_k=4)
    assert len(calls) == 1
    monkeypatch.setattr(_pass, "run", real_run)
    section = next(s for s in report.sections if s.title.startswith("Filter atlas"))
    assert len(section.figures) == 1
    table = section.tables[0][2]
    imp_table = next(t for s in report.sections for _, c, t in s.tables if c == "Importance per filter and repeat")
    mean = imp_table.groupby("filter")["importance"].mean()
    top = np.argsort(-mean.to_numpy(), kind="stable")[:3]
    assert table["filter"].drop_duplicates().tolist() == top.tolist()
    ga = GlobalAnalyzer(interp)
    alone = ga.filter_examples(x[30:], block="conv3", filters=top.tolist(), top_k=4)
    pd.testing.assert_frame_equal(table.reset_index(drop=True), alone.to_frame())
