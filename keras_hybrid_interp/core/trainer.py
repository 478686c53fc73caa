"""The one probe trainer: L2-regularised multinomial logistic regression, to its optimum.

Every probe of the package is fitted here: :meth:`HybridInterpreter.fit_probes`
(on one device or under a ``tf.distribute`` strategy, whose forward pass
produces the cached features) and :class:`InterpretationCallback` (with a
warm start). The problem is the one scikit-learn's ``LogisticRegression``
solves, with the same penalty parameter ``C``::

    minimise over (W, b):  sum_n CE(softmax(z_n W + b), t_n) + ||W||_F^2 / (2 C)

on standardized features ``z`` (``StandardScaler``), where ``t_n`` is the
class of sample ``n`` or, for soft targets, a distribution. The intercept is
not penalised. ``C=inf`` is unpenalised. With ``K = 2`` classes the first
column is pinned at 0, so ``p(1) = sigmoid(z w + b)``: scikit-learn's binary
logistic regression (its penalty is ``||w||^2 / 2`` on that one vector).

Solver: full-batch L-BFGS (``scipy.optimize``, which scikit-learn depends on)
in float64 on the cached features: the problem is convex (strictly so for a
finite ``C``), so the result does not depend on the starting point, the batch
order or a learning rate, and a warm start only saves iterations. Nothing is
compiled and no Keras variable is touched while fitting; the caller assigns
the result to the probe layer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import numpy as np

from .output import OutputReader, cross_entropy_from_log_probabilities

__all__ = ["ProbeSolution", "fit_probe", "objective", "check_C", "check_solver", "restandardize"]

#: Default iteration cap of L-BFGS.
MAX_ITER = 1000
#: Default tolerance on the largest gradient component of the mean objective.
TOL = 1e-6


@dataclasses.dataclass
class ProbeSolution:
    """A fitted probe in standardized coordinates (float64).

    ``kernel`` is (D, K) and ``bias`` (K,); for K = 2 their first column is 0.
    ``loss`` is the mean cross-entropy on the training samples (without the
    penalty), ``objective`` the minimised value (mean, with the penalty).
    """

    kernel: np.ndarray
    bias: np.ndarray
    loss: float
    objective: float
    n_iter: int
    converged: bool


def check_C(C, argname="C") -> float:
    if isinstance(C, bool) or not isinstance(C, (int, float, np.integer, np.floating)) or not C > 0:
        raise ValueError(
            f"`{argname}` must be a positive float (inverse regularisation strength, as in scikit-learn's "
            f"LogisticRegression; np.inf for no penalty); received {C!r}."
        )
    return float(C)


def check_solver(max_iter, tol, argnames=("max_iter", "tol")):
    """ValueError unless ``max_iter`` is a positive int and ``tol`` a positive float."""
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"`{argnames[0]}` must be a positive int; received {max_iter!r}.")
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.integer, np.floating)) or not tol > 0:
        raise ValueError(f"`{argnames[1]}` must be a positive float; received {tol!r}.")


def restandardize(old_mean, old_scale, kernel, bias, mean, scale):
    """A probe's linear map of the raw features, re-expressed for features standardized by (mean, scale).

    The warm start of a refit on drifted features: ``(kernel, bias)`` fitted on
    ``(f - old_mean) * old_scale`` give the same logits as the returned pair on
    ``(f - mean) * scale`` (features with ``scale == 0`` get weight 0).
    """
    w = kernel * old_scale[:, None]
    b = bias - old_mean @ w
    return np.divide(w, scale[:, None], out=np.zeros_like(w), where=scale[:, None] > 0), b + mean @ w


def _free_columns(k: int) -> int:
    return 1 if k == 2 else k


def _unpack(theta, d, k):
    f = _free_columns(k)
    w = theta[: d * f].reshape(d, f)
    b = theta[d * f:]
    return w, b


def objective(theta, z, targets, k, C):
    """Mean objective and its gradient at ``theta`` (flattened free kernel, then bias).

    ``targets`` are integer classes (n,) or distributions (n, K).
    """
    n, d = z.shape
    w, b = _unpack(theta, d, k)
    logits = z @ w + b  # K logits, or class 1's logit against class 0 for K = 2
    reader = OutputReader("logits", 1 if k == 2 else k)
    logp = reader.log_probabilities(logits)
    loss = cross_entropy_from_log_probabilities(logp, targets)
    p = np.exp(logp)
    t = targets
    if t.ndim == 1:
        t = np.zeros_like(p)
        t[np.arange(n), targets] = 1.0
    resid = (p - t) / n  # d mean CE / d logits of the K classes
    if k == 2:
        resid = resid[:, 1:]  # the free logit is class 1's (class 0's is pinned at 0)
    penalty = 0.0 if math.isinf(C) else 1.0 / (C * n)
    value = float(loss.mean()) + 0.5 * penalty * float(np.sum(w * w))
    gw = z.T @ resid + penalty * w
    gb = resid.sum(axis=0)
    return value, np.concatenate([gw.ravel(), gb]), float(loss.mean())


_CONTROLLER = []  # one threadpoolctl controller, made on first use (inspecting the libraries costs ~10 ms)


def single_thread_blas(work: float = 0.0):
    """Small NumPy linear algebra in one BLAS thread (a context manager).

    Right after a TensorFlow pass a multi-threaded BLAS fights TensorFlow's
    spinning thread pool for the cores: one small probe fit took 330 ms
    instead of 15 ms on 2 cores. Problems larger than ``work > 5e7`` keep
    every thread.
    """
    if work > 5e7:
        return contextlib.nullcontext()
    if not _CONTROLLER:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - scikit-learn brings it
            return contextlib.nullcontext()
        _CONTROLLER.append(ThreadpoolController())
    return _CONTROLLER[0].limit(limits=1, user_api="blas")


def fit_probe(z, targets, num_classes, *, C=1.0, max_iter=MAX_ITER, tol=TOL, init=None) -> ProbeSolution:
    """Fits one probe on standardized features ``z`` (n, D).

    Parameters
    ----------
    z : ndarray (n, D), float64
    targets : int ndarray (n,) or float ndarray (n, K)
    num_classes : int
        K >= 2.
    C, max_iter, tol : see the module docstring.
    init : (kernel (D, K), bias (K,)), optional
        Warm start (the previous probe, in the same coordinates).
    """
    from scipy.optimize import minimize

    check_solver(max_iter, tol)
    z = np.asarray(z, dtype=np.float64)
    n, d = z.shape
    k = int(num_classes)
    targets = np.asarray(targets)
    targets = targets.astype(np.int64) if targets.ndim == 1 else targets.astype(np.float64)
    f = _free_columns(k)
    theta0 = np.zeros(d * f + f)
    if init is not None:
        kernel0, bias0 = init
        kernel0 = np.asarray(kernel0, np.float64)
        bias0 = np.asarray(bias0, np.float64)
        if k == 2:  # only the difference of the two logits matters
            kernel0 = kernel0[:, 1:] - kernel0[:, :1]
            bias0 = bias0[1:] - bias0[:1]
        theta0 = np.concatenate([kernel0.ravel(), bias0])
    last = {}

    def fun(theta):
        value, grad, loss = objective(theta, z, targets, k, C)
        last["loss"] = loss
        return value, grad

    with single_thread_blas(n * d * f):
        res = minimize(fun, theta0, jac=True, method="L-BFGS-B",
                       options={"maxiter": int(max_iter), "gtol": float(tol), "ftol": 1e-12})
        value, grad, loss = objective(res.x, z, targets, k, C)
    w, b = _unpack(res.x, d, k)
    if k == 2:
        w = np.concatenate([np.zeros((d, 1)), w], axis=1)
        b = np.concatenate([[0.0], b])
    converged = bool(res.success or np.max(np.abs(grad), initial=0.0) <= tol)
    return ProbeSolution(w, b, loss, value, int(res.nit), converged)
