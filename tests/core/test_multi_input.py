"""Models with several inputs: an image plus a tabular vector, and two image views.

``x`` is a list or a dict of arrays (as ``model.predict`` takes it), or a dataset
yielding ((x1, x2), y) or ({name: x}, y). Blocks are found on every convolutional
branch and named by branch; a tabular input gets none. Every number is checked
against a hand-written reference that calls the model's own layers on NumPy arrays.
"""

import numpy as np
import pytest

import keras

from keras_hybrid_interp import GlobalAnalyzer, HybridInterpreter
from keras_hybrid_interp.core.data import model_stream
from keras_hybrid_interp.core.graph import ModelGraph
from keras_hybrid_interp.core.perturbation import job_permutation

from models import assert_same_node_lists, assert_unchanged, node_lists, snapshot

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def image_tabular(seed=0):
    """An image (12x12x1) and (age, sex), merged after the image branch's global pooling."""
    keras.utils.set_random_seed(seed)
    img = keras.Input((12, 12, 1), name="image")
    tab = keras.Input((2,), name="age_sex")
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(img)
    h = keras.layers.MaxPooling2D(name="p1")(h)
    h = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="c2")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    t = keras.layers.Dense(3, activation="relu", name="tab_dense")(tab)
    z = keras.layers.Concatenate(name="merge")([h, t])
    out = keras.layers.Dense(3, activation="softmax", name="out")(z)
    return keras.Model([img, tab], out, name="img_tab")


def two_view(seed=0, as_dict=False):
    """Two views (cc, mlo), each a conv branch; their maps concatenated before the head."""
    keras.utils.set_random_seed(seed)
    a = keras.Input((12, 12, 1), name="cc")
    b = keras.Input((12, 12, 1), name="mlo")

    def branch(x, p):
        x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name=p + "_c1")(x)
        x = keras.layers.MaxPooling2D(name=p + "_p1")(x)
        return keras.layers.Conv2D(5, 3, padding="same", activation="relu", name=p + "_c2")(x)

    z = keras.layers.Concatenate(name="merge")([branch(a, "cc"), branch(b, "mlo")])
    z = keras.layers.GlobalAveragePooling2D(name="gap")(z)
    out = keras.layers.Dense(2, activation="softmax", name="out")(z)
    return keras.Model({"cc": a, "mlo": b} if as_dict else [a, b], out, name="two_view")


def np_(t):
    return np.asarray(keras.ops.convert_to_numpy(t), dtype=np.float64)


def layer(model, name, *args):
    """The user's layer called eagerly on NumPy arrays (no node is recorded)."""
    return np_(model.get_layer(name)(*[keras.ops.convert_to_tensor(np.asarray(a, np.float32)) for a in args]))


def img_tab_data(n=48, seed=1):
    rng = np.random.default_rng(seed)
    img = rng.normal(size=(n, 12, 12, 1)).astype("float32")
    tab = rng.normal(size=(n, 2)).astype("float32")
    return img, tab


def view_data(n=48, seed=2):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 12, 12, 1)).astype("float32"), rng.normal(size=(n, 12, 12, 1)).astype("float32")


def noisy_labels(model, x, classes, seed=0, flip=0.3):
    rng = np.random.default_rng(seed)
    y = np.argmax(np_(model(x, training=False)), axis=1)
    f = rng.random(len(y)) < flip
    y[f] = rng.integers(0, classes, f.sum())
    return y


def neg_loss(p, y):
    return float(np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-7, 1))))


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


# ----------------------------------------------------------------------
# Blocks per branch
# ----------------------------------------------------------------------
def test_blocks_on_every_branch_named_by_branch_and_none_on_the_tabular_input():
    interp = HybridInterpreter(image_tabular())
    frame = interp.blocks.to_frame()
    assert list(frame["block"]) == ["p1", "c2"]
    assert list(frame["branch"]) == ["image", "image"]
    assert all(b.image_input == "image" for b in interp.blocks)

    ga = GlobalAnalyzer(two_view(as_dict=True))
    by_branch = {b.name: b.branch for b in ga.blocks}
    assert by_branch == {"cc_p1": "cc", "cc_c2": "cc", "mlo_p1": "mlo", "mlo_c2": "mlo", "merge": "cc+mlo"}
    assert {b.name: b.image_input for b in ga.blocks}["mlo_c2"] == "mlo"
    # A single-input model's frame is as it was: no branch column.
    single = keras.Sequential([keras.Input((12, 12, 1)), keras.layers.Conv2D(3, 3), keras.layers.MaxPooling2D(),
                               keras.layers.Conv2D(3, 3), keras.layers.GlobalAveragePooling2D(),
                               keras.layers.Dense(2, activation="softmax")])
    assert "branch" not in HybridInterpreter(single).blocks.to_frame().columns
    assert HybridInterpreter(single).blocks[0].branch is None


def test_a_tabular_only_branch_is_never_an_image():
    # A rank-3 tabular-like input would be a signal; a rank-2 one never is, even when it is the first input.
    keras.utils.set_random_seed(0)
    tab = keras.Input((4,), name="tab")
    img = keras.Input((10, 10, 2), name="img")
    h = keras.layers.Conv2D(3, 3, activation="relu", name="conv")(img)
    h = keras.layers.GlobalMaxPooling2D(name="gmp")(h)
    z = keras.layers.Concatenate()([keras.layers.Dense(2, name="td")(tab), h])
    model = keras.Model([tab, img], keras.layers.Dense(2, activation="softmax")(z))
    g = ModelGraph(model)
    assert g.input_names == ["tab", "img"]
    ga = GlobalAnalyzer(model)
    assert [b.name for b in ga.blocks] == ["conv"]
    assert ga.blocks[0].branch == "img"


# ----------------------------------------------------------------------
# The stream: lists, dicts, tf.data, slicing, checks
# ----------------------------------------------------------------------
class _Pairs(keras.utils.PyDataset):
    def __init__(self, img, tab, y, bs):
        super().__init__()
        self.img, self.tab, self.y, self.bs = img, tab, y, bs

    def __len__(self):
        return int(np.ceil(len(self.y) / self.bs))

    def __getitem__(self, i):
        s = slice(i * self.bs, (i + 1) * self.bs)
        return {"image": self.img[s], "age_sex": self.tab[s]}, self.y[s]


def test_stream_takes_lists_dicts_and_tf_data_in_model_input_order():
    tf = pytest.importorskip("tensorflow")
    model = image_tabular()
    g = ModelGraph(model)
    img, tab = img_tab_data(n=10)
    y = np.arange(10) % 3
    want = [(img[s:s + 4], tab[s:s + 4], y[s:s + 4]) for s in (0, 4)] + [(img[8:9], tab[8:9], y[8:9])]

    def batches(x, yy=None, **kw):
        return [(b[0], b[1], yb) for b, yb in model_stream(g, x, yy, batch_size=4, max_samples=9, **kw)]

    dict_rev = {"age_sex": tab, "image": img}  # key order does not matter
    ds_tuple = tf.data.Dataset.from_tensor_slices(((img, tab), y)).batch(4)
    ds_dict = tf.data.Dataset.from_tensor_slices((dict_rev, y)).batch(4)
    for got in (batches([img, tab], y), batches((img, tab), y), batches(dict_rev, y), batches(ds_tuple),
                batches(ds_dict), batches(_Pairs(img, tab, y, 4))):
        assert len(got) == len(want)
        for (a, b, c), (ea, eb, ec) in zip(got, want):
            np.testing.assert_array_equal(a, ea)
            np.testing.assert_array_equal(b, eb)
            np.testing.assert_array_equal(c, ec)
    # steps= counts batches
    assert len(batches([img, tab], y, steps=1)) == 1


@pytest.mark.parametrize("bad, err, words", [
    (lambda img, tab: [img], ValueError, ["`x`", "2 arrays", "'image'", "'age_sex'", "list of 1"]),
    (lambda img, tab: {"image": img}, ValueError, ["`x`", "'age_sex'", "without"]),
    (lambda img, tab: {"image": img, "age_sex": tab, "sex": tab}, ValueError, ["`x`", "'sex'"]),
    (lambda img, tab: [img, tab[:-1]], ValueError, ["same number of samples", "input 'image'", "input 'age_sex'",
                                                     "12", "11"]),
    (lambda img, tab: [img, tab[:, :1]], ValueError, ["`x[1] (input 'age_sex')`", "(1,)", "(2,)"]),
    (lambda img, tab: {"image": img, "age_sex": tab[:, :, None]}, ValueError, ["`x['age_sex']`", "rank 2"]),
    (lambda img, tab: [img[..., 0], tab], ValueError, ["`x[0] (input 'image')`", "channel axis"]),
    (lambda img, tab: [img, np.where(np.arange(2) == 0, np.nan, tab)], ValueError, ["input 'age_sex'", "NaN"]),
    (lambda img, tab: img, TypeError, ["`x`", "2 inputs", "list of 2 arrays", "dict"]),
])
def test_bad_inputs_name_the_argument_and_the_input(bad, err, words):
    img, tab = img_tab_data(n=12)
    ga = GlobalAnalyzer(image_tabular())
    with pytest.raises(err) as info:
        ga.filter_class_association(bad(img, tab), np.arange(12) % 3, block="c2")
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_bad_dataset_elements_and_labels():
    tf = pytest.importorskip("tensorflow")
    img, tab = img_tab_data(n=12)
    ga = GlobalAnalyzer(image_tabular())
    flat = tf.data.Dataset.from_tensor_slices((img, tab)).batch(4)  # (x1, x2): read as (x, y), x one array
    with pytest.raises(ValueError, match=r"`x`: the model has 2 inputs \['image', 'age_sex'\].*\(\(x1, x2"):
        ga.filter_class_association(flat, block="c2")
    with pytest.raises(ValueError, match="`y` has 11 labels but `x` has 12 samples"):
        ga.filter_class_association([img, tab], np.arange(11) % 3, block="c2")
    bad = tf.data.Dataset.from_tensor_slices(({"image": img, "age": tab}, np.arange(12) % 3)).batch(4)
    with pytest.raises(ValueError, match=r"`x` \(batch 0\) is a dict without the model input\(s\) \['age_sex'\]"):
        ga.filter_class_association(bad, block="c2")


# ----------------------------------------------------------------------
# Probes against scikit-learn on hand-pooled block features
# ----------------------------------------------------------------------
def test_probes_and_layer_table_match_logistic_regression_on_each_branch():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = two_view(as_dict=True)
    cc, mlo = view_data(n=80, seed=4)
    # Planted: class 1 brightens the mlo view only, so mlo's blocks see it and cc's do not.
    y = np.arange(80) % 2
    mlo[y == 1] += 1.0
    interp = HybridInterpreter(model, blocks=["cc_c2", "mlo_c2"])
    interp.fit_probes({"cc": cc, "mlo": mlo}, y, verbose=0, batch_size=32)
    table = interp.evaluate_layers([cc, mlo], y).to_frame().set_index("block")
    probs = interp.layer_predictions({"mlo": mlo, "cc": cc}).probabilities
    for i, name in enumerate(["cc_c2", "mlo_c2"]):
        feats = np_(keras.Model(model.inputs, model.get_layer(name).output)({"cc": cc, "mlo": mlo})).mean(axis=(1, 2))
        lr = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, tol=1e-10, max_iter=20000)).fit(feats, y)
        np.testing.assert_allclose(probs[i], lr.predict_proba(feats), atol=5e-3)
        assert table.loc[name, "accuracy"] == pytest.approx(lr.score(feats, y), abs=1e-9 + 1 / 80)
    assert table.loc["mlo_c2", "accuracy"] > table.loc["cc_c2", "accuracy"]  # the planted view wins


# ----------------------------------------------------------------------
# Importance on a block of each branch against a hand-written replay
# ----------------------------------------------------------------------
def _two_view_tail(model, cc, mlo, block, maps):
    """The model's output after ``block`` (a map of the cc or mlo branch), recomputed by hand."""
    if block == "mlo_p1":
        a_cc = np_(keras.Model(model.inputs, model.get_layer("cc_c2").output)([cc, mlo]))
        a_mlo = layer(model, "mlo_c2", maps)
    elif block == "cc_c2":
        a_cc, a_mlo = maps, np_(keras.Model(model.inputs, model.get_layer("mlo_c2").output)([cc, mlo]))
    else:  # pragma: no cover
        raise AssertionError(block)
    pooled = np.concatenate([a_cc, a_mlo], axis=-1).mean(axis=(1, 2))
    w, b = [np.asarray(v, np.float64) for v in model.get_layer("out").get_weights()]
    return softmax(pooled @ w + b)


@pytest.mark.parametrize("block", ["cc_c2", "mlo_p1"])
def test_permutation_and_ablation_match_a_hand_replay(block):
    model = two_view()
    cc, mlo = view_data(n=24)
    y = noisy_labels(model, [cc, mlo], 2)
    ga = GlobalAnalyzer(model)
    maps = np_(keras.Model(model.inputs, model.get_layer(block).output)([cc, mlo]))
    base = _two_view_tail(model, cc, mlo, block, maps)
    np.testing.assert_allclose(base, np_(model([cc, mlo], training=False)), rtol=1e-4, atol=1e-5)
    c = maps.shape[-1]
    perm = ga.filter_importance({"cc": cc, "mlo": mlo}, y, block=block, n_repeats=2, random_state=3, scoring="loss")
    abl = ga.filter_importance([cc, mlo], y, block=block, method="ablation", scoring="loss")
    assert perm.baseline_score == pytest.approx(neg_loss(base, y), abs=1e-5)
    for ch in range(c):
        zeroed = maps.copy()
        zeroed[..., ch] = 0
        assert abl.importances[ch, 0] == pytest.approx(
            neg_loss(base, y) - neg_loss(_two_view_tail(model, cc, mlo, block, zeroed), y), abs=1e-5)
        for r in range(2):
            p = job_permutation(perm.random_state, ch, r, len(y))
            shuffled = maps.copy()
            shuffled[..., ch] = maps[p][..., ch]
            assert perm.importances[ch, r] == pytest.approx(
                neg_loss(base, y) - neg_loss(_two_view_tail(model, cc, mlo, block, shuffled), y), abs=1e-5)
    assert np.abs(abl.importances).max() > 1e-4  # not all zero: the reference can fail


def test_taylor_on_each_branch_matches_the_closed_form_gradient():
    # Image + tabular: block c2 is read through GAP, then concatenated with the tabular features.
    model = image_tabular()
    img, tab = img_tab_data(n=30)
    y = noisy_labels(model, [img, tab], 3)
    ga = GlobalAnalyzer(model)
    res = ga.filter_importance([img, tab], y, block="c2", method="taylor", batch_size=8)
    f = np_(keras.Model(model.inputs, model.get_layer("gap").output)([img, tab]))
    t = layer(model, "tab_dense", tab)
    w, b = [np.asarray(v, np.float64) for v in model.get_layer("out").get_weights()]
    p = softmax(np.concatenate([f, t], axis=1) @ w + b)
    dldf = (p - np.eye(3)[y]) @ w[:6].T  # sum over positions of a * dL/da = f * dL/df for a GAP
    np.testing.assert_allclose(res.importances[:, 0], np.mean(np.abs(f * dldf), axis=0), rtol=3e-4, atol=1e-7)

    # Two views: the mlo branch's last block is channels 5..9 of the concatenated, pooled maps.
    model = two_view()
    cc, mlo = view_data(n=30)
    y = noisy_labels(model, [cc, mlo], 2)
    ga = GlobalAnalyzer(model)
    res = ga.filter_importance({"cc": cc, "mlo": mlo}, y, block="mlo_c2", method="taylor", batch_size=8)
    f = np_(keras.Model(model.inputs, model.get_layer("gap").output)([cc, mlo]))
    w, b = [np.asarray(v, np.float64) for v in model.get_layer("out").get_weights()]
    p = softmax(f @ w + b)
    dldf = (p - np.eye(2)[y]) @ w.T
    np.testing.assert_allclose(res.importances[:, 0], np.mean(np.abs(f * dldf), axis=0)[5:], rtol=3e-4, atol=1e-7)


# ----------------------------------------------------------------------
# Association and the atlas
# ----------------------------------------------------------------------
def test_class_association_matches_numpy_on_a_tabular_model():
    from scipy.stats import pearsonr

    model = image_tabular()
    img, tab = img_tab_data(n=40)
    y = np.arange(40) % 3
    res = GlobalAnalyzer(model).filter_class_association({"image": img, "age_sex": tab}, y, block="p1")
    maps = np_(keras.Model(model.inputs, model.get_layer("p1").output)([img, tab]))
    score = maps.max(axis=(1, 2)) if res.statistic == "max" else maps.mean(axis=(1, 2))
    frame = res.to_frame()
    for f in range(4):
        for k in range(3):
            r = frame[(frame["filter"] == f) & (frame["class"] == k)]["r"].item()
            assert r == pytest.approx(pearsonr(score[:, f], (y == k).astype(float)).statistic, abs=1e-6)


def planted_views():
    """Two views, one 3x3 box-sum filter each: its maximum sits where a bright patch was planted."""
    a = keras.Input((10, 10, 1), name="cc")
    b = keras.Input((10, 10, 1), name="mlo")
    ca = keras.layers.Conv2D(1, 3, padding="valid", name="cc_conv")(a)
    cb = keras.layers.Conv2D(1, 3, padding="valid", name="mlo_conv")(b)
    z = keras.layers.Concatenate()([keras.layers.GlobalAveragePooling2D()(ca),
                                    keras.layers.GlobalAveragePooling2D()(cb)])
    model = keras.Model([a, b], keras.layers.Dense(2, activation="softmax", name="out")(z))
    for name in ("cc_conv", "mlo_conv"):
        model.get_layer(name).set_weights([np.ones((3, 3, 1, 1), np.float32), np.zeros(1, np.float32)])
    rng = np.random.default_rng(0)
    cc = rng.uniform(0, 0.1, size=(12, 10, 10, 1)).astype("float32")
    mlo = rng.uniform(0, 0.1, size=(12, 10, 10, 1)).astype("float32")
    cc[3, 1:4, 5:8] = 1.0  # the cc view's brightest patch: sample 3, rows 1-3, columns 5-7
    mlo[7, 6:9, 2:5] = 1.0  # the mlo view's: sample 7, rows 6-8, columns 2-4
    return model, cc, mlo


def test_atlas_crops_come_from_the_blocks_own_input():
    model, cc, mlo = planted_views()
    ga = GlobalAnalyzer(model, blocks=["cc_conv", "mlo_conv"])
    ex_cc = ga.filter_examples([cc, mlo], block="cc_conv", top_k=1)
    ex_mlo = ga.filter_examples({"cc": cc, "mlo": mlo}, block="mlo_conv", top_k=1)
    assert ex_cc.input_name == "cc" and ex_mlo.input_name == "mlo"
    assert ex_cc.indices[0, 0] == 3 and ex_mlo.indices[0, 0] == 7
    np.testing.assert_array_equal(ex_cc.boxes[0, 0], [[1, 4], [5, 8]])
    np.testing.assert_array_equal(ex_mlo.boxes[0, 0], [[6, 9], [2, 5]])
    np.testing.assert_array_equal(ex_cc.crops[0, 0], cc[3, 1:4, 5:8])
    np.testing.assert_array_equal(ex_mlo.crops[0, 0], mlo[7, 6:9, 2:5])
    assert ex_mlo.values[0, 0] == pytest.approx(9.0 + mlo[7, 6:9, 2:5].sum() - 9.0, rel=1e-5)


# ----------------------------------------------------------------------
# Explanations, the model call, the model untouched
# ----------------------------------------------------------------------
def test_explain_draws_each_block_over_its_own_image_and_never_the_tabular_input():
    import matplotlib

    matplotlib.use("Agg")
    model = image_tabular()
    img, tab = img_tab_data(n=40)
    y = noisy_labels(model, [img, tab], 3)
    interp = HybridInterpreter(model).fit_probes([img, tab], y, verbose=0)
    one = interp.explain({"image": img[5], "age_sex": tab[5]})
    same = interp.explain([img[5:6], tab[5:6]])
    np.testing.assert_array_equal(one.probabilities, same.probabilities)
    np.testing.assert_array_equal(one.image, img[5])
    assert set(one.images) == {"image"} and one.block_images == ("image", "image")
    np.testing.assert_allclose(one.model_probabilities, np_(model([img[5:6], tab[5:6]]))[0], rtol=1e-5, atol=1e-6)
    probs = interp.layer_predictions([img[:8], tab[:8]]).probabilities
    np.testing.assert_allclose(one.probabilities, np.stack([p[5] for p in probs]), rtol=1e-5, atol=1e-6)
    fig = one.plot()
    assert any(ax.get_label() == "evidence:c2" for ax in fig.axes)
    with pytest.raises(ValueError, match=r"`x\['age_sex'\]` must be one input of shape \(2,\)"):
        interp.explain({"image": img[5], "age_sex": tab[:2]})
    with pytest.raises(TypeError, match=r"`x` must be one sample of each of the model's 2 inputs"):
        interp.explain(img[5])

    model = two_view(as_dict=True)
    cc, mlo = view_data(n=40)
    interp = HybridInterpreter(model, blocks=["cc_c2", "mlo_c2"]).fit_probes([cc, mlo], np.arange(40) % 2,
                                                                              verbose=0)
    e = interp.explain({"cc": cc[0], "mlo": mlo[0]})
    assert e.block_images == ("cc", "mlo")
    np.testing.assert_array_equal(e.images["mlo"], mlo[0])
    # The interpreter runs as one Keras model on either structure.
    out = interp({"cc": cc[:3], "mlo": mlo[:3]})
    np.testing.assert_allclose(np_(out["output"]), np_(model({"cc": cc[:3], "mlo": mlo[:3]})), rtol=1e-5, atol=1e-6)


def test_every_analysis_leaves_a_two_input_model_untouched():
    model = image_tabular()
    img, tab = img_tab_data(n=16)
    y = np.arange(16) % 3
    before, lists = snapshot(model, [img, tab]), node_lists(model)
    interp = HybridInterpreter(model).fit_probes([img, tab], y, verbose=0)
    interp.evaluate_layers({"image": img, "age_sex": tab}, y)
    interp.explain([img[0], tab[0]])
    ga = GlobalAnalyzer(model)
    for method in ("permutation", "ablation", "taylor"):
        seeded = {"n_repeats": 1} if method == "permutation" else {}
        ga.filter_importance([img, tab], y, block="c2", method=method, **seeded)
    ga.filter_examples([img, tab], block="p1", top_k=2)
    assert_same_node_lists(lists, node_lists(model))
    assert_unchanged(before, snapshot(model, [img, tab]))
