"""Explanations show the true label beside the model's prediction (issue 22, §5), in the task's terms.

Oracles: the labels the test itself passed (class index, one-hot row, 0/1 vector, values) and the
class names it gave; the flags of ``to_frame`` are recomputed with NumPy from those labels.
"""

import os
import sys

import numpy as np
import pytest

import keras
from keras import layers

from keras_hybrid_interp import HybridInterpreter, build_report

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
from models import small_cnn  # noqa: E402

NAMES = ["cat", "dog", "owl"]


@pytest.fixture(scope="module")
def classifier():
    keras.utils.set_random_seed(0)
    model = small_cnn(classes=3)
    rng = np.random.default_rng(0)
    x = rng.random((48, 16, 16, 1), dtype=np.float32)
    y = np.arange(48) % 3
    interp = HybridInterpreter(model, class_names=NAMES).fit_probes(x, y, random_state=0, verbose=0)
    return interp, x, y


def _other(k):
    return (k + 1) % 3


def test_explain_keeps_the_true_class_in_every_form(classifier):
    interp, x, y = classifier
    e = interp.explain(x[4], y[4])
    assert int(e.target) == y[4] == 1
    assert f"true='{NAMES[1]}'" in repr(e)
    for same in (np.int64(1), np.eye(3)[1], np.eye(3)[1][None], np.array([1])):  # index, one-hot row, batch of one
        assert int(interp.explain(x[4], same).target) == 1
    frame = e.to_frame()
    np.testing.assert_array_equal(frame["is_true_class"].to_numpy(), np.tile(np.arange(3) == 1, len(e.blocks)))
    assert "is_true_class" not in interp.explain(x[4]).to_frame() and interp.explain(x[4]).target is None
    assert HybridInterpreter(interp.wrapped_model).class_names == ["0", "1", "2"]  # without names: the class indices
    # A label that contradicts the model is still the label shown.
    wrong = _other(e.model_class)
    assert int(interp.explain(x[4], wrong).target) == wrong


def test_explain_refuses_a_label_that_is_not_one_sample_s(classifier):
    interp, x, y = classifier
    with pytest.raises(ValueError, match="`y`.*one input"):
        interp.explain(x[0], y[:2])
    with pytest.raises(ValueError, match="`y`"):
        interp.explain(x[0], 7)  # no class 7


def test_the_figure_titles_the_true_class_beside_the_model_s(classifier):
    interp, x, y = classifier
    e = interp.explain(x[2], y[2])
    fig = e.plot()
    title = next(ax for ax in fig.axes if ax.get_label() == "image").get_title()
    assert f"true: {NAMES[2]}" in title and f"model: {NAMES[e.model_class]}" in title
    plain = interp.explain(x[2]).plot()
    assert "true:" not in next(ax for ax in plain.axes if ax.get_label() == "image").get_title()
    import matplotlib.pyplot as plt

    plt.close("all")


def test_the_report_captions_each_explanation_with_its_label(classifier):
    interp, x, y = classifier
    report = build_report(interp, x[30:], y[30:], examples=3, sections=["layers", "explanations"], random_state=0)
    sec = next(s for s in report.sections if s.name == "explanations")
    captions = [c for _, c, _ in sec.figures]
    for i, caption in enumerate(captions):
        model_class = int(np.argmax(sec.values["inputs"][i]["model_probabilities"]))
        assert f"(true class '{NAMES[y[30 + i]]}', model '{NAMES[model_class]}')" in caption
        assert int(sec.values["inputs"][i]["target"]) == y[30 + i]
    unlabelled = build_report(interp, x[30:], examples=1, sections=["layers", "explanations"], random_state=0)
    sec = next(s for s in unlabelled.sections if s.name == "explanations")
    assert "true class" not in sec.figures[0][1] and sec.values["inputs"][0]["target"] is None


def _two_conv(head, seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((10, 10, 2))
    h = layers.Conv2D(6, 3, name="c1")(inp)
    h = layers.Conv2D(5, 3, activation="tanh", name="c2")(h)
    return keras.Model(inp, head(layers.GlobalAveragePooling2D()(h)))


def test_multilabel_and_regression_explanations_keep_their_targets():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 10, 10, 2)).astype("float32")
    labels = (rng.random((40, 3)) < 0.5).astype(int)
    model = _two_conv(lambda g: layers.Dense(3, activation="sigmoid")(g))
    interp = HybridInterpreter(model, ["c1", "c2"], class_names=["a", "b", "c"]).fit_probes(x, labels, verbose=0)
    e = interp.explain(x[5], labels[5])
    np.testing.assert_array_equal(e.target, labels[5])
    on = [n for n, t in zip("abc", labels[5]) if t]
    assert f"true={on!r}" in repr(e)
    np.testing.assert_array_equal(e.to_frame()["is_true_label"].to_numpy(), np.tile(labels[5].astype(bool), 2))

    values = rng.normal(size=(40, 2))
    model = _two_conv(lambda g: layers.Dense(2)(g), seed=1)
    interp = HybridInterpreter(model, ["c1", "c2"], task="regression").fit_probes(x, values, verbose=0)
    e = interp.explain(x[7], values[7])
    np.testing.assert_allclose(e.target, values[7])
    np.testing.assert_allclose(e.to_frame()["true_value"].to_numpy(), np.tile(values[7], 2))
    report = build_report(interp, x[:6], values[:6], examples=2, sections=["layers", "explanations"], random_state=0)
    caption = next(s for s in report.sections if s.name == "explanations").figures[1][1]
    assert "(true values [" + ", ".join(f"{v:.4g}" for v in values[1]) + "])" in caption
