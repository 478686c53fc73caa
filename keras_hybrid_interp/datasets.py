"""Built-in data that needs no network."""

from __future__ import annotations

import numpy as np

__all__ = ["load_digits", "make_synthetic", "class_names"]


def load_digits(image_size: int = 8, *, test_size: float = 0.25, random_state: int = 0):
    """scikit-learn's bundled handwritten digits as (N, S, S, 1) float32 images.

    Parameters
    ----------
    image_size : int
        Side of the square images. 8 is the original resolution; larger
        sizes upsample by pixel repetition when ``image_size`` is a multiple
        of 8, and by bilinear interpolation otherwise.
    test_size : float
        Fraction held out for testing (stratified).
    random_state : int
        Seed of the split.

    Returns
    -------
    (x_train, y_train), (x_test, y_test)
        Images scaled to [0, 1] and integer labels 0..9.
    """
    from sklearn.datasets import load_digits as _load
    from sklearn.model_selection import train_test_split

    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 8:
        raise ValueError(f"`image_size` must be an int >= 8; received {image_size!r}.")
    if not isinstance(test_size, float) or not 0.0 < test_size < 1.0:
        raise ValueError(f"`test_size` must be a float in (0, 1); received {test_size!r}.")
    data = _load()
    x = (data.images / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    if image_size != 8:
        if image_size % 8 == 0:
            r = image_size // 8
            x = np.repeat(np.repeat(x, r, axis=1), r, axis=2)
        else:
            import keras

            x = keras.ops.convert_to_numpy(
                keras.ops.image.resize(x[..., None], (image_size, image_size), interpolation="bilinear")
            )[..., 0]
    x = x[..., None]
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_size, random_state=random_state, stratify=y)
    return (x_tr, y_tr), (x_te, y_te)


_SHAPES = ("square", "circle", "triangle", "cross")
_COLOURS = {
    "red": (0.9, 0.15, 0.15),
    "green": (0.15, 0.8, 0.2),
    "blue": (0.2, 0.3, 0.95),
    "yellow": (0.95, 0.85, 0.1),
}
_TEXTURES = ("solid", "hstripes", "vstripes", "checker")
_FACTORS = {"shape": _SHAPES, "colour": tuple(_COLOURS), "texture": _TEXTURES}


def _shape_mask(kind, size, cy, cx, r):
    yy, xx = np.mgrid[0:size, 0:size]
    dy, dx = yy - cy, xx - cx
    if kind == "square":
        return (np.abs(dy) <= r) & (np.abs(dx) <= r)
    if kind == "circle":
        return dy ** 2 + dx ** 2 <= (r + 0.5) ** 2
    if kind == "triangle":
        return (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) / 2.0)
    # cross
    w = max(1, r // 3)
    return ((np.abs(dy) <= w) & (np.abs(dx) <= r)) | ((np.abs(dx) <= w) & (np.abs(dy) <= r))


def _texture(kind, size, phase):
    yy, xx = np.mgrid[0:size, 0:size]
    if kind == "solid":
        return np.ones((size, size))
    # Fine, half-contrast patterns: the silhouette of the shape stays intact.
    if kind == "hstripes":
        return np.where((yy + phase) % 2 == 0, 1.0, 0.45)
    if kind == "vstripes":
        return np.where((xx + phase) % 2 == 0, 1.0, 0.45)
    return np.where((yy + xx + phase) % 2 == 0, 1.0, 0.45)


def make_synthetic(
    n_samples: int = 1000,
    *,
    factor: str = "shape",
    image_size: int = 24,
    noise: float = 0.05,
    random_state: int | None = 0,
    return_factors: bool = False,
):
    """Generated RGB images whose class is one known factor: shape, colour or texture.

    Every image shows one object on a dark, noisy background. The object's
    shape (square, circle, triangle, cross), colour (red, green, blue,
    yellow), texture (solid, horizontal stripes, vertical stripes,
    checkerboard), size and position are drawn independently; the label is
    the index of the chosen ``factor``, so the other factors are nuisance
    variables with no information about the class. Tutorials and tests use
    it to check that the interpreter finds what was planted.

    Parameters
    ----------
    n_samples : int
    factor : {"shape", "colour", "texture"}  ("color" is accepted too)
    image_size : int
        Side of the square images, at least 16.
    noise : float
        Standard deviation of the Gaussian pixel noise.
    random_state : int or None
    return_factors : bool
        Also return a dict of every factor's value per image.

    Returns
    -------
    x : ndarray, shape (n_samples, image_size, image_size, 3), float32 in [0, 1]
    y : ndarray, shape (n_samples,), int64 in 0..3
    factors : dict of str -> ndarray of int, only with ``return_factors=True``
        Keys "shape", "colour", "texture", "size", "row", "col".
    """
    if factor == "color":
        factor = "colour"
    if factor not in _FACTORS:
        raise ValueError(f"`factor` must be one of {sorted(_FACTORS)}; received {factor!r}.")
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise ValueError(f"`n_samples` must be a positive int; received {n_samples!r}.")
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 16:
        raise ValueError(f"`image_size` must be an int >= 16; received {image_size!r}.")
    rng = np.random.default_rng(random_state)
    s = int(image_size)
    shape_i = rng.integers(0, 4, n_samples)
    colour_i = rng.integers(0, 4, n_samples)
    texture_i = rng.integers(0, 4, n_samples)
    radius = rng.integers(max(3, s // 6), max(4, s // 3) + 1, n_samples)
    row = np.array([rng.integers(r, s - r) for r in radius])
    col = np.array([rng.integers(r, s - r) for r in radius])
    phase = rng.integers(0, 4, n_samples)
    colours = np.array(list(_COLOURS.values()))
    x = np.empty((n_samples, s, s, 3), dtype=np.float32)
    for i in range(n_samples):
        mask = _shape_mask(_SHAPES[shape_i[i]], s, row[i], col[i], radius[i])
        tex = _texture(_TEXTURES[texture_i[i]], s, phase[i])
        img = np.full((s, s, 3), 0.1)
        img[mask] = tex[mask, None] * colours[colour_i[i]]
        x[i] = img
    x += rng.normal(0.0, noise, x.shape).astype(np.float32)
    np.clip(x, 0.0, 1.0, out=x)
    factors = {"shape": shape_i, "colour": colour_i, "texture": texture_i, "size": radius, "row": row, "col": col}
    y = factors[factor].astype(np.int64)
    if return_factors:
        return x, y, {k: np.asarray(v, dtype=np.int64) for k, v in factors.items()}
    return x, y


def class_names(factor: str) -> list[str]:
    """Names of the classes of :func:`make_synthetic` for ``factor``."""
    if factor == "color":
        factor = "colour"
    if factor not in _FACTORS:
        raise ValueError(f"`factor` must be one of {sorted(_FACTORS)}; received {factor!r}.")
    return list(_FACTORS[factor])
