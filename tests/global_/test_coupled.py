"""groups="coupled": channel i of every tensor tied through Add is perturbed jointly.

Oracles: a hand-built forward pass (the model's layers called eagerly one by
one) in which channel i of every tied tensor is replaced by hand with the
same permutation of samples (or by zeros / its mean map); the tie rule
against the residual stream written out by hand.
"""

import numpy as np
import pytest

import keras
from keras import layers

from keras_hybrid_interp.core.coupling import tied_names, tied_tensors
from keras_hybrid_interp.core.graph import ModelGraph
from keras_hybrid_interp.core.perturbation import job_permutation
from keras_hybrid_interp.global_.analyzer import GlobalAnalyzer

from _models_coupled import TIED, C, hand_forward, resnet_stage_model

N = 24
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(N, 8, 8, 3)).astype("float32"), rng.integers(0, 3, N)


def _neg_loss(p, y):
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1.0)
    return float(np.mean(np.log(p[np.arange(len(y)), y])))


@pytest.fixture(scope="module")
def stage():
    model = resnet_stage_model()
    x, y = _data()
    clean = {}
    hand_forward(model, x, lambda name, v: clean.setdefault(name, v))
    return model, x, y, clean


def test_tied_set_is_the_residual_stream():
    g = ModelGraph(resnet_stage_model())
    for block in ("b1_out", "stem", "b2_c2", "b1_add"):
        assert list(tied_names(g, tied_tensors(g, g.resolve(block)))) == TIED
    # A convolution that reads the stream starts a new quantity.
    assert list(tied_names(g, tied_tensors(g, g.resolve("b1_c1")))) == ["b1_c1"]
    assert list(tied_names(g, tied_tensors(g, g.resolve("after")))) == ["after"]


def test_tie_rule_stops_at_mixing_ops_and_broadcast_channels():
    inp = keras.Input((6, 6, 2))
    a = layers.Conv2D(3, 1, name="a")(inp)
    b = layers.Conv2D(3, 1, name="b")(inp)
    soft = layers.Activation("softmax", name="soft")(a)  # mixes channels
    se = layers.GlobalAveragePooling2D(keepdims=True, name="se_pool")(b)  # (1, 1, 3), no tie through it
    se = layers.Activation("sigmoid", name="se_gate")(se)  # ties se_pool with se_gate
    scaled = layers.Multiply(name="scaled")([b, se])  # per-channel scale: tied
    spatial = layers.Conv2D(1, 1, name="spatial")(inp)  # (6, 6, 1): broadcast channel, not tied
    att = layers.Multiply(name="att")([scaled, spatial])
    cat = layers.Concatenate(name="cat")([att, soft])  # moves channels
    ln = layers.LayerNormalization(name="ln")(a)
    out = layers.Dense(2, activation="softmax")(layers.GlobalAveragePooling2D()(layers.Add()([cat[..., :3], ln])))
    g = ModelGraph(keras.Model(inp, out))
    names = set(tied_names(g, tied_tensors(g, g.resolve("scaled"))))
    assert names == {"b", "se_pool", "se_gate", "scaled", "att"}
    assert not names & {"spatial", "soft", "cat", "ln", "a"}
    # Global pooling alone does not tie: it summarises the map.
    inp = keras.Input((6, 6, 2))
    c = layers.Conv2D(3, 1, name="c")(inp)
    p = layers.GlobalAveragePooling2D(keepdims=True, name="p")(c)
    g2 = ModelGraph(keras.Model(inp, layers.Flatten()(p)))
    assert list(tied_names(g2, tied_tensors(g2, g2.resolve("c")))) == ["c"]
    assert list(tied_names(g, tied_tensors(g, g.resolve("soft")))) == ["soft"]


def test_coupled_permutation_equals_joint_permutation_by_hand(stage):
    model, x, y, clean = stage
    ga = GlobalAnalyzer(model)
    res = ga.filter_importance(x, y, block="b1_out", groups="coupled", n_repeats=2, random_state=7, scoring="loss",
                               perturbations_per_eval=3)
    assert res.coupled == tuple(TIED)
    base = _neg_loss(clean["head"], y)
    assert np.isclose(res.baseline_score, base, atol=1e-6)
    expect = np.empty((C, 2))
    for i in range(C):
        for r in range(2):
            perm = job_permutation(7, i, r, N)

            def edit(name, v, i=i, perm=perm):
                if name in TIED:
                    v = v.copy()
                    v[..., i] = clean[name][perm][..., i]
                return v

            expect[i, r] = base - _neg_loss(hand_forward(model, x, edit), y)
    np.testing.assert_allclose(res.importances, expect, atol=2e-6)
    # Not the same as permuting the block's channel alone: the tie changes the numbers.
    alone = ga.filter_importance(x, y, block="b1_out", n_repeats=2, random_state=7, scoring="loss")
    assert not np.allclose(alone.importances, res.importances, atol=1e-4)


@pytest.mark.parametrize("value", ["zero", "mean"])
def test_coupled_ablation_equals_hand_ablation_of_every_tied_tensor(stage, value):
    model, x, y, clean = stage
    ga = GlobalAnalyzer(model)
    res = ga.filter_importance(x, y, block="b2_add", groups="coupled", method="ablation", ablation_value=value,
                               scoring="loss")
    base = _neg_loss(clean["head"], y)
    expect = []
    for i in range(C):
        def edit(name, v, i=i):
            if name in TIED:
                v = v.copy()
                v[..., i] = 0.0 if value == "zero" else clean[name][..., i].astype(np.float64).mean(0)
            return v

        expect.append(base - _neg_loss(hand_forward(model, x, edit), y))
    np.testing.assert_allclose(res.importances[:, 0], expect, atol=2e-6)


def test_any_member_gives_the_same_groups_and_numbers(stage):
    model, x, y, _ = stage
    ga = GlobalAnalyzer(model)
    kw = dict(groups="coupled", n_repeats=2, random_state=3, scoring="loss")
    a = ga.filter_importance(x, y, block="b1_out", **kw)
    b = ga.filter_importance(x, y, block="stem_bn", **kw)
    np.testing.assert_array_equal(a.importances, b.importances)
    assert a.coupled == b.coupled


def test_without_add_coupling_changes_nothing_for_permutation():
    # conv -> BN -> ReLU -> pool: every tied tensor is a channel-wise function of the first.
    inp = keras.Input((8, 8, 3))
    h = layers.Conv2D(C, 3, name="block")(inp)
    h = layers.BatchNormalization(name="bn")(h)
    h = layers.ReLU(name="relu")(h)
    h = layers.MaxPooling2D(name="pool")(h)
    h = layers.Conv2D(5, 3, activation="relu", name="c2")(h)
    out = layers.Dense(3, activation="softmax")(layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inp, out)
    x, y = _data(1)
    ga = GlobalAnalyzer(model)
    kw = dict(n_repeats=3, random_state=0, scoring="loss")
    coupled = ga.filter_importance(x, y, block="block", groups="coupled", **kw)
    assert coupled.coupled == ("block", "bn", "relu", "pool")
    plain = ga.filter_importance(x, y, block="block", **kw)
    np.testing.assert_allclose(coupled.importances, plain.importances, atol=1e-7)


def test_frame_names_the_tied_tensors_and_errors(stage):
    model, x, y, _ = stage
    ga = GlobalAnalyzer(model)
    res = ga.filter_importance(x, y, block="b1_out", groups="coupled", n_repeats=2, random_state=0)
    df = res.to_frame()
    assert set(df["tied_tensors"]) == {",".join(TIED)}
    assert df["filter"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert "coupled across 10 tensors" in repr(res)
    with pytest.raises(ValueError, match="groups='coupled'.*permutation.*ablation"):
        ga.filter_importance(x, y, block="b1_out", groups="coupled", method="taylor")
    with pytest.raises(ValueError, match="`groups` must be None, 'coupled'"):
        ga.filter_importance(x, y, block="b1_out", groups="tied")


def test_coupled_importance_leaves_the_model_untouched():
    from _models_global import assert_state_equal, model_state

    model = resnet_stage_model()
    x, y = _data(2)
    before = model_state(model)
    nodes = {layer.name: (len(layer._inbound_nodes), len(layer._outbound_nodes)) for layer in model.layers}
    config = model.get_config()
    GlobalAnalyzer(model).filter_importance(x, y, block="b1_out", groups="coupled", n_repeats=1, random_state=0)
    assert_state_equal(model, before, x)
    assert {layer.name: (len(layer._inbound_nodes), len(layer._outbound_nodes)) for layer in model.layers} == nodes
    assert model.get_config() == config
