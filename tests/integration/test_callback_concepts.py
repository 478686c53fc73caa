"""InterpretationCallback(concepts=...): the concept accuracy of every block over the epochs.

A tiny CNN learns striped against solid objects (datasets.make_synthetic's textures) for a few
epochs; the callback records, at each record, the held-out accuracy of the concept probes of every
block. The oracle never uses the package: at the same moments a second callback reads the blocks'
maps through a plain Keras sub-model (averaged over positions with NumPy), and scikit-learn's
``StandardScaler`` + ``LogisticRegression`` fits one CAV per random set on the draws the callback
reports (``concept_sets``); the accuracy is their mean held-out accuracy, as
``HybridInterpreter.concepts`` defines it.
"""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

import keras  # noqa: E402
from keras import layers  # noqa: E402

from keras_hybrid_interp.callback import InterpretationCallback  # noqa: E402
from keras_hybrid_interp.core.health import InterpretationWarning  # noqa: E402
from keras_hybrid_interp.datasets import make_synthetic, make_texture_concept  # noqa: E402
from keras_hybrid_interp.plotting import plot_concept_training  # noqa: E402

from oracles import assert_not_all_zero  # noqa: E402

SIZE = 16
BLOCKS = ["conv1", "conv2", "conv3"]
N_RANDOM = 4
EPOCHS = 6


def striped_or_solid(n, seed):
    """Objects that are solid (class 0) or horizontally striped (class 1)."""
    x, y = make_synthetic(3 * n, factor="texture", image_size=SIZE, random_state=seed)
    keep = np.flatnonzero(y <= 1)[:n]
    return x[keep], y[keep]


def texture_cnn(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((SIZE, SIZE, 3))
    h = layers.Conv2D(6, 3, padding="same", activation="relu", name="conv1")(inp)
    h = layers.MaxPooling2D(name="pool1")(h)
    h = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(h)
    h = layers.MaxPooling2D(name="pool2")(h)
    h = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv3")(h)
    h = layers.GlobalAveragePooling2D(name="gap")(h)
    model = keras.Model(inp, layers.Dense(2, activation="softmax", name="head")(h), name="texture_cnn")
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    return model


class Snapshots(keras.callbacks.Callback):
    """The blocks' pooled maps of the given arrays at every record, by a plain Keras sub-model (not the pass)."""

    def __init__(self, arrays):
        super().__init__()
        self.arrays = arrays
        self.features: dict = {}

    def read(self, epoch):
        sub = keras.Model(self.model.input, [self.model.get_layer(b).output for b in BLOCKS])
        self.features[epoch] = {
            name: [np.asarray(a, np.float64).mean(axis=(1, 2)) for a in sub.predict(x, verbose=0)]
            for name, x in self.arrays.items()}

    def on_train_begin(self, logs=None):
        self.read(0)

    def on_epoch_end(self, epoch, logs=None):
        self.read(epoch + 1)


def sklearn_accuracy(concept, pool, train, test, sets, held_out):
    """Mean over the random sets of the held-out accuracy of scikit-learn's CAV (concept vs random set)."""
    xt = np.concatenate([concept[test], pool[held_out[:len(test)]]])
    t = np.r_[np.ones(len(test)), np.zeros(len(test))]
    acc = []
    for s in sets:
        x = np.concatenate([concept[train], pool[s[:len(train)]]])
        label = np.r_[np.ones(len(train)), np.zeros(len(train))]
        scaler = StandardScaler().fit(x)
        lr = LogisticRegression(tol=1e-12, max_iter=100000).fit(scaler.transform(x), label)
        acc.append(np.mean(lr.predict(scaler.transform(xt)) == t))
    return float(np.mean(acc))


def concept_rows(history):
    rows = history[history["metric"].str.startswith("concept_accuracy/")].copy()
    rows["concept"] = rows["metric"].str.slice(len("concept_accuracy/"))
    return rows


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    x, y = striped_or_solid(600, seed=0)
    xv, yv = striped_or_solid(100, seed=1)
    pool, _ = make_synthetic(200, factor="texture", image_size=SIZE, random_state=11)  # all four textures
    concepts = {"stripes": make_texture_concept(30, texture="hstripes", image_size=SIZE, random_state=7),
                "random": make_synthetic(30, factor="texture", image_size=SIZE, random_state=8)[0]}
    log = tmp_path_factory.mktemp("log") / "history.jsonl"
    model = texture_cnn()
    cb = InterpretationCallback((xv, yv), blocks=BLOCKS, random_state=0, correlation=False, log_path=log,
                                concepts=concepts, concept_random=pool, concept_options={"n_random": N_RANDOM})
    snaps = Snapshots({"pool": pool, **concepts})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InterpretationWarning)  # concepts of 30 examples: "few examples"
        model.fit(x, y, epochs=EPOCHS, batch_size=32, verbose=0, callbacks=[cb, snaps])
    return cb, snaps, concepts, log


def test_one_row_per_epoch_concept_and_block_equal_to_sklearn_on_the_same_features(trained):
    cb, snaps, concepts, _ = trained
    rows = concept_rows(cb.history)
    assert len(rows) == (EPOCHS + 1) * 2 * 3
    assert not rows.duplicated(["epoch", "concept", "block"]).any()
    assert set(rows["epoch"]) == set(range(EPOCHS + 1)) and set(rows["block"]) == set(BLOCKS)
    assert rows["filter"].isna().all()
    sets = cb.concept_sets
    assert sets["random_sets"].shape[0] == N_RANDOM
    for name in concepts:  # a fixed split of 30 examples: 10 held out
        assert len(sets["test"][name]) == 10 and len(sets["train"][name]) == 20
        assert not set(sets["train"][name]) & set(sets["test"][name])
    drawn = np.concatenate([sets["random_held_out"], sets["random_sets"].ravel()])
    assert len(np.unique(drawn)) == len(drawn) and drawn.max() < 200  # disjoint random sets from the pool
    for _, row in rows.iterrows():
        feats = snaps.features[row["epoch"]]
        i = BLOCKS.index(row["block"])
        name = row["concept"]
        want = sklearn_accuracy(feats[name][i], feats["pool"][i], sets["train"][name], sets["test"][name],
                                sets["random_sets"], sets["random_held_out"])
        assert row["value"] == pytest.approx(want, abs=1e-12), (row["epoch"], name, row["block"])
    assert_not_all_zero(rows["value"] - 0.5)


def test_the_concept_forms_during_training_and_the_random_set_never_does(trained):
    """Stripes are near chance against the four-texture pool before training (0.51-0.58 by block here) and
    clearly separated once the model has learnt them (0.84-0.93 after 6 epochs); a "concept" drawn from the
    pool's own distribution stays near chance (at most 0.66)."""
    cb, *_ = trained
    table = concept_rows(cb.history).pivot_table(index=["concept", "epoch"], columns="block", values="value")
    stripes, random = table.loc["stripes"].to_numpy(), table.loc["random"].to_numpy()
    assert stripes[-1].min() > 0.75 and stripes[-1].mean() > stripes[0].mean() + 0.15
    assert random.max() < 0.75


def test_the_log_holds_the_concept_rows(trained):
    cb, _, _, log = trained
    loaded = InterpretationCallback.load_history(log)
    pd.testing.assert_frame_equal(loaded, cb.history)
    assert len(concept_rows(loaded)) == (EPOCHS + 1) * 2 * 3


def test_the_plot_draws_a_line_per_block_for_each_concept(trained):
    cb, *_ = trained
    fig = plot_concept_training(cb.history)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2 and all(len([ln for ln in ax.lines if len(ln.get_xdata()) == EPOCHS + 1]) == 3
                                  for ax in axes)
    fig = plot_concept_training(cb.history, concepts="stripes")
    line = fig.axes[0].lines[0]
    stripes = concept_rows(cb.history).query("concept == 'stripes' and block == 'conv1'").sort_values("epoch")
    np.testing.assert_array_equal(line.get_ydata(), stripes["value"].to_numpy())
    with pytest.raises(ValueError, match=r"`concepts`: 'dots' was not recorded"):
        plot_concept_training(cb.history, concepts="dots")
    with pytest.raises(ValueError, match=r"holds no concept accuracy"):
        plot_concept_training(cb.history[~cb.history["metric"].str.startswith("concept")])
    plt.close("all")


@pytest.mark.parametrize("own_pool", [False, True], ids=["validation_subset", "concept_random"])
def test_the_random_pool(trained, own_pool):
    """The random sets come from the validation subset, or from concept_random's first max_samples inputs."""
    _, _, concepts, _ = trained
    model = texture_cnn(seed=4)
    xv, _ = make_synthetic(120, factor="texture", image_size=SIZE, random_state=2)  # four textures, no labels
    other, _ = make_synthetic(120, factor="texture", image_size=SIZE, random_state=9)
    pool = other if own_pool else xv
    cb = InterpretationCallback(xv, blocks=BLOCKS, random_state=1, probes=False, correlation=False,
                                concepts={"stripes": concepts["stripes"]}, max_samples=100,
                                concept_random=other if own_pool else None,
                                concept_options={"n_random": 3, "test_fraction": 0.5, "method": "logistic"})
    cb.set_model(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InterpretationWarning)
        cb.on_train_begin()
    sets = cb.concept_sets
    assert len(sets["test"]["stripes"]) == 15 and sets["random_sets"].max() < 100
    sub = keras.Model(model.input, [model.get_layer(b).output for b in BLOCKS])
    pf = [np.asarray(a, np.float64).mean(axis=(1, 2)) for a in sub.predict(pool[:100], verbose=0)]
    cf = [np.asarray(a, np.float64).mean(axis=(1, 2)) for a in sub.predict(concepts["stripes"], verbose=0)]
    rows = concept_rows(cb.history)
    assert len(rows) == 3
    for i, block in enumerate(BLOCKS):
        want = sklearn_accuracy(cf[i], pf[i], sets["train"]["stripes"], sets["test"]["stripes"],
                                sets["random_sets"], sets["random_held_out"])
        assert rows.set_index("block").loc[block, "value"] == pytest.approx(want, abs=1e-12)


def test_same_seed_same_draws_and_bad_arguments(trained):
    _, _, concepts, _ = trained
    xv, yv = striped_or_solid(40, seed=2)
    model = texture_cnn(seed=4)

    def driven(**kwargs):
        cb = InterpretationCallback((xv, yv), blocks=BLOCKS, random_state=5, probes=False, correlation=False,
                                    **kwargs)
        cb.set_model(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InterpretationWarning)
            cb.on_train_begin()
        return cb

    a = driven(concepts={"stripes": concepts["stripes"]}, concept_options={"n_random": 2})
    b = driven(concepts={"stripes": concepts["stripes"]}, concept_options={"n_random": 2})
    pd.testing.assert_frame_equal(a.history, b.history, check_exact=True)
    np.testing.assert_array_equal(a.concept_sets["random_sets"], b.concept_sets["random_sets"])
    assert driven().concept_sets is None
    with pytest.raises(ValueError, match=r"`concept_options` has keys \['bootstrap'\]"):
        InterpretationCallback((xv, yv), concepts={"s": concepts["stripes"]}, concept_options={"bootstrap": 10})
    with pytest.raises(ValueError, match=r"`concept_random` is given but `concepts` is None"):
        InterpretationCallback((xv, yv), concept_random=xv)
    with pytest.raises(TypeError, match=r"`concepts` must be a dict"):
        InterpretationCallback((xv, yv), concepts=concepts["stripes"])
    with pytest.raises(ValueError, match=r"`method` must be one of"):
        InterpretationCallback((xv, yv), concepts={"s": concepts["stripes"]}, concept_options={"method": "svm"})
    with pytest.raises(ValueError, match=r"`concepts\['few'\]` has 9 examples"):
        driven(concepts={"few": concepts["stripes"][:9]})
    with pytest.raises(ValueError, match=r"`validation_data`.*shares 12 input\(s\) with the examples of concept 'val'"):
        driven(concepts={"val": xv[:12]})
    with pytest.raises(ValueError, match=r"`concepts\['wrong'\]`"):
        driven(concepts={"wrong": concepts["stripes"][:, :8]})
