"""Many small binary probes at once (the concepts' CAVs): batched Newton steps in each problem's span.

Oracles: scikit-learn's LogisticRegression at the same C (its lbfgs to tol 1e-12) on each problem alone, and
the objective's gradient written out with NumPy over all D features (the stopping test of fit_probe).
"""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from keras_hybrid_interp.core import trainer as _trainer


def _problem(n, d, seed, shift=0.6):
    rng = np.random.default_rng(seed)
    t = np.arange(n) % 2
    f = rng.normal(size=(n, 8)) @ rng.normal(size=(8, d)) + 0.5 * rng.normal(size=(n, d))
    f[:, :5] += shift * t[:, None]
    return (f - f.mean(0)) / f.std(0), t


def _sklearn(z, t, C):
    lr = LogisticRegression(C=C, tol=1e-12, max_iter=100000).fit(z, t)
    return lr.coef_[0], lr.intercept_[0]


def _full_gradient(z, t, w, b, C):
    """The gradient of fit_probe's mean objective over every feature, written out."""
    p = 1.0 / (1.0 + np.exp(-(z @ w + b)))
    n = len(t)
    return np.concatenate([z.T @ (p - t) / n + w / (C * n), [np.sum(p - t) / n]])


@pytest.mark.parametrize("C", [1.0, 0.05])
def test_each_problem_of_a_batch_equals_sklearn_alone(C):
    # Different sizes in one batch (padded), a rank-deficient problem (repeated samples), separable and not.
    problems = [_problem(n, 120, seed, shift) for seed, (n, shift) in enumerate([(40, 0.6), (33, 0.6), (20, 3.0),
                                                                                 (41, 0.0), (12, 0.6)])]
    z, t = _problem(10, 120, 9)
    problems.append((np.repeat(z, 3, axis=0), np.repeat(t, 3)))
    sols = _trainer.fit_binary_probes(problems, C=C)
    assert len(sols) == len(problems)
    for (z, t), sol in zip(problems, sols):
        w, b = _sklearn(z, t, C)
        assert np.linalg.norm(w) > 1e-3  # a real fit, not the zero start
        np.testing.assert_allclose(sol.kernel[:, 1], w, atol=2e-6 * max(1.0, np.abs(w).max()))
        np.testing.assert_allclose(sol.bias[1], b, atol=2e-6)
        assert (sol.kernel[:, 0] == 0).all() and sol.bias[0] == 0  # fit_probe's K = 2 convention
        g = _full_gradient(z, t, sol.kernel[:, 1], sol.bias[1], C)
        assert sol.converged and np.max(np.abs(g)) <= _trainer.TOL
        assert 0 < sol.n_iter < 30
        logits = z @ sol.kernel[:, 1] + sol.bias[1]
        ce = np.mean(np.logaddexp(0.0, logits) - t * logits)
        np.testing.assert_allclose(sol.loss, ce, rtol=1e-10)


def test_problems_without_a_span_shortcut_go_to_fit_probe_unchanged():
    # n >= D, and C = inf: fit_probe's own L-BFGS, bit for bit.
    wide = _problem(30, 60, 1)
    tall = _problem(50, 6, 2)
    for C, (z, t) in ((1.0, tall), (np.inf, wide)):
        got = _trainer.fit_binary_probes([(z, t)], C=C)[0]
        want = _trainer.fit_probe(z, t, 2, C=C)
        np.testing.assert_array_equal(got.kernel, want.kernel)
        np.testing.assert_array_equal(got.bias, want.bias)


def test_batches_give_what_each_problem_gives_alone(monkeypatch):
    problems = [_problem(n, 90, seed) for seed, n in enumerate([30, 31, 32, 30, 29, 30, 28])]
    together = _trainer.fit_binary_probes(problems)
    monkeypatch.setattr(_trainer, "BATCH_BYTES", 1)  # one problem per batch
    alone = _trainer.fit_binary_probes(problems)
    for a, b in zip(together, alone):
        np.testing.assert_allclose(a.kernel, b.kernel, atol=1e-9)
        np.testing.assert_allclose(a.bias, b.bias, atol=1e-9)


def test_an_iteration_cap_leaves_the_fit_unconverged():
    z, t = _problem(40, 120, 3)
    sol = _trainer.fit_binary_probes([(z, t)], max_iter=1)[0]
    assert sol.n_iter == 1 and not sol.converged
