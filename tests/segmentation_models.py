"""A tiny U-Net with planted weights and planted shapes, for the segmentation tests (no training)."""

import numpy as np

import keras
from keras import layers


def planted_unet(size=16, seed=0):
    """2 levels: enc1 (16x16, planted 1x1), bottleneck (8x8, random 3x3), dec1 (16x16, planted), softmax mask (3).

    enc1's filter 0 is relu(x - 0.5): it fires exactly on class 1's squares (intensity 1); filter 1 is
    relu(-x - 0.5), on class 2 (intensity -1); filter 2 fires on the background and class 2; filter 3 is
    constant. The output
    reads filters 0 and 1 through dec1: the model's mask is the planted one.
    """
    init = keras.initializers.GlorotUniform(seed=seed)
    inp = keras.Input((size, size, 1), name="image")
    c1 = layers.Conv2D(4, 1, activation="relu", name="enc1")(inp)
    p = layers.MaxPooling2D(2, name="pool1")(c1)
    c2 = layers.Conv2D(6, 3, padding="same", activation="relu", kernel_initializer=init, name="bottleneck")(p)
    u = layers.UpSampling2D(2, name="up1")(c2)
    cat = layers.Concatenate(name="cat1")([u, c1])
    c3 = layers.Conv2D(4, 1, activation="relu", name="dec1")(cat)
    out = layers.Conv2D(3, 1, activation="softmax", name="mask")(c3)
    m = keras.Model(inp, out, name="tiny_unet")
    w1 = np.zeros((1, 1, 1, 4), "float32")
    b1 = np.zeros(4, "float32")
    w1[..., 0], b1[0] = 1.0, -0.5
    w1[..., 1], b1[1] = -1.0, -0.5
    w1[..., 2], b1[2] = -0.3, 0.1
    w1[..., 3], b1[3] = 0.0, 0.05  # constant: its top-quantile mask is empty
    m.get_layer("enc1").set_weights([w1, b1])
    w3 = np.zeros((1, 1, 10, 4), "float32")
    for j in range(4):
        w3[0, 0, 6 + j, j] = 1.0
    w3[0, 0, :6, 3] = 0.05
    m.get_layer("dec1").set_weights([w3, np.zeros(4, "float32")])
    w4 = np.zeros((1, 1, 4, 3), "float32")
    w4[0, 0, 0, 1] = 10.0
    w4[0, 0, 1, 2] = 10.0
    m.get_layer("mask").set_weights([w4, np.array([1.0, 0.0, 0.0], "float32")])
    return m


def planted_data(n, size=16, seed=0):
    """Images with one square of intensity 1 (class 1) and one of -1 (class 2) on noise; their masks."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.1, (n, size, size, 1)).astype("float32")
    y = np.zeros((n, size, size), np.int64)
    for i in range(n):
        for cls, val in ((1, 1.0), (2, -1.0)):
            h, w = rng.integers(3, 7, 2)
            r, c = rng.integers(0, size - h), rng.integers(0, size - w)
            x[i, r:r + h, c:c + w, 0] = val + rng.normal(0, 0.1, (h, w))
            y[i, r:r + h, c:c + w] = cls
    return x, y


def unet(size=32, classes=3, name="unet"):
    """A standard 2-level U-Net (two convolutions per level), random init: for block discovery."""
    inp = keras.Input((size, size, 1))
    e1 = layers.Conv2D(8, 3, padding="same", activation="relu", name="enc1_conv1")(inp)
    e1 = layers.Conv2D(8, 3, padding="same", activation="relu", name="enc1_conv2")(e1)
    p1 = layers.MaxPooling2D(name="enc1_pool")(e1)
    e2 = layers.Conv2D(16, 3, padding="same", activation="relu", name="enc2_conv1")(p1)
    e2 = layers.Conv2D(16, 3, padding="same", activation="relu", name="enc2_conv2")(e2)
    p2 = layers.MaxPooling2D(name="enc2_pool")(e2)
    b = layers.Conv2D(32, 3, padding="same", activation="relu", name="bott_conv1")(p2)
    b = layers.Conv2D(32, 3, padding="same", activation="relu", name="bott_conv2")(b)
    u2 = layers.UpSampling2D(name="dec2_up")(b)
    d2 = layers.Concatenate(name="dec2_cat")([u2, e2])
    d2 = layers.Conv2D(16, 3, padding="same", activation="relu", name="dec2_conv1")(d2)
    d2 = layers.Conv2D(16, 3, padding="same", activation="relu", name="dec2_conv2")(d2)
    u1 = layers.UpSampling2D(name="dec1_up")(d2)
    d1 = layers.Concatenate(name="dec1_cat")([u1, e1])
    d1 = layers.Conv2D(8, 3, padding="same", activation="relu", name="dec1_conv1")(d1)
    d1 = layers.Conv2D(8, 3, padding="same", activation="relu", name="dec1_conv2")(d1)
    out = layers.Conv2D(classes, 1, activation="softmax", name="mask")(d1)
    return keras.Model(inp, out, name=name)


def unet_nd(rank=1, size=32, classes=3, levels=2, transpose=False, batchnorm=False, free=False, sigmoid=False,
            name=None):
    """A standard U-Net of ``rank`` 1, 2 or 3 (Conv1D/2D/3D), random init: for block discovery and end-to-end runs.

    ``levels`` poolings, two convolutions per level (the second as conv + BatchNormalization + Activation when
    ``batchnorm``), upsampling by UpSampling or by a strided ConvTranspose (``transpose``), a Concatenate of each
    encoder map into the decoder, a 1x1 head (softmax over ``classes``, or one sigmoid unit when ``sigmoid``).
    ``free``: spatial axes of size None. Layer names: enc{i}_out, bott_out, dec{i}_out are the planted block ends.
    """
    conv = {1: layers.Conv1D, 2: layers.Conv2D, 3: layers.Conv3D}[rank]
    pool = {1: layers.MaxPooling1D, 2: layers.MaxPooling2D, 3: layers.MaxPooling3D}[rank]
    up = {1: layers.UpSampling1D, 2: layers.UpSampling2D, 3: layers.UpSampling3D}[rank]
    tconv = {1: layers.Conv1DTranspose, 2: layers.Conv2DTranspose, 3: layers.Conv3DTranspose}[rank]
    init = keras.initializers.GlorotUniform(seed=1)

    def double(x, f, tag):
        x = conv(f, 3, padding="same", activation="relu", kernel_initializer=init, name=f"{tag}_conv1")(x)
        if batchnorm:
            x = conv(f, 3, padding="same", kernel_initializer=init, name=f"{tag}_conv2")(x)
            x = layers.BatchNormalization(name=f"{tag}_bn")(x)
            return layers.Activation("relu", name=f"{tag}_out")(x)
        return conv(f, 3, padding="same", activation="relu", kernel_initializer=init, name=f"{tag}_out")(x)

    inp = keras.Input(((None,) if free else (size,)) * rank + (1,))
    x, skips = inp, []
    for i in range(1, levels + 1):
        x = double(x, 4 * i, f"enc{i}")
        skips.append(x)
        x = pool(2, name=f"enc{i}_pool")(x)
    x = double(x, 4 * (levels + 1), "bott")
    for i in range(levels, 0, -1):
        if transpose:
            x = tconv(4 * i, 2, strides=2, padding="same", kernel_initializer=init, name=f"dec{i}_up")(x)
        else:
            x = up(2, name=f"dec{i}_up")(x)
        x = layers.Concatenate(name=f"dec{i}_cat")([x, skips[i - 1]])
        x = double(x, 4 * i, f"dec{i}")
    out = conv(1 if sigmoid else classes, 1, activation="sigmoid" if sigmoid else "softmax",
               kernel_initializer=init, name="mask")(x)
    return keras.Model(inp, out, name=name or f"unet{rank}d")
