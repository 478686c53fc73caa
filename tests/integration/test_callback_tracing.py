"""InterpretationCallback with importance on: no tf.function retracing once the baseline is recorded.

TensorFlow backend only. Every Keras predict function the callback builds
(``keras.Model.make_predict_function`` is observed, so the test does not
depend on where the package keeps its side models) is a ``tf.function``;
its tracing count is read at the end of ``on_train_begin`` (after the
baseline record) and at the end of every epoch. TensorFlow's own
"triggered tf.function retracing" messages are captured on logger
``tensorflow`` over the same span.

Why the span starts after the baseline: TensorFlow's frequent-tracing
detector is keyed by the code object of Keras's
``make_predict_function.<locals>.one_step_on_data_distributed``, which every
Keras model's predict function shares. The baseline record traces each new
side model once per batch shape it sees (the pass model: a full batch and the
last, shorter one; the importance tail: its baseline call and its permutation
buffer), so four first traces in a row, right after a trace of any other
model's predict function, print that warning once even though nothing is
traced again (benchmarks/b4_callback_overhead.py, BENCHMARKS.md B4).
"""

import logging
import warnings

import pytest

import keras

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                reason="tf.function tracing is TensorFlow's")

from keras_hybrid_interp.callback import ImportanceOptions, InterpretationCallback  # noqa: E402
from keras_hybrid_interp.cli import demo_model  # noqa: E402
from keras_hybrid_interp.datasets import load_digits  # noqa: E402

EPOCHS = 6


class _RetracingMessages(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []
        self.active = False

    def emit(self, record):
        msg = record.getMessage()
        if self.active and "retracing" in msg:
            self.messages.append(msg)


@pytest.fixture
def retracing_log():
    handler = _RetracingMessages()
    logger = logging.getLogger("tensorflow")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@pytest.fixture
def predict_functions(monkeypatch):
    """Every (model name, predict tf.function) built while the test runs, in order."""
    built = []
    original = keras.Model.make_predict_function

    def observed(self, force=False):
        before = self.predict_function
        out = original(self, force)
        if self.predict_function is not before and self.predict_function is not None:
            built.append((self.name, self.predict_function))
        return out

    monkeypatch.setattr(keras.Model, "make_predict_function", observed)
    return built


class _Snapshots(keras.callbacks.Callback):
    """After the interpretation callback: the predict functions and their tracing counts, per hook."""

    def __init__(self, built, log):
        super().__init__()
        self.built, self.log = built, log
        self.snapshots = []

    def _snap(self, when):
        self.snapshots.append((when, [(name, fn.experimental_get_tracing_count()) for name, fn in self.built]))

    def on_train_begin(self, logs=None):
        self._snap("train_begin")
        self.log.active = True  # from here on, nothing should be traced

    def on_epoch_end(self, epoch, logs=None):
        self._snap(f"epoch {epoch + 1}")


class _RebuildsEveryEpoch(InterpretationCallback):
    """A broken callback that builds a fresh side model at every record: the check must catch it."""

    def on_epoch_end(self, epoch, logs=None):
        self._interp = None
        super().on_epoch_end(epoch, logs)


def _fit(callback_cls, built, log, epochs):
    (x_train, y_train), (x_val, y_val) = load_digits(16, random_state=0)
    keras.utils.set_random_seed(0)
    model = demo_model()
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    # 450 validation images in batches of 256: the pass sees two batch shapes (256 and 194).
    cb = callback_cls((x_val, y_val), importance=ImportanceOptions(block="conv3", n_repeats=3, top_k=5),
                      batch_size=256, random_state=0)
    snaps = _Snapshots(built, log)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*permutation importance")
        model.fit(x_train[:320], y_train[:320], batch_size=32, epochs=epochs, verbose=0, callbacks=[cb, snaps])
    return model, cb, snaps.snapshots


def test_importance_on_does_not_retrace_after_the_baseline(predict_functions, retracing_log):
    model, cb, snapshots = _fit(InterpretationCallback, predict_functions, retracing_log, EPOCHS)

    h = cb.history
    assert sorted(h.epoch.unique()) == list(range(EPOCHS + 1))
    assert (h.metric == "importance").sum() == 5 * (EPOCHS + 1)
    assert model.predict_function is None  # the user's model itself is never run for prediction

    when0, first = snapshots[0]
    assert when0 == "train_begin"
    # The baseline built one pass model and one tail, each traced at most once per input shape.
    assert 1 <= len(first) <= 2, first
    assert all(1 <= n <= 2 for _, n in first), first
    for when, counts in snapshots[1:]:
        assert counts == first, (f"tf.function retracing at {when}: predict functions (model, tracing count) "
                                 f"went from {first} after the baseline to {counts}")
    assert len(snapshots) == EPOCHS + 1
    assert retracing_log.messages == []


def test_the_check_catches_a_callback_that_retraces(predict_functions, retracing_log):
    _, _, snapshots = _fit(_RebuildsEveryEpoch, predict_functions, retracing_log, 2)
    assert len(snapshots[-1][1]) > len(snapshots[0][1])


def test_the_log_handler_sees_tensorflows_retracing_warning(retracing_log):
    import tensorflow as tf

    retracing_log.active = True

    @tf.function
    def f(x):
        return x + 1

    for i in range(6):  # a new Python int every call: a new trace every call
        f(i)
    assert any("triggered tf.function retracing" in m for m in retracing_log.messages)
