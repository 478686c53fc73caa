"""Built-in data that needs no network."""

from __future__ import annotations

import numpy as np

__all__ = ["load_digits"]


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
