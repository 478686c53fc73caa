"""The probe trainer with fewer samples than features: L-BFGS in the span of the samples.

Oracles: scikit-learn's LogisticRegression at the same C, and a hand-written full-space run
(scipy's L-BFGS-B on the trainer's objective over all D x K weights, as the trainer ran before),
whose iterates the span run must follow: the same number of iterations, the same weights up to
rounding.
"""

import numpy as np
import pytest
from scipy.optimize import minimize
from sklearn.linear_model import LogisticRegression

from keras_hybrid_interp.core import trainer as _trainer
from keras_hybrid_interp.core.task import MultiLabelTask

from oracles import assert_not_all_zero


def _problem(n, d, k, seed, rank=None):
    """Correlated, standardized features (pooled CNN features are) with labels that depend on them."""
    rng = np.random.default_rng(seed)
    rank = rank or d
    f = rng.normal(size=(n, rank)) @ rng.normal(size=(rank, d)) + 0.3 * rng.normal(size=(n, d))
    z = (f - f.mean(0)) / f.std(0)
    y = np.argmax(z[:, :k] * 2 + rng.normal(size=(n, k)), axis=1)
    return z, y


def _full_space(z, y, k, C, tol=_trainer.TOL, max_iter=_trainer.MAX_ITER, init=None):
    """The reference: L-BFGS-B over every weight, the start tested first, gtol on the full gradient."""
    n, d = z.shape
    free = 1 if k == 2 else k
    theta0 = np.zeros(d * free + free) if init is None else init
    res = minimize(lambda t: _trainer.objective(t, z, y, k, C)[:2], theta0, jac=True, method="L-BFGS-B",
                   options={"maxiter": max_iter, "gtol": tol, "ftol": 1e-12})
    w, b = res.x[: d * free].reshape(d, free), res.x[d * free:]
    return w, b, res.nit


def _free(sol, k):
    return (sol.kernel[:, 1:], sol.bias[1:]) if k == 2 else (sol.kernel, sol.bias)


def _gradient(w, b, z, y, k, C):
    return _trainer.objective(np.concatenate([w.ravel(), b]), z, y, k, C)[1]


def _assert_same_optimum(w1, b1, w2, b2, z, y, k, C):
    """Two approximate optima of the same strongly convex objective (modulus mu = 1 / (C n) for the kernel):
    ||x1 - x2|| <= (||g1|| + ||g2||) / mu, from their own gradients, each at most tol in every component."""
    g1, g2 = _gradient(w1, b1, z, y, k, C), _gradient(w2, b2, z, y, k, C)
    assert np.max(np.abs(g1)) <= _trainer.TOL and np.max(np.abs(g2)) <= _trainer.TOL
    mu = 1.0 / (C * len(z))
    assert np.linalg.norm(w1 - w2) <= (np.linalg.norm(g1) + np.linalg.norm(g2)) / mu
    if k == 2:  # the free column is class 1's logit against class 0's (pinned at 0)
        w1, b1, w2, b2 = (np.concatenate([np.zeros_like(a[..., :1]), a], axis=-1) for a in (w1, b1, w2, b2))
    np.testing.assert_allclose(_softmax(z @ w1 + b1), _softmax(z @ w2 + b2), atol=1e-5)


def _softmax(a):
    e = np.exp(a - a.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.mark.parametrize("n, d, k, C", [(40, 300, 3, 0.05), (40, 300, 3, 1.0), (20, 400, 2, 0.5), (60, 200, 5, 1.0)])
def test_span_fit_equals_sklearn(n, d, k, C):
    z, y = _problem(n, d, k, seed=k)
    assert _trainer.sample_span(z, 1 if k == 2 else k) is not None  # the span path is the one tested
    sol = _trainer.fit_probe(z, y, k, C=C)
    assert sol.converged
    ref = LogisticRegression(C=C, tol=1e-12, max_iter=100000).fit(z, y)
    want = ref.predict_proba(z)
    assert_not_all_zero(want - 1.0 / k)
    np.testing.assert_allclose(_softmax(z @ sol.kernel + sol.bias), want, atol=2e-5)
    # the weights themselves (sklearn's optimum lies in the span of the samples too)
    coef = ref.coef_.T  # multinomial: centred over the classes (the softmax's free direction); binary: class 1's
    mine = sol.kernel - sol.kernel.mean(1, keepdims=True) if k > 2 else sol.kernel[:, 1:]
    np.testing.assert_allclose(mine, coef, atol=2e-4 * np.abs(coef).max())


@pytest.mark.parametrize("n, d, k, C, rank", [(40, 300, 3, 1.0, None), (64, 512, 10, 1.0, 20), (20, 400, 2, 0.2, None),
                                              (50, 120, 4, 3.0, 10)])
def test_span_run_follows_the_full_space_run(n, d, k, C, rank):
    z, y = _problem(n, d, k, seed=n + d, rank=rank)
    free = 1 if k == 2 else k
    assert _trainer.sample_span(z, free) is not None
    sol = _trainer.fit_probe(z, y, k, C=C)
    w, b, nit = _full_space(z, y, k, C)
    assert sol.n_iter == nit  # the same stopping iteration: the full gradient's test, applied after each one
    mine_w, mine_b = _free(sol, k)
    assert_not_all_zero(w)
    # the same iterate up to rounding (amplified by ill-conditioning: rank-deficient features), and at
    # most the distance strong convexity allows between two points whose gradients pass the test
    np.testing.assert_allclose(mine_w, w, rtol=0, atol=1e-4 * np.abs(w).max())
    np.testing.assert_allclose(mine_b, b, rtol=0, atol=1e-4 * max(1.0, np.abs(b).max()))
    _assert_same_optimum(mine_w, mine_b, w, b, z, y, k, C)
    theta = np.concatenate([mine_w.ravel(), mine_b])
    _, _, loss = _trainer.objective(theta, z, y, k, C)
    assert sol.loss == loss


@pytest.mark.parametrize("n, d, k, seed", [(20, 400, 3, 0), (40, 200, 3, 2), (40, 200, 5, 0), (40, 200, 5, 1),
                                           (20, 200, 5, 0)])
def test_span_run_stops_where_the_full_space_run_stops_with_a_feature_axis_in_the_span(n, d, k, seed):
    # Feature 0 lies in the samples' span, spread over every basis vector: its gradient component can be
    # larger than every component of the gradient in the span. A stopping test in the span's coordinates
    # (L-BFGS-B's own, untightened) stops an iteration early on some of these; the full-space test does not.
    rng = np.random.default_rng(seed)
    basis = np.concatenate([np.eye(d)[:1], rng.normal(size=(n - 1, d)) / np.sqrt(d)])
    basis[1:, 0] = 0
    mix = rng.normal(size=(n, n))
    mix[:, 0] *= 3
    z = mix @ basis
    y = np.argmax(np.stack([z[:, 0]] + [z[:, 0] * s for s in rng.normal(size=k - 1)], 1)
                  + rng.normal(size=(n, k)), 1)
    span = _trainer.sample_span(z, k)
    assert span is not None
    assert np.max(np.einsum("ij,ij->i", span[0], span[0])) == pytest.approx(1.0)  # the axis: a row of norm 1
    sol = _trainer.fit_probe(z, y, k, C=1.0)
    w, b, nit = _full_space(z, y, k, 1.0)
    assert sol.n_iter == nit
    _assert_same_optimum(sol.kernel, sol.bias, w, b, z, y, k, 1.0)


@pytest.mark.parametrize("k", [3, 2])
def test_span_iterates_equal_the_full_space_iterates_from_any_start_unpenalised(k):
    # C = inf: the part of a warm start off the samples' span gets no gradient and stays; a few iterations
    # from the same start must give the same weights as the full-space run (iterates, not only the optimum)
    n, d = 20, 300
    z, y = _problem(n, d, k, seed=7)
    rng = np.random.default_rng(8)
    free = 1 if k == 2 else k
    w0, b0 = rng.normal(size=(d, free)) * 0.1, rng.normal(size=free)
    kernel0 = np.concatenate([np.zeros((d, 1)), w0], axis=1) if k == 2 else w0
    bias0 = np.concatenate([[0.0], b0]) if k == 2 else b0
    span = _trainer.sample_span(z, free)
    assert span is not None
    for iters in (1, 4, 12):
        sol = _trainer._fit_probe(z, y, k, np.inf, iters, 1e-12, (kernel0, bias0), span)
        w, b, nit = _full_space(z, y, k, np.inf, tol=1e-12, max_iter=iters,
                                init=np.concatenate([w0.ravel(), b0]))
        assert sol.n_iter == nit == iters
        mine_w, mine_b = _free(sol, k)
        np.testing.assert_allclose(mine_w, w, rtol=0, atol=1e-9 * np.abs(w).max())
        np.testing.assert_allclose(mine_b, b, rtol=0, atol=1e-9 * np.abs(b).max())
        off = mine_w - span[0] @ (span[0].T @ mine_w)
        np.testing.assert_allclose(off, w0 - span[0] @ (span[0].T @ w0), atol=1e-12)  # kept as it started


def test_span_warm_start_reaches_the_optimum_and_a_converged_start_stops_at_once():
    z, y = _problem(40, 300, 3, seed=11)
    sol = _trainer.fit_probe(z, y, 3, C=1.0)
    rng = np.random.default_rng(12)
    far = _trainer.fit_probe(z, y, 3, C=1.0, init=(rng.normal(size=(300, 3)), rng.normal(size=3)))
    assert far.converged
    _assert_same_optimum(far.kernel, far.bias, sol.kernel, sol.bias, z, y, 3, 1.0)
    assert far.objective == pytest.approx(sol.objective, rel=1e-7)
    again = _trainer.fit_probe(z, y, 3, C=1.0, init=(sol.kernel, sol.bias))
    assert again.n_iter == 0 and again.converged  # the start passes the test: no iteration, as L-BFGS-B does
    np.testing.assert_allclose(again.kernel, sol.kernel, atol=1e-12)


def test_multilabel_probe_in_the_span_is_one_logistic_regression_per_label():
    rng = np.random.default_rng(13)
    z, _ = _problem(40, 250, 3, seed=13)
    y = (z[:, :3] + rng.normal(size=(40, 3)) > 0).astype(int)
    assert _trainer.sample_span(z, 3) is not None
    sol = _trainer.fit_task_probe(MultiLabelTask("logits", 3), z, y, C=0.5)
    for j in range(3):
        lr = LogisticRegression(C=0.5, tol=1e-12, max_iter=100000).fit(z, y[:, j])
        assert_not_all_zero(lr.coef_)
        np.testing.assert_allclose(sol.kernel[:, j], lr.coef_[0], atol=2e-4 * np.abs(lr.coef_).max())
        w, b, _ = _full_space(z, y[:, j], 2, 0.5)
        np.testing.assert_allclose(sol.kernel[:, j], w[:, 0], atol=1e-5 * np.abs(w).max())


def test_sample_span_is_an_orthonormal_basis_of_the_samples_and_only_where_it_pays():
    z, _ = _problem(40, 300, 3, seed=14)
    v, zr = _trainer.sample_span(z, 3)
    assert v.shape == (300, 40) and zr.shape == (40, 40)
    np.testing.assert_allclose(v.T @ v, np.eye(40), atol=1e-12)
    np.testing.assert_allclose(z @ v, zr, atol=1e-12)
    np.testing.assert_allclose(zr @ v.T, z, atol=1e-12)  # every sample lies in the span
    assert _trainer.sample_span(z.T[:40, :40], 3) is None  # n >= D: nothing to gain
    wide = np.zeros((512, 1024))
    assert _trainer.sample_span(wide, 1) is None  # the QR would cost more than the fit saves
    assert _trainer.sample_span(wide[:128], 10) is not None
