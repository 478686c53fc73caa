import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _close_figures_and_seed():
    """Each test starts from the same global seeds and leaves no figure open."""
    import keras

    keras.utils.set_random_seed(1234)
    np.random.seed(1234)
    yield
    import matplotlib.pyplot as plt

    plt.close("all")
