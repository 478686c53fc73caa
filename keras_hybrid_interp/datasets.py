"""Built-in data that needs no network."""

from __future__ import annotations

import numpy as np

from .core.validation import check_int, check_real

__all__ = ["load_digits", "make_synthetic", "class_names", "make_texture_concept", "make_signals", "signal_class_names",
           "make_volumes", "volume_class_names", "make_multilabel_signals", "multilabel_signal_names",
           "make_shapes_segmentation", "segmentation_class_names", "make_blob_regression",
           "blob_target_names"]


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

    check_int(image_size, "image_size", min_value=8)
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
    check_int(n_samples, "n_samples")
    check_int(image_size, "image_size", min_value=16)
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


def make_texture_concept(n_samples: int = 50, *, texture: str = "hstripes", image_size: int = 24,
                         noise: float = 0.05, random_state: int | None = 0):
    """Examples of a texture *concept* for TCAV: images of :func:`make_synthetic` that all carry ``texture``.

    Every image shows one object of a random shape, colour, size and
    position, as :func:`make_synthetic` draws them, always with the given
    texture ("solid", "hstripes", "vstripes" or "checker"): the concept is
    the texture, and nothing else sets the examples apart from images of
    ``make_synthetic``. ``random_state`` seeds the draw (use one that the
    data the model saw did not use: concept examples must not repeat the
    random sets' inputs).

    Returns
    -------
    x : ndarray, shape (n_samples, image_size, image_size, 3), float32 in [0, 1]
    """
    if texture not in _TEXTURES:
        raise ValueError(f"`texture` must be one of {list(_TEXTURES)}; received {texture!r}.")
    check_int(n_samples, "n_samples")
    want = _TEXTURES.index(texture)
    parts, have, seed = [], 0, np.random.default_rng(random_state)
    while have < n_samples:  # a quarter of make_synthetic's images carry each texture
        x, y = make_synthetic(max(64, 5 * (n_samples - have)), factor="texture", image_size=image_size, noise=noise,
                              random_state=int(seed.integers(2**31)))
        parts.append(x[y == want])
        have += len(parts[-1])
    return np.concatenate(parts)[:n_samples]


# ----------------------------------------------------------------------
# 1-D: ECG-like signals
# ----------------------------------------------------------------------
_SIGNAL_FACTORS = {"width": ("narrow_qrs", "wide_qrs"), "extra_beat": ("regular", "extra_beat")}


def _beat(t, centre, period, qrs_width, *, t_offset=None, t_amp=0.3, st=0.0):
    """One PQRST complex at sample ``centre``: Gaussian P, Q, R, S and T waves.

    P and T sit at fixed fractions of the beat period; Q and S flank R at
    2.2 QRS widths, so a wider QRS widens the whole complex. ``t_offset``
    (default 0.28 periods) places the T wave, ``t_amp`` is its amplitude
    (negative: an inverted T wave), and ``st`` raises the ST segment (from
    1.5 QRS widths after S to the T peak) by that much, with soft edges.
    """
    t_off = 0.28 * period if t_offset is None else t_offset
    waves = (  # (offset, standard deviation, amplitude)
        (-0.22 * period, 0.025 * period, 0.12),  # P
        (-2.2 * qrs_width, qrs_width, -0.12),    # Q
        (0.0, qrs_width, 1.0),                   # R
        (2.2 * qrs_width, qrs_width, -0.25),     # S
        (t_off, 0.05 * period, t_amp),           # T
    )
    out = np.zeros_like(t)
    for off, sd, amp in waves:
        out += amp * np.exp(-0.5 * ((t - centre - off) / sd) ** 2)
    if st:
        start, stop = centre + 3.7 * qrs_width, centre + t_off
        out += st / ((1.0 + np.exp(-(t - start))) * (1.0 + np.exp(t - stop)))
    return out


def make_signals(
    n_samples: int = 600,
    *,
    factor: str = "width",
    length: int = 128,
    noise: float = 0.05,
    drift: float = 0.3,
    random_state: int | None = 0,
    return_factors: bool = False,
):
    """Generated ECG-like signals whose class is one planted morphology.

    Each signal is a train of beats (P wave, QRS complex, T wave, each a
    Gaussian bump) at a random heart rate and phase, plus Gaussian noise and
    a baseline drift (a slow sinusoid of random amplitude, period and
    phase). The class is planted in one factor; everything else (rate, phase,
    amplitude, drift) is drawn independently of it:

    * ``factor="width"``: class 0 ``"narrow_qrs"`` has a narrow QRS complex
      (R wave standard deviation 1.0 to 1.6 samples), class 1 ``"wide_qrs"``
      a wide one (3.0 to 4.0 samples), as in a bundle-branch block.
    * ``factor="extra_beat"``: class 1 ``"extra_beat"`` has one premature
      extra beat between two regular beats; class 0 ``"regular"`` has none.

    Parameters
    ----------
    n_samples : int
    factor : {"width", "extra_beat"}
    length : int
        Samples per signal, at least 64.
    noise : float
        Standard deviation of the Gaussian noise.
    drift : float
        Largest amplitude of the baseline drift (0: none).
    random_state : int or None
        Seed; the same seed gives the same signals.
    return_factors : bool
        Also return a dict of the per-signal draws.

    Returns
    -------
    x : ndarray, shape (n_samples, length, 1), float32
    y : ndarray, shape (n_samples,), int64 in {0, 1} (balanced: alternating classes)
    factors : dict of str -> ndarray, only with ``return_factors=True``
        Keys "class", "qrs_width", "period", "phase", "extra_at" (sample of
        the extra beat, -1 if none), "drift".
    """
    if factor not in _SIGNAL_FACTORS:
        raise ValueError(f"`factor` must be one of {sorted(_SIGNAL_FACTORS)}; received {factor!r}.")
    n = check_int(n_samples, "n_samples")
    T = check_int(length, "length", min_value=64)
    rng = np.random.default_rng(random_state)
    y = (np.arange(n) % 2).astype(np.int64)
    rng.shuffle(y)
    t = np.arange(T, dtype=np.float64)
    period = rng.uniform(0.3, 0.42, n) * T
    phase = rng.uniform(0.0, 1.0, n) * period
    if factor == "width":
        qrs = np.where(y == 1, rng.uniform(3.0, 4.0, n), rng.uniform(1.0, 1.6, n))
    else:
        qrs = rng.uniform(1.0, 2.0, n)
    amp = rng.uniform(0.8, 1.2, n)
    drift_amp = rng.uniform(0.0, drift, n) if drift > 0 else np.zeros(n)
    drift_period = rng.uniform(1.5, 4.0, n) * T
    drift_phase = rng.uniform(0.0, 2 * np.pi, n)
    extra_at = np.full(n, -1, dtype=np.int64)
    x = np.empty((n, T, 1), dtype=np.float32)
    for i in range(n):
        centres = np.arange(phase[i] - period[i], T + period[i], period[i])
        sig = np.zeros(T)
        for c in centres:
            sig += _beat(t, c, period[i], qrs[i])
        if factor == "extra_beat" and y[i] == 1:
            inside = [c for c in centres if 0.1 * T <= c <= 0.9 * T - 0.45 * period[i]]
            c0 = inside[int(rng.integers(0, len(inside)))] if inside else centres[1]
            extra = c0 + rng.uniform(0.45, 0.55) * period[i]
            extra_at[i] = int(round(extra))
            sig += 0.9 * _beat(t, extra, period[i], qrs[i])
        sig *= amp[i]
        sig += drift_amp[i] * np.sin(2 * np.pi * t / drift_period[i] + drift_phase[i])
        x[i, :, 0] = sig
    x += rng.normal(0.0, noise, x.shape).astype(np.float32)
    if return_factors:
        return x, y, {"class": y.copy(), "qrs_width": qrs, "period": period, "phase": phase,
                      "extra_at": extra_at, "drift": drift_amp}
    return x, y


def signal_class_names(factor: str = "width") -> list[str]:
    """Names of the classes of :func:`make_signals` for ``factor``."""
    if factor not in _SIGNAL_FACTORS:
        raise ValueError(f"`factor` must be one of {sorted(_SIGNAL_FACTORS)}; received {factor!r}.")
    return list(_SIGNAL_FACTORS[factor])


# ----------------------------------------------------------------------
# 3-D: volumes with a planted blob
# ----------------------------------------------------------------------
_VOLUME_FACTORS = {"shape": ("ball", "rod"), "position": ("front", "back")}


def make_volumes(
    n_samples: int = 300,
    *,
    factor: str = "shape",
    size: int = 16,
    noise: float = 0.1,
    random_state: int | None = 0,
    return_factors: bool = False,
):
    """Generated volumes (as from CT or MRI) whose class is the shape or position of one planted blob.

    Each volume holds one bright blob with soft edges on a noisy background.
    Its radius, intensity, centre (and, for a rod, the axis it runs along)
    are drawn at random, independently of the class unless the class is
    that factor:

    * ``factor="shape"``: class 0 ``"ball"`` is a ball of radius 2.5 to 3.5
      voxels; class 1 ``"rod"`` is an elongated ellipsoid (half-length 2.2
      times its radius of 1.2 to 1.6) along a random axis. The centre is
      anywhere in the volume (the blob fully inside).
    * ``factor="position"``: a ball whose centre lies in the front half
      (depth index < size / 2, class 0 ``"front"``) or the back half
      (class 1 ``"back"``) of the volume.

    Parameters
    ----------
    n_samples : int
    factor : {"shape", "position"}
    size : int
        Side of the cubic volumes, at least 12.
    noise : float
        Standard deviation of the Gaussian voxel noise.
    random_state : int or None
        Seed; the same seed gives the same volumes.
    return_factors : bool
        Also return a dict of the per-volume draws.

    Returns
    -------
    x : ndarray, shape (n_samples, size, size, size, 1), float32
    y : ndarray, shape (n_samples,), int64 in {0, 1} (balanced)
    factors : dict of str -> ndarray, only with ``return_factors=True``
        Keys "class", "centre" (n, 3: depth, height, width), "radius",
        "axis" (the rod's axis, -1 for a ball), "intensity".
    """
    if factor not in _VOLUME_FACTORS:
        raise ValueError(f"`factor` must be one of {sorted(_VOLUME_FACTORS)}; received {factor!r}.")
    n = check_int(n_samples, "n_samples")
    S = check_int(size, "size", min_value=12)
    rng = np.random.default_rng(random_state)
    y = (np.arange(n) % 2).astype(np.int64)
    rng.shuffle(y)
    grid = np.stack(np.meshgrid(*(np.arange(S, dtype=np.float64),) * 3, indexing="ij"), axis=-1)
    rod = (y == 1) if factor == "shape" else np.zeros(n, bool)
    radius = np.where(rod, rng.uniform(1.2, 1.6, n), rng.uniform(2.5, 3.5, n))
    axis = np.where(rod, rng.integers(0, 3, n), -1)
    intensity = rng.uniform(0.7, 1.0, n)
    centre = np.empty((n, 3))
    x = np.empty((n, S, S, S, 1), dtype=np.float32)
    for i in range(n):
        half = np.full(3, radius[i])
        if rod[i]:
            half[axis[i]] = 2.2 * radius[i]
        margin = np.ceil(half) + 1
        c = rng.uniform(margin, S - 1 - margin)
        if factor == "position":
            lo, hi = (margin[0], S / 2 - 0.5) if y[i] == 0 else (S / 2 - 0.5, S - 1 - margin[0])
            c[0] = rng.uniform(lo, hi)
        centre[i] = c
        d = np.sqrt((((grid - c) / half) ** 2).sum(-1))
        x[i, ..., 0] = intensity[i] / (1.0 + np.exp((d - 1.0) * 6.0))
    x += rng.normal(0.0, noise, x.shape).astype(np.float32)
    if return_factors:
        return x, y, {"class": y.copy(), "centre": centre, "radius": radius, "axis": axis.astype(np.int64),
                      "intensity": intensity}
    return x, y


def volume_class_names(factor: str = "shape") -> list[str]:
    """Names of the classes of :func:`make_volumes` for ``factor``."""
    if factor not in _VOLUME_FACTORS:
        raise ValueError(f"`factor` must be one of {sorted(_VOLUME_FACTORS)}; received {factor!r}.")
    return list(_VOLUME_FACTORS[factor])


# ----------------------------------------------------------------------
# Tasks beyond single-label classification
# ----------------------------------------------------------------------
_FINDINGS = ("wide_qrs", "st_elevation", "tachycardia", "inverted_t", "noise_burst")


def make_multilabel_signals(
    n_samples: int = 800,
    *,
    length: int = 256,
    prevalence=0.4,
    noise: float = 0.05,
    drift: float = 0.2,
    random_state: int | None = 0,
    return_factors: bool = False,
):
    """Generated ECG-like signals carrying several planted findings at once (multi-label).

    Each signal is a train of beats as in :func:`make_signals` (P wave, QRS
    complex, T wave, each a Gaussian bump) at a random phase and amplitude,
    with Gaussian noise and a slow baseline drift. Five findings are planted,
    each present independently of the others with probability
    ``prevalence``; ``y[i, k]`` is 1 where finding ``k`` is present. They act
    at different scales, from a few samples to several beats:

    ====  ================  ====================================================
    k     name              signature (present / absent)
    ====  ================  ====================================================
    0     ``wide_qrs``      R wave standard deviation 2.6 to 3.2 samples / 1.0 to 1.5
    1     ``st_elevation``  the ST segment (S to T peak) raised by 0.25 to 0.35 / flat
    2     ``tachycardia``   beat period 26 to 32 samples / 48 to 64
    3     ``inverted_t``    T wave amplitude -0.4 to -0.3 / +0.25 to +0.35
    4     ``noise_burst``   one burst of white noise (standard deviation 0.25 to 0.35)
                            over 24 to 40 samples, as from a muscle artefact / none
    ====  ================  ====================================================

    The T wave sits 0.3 periods plus 3 QRS widths after R, so it never meets
    the S wave, even in a fast beat with a wide QRS. The period is in
    samples (a fixed sampling rate), so ``length`` sets how many beats a
    signal holds (about 4 to 5, or 8 to 10 with tachycardia, at 256).

    Parameters
    ----------
    n_samples : int
    length : int
        Samples per signal, at least 128.
    prevalence : float or sequence of 5 floats
        Probability that each finding is present, in [0, 1]: one for all, or
        one per finding in the order of :func:`multilabel_signal_names`.
    noise : float
        Standard deviation of the Gaussian noise.
    drift : float
        Largest amplitude of the baseline drift (0: none).
    random_state : int or None
        Seed; the same seed gives the same signals, bit for bit.
    return_factors : bool
        Also return a dict of the per-signal draws.

    Returns
    -------
    x : ndarray, shape (n_samples, length, 1), float32
    y : ndarray, shape (n_samples, 5), int64 in {0, 1}
    factors : dict of str -> ndarray, only with ``return_factors=True``
        Keys "qrs_width", "period", "phase", "st" (elevation, 0 if none),
        "t_amp", "t_offset", "burst_at" (first sample of the burst, -1 if
        none), "burst_length" (0 if none), "burst_sd" (0 if none), "amplitude",
        "drift".
    """
    n = check_int(n_samples, "n_samples")
    T = check_int(length, "length", min_value=128)
    noise = check_real(noise, "noise", low=0, finite=True)
    drift = check_real(drift, "drift", low=0, finite=True)
    K = len(_FINDINGS)
    try:
        p = np.broadcast_to(np.asarray(prevalence, dtype=np.float64), (K,)).copy()
    except (TypeError, ValueError):
        raise ValueError(f"`prevalence` must be a float or a sequence of {K} floats in [0, 1]; "
                         f"received {prevalence!r}.") from None
    if isinstance(prevalence, bool) or not np.all((p >= 0) & (p <= 1)):
        raise ValueError(f"`prevalence` must be a float or a sequence of {K} floats in [0, 1]; "
                         f"received {prevalence!r}.")
    rng = np.random.default_rng(random_state)
    y = (rng.random((n, K)) < p).astype(np.int64)
    wide, st_el, tachy, inv_t, burst = (y[:, k] == 1 for k in range(K))
    t = np.arange(T, dtype=np.float64)
    qrs = np.where(wide, rng.uniform(2.6, 3.2, n), rng.uniform(1.0, 1.5, n))
    period = np.where(tachy, rng.uniform(26.0, 32.0, n), rng.uniform(48.0, 64.0, n))
    phase = rng.uniform(0.0, 1.0, n) * period
    st = np.where(st_el, rng.uniform(0.25, 0.35, n), 0.0)
    t_amp = np.where(inv_t, -rng.uniform(0.3, 0.4, n), rng.uniform(0.25, 0.35, n))
    t_offset = 0.3 * period + 3.0 * qrs
    burst_length = np.where(burst, rng.integers(24, 41, n), 0)
    burst_at = np.where(burst, [int(rng.integers(0, T - b + 1)) for b in np.maximum(burst_length, 1)], -1)
    burst_sd = np.where(burst, rng.uniform(0.25, 0.35, n), 0.0)
    amp = rng.uniform(0.8, 1.2, n)
    drift_amp = rng.uniform(0.0, drift, n) if drift > 0 else np.zeros(n)
    drift_period = rng.uniform(1.5, 4.0, n) * T
    drift_phase = rng.uniform(0.0, 2 * np.pi, n)
    x = np.empty((n, T, 1), dtype=np.float32)
    for i in range(n):
        sig = np.zeros(T)
        for c in np.arange(phase[i] - period[i], T + period[i], period[i]):
            sig += _beat(t, c, period[i], qrs[i], t_offset=t_offset[i], t_amp=t_amp[i], st=st[i])
        sig *= amp[i]
        if burst[i]:
            b0, bl = burst_at[i], burst_length[i]
            sig[b0:b0 + bl] += rng.normal(0.0, burst_sd[i], bl)
        sig += drift_amp[i] * np.sin(2 * np.pi * t / drift_period[i] + drift_phase[i])
        x[i, :, 0] = sig
    x += rng.normal(0.0, noise, x.shape).astype(np.float32)
    if return_factors:
        return x, y, {"qrs_width": qrs, "period": period, "phase": phase, "st": st, "t_amp": t_amp,
                      "t_offset": t_offset, "burst_at": burst_at.astype(np.int64),
                      "burst_length": burst_length.astype(np.int64), "burst_sd": burst_sd,
                      "amplitude": amp, "drift": drift_amp}
    return x, y


def multilabel_signal_names() -> list[str]:
    """Names of the findings of :func:`make_multilabel_signals`, in the order of ``y``'s columns."""
    return list(_FINDINGS)


_SEG_CLASSES = ("background", "square", "disc", "textured")


def make_shapes_segmentation(
    n_samples: int = 400,
    *,
    size: int = 32,
    max_shapes: int = 3,
    noise: float = 0.1,
    random_state: int | None = 0,
    return_factors: bool = False,
):
    """Generated grey images of planted shapes with a per-pixel class mask (segmentation).

    Each image holds 1 to ``max_shapes`` objects on a noisy background of
    level 0.1. Each object is one of three classes, drawn uniformly:

    * 1 ``"square"``: a filled square of uniform intensity;
    * 2 ``"disc"``: a filled disc of uniform intensity;
    * 3 ``"textured"``: a square or a disc (either, at random) filled with a
      checkerboard of period 2 pixels alternating between its intensity and
      0.3 times it, so its class is its texture, not its outline.

    Intensities are drawn from 0.55 to 1.0 for every class, so no class can
    be told from brightness alone; squares and discs differ only in their
    outline. The half-width (square) or radius (disc) is drawn from
    ``size // 10`` to ``size // 5`` pixels (3 to 6 at 32), the centre so that
    the object lies inside the image. Objects are painted in order and may
    overlap; a later object covers an earlier one, in the image and in the
    mask alike. The mask is exactly the painted class of every pixel
    (0: background).

    Parameters
    ----------
    n_samples : int
    size : int
        Side of the square images, at least 16.
    max_shapes : int
        Most objects per image, at least 1 (the count is drawn uniformly from
        1 to ``max_shapes``).
    noise : float
        Standard deviation of the Gaussian pixel noise (added to the image,
        not to the mask).
    random_state : int or None
        Seed; the same seed gives the same images and masks, bit for bit.
    return_factors : bool
        Also return a dict of the objects drawn.

    Returns
    -------
    x : ndarray, shape (n_samples, size, size, 1), float32
    masks : ndarray, shape (n_samples, size, size), int64 in 0..3
    factors : dict of str -> ndarray, only with ``return_factors=True``
        Arrays of shape (n_samples, max_shapes), in painting order, padded
        with -1 (ints) or NaN (floats) after an image's last object:
        "cls" (class 1..3), "outline" (0 square, 1 disc), "row", "col"
        (centre), "radius", "intensity", "phase" (the checkerboard's, 0 or 1).
    """
    n = check_int(n_samples, "n_samples")
    S = check_int(size, "size", min_value=16)
    m = check_int(max_shapes, "max_shapes")
    noise = check_real(noise, "noise", low=0, finite=True)
    rng = np.random.default_rng(random_state)
    lo, hi = max(2, S // 10), max(3, S // 5)
    yy, xx = np.mgrid[0:S, 0:S]
    fac = {k: np.full((n, m), -1, dtype=np.int64) for k in ("cls", "outline", "row", "col", "radius", "phase")}
    fac["intensity"] = np.full((n, m), np.nan)
    x = np.empty((n, S, S, 1), dtype=np.float32)
    masks = np.zeros((n, S, S), dtype=np.int64)
    for i in range(n):
        img = np.full((S, S), 0.1)
        for j in range(int(rng.integers(1, m + 1))):
            cls = int(rng.integers(1, 4))
            outline = {1: 0, 2: 1}.get(cls, int(rng.integers(0, 2)))
            r = int(rng.integers(lo, hi + 1))
            cy, cx = (int(v) for v in rng.integers(r, S - r, 2))
            inten = float(rng.uniform(0.55, 1.0))
            ph = int(rng.integers(0, 2))
            if outline == 0:
                inside = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
            else:
                inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= (r + 0.5) ** 2
            fill = np.where((yy + xx + ph) % 2 == 0, inten, 0.3 * inten) if cls == 3 else inten
            img = np.where(inside, fill, img)
            masks[i][inside] = cls
            for k, v in (("cls", cls), ("outline", outline), ("row", cy), ("col", cx), ("radius", r),
                         ("phase", ph), ("intensity", inten)):
                fac[k][i, j] = v
        x[i, :, :, 0] = img
    x += rng.normal(0.0, noise, x.shape).astype(np.float32)
    if return_factors:
        return x, masks, fac
    return x, masks


def segmentation_class_names() -> list[str]:
    """Names of the mask values of :func:`make_shapes_segmentation` (0 is the background)."""
    return list(_SEG_CLASSES)


_BLOB_TARGETS = {"count": ("count",), "area": ("area",), "both": ("count", "area")}


def make_blob_regression(
    n_samples: int = 600,
    *,
    size: int = 48,
    max_blobs: int = 10,
    target: str = "count",
    noise: float = 0.1,
    gradient: float = 0.4,
    random_state: int | None = 0,
    return_factors: bool = False,
):
    """Generated grey images of separate bright discs ("blobs"), with their count or total area as the target.

    Each image holds 0 to ``max_blobs`` discs (the count drawn uniformly).
    Each disc has its own radius (1.2 to 4.0 pixels, drawn uniformly) and
    contrast (0.4 to 1.0, added to the background), and lies inside the image
    more than 2 pixels (centre to centre: the two radii plus 2.5) from every
    other disc, so that the discs never touch: in the noise-free image, the
    connected components above the background are exactly the discs. The
    background is an uneven illumination: 0.1 plus a linear ramp in a random
    direction rising by up to ``gradient`` across the image. Because radius,
    contrast and illumination vary, neither the bright area nor the mean
    brightness is the count: counting needs each disc found as an object.

    Parameters
    ----------
    n_samples : int
    size : int
        Side of the square images, at least 16.
    max_blobs : int
        Most discs per image, at least 1, and at most what fits apart at
        random (``int(0.4 * size**2 / (pi * 5.25**2))``: 10 at 48 pixels,
        4 at 32, 18 at 64).
    target : {"count", "area", "both"}
        ``"count"``: the number of discs; ``"area"``: their total area in
        pixels (the number of pixels painted); ``"both"``: the two as
        columns, in the order of :func:`blob_target_names`.
    noise : float
        Standard deviation of the Gaussian pixel noise.
    gradient : float
        Largest rise of the background's illumination ramp (0: a flat
        background at 0.1).
    random_state : int or None
        Seed; the same seed gives the same images, bit for bit.
    return_factors : bool
        Also return a dict of the discs drawn.

    Returns
    -------
    x : ndarray, shape (n_samples, size, size, 1), float32
    y : ndarray, float32, shape (n_samples,) for "count" and "area", (n_samples, 2) for "both"
    factors : dict of str -> ndarray, only with ``return_factors=True``
        "count" and "area" (n_samples,), "background" (n_samples, size,
        size: the noise-free illumination), and "row", "col", "radius",
        "contrast" of shape (n_samples, max_blobs), NaN after an image's
        last disc.
    """
    if target not in _BLOB_TARGETS:
        raise ValueError(f"`target` must be one of {sorted(_BLOB_TARGETS)}; received {target!r}.")
    n = check_int(n_samples, "n_samples")
    S = check_int(size, "size", min_value=16)
    m = check_int(max_blobs, "max_blobs")
    noise = check_real(noise, "noise", low=0, finite=True)
    gradient = check_real(gradient, "gradient", low=0, finite=True)
    r_lo, r_hi, gap = 1.2, 4.0, 2.5
    most = int(0.4 * S * S / (np.pi * (r_hi + gap / 2) ** 2))  # leaves room to place them at random
    if m > most:
        raise ValueError(f"`max_blobs` must be at most {most} at `size`={S} (the discs must fit apart); "
                         f"received {m}.")
    rng = np.random.default_rng(random_state)
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float64)
    fac = {k: np.full((n, m), np.nan) for k in ("row", "col", "radius", "contrast")}
    count = rng.integers(0, m + 1, n)
    area = np.zeros(n, dtype=np.int64)
    rise = rng.uniform(0.0, gradient, n)
    angle = rng.uniform(0.0, 2 * np.pi, n)
    background = np.empty((n, S, S))
    x = np.empty((n, S, S, 1), dtype=np.float32)
    for i in range(n):
        ramp = np.cos(angle[i]) * yy + np.sin(angle[i]) * xx
        background[i] = 0.1 + rise[i] * (ramp - ramp.min()) / (ramp.max() - ramp.min())
        img = background[i].copy()
        placed: list[tuple[float, float, float]] = []  # (row, column, radius) of each disc
        misses = 0
        while len(placed) < count[i]:
            r = rng.uniform(r_lo, r_hi)
            cy, cx = rng.uniform(r, S - 1 - r, 2)
            if all(np.hypot(cy - py, cx - px) > r + pr + gap for py, px, pr in placed):
                placed.append((cy, cx, r))
            else:
                misses += 1
                if misses == 500:  # jammed: start this image again
                    placed, misses = [], 0
        for j, (cy, cx, r) in enumerate(placed):
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2
            contrast = rng.uniform(0.4, 1.0)
            img[inside] += contrast
            area[i] += int(inside.sum())
            fac["row"][i, j], fac["col"][i, j], fac["radius"][i, j], fac["contrast"][i, j] = cy, cx, r, contrast
        x[i, :, :, 0] = img
    x += rng.normal(0.0, noise, x.shape).astype(np.float32)
    targets = {"count": count.astype(np.float32), "area": area.astype(np.float32)}
    cols = _BLOB_TARGETS[target]
    y = targets[cols[0]] if len(cols) == 1 else np.stack([targets[c] for c in cols], axis=1)
    if return_factors:
        return x, y, {"count": count.astype(np.int64), "area": area, "background": background, **fac}
    return x, y


def blob_target_names(target: str = "both") -> list[str]:
    """Names of the target columns of :func:`make_blob_regression` for ``target``."""
    if target not in _BLOB_TARGETS:
        raise ValueError(f"`target` must be one of {sorted(_BLOB_TARGETS)}; received {target!r}.")
    return list(_BLOB_TARGETS[target])
