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
order or a learning rate, and a warm start only saves iterations. With fewer
samples than features it runs in the span of the samples (the same iterates,
up to rounding, at a fraction of the cost: :func:`sample_span`). Many small
binary problems at once (the concepts' CAVs: tens of samples, hundreds of
features) are solved by :func:`fit_binary_probes`: the same objective and
stopping test, Newton steps in each problem's sample span, batched. Nothing is
compiled and no Keras variable is touched while fitting; the caller assigns
the result to the probe layer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import numpy as np

from .output import OutputReader, cross_entropy_from_log_probabilities
from .validation import check_int, check_real

__all__ = ["ProbeSolution", "RidgeSolution", "fit_probe", "fit_binary_probes", "fit_ridge", "fit_task_probe",
           "probe_logits", "objective", "check_C", "check_solver", "restandardize"]

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
    return check_real(C, argname, low=0, low_open=True, what=(
        " (inverse regularisation strength, as in scikit-learn's LogisticRegression; np.inf for no penalty)"))


def check_solver(max_iter, tol, argnames=("max_iter", "tol")):
    """ValueError unless ``max_iter`` is a positive int and ``tol`` a positive float."""
    check_int(max_iter, argnames[0])
    check_real(tol, argnames[1], low=0, low_open=True)


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


_CONTROLLER: list = []  # one threadpoolctl controller, made on first use (inspecting the libraries costs ~10 ms)


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

    With fewer samples than features (``n < D``), L-BFGS runs in the span of
    the samples where that is cheaper (:func:`sample_span`), to the same
    iterate as in the D dimensions (up to rounding).
    """
    check_solver(max_iter, tol)
    z = np.asarray(z, dtype=np.float64)
    span = sample_span(z, _free_columns(int(num_classes)))
    return _fit_probe(z, targets, num_classes, C, max_iter, tol, init, span)


#: The objective evaluations the span's QR factorization is bet to pay for (:func:`sample_span`).
SPAN_EVALUATIONS = 30


def sample_span(z, columns: int):
    """``(V, z V)`` with ``V`` (D, n) an orthonormal basis of the span of ``z``'s n rows, or None.

    ``z.T = V R`` (QR). Given where it pays: ``n < D`` and its ~``2 D n^2``
    flops at most what :data:`SPAN_EVALUATIONS` evaluations of the objective
    save in the span (``2 n columns (D - n)`` flops each, ``columns`` the
    free kernel columns of every fit sharing it). Fits to ``tol = 1e-6`` of
    pooled CNN features take 30 to 150 evaluations.
    """
    n, d = z.shape
    if d <= n or n * d > SPAN_EVALUATIONS * columns * (d - n):
        return None
    with single_thread_blas(d * n * n):
        v, r = np.linalg.qr(z.T)
    return v, r.T


def _fit_probe(z, targets, num_classes, C, max_iter, tol, init, span) -> ProbeSolution:
    """:func:`fit_probe` on float64 ``z``, in ``span`` (:func:`sample_span`) unless it is None."""
    from scipy.optimize import minimize

    check_solver(max_iter, tol)
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
    with single_thread_blas(n * d * f):
        if span is not None:  # fewer samples than features: the same iterates in the samples' span, cheaper
            theta, nit, success = _fit_in_sample_span(span, targets, k, C, theta0, max_iter, tol)
        else:
            res = minimize(lambda t: objective(t, z, targets, k, C)[:2], theta0, jac=True, method="L-BFGS-B",
                           options={"maxiter": int(max_iter), "gtol": float(tol), "ftol": 1e-12})
            theta, nit, success = res.x, int(res.nit), bool(res.success)
        value, grad, loss = objective(theta, z, targets, k, C)
    w, b = _unpack(theta, d, k)
    if k == 2:
        w = np.concatenate([np.zeros((d, 1)), w], axis=1)
        b = np.concatenate([[0.0], b])
    converged = bool(success or np.max(np.abs(grad), initial=0.0) <= tol)
    return ProbeSolution(w, b, loss, value, nit, converged)


def _fit_in_sample_span(span, targets, k, C, theta0, max_iter, tol):
    """:func:`fit_probe`'s L-BFGS for ``n < D``, run in the span of the samples: ``(theta, n_iter, success)``.

    ``span`` is ``(V, z V)`` (:func:`sample_span`). With ``z.T = V R`` (``V``
    (D, n), orthonormal columns), the kernel is
    ``W = V A + W_perp``: the logits ``z W = R.T A`` and the gradient
    ``V (dA) + W_perp / (C n)`` show that the problem in ``A`` is the
    original one on the n features ``R.T``, and that ``W_perp`` only decays
    to 0 (it stays where it started for ``C = inf``). L-BFGS(-B, without
    bounds) computes with inner products only, so from a start in the span
    (0, or a warm start projected onto it) its iterates are ``V`` times
    those in ``A``, in exact arithmetic, at n/D of the cost per iteration.
    The one thing that is not rotation-invariant is the stopping rule (the
    largest component of the gradient): it is applied to the full gradient
    ``V dA`` after every iteration (a callback), as the full-space run
    would, and L-BFGS-B's own test in ``A`` is tightened so that it never
    stops first. So the run stops at the same iteration, and the result
    differs from the full-space run's only by rounding (tested).
    """
    from scipy.optimize import minimize

    v, zr = span  # zr = z @ v: the samples' coordinates in the span (n, n)
    d, m = v.shape
    w0, b0 = _unpack(theta0, d, k)
    a0 = v.T @ w0
    rest = w0 - v @ a0 if math.isinf(C) else 0.0  # unpenalised, the part off the span keeps its start
    rho = float(np.sqrt(np.max(np.einsum("ij,ij->i", v, v))))  # ||V g||_inf <= rho ||g||_2 per column
    root_d = math.sqrt(d)

    def full_gradient_small(grad):
        """Whether the full-space gradient ``V dA`` (and the bias's) is at most ``tol`` in every component."""
        ga, gb = _unpack(grad, m, k)
        if np.max(np.abs(gb)) > tol:
            return False
        top = float(np.sqrt(np.max(np.einsum("ij,ij->j", ga, ga))))  # the largest column norm
        if rho * top <= tol:
            return True
        if top > tol * root_d:  # ||V g||_inf >= ||g||_2 / sqrt(D)
            return False
        return bool(np.max(np.abs(v @ ga)) <= tol)

    last: dict = {}

    def fun(theta):
        value, grad, _ = objective(theta, zr, targets, k, C)
        last["theta"], last["grad"] = theta.copy(), grad
        return value, grad

    def full(theta):
        a, b = _unpack(theta, m, k)
        return np.concatenate([(v @ a + rest).ravel(), b])

    start = np.concatenate([a0.ravel(), b0])
    if full_gradient_small(fun(start)[1]):  # L-BFGS-B tests the start before its first iteration
        return full(start), 0, True
    stop: dict = {"nit": 0}

    def callback(xk):
        stop["nit"] += 1
        grad = last["grad"] if np.array_equal(xk, last["theta"]) else fun(xk)[1]
        if full_gradient_small(grad):
            stop["x"] = np.array(xk, copy=True)
            raise StopIteration

    gtol = tol / max(1.0, rho * math.sqrt(m))  # ||g||_inf <= gtol implies the full test: it never stops first
    try:
        res = minimize(fun, start, jac=True, method="L-BFGS-B", callback=callback,
                       options={"maxiter": int(max_iter), "gtol": float(gtol), "ftol": 1e-12})
    except StopIteration:  # scipy < 1.11 lets the callback's StopIteration through
        res = None
    if "x" in stop:
        return full(stop["x"]), stop["nit"], True
    assert res is not None  # only the callback's stop leaves no result, and it set stop["x"]
    return full(res.x), int(res.nit), bool(res.success)


# ----------------------------------------------------------------------
# Many small binary probes at once (the concepts' CAVs)
# ----------------------------------------------------------------------
#: Bytes of float64 work arrays one batch of :func:`fit_binary_probes` may take.
BATCH_BYTES = 64 * 2**20
#: Newton steps of :func:`fit_binary_probes` at most (it converges in about 10).
NEWTON_MAX_ITER = 100


def fit_binary_probes(problems, *, C=1.0, max_iter=MAX_ITER, tol=TOL) -> list[ProbeSolution]:
    """:func:`fit_probe` with ``num_classes=2`` for each ``(z, t)`` of ``problems``, the small ones solved together.

    ``z`` (n, D) are standardized features, ``t`` (n,) 0/1 targets; the
    problems may differ in n and D. The objective and the stopping test are
    :func:`fit_probe`'s; the solver differs where ``n < D`` and ``C`` is
    finite (the concepts' CAVs: tens of samples, hundreds of features):
    Newton's method in the span of each problem's samples, batched over the
    problems of one D. The L2 optimum lies in that span (the penalty only
    shrinks what lies outside it), whose coordinates come from the
    eigendecomposition of the Gram matrix ``z z.T`` (rank-deficient samples
    included); the problem there is strictly convex in ``n + 1`` unknowns,
    and Newton steps with a backtracking line search reach the optimum to
    rounding in a few steps (L-BFGS needs tens of objective evaluations,
    one small NumPy call each, per problem). A problem is converged when the
    full-space gradient's largest component is at most ``tol``, as in
    :func:`fit_probe`. The rest (``n >= D``, ``C = inf``) go to
    :func:`fit_probe` one by one. Shorter problems of a batch are padded
    with samples of weight 0, which change nothing.
    """
    check_solver(max_iter, tol)
    out: list = [None] * len(problems)
    groups: dict = {}
    for i, (z, t) in enumerate(problems):
        z = np.asarray(z, dtype=np.float64)
        n, d = z.shape
        if d <= n or math.isinf(C) or n < 2:
            out[i] = fit_probe(z, np.asarray(t).astype(np.int64), 2, C=C, max_iter=max_iter, tol=tol)
        else:
            groups.setdefault(d, []).append(i)
    for d, members in groups.items():
        n_max = max(len(problems[i][1]) for i in members)
        step = max(1, BATCH_BYTES // (8 * (n_max * d * 2 + 8 * n_max * n_max)))
        for start in range(0, len(members), step):
            chunk = members[start:start + step]
            for i, sol in zip(chunk, _newton_in_span([problems[i] for i in chunk], n_max, C, max_iter, tol)):
                out[i] = sol
    return out


def _newton_in_span(problems, n, C, max_iter, tol) -> list[ProbeSolution]:
    """Newton's method for a batch of binary problems with fewer samples than features (:func:`fit_binary_probes`)."""
    b_count, d = len(problems), np.asarray(problems[0][0]).shape[1]
    z = np.zeros((b_count, n, d))
    t = np.zeros((b_count, n))
    s = np.zeros((b_count, n))  # sample weights: 1, or 0 for the padding
    for j, (zj, tj) in enumerate(problems):
        m = len(tj)
        z[j, :m], t[j, :m], s[j, :m] = zj, tj, 1.0
    count = s.sum(axis=1)  # N per problem
    with single_thread_blas(b_count * n * n * d):
        gram = np.matmul(z, np.swapaxes(z, 1, 2))  # (B, n, n)
        evals, evecs = np.linalg.eigh(gram)
        keep = evals > 1e-12 * np.maximum(evals[:, -1:], 1e-300)
        root = np.sqrt(np.where(keep, evals, 0.0))
        f = evecs * root[:, None, :]  # (B, n, n): the samples' coordinates in an orthonormal basis of their span
        a = np.zeros((b_count, n))
        mean_t = (s * t).sum(axis=1) / count
        bias = np.log(np.clip(mean_t, 1e-12, 1) / np.clip(1 - mean_t, 1e-12, 1))
        pen = 1.0 / (C * count)  # the mean objective's penalty factor

        def value(a, bias):
            logits = np.einsum("bnk,bk->bn", f, a) + bias[:, None]
            ce = np.logaddexp(0.0, logits) - t * logits
            return (s * ce).sum(axis=1) / count + 0.5 * pen * np.einsum("bk,bk->b", a, a), logits

        obj, logits = value(a, bias)
        active = np.ones(b_count, bool)
        n_iter = np.zeros(b_count, np.int64)
        for _ in range(min(int(max_iter), NEWTON_MAX_ITER)):
            p = 1.0 / (1.0 + np.exp(-logits))
            r = s * (p - t) / count[:, None]
            g = np.concatenate([np.einsum("bnk,bn->bk", f, r) + pen[:, None] * a, r.sum(axis=1)[:, None]], axis=1)
            active &= np.max(np.abs(g), axis=1) > 1e-3 * tol  # far below tol in any basis: done
            if not active.any():
                break
            wgt = s * p * (1 - p) / count[:, None]
            fw = f * wgt[:, :, None]
            h = np.zeros((b_count, n + 1, n + 1))
            h[:, :n, :n] = np.matmul(np.swapaxes(f, 1, 2), fw) + pen[:, None, None] * np.eye(n)
            h[:, :n, n] = h[:, n, :n] = fw.sum(axis=1)
            h[:, n, n] = wgt.sum(axis=1) + 1e-12
            step = np.linalg.solve(h, -g[..., None])[..., 0]
            step[~active] = 0.0
            size = np.ones(b_count)
            for _ls in range(30):  # backtracking (Armijo) on the problems that step
                new_obj, new_logits = value(a + size[:, None] * step[:, :n], bias + size * step[:, n])
                ok = new_obj <= obj + 1e-4 * size * np.einsum("bk,bk->b", g, step) + 1e-15 * np.abs(obj)
                if ok.all():
                    break
                size = np.where(ok, size, size / 2)
            a = a + size[:, None] * step[:, :n]
            bias = bias + size * step[:, n]
            obj, logits = value(a, bias)
            n_iter += active
            active &= size > 1e-8  # no decrease left at rounding level: as far as float64 goes
        # Back to the D features: w = z.T (U S^-1/2 a), and the full-space test of fit_probe.
        inv = np.divide(1.0, root, out=np.zeros_like(root), where=keep)
        w = np.einsum("bnd,bn->bd", z, np.einsum("bnk,bk->bn", evecs, inv * a))
        logits = np.einsum("bnd,bd->bn", z, w) + bias[:, None]
        p = 1.0 / (1.0 + np.exp(-logits))
        r = s * (p - t) / count[:, None]
        grad = np.concatenate([np.einsum("bnd,bn->bd", z, r) + pen[:, None] * w, r.sum(axis=1)[:, None]], axis=1)
        ce = np.logaddexp(0.0, logits) - t * logits
        loss = (s * ce).sum(axis=1) / count
    out = []
    for j in range(b_count):
        kernel = np.stack([np.zeros(d), w[j]], axis=1)
        converged = bool(np.max(np.abs(grad[j])) <= tol)
        out.append(ProbeSolution(kernel, np.array([0.0, bias[j]]), float(loss[j]),
                                 float(loss[j] + 0.5 * pen[j] * w[j] @ w[j]), int(n_iter[j]), converged))
    return out


# ----------------------------------------------------------------------
# Probes of every task: one entry point
# ----------------------------------------------------------------------
#: The ridge penalties a regression probe chooses from (on standardized features).
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-3, 5, 17))


@dataclasses.dataclass
class RidgeSolution(ProbeSolution):
    """A ridge probe: ``kernel`` (D, K), ``bias`` (K,), and the chosen penalty ``alpha``."""

    alpha: float = float("nan")
    loo_mse: float = float("nan")


def fit_ridge(z, y, alphas=RIDGE_ALPHAS) -> RidgeSolution:
    """Ridge regression of targets ``y`` (n, K) on standardized features ``z`` (n, D), penalty by leave-one-out.

    Minimises ``||y - z w - b||^2 + alpha ||w||^2`` (intercept not penalised)
    for every ``alpha`` of ``alphas`` and keeps the one with the smallest
    efficient leave-one-out squared error, averaged over samples and targets
    (scikit-learn's ``RidgeCV(alphas, fit_intercept=True)``, its default
    ``gcv_mode``; the first alpha wins a tie). With ``U S V^T`` the SVD of
    the centred ``z``, the fit's hat matrix is ``1/n + U diag(s^2 / (s^2 +
    alpha)) U^T``, and the leave-one-out residual is the residual over
    ``1 - h_ii``: one SVD serves every alpha.
    """
    z = np.asarray(z, np.float64)
    y = np.asarray(y, np.float64)
    if y.ndim == 1:
        y = y[:, None]
    n = z.shape[0]
    alphas = np.asarray(alphas, np.float64)
    if alphas.ndim != 1 or len(alphas) == 0 or not np.all(alphas > 0):
        raise ValueError(f"`alphas` must be a non-empty list of positive penalties; received {alphas!r}.")
    zm, ym = z.mean(axis=0), y.mean(axis=0)
    zc, yc = z - zm, y - ym
    with single_thread_blas(n * z.shape[1] * min(n, z.shape[1])):
        u, s, vt = np.linalg.svd(zc, full_matrices=False)
        uty = u.T @ yc  # (r, K)
        s2 = s * s
        best: tuple[float, float] | None = None
        for a in alphas:
            shrink = s2 / (s2 + a)
            fitted = u @ (shrink[:, None] * uty)
            h = 1.0 / n + np.einsum("ij,j,ij->i", u, shrink, u)
            loo = (yc - fitted) / (1.0 - h)[:, None]
            err = float(np.mean(loo * loo))
            if best is None or err < best[0]:
                best = (err, a)
        assert best is not None  # alphas is not empty (checked above)
        err, a = best
        w = vt.T @ ((s / (s2 + a))[:, None] * uty)
    b = ym - zm @ w
    mse = float(np.mean(np.square(z @ w + b - y)))
    return RidgeSolution(w, b, mse, mse + a * float(np.sum(w * w)) / n, 0, True, alpha=float(a), loo_mse=err)


def fit_task_probe(task, z, targets, *, C=1.0, max_iter=MAX_ITER, tol=TOL, init=None) -> ProbeSolution:
    """The probe of ``task`` (a :class:`~keras_hybrid_interp.core.task.Task`) on standardized features ``z``.

    - classification: multinomial (binary for 2 classes) logistic regression, :func:`fit_probe`;
    - multi-label: one binary logistic regression per label, each :func:`fit_probe` with the same ``C``
      (targets (n, K) of 0/1, or probabilities for label-free probes); ``kernel`` (D, K) holds each label's
      logit weights;
    - regression: ridge with its penalty chosen by leave-one-out, :func:`fit_ridge` (``C`` is not used).

    ``init``: a warm start ``(kernel, bias)`` in the same coordinates (ignored by ridge, which is closed-form).
    """
    name = task.name
    if name in ("multiclass", "binary"):
        return fit_probe(z, targets, task.num_classes, C=C, max_iter=max_iter, tol=tol, init=init)
    if name == "regression":
        return fit_ridge(z, targets)
    if name != "multilabel":
        raise ValueError(f"fit_task_probe does not fit {name!r} probes (a per-position probe fits those).")
    targets = np.asarray(targets, np.float64)
    z = np.asarray(z, np.float64)
    d, k = z.shape[1], targets.shape[1]
    span = sample_span(z, k)  # one QR for the k labels' fits
    kernel, bias = np.zeros((d, k)), np.zeros(k)
    n_iter, converged, loss, value = 0, True, 0.0, 0.0
    for j in range(k):
        t = targets[:, j]
        tj = t.astype(np.int64) if np.all((t == 0) | (t == 1)) else np.stack([1.0 - t, t], axis=1)
        init_j = None
        if init is not None:
            init_j = (np.stack([np.zeros(d), np.asarray(init[0])[:, j]], axis=1), np.array([0.0, init[1][j]]))
        sol = _fit_probe(z, tj, 2, C, max_iter, tol, init_j, span)
        kernel[:, j], bias[j] = sol.kernel[:, 1], sol.bias[1]
        n_iter = max(n_iter, sol.n_iter)
        converged &= sol.converged
        loss += sol.loss / k
        value += sol.objective / k
    return ProbeSolution(kernel, bias, loss, value, n_iter, converged)


def probe_logits(features, mean, scale, kernel, bias):
    """Probe outputs (logits, or values for regression) of pooled ``features`` (n, D), float64:
    ``((f - mean) * scale) @ kernel + bias``."""
    return ((np.asarray(features, np.float64) - mean) * scale) @ kernel + bias
