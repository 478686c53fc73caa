"""Channels tied together across tensors: the coupled groups of filter importance.

Inside a residual stage, channel ``i`` of the stage input, of the last
convolution (or normalisation) of every residual branch and of every ``Add``
output is one quantity: the ``Add`` sums them channel by channel, and
removing channel ``i`` from one of them alone is not an intervention a
network could undergo. Torch-Pruning's dependency graph (Fang et al., 2023,
"DepGraph: Towards Any Structural Pruning") ties them into one pruning group.

The rule (:func:`tied_tensors`)
-------------------------------
Two tensors are **tied** when an operation *keeps channels* between them
(:func:`.layers.keeps_channels`: channel ``i`` of its output depends on
channel ``i`` of its inputs only and keeps its index) and both have the
analysed tensor's rank and channel count ``C`` (the last axis). Such an
operation ties its output with each of its tensor inputs of that shape; an
input whose channel axis is broadcast (size 1, e.g. a spatial attention map
``(H, W, 1)`` in a ``Multiply``) is not tied, a per-channel scale
``(1, 1, C)`` (squeeze-and-excitation) is. The operations that keep
channels: element-wise merges (``Add``, ``Subtract``, ``Multiply``,
``Maximum``, ``Minimum``, ``Average``), ``BatchNormalization``,
element-wise activations, dropout and noise layers (identities at
inference) and spatial (not global) pooling. Everything else stops the tie:
convolutions and Dense layers mix channels, softmax and layer normalisation
normalise over them, concatenation and reshapes move them, global pooling
summarises a map into one number (a squeeze-and-excitation scale is tied to
its block through the ``Multiply`` instead).

The tied set of a tensor is its connected component under this relation
(the ties run both ways: from an ``Add`` output back into each branch up to
its last convolution, and forward through later blocks of the stage). In a
ResNet stage it is the residual stream: the projection shortcut's
convolution and normalisation, every branch's last convolution and
normalisation, every ``Add`` and the activation after it, up to the
convolutions that start the next stage. In a plain CNN it is a convolution's
output with its activation, normalisation and pooling, where coupling
changes nothing for permutation importance (every tied tensor is then a
channel-wise function of the first).
"""

from __future__ import annotations

from .layers import keeps_channels

__all__ = ["tied_tensors", "tied_names", "tied_merges"]


def _channel_shape(graph, key):
    shape = graph.tensors[key].shape
    return len(shape), shape[-1] if shape else None


def tied_tensors(graph, key: int) -> list[int]:
    """Keys of the tensors tied to tensor ``key`` channel by channel (``key`` included), in graph order.

    See the module docstring for the rule. Reads the graph through the
    public API of :class:`~keras_hybrid_interp.core.graph.ModelGraph`
    (``tensors``, ``ops``) and :func:`~keras_hybrid_interp.core.layers.keeps_channels`.
    """
    rank, c = _channel_shape(graph, key)
    like = {t.key for t in graph.tensors if len(t.shape) == rank and t.shape[-1] == c}
    neighbours: dict[int, set] = {}
    for o in graph.ops:
        if not keeps_channels(o):
            continue
        ends = [k for k in list(o.inputs) + list(o.outputs) if k in like]
        outs = [k for k in o.outputs if k in like]
        for out in outs:
            for k in ends:
                if k != out:
                    neighbours.setdefault(out, set()).add(k)
                    neighbours.setdefault(k, set()).add(out)
    seen = {key}
    stack = [key]
    while stack:
        k = stack.pop()
        for j in neighbours.get(k, ()):
            if j not in seen:
                seen.add(j)
                stack.append(j)
    return sorted(seen)


def tied_names(graph, keys) -> tuple:
    """The addressable names of tensors ``keys``."""
    return tuple(graph.tensors[k].name for k in keys)


def tied_merges(graph, keys) -> list[str]:
    """Paths of the operations that merge two or more of the tied tensors ``keys`` (the ``Add`` of a residual block).

    Empty when the tie is only a chain of channel-wise operations, where
    coupling changes nothing for permutation importance.
    """
    keys = set(keys)
    return [o.path for o in graph.ops if keeps_channels(o) and len(keys.intersection(o.inputs)) >= 2]
