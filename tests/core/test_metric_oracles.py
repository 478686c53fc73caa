"""The task layer's metrics, losses and target checks, and the bootstrap, against independent oracles.

scikit-learn (roc_auc_score, average_precision_score, r2_score, confusion_matrix, jaccard_score,
log_loss), NumPy closed forms and a slow sample-by-sample bootstrap. Every comparison goes through
``assert_not_all_zero`` first: zeros compared with zeros test nothing.
"""

import numpy as np
import pytest
from sklearn import metrics as skm

from keras_hybrid_interp.core.bootstrap import PoissonBootstrap
from keras_hybrid_interp.core.task import (
    MultiLabelTask,
    RegressionTask,
    SegmentationTask,
    binary_metrics,
    confusion,
    confusion_scores,
    r2,
)

from oracles import assert_not_all_zero


@pytest.mark.parametrize("ties", [False, True])
def test_binary_metrics_equal_sklearn(ties):
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(5, 60))
        y = rng.integers(0, 2, n)
        y[0], y[1] = 0, 1
        score = rng.normal(size=n) + 0.8 * y
        if ties:  # few distinct values: many tied thresholds
            score = np.round(score * 2) / 2
        auroc, ap = binary_metrics(y, score)
        want = skm.roc_auc_score(y, score), skm.average_precision_score(y, score)
        assert_not_all_zero(want)
        np.testing.assert_allclose((auroc, ap), want, rtol=1e-12, atol=1e-12, err_msg=f"trial {trial}")
    assert all(np.isnan(binary_metrics(np.ones(5), np.arange(5.0))))


def test_r2_equals_sklearn_with_constant_targets():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(40, 3))
    pred = y + rng.normal(scale=0.5, size=y.shape)
    assert_not_all_zero(y, pred)
    assert r2(y, pred) == pytest.approx(skm.r2_score(y, pred), rel=1e-12)
    # A constant target column: 1 when predicted exactly, 0 otherwise (scikit-learn's convention).
    yc = y.copy()
    yc[:, 1] = 2.0
    exact = pred.copy()
    exact[:, 1] = 2.0
    assert r2(yc, exact) == pytest.approx(skm.r2_score(yc, exact), rel=1e-12)
    assert r2(yc, pred) == pytest.approx(skm.r2_score(yc, pred), rel=1e-12)


def test_confusion_and_iou_equal_sklearn():
    rng = np.random.default_rng(2)
    k = 4
    t = rng.integers(0, k, 300)
    p = np.where(rng.random(300) < 0.6, t, rng.integers(0, k, 300))
    p[p == 3] = 2  # class 3 never predicted: its IoU is 0, its false negatives matter
    cm = confusion(t, p, k)
    want = skm.confusion_matrix(t, p, labels=np.arange(k))
    assert_not_all_zero(want)
    np.testing.assert_array_equal(cm, want)
    s = confusion_scores(cm)
    iou = skm.jaccard_score(t, p, labels=np.arange(k), average=None, zero_division=0)
    dice = skm.f1_score(t, p, labels=np.arange(k), average=None, zero_division=0)
    assert_not_all_zero(iou, dice)
    np.testing.assert_allclose(s["iou"], iou, rtol=1e-12)
    np.testing.assert_allclose(s["dice"], dice, rtol=1e-12)
    assert s["pixel_accuracy"] == pytest.approx(skm.accuracy_score(t, p), rel=1e-12)


def test_task_losses_equal_sklearn():
    rng = np.random.default_rng(3)
    n, k = 50, 3
    logits = rng.normal(size=(n, k)) * 2
    labels = rng.integers(0, 2, (n, k))
    ml = MultiLabelTask("logits", k)
    per = ml.loss(logits, labels)
    prob = 1 / (1 + np.exp(-logits))
    want = np.mean([[skm.log_loss([labels[i, j]], [prob[i, j]], labels=[0, 1]) for j in range(k)]
                    for i in range(n)], axis=1)
    assert_not_all_zero(want)
    np.testing.assert_allclose(per, want, rtol=1e-9)
    reg = RegressionTask(k)
    out, t = rng.normal(size=(n, k)), rng.normal(size=(n, k))
    want = np.array([skm.mean_squared_error(t[i], out[i]) for i in range(n)])
    assert_not_all_zero(want)
    np.testing.assert_allclose(reg.loss(out, t), want, rtol=1e-12)
    seg = SegmentationTask("softmax", 3, (4, 5))
    z = rng.normal(size=(6, 4, 5, 3))
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    masks = rng.integers(0, 3, (6, 4, 5))
    want = np.array([skm.log_loss(masks[i].ravel(), p[i].reshape(-1, 3), labels=[0, 1, 2]) for i in range(6)])
    assert_not_all_zero(want)
    np.testing.assert_allclose(seg.loss(p, masks), want, rtol=1e-6)


def test_targets_checks_refuse_out_of_range():
    seg = SegmentationTask("softmax", 3, (4, 5))
    ok = np.zeros((2, 4, 5), int)
    ok[0, 0, 0] = 2
    np.testing.assert_array_equal(seg.targets(ok), ok)
    bad = ok.copy()
    bad[1, 2, 3] = 3  # class K: outside 0..K-1
    with pytest.raises(ValueError, match="classes outside 0..2"):
        seg.targets(bad)
    reg = RegressionTask(2)
    y = np.ones((5, 2))
    np.testing.assert_array_equal(reg.targets(y), y)
    y[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        reg.targets(y)


def test_poisson_bootstrap_equals_a_slow_reference():
    rng = np.random.default_rng(4)
    values = rng.normal(size=(37, 3)) + np.array([0.0, 5.0, -2.0])
    boot = PoissonBootstrap(200, 3, random_state=11)
    for s in range(0, 37, 10):
        boot.update(values[s:s + 10])
    # Slow reference: the same Poisson(1) weights drawn sample by sample in stream order.
    ref_rng = np.random.default_rng(11)
    w = np.stack([ref_rng.poisson(1.0, size=200) for _ in range(37)]).astype(np.float64)  # (N, B)
    keep = w.sum(0) > 0
    means = np.array([[np.sum(w[:, b] * values[:, m]) / np.sum(w[:, b]) for m in range(3)]
                      for b in np.flatnonzero(keep)])
    assert_not_all_zero(means)
    np.testing.assert_allclose(boot.resampled_means(), means, rtol=1e-12)
    low, high = boot.interval(0.9)
    np.testing.assert_allclose(low, np.quantile(means, 0.05, axis=0), rtol=1e-12)
    np.testing.assert_allclose(high, np.quantile(means, 0.95, axis=0), rtol=1e-12)


def test_macro_average_precision_of_many_outputs_equals_each_alone_and_sklearn():
    """MacroAveragePrecision.many (a chunk of jobs in one sort) gives each output's own score bit for bit:
    ties, a label with one class (left out of the mean) and an all-single-class output (NaN) included."""
    rng = np.random.default_rng(0)
    y = (rng.random((40, 5)) < 0.4).astype(np.float32)
    y[:, 4] = 1.0  # one class only: NaN average precision, left out of the macro mean
    outs = rng.random((6, 40, 5)).astype(np.float32)
    outs[1] = np.round(outs[1], 1)  # many ties
    score = MultiLabelTask("sigmoid", 5).score_fn("average_precision", y)
    many = score.many(outs)
    for j, out in enumerate(outs):
        assert many[j] == score(out)  # bit for bit
        want = np.mean([skm.average_precision_score(y[:, k], out[:, k]) for k in range(4)])
        assert many[j] == pytest.approx(want, abs=1e-12)
    single = MultiLabelTask("sigmoid", 5).score_fn("average_precision", np.ones_like(y))
    assert np.isnan(single.many(outs)).all() and np.isnan(single(outs[0]))
