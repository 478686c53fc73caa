"""Concepts (TCAV) on the other tasks: multi-label, regression and segmentation models.

The *class output* ``h`` of each task (docs/definitions/concepts.md) is written out here in NumPy:

- multi-label (K sigmoid units, or K logits): a label's log-probability, ``log p_k``;
- regression (linear units): a target's value, ``out_k``;
- segmentation (a softmax map, or one sigmoid unit per position): the mean over the output's
  positions of the class's log-probability.

A class's inputs are those labelled with it (multi-label: ``y[:, k] == 1``; segmentation: the mask
holds the class at some position), without labels those the model assigns to it (a label predicted
present, ``p > 0.5``; the class present in the predicted mask); every input of a regression model
counts for every target.

The oracle is a slow hand-written reference, independent of the package's gradient code and graph
replay: the block's maps come from a plain Keras sub-model cut at the block, ``eps * v`` is added to
them (at every position for a pooled CAV ``v``, as the whole map for a full-map one), and the rest of
the model is re-applied layer by layer (skip connections included); the directional derivative is
the central difference of ``h``. The TCAV score is the fraction of a class's inputs whose
difference is positive, the magnitude its mean.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import keras
from keras import layers

from keras_hybrid_interp import HybridInterpreter
from keras_hybrid_interp.core.health import InterpretationWarning
from keras_hybrid_interp.local import concepts as cc

from oracles import assert_not_all_zero

N = 24


# ----------------------------------------------------------------------
# Models: each with its own hand-written tail from a block on
# ----------------------------------------------------------------------
def _chain_body(inp):
    h = layers.Conv2D(6, 3, padding="same", activation="tanh", name="c1")(inp)
    h = layers.AveragePooling2D(2, name="p1")(h)
    return layers.Conv2D(5, 3, padding="same", activation="tanh", name="c2")(h)


def chain_model(head):
    """c1 (8x8x6) -> p1 -> c2 (4x4x5) -> the head's layers, smooth throughout."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    out = _chain_body(inp)
    for layer in head:
        out = layer(out)
    return keras.Model(inp, out, name="chain")


def chain_tail(model, block, maps, step):
    """The model's output from block ``block``'s maps plus ``step``, re-applying the layers after it."""
    names = [layer.name for layer in model.layers]
    h = keras.ops.convert_to_tensor((maps[block] + step).astype(np.float32))
    for name in names[names.index(block) + 1:]:
        h = model.get_layer(name)(h)
    return np.asarray(keras.ops.convert_to_numpy(h), np.float64)


def unet_model(units=3, activation="softmax"):
    """enc1 (8x8) -> pool -> bott (4x4) -> up -> concat with enc1 -> dec1 (8x8) -> a 1x1 mask head."""
    keras.utils.set_random_seed(1)
    inp = keras.Input((8, 8, 2))
    e = layers.Conv2D(4, 3, padding="same", activation="tanh", name="enc1")(inp)
    p = layers.AveragePooling2D(2, name="pool")(e)
    b = layers.Conv2D(6, 3, padding="same", activation="tanh", name="bott")(p)
    u = layers.UpSampling2D(2, name="up")(b)
    c = layers.Concatenate(name="cat")([u, e])
    d = layers.Conv2D(5, 3, padding="same", activation="tanh", name="dec1")(c)
    return keras.Model(inp, layers.Conv2D(units, 1, activation=activation, name="mask")(d), name="tiny_unet")


def unet_tail(model, block, maps, step):
    """The U-Net's output from ``block`` on: the skip connection carries enc1's perturbed maps too."""
    L = model.get_layer
    t = {k: keras.ops.convert_to_tensor(v.astype(np.float32)) for k, v in maps.items()}
    t[block] = keras.ops.convert_to_tensor((maps[block] + step).astype(np.float32))
    if block == "dec1":
        d = t["dec1"]
    else:
        b = L("bott")(L("pool")(t["enc1"])) if block == "enc1" else t["bott"]
        d = L("dec1")(L("cat")([L("up")(b), t["enc1"]]))
    return np.asarray(keras.ops.convert_to_numpy(L("mask")(d)), np.float64)


def calibrate(model, x):
    """Moves the head's bias so that, without labels, the model assigns each class to some inputs and not to others.

    A label is predicted present (p > 0.5) for half the inputs; the last class of a segmentation map appears in the
    predicted masks of half the inputs (so that membership by the model's decisions is not all or nothing).
    """
    head = next(layer for layer in reversed(model.layers) if layer.weights)
    w, b = [np.asarray(v, np.float64) for v in head.get_weights()]
    feats = np.asarray(keras.Model(model.input, head.input).predict(x, verbose=0), np.float64)
    z = feats @ w.reshape(-1, w.shape[-1]) + b  # (n, [positions,] units): the head's logits
    if z.ndim == 2:  # multi-label: per label, half the inputs above 0
        b = b - np.median(z, axis=0)
    elif z.shape[-1] == 1:  # one sigmoid unit per position: class 1 somewhere in half of the predicted masks
        b = b - np.median(z.reshape(len(x), -1).max(axis=1))
    else:  # softmax: the last class wins somewhere in half of the predicted masks
        z = z.reshape(len(x), -1, z.shape[-1])
        margin = (z[..., -1] - z[..., :-1].max(axis=-1)).max(axis=1)
        b[-1] -= np.median(margin)
    head.set_weights([w.astype(np.float32), b.astype(np.float32)])


def block_maps(model, x, names):
    """Every named block's maps by a plain Keras sub-model cut at the blocks (not the package's pass)."""
    sub = keras.Model(model.input, [model.get_layer(n).output for n in names])
    out = sub.predict(x, verbose=0)
    return {n: np.asarray(a, np.float64) for n, a in zip(names, out)}


# ----------------------------------------------------------------------
# The class outputs, written out in NumPy
# ----------------------------------------------------------------------
def h_multilabel_sigmoid(out):
    return np.log(np.clip(out, 1e-12, 1.0))  # (n, K)


def h_multilabel_logits(out):
    return -np.logaddexp(0.0, -out)  # log sigmoid(z)


def h_regression(out):
    return out.reshape(len(out), -1)  # (n,) outputs: one target


def h_segmentation_softmax(out):
    n = len(out)
    return np.log(np.clip(out, 1e-12, 1.0)).reshape(n, -1, out.shape[-1]).mean(axis=1)


def h_segmentation_sigmoid(out):
    n = len(out)
    p = np.clip(out[..., 0].reshape(n, -1), 1e-12, 1 - 1e-7)
    return np.stack([np.log(1 - p).mean(axis=1), np.log(p).mean(axis=1)], axis=1)


def members_multilabel(model, x, y):
    if y is not None:
        return np.asarray(y) > 0
    p = model.predict(x, verbose=0)
    p = 1 / (1 + np.exp(-p)) if model.layers[-1].activation.__name__ == "linear" else p
    return p > 0.5


def members_regression(model, x, y):
    return np.ones((len(x), h_regression(model.predict(x[:1], verbose=0)).shape[1]), bool)


def members_segmentation(model, x, y):
    out = model.predict(x, verbose=0)
    if y is None:
        y = (out[..., 0] > 0.5).astype(int) if out.shape[-1] == 1 else out.argmax(-1)
    k = 2 if out.shape[-1] == 1 else out.shape[-1]
    return np.stack([np.any(np.asarray(y).reshape(len(x), -1) == c, axis=1) for c in range(k)], axis=1)


def gap_dense(units, activation=None):
    return [layers.GlobalAveragePooling2D(name="gap"), layers.Dense(units, activation=activation, name="head")]


def _cases():
    rng = np.random.default_rng(0)
    x = rng.random((N, 8, 8, 3), dtype=np.float32)
    x2 = rng.random((N, 8, 8, 2), dtype=np.float32) * 2 - 1
    ml_y = (rng.random((N, 3)) < 0.5).astype(int)
    ml_y[0] = 0  # a sample with no label: no row of it is differentiated
    reg_y = rng.normal(size=(N, 2))
    seg_y = rng.integers(0, 2, (N, 8, 8))
    seg_y[:N // 2, :2, :2] = 2  # class 2 is in half of the masks only
    seg_y[:N // 4][seg_y[:N // 4] == 1] = 0  # class 1 is absent from a quarter (which hold class 2)
    bin_y = rng.integers(0, 2, (N, 8, 8))
    bin_y[:N // 3] = 0  # class 1 is absent from a third of the masks
    return {
        "multilabel_sigmoid": (lambda: chain_model(gap_dense(3, "sigmoid")), "auto", chain_tail, ["c1", "c2"], x, ml_y,
                               h_multilabel_sigmoid, members_multilabel),
        "multilabel_logits": (lambda: chain_model(gap_dense(3)), "multilabel", chain_tail, ["c1", "c2"], x, ml_y,
                              h_multilabel_logits, members_multilabel),
        "regression": (lambda: chain_model(gap_dense(2)), "regression", chain_tail, ["c1", "c2"], x, reg_y,
                       h_regression, members_regression),
        "regression_scalar": (lambda: chain_model(gap_dense(1) + [layers.Reshape((), name="scalar")]), "regression",
                              chain_tail, ["c1", "c2"], x, reg_y[:, 0], h_regression, members_regression),
        "segmentation_softmax": (lambda: unet_model(3, "softmax"), "auto", unet_tail, ["enc1", "bott", "dec1"], x2,
                                 seg_y, h_segmentation_softmax, members_segmentation),
        "segmentation_sigmoid": (lambda: unet_model(1, "sigmoid"), "auto", unet_tail, ["enc1", "bott", "dec1"], x2,
                                 bin_y, h_segmentation_sigmoid, members_segmentation),
    }


CASES = _cases()


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    make, task, tail_fn, blocks, x, y, h, members = CASES[request.param]
    model = make()
    calibrate(model, x)
    interp = HybridInterpreter(model, blocks, task=task)
    maps = block_maps(model, x, blocks)
    return request.param, model, interp, tail_fn, blocks, x, y, h, members, maps


def finite_differences(model, tail_fn, block, maps, h, directions, features, eps):
    """(n, K, M): central differences of every class output along each column of ``directions`` at ``block``."""
    a = maps[block]
    out = []
    for v in np.asarray(directions, np.float64).T:
        step = v.reshape(a.shape[1:]) if features == "full" else v  # pooled: the same v at every position
        hi = h(tail_fn(model, block, maps, eps * step))
        lo = h(tail_fn(model, block, maps, -eps * step))
        out.append((hi - lo) / (2 * eps))
    return np.stack(out, axis=-1)


def unit_directions(rng, d, m):
    v = rng.normal(size=(d, m))
    return v / np.linalg.norm(v, axis=0)


def test_the_task_is_the_one_each_case_names(case):
    name, model, interp, *_ = case
    assert interp.task == name.split("_")[0]
    assert interp.num_classes == {"multilabel_sigmoid": 3, "multilabel_logits": 3, "regression": 2,
                                  "regression_scalar": 1, "segmentation_softmax": 3, "segmentation_sigmoid": 2}[name]


@pytest.mark.parametrize("labelled", [True, False])
@pytest.mark.parametrize("features", ["pooled", "full"])
def test_directional_derivatives_equal_finite_differences(case, features, labelled):
    """Every (sample, class) row's derivative equals the central difference of that class's output."""
    name, model, interp, tail_fn, blocks, x, y, h, members, maps = case
    yy = y if labelled else None
    rng = np.random.default_rng(3)
    dims = [maps[b].shape[-1] if features == "pooled" else int(np.prod(maps[b].shape[1:])) for b in blocks]
    dirs = [unit_directions(rng, d, 2) for d in dims]
    samples, member, per_block = cc.directional_derivatives(interp, x, dirs, yy, features=features, batch_size=7)
    K = interp.num_classes
    truth = members(model, x, yy)  # (n, K) the reference's class membership
    # Which (sample, class) rows are differentiated: a multi-class model's one per sample (not here); the others'
    # one per (sample, class), only the labelled ones where labels are given (multi-label, segmentation).
    if labelled and interp.task != "regression":
        pairs = [(s, k) for s in range(N) for k in range(K) if truth[s, k]]
    else:
        pairs = [(s, k) for s in range(N) for k in range(K)]
    ps, pk = np.array(pairs).T
    np.testing.assert_array_equal(samples, ps)
    np.testing.assert_array_equal(member, np.eye(K)[pk] * truth[ps, pk][:, None])
    eps = 1e-2 if features == "pooled" else 1e-1
    for block, d, s in zip(blocks, dirs, per_block):
        fd = finite_differences(model, tail_fn, block, maps, h, d, features, eps)[ps, pk]  # (rows, M)
        assert_not_all_zero(fd)
        np.testing.assert_allclose(s, fd, rtol=2e-2, atol=2e-3 * np.abs(fd).max(), err_msg=f"{name} {block}")


@pytest.fixture(scope="module", params=[True, False], ids=["labelled", "unlabelled"])
def result(case, request):
    name, model, interp, tail_fn, blocks, x, y, h, members, maps = case
    y = y if request.param else None
    rng = np.random.default_rng(5)
    shape = x.shape[1:]
    pool = rng.random((40,) + shape, dtype=np.float32) * (x.max() - x.min()) + x.min()
    concepts = {"high": np.clip(pool[:14] + 0.4, x.min(), x.max()), "ramp": pool[14:26] * np.linspace(0, 1, 8)[:, None]}
    pool = pool[26:]
    pool = np.concatenate([pool, rng.random((60,) + shape, dtype=np.float32) * (x.max() - x.min()) + x.min()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InterpretationWarning)
        res = interp.concepts(concepts, x, y, random=pool, n_random=3, random_state=0, bootstrap=0, controls=0)
    return res, y


def test_tcav_scores_and_magnitudes_equal_those_of_finite_differences(case, result):
    """The result's TCAV scores and magnitudes of every CAV, block and class, from the reference's differences."""
    name, model, interp, tail_fn, blocks, x, y, h, members, maps = case
    res, y = result
    truth = members(model, x, y)
    np.testing.assert_array_equal(res.n_inputs, truth.sum(axis=0))
    assert res.task == interp.task and res.classes == tuple(interp.class_names)
    C, R = res.scores.shape[0], res.scores.shape[-1]
    for i, block in enumerate(blocks):
        dirs = res.directions[i].reshape(C * R, -1).T
        fd = finite_differences(model, tail_fn, block, maps, h, dirs, "pooled", 1e-2)  # (n, K, C*R)
        assert_not_all_zero(fd)
        for k in range(len(res.classes)):
            s = fd[truth[:, k], k]  # the class's inputs
            score = (s > 0).mean(axis=0).reshape(C, R)
            magnitude = s.mean(axis=0).reshape(C, R)
            clear = np.all(np.abs(s) > 2e-3 * np.abs(fd).max(), axis=0).reshape(C, R)  # no sign in doubt
            assert clear.any()
            np.testing.assert_array_equal(res.scores[:, i, k][clear], score[clear], err_msg=f"{name} {block} {k}")
            np.testing.assert_allclose(res.magnitudes[:, i, k], magnitude, rtol=2e-2,
                                       atol=2e-3 * np.abs(fd).max(), err_msg=f"{name} {block} {k}")
    assert_not_all_zero(res.magnitudes)
    frame = res.to_frame()
    assert len(frame) == C * len(blocks) * len(res.classes)
    assert set(frame["class"]) == set(interp.class_names)


def test_classes_select_and_order_the_tested_outputs(case):
    """``classes=`` tests a subset, in the order given; each column equals the full run's."""
    name, model, interp, tail_fn, blocks, x, y, h, members, maps = case
    rng = np.random.default_rng(9)
    d = [unit_directions(rng, maps[b].shape[-1], 2) for b in blocks]
    K = interp.num_classes
    pick = [K - 1, 0] if K > 1 else [0]
    full = cc.directional_derivatives(interp, x, d, y, batch_size=10)
    part = cc.directional_derivatives(interp, x, d, y, classes=[interp.class_names[pick[0]]] + pick[1:], batch_size=10)
    col_full = full[1].argmax(axis=1)
    for j, k in enumerate(pick):
        rows_full = np.flatnonzero(full[1][:, k] > 0)
        rows_part = np.flatnonzero(part[1][:, j] > 0)
        np.testing.assert_array_equal(full[0][rows_full], part[0][rows_part])
        for sf, sp in zip(full[2], part[2]):
            np.testing.assert_allclose(sp[rows_part], sf[rows_full], rtol=1e-5, atol=1e-7)
    assert part[1].shape[1] == len(pick) and np.all(col_full < K)
