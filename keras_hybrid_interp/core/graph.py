"""The model-graph layer: the only module that touches Keras internals.

Everything that depends on how Keras 3 stores a functional graph (``Node``,
``_nodes_by_depth``, ``SymbolicArguments``) lives here, so that a Keras
upgrade touches one file.

What it does
------------
``ModelGraph(model)`` *flattens* the user's model into one graph of
operations: a nested model (a ``keras.applications`` backbone inside a
transfer-learning model, or a ``Sequential`` inside a functional model) is
replaced by its own operations, wired into the outer graph. The flattened
graph is built by replaying every operation on fresh ``keras.Input`` tensors,
so

* any tensor of the model, inner ones included (``"resnet50/conv3_block1_out"``),
  can be the output of a sub-model built from the outer inputs (the
  "not connected" error of ``Model(outer.inputs, inner_layer.output)`` does
  not arise);
* a *tail* sub-model that starts at intermediate tensors is built from fresh
  ``keras.Input`` objects, never from intermediate Keras tensors (so the
  Keras bug fixed by keras-team/keras#22316 cannot bite).

The replay calls the user's own layer objects: no weight is copied, created
or changed, and no ``trainable`` flag or compile state is touched.

The user's model object is left alone
-------------------------------------
Every symbolic call of a Keras operation records a ``Node`` on it: the call
is appended to the operation's ``_inbound_nodes`` and to the
``_outbound_nodes`` of the operations that produced its inputs, and the
output tensors remember their node by its *index* in ``_inbound_nodes``.
Replaying the user's layers, or calling our own layers on the replayed
tensors, would therefore grow the node lists of the user's layers for good.
Instead, the graph keeps *shadow* node lists, one pair per user operation,
and :meth:`ModelGraph.building` installs them on the user's operations while
the graph is replayed or a side model is built, then puts the user's own
lists back. The replayed tensors refer to the shadow lists, so every layer
call on them and every ``keras.Model`` built from them must happen inside
``building()``: :meth:`ModelGraph.build` and :meth:`ModelGraph.build_side_model`
do that themselves, and :meth:`ModelGraph.symbolic` refuses to hand out a
tensor outside it. A side model, once built, runs (``predict``, ``__call__``,
gradients) anywhere: executing a functional model reads its own node table,
not the node lists of its layers.

Block discovery (the cut points of the graph and the natural block ends of
a CNN) lives beside it, in :mod:`.blocks`, and the catalogue of layer
predicates (what an operation is: a convolution, a pooling, an operation
that keeps channels, a linear head) in :mod:`.layers`; both read the graph
through its public attributes. The Keras base classes those predicates need
and no public module exports are handed over here as public names
(:data:`CONV_LAYER_TYPES`, :func:`op_classes`...).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

import keras
from keras import tree
from keras.src.layers.convolutional.base_conv import BaseConv
from keras.src.layers.convolutional.base_depthwise_conv import BaseDepthwiseConv
from keras.src.layers.convolutional.base_separable_conv import BaseSeparableConv
from keras.src.layers.pooling.base_global_pooling import BaseGlobalPooling
from keras.src.layers.pooling.base_pooling import BasePooling
from keras.src.models.functional import Functional
from keras.src.ops import nn as _ops_nn
from keras.src.ops import numpy as _ops_numpy

__all__ = [
    "predict_batch",
    "tensor_numpy",
    "ModelGraph",
    "TensorInfo",
    "OpNode",
    "Block",
    "FEATURE_MAP_RANKS",
    "is_feature_map",
    "RANKS_TEXT",
    "CONV_LAYER_TYPES",
    "POOLING_LAYER_TYPES",
    "GLOBAL_POOLING_LAYER_TYPES",
    "MEAN_OP",
    "MAX_OP",
    "op_classes",
    "trace_free_batch",
    "variable_numpy",
]

#: Keras' base classes of the layer families that no public module exports, handed to the layer
#: predicates of :mod:`.layers`: convolutions (any rank, depthwise, separable; not transposed),
#: local pooling, global pooling.
CONV_LAYER_TYPES = (BaseConv, BaseDepthwiseConv, BaseSeparableConv)
POOLING_LAYER_TYPES = (BasePooling,)
GLOBAL_POOLING_LAYER_TYPES = (BaseGlobalPooling,)
#: The operation classes of ``keras.ops.mean`` and ``keras.ops.max``.
MEAN_OP = _ops_numpy.Mean
MAX_OP = _ops_numpy.Max


def op_classes(numpy: Sequence[str] = (), nn: Sequence[str] = ()) -> tuple[type, ...]:
    """The classes of the ``keras.ops`` operations named, those this Keras has.

    ``numpy`` names classes of ``keras.ops``' NumPy-like operations (``"Add"``, ``"Tanh"``), ``nn``
    of its neural-network ones (``"Relu"``, ``"BatchNorm"``): what a node's ``op`` is when the model
    calls ``keras.ops.add`` or ``keras.ops.relu`` on symbolic tensors.
    """
    return tuple(
        getattr(mod, name) for mod, names in ((_ops_numpy, numpy), (_ops_nn, nn))
        for name in names if hasattr(mod, name)
    )


#: Ranks of a feature map (batch, spatial axes..., channels): 1-D (Conv1D,
#: signals), 2-D (Conv2D, images) and 3-D (Conv3D, volumes) convolutions.
FEATURE_MAP_RANKS = (3, 4, 5)

#: How messages name the feature maps the package analyses.
RANKS_TEXT = (
    "rank 3, 4 or 5: (batch, steps, channels) for 1-D, (batch, height, width, channels) for 2-D "
    "or (batch, depth, height, width, channels) for 3-D convolutions"
)


def is_feature_map(shape) -> bool:
    """Whether ``shape`` (batch axis first) is a channels-last feature map of a 1-D, 2-D or 3-D CNN."""
    return len(shape) in FEATURE_MAP_RANKS
_SUBCLASSED_HELP = (
    "keras-hybrid-interp analyses models that have a graph: Functional models "
    "(keras.Model(inputs, outputs)), Sequential models and models loaded from "
    ".keras files, including nested ones such as a keras.applications backbone "
    "inside a transfer-learning model. A subclassed model (one that defines "
    "call() itself) has no graph to cut into blocks. Rewrite it with the "
    "functional API, e.g.\n"
    "    inputs = keras.Input(shape=(28, 28, 1))\n"
    "    x = keras.layers.Conv2D(16, 3, activation='relu')(inputs)\n"
    "    ...\n"
    "    model = keras.Model(inputs, outputs)\n"
    "and copy the weights across with model.set_weights(subclassed.get_weights())."
)


#: Serializes :meth:`ModelGraph.building` across threads: while one thread has
#: shadow node lists installed on a model's operations, no other thread may
#: install or restore lists on them. Re-entrant, so contexts nest.
_NODE_LISTS_LOCK = threading.RLock()
#: Per thread, the ``building()`` contexts entered and not yet left, innermost
#: last: ``(graph, replaced)`` with ``replaced`` the node lists it took off.
_INSTALLED = threading.local()


def _installed_stack() -> list:
    stack = getattr(_INSTALLED, "stack", None)
    if stack is None:
        stack = _INSTALLED.stack = []
    return stack


class _ShadowNodes:
    """The graph's own ``_inbound_nodes`` / ``_outbound_nodes`` for one user operation."""

    __slots__ = ("op", "inbound", "outbound")

    def __init__(self, op):
        self.op = op
        self.inbound: list = []
        self.outbound: list = []


def _swap_node_lists(op, inbound, outbound):
    """Sets ``op``'s node lists; returns the ones it had.

    ``object.__setattr__`` bypasses ``Layer.__setattr__``, whose tracker
    would wrap the list in a new ``TrackedList`` (and whose backend base
    classes may track the value too): restoring must put back the very
    objects that were there, and the shadow lists are plain lists.
    """
    previous = (op._inbound_nodes, op._outbound_nodes)
    object.__setattr__(op, "_inbound_nodes", inbound)
    object.__setattr__(op, "_outbound_nodes", outbound)
    return previous


class _Ref:
    """Placeholder for a graph tensor inside a stored call template."""

    __slots__ = ("key",)

    def __init__(self, key: int):
        self.key = key

    def __repr__(self):  # pragma: no cover - debugging aid
        return f"_Ref({self.key})"


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One tensor of the flattened graph."""

    key: int
    name: str
    shape: tuple
    producer: int | None  # index of the producing OpNode; None for inputs


@dataclasses.dataclass
class OpNode:
    """One call of one operation in the flattened graph."""

    index: int
    path: str  # "outer/inner/layer" path of the operation
    op: Any
    inputs: list  # tensor keys consumed (unique, in call order)
    outputs: list  # tensor keys produced
    args: Any  # call template, tensors replaced by _Ref
    kwargs: Any



@dataclasses.dataclass(frozen=True)
class Block:
    """A block end chosen for analysis.

    Attributes
    ----------
    name : str
        Addressable name of the tensor (layer name, ``"outer/inner"`` for
        nested models).
    output_shape : tuple
        Shape of the block output, batch dimension first (``None``).
    filters : int
        Number of channels (filters) of the block output.
    depth : int
        Position of the producing operation in the flattened graph, counted
        from the input (0-based). Larger is deeper.
    branch : str or None
        Models with several inputs: the name of the input the block depends
        on (the branch it lies on), or the names of several inputs joined by
        ``"+"`` for a block after their branches merge. None for a
        single-input model.
    image_input : str or None
        Models with several inputs: the first input of ``branch`` that is a
        feature map (an image, signal or volume, not a tabular vector), the
        one the atlas and the explanations draw. None for a single-input model.
    stage : str or None
        Encoder-decoder networks (a U-Net, an autoencoder: the spatial size
        goes down, then up again): ``"encoder"``, ``"bottleneck"`` or
        ``"decoder"``, the part of the network the block lies in (see
        :func:`~keras_hybrid_interp.core.blocks.encoder_decoder`). None for
        other networks.
    """

    name: str
    output_shape: tuple
    filters: int
    depth: int
    branch: str | None = None
    image_input: str | None = None
    stage: str | None = None


def _is_model(op) -> bool:
    return isinstance(op, keras.Model)


def _check_analysable(model, argname="model"):
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"`{argname}` must be a keras.Model (Functional or Sequential); "
            f"received an object of type {type(model).__module__}.{type(model).__name__}."
        )
    if not isinstance(model, (Functional, keras.Sequential)):
        raise TypeError(
            f"`{argname}` is a subclassed model ({type(model).__name__}), which "
            f"has no graph. " + _SUBCLASSED_HELP
        )


def _keras_mask(tensor):
    """The Keras mask a symbolic tensor carries (``Embedding(mask_zero=True)`` downstream), or None."""
    try:
        from keras.src.backend import get_keras_mask
    except ImportError:  # older Keras 3
        return getattr(tensor, "_keras_mask", None)
    return get_keras_mask(tensor)


class ModelGraph:
    """Flattened, replayable graph of a Keras 3 model.

    Parameters
    ----------
    model : keras.Model
        Functional or Sequential model (possibly nesting other models).
    input_shape : tuple of int, optional
        Shape of one input sample, without the batch dimension. Needed only
        for a Sequential model that was never built.

    Side models
    -----------
    A side model computes tensors of the graph (block outputs, the model
    output, our own layers applied to them) with the user's layers and
    weights. Build one in one of three ways:

    * :meth:`build` for graph tensors only: ``graph.build([k1, k2])`` from
      the model input, ``graph.build(outputs, inputs=graph.frontier(k))``
      for a tail;
    * :meth:`build_side_model` for our own layers on top:
      ``graph.build_side_model(lambda symbolic: [pool(symbolic(k))], name=...)``;
    * by hand, inside ``with graph.building():``, where :meth:`symbolic`,
      :attr:`symbolic_inputs` and :meth:`replay` may be used to call layers
      and to construct ``keras.Model`` objects.

    None of them adds a node to the user's layers: see :meth:`building`.
    """

    def __init__(self, model, input_shape: Sequence[int] | None = None, *, argname: str = "model"):
        _check_analysable(model, argname)
        self.model = model
        self.tensors: list[TensorInfo] = []
        self.ops: list[OpNode] = []
        self._symbolic: list = []  # canonical KerasTensor per key
        self._key_of: dict[int, int] = {}  # id(canonical KerasTensor) -> key
        self._aliases: dict[str, list[int]] = {}  # nested model path -> output keys
        self._used_paths: dict[str, int] = {}
        self._models: dict = {}  # (outputs, inputs) -> keras.Model, see build()
        self._side_models: dict = {}  # cache_key -> keras.Model, see build_side_model()
        self._shadows: dict[int, _ShadowNodes] = {}  # id(user operation) -> its shadow node lists

        inputs = self._make_inputs(model, input_shape)
        self.input_keys = [self._register(t, None, None) for t in inputs]
        with self.building():
            outputs = self._apply_model(model, inputs if len(inputs) > 1 else inputs[0], prefix="")
        flat_out = tree.flatten(outputs)
        self.output_keys = [self._key_of[id(t)] for t in flat_out]
        self._names = self._index_names()
        #: The model's input names, in :attr:`input_keys` order: the keys of a model built on a dict of
        #: inputs, else the names of its ``keras.Input`` layers (what ``x`` as a dict is keyed by).
        self.input_names = self._model_input_names(model, len(self.input_keys))

    # ------------------------------------------------------------------
    # Construction
    # ------------------------------------------------------------------
    @staticmethod
    def _make_inputs(model, input_shape):
        if input_shape is not None:
            try:
                input_shape = tuple(None if d is None else int(d) for d in input_shape)
            except TypeError:
                raise TypeError(
                    "`input_shape` must be a tuple of ints giving the shape of one "
                    f"sample without the batch dimension, e.g. (28, 28, 1); received {input_shape!r}."
                ) from None
        try:
            model_inputs = list(model.inputs)
        except (AttributeError, ValueError):
            model_inputs = []
        if not model_inputs:
            if input_shape is None:
                raise ValueError(
                    f"The Sequential model {model.name!r} has never been built, so its "
                    "input shape is unknown. Pass `input_shape=` (the shape of one sample "
                    "without the batch dimension, e.g. input_shape=(28, 28, 1)), or build "
                    "the model first with model.build((None, *shape)) or by calling it once."
                )
            return [keras.Input(shape=input_shape, name="input")]
        if input_shape is not None:
            if len(model_inputs) != 1:
                raise ValueError(
                    f"`input_shape` can only be given for a single-input model; the model "
                    f"{model.name!r} has {len(model_inputs)} inputs."
                )
            built = tuple(model_inputs[0].shape[1:])
            compatible = len(built) == len(input_shape) and all(
                a is None or b is None or a == b for a, b in zip(built, input_shape)
            )
            if not compatible:
                raise ValueError(
                    f"`input_shape` {input_shape} does not match the input shape the model "
                    f"{model.name!r} was built with, {built}. Leave `input_shape` out for a "
                    "built model."
                )
            shape = tuple(b if a is None else a for a, b in zip(built, input_shape))
            return [keras.Input(shape=shape, dtype=model_inputs[0].dtype, name="input")]
        return [
            keras.Input(shape=tuple(t.shape[1:]), dtype=t.dtype, name=f"input_{i}" if i else "input")
            for i, t in enumerate(model_inputs)
        ]

    @staticmethod
    def _model_input_names(model, n) -> list[str]:
        struct = getattr(model, "_inputs_struct", None)
        if isinstance(struct, dict) and len(struct) == n:
            keys = sorted(struct)  # tree.flatten orders a dict by its sorted keys, as model.inputs does
            return [str(k) for k in keys]
        try:
            names = [str(t.name) for t in model.inputs]
        except (AttributeError, ValueError):
            names = []
        if len(names) != n or len(set(names)) != n:
            names = ["input" if i == 0 else f"input_{i}" for i in range(n)]
        return names

    def _register(self, tensor, producer, name) -> int:
        key = len(self._symbolic)
        self._symbolic.append(tensor)
        self._key_of[id(tensor)] = key
        if name is None:
            name = getattr(tensor, "name", None) or f"input_{key}"
        self.tensors.append(TensorInfo(key, name, tuple(tensor.shape), producer))
        return key

    def _unique_path(self, path):
        n = self._used_paths.get(path, 0)
        self._used_paths[path] = n + 1
        return path if n == 0 else f"{path}#{n}"

    def _adopt(self, op):
        """Gives user operation ``op`` shadow node lists, installed at once if :meth:`building` is active.

        Called for every operation before its first replayed call, and for
        every (nested) model: a model is never called by the replay, but
        a caller inside ``building()`` may call it on graph tensors.
        """
        if id(op) in self._shadows:
            return
        shadow = self._shadows[id(op)] = _ShadowNodes(op)
        stack = _installed_stack()
        if stack and stack[-1][0] is self:
            stack[-1][1].append((op, *_swap_node_lists(op, shadow.inbound, shadow.outbound)))

    def _apply_model(self, model, inputs, prefix):
        """Replays ``model`` on canonical tensors ``inputs``; returns its outputs."""
        self._adopt(model)
        if isinstance(model, keras.Sequential):
            x = inputs
            for layer in model.layers:
                x = self._apply(layer, (x,), {}, prefix)
            return x
        if not isinstance(model, Functional):
            where = f" nested at {prefix!r}" if prefix else ""
            raise TypeError(
                f"The model contains a subclassed model {model.name!r}{where} "
                f"({type(model).__name__}), which has no graph. " + _SUBCLASSED_HELP
            )
        flat_in = tree.flatten(inputs)
        if len(flat_in) != len(model.inputs):
            raise ValueError(
                f"Model {model.name!r} expects {len(model.inputs)} inputs, "
                f"its call in the graph passes {len(flat_in)}."
            )
        tensor_dict = {id(x): y for x, y in zip(model.inputs, flat_in)}
        for depth in sorted(model._nodes_by_depth.keys(), reverse=True):
            for node in model._nodes_by_depth[depth]:
                if not node.operation or node.is_input:
                    continue
                if any(id(x) not in tensor_dict for x in node.input_tensors):
                    continue
                args, kwargs = node.arguments.fill_in(tensor_dict)
                outputs = self._apply(node.operation, args, kwargs, prefix)
                for x, y in zip(node.outputs, tree.flatten(outputs)):
                    tensor_dict[id(x)] = y
        missing = [x for x in model.outputs if id(x) not in tensor_dict]
        if missing:  # pragma: no cover - Keras guarantees connectivity
            raise ValueError(f"Model {model.name!r}: output {missing[0].name} is not connected.")
        return tree.pack_sequence_as(model._outputs_struct, [tensor_dict[id(x)] for x in model.outputs])

    def _apply(self, op, args, kwargs, prefix):
        """Replays one call of ``op``; nested models are expanded in place."""
        kwargs = {k: v for k, v in kwargs.items() if k != "training"}
        if _is_model(op):
            path = self._unique_path(prefix + op.name)
            inner_inputs = args[0] if len(args) == 1 else list(args)
            outputs = self._apply_model(op, inner_inputs, prefix=path + "/")
            self._aliases[path] = [self._key_of[id(t)] for t in tree.flatten(outputs)]
            return outputs
        path = self._unique_path(prefix + op.name)
        index = len(self.ops)
        in_keys = []
        for t in tree.flatten((args, kwargs)):
            if isinstance(t, keras.KerasTensor):
                k = self._key_of[id(t)]
                if k not in in_keys:
                    in_keys.append(k)

        def to_ref(x):
            return _Ref(self._key_of[id(x)]) if isinstance(x, keras.KerasTensor) else x

        t_args = tree.map_structure(to_ref, args)
        t_kwargs = tree.map_structure(to_ref, kwargs)
        self._adopt(op)
        outputs = op(*args, **kwargs)
        flat = tree.flatten(outputs)
        out_keys = [
            self._register(t, index, path if len(flat) == 1 else f"{path}:{i}")
            for i, t in enumerate(flat)
        ]
        self.ops.append(OpNode(index, path, op, in_keys, out_keys, t_args, t_kwargs))
        return outputs

    def select_output(self, key: int) -> None:
        """Analyses read output ``key`` only: it becomes the graph's one output (tails, frontiers, side models).

        For a model with several outputs, called once, right after construction,
        before any side model is built. The user's model is not touched.
        """
        if key not in self.output_keys:
            raise ValueError(f"tensor {key} is not an output of model {self.model.name!r}")  # internal misuse
        if self._side_models or self._models:
            raise RuntimeError("select_output must be called before any side model is built")  # internal misuse
        #: All outputs of the model, in order (``output_keys`` holds the analysed one).
        self.model_output_keys = list(self.output_keys)
        self.output_keys = [key]

    def _index_names(self) -> dict[str, list[int]]:
        names: dict[str, list[int]] = {}
        for t in self.tensors:
            if t.producer is not None:
                names.setdefault(t.name, []).append(t.key)
        for path, keys in self._aliases.items():
            if len(keys) == 1:
                names.setdefault(path, keys)
        return names

    # ------------------------------------------------------------------
    # Lookup
    # ------------------------------------------------------------------
    def feature_map_names(self) -> list[str]:
        """Names of the tensors that are feature maps (rank 3, 4 or 5; see :func:`is_feature_map`)."""
        return [t.name for t in self.tensors if t.producer is not None and is_feature_map(t.shape)]

    def resolve(self, spec, argname: str = "blocks") -> int:
        """Returns the tensor key for a layer name, top-level index or layer object."""
        if isinstance(spec, bool):
            raise TypeError(f"`{argname}` entries must be layer names, indices or layers; received {spec!r}.")
        if isinstance(spec, str):
            if spec in self._names:
                return self._names[spec][-1]
            # A bare inner name ("conv3_block1_out") addresses a nested layer if unique.
            matches = [n for n in self._names if n.rsplit("/", 1)[-1] == spec]
            if len(matches) == 1:
                return self._names[matches[0]][-1]
            if len(matches) > 1:
                raise ValueError(
                    f"`{argname}`: the name {spec!r} is ambiguous; it matches {matches}. "
                    "Use the full path."
                )
            close = difflib.get_close_matches(spec, list(self._names), n=5, cutoff=0.5)
            hint = f" Closest names: {close}." if close else ""
            available = self.feature_map_names()
            raise ValueError(
                f"`{argname}`: no layer named {spec!r} in model {self.model.name!r}.{hint} "
                f"Layers with a feature-map output (rank 3-5): {abbrev(available)}."
            )
        if isinstance(spec, int):
            layers = self.model.layers
            if not -len(layers) <= spec < len(layers):
                raise ValueError(
                    f"`{argname}`: layer index {spec} is out of range; model "
                    f"{self.model.name!r} has {len(layers)} top-level layers (indices "
                    f"0..{len(layers) - 1}, as in model.layers)."
                )
            return self.resolve(layers[spec], argname)
        if isinstance(spec, keras.layers.Layer) or isinstance(spec, keras.Operation):
            if _is_model(spec):
                for path, keys in self._aliases.items():
                    if path.rsplit("/", 1)[-1] == spec.name and len(keys) == 1:
                        return keys[0]
            hits = [o for o in self.ops if o.op is spec]
            if not hits:
                raise ValueError(
                    f"`{argname}`: layer {spec.name!r} is not part of model {self.model.name!r}."
                )
            if len(hits[-1].outputs) != 1:
                raise ValueError(
                    f"`{argname}`: layer {spec.name!r} has several outputs; name one as '{hits[-1].path}:i'."
                )
            return hits[-1].outputs[0]
        raise TypeError(
            f"`{argname}` entries must be layer names (str), top-level indices (int) or "
            f"keras layer objects; received {type(spec).__name__}: {spec!r}."
        )

    # ------------------------------------------------------------------
    # Sub-models
    # ------------------------------------------------------------------
    @contextlib.contextmanager
    def building(self) -> Iterator[ModelGraph]:
        """Context for calling layers on the graph's tensors and building side models from them.

        Inside it, the user's operations (every layer and operation of the
        flattened graph, and the model and its nested models) carry this
        graph's shadow node lists instead of their own, so the nodes Keras
        records for the calls and for ``keras.Model(...)`` land in the
        shadow lists; on leaving, each operation gets back the very list
        objects it had (also when the block raises). Hence:

        * :meth:`symbolic`, :attr:`symbolic_inputs`, and layer calls and
          ``keras.Model`` constructions on them, belong inside the context;
          keep no symbolic tensor for use after it.
        * A side model built inside runs anywhere afterwards (``predict``,
          ``__call__``, gradients, ``stateless_call``) and reads the current
          weights: executing a functional model walks its own node table.
          It is meant for inference: its ``get_config()``, ``summary()``
          and ``.keras`` saving look the nodes up in its layers' node lists,
          so they are right only inside this context.
        * While the context is active, the user's model must not be
          inspected symbolically (``get_config()``, ``summary()``,
          ``layer.output``): its layers show the shadow lists. The context
          holds a process-wide re-entrant lock, so a ``building()`` in
          another thread waits for it; other uses of the model from other
          threads are not blocked.

        Contexts nest, also across graphs of the same model; the innermost
        one's lists are installed.

        Example::

            with graph.building():
                pooled = keras.layers.GlobalAveragePooling2D()(graph.symbolic(k))
                side = keras.Model(graph.symbolic_inputs[0], pooled)
            side.predict(x)
        """
        with _NODE_LISTS_LOCK:
            stack = _installed_stack()
            replaced: list = []
            stack.append((self, replaced))
            try:
                for shadow in self._shadows.values():
                    replaced.append(
                        (shadow.op, *_swap_node_lists(shadow.op, shadow.inbound, shadow.outbound))
                    )
                yield self
            finally:
                for op, inbound, outbound in reversed(replaced):
                    _swap_node_lists(op, inbound, outbound)
                stack.pop()

    def _check_building(self, what: str):
        stack = _installed_stack()
        if not (stack and stack[-1][0] is self):
            raise RuntimeError(
                f"ModelGraph.{what} hands out the graph's symbolic tensors only inside "
                "`with graph.building():`, where the node lists they refer to are installed on the "
                "model's layers. Call layers on them and build the keras.Model inside that block, or "
                "use graph.build_side_model(fn) / graph.build(keys); the side model then runs anywhere. "
                "For a tensor's shape or name, read graph.tensors[key]."
            )

    @property
    def symbolic_inputs(self) -> list:
        """The fresh ``keras.Input`` tensors the flattened graph starts from.

        Only inside :meth:`building` (RuntimeError elsewhere).
        """
        self._check_building("symbolic_inputs")
        return [self._symbolic[k] for k in self.input_keys]

    def symbolic(self, key: int):
        """The symbolic tensor for ``key``, connected to :attr:`symbolic_inputs`.

        Calling Keras layers on it and building ``keras.Model(symbolic_inputs, ...)``
        gives side models that share the user's layers (and weights). Only
        inside :meth:`building` (RuntimeError elsewhere); for its shape and
        name, read ``graph.tensors[key]``.
        """
        self._check_building("symbolic()")
        return self._symbolic[key]

    def build(self, outputs: Sequence[int], inputs: Sequence[int] | None = None, name: str | None = None):
        """Builds a ``keras.Model`` computing tensors ``outputs``.

        With ``inputs=None`` the model starts at the model inputs. Otherwise
        it starts at the given intermediate tensors, each fed through a fresh
        ``keras.Input``; every tensor the outputs depend on must then be
        computable from them (see :meth:`frontier`).
        """
        outputs = list(outputs)
        # One model per (outputs, inputs): re-using it re-uses its compiled
        # predict function instead of tracing a new one on every analysis.
        cache_key = (tuple(outputs), None if inputs is None else tuple(inputs))
        if cache_key in self._models:
            return self._models[cache_key]
        self._models[cache_key] = model = self._build(outputs, inputs, name)
        return model

    def build_side_model(
        self,
        outputs_fn: Callable[[Callable[[int], Any]], Any],
        name: str | None = None,
        *,
        cache_key=None,
    ):
        """Builds ``keras.Model(graph input, outputs_fn(self.symbolic))`` inside :meth:`building`.

        ``outputs_fn`` receives :meth:`symbolic` (key -> symbolic tensor) and
        returns the output tensor or the list of output tensors, typically
        our own layers (pooling, probes) applied to graph tensors. A list of
        one tensor gives a single-output model. Example::

            model = graph.build_side_model(
                lambda symbolic: [pool(symbolic(k)) for k in keys] + [symbolic(graph.output_keys[0])],
                name="block_features",
            )

        With ``cache_key`` (any hashable naming what ``outputs_fn`` builds),
        the model is built once per graph and key and kept by the graph, so
        that its compiled predict function is re-used; it goes when the
        graph goes. Cache side models here rather than in a module-level
        mapping keyed by the graph: a Keras model is a reference cycle, so a
        ``WeakKeyDictionary`` value outlives its key by one garbage
        collection, and with it the user's layers and weights.
        """
        if cache_key is not None:
            model = self._side_models.get(cache_key)
            if model is None:
                model = self._side_models[cache_key] = self.build_side_model(outputs_fn, name)
            return model
        with self.building():
            outs = outputs_fn(self.symbolic)
            outs = [outs] if isinstance(outs, keras.KerasTensor) else list(outs)
            ins = [self._symbolic[k] for k in self.input_keys]
            return keras.Model(ins if len(ins) > 1 else ins[0], outs if len(outs) > 1 else outs[0], name=name)

    def build_edited(self, outputs: Sequence[int], inputs: Sequence[int], edits: dict, name: str | None = None):
        """A tail like :meth:`build` (from fresh inputs for ``inputs``) in which tensors are edited.

        ``edits`` maps tensor keys to ``f(tensor) -> (new tensor, extra inputs)``:
        the tensor is replaced by ``f``'s result wherever the tail reads it,
        and ``f`` may create ``keras.Input`` tensors (returned in ``extra
        inputs``) that feed its computation, e.g. a mask and a replacement.
        The model's inputs are the fresh inputs for ``inputs``, then the extra
        inputs in the order the edits ran (graph order; a tensor the outputs
        do not need is not edited).

        Returns ``(model, edited keys in that order)``. Not cached.
        """
        extras: list = []
        order: list = []

        def wrap(k, f):
            def run(t):
                new, more = f(t)
                extras.extend(more)
                order.append(k)
                return new
            return run

        with self.building():
            fresh = {}
            for k in inputs:
                t = self._symbolic[k]
                fresh[k] = keras.Input(shape=tuple(t.shape[1:]), dtype=t.dtype,
                                       name=_safe(self.tensors[k].name) + "_in")
            values = self.replay(fresh, list(outputs), edits={k: wrap(k, f) for k, f in edits.items()})
            ins = [fresh[k] for k in inputs] + extras
            outs = [values[k] for k in outputs]
            model = keras.Model(ins if len(ins) > 1 else ins[0], outs if len(outs) > 1 else outs[0], name=name)
        return model, order

    def _build(self, outputs, inputs, name):
        with self.building():
            if inputs is None:
                ins = [self._symbolic[k] for k in self.input_keys]
                outs = [self._symbolic[k] for k in outputs]
                return keras.Model(ins if len(ins) > 1 else ins[0], outs if len(outs) > 1 else outs[0], name=name)
            inputs = list(inputs)
            fresh = {}
            for k in inputs:
                t = self._symbolic[k]
                fresh[k] = keras.Input(
                    shape=tuple(t.shape[1:]), dtype=t.dtype, name=_safe(self.tensors[k].name) + "_in"
                )
            values = self.replay(fresh, outputs)
            ins = [fresh[k] for k in inputs]
            outs = [values[k] for k in outputs]
            return keras.Model(ins if len(ins) > 1 else ins[0], outs if len(outs) > 1 else outs[0], name=name)

    def replay(self, values: dict, outputs: Sequence[int], *, edits: dict | None = None) -> dict:
        """Runs the ops needed for ``outputs`` given tensor ``values`` (key -> tensor).

        The calls are recorded where the user's operations currently keep
        their nodes: inside :meth:`building` in the graph's shadow lists
        (what :meth:`build` does), outside it on the user's layers, as for
        any functional re-use of a layer. Replay and build the model from
        the results in the same place.

        ``edits`` (key -> ``f(tensor) -> tensor``): each tensor named there is
        replaced by ``f`` of it as soon as it is given or computed, before any
        operation reads it (see :meth:`build_edited`).
        """
        needed = self._ancestors_ops(outputs, stop=set(values))
        values = dict(values)
        edits = edits or {}
        for k in list(values):
            if k in edits:
                values[k] = edits[k](values[k])
        for idx in sorted(needed):
            node = self.ops[idx]
            missing = [k for k in node.inputs if k not in values]
            if missing:
                raise ValueError(
                    f"Cannot compute {self.tensors[outputs[0]].name!r} from the given tensors: "
                    f"operation {node.path!r} also needs {[self.tensors[k].name for k in missing]}."
                )

            def fill(x):
                return values[x.key] if isinstance(x, _Ref) else x

            args = tree.map_structure(fill, node.args)
            kwargs = tree.map_structure(fill, node.kwargs)
            out = tree.flatten(node.op(*args, **kwargs))
            for k, v in zip(node.outputs, out):
                values[k] = edits[k](v) if k in edits else v
        return values

    def _ancestors_ops(self, outputs, stop=frozenset()):
        needed = set()
        stack = [k for k in outputs if k not in stop]
        seen = set(stack)
        while stack:
            k = stack.pop()
            p = self.tensors[k].producer
            if p is None:
                continue
            needed.add(p)
            for i in self.ops[p].inputs:
                if i not in seen and i not in stop:
                    seen.add(i)
                    stack.append(i)
        return needed

    def frontier(self, key: int) -> list[int]:
        """Tensors a tail starting right after tensor ``key`` needs.

        ``key`` first, then every earlier tensor that an operation after
        ``key`` consumes (the skip connections that cross the cut), in graph
        order. Feeding these into :meth:`build` gives the tail model.
        """
        producer = self.tensors[key].producer
        after = [
            o
            for o in self.ops
            if o.index > (producer if producer is not None else -1)
        ]
        cross = set()
        for o in after:
            for i in o.inputs:
                if i <= key:
                    cross.add(i)
        needed_for_out = self._ancestors_ops(self.output_keys, stop={key} | cross)
        used: set[int] = set()
        for idx in needed_for_out:
            used.update(i for i in self.ops[idx].inputs if i in cross or i == key)
        used.add(key)
        return [key] + sorted(k for k in used if k != key)

    def block_info(self, key: int, name: str | None = None) -> Block:
        t = self.tensors[key]
        branch = image = None
        if len(self.input_keys) > 1:
            ins = self.inputs_of(key)
            branch = "+".join(self.input_names[self.input_keys.index(k)] for k in ins)
            image_key = self.image_input_of(key)
            image = None if image_key is None else self.input_names[self.input_keys.index(image_key)]
        return Block(
            name=name or t.name,
            output_shape=t.shape,
            filters=int(t.shape[-1]) if t.shape and t.shape[-1] is not None else 0,
            depth=t.producer if t.producer is not None else -1,
            branch=branch,
            image_input=image,
        )

    def inputs_of(self, key: int) -> list[int]:
        """The input keys tensor ``key`` depends on, in :attr:`input_keys` order."""
        deps = getattr(self, "_input_deps", None)
        if deps is None:
            deps = [frozenset()] * len(self.tensors)
            for k in self.input_keys:
                deps[k] = frozenset([k])
            for o in self.ops:  # topological order
                d = frozenset().union(*(deps[i] for i in o.inputs))
                for k in o.outputs:
                    deps[k] = d
            self._input_deps = deps
        return [k for k in self.input_keys if k in deps[key]]

    def image_input_of(self, key: int) -> int | None:
        """The first input tensor ``key`` depends on whose shape is a feature map (not a tabular vector)."""
        return next((k for k in self.inputs_of(key) if is_feature_map(self.tensors[k].shape)), None)

    def has_keras_mask(self, key: int) -> bool:
        """Whether tensor ``key`` carries a Keras mask (``Embedding(mask_zero=True)`` upstream)."""
        return _keras_mask(self._symbolic[key]) is not None

    def tensor_dtype(self, key: int) -> str:
        """The dtype of tensor ``key``, standardised (``"float32"``, ``"int64"``...)."""
        return keras.backend.standardize_dtype(self._symbolic[key].dtype)


def variable_numpy(v):
    """The value of a Keras variable (a weight) as a new NumPy array, read the backend's own way.

    ``keras.ops.convert_to_numpy(variable)`` calls NumPy on the variable,
    whose ``__array__`` (Keras 3) takes no ``copy`` argument: NumPy 2 emits a
    ``DeprecationWarning`` on every call (TensorFlow and torch), which would
    leak into the user's output. TensorFlow reads the variable's tensor,
    torch detaches it, JAX's array converts as it is. A backend tensor (not a
    variable) is converted as usual.
    """
    import numpy as np

    value = getattr(v, "value", v)
    backend = keras.backend.backend()
    if backend == "tensorflow" and hasattr(value, "numpy"):
        return np.array(value.numpy())
    if backend == "torch" and hasattr(value, "detach"):
        return value.detach().cpu().numpy().copy()
    return np.array(keras.ops.convert_to_numpy(value))


def trace_free_batch(model, x) -> None:
    """Before a model's first ``predict_on_batch(x)`` on TensorFlow: trace its predict function for any batch size.

    Keras traces its predict function at the first batch's shape, and
    TensorFlow's ``reduce_retracing`` traces it again, relaxed, at the
    first batch of another size (the last, shorter batch of a stream; a
    tail's stacked batch): on a large model a second trace costs seconds
    (DenseNet121: ~2 s, plus the new graph's first run). Traced once here
    with ``x``'s shapes and dtypes but a free batch dimension, every batch
    size then runs that one trace, with the same results. Nothing happens
    on other backends, once the model has a predict function, or when it
    runs eagerly. Keras internals: its TensorFlow predict function takes
    ``[(x,)]``; should that change, the model is traced as before.
    """
    if keras.backend.backend() != "tensorflow" or model.predict_function is not None or isinstance(x, dict):
        return
    import tensorflow as tf

    xs = list(x) if isinstance(x, (list, tuple)) else [x]
    if not all(hasattr(a, "shape") and hasattr(a, "dtype") for a in xs):  # not arrays: Keras converts them
        return
    specs = [tf.TensorSpec((None,) + tuple(a.shape[1:]), tf.as_dtype(a.dtype)) for a in xs]
    model.make_predict_function()
    fn: Any = model.predict_function
    if not hasattr(fn, "get_concrete_function"):  # run_eagerly: nothing is traced
        return
    structure = type(x)(specs) if isinstance(x, (list, tuple)) else specs[0]
    try:
        fn.get_concrete_function([(structure,)])
    except (TypeError, ValueError):  # pragma: no cover - another Keras calling convention: traced at first call
        pass


def tensor_numpy(t) -> np.ndarray:
    """A backend tensor's values as a NumPy array, without a copy where the backend allows (read-only then).

    TensorFlow's ``Tensor.numpy()`` copies (tensors are immutable); a CPU tensor's
    ``memoryview`` is its own buffer, so the array returned here shares it, read-only
    (a GPU tensor's ``memoryview`` is its one copy to the host). The side model's
    taps of a dense network are hundreds of MB per batch (a U-Net at 256 px: 486 MB
    for 16 samples), and the copy cost about a third of the forward pass. Dtypes that
    the buffer protocol cannot describe (bfloat16) are copied as before. Other
    backends: ``keras.ops.convert_to_numpy``.
    """
    if keras.backend.backend() == "tensorflow" and hasattr(t, "_numpy"):
        try:
            return np.asarray(memoryview(t))
        except (TypeError, ValueError, BufferError, NotImplementedError):
            return t.numpy()
    return np.asarray(keras.ops.convert_to_numpy(t))


def predict_batch(model, x):
    """``model.predict_on_batch(x)``, with the outputs read by :func:`tensor_numpy` (no copy on a TensorFlow CPU).

    Keras internals: on TensorFlow, ``predict_on_batch`` is ``make_predict_function()``,
    then ``predict_function([(x,)])``, then a copy of every output (``Tensor.numpy()``);
    this calls the same function and reads the outputs without the copy. Ragged or
    sparse outputs, other backends, and a model whose predict function runs eagerly
    (``run_eagerly``: it returns the same tensors) are read the same way or, where
    not tensors, go through ``predict_on_batch`` itself.
    """
    if keras.backend.backend() != "tensorflow":
        return model.predict_on_batch(x)
    model.make_predict_function()
    out = model.predict_function([(x,)])
    flat = keras.tree.flatten(out)
    if not all(hasattr(t, "_numpy") for t in flat):  # ragged or sparse: as Keras reads them
        return model.predict_on_batch(x)
    return keras.tree.pack_sequence_as(out, [tensor_numpy(t) for t in flat])


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in name)


def abbrev(names: list[str], n: int = 30) -> str:
    """``str(names)``, with the middle elided when there are more than ``n``."""
    if len(names) <= n:
        return str(names)
    return str(names[: n // 2])[:-1] + f", ... ({len(names) - n} more) ..., " + str(names[-n // 2:])[1:]
