"""Fixtures shared by the report's tests."""

import numpy as np
import pytest

import keras

from keras_hybrid_interp import HybridInterpreter, build_report

from models import small_cnn


@pytest.fixture(scope="session")
def report():
    """The standard report of a briefly trained tiny CNN, built once for every test that reads it (none changes it).

    Brightness varies across images and sets the label's first bit: a GAP head learns it in a few epochs.
    Trained a little, so that the model's predictions vary: an untrained one predicts a single class on some
    backends' initialisations, and then no perturbation moves its accuracy (importance all 0).
    """
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = (rng.random((120, 16, 16, 1)) * rng.uniform(0.1, 1.0, (120, 1, 1, 1))).astype(np.float32)
    bright = x.mean(axis=(1, 2, 3))
    y = (bright > np.median(bright)).astype(int) + 2 * (np.arange(120) % 2)
    m = small_cnn(classes=4)
    m.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    m.fit(x[:80], y[:80], epochs=15, batch_size=16, verbose=0)
    interp = HybridInterpreter(m)
    interp.fit_probes(x[:80], y[:80], verbose=0)
    return build_report(interp, x[80:], y[80:], examples=1, n_repeats=2)
