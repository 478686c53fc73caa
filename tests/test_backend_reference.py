"""Every backend reproduces the stored TensorFlow numbers, within the tolerances the README states.

``tests/data/backend_reference.npz`` holds the weights of a small CNN and
what TensorFlow computed with them on fixed data (written by
``python tests/test_backend_reference.py --write`` on the TensorFlow
backend). CI runs this file on TensorFlow, JAX and PyTorch: each must give
the same numbers within :data:`TOL` (absolute). These are the tolerances the
README's "Backends" section quotes; change both together.
"""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

import keras

sys.path.insert(0, os.path.dirname(__file__))
from keras_hybrid_interp import GlobalAnalyzer, HybridInterpreter  # noqa: E402

from models import small_cnn  # noqa: E402

REFERENCE = Path(__file__).parent / "data" / "backend_reference.npz"

#: Absolute tolerance per quantity (the README's "Backends" section quotes these).
TOL = {
    "layer_accuracy": 0.0,  # counts: identical
    "layer_loss": 1e-5,  # each backend fits its own probes (float64 L-BFGS on float32 features)
    "correlation": 1e-6,
    "association": 1e-6,
    "cka": 1e-6,
    "permutation_mid": 2e-6,  # a mid block: the tail engine
    "permutation_last": 2e-6,  # the last block: the pooled-head shortcut
    "ablation_mid": 2e-6,
    "ablation_mean_last": 2e-6,
    "taylor_last": 2e-6,
}

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _data():
    rng = np.random.default_rng(0)
    x = (rng.random((96, 16, 16, 1)) * rng.uniform(0.1, 3, (96, 1, 1, 1))).astype(np.float32)
    y = (x[:, :8].mean(axis=(1, 2, 3)) > x[:, 8:].mean(axis=(1, 2, 3))).astype(int) + 2 * (np.arange(96) % 2)
    return x, y


def _compute(model, x, y) -> dict:
    fit, ev = slice(0, 48), slice(48, None)
    interp = HybridInterpreter(model).fit_probes(x[fit], y[fit], random_state=0, verbose=0)
    table = interp.evaluate_layers(x[ev], y[ev]).to_frame()
    ga = GlobalAnalyzer(interp)
    xe, ye = x[ev], y[ev]
    perm = dict(scoring="loss", n_repeats=2, random_state=0)
    return {
        "layer_accuracy": table["accuracy"].to_numpy(dtype=np.float64),
        "layer_loss": table["loss"].to_numpy(dtype=np.float64),
        "correlation": np.nan_to_num(ga.filter_correlation(xe, block="conv3").values, nan=9.0),
        "association": np.nan_to_num(ga.filter_class_association(xe, ye, block="conv3").values, nan=9.0),
        "cka": ga.layer_similarity(xe).values,
        "permutation_mid": ga.filter_importance(xe, ye, block="conv2", **perm).importances,
        "permutation_last": ga.filter_importance(xe, ye, block="conv3", **perm).importances,
        "ablation_mid": ga.filter_importance(xe, ye, block="conv2", method="ablation", scoring="loss").importances,
        "ablation_mean_last": ga.filter_importance(xe, ye, block="conv3", method="ablation", ablation_value="mean",
                                                   scoring="loss").importances,
        "taylor_last": ga.filter_importance(xe, ye, block="conv3", method="taylor").importances,
    }


def _model(weights):
    model = small_cnn(classes=4)
    model.set_weights(weights)
    return model


def _load():
    with np.load(REFERENCE, allow_pickle=False) as f:
        n = int(f["n_weights"])
        weights = [f[f"weight_{i}"] for i in range(n)]
        expected = {k[len("result_"):]: f[k] for k in f.files if k.startswith("result_")}
    return weights, expected


@pytest.mark.parametrize("quantity", sorted(TOL))
def test_this_backend_reproduces_the_tensorflow_reference(quantity, _results):
    got, expected = _results
    assert got[quantity].shape == expected[quantity].shape
    np.testing.assert_allclose(got[quantity], expected[quantity], rtol=0, atol=TOL[quantity],
                               err_msg=f"{quantity} on {keras.backend.backend()}")


def test_the_reference_has_something_to_compare():
    _, expected = _load()
    # Importances that are not all 0 and a layer table that is not constant: the comparisons can fail.
    for k in ("permutation_mid", "permutation_last", "ablation_mid", "ablation_mean_last", "taylor_last"):
        assert np.abs(expected[k]).max() > 1e-3, k
    assert np.ptp(expected["layer_loss"]) > 1e-3


def _on_gpu() -> bool:
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_logical_devices("GPU"))
    if backend == "jax":
        import jax

        return jax.devices()[0].platform != "cpu"
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    return False


@pytest.fixture(scope="module")
def _results():
    if _on_gpu():
        pytest.skip("the reference numbers are a CPU's; GPUs run float32 in TF32 (README, Numerical notes)")
    weights, expected = _load()
    x, y = _data()
    return _compute(_model(weights), x, y), expected


def _write():
    assert keras.backend.backend() == "tensorflow", "the reference is TensorFlow's"
    keras.utils.set_random_seed(0)
    model = small_cnn(classes=4)
    head = model.get_layer("head")
    k, b = head.get_weights()
    head.set_weights([50 * k, b])  # predictions follow the features, so importances are not all 0
    weights = model.get_weights()
    x, y = _data()
    results = _compute(model, x, y)
    REFERENCE.parent.mkdir(exist_ok=True)
    np.savez_compressed(REFERENCE, n_weights=len(weights), **{f"weight_{i}": w for i, w in enumerate(weights)},
                        **{f"result_{k}": v for k, v in results.items()})
    print(f"wrote {REFERENCE}")


if __name__ == "__main__" and "--write" in sys.argv:
    _write()
