"""The receptive field of a graph tensor, from the strides, kernels, dilations and padding on the way to it.

For every spatial axis of a tensor, three numbers say which input positions
its position ``i`` can see (Dumoulin and Visin, 2016; Araujo et al., 2019):

* ``size`` ``r``: how many consecutive input positions;
* ``jump`` ``j``: how far apart, in input positions, two neighbouring positions of the tensor are;
* ``start`` ``o``: the first input position seen by position 0 (negative when padding
  reaches outside the input).

Position ``i`` sees the input positions ``[o + i * j, o + i * j + r)``. The
graph input has ``r = 1, j = 1, o = 0``; a sliding window (convolution or
pooling: kernel ``k``, stride ``s``, dilation ``d``, ``p`` positions padded
before) maps ``(r, j, o)`` to::

    r_out = r_in + (k - 1) * d * j_in
    j_out = j_in * s
    o_out = o_in - p * j_in

with ``p = 0`` for ``"valid"``, ``p = floor(P / 2)`` with ``P = max((ceil(n / s) - 1) * s
+ (k - 1) * d + 1 - n, 0)`` for ``"same"`` (Keras' convention, ``n`` the input
length of that layer; when ``n`` is not static, ``n`` is taken as a multiple of
``s``), and the explicit padding of a ``ZeroPadding`` layer (a ``Cropping`` layer
pads negatively). Operations that keep the spatial shape and slide no window
(activations, normalization, a Dense on a feature map, ``Add``, ...) see, at
position ``i``, what their inputs see at ``i``; where several inputs meet
(``Add``, ``Concatenate``, ``Multiply``) the field is the union, that is the
maximum extent: the smallest start and the largest end. A tensor computed
from a global pooling (a squeeze-and-excitation gate) sees the whole input,
and so does everything that merges with it (``whole``).

Works for any number of spatial axes (1-D, 2-D, 3-D convolutions),
channels-last layouts. Reads the graph through :class:`~.graph.ModelGraph`'s
public API only.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from . import layers as _layers

__all__ = ["ReceptiveField", "UnsupportedReceptiveField", "receptive_field"]


class UnsupportedReceptiveField(ValueError):
    """The path to a tensor holds an operation whose spatial mapping is not known (e.g. an upsampling)."""


@dataclasses.dataclass(frozen=True)
class ReceptiveField:
    """Receptive field of every position of one tensor, in the coordinates of the model input.

    Attributes
    ----------
    size, jump, start : tuple of int, one per spatial axis
        Position ``i`` sees input positions ``[start + i * jump, start + i * jump + size)``.
    input_shape : tuple
        Spatial shape of the model input (entries None when not static).
    whole : bool
        True when every position sees the whole input (a global pooling lies on a path to the tensor);
        ``size`` is then the input's spatial shape (0 where it is not static).
    """

    size: tuple
    jump: tuple
    start: tuple
    input_shape: tuple
    whole: bool = False

    @property
    def ndim(self) -> int:
        """Number of spatial axes."""
        return len(self.size)

    def box(self, location, input_shape=None) -> tuple:
        """``((start, stop), ...)`` of the input positions seen at ``location``, clipped to the input.

        ``input_shape``: the spatial shape of the actual input (default: the static one).
        """
        shape = tuple(self.input_shape if input_shape is None else input_shape)
        location = tuple(int(v) for v in np.atleast_1d(location))
        if len(location) != self.ndim or len(shape) != self.ndim:
            raise ValueError(f"`location` must have {self.ndim} entries (one per spatial axis); received {location}.")
        out = []
        for a in range(self.ndim):
            n = shape[a]
            if self.whole:
                out.append((0, int(n)))
                continue
            lo = self.start[a] + location[a] * self.jump[a]
            hi = lo + self.size[a]
            out.append((max(lo, 0), hi if n is None else min(hi, int(n))))
        return tuple(out)

    def unclipped_box(self, location) -> tuple:
        """``((start, stop), ...)`` of the field at ``location`` before clipping (may leave the input)."""
        location = tuple(int(v) for v in np.atleast_1d(location))
        if self.whole:
            return tuple((0, int(n or 0)) for n in self.input_shape)
        return tuple((self.start[a] + location[a] * self.jump[a],
                      self.start[a] + location[a] * self.jump[a] + self.size[a]) for a in range(self.ndim))

    def to_dict(self) -> dict:
        return {"size": list(self.size), "jump": list(self.jump), "start": list(self.start),
                "input_shape": list(self.input_shape), "whole": self.whole}


# (r, j, o) per axis of one tensor, or _WHOLE
_WHOLE = "whole"


def _spatial(shape):
    """Spatial dims of a channels-last tensor shape (batch first); None for a tensor without any."""
    return tuple(shape[1:-1]) if len(shape) >= 3 else None


def _same_pad(n, k_eff, s):
    if n is None:
        rem = 0
    else:
        rem = int(n) % s
    total = max(k_eff - (s if rem == 0 else rem), 0)
    return total // 2


def receptive_field(graph, key: int, input_key: int | None = None) -> ReceptiveField:
    """The :class:`ReceptiveField` of tensor ``key`` of ``graph`` on input ``input_key``.

    ``input_key`` may be left out for a single-input ``ModelGraph``. With
    several inputs it names the (image) input the field is measured on; the
    other inputs add no positions (a tabular vector merged in is as a constant).

    Raises :class:`UnsupportedReceptiveField` (a ValueError) naming the
    operation when the path holds one whose spatial mapping is not known
    (upsampling, transposed convolution, a reshape that changes the spatial
    shape, channels-first layers).
    """
    if input_key is None and len(graph.input_keys) != 1:
        raise ValueError(f"The receptive field of a model with {len(graph.input_keys)} inputs needs `input_key`, "
                         "the input it is measured on.")
    in_key = graph.input_keys[0] if input_key is None else input_key
    in_spatial = _spatial(graph.tensors[in_key].shape)
    if in_spatial is None:
        raise UnsupportedReceptiveField("The model input has no spatial axes (its shape is "
                                        f"{graph.tensors[in_key].shape}); it has no receptive field.")
    nd = len(in_spatial)
    target_spatial = _spatial(graph.tensors[key].shape)
    if target_spatial is None or len(target_spatial) != nd:
        raise ValueError(f"Tensor {graph.tensors[key].name!r} (shape {graph.tensors[key].shape}) does not have the "
                         f"input's {nd} spatial axes; it has no receptive field.")
    fields: dict = {in_key: tuple((1, 1, 0) for _ in range(nd))}

    def compute(k):
        info = graph.tensors[k]
        if info.producer is None:  # another input: it adds no position of this one
            return None
        o = graph.ops[info.producer]
        out_sp = _spatial(info.shape)
        in_fields = [(i, fields[i]) for i in o.inputs if fields.get(i) is not None]
        if not in_fields:  # constants only
            return None
        if out_sp is None or len(out_sp) != nd:
            # no spatial axes left (global pooling, flatten): it sees everything
            return _WHOLE
        if _layers.data_format(o) == "channels_first":
            raise UnsupportedReceptiveField(
                f"Operation {o.path!r} is channels-first; the receptive field is computed for channels-last layouts.")
        window = _layers.window(o)
        if window is not None:
            src, f = in_fields[0]
            if f == _WHOLE:
                return _WHOLE
            n_in = _spatial(graph.tensors[src].shape)
            if len(window.kernel) != nd:
                raise UnsupportedReceptiveField(f"Operation {o.path!r} slides a {len(window.kernel)}-D window over "
                                                f"a tensor with {nd} spatial axes.")
            out = []
            for a in range(nd):
                r, j, st = f[a]
                k, s, d = window.kernel[a], window.strides[a], window.dilation[a]
                k_eff = (k - 1) * d + 1
                if window.padding == "valid":
                    p = 0
                elif window.padding == "same":
                    p = _same_pad(n_in[a], k_eff, s)
                elif isinstance(window.padding, tuple):
                    p = int(window.padding[a][0])
                else:
                    raise UnsupportedReceptiveField(f"Operation {o.path!r} has padding {window.padding!r}.")
                out.append((r + (k_eff - 1) * j, j * s, st - p * j))
            return tuple(out)
        # No window: the spatial shape must be kept (point-wise or merging operations).
        merged: tuple | str | None = None  # a field, _WHOLE, or none yet
        for src, f in in_fields:
            sp = _spatial(graph.tensors[src].shape)
            if f == _WHOLE:
                merged = _WHOLE
                continue
            if sp is None or len(sp) != nd:
                raise UnsupportedReceptiveField(
                    f"Operation {o.path!r} ({type(o.op).__name__}) maps a tensor of shape "
                    f"{graph.tensors[src].shape} to one with spatial shape {out_sp}; its receptive field is not known.")
            if all(a == 1 for a in out_sp) and any(a != 1 for a in sp):
                merged = _WHOLE  # a reduction to one position (a global pooling keeping its axes)
                continue
            if all(a == 1 for a in sp) and any(b != 1 for b in out_sp):
                merged = _WHOLE  # one position broadcast everywhere (a squeeze-and-excitation gate)
                continue
            if any(a is not None and b is not None and a != b for a, b in zip(sp, out_sp)):
                raise UnsupportedReceptiveField(
                    f"Operation {o.path!r} ({type(o.op).__name__}) changes the spatial shape from {sp} to {out_sp} "
                    "without a sliding window (an upsampling, a transposed convolution, a reshape); its receptive "
                    "field is not known.")
            if isinstance(merged, str):  # _WHOLE
                continue
            if merged is None:
                merged = f
                continue
            new = []
            for (r1, j1, o1), (r2, j2, o2) in zip(merged, f):
                lo = min(o1, o2)
                hi = max(o1 + r1, o2 + r2)
                new.append((hi - lo, max(j1, j2), lo))
            merged = tuple(new)
        return merged

    # The ancestors of `key`, in graph order (keys are numbered in the order the graph was built).
    needed, stack = {key}, [key]
    while stack:
        p = graph.tensors[stack.pop()].producer
        if p is None:
            continue
        for i in graph.ops[p].inputs:
            if i not in needed:
                needed.add(i)
                stack.append(i)
    for k in sorted(needed):
        if k not in fields:
            fields[k] = compute(k)
    f = fields[key]
    shape = tuple(None if v is None else int(v) for v in in_spatial)
    if f is None:
        raise ValueError(f"Tensor {graph.tensors[key].name!r} does not depend on the model input.")
    if f == _WHOLE:
        return ReceptiveField(tuple(int(n or 0) for n in shape), (0,) * nd, (0,) * nd, shape, whole=True)
    return ReceptiveField(tuple(int(r) for r, _, _ in f), tuple(int(j) for _, j, _ in f),
                          tuple(int(o) for _, _, o in f), shape)


def window_shape(rf: ReceptiveField, input_shape=None) -> tuple:
    """Shape of the stored crop window: ``min(size, n)`` per axis (the input's length when the field is larger)."""
    shape = tuple(rf.input_shape if input_shape is None else input_shape)
    out = []
    for a in range(rf.ndim):
        n = shape[a]
        out.append(int(n) if rf.whole else (rf.size[a] if n is None else min(rf.size[a], int(n))))
    return tuple(out)


def window_origin(rf: ReceptiveField, location, input_shape=None) -> tuple:
    """Input position of the crop window's first element at ``location`` (see :func:`window_shape`)."""
    shape = tuple(rf.input_shape if input_shape is None else input_shape)
    unclipped = rf.unclipped_box(location)
    return tuple(0 if rf.whole or (shape[a] is not None and rf.size[a] > int(shape[a])) else unclipped[a][0]
                 for a in range(rf.ndim))

