"""Presentation details a reader meets first: one-line reprs and progress bars that know their total."""

import contextlib
import io

import numpy as np
import pytest

import keras

from keras_hybrid_interp import GlobalAnalyzer, HybridInterpreter

from models import small_cnn


@pytest.fixture(scope="module")
def fitted():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.random((48, 16, 16, 1), dtype=np.float32)
    y = np.arange(48) % 4
    return HybridInterpreter(small_cnn(classes=4)).fit_probes(x, y, verbose=0), x, y


def test_every_result_repr_is_one_short_line(fitted):
    interp, x, y = fitted
    ga = GlobalAnalyzer(interp)
    block = interp.blocks[-1].name
    objects = [
        interp, interp.blocks, ga, interp.layer_predictions(x), interp.explain(x[0]),
        ga.filter_correlation(x, block=block), ga.filter_class_association(x, y, block=block),
        ga.filter_importance(x, y, block=block, n_repeats=2, random_state=0), ga.layer_similarity(x),
    ]
    for obj in objects:
        text = repr(obj)
        assert "\n" not in text and len(text) <= 200, (type(obj).__name__, text)


def test_the_progress_bar_knows_its_total_when_the_data_has_a_length(fitted):
    interp, x, y = fitted
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        HybridInterpreter(interp.wrapped_model).fit_probes(x, y, batch_size=16, verbose=1)
    text = out.getvalue()
    assert "3/3" in text and "Unknown" not in text


def test_importance_bars_within_noise_are_hatched(fitted):
    import matplotlib.pyplot as plt

    from keras_hybrid_interp import plotting

    interp, x, y = fitted
    imp = GlobalAnalyzer(interp).filter_importance(x, y, block=interp.blocks[-1].name, n_repeats=3, random_state=0)
    ax = plotting.plot_filter_importance(imp, top_k=None)
    hatched = [b for b in ax.patches if b.get_gid() == "within_noise"]
    assert len(hatched) == int(imp.within_noise.sum())
    assert ("within noise" in ax.get_title()) == bool(imp.within_noise.any())
    plt.close(ax.figure)


@pytest.mark.parametrize("kwargs, match", [({"max_iter": 0}, "`max_iter`"), ({"tol": -1.0}, "`tol`"),
                                           ({"max_iter": 2.5}, "`max_iter`")])
def test_solver_options_are_checked_before_any_data_is_read(fitted, kwargs, match, monkeypatch):
    from keras_hybrid_interp.core import data_pass as _pass

    interp, x, y = fitted
    monkeypatch.setattr(_pass, "run", lambda *a, **k: pytest.fail("the data was read"))
    with pytest.raises(ValueError, match=match):
        interp.fit_probes(x, y, **kwargs)


def test_explaining_one_image_does_not_report_drift(fitted):
    import warnings

    from keras_hybrid_interp import InterpretationWarning

    interp, x, _ = fitted
    one = np.zeros_like(x[0]) + x[0].mean()  # a flat image: its own spread is 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", InterpretationWarning)
        interp.explain(one)
