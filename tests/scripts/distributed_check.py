"""Run in a fresh process: compares 2-replica MirroredStrategy results with one device.

Prints one JSON line with the largest absolute differences.
"""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import numpy as np  # noqa: E402

import keras  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from keras_hybrid_interp import GlobalAnalyzer, HybridInterpreter  # noqa: E402
from keras_hybrid_interp.core import distribute as _distribute  # noqa: E402

from models import residual_cnn  # noqa: E402

keras.utils.set_random_seed(0)
model = residual_cnn()
rng = np.random.default_rng(0)
x = rng.random((90, 16, 16, 3), dtype=np.float32)
y = np.arange(90) % 4


KEEP = []  # the analysers stay alive until the replicas they fed are read below


def analyse():
    interp = HybridInterpreter(model)
    interp.fit_probes(x[:60], y[:60], batch_size=16, verbose=0)
    assert interp.convergence_["converged"].all()
    ga = GlobalAnalyzer(interp)
    KEEP.append((interp, ga))
    return {
        "table": interp.evaluate_layers(x[60:], y[60:]).to_frame()[["accuracy", "loss", "agreement"]].to_numpy(),
        "probs": interp.layer_predictions(x[60:]).probabilities,
        "corr": ga.filter_correlation(x, block="res_out").values,
        "assoc": ga.filter_class_association(x, y, block="res_out").values,
        "ablation": ga.filter_importance(x, y, block="res_conv1", method="ablation").importances,
        "permutation": ga.filter_importance(x, y, block="res_conv1", n_repeats=2, random_state=3).importances,
        "taylor": ga.filter_importance(x, y, block="res_out", method="taylor").importances,
        "cka": ga.layer_similarity(x).values,
    }


single = analyse()
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    multi = analyse()
fed = set()
for per_model in _distribute._PREDICTORS.values():
    for p in per_model.values():
        fed |= p.replicas_fed
diffs = {k: float(np.nanmax(np.abs(single[k] - multi[k]))) for k in single}
nan_same = all(np.array_equal(np.isnan(single[k]), np.isnan(multi[k])) for k in single)
print(json.dumps({"replicas": strategy.num_replicas_in_sync, "fed": sorted(fed), "diffs": diffs,
                  "nan_same": nan_same}))
