"""Plots: the drawn artists carry the result's data (arrays, tick labels, titles), not pixels."""

import dataclasses

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.collections import QuadMesh
from matplotlib.figure import Figure

from keras_hybrid_interp import GlobalAnalyzer, plotting
from keras_hybrid_interp.local.results import LocalExplanation
from keras_hybrid_interp.plotting import (
    plot_filter_class_association,
    plot_filter_correlation,
    plot_filter_importance,
    plot_layer_accuracy,
    plot_layer_similarity,
    plot_local_explanation,
    upsample,
)


# ----------------------------------------------------------------------
# Tiny result objects with the documented attributes
# ----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Corr:
    values: np.ndarray
    dead_filters: np.ndarray
    block: str = "conv3"
    statistic: str = "mean"
    n_samples: int = 50

    @property
    def matrix(self):
        c = len(self.values)
        return pd.DataFrame(self.values, index=pd.RangeIndex(c, name="filter"),
                            columns=pd.RangeIndex(c, name="filter_j"))


@dataclasses.dataclass(frozen=True)
class Imp:
    importances: np.ndarray
    baseline_score: float = 0.9
    method: str = "permutation"
    scoring: str = "accuracy"
    block: str = "conv3"
    groups: tuple = None
    dead_filters: np.ndarray = dataclasses.field(default_factory=lambda: np.array([], dtype=int))
    n_samples: int = 100

    @property
    def importances_mean(self):
        return self.importances.mean(axis=1)

    @property
    def importances_std(self):
        return self.importances.std(axis=1)

    def to_frame(self):
        g, r = self.importances.shape
        rows, reps = np.meshgrid(np.arange(g), np.arange(r), indexing="ij")
        return pd.DataFrame({"block": self.block, "method": self.method, "filter": rows.ravel(),
                             "repeat": reps.ravel(), "importance": self.importances.ravel()})


@dataclasses.dataclass(frozen=True)
class Assoc:
    values: np.ndarray
    dead_filters: np.ndarray
    block: str = "conv3"
    statistic: str = "mean"
    label_source: str = "y"
    n_samples: int = 80


@dataclasses.dataclass(frozen=True)
class Sim:
    values: np.ndarray
    blocks: tuple
    n_samples: int = 60
    representation: str = "spatial mean per sample"

    @property
    def matrix(self):
        return pd.DataFrame(self.values, index=list(self.blocks), columns=list(self.blocks))


def corr_fixture():
    """6 filters: 0, 1, 2 strongly correlated, 3 and 4 weakly, 5 dead."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=200)
    s = np.stack([base + 0.1 * rng.normal(size=200) for _ in range(3)]
                 + [rng.normal(size=200) for _ in range(2)] + [np.ones(200)], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.corrcoef(s.T)
    r[5, :] = r[:, 5] = np.nan
    return Corr(r, np.array([5]))


def table_fixture(labels=True):
    acc = [0.4, 0.7, 0.9, 0.95] if labels else [np.nan] * 4
    return pd.DataFrame({
        "block": ["conv1", "conv2", "conv3", "output"],
        "depth": [1, 3, 5, 8],
        "filters": [8, 16, 16, np.nan],
        "accuracy": acc,
        "loss": [1.5, 1.0, 0.4, 0.2],
        "agreement": [0.35, 0.72, 0.93, 1.0],
        "chance": [0.25] * 4,
    })


def explanation_fixture(K=4, decision=1):
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(K), size=3)
    model_p = np.eye(K)[2] * 0.9 + 0.1 / K
    maps = [rng.normal(size=(4, 4, K)), rng.normal(size=(2, 2, K)), rng.normal(size=(1, 1, K))]
    return LocalExplanation(
        image=rng.random((8, 8, 3)), blocks=["conv1", "conv2", "conv3"], depths=np.array([1, 3, 5]),
        probabilities=probs, model_probabilities=model_p, decision_index=decision, evidence_maps=maps,
        class_names=[f"c{k}" for k in range(K)],
    )


def mesh(ax):
    meshes = [c for c in ax.collections if isinstance(c, QuadMesh)]
    assert len(meshes) == 1
    return meshes[0]


def heat(ax):
    return np.ma.filled(mesh(ax).get_array().astype(float), np.nan).reshape(len(ticks(ax, "y")), -1)


def ticks(ax, axis="x"):
    return [t.get_text() for t in (ax.get_xticklabels() if axis == "x" else ax.get_yticklabels())]


def title_of(ax):
    """The title with line breaks (subtitles wrap) turned into spaces."""
    return " ".join(ax.get_title().split())


def line(ax, gid):
    found = [l for l in ax.lines if l.get_gid() == gid]
    assert len(found) == 1, [l.get_gid() for l in ax.lines]
    return found[0]


def by_label(fig, label):
    found = [a for a in fig.axes if a.get_label() == label]
    assert len(found) == 1, [a.get_label() for a in fig.axes]
    return found[0]


# ----------------------------------------------------------------------
# upsample
# ----------------------------------------------------------------------
def test_upsample_nearest_integer_factor_is_kron():
    a = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(upsample(a, (4, 6), "nearest"), np.kron(a, np.ones((2, 2))))


def test_upsample_bilinear_oracles():
    np.testing.assert_allclose(upsample(np.full((3, 2), 1.5), (7, 5)), 1.5)
    # Half-pixel centres: [0, 1] -> 4 pixels at source x = -0.25, 0.25, 0.75, 1.25 (clamped).
    np.testing.assert_allclose(upsample(np.array([[0.0, 1.0]]), (1, 4)), [[0.0, 0.25, 0.75, 1.0]])
    np.testing.assert_allclose(upsample(np.array([[0.0], [4.0]]), (4, 2)),
                               np.array([[0, 1, 3, 4]] * 2).T.astype(float))
    a = np.random.default_rng(0).normal(size=(3, 4))
    np.testing.assert_allclose(upsample(a, (3, 4)), a)  # same size: identity
    with pytest.raises(ValueError, match="method"):
        upsample(a, (6, 8), "cubic")
    with pytest.raises(ValueError, match="2-D"):
        upsample(np.zeros((2, 2, 2)), (4, 4))


# ----------------------------------------------------------------------
# plot_layer_accuracy
# ----------------------------------------------------------------------
def test_layer_accuracy_lines_chance_and_model_reference():
    t = table_fixture()
    ax = plot_layer_accuracy(t)
    assert isinstance(ax, Axes)
    np.testing.assert_allclose(line(ax, "accuracy").get_ydata(), [0.4, 0.7, 0.9])
    np.testing.assert_allclose(line(ax, "agreement").get_ydata(), [0.35, 0.72, 0.93])
    np.testing.assert_allclose(line(ax, "accuracy").get_xdata(), [0, 1, 2])
    np.testing.assert_allclose(line(ax, "chance").get_ydata(), 0.25)
    np.testing.assert_allclose(line(ax, "model_accuracy").get_ydata(), 0.95)
    assert ticks(ax) == ["conv1", "conv2", "conv3"]
    assert ax.get_title() == "Layer-wise probe accuracy"
    assert "Block" in ax.get_xlabel() and ax.get_ylabel() == "Fraction of samples"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "Model accuracy (0.95)" in legend and any(s.startswith("Chance") for s in legend)


def test_layer_accuracy_unlabeled_draws_agreement_and_says_so():
    ax = plot_layer_accuracy(table_fixture(labels=False))
    assert [l.get_gid() for l in ax.lines if l.get_gid() in ("accuracy", "model_accuracy")] == []
    np.testing.assert_allclose(line(ax, "agreement").get_ydata(), [0.35, 0.72, 0.93])
    assert "No labels" in ax.get_legend().get_title().get_text()
    assert "agreement" in title_of(ax)
    assert "model prediction" in line(ax, "chance").get_label()


def test_layer_accuracy_metrics_and_errors():
    ax = plot_layer_accuracy(table_fixture(), metrics=("agreement",))
    assert {l.get_gid() for l in ax.lines} == {"agreement", "chance"}
    with pytest.raises(TypeError, match="evaluate_layers"):
        plot_layer_accuracy(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="metrics"):
        plot_layer_accuracy(table_fixture(), metrics=("loss",))
    with pytest.raises(ValueError, match="lacks column"):
        plot_layer_accuracy(table_fixture().drop(columns="agreement"))


def test_layer_accuracy_strips_common_scope_of_nested_names():
    t = table_fixture()
    t["block"] = ["resnet/a_out", "resnet/b_out", "resnet/c_out", "output"]
    ax = plot_layer_accuracy(t)
    assert ticks(ax) == ["a_out", "b_out", "c_out"]
    assert "resnet" in ax.get_xlabel()


# ----------------------------------------------------------------------
# plot_local_explanation
# ----------------------------------------------------------------------
def test_local_explanation_panels_carry_the_data():
    e = explanation_fixture()
    fig = plot_local_explanation(e)
    assert isinstance(fig, Figure)
    img_ax = by_label(fig, "image")
    assert img_ax.images[0].get_array().shape == (8, 8, 3)
    h = by_label(fig, "probabilities")
    np.testing.assert_allclose(heat(h), np.vstack([e.probabilities, e.model_probabilities]))
    assert ticks(h, "y") == ["conv1", "conv2", "conv3", "model output"]
    assert ticks(h, "x") == ["c0", "c1", "c2", "c3"]
    # the model's class (2) is highlighted, the decision depth (1) is marked
    assert h.get_xticklabels()[2].get_fontweight() == "bold"
    assert [p.get_x() for p in h.patches if p.get_gid() == "model_class"] == [2]
    np.testing.assert_allclose(line(h, "decision_index").get_ydata(), 1)
    assert "decided at 'conv2'" in title_of(h)
    for i, b in enumerate(e.blocks):
        ax = by_label(fig, f"evidence:{b}")
        np.testing.assert_allclose(ax.images[1].get_array(), upsample(e.evidence_maps[i][..., 2], (8, 8)))
        assert ax.get_title().startswith(b)


def test_local_explanation_class_index_blocks_and_nearest():
    e = explanation_fixture(decision=None)
    fig = plot_local_explanation(e, blocks=["conv3", 0], class_index="c1", upsampling="nearest", figsize=(8, 6))
    assert tuple(fig.get_size_inches()) == (8, 6)
    h = by_label(fig, "probabilities")
    assert ticks(h, "y") == ["conv3", "conv1", "model output"]
    np.testing.assert_allclose(heat(h)[:2], e.probabilities[[2, 0]])
    assert not [l for l in h.lines if l.get_gid() == "decision_index"]
    assert "never settle" in title_of(h)
    ax = by_label(fig, "evidence:conv3")
    np.testing.assert_allclose(ax.images[1].get_array(), np.full((8, 8), e.evidence_maps[2][0, 0, 1]))
    assert [a.get_label() for a in fig.axes if a.get_label().startswith("evidence:")] == \
        ["evidence:conv3", "evidence:conv1"]
    with pytest.raises(ValueError, match="class_index"):
        plot_local_explanation(e, class_index=7)
    with pytest.raises(ValueError, match="available blocks"):
        plot_local_explanation(e, blocks=["nope"])
    with pytest.raises(TypeError, match="LocalExplanation"):
        plot_local_explanation(table_fixture())


def test_local_explanation_many_classes_keeps_model_class_and_says_so():
    K = 40
    e = explanation_fixture(K=K)
    fig = plot_local_explanation(e, max_classes=5, class_index=39)
    h = by_label(fig, "probabilities")
    shown = [int(s[1:]) for s in ticks(h, "x")]
    assert len(shown) == 5 and 2 in shown and 39 in shown and shown == sorted(shown)
    np.testing.assert_allclose(heat(h)[:3], e.probabilities[:, shown])
    assert "top 5 of 40" in h.get_xlabel()


# ----------------------------------------------------------------------
# plot_filter_correlation
# ----------------------------------------------------------------------
def test_filter_correlation_all_filters_in_index_order():
    c = corr_fixture()
    ax = plot_filter_correlation(c, cluster=False)
    assert isinstance(ax, Axes)
    np.testing.assert_allclose(heat(ax), c.values)  # NaN where dead, too
    assert ticks(ax) == [str(i) for i in range(6)] == ticks(ax, "y")
    m = mesh(ax)
    assert (m.norm.vmin, m.norm.vmax) == (-1.0, 1.0)
    assert ax.get_xticklabels()[5].get_color() != ax.get_xticklabels()[0].get_color()  # dead marked
    assert "conv3" in title_of(ax) and "all 6 filters" in title_of(ax) and "1 dead filter" in title_of(ax)
    assert "Pearson r" in ax.figure.axes[-1].get_ylabel()


def test_filter_correlation_clustered_order_and_cluster_box():
    c = corr_fixture()
    ax = plot_filter_correlation(c, cluster=True, threshold=0.5)
    order = [int(s) for s in ticks(ax)]
    assert sorted(order) == list(range(6)) and order[-1] == 5  # dead last
    np.testing.assert_allclose(heat(ax), c.values[np.ix_(order, order)])
    pos = sorted(order.index(i) for i in (0, 1, 2))
    assert pos == list(range(pos[0], pos[0] + 3))  # the correlated trio is contiguous
    boxes = [p for p in ax.patches if p.get_gid() == "cluster"]
    assert [(b.get_x(), b.get_width()) for b in boxes] == [(pos[0], 3)]


def test_filter_correlation_top_k_on_512_filters_says_what_it_left_out():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(40, 512))
    s[:, :10] += 3 * rng.normal(size=(40, 1))  # 10 redundant filters
    s[:, [100, 200, 300]] = 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.corrcoef(s.T)
    dead = np.array([100, 200, 300])
    r[dead] = np.nan
    r[:, dead] = np.nan
    c = Corr(r, dead)
    ax = plot_filter_correlation(c, top_k=64)
    title = title_of(ax)
    assert "showing 64 of 512 filters" in title and "3 dead filters" in title
    assert heat(ax).shape == (64, 64)
    order = [int(t) for t in ticks(ax, "y")]
    assert len(order) == 64 and set(range(10)) <= set(order) and set(dead) <= set(order)
    np.testing.assert_allclose(heat(ax), r[np.ix_(order, order)])


def test_filter_correlation_dataframe_and_explicit_filters():
    c = corr_fixture()
    ax = plot_filter_correlation(c.matrix, cluster=False)  # dead inferred from the NaN row
    assert "1 dead filter" in title_of(ax)
    ax = plot_filter_correlation(c, filters=[4, 0, 1], cluster=False)
    assert ticks(ax) == ["4", "0", "1"]
    np.testing.assert_allclose(heat(ax), c.values[np.ix_([4, 0, 1], [4, 0, 1])])
    with pytest.raises(ValueError, match="filters"):
        plot_filter_correlation(c, filters=[9])
    with pytest.raises(ValueError, match="top_k"):
        plot_filter_correlation(c, top_k=0)
    with pytest.raises(ValueError, match="threshold"):
        plot_filter_correlation(c, threshold=2)
    with pytest.raises(TypeError, match="FilterCorrelation"):
        plot_filter_correlation([1, 2])


# ----------------------------------------------------------------------
# plot_filter_importance
# ----------------------------------------------------------------------
def bar_data(ax):
    from matplotlib.container import BarContainer

    (bars,) = [c for c in ax.containers if isinstance(c, BarContainer)]
    widths = np.array([p.get_width() for p in bars.patches])
    eb = bars.errorbar
    if eb is None:
        return widths, None
    segs = eb.lines[2][0].get_segments()
    return widths, np.array([s[1][0] - s[0][0] for s in segs]) / 2


def test_filter_importance_top_k_bars_and_error_bars():
    rng = np.random.default_rng(0)
    imp = Imp(rng.normal(0.05, 0.02, size=(30, 4)) * np.arange(30)[:, None] % 0.37, dead_filters=np.array([3]))
    ax = plot_filter_importance(imp, top_k=5)
    top = np.argsort(-imp.importances_mean, kind="stable")[:5]
    widths, err = bar_data(ax)
    np.testing.assert_allclose(widths, imp.importances_mean[top])
    np.testing.assert_allclose(err, imp.importances_std[top])
    labels = ticks(ax, "y")
    assert labels == [f"filter {i}" + (" (dead)" if i == 3 else "") for i in top]
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # most important on top
    assert "conv3" in title_of(ax) and "top 5 of 30 filters" in title_of(ax)
    assert "accuracy" in ax.get_xlabel() and "baseline accuracy 0.9" in ax.get_xlabel()


def test_filter_importance_from_frame_equals_from_object():
    imp = Imp(np.random.default_rng(1).random((8, 3)))
    w1, e1 = bar_data(plot_filter_importance(imp))
    w2, e2 = bar_data(plot_filter_importance(imp.to_frame()))
    np.testing.assert_allclose(w1, w2)
    np.testing.assert_allclose(e1, e2)


def test_filter_importance_single_repeat_groups_and_loss():
    groups = (np.array([0, 4]), np.array([1, 2, 3, 5, 6]))
    imp = Imp(np.array([[0.1], [0.3]]), baseline_score=-0.25, method="ablation", scoring="loss", groups=groups)
    ax = plot_filter_importance(imp)
    widths, err = bar_data(ax)
    np.testing.assert_allclose(widths, [0.3, 0.1])
    assert err is None
    assert ticks(ax, "y") == ["group 1: 1,2,3,\u2026 (+2)", "group 0: 0,4"]
    assert "increase in cross-entropy loss" in ax.get_xlabel() and "baseline loss 0.25" in ax.get_xlabel()
    taylor = Imp(np.array([[0.1], [0.3]]), baseline_score=-0.5, method="taylor", scoring="loss")
    assert "baseline loss 0.5" in plot_filter_importance(taylor).get_xlabel()
    with pytest.raises(TypeError, match="FilterImportance"):
        plot_filter_importance(np.zeros(3))


# ----------------------------------------------------------------------
# plot_filter_class_association
# ----------------------------------------------------------------------
def test_filter_class_association_top_k_rows_grouped_by_class():
    rng = np.random.default_rng(0)
    v = rng.uniform(-0.3, 0.3, size=(20, 3))
    v[7, 1] = 0.9
    v[11, 0] = -0.95
    v[2, 2] = 0.8
    v[5] = np.nan
    a = Assoc(v, np.array([5]))
    ax = plot_filter_class_association(a, top_k=6, class_names=["cat", "dog", "owl"])
    assert isinstance(ax, Axes)
    rows = [int(s) for s in ticks(ax, "y")]
    assert len(rows) == 6 and {7, 11, 2} <= set(rows) and 5 not in rows
    np.testing.assert_allclose(heat(ax), v[rows])
    best = np.nanargmax(v[rows], axis=1)
    assert list(best) == sorted(best)
    assert ticks(ax) == ["cat", "dog", "owl"]
    m = mesh(ax)
    assert (m.norm.vmin, m.norm.vmax) == (-1.0, 1.0)
    title = title_of(ax)
    assert "showing 6 of 20 filters" in title and "1 dead filter not shown" in title and "conv3" in title
    assert "Point-biserial r" in ax.figure.axes[-1].get_ylabel()


def test_filter_class_association_dataframe_and_errors():
    df = pd.DataFrame([[0.1, -0.2], [0.5, 0.0]], columns=["a", "b"])
    ax = plot_filter_class_association(df)
    assert ticks(ax) == ["a", "b"] and ticks(ax, "y") == ["1", "0"]
    with pytest.raises(ValueError, match="class_names"):
        plot_filter_class_association(df, class_names=["x"])
    with pytest.raises(TypeError, match="FilterClassAssociation"):
        plot_filter_class_association("nope")


# ----------------------------------------------------------------------
# plot_layer_similarity
# ----------------------------------------------------------------------
def test_layer_similarity_heatmap_annotated_when_small():
    v = np.array([[1.0, 0.6, 0.2], [0.6, 1.0, 0.5], [0.2, 0.5, 1.0]])
    s = Sim(v, ("pool1", "pool2", "conv3"))
    ax = plot_layer_similarity(s)
    np.testing.assert_allclose(heat(ax), v)
    assert ticks(ax) == ["pool1", "pool2", "conv3"] == ticks(ax, "y")
    m = mesh(ax)
    assert (m.norm.vmin, m.norm.vmax) == (0.0, 1.0)
    assert sorted(t.get_text() for t in ax.texts) == sorted(f"{x:.2f}" for x in v.ravel())
    assert "CKA" in title_of(ax) and "n=60" in title_of(ax)
    big = plot_layer_similarity(pd.DataFrame(np.eye(13)))
    assert big.texts == [] or all(t.get_text() == "" for t in big.texts)


# ----------------------------------------------------------------------
# Contract shared by every plot
# ----------------------------------------------------------------------
AXES_LEVEL = {
    "layer_accuracy": (plot_layer_accuracy, table_fixture),
    "filter_correlation": (plot_filter_correlation, corr_fixture),
    "filter_importance": (plot_filter_importance, lambda: Imp(np.random.default_rng(0).random((6, 3)))),
    "filter_class_association": (plot_filter_class_association,
                                 lambda: Assoc(np.random.default_rng(0).uniform(-1, 1, (5, 3)), np.array([], int))),
    "layer_similarity": (plot_layer_similarity, lambda: Sim(np.eye(3), ("a", "b", "c"))),
}


@pytest.mark.parametrize("name", sorted(AXES_LEVEL))
def test_passing_ax_draws_on_that_ax(name):
    fn, make = AXES_LEVEL[name]
    fig, (left, right) = plt.subplots(1, 2)
    n_figs = len(plt.get_fignums())
    out = fn(make(), ax=right)
    assert out is right
    assert len(plt.get_fignums()) == n_figs
    assert right.has_data() and not left.has_data()


@pytest.mark.parametrize("name", sorted(AXES_LEVEL))
def test_new_figure_when_no_ax(name):
    fn, make = AXES_LEVEL[name]
    before = len(plt.get_fignums())
    ax = fn(make())
    assert isinstance(ax, Axes) and len(plt.get_fignums()) == before + 1


def test_nothing_shows_or_saves(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the library must not show or save figures")

    monkeypatch.setattr(plt, "show", boom)
    monkeypatch.setattr(plt, "savefig", boom)
    monkeypatch.setattr(Figure, "savefig", boom)
    monkeypatch.setattr(Figure, "show", boom)
    for fn, make in AXES_LEVEL.values():
        fn(make())
    plot_local_explanation(explanation_fixture())


def test_public_names():
    for name in plotting.__all__:
        assert callable(getattr(plotting, name))


# ----------------------------------------------------------------------
# End to end on a tiny model: the real result objects plot as they come
# ----------------------------------------------------------------------
def test_real_results_from_a_tiny_model_plot():
    import warnings

    from keras_hybrid_interp import HybridInterpreter

    from models import small_cnn

    rng = np.random.default_rng(0)
    x = rng.random((48, 16, 16, 1), dtype=np.float32)
    y = rng.integers(0, 3, 48)
    model = small_cnn(classes=3)
    interp = HybridInterpreter(model, class_names=["a", "b", "c"])
    interp.fit_probes(x, y, verbose=0)

    table = interp.evaluate_layers(x, y).to_frame()
    ax = plot_layer_accuracy(table)
    np.testing.assert_allclose(line(ax, "accuracy").get_ydata(), table["accuracy"].to_numpy()[:-1])
    np.testing.assert_allclose(line(ax, "model_accuracy").get_ydata(), table["accuracy"].iloc[-1])

    e = interp.explain(x[0])
    fig = plot_local_explanation(e)
    np.testing.assert_allclose(heat(by_label(fig, "probabilities"))[:-1], e.probabilities)

    ga = GlobalAnalyzer(interp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dead filters / few samples on random data
        corr = ga.filter_correlation(x, block="conv2")
        assoc = ga.filter_class_association(x, y, block="conv2")
        imp = ga.filter_importance(x, y, block="conv2", n_repeats=2, random_state=0)
        sim = ga.layer_similarity(x)
    ax = plot_filter_correlation(corr, cluster=False)
    # Filter index order, except that dead filters (NaN rows) come last; whether a
    # randomly initialised filter is dead depends on the backend's random numbers.
    order = [int(s) for s in ticks(ax, "y")]
    assert order == [*np.setdiff1d(np.arange(16), corr.dead_filters), *corr.dead_filters]
    np.testing.assert_allclose(heat(ax), corr.matrix.to_numpy()[np.ix_(order, order)])
    ax = plot_filter_class_association(assoc, top_k=None)
    rows = [int(s) for s in ticks(ax, "y")]
    np.testing.assert_allclose(heat(ax), np.asarray(assoc.values)[rows])
    ax = plot_filter_importance(imp, top_k=4)
    np.testing.assert_allclose(bar_data(ax)[0], imp.importances_mean[imp.ranking[:4]])
    ax = plot_layer_similarity(sim)
    np.testing.assert_allclose(heat(ax), sim.matrix.to_numpy())
    assert ticks(ax) == list(sim.blocks)


def test_real_result_objects_draw_their_own_numbers():
    # The result objects as the analyses return them, drawn through their own .plot(); the drawn
    # numbers are checked against NumPy on the raw arrays (and the correlation against np.corrcoef of
    # features from a plain keras.Model), never against a stand-in class.
    import warnings

    import keras

    from keras_hybrid_interp import HybridInterpreter
    from keras_hybrid_interp.global_.correlation import FilterCorrelation
    from keras_hybrid_interp.global_.importance import FilterImportance

    from models import small_cnn
    from oracles import assert_not_all_zero

    rng = np.random.default_rng(1)
    x = rng.random((48, 16, 16, 1), dtype=np.float32)
    y = rng.integers(0, 3, 48)
    model = small_cnn(classes=3)
    interp = HybridInterpreter(model).fit_probes(x, y, verbose=0)
    ga = GlobalAnalyzer(interp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dead filters / few samples on random data
        imp = ga.filter_importance(x, y, block="conv2", n_repeats=3, random_state=0, scoring="loss")
        corr = ga.filter_correlation(x, block="conv2")
        layers_ = interp.evaluate_layers(x, y)
    assert isinstance(imp, FilterImportance) and isinstance(corr, FilterCorrelation)

    ax = imp.plot(top_k=5)
    raw = np.asarray(imp.importances, np.float64)
    top = np.argsort(-raw.mean(axis=1), kind="stable")[:5]
    widths, err = bar_data(ax)
    assert_not_all_zero(widths, err)
    np.testing.assert_allclose(widths, raw.mean(axis=1)[top], rtol=1e-12)
    np.testing.assert_allclose(err, np.std(raw, axis=1, ddof=0)[top], rtol=1e-9)
    assert [s.split(" ")[1] for s in ticks(ax, "y")] == [str(i) for i in top]

    ax = corr.plot(cluster=False)
    feats = keras.Model(model.input, model.get_layer("conv2").output).predict(x, verbose=0)
    feats = feats.astype(np.float64).mean(axis=(1, 2))
    live = np.flatnonzero(feats.std(axis=0) > 0)
    order = [int(s) for s in ticks(ax, "y")]
    drawn = heat(ax)
    pos = [order.index(i) for i in live]
    ref = np.corrcoef(feats[:, live], rowvar=False)
    assert_not_all_zero(ref - np.eye(len(live)))
    np.testing.assert_allclose(drawn[np.ix_(pos, pos)], ref, atol=1e-5)  # float32 maps, other batches

    ax = layers_.plot()
    probs = interp.layer_predictions(x).probabilities
    acc = [np.mean(np.asarray(p).argmax(1) == y) for p in probs]
    np.testing.assert_allclose(line(ax, "accuracy").get_ydata(), acc, atol=1e-12)
