"""The one probe trainer against scikit-learn's LogisticRegression at the same C (its objective's penalty scale)."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from keras_hybrid_interp.core import trainer as _trainer

from oracles import assert_not_all_zero


@pytest.mark.parametrize("k, C", [(3, 0.05), (2, 0.05), (3, 10.0)])
def test_fit_probe_equals_sklearn_logistic_regression(k, C):
    rng = np.random.default_rng(k)
    n, d = 150, 4
    z = rng.normal(size=(n, d))
    y = np.argmax(z[:, :k] * 1.5 + rng.normal(size=(n, k)), axis=1)
    sol = _trainer.fit_probe(z, y, k, C=C)
    ref = LogisticRegression(C=C, tol=1e-12, max_iter=100000).fit(z, y)
    logits = z @ sol.kernel + sol.bias
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    want = ref.predict_proba(z)
    assert_not_all_zero(want - 1.0 / k)
    np.testing.assert_allclose(p, want, atol=2e-5)
