"""Every public analysis method through the same cross-cutting checks (as Captum's test_config.py).

One row per public analysis: how to call it on the shared fixture. Every row
goes through every check below; adding an analysis means adding a row (see
CONTRIBUTING.md, "Adding an analysis"). CI runs this file on the TensorFlow,
JAX and torch backends.

Checks, per row:

* the model is untouched: weights bit for bit, ``trainable`` flags, compile
  state, predictions, and the very node lists of every user operation;
* the result is a small object with ``.to_frame()`` (a non-empty tidy
  DataFrame) and ``.plot()`` (returns the Axes or Figure it drew, and draws on
  the ``ax``/``fig`` it is given);
* the same ``random_state`` gives the same result, bit for bit;
* a bad block name is a ``ValueError`` naming it and the available blocks;
* an empty dataset is a ``ValueError`` that says the data is empty.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure

import keras

from keras_hybrid_interp import GlobalAnalyzer, HybridInterpreter

from models import assert_same_node_lists, assert_unchanged, node_lists, residual_cnn, snapshot


@dataclasses.dataclass
class Env:
    model: keras.Model
    interp: HybridInterpreter
    analyzer: GlobalAnalyzer
    x: np.ndarray
    y: np.ndarray
    block: str


@pytest.fixture(scope="module")
def env():
    keras.utils.set_random_seed(0)
    model = residual_cnn(input_shape=(12, 12, 3), classes=3)
    model.compile("adam", "sparse_categorical_crossentropy")  # compile state must survive too
    rng = np.random.default_rng(0)
    x = rng.random((36, 12, 12, 3), dtype=np.float32)
    y = np.arange(36) % 3
    interp = HybridInterpreter(model).fit(x, y, verbose=0)
    return Env(model, interp, GlobalAnalyzer(interp), x, y, interp.block_names[-1])


@dataclasses.dataclass(frozen=True)
class Row:
    """One public analysis. ``call(env, x, y, block, **extra)`` returns its result."""

    name: str
    call: Callable
    takes_block: str | None = "block"  # the argument naming the block(s), or None
    seeded: bool = False  # takes random_state
    plot_target: str = "ax"  # what .plot() draws on: "ax" or "fig"
    block: str | None = None  # the block analysed (default: the interpreter's deepest)


def _blocks(block):
    return block if isinstance(block, list) else [block]


def _concept_sets(e):
    """Two concepts of 12 examples each, of the fixture's input shape and not among its inputs."""
    rng = np.random.default_rng(11)
    shape = e.x.shape[1:]
    return {"bright": rng.random((12,) + shape, dtype=np.float32) * 0.5 + 0.5,
            "dark": rng.random((12,) + shape, dtype=np.float32) * 0.3}


ROWS = [
    Row("evaluate_layers", lambda e, x, y, block, **kw: e.interp.evaluate_layers(x, y, **kw), takes_block=None),
    Row("layer_predictions", lambda e, x, y, block, **kw: e.interp.layer_predictions(x, **kw), takes_block=None),
    Row("explain", lambda e, x, y, block, **kw: e.interp.explain(x[0] if len(x) else x), takes_block=None,
        plot_target="fig"),
    Row("filter_correlation", lambda e, x, y, block, **kw: e.analyzer.filter_correlation(x, block=block, **kw)),
    Row("filter_class_association",
        lambda e, x, y, block, **kw: e.analyzer.filter_class_association(x, y, block=block, **kw)),
    Row("filter_importance[permutation]",
        lambda e, x, y, block, **kw: e.analyzer.filter_importance(x, y, block=block, method="permutation",
                                                                   scoring="loss", n_repeats=2, **kw), seeded=True),
    Row("filter_importance[ablation]",
        lambda e, x, y, block, **kw: e.analyzer.filter_importance(x, y, block=block, method="ablation", **kw)),
    Row("filter_importance[taylor]",
        lambda e, x, y, block, **kw: e.analyzer.filter_importance(x, y, block=block, method="taylor", **kw)),
    Row("filter_importance[taylor molchanov]",
        lambda e, x, y, block, **kw: e.analyzer.filter_importance(x, y, block=block, method="taylor",
                                                                   taylor="molchanov", **kw)),
    Row("filter_importance[coupled]",  # res_out is tied through the residual Add to stem_pool
        lambda e, x, y, block, **kw: e.analyzer.filter_importance(x, y, block=block, method="permutation",
                                                                   groups="coupled", scoring="loss", n_repeats=2, **kw),
        seeded=True, block="res_out"),
    Row("layer_similarity", lambda e, x, y, block, **kw: e.analyzer.layer_similarity(x, blocks=_blocks(block), **kw),
        takes_block="blocks"),
    Row("layer_similarity[two models]",
        lambda e, x, y, block, **kw: e.analyzer.layer_similarity(x, blocks=_blocks(block), other=e.model, **kw),
        takes_block="blocks"),
    Row("filter_examples", lambda e, x, y, block, **kw: e.analyzer.filter_examples(x, block=block, top_k=3, **kw),
        plot_target="fig"),
    Row("concepts", lambda e, x, y, block, **kw: e.interp.concepts(_concept_sets(e), x, y, blocks=_blocks(block),
                                                                  n_random=3, bootstrap=20, controls=1, **kw),
        takes_block="blocks", seeded=True),
]
IDS = [r.name for r in ROWS]


def run(row, env, *, x=None, y=None, block=None, **kw):
    x = env.x if x is None else x
    y = env.y if y is None else y
    if block is None:
        block = row.block or (env.interp.block_names if row.takes_block == "blocks" else env.block)
    return row.call(env, x, y, block, **kw)


def frame_of(result) -> pd.DataFrame:
    frame = result.to_frame()
    assert isinstance(frame, pd.DataFrame) and len(frame) > 0
    return frame


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_leaves_the_model_untouched(env, row):
    before, nodes = snapshot(env.model, env.x), node_lists(env.model)
    run(row, env, **({"random_state": 0} if row.seeded else {}))
    assert_unchanged(before, snapshot(env.model, env.x))
    assert_same_node_lists(nodes, node_lists(env.model))


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_returns_a_result_that_frames_and_draws_itself(env, row):
    result = run(row, env, **({"random_state": 0} if row.seeded else {}))
    frame_of(result)
    if row.plot_target == "ax":
        fig, ax = plt.subplots()
        assert result.plot(ax=ax) is ax
        assert ax.has_data() or ax.images or ax.collections or ax.patches
        assert isinstance(result.plot(), Axes)
    else:
        fig = plt.figure()
        assert result.plot(fig=fig) is fig and fig.axes
        assert isinstance(result.plot(), Figure)


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_same_seed_same_result(env, row):
    kw = {"random_state": 7} if row.seeded else {}
    a, b = frame_of(run(row, env, **kw)), frame_of(run(row, env, **kw))
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    if row.seeded:  # and the seed matters: another one permutes differently (the loss always moves)
        c = frame_of(run(row, env, random_state=8))
        assert not a.equals(c)


@pytest.mark.parametrize("row", [r for r in ROWS if r.takes_block], ids=[r.name for r in ROWS if r.takes_block])
def test_a_bad_block_name_names_it_and_the_available_ones(env, row):
    bad = "no_such_layer"
    with pytest.raises(ValueError) as info:
        run(row, env, block=[bad] if row.takes_block == "blocks" else bad)
    msg = str(info.value)
    assert bad in msg and f"`{row.takes_block}`" in msg
    assert env.block in msg, msg  # what is available


@pytest.mark.parametrize(
    "row", [r for r in ROWS if r.name != "explain"], ids=[r.name for r in ROWS if r.name != "explain"]
)
def test_an_empty_dataset_is_refused_clearly(env, row):
    with pytest.raises(ValueError, match=r"`x` is empty"):
        run(row, env, x=env.x[:0], y=env.y[:0])


def test_explain_refuses_an_empty_input(env):
    with pytest.raises(ValueError, match=r"`x`"):
        env.interp.explain(env.x[:0])


#: The public methods that are not analyses: training the probes, and the ``keras.Model`` methods
#: HybridInterpreter overrides (it is a Model: fit, compile, saving), and the probe as a Model.
NOT_ANALYSES = {
    HybridInterpreter: {"fit", "fit_probes", "compile", "train_on_batch", "call", "get_config", "from_config",
                        "load", "probe_model"},
    GlobalAnalyzer: set(),
}


@pytest.mark.parametrize("cls", [HybridInterpreter, GlobalAnalyzer], ids=lambda c: c.__name__)
def test_the_public_surface_is_the_table_and_nothing_else(cls):
    # Exactly: a new public method is an analysis (a row here) or training; plumbing is private (a leading
    # underscore; the package's own modules share it, see tests/test_layers.py's PACKAGE_PRIVATE).
    public = {name for name in vars(cls) if not name.startswith("_") and callable(getattr(cls, name))}
    covered = {r.name.split("[")[0] for r in ROWS} & set(vars(cls))
    assert public == covered | NOT_ANALYSES[cls], (
        f"not in ROWS nor NOT_ANALYSES: {sorted(public - covered - NOT_ANALYSES[cls])}; "
        f"listed but not public: {sorted((covered | NOT_ANALYSES[cls]) - public)}")


def _task_model(task):
    """The fixture's residual CNN with a multi-label, a regression, a segmentation head, or two heads."""
    from keras import layers

    keras.utils.set_random_seed(1)
    base = residual_cnn(input_shape=(12, 12, 3), classes=3, name=f"{task}_cnn")
    feats = base.get_layer("gap").output
    if task == "multilabel":
        return keras.Model(base.input, layers.Dense(3, activation="sigmoid", name="labels")(feats))
    if task == "regression":
        return keras.Model(base.input, layers.Dense(2, name="values")(feats))
    if task == "two_outputs":
        return keras.Model(base.input, [layers.Dense(3, activation="softmax", name="diagnosis")(feats),
                                        layers.Dense(1, name="severity")(feats)])
    m = base.get_layer("res_out").output  # segmentation: a class map at the block's resolution
    return keras.Model(base.input, layers.Conv2D(3, 1, activation="softmax", name="mask")(m))


def _task_targets(task, rng, n=36):
    if task == "multilabel":
        return (rng.random((n, 3)) < 0.5).astype(int)
    if task in ("regression", "two_outputs"):
        return rng.normal(size=(n, 2) if task == "regression" else n)
    return rng.integers(0, 3, (n, 6, 6))


TASKS = ("multilabel", "regression", "segmentation", "two_outputs")


@pytest.fixture(scope="module", params=TASKS)
def task_env(request):
    task = request.param
    model = _task_model(task)
    model.compile("adam", "mse")
    rng = np.random.default_rng(0)
    x = rng.random((36, 12, 12, 3), dtype=np.float32)
    y = _task_targets(task, rng)
    kw = {"task": "regression", "output": "severity"} if task == "two_outputs" else (
        {"task": "regression"} if task == "regression" else {})
    blocks = ["stem_pool", "res_out"]
    interp = HybridInterpreter(model, blocks, **kw).fit(x, y, verbose=0)
    return Env(model, interp, GlobalAnalyzer(interp), x, y, "res_out")


@pytest.mark.parametrize("row", [r for r in ROWS if r.block is None], ids=[r.name for r in ROWS if r.block is None])
def test_every_task_leaves_the_model_untouched_and_returns_a_drawable_seeded_result(task_env, row):
    before, nodes = snapshot(task_env.model, task_env.x), node_lists(task_env.model)
    kw = {"random_state": 7} if row.seeded else {}
    result = run(row, task_env, **kw)
    assert_unchanged(before, snapshot(task_env.model, task_env.x))
    assert_same_node_lists(nodes, node_lists(task_env.model))
    a = frame_of(result)
    pd.testing.assert_frame_equal(a, frame_of(run(row, task_env, **kw)), check_exact=True)
    plotted = result.plot()
    assert isinstance(plotted, (Axes, Figure))
    plt.close("all")
