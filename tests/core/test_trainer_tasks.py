"""The one trainer's task probes against scikit-learn: ridge by leave-one-out, one logistic per label."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, RidgeCV

from keras_hybrid_interp.core.task import MultiLabelTask, RegressionTask
from keras_hybrid_interp.core.trainer import RIDGE_ALPHAS, fit_ridge, fit_task_probe


@pytest.mark.parametrize("n, d, k, seed", [(9, 4, 1, 0), (12, 30, 2, 1), (60, 8, 3, 2), (40, 40, 1, 3)])
def test_ridge_is_ridge_cv_with_its_leave_one_out_error(n, d, k, seed):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, d))
    y = z[:, :2] @ rng.normal(size=(2, k)) + rng.normal(size=(n, k)) * rng.uniform(0.1, 3)
    sol = fit_ridge(z, y)
    ref = RidgeCV(alphas=RIDGE_ALPHAS).fit(z, y)
    assert sol.alpha == ref.alpha_
    # RidgeCV's best_score_ is minus the mean leave-one-out squared error of the chosen alpha
    assert sol.loo_mse == pytest.approx(-ref.best_score_, rel=1e-9)
    np.testing.assert_allclose(sol.kernel, ref.coef_.reshape(k, d).T, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(sol.bias, np.ravel(ref.intercept_), rtol=1e-8, atol=1e-10)
    assert fit_task_probe(RegressionTask(k), z, y).alpha == ref.alpha_


def test_ridge_picks_a_different_alpha_per_problem():
    # the choice is real: a noise-free problem takes the smallest penalty, a pure-noise one a large penalty
    rng = np.random.default_rng(4)
    z = rng.normal(size=(50, 5))
    assert fit_ridge(z, z @ rng.normal(size=5)).alpha == RIDGE_ALPHAS[0]
    assert fit_ridge(z, rng.normal(size=50)).alpha >= 100


def test_multilabel_probe_is_one_logistic_regression_per_label_with_soft_targets_too():
    rng = np.random.default_rng(5)
    z = rng.normal(size=(70, 4))
    y = (z[:, :3] + rng.normal(size=(70, 3)) > 0).astype(int)
    sol = fit_task_probe(MultiLabelTask("logits", 3), z, y, C=2.0, tol=1e-10)
    for j in range(3):
        lr = LogisticRegression(C=2.0, tol=1e-12, max_iter=10000).fit(z, y[:, j])
        np.testing.assert_allclose(sol.kernel[:, j], lr.coef_[0], atol=1e-6)
        np.testing.assert_allclose(sol.bias[j], lr.intercept_[0], atol=1e-6)
    # soft targets p: the same as sample weights p on label 1 and 1 - p on label 0 (two copies of each sample)
    p = 1 / (1 + np.exp(-(z[:, :3] * 1.5)))
    soft = fit_task_probe(MultiLabelTask("logits", 3), z, p, C=2.0, tol=1e-10)
    zz = np.concatenate([z, z])
    for j in range(3):
        w = np.concatenate([1 - p[:, j], p[:, j]])
        lab = np.r_[np.zeros(70), np.ones(70)]
        lr = LogisticRegression(C=2.0, tol=1e-12, max_iter=10000).fit(zz, lab, sample_weight=w)
        np.testing.assert_allclose(soft.kernel[:, j], lr.coef_[0], atol=1e-5)
    # a warm start reaches the same optimum
    warm = fit_task_probe(MultiLabelTask("logits", 3), z, y, C=2.0, tol=1e-10, init=(sol.kernel, sol.bias))
    np.testing.assert_allclose(warm.kernel, sol.kernel, atol=1e-6)


def test_streamed_r2_keeps_its_digits_far_from_zero_and_is_zero_for_a_constant_target():
    from sklearn.metrics import r2_score

    from keras_hybrid_interp.core.metrics import MetricSums

    rng = np.random.default_rng(6)
    task = RegressionTask(2)
    y = np.stack([1e8 + rng.normal(size=2000), np.full(2000, 7.7)], axis=1)
    pred = y + rng.normal(size=y.shape) * [0.5, 1e-3]
    sums = MetricSums(task, [task], bootstrap=50, random_state=0)
    for s in range(0, 2000, 300):  # batches that do not divide N
        sums.update([pred[s:s + 300]], y[s:s + 300])
    got = sums.result()["r2"][0]
    # The constant column scores 0 (imperfect predictions), as scikit-learn defines it (force_finite); its own
    # r2_score on that column divides by the rounding of 7.7's mean (-6e18), so the oracle takes the definition.
    want = (r2_score(y[:, 0], pred[:, 0]) + 0.0) / 2
    assert got == pytest.approx(want, abs=1e-9)
    lo, hi = sums.intervals(0.9)
    assert np.isfinite(lo["r2"]).all() and lo["r2"][0] <= got <= hi["r2"][0]
    assert hi["r2"][0] < 0.5  # the constant column's 0 halves every resample's mean: no -1e7 from rounding
