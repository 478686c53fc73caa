"""The catalogue of layer predicates: what kind of operation a node of the graph is.

Block discovery (:mod:`.blocks`), the coupled filter groups (:mod:`.coupling`),
the receptive fields (:mod:`.receptive_field`) and the choice of a tail
engine (:func:`.engine.tail_engine`) ask what an operation of the flattened
graph *is*: a convolution, a pooling, a global pooling, a recurrent layer,
an operation that keeps channels, a sliding window, an upsampling, the start
of the classifier head, a linear head after a block. The answers live here,
apart from the graph replay (:mod:`.graph`, the only module that touches
Keras internals): they read the graph through its public attributes
(``tensors``, ``ops``, ``output_keys``, :meth:`~.graph.ModelGraph.frontier`,
:meth:`~.graph.ModelGraph.has_keras_mask`) and the operations through
their public attributes (``kernel_size``, ``strides``, ``data_format``...).
The few Keras base classes that no public module exports (the convolution
and pooling bases, the ``keras.ops`` operation classes) are handed over by
:mod:`.graph` as public names.

A node is an :class:`~.graph.OpNode`; functions that need tensor shapes
take the :class:`~.graph.ModelGraph` first.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any

import keras

from .graph import (
    CONV_LAYER_TYPES,
    FEATURE_MAP_RANKS,
    GLOBAL_POOLING_LAYER_TYPES,
    MAX_OP,
    MEAN_OP,
    POOLING_LAYER_TYPES,
    ModelGraph,
    OpNode,
    op_classes,
)

__all__ = [
    "DenseHead",
    "Window",
    "is_conv",
    "conv_rank_before",
    "is_pooling",
    "is_recurrent",
    "is_global_pool",
    "starts_head",
    "keeps_channels",
    "window",
    "upsampling",
    "data_format",
    "channels_first_layers",
    "global_pool_after",
    "dense_head_after",
    "pointwise_head_after",
]

# Operations whose output channel i depends on channel i of their inputs only, and keeps its index
# (see keeps_channels and core/coupling.py): element-wise merges, per-channel affine
# normalisation, element-wise activations, inference-time identities, spatial pooling.
_KEEPS_CHANNELS_LAYERS = (
    keras.layers.Add, keras.layers.Subtract, keras.layers.Multiply, keras.layers.Maximum,
    keras.layers.Minimum, keras.layers.Average,
    keras.layers.BatchNormalization,
    keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.PReLU, keras.layers.ELU,
    keras.layers.Dropout, keras.layers.GaussianNoise, keras.layers.GaussianDropout, keras.layers.AlphaDropout,
    keras.layers.ActivityRegularization, keras.layers.Identity,
    *POOLING_LAYER_TYPES,
)
_KEEPS_CHANNELS_OPS = op_classes(
    numpy=("Add", "Subtract", "Multiply", "Maximum", "Minimum", "Abs", "Negative", "Tanh", "Exp",
           "Square", "Sqrt", "Clip"),
    nn=("Relu", "Relu6", "Sigmoid", "Silu", "Gelu", "Elu", "Selu", "Celu", "LeakyRelu", "Softplus",
        "Softsign", "HardSigmoid", "HardSilu", "HardTanh", "LogSigmoid", "BatchNorm"),
)
#: Layers that are the identity in inference (exact types: :func:`dense_head_after`).
_INFERENCE_IDENTITIES = (
    keras.layers.Dropout, keras.layers.GaussianDropout, keras.layers.GaussianNoise, keras.layers.AlphaDropout,
    keras.layers.Identity,
)
#: Activations that mix the channels (normalise over the channel axis): an Activation layer with
#: one of these does not keep channels.
_MIXING_ACTIVATIONS = ("softmax", "log_softmax", "sparsemax")

#: Keras' own global pooling layers, and how each reduces (subclasses are not trusted to reduce alike).
_GLOBAL_POOL_REDUCE = {
    keras.layers.GlobalAveragePooling1D: "avg", keras.layers.GlobalAveragePooling2D: "avg",
    keras.layers.GlobalAveragePooling3D: "avg", keras.layers.GlobalMaxPooling1D: "max",
    keras.layers.GlobalMaxPooling2D: "max", keras.layers.GlobalMaxPooling3D: "max",
}


@dataclasses.dataclass(frozen=True)
class DenseHead:
    """A head that is one Dense layer and an output activation (:func:`dense_head_after`).

    Attributes
    ----------
    dense : keras.layers.Dense
        The user's layer (its ``kernel`` and ``bias`` are read when needed, never changed).
    activation : {"softmax", "sigmoid", "linear"}
        What the model applies to the Dense layer's output.
    output : int
        Key of the model's output tensor.
    dtype : str
        The output tensor's dtype (``"float32"``, or ``"float64"``).
    """

    dense: Any
    activation: str
    output: int
    dtype: str = "float32"


@dataclasses.dataclass(frozen=True)
class Window:
    """How one operation maps positions of its input to positions of its output, per spatial axis.

    Output position ``i`` reads input positions ``i * strides - pad_before``
    to ``i * strides - pad_before + (kernel - 1) * dilation`` (a convolution
    or a pooling window). ``padding`` is ``"valid"``, ``"same"`` (Keras'
    convention: total padding ``max((ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)``,
    its floor half before) or explicit ``((before, after), ...)`` per axis
    (zero padding; negative for cropping).
    """

    kernel: tuple
    strides: tuple
    dilation: tuple
    padding: object


def _per_axis(value, n):
    if isinstance(value, (int,)):
        return (int(value),) * n
    value = tuple(value)
    return value if len(value) == n else (int(value[0]),) * n


def _pairs(value):
    """``((before, after), ...)`` from a ZeroPadding / Cropping attribute of any rank."""
    value = tuple(value)
    if value and all(isinstance(v, (int,)) for v in value):  # 1-D layers store (left, right)
        return (tuple(int(v) for v in value),)
    return tuple(tuple(int(v) for v in pair) for pair in value)


def _reduced_axes(op, rank: int) -> set | None:
    """The axes (in ``0..rank-1``) that a ``keras.ops`` reduction reduces; None for all of them."""
    axes = op.axis if isinstance(op.axis, (tuple, list)) else (op.axis,)
    return None if None in axes else {int(a) % rank for a in axes}


# ----------------------------------------------------------------------
# What one operation is
# ----------------------------------------------------------------------
def is_conv(graph: ModelGraph, o: OpNode) -> bool:
    """Whether ``o`` is a convolution (1-D, 2-D or 3-D, separable, depthwise, or a Dense on a feature map).

    A Dense layer applied to a rank-4 tensor is a 1x1 convolution
    (ConvNeXt); so it is on a rank-5 tensor (1x1x1). On a rank-3 tensor
    it is a 1-wide Conv1D only when a convolution precedes it, as
    in a 1-D CNN; a Dense on a sequence of embeddings is no convolution.
    """
    if isinstance(o.op, CONV_LAYER_TYPES):
        return True
    if not isinstance(o.op, keras.layers.Dense):
        return False
    ranks = [len(graph.tensors[i].shape) for i in o.inputs]
    if any(r in (4, 5) for r in ranks):
        return True
    return 3 in ranks and any(conv_rank_before(graph, i) == 3 for i in o.inputs)


#: Per graph, the output rank of the convolution(s) upstream of each tensor (see conv_rank_before).
#: The values hold ints only, so an entry goes with its graph.
_CONV_RANKS: weakref.WeakKeyDictionary[ModelGraph, list[int | None]] = weakref.WeakKeyDictionary()


def conv_rank_before(graph: ModelGraph, key: int) -> int | None:
    """Output rank of the convolution(s) (layer classes only) upstream of tensor ``key``; None if none."""
    cache = _CONV_RANKS.get(graph)
    if cache is None:
        cache = [None] * len(graph.tensors)
        for o in graph.ops:  # topological order
            r: int | None
            if isinstance(o.op, CONV_LAYER_TYPES):
                r = max(len(graph.tensors[k].shape) for k in o.outputs)
            else:
                r = max((cache[i] or 0 for i in o.inputs), default=0) or None
            for k in o.outputs:
                cache[k] = r
        _CONV_RANKS[graph] = cache
    return cache[key]


def is_pooling(o: OpNode) -> bool:
    """Whether ``o`` is a local (windowed) pooling layer: ``MaxPooling2D``, ``AveragePooling1D``..."""
    return isinstance(o.op, POOLING_LAYER_TYPES)


def is_recurrent(o: OpNode) -> bool:
    """Whether ``o`` is a recurrent layer (``keras.layers.RNN`` and its subclasses, ``Bidirectional``).

    In a Conv1D + LSTM hybrid the recurrent part belongs to the head:
    the blocks are the convolutional ones before it.
    """
    return isinstance(o.op, (keras.layers.RNN, keras.layers.Bidirectional))


def is_global_pool(graph: ModelGraph, o: OpNode) -> bool:
    """Whether ``o`` pools a feature map over all its spatial axes (layer or ``keras.ops``)."""
    if isinstance(o.op, GLOBAL_POOLING_LAYER_TYPES):
        return True
    if isinstance(o.op, (MEAN_OP, MAX_OP)):
        for i in o.inputs:
            rank = len(graph.tensors[i].shape)
            if rank not in FEATURE_MAP_RANKS:
                continue
            axes = _reduced_axes(o.op, rank)
            if axes is None or set(range(1, rank - 1)) <= axes:
                return True
    return False


def starts_head(graph: ModelGraph, o: OpNode) -> bool:
    """Whether ``o`` starts the classifier head: a global pooling or a recurrent layer."""
    return is_global_pool(graph, o) or is_recurrent(o)


def keeps_channels(o: OpNode) -> bool:
    """Whether channel ``i`` of ``o``'s output depends on channel ``i`` of its inputs only (index kept).

    True for element-wise merges (``Add``, ``Subtract``, ``Multiply``,
    ``Maximum``, ``Minimum``, ``Average``: layers and ``keras.ops``),
    ``BatchNormalization``, element-wise activations (``Activation``
    layers other than softmax, ``ReLU``, ``LeakyReLU``, ``PReLU``, ``ELU``,
    and the ``keras.ops`` ones), inference-time identities (dropout and
    noise layers, ``Identity``) and spatial pooling. False for everything
    else: convolutions and Dense layers mix channels, softmax and layer
    or group normalisation normalise over them, concatenation, reshapes
    and padding move them.
    """
    op = o.op
    if isinstance(op, keras.layers.Activation):
        fn = getattr(op, "activation", None)
        return getattr(fn, "__name__", "") not in _MIXING_ACTIVATIONS
    return isinstance(op, _KEEPS_CHANNELS_LAYERS) or isinstance(op, _KEEPS_CHANNELS_OPS)


def window(o: OpNode) -> Window | None:
    """The sliding window of ``o`` (:class:`Window`), or None when ``o`` does not slide one.

    Convolutions (any rank, depthwise and separable), pooling layers, and
    ``ZeroPadding`` / ``Cropping`` layers (a window of size 1 with explicit
    padding) have one; read from their public attributes (``kernel_size``,
    ``pool_size``, ``strides``, ``dilation_rate``, ``padding``, ``cropping``).
    Transposed convolutions have none (they are not a sliding window).
    """
    op = o.op
    if isinstance(op, CONV_LAYER_TYPES) or isinstance(op, POOLING_LAYER_TYPES):
        size = getattr(op, "kernel_size", None) or getattr(op, "pool_size", None)
        size = tuple(int(v) for v in (size if isinstance(size, (tuple, list)) else (size,)))
        n = len(size)
        strides = tuple(int(v) for v in _per_axis(op.strides if op.strides is not None else size, n))
        dilation = tuple(int(v) for v in _per_axis(getattr(op, "dilation_rate", 1) or 1, n))
        padding = str(op.padding).lower()
        return Window(size, strides, dilation, padding)
    if isinstance(op, (keras.layers.ZeroPadding1D, keras.layers.ZeroPadding2D, keras.layers.ZeroPadding3D)):
        pads = _pairs(op.padding)
    elif isinstance(op, (keras.layers.Cropping1D, keras.layers.Cropping2D, keras.layers.Cropping3D)):
        pads = tuple((-a, -b) for a, b in _pairs(op.cropping))
    else:
        return None
    n = len(pads)
    return Window((1,) * n, (1,) * n, (1,) * n, pads)


def upsampling(o: OpNode) -> tuple | None:
    """Per spatial axis, the factor by which ``o`` enlarges its input, or None when ``o`` is no upsampling.

    ``UpSampling1D/2D/3D`` (their ``size``) and ``Conv1D/2D/3DTranspose``
    (their ``strides``), read from their public attributes; a factor of 1
    on every axis is no upsampling (None).
    """
    op = o.op
    if isinstance(op, (keras.layers.UpSampling1D, keras.layers.UpSampling2D, keras.layers.UpSampling3D)):
        value, n = op.size, {keras.layers.UpSampling1D: 1, keras.layers.UpSampling2D: 2}.get(type(op), 3)
    elif isinstance(op, (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
                         keras.layers.Conv3DTranspose)):
        value, n = op.strides, len(op.kernel_size)
    else:
        return None
    factors = tuple(int(v) for v in _per_axis(value, n))
    return factors if any(f > 1 for f in factors) else None


def data_format(o: OpNode) -> str:
    """``o``'s ``data_format`` attribute ("channels_last" when it has none)."""
    return getattr(o.op, "data_format", None) or "channels_last"


def channels_first_layers(graph: ModelGraph) -> list[str]:
    """Paths of the operations of ``graph`` that compute with ``data_format="channels_first"``."""
    return [
        o.path for o in graph.ops
        if getattr(o.op, "data_format", None) == "channels_first"
    ]


# ----------------------------------------------------------------------
# The head after a block: where the tail engine's shortcuts apply
# ----------------------------------------------------------------------
def global_pool_after(graph: ModelGraph, key: int) -> tuple[int, str] | None:
    """``(pooled key, "avg" | "max")`` when tensor ``key`` is read only through one global pooling.

    That is: ``key`` is not a model output and carries no Keras mask,
    exactly one operation consumes it, that operation is one of Keras'
    own ``GlobalAveragePooling1D/2D/3D`` or ``GlobalMaxPooling1D/2D/3D``
    layers (``channels_last``; a subclass may pool otherwise and is not
    trusted) or ``keras.ops.mean``/``max`` over exactly the spatial axes
    (with or without ``keepdims``; not over the batch axis), and nothing
    computed before the pooled tensor is read after it (its
    :meth:`~.graph.ModelGraph.frontier` is the pooled tensor alone). Channel
    ``c`` of the pooled tensor then depends on channel ``c`` of ``key``
    alone, so the model output after ``key`` is a function of the pooled
    features. None otherwise.
    """
    if key in graph.output_keys or graph.has_keras_mask(key):
        return None
    users = [o for o in graph.ops if key in o.inputs]
    if len(users) != 1 or len(users[0].outputs) != 1 or users[0].inputs != [key]:
        return None
    o = users[0]
    op = o.op
    rank = len(graph.tensors[key].shape)
    if type(op) in _GLOBAL_POOL_REDUCE:
        if getattr(op, "data_format", "channels_last") != "channels_last":
            return None
        reduce = _GLOBAL_POOL_REDUCE[type(op)]
    elif type(op) in (MEAN_OP, MAX_OP) and rank in FEATURE_MAP_RANKS:
        if _reduced_axes(op, rank) != set(range(1, rank - 1)):
            return None  # all axes, the batch axis, or not every spatial one
        if getattr(op, "initial", None) is not None:
            return None  # ops.max(..., initial=v) is max(v, the maximum): not a plain pooling
        reduce = "max" if type(op) is MAX_OP else "avg"
    else:
        return None
    pooled = o.outputs[0]
    shape = graph.tensors[pooled].shape
    if len(shape) < 2 or shape[-1] != graph.tensors[key].shape[-1] or graph.frontier(pooled) != [pooled]:
        return None
    return pooled, reduce


def dense_head_after(graph: ModelGraph, pooled: int) -> DenseHead | None:
    """The head after tensor ``pooled`` when it is one Dense layer and an output activation, else None.

    That is the chain ``pooled -> [inference identities] -> Dense -> [activation] -> model output``,
    in which each tensor has exactly one reader (which reads nothing else) and is no model output
    but the last, which is the model's only output; ``pooled`` has shape ``(batch, C)``.

    * Inference identities: Keras' own ``Dropout``, ``GaussianDropout``, ``GaussianNoise``,
      ``AlphaDropout`` and ``Identity`` layers (exact types), not called with ``training=True``.
    * The Dense layer: ``keras.layers.Dense`` itself (a subclass may compute otherwise), not
      quantized, computing in float32 or float64, with activation softmax, sigmoid or linear.
    * The activation after it (only after a linear Dense): an ``Activation`` layer with softmax,
      sigmoid or linear, or a ``Softmax`` layer over the last axis called without a mask.

    The model output is then ``activation(pooled @ kernel + bias)`` (see ``core/linear_head.py``).
    """
    if len(graph.tensors[pooled].shape) != 2:
        return None
    return _linear_chain(graph, pooled, spatial=False)


def pointwise_head_after(graph: ModelGraph, key: int) -> DenseHead | None:
    """The head after feature map ``key`` when it is one 1x1 convolution and an output activation, else None.

    The spatial twin of :func:`dense_head_after`: the chain ``key -> [inference identities] ->
    linear layer -> [activation] -> model output`` (each tensor read by one operation only, which
    reads nothing else; the last the model's only output), where ``key`` is a feature map
    (rank 3, 4 or 5, channels last) that is no model output and carries no Keras mask, and the
    linear layer is

    * a ``Conv1D``, ``Conv2D`` or ``Conv3D`` layer (exact types) with kernel size 1 and stride 1
      on every axis, one group, ``channels_last``, or
    * a ``keras.layers.Dense`` on the last axis (a 1x1 convolution),

    not quantized, computing in float32 or float64, with activation softmax, sigmoid or linear
    (then an ``Activation`` or last-axis ``Softmax`` layer may follow), as for the Dense head.
    The model output at every position is then ``activation(maps[position] @ kernel + bias)``
    with the kernel read as ``(C, K)`` (see ``core/linear_head.py``). The convolution's padding
    does not matter at kernel size 1.
    """
    if len(graph.tensors[key].shape) not in FEATURE_MAP_RANKS or key in graph.output_keys:
        return None
    if graph.has_keras_mask(key):
        return None
    return _linear_chain(graph, key, spatial=True)


def _pointwise_conv(op) -> bool:
    """Whether ``op`` is a 1x1, stride-1, one-group, channels-last Conv1D/2D/3D (exact types)."""
    if type(op) not in (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D):
        return False
    n = len(tuple(op.kernel_size))
    return (all(int(v) == 1 for v in _per_axis(op.kernel_size, n))
            and all(int(v) == 1 for v in _per_axis(op.strides, n))
            and int(getattr(op, "groups", 1) or 1) == 1
            and (getattr(op, "data_format", None) or "channels_last") == "channels_last")


def _linear_chain(graph: ModelGraph, start: int, spatial: bool) -> DenseHead | None:
    """:func:`dense_head_after` (``spatial=False``) and :func:`pointwise_head_after` (``spatial=True``)."""
    acts = {keras.activations.softmax: "softmax", keras.activations.sigmoid: "sigmoid",
            keras.activations.linear: "linear"}
    key, dense, activation = start, None, None
    while True:
        if key in graph.output_keys:
            break
        users = [o for o in graph.ops if key in o.inputs]
        if len(users) != 1 or users[0].inputs != [key] or len(users[0].outputs) != 1:
            return None
        o = users[0]
        op = o.op
        kwargs = o.kwargs if isinstance(o.kwargs, dict) else {}
        if type(op) in _INFERENCE_IDENTITIES and dense is None:
            if kwargs.get("training") not in (None, False):
                return None
        elif dense is None and (type(op) is keras.layers.Dense or (spatial and _pointwise_conv(op))):
            if getattr(op, "quantization_mode", None) is not None or op.compute_dtype not in ("float32", "float64"):
                return None
            activation = acts.get(getattr(op, "activation", None))
            if activation is None:
                return None
            dense = op
        elif dense is not None and activation == "linear" and type(op) is keras.layers.Activation:
            activation = acts.get(getattr(op, "activation", None))
            if activation is None:
                return None
        elif dense is not None and activation == "linear" and type(op) is keras.layers.Softmax:
            last = len(graph.tensors[key].shape) - 1  # the class axis: 1 after a Dense on (batch, C)
            if kwargs.get("mask") is not None or getattr(op, "axis", None) not in (-1, last):
                return None
            activation = "softmax"
        else:
            return None
        key = o.outputs[0]
    if dense is None or activation is None or graph.output_keys != [key]:  # activation: set with dense
        return None
    dtype = graph.tensor_dtype(key)
    if dtype not in ("float32", "float64"):
        return None
    return DenseHead(dense, activation, key, dtype)
