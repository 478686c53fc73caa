"""Block discovery on encoder-decoder networks (U-Nets of rank 1, 2 and 3): encoder, bottleneck and decoder blocks.

The expected blocks are planted by construction (tests/segmentation_models.py names them enc{i}_out, bott_out,
dec{i}_out); the levels are checked against the static shapes Keras itself computes.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

import keras
from keras import layers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from keras_hybrid_interp import HybridInterpreter  # noqa: E402
from keras_hybrid_interp.core import blocks as _blocks  # noqa: E402
from keras_hybrid_interp.core.graph import ModelGraph  # noqa: E402

from segmentation_models import unet, unet_nd  # noqa: E402


def auto(model):
    g = ModelGraph(model)
    with pytest.warns(UserWarning, match="encoder-decoder network"):
        keys, names, infos = _blocks.select_blocks(g)
    return g, keys, names, infos


def planted(levels):
    enc = [f"enc{i}_out" for i in range(1, levels + 1)]
    dec = [f"dec{i}_out" for i in range(levels, 0, -1)]
    return enc + ["bott_out"] + dec, ["encoder"] * levels + ["bottleneck"] + ["decoder"] * levels


def test_two_level_unet_finds_encoder_bottleneck_and_decoder():
    g, keys, names, infos = auto(unet())
    assert names == ["enc1_conv2", "enc2_conv2", "bott_conv2", "dec2_conv2", "dec1_conv2"]
    assert [b.stage for b in infos] == ["encoder", "encoder", "bottleneck", "decoder", "decoder"]
    # Only the first encoder block (the outer skip's source) and the last decoder block are cut points: the
    # outer skip jumps over the others. The tail engine's frontier carries the skips that cross each cut.
    cuts = set(_blocks.cut_points(g))
    assert [k in cuts for k in keys] == [True, False, False, False, True]
    assert [g.tensors[k].name for k in g.frontier(keys[1])] == ["enc2_conv2", "enc1_conv2"]
    bott = g.frontier(keys[2])
    assert sorted(g.tensors[k].name for k in bott[1:]) == ["enc1_conv2", "enc2_conv2"]


@pytest.mark.parametrize("rank, levels, transpose, batchnorm, free", [
    (1, 2, False, False, False),
    (1, 3, True, True, True),
    (2, 3, True, True, False),
    (2, 2, False, True, True),
    (3, 2, True, False, False),
], ids=["1d", "1d_3lvl_transpose_bn_free", "2d_3lvl_transpose_bn", "2d_bn_free", "3d_transpose"])
def test_unets_of_every_rank_get_planted_blocks_and_stages(rank, levels, transpose, batchnorm, free):
    m = unet_nd(rank, size=16, levels=levels, transpose=transpose, batchnorm=batchnorm, free=free)
    g, keys, names, infos = auto(m)
    expected, stages = planted(levels)
    assert names == expected
    assert [b.stage for b in infos] == stages
    # Levels against Keras's own static shapes (the fixed-size twin of a free model).
    fixed = ModelGraph(unet_nd(rank, size=16, levels=levels, transpose=transpose, batchnorm=batchnorm))
    levels_ = _blocks.spatial_levels(g)
    for k in keys:
        shape = fixed.tensors[fixed.resolve(g.tensors[k].name)].shape
        assert levels_[k] == pytest.approx(np.log2(16 / shape[1]))
        assert len(shape) == rank + 2


def test_block_frame_shows_the_stage_only_for_encoder_decoders():
    with pytest.warns(UserWarning):
        frame = HybridInterpreter(unet()).blocks.to_frame()
    assert list(frame["stage"]) == ["encoder", "encoder", "bottleneck", "decoder", "decoder"]
    inp = keras.Input((12, 12, 1))
    x = layers.MaxPooling2D()(layers.Conv2D(4, 3, activation="relu", name="c1")(inp))
    x = layers.Conv2D(4, 3, activation="relu", name="c2")(x)
    out = layers.Dense(2, activation="softmax")(layers.GlobalAveragePooling2D()(x))
    cnn = keras.Model(inp, out)
    assert _blocks.encoder_decoder(ModelGraph(cnn)) is None
    frame = HybridInterpreter(cnn).blocks.to_frame()
    assert list(frame.columns) == ["block", "output_shape", "filters", "depth"]


def test_explicit_blocks_of_a_unet_get_their_stage():
    g = ModelGraph(unet())
    _, names, infos = _blocks.select_blocks(g, ["enc1_conv1", "enc2_pool", "dec2_up", "dec1_cat"])
    assert [b.stage for b in infos] == ["encoder", "bottleneck", "decoder", "decoder"]


def test_autoencoder_without_skips_and_a_resizing_decoder():
    """Down then up with no skip connection, upsampled by a Resizing layer (its level from the static sizes)."""
    inp = keras.Input((16, 16, 1))
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name="e1")(inp)
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="e2")(x)  # 8x8
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="b")(x)  # 4x4
    x = layers.Resizing(8, 8, name="up2")(x)
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="d2")(x)
    x = layers.Conv2DTranspose(4, 3, strides=2, padding="same", name="up1")(x)
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name="d1")(x)
    out = layers.Conv2D(1, 1, activation="sigmoid", name="mask")(x)
    _, _, names, infos = auto(keras.Model(inp, out))
    assert names == ["e1", "e2", "b", "d2", "d1"]
    assert [b.stage for b in infos] == ["encoder", "encoder", "bottleneck", "decoder", "decoder"]


def test_downsampling_classifier_with_an_upsampled_side_branch_is_no_unet_when_it_never_went_down():
    """An upsampling at the input's resolution (a super-resolution stem) is no encoder-decoder."""
    inp = keras.Input((8, 8, 1))
    x = layers.UpSampling2D(name="up")(inp)
    x = layers.Conv2D(4, 3, activation="relu", name="c1")(x)
    x = layers.MaxPooling2D(name="p1")(x)
    x = layers.Conv2D(4, 3, activation="relu", name="c2")(x)
    out = layers.Dense(2, activation="softmax")(layers.GlobalAveragePooling2D()(x))
    g = ModelGraph(keras.Model(inp, out))
    assert _blocks.encoder_decoder(g) is None
    assert _blocks.discover_blocks(g)[0] == [g.resolve("p1"), g.resolve("c2")]
