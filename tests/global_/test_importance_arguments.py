"""An argument of ``filter_importance`` that does not apply to the chosen method is refused, naming it.

``n_repeats`` and ``random_state`` are the permutations'; ``ablation_value`` the ablation's;
``perturbations_per_eval`` stacks perturbations (permutation and ablation); ``taylor`` chooses the
Taylor estimator; Taylor differentiates the loss, so its ``scoring`` is "auto" or "loss". Each is
refused with the other methods (a ValueError naming it, the methods it applies to and the one
chosen) before any data is read; left at its default, it is accepted.
"""

import numpy as np
import pytest

import keras

from keras_hybrid_interp import GlobalAnalyzer

from models import small_cnn

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def env():
    keras.utils.set_random_seed(0)
    model = small_cnn(classes=3)
    rng = np.random.default_rng(0)
    x = rng.random((12, 16, 16, 1), dtype=np.float32)
    y = np.arange(12) % 3
    return GlobalAnalyzer(model, blocks=["conv3"]), x, y


class NotAnArray:
    """A ``y`` the pass would refuse: a refusal of an argument must come first (no data read)."""


REFUSED = [
    # (method, argument, value, the methods it applies to)
    ("ablation", "n_repeats", 3, "'permutation'"),
    ("taylor", "n_repeats", 1, "'permutation'"),
    ("ablation", "random_state", 0, "'permutation'"),
    ("taylor", "random_state", np.random.default_rng(0), "'permutation'"),
    ("permutation", "ablation_value", "mean", "'ablation'"),
    ("taylor", "ablation_value", "mean", "'ablation'"),
    ("taylor", "perturbations_per_eval", 4, "'permutation' or 'ablation'"),
    ("permutation", "taylor", "molchanov", "'taylor'"),
    ("ablation", "taylor", "abs_mean", "'taylor'"),
]


@pytest.mark.parametrize(("method", "arg", "value", "applies"), REFUSED,
                         ids=[f"{a}-with-{m}" for m, a, _, _ in REFUSED])
def test_an_argument_of_another_method_is_refused_naming_it(env, method, arg, value, applies):
    ga, x, _ = env
    with pytest.raises(ValueError) as info:
        ga.filter_importance(x, NotAnArray(), block="conv3", method=method, **{arg: value})
    msg = str(info.value)
    assert msg.startswith(f"`{arg}` applies to method={applies} only"), msg
    assert f"received {arg}={value!r} with method={method!r}" in msg, msg


@pytest.mark.parametrize("scoring", ["accuracy", lambda y_true, y_pred: 0.0])
def test_taylor_refuses_a_score_other_than_its_loss(env, scoring):
    ga, x, _ = env
    with pytest.raises(ValueError, match=r"^`scoring` applies to method='permutation' or 'ablation': "
                                         r"method='taylor' is the first-order change of the task's loss"):
        ga.filter_importance(x, NotAnArray(), block="conv3", method="taylor", scoring=scoring)


@pytest.mark.parametrize(("method", "kwargs"), [
    ("ablation", {"n_repeats": 5, "random_state": None, "taylor": "abs_per_sample", "perturbations_per_eval": "auto"}),
    ("taylor", {"n_repeats": np.int64(5), "ablation_value": "zero", "perturbations_per_eval": "auto",
                "scoring": "loss"}),
    ("permutation", {"ablation_value": "zero", "taylor": "abs_per_sample", "n_repeats": 2, "random_state": 0}),
])
def test_defaults_passed_explicitly_are_accepted(env, method, kwargs):
    ga, x, y = env
    res = ga.filter_importance(x, y, block="conv3", method=method, **kwargs)
    assert res.method == method and res.importances.shape[0] == 16
