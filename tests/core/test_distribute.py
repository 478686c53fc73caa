"""tf.distribute: MirroredStrategy over two logical CPU devices matches one device."""

import json
import os
import subprocess
import sys

import pytest

import keras

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                reason="tf.distribute is TensorFlow's distribution API")


def test_mirrored_strategy_uses_every_replica_and_matches_one_device():
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/
    root = os.path.dirname(here)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p))
    # logical devices must be configured before TensorFlow starts: a fresh process
    res = subprocess.run([sys.executable, os.path.join(here, "scripts", "distributed_check.py")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2
    assert out["fed"] == [0, 1]  # both replicas received a shard of every batch
    assert out["nan_same"]
    for name, diff in out["diffs"].items():
        assert diff <= 1e-5, (name, diff)
