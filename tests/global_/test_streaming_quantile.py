"""NetDissect's streamed threshold: within-bin linear interpolation, against np.quantile where the values fill
each bin evenly (there the interpolation is exact up to the spacing of the values, far below one bin)."""

import numpy as np
import pytest

from keras_hybrid_interp.core.data_pass import Batch, Tap
from keras_hybrid_interp.global_.dissection import StreamingQuantile

from oracles import assert_not_all_zero


@pytest.mark.parametrize("quantile", [0.1, 0.013, 0.27])
def test_threshold_interpolates_inside_its_bin(quantile):
    bins, per_bin = 64, 100
    # Channel c spans [c, c + 2) with per_bin evenly spaced values per bin, shuffled, in batches.
    grid = (np.arange(bins * per_bin) + 0.5) / (bins * per_bin)
    values = np.stack([c + 2 * grid for c in range(3)], axis=1)
    values = values[np.random.default_rng(0).permutation(len(values))]
    ends = [int(np.argmin(values[:, 0])), int(np.argmax(values[:, 0]))]  # the first batch spans the range: no growth
    values = np.concatenate([values[ends], np.delete(values, ends, axis=0)])
    h = StreamingQuantile(Tap(0, "raw"), bins=bins)
    for s in range(0, len(values), 700):
        h.update(Batch(None, None, 0, {(0, "raw"): values[s:s + 700, None, :]}))
    got = h.thresholds(quantile)
    want = np.quantile(values, 1 - quantile, axis=0)
    assert_not_all_zero(want)
    # A bin is about 2 / 63 wide; the values are 2 / 6400 apart, so about 100 fill each bin evenly.
    assert np.all(h.width < 2 / (bins - 2))
    np.testing.assert_allclose(got, want, rtol=0, atol=0.05 * h.width.max())
