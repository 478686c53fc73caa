"""How a block's map meets the model's output map (segmentation): nearest-neighbour index maps.

Output position ``i`` along spatial axis ``a`` reads block position
``floor(i * s_a / S_a)``, where ``s`` is the block map's spatial shape and
``S`` the output's: the block cell that covers the output position when the
block map is stretched over the output (nearest upsampling; a block larger
than the output is read at the positions the rule picks). The layer probes
(:mod:`keras_hybrid_interp.local.segmentation`) and the filter-class IoU
(:mod:`keras_hybrid_interp.global_.dissection`) both use this one rule.
"""

from __future__ import annotations

import numpy as np

__all__ = ["spatial_shape", "index_maps", "upsample", "block_positions"]


def spatial_shape(shape) -> tuple:
    """The spatial axes of a (batch, *spatial, channels) shape, as ints."""
    return tuple(int(d) for d in shape[1:-1])


def index_maps(block_spatial, out_spatial) -> list:
    """Per spatial axis, the block position read by each output position: ``floor(i * s / S)``."""
    block_spatial, out_spatial = tuple(int(d) for d in block_spatial), tuple(int(d) for d in out_spatial)
    if len(block_spatial) != len(out_spatial):
        raise ValueError(
            f"A block map with {len(block_spatial)} spatial axes {block_spatial} cannot be read at an output map "
            f"with {len(out_spatial)} spatial axes {out_spatial}."
        )
    return [(np.arange(S, dtype=np.int64) * s) // S for s, S in zip(block_spatial, out_spatial)]


def upsample(a, maps) -> np.ndarray:
    """``a`` (n, *s, ...) read at the output positions: (n, *S, ...), by the index maps of :func:`index_maps`."""
    for axis, idx in enumerate(maps):
        if len(idx) != a.shape[axis + 1] or np.any(idx != np.arange(len(idx))):
            a = np.take(a, idx, axis=axis + 1)
    return a


def block_positions(out_flat, out_spatial, block_spatial) -> np.ndarray:
    """Flat block positions read by the flat output positions ``out_flat`` (any shape of ints)."""
    maps = index_maps(block_spatial, out_spatial)
    multi = np.unravel_index(np.asarray(out_flat), tuple(int(d) for d in out_spatial))
    return np.ravel_multi_index(tuple(m[i] for m, i in zip(maps, multi)), tuple(int(d) for d in block_spatial))
