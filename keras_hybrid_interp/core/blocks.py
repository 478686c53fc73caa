"""Block discovery: where a CNN's blocks end, from the cut points of its graph.

The heuristics live here, apart from the graph replay (:mod:`.graph`, the
only module that touches Keras internals). They read the flattened graph
through its public attributes: ``tensors`` (shape and producer of every
tensor), ``ops`` (inputs and outputs of every operation, in topological
order), ``input_keys``/``output_keys``, and the layer predicates of
:mod:`.layers` (:func:`~.layers.is_conv`, :func:`~.layers.starts_head`,
:func:`~.layers.is_pooling`...).

A *cut point* is a tensor that every input-to-output path passes through.
:func:`discover_blocks` states the rules; :func:`select_blocks` resolves the
``blocks=`` argument of every public class.
"""

from __future__ import annotations

import keras

from . import health as _health
from . import layers as _layers
from .graph import RANKS_TEXT, ModelGraph, abbrev, is_feature_map

__all__ = [
    "MAX_CONVS_WITHOUT_CUT", "EncoderDecoder", "block_infos", "cut_points", "discover_blocks", "encoder_decoder",
    "select_blocks", "spatial_levels",
]

#: A stretch of graph without a single cut point that holds more convolutions
#: than this is treated as a chain of cells (NASNet): see ``discover_blocks``.
MAX_CONVS_WITHOUT_CUT = 24


def is_map(graph, k) -> bool:
    """Whether tensor ``k`` is a feature map of the rank of the convolutions before it."""
    shape = graph.tensors[k].shape
    if not is_feature_map(shape):
        return False
    rank = _layers.conv_rank_before(graph, k)
    return rank is None or rank == len(shape)


def relevant_mask(graph) -> list[bool]:
    n = len(graph.tensors)
    consumers: list[list[int]] = [[] for _ in range(n)]
    for o in graph.ops:
        for i in o.inputs:
            consumers[i].extend(o.outputs)
    fwd = [False] * n
    for k in graph.input_keys:
        fwd[k] = True
    for o in graph.ops:  # ops are in topological order
        if any(fwd[i] for i in o.inputs):
            for k in o.outputs:
                fwd[k] = True
    bwd = [False] * n
    for k in graph.output_keys:
        bwd[k] = True
    for o in reversed(graph.ops):
        if any(bwd[k] for k in o.outputs):
            for i in o.inputs:
                bwd[i] = True
    return [f and b for f, b in zip(fwd, bwd)]

def jump_cover(graph, relevant) -> list[int]:
    """Number of graph edges that jump over each tensor (0 = cut point)."""
    n = len(graph.tensors)
    diff = [0] * (n + 2)
    # Virtual source at position -1 feeding every input, virtual sink at n.
    edges = [(-1, k) for k in graph.input_keys] + [(k, n) for k in graph.output_keys]
    for o in graph.ops:
        for i in o.inputs:
            if relevant[i]:
                for k in o.outputs:
                    if relevant[k]:
                        edges.append((i, k))
    for u, v in edges:
        if v - u > 1:
            diff[u + 2] += 1  # positions u+1 .. v-1, shifted by one
            diff[v + 1] -= 1
    cover, run = [], 0
    for pos in range(n):
        run += diff[pos + 1]
        cover.append(run)
    return cover

def cut_points(graph) -> list[int]:
    """Tensor keys every input-to-output path passes through, in graph order."""
    relevant = relevant_mask(graph)
    cover = jump_cover(graph, relevant)
    return [
        k for k in range(len(graph.tensors))
        if relevant[k] and cover[k] == 0 and k not in graph.input_keys
    ]

class EncoderDecoder:
    """The encoder-decoder structure of a graph (:func:`encoder_decoder`).

    Attributes
    ----------
    levels : list
        Per tensor key, the log2 of its downsampling factor relative to the
        input (the mean over the spatial axes; 0 at the input, 1 after a 2x2
        pooling), or None for a tensor without spatial axes.
    decoder : list of bool
        Per tensor key, whether it lies after an upsampling (on the way up).
    bottleneck_level : float
        The deepest level reached on the way down.
    """

    def __init__(self, levels, decoder, bottleneck_level):
        self.levels = levels
        self.decoder = decoder
        self.bottleneck_level = bottleneck_level

    def stage(self, k) -> str | None:
        """``"encoder"``, ``"bottleneck"`` or ``"decoder"`` for tensor ``k``; None for one without spatial axes."""
        if self.levels[k] is None:
            return None
        if self.decoder[k]:
            return "decoder"
        return "bottleneck" if self.levels[k] >= self.bottleneck_level - LEVEL_TOL else "encoder"


#: Tolerance when comparing the levels of :class:`EncoderDecoder` (log2 units).
LEVEL_TOL = 1e-6


def spatial_levels(graph, relevant=None) -> list:
    """Per tensor key, log2 of its downsampling factor relative to the input (see :class:`EncoderDecoder`).

    Propagated in graph order from the operations, so free spatial sizes
    (``keras.Input((None, None, 1))``) are no obstacle: a convolution or
    pooling adds the log2 of its strides, an upsampling (``UpSampling``,
    ``Conv...Transpose``) subtracts the log2 of its factor, an operation
    with one input whose static spatial size changes otherwise (``Resizing``)
    adds the log2 of the ratio of the sizes, and every other operation keeps
    the level of its first input with one (a merge, an activation). A tensor
    whose rank is not a feature map's has none.
    """
    import math

    n = len(graph.tensors)
    levels: list = [None] * n
    for k in graph.input_keys:
        if is_feature_map(graph.tensors[k].shape):
            levels[k] = 0.0
    for o in graph.ops:
        ins = [i for i in o.inputs if levels[i] is not None and (relevant is None or relevant[i])]
        for k in o.outputs:
            shape = graph.tensors[k].shape
            if not ins or not is_feature_map(shape):
                continue
            first = ins[0]
            lv = levels[first]
            up = _layers.upsampling(o)
            win = _layers.window(o)
            in_shape = graph.tensors[first].shape
            if len(in_shape) != len(shape):
                continue  # a reshape to another rank: no level
            if up is not None:
                lv -= sum(math.log2(f) for f in up) / len(up)
            elif win is not None:
                lv += sum(math.log2(s) for s in win.strides) / len(win.strides)
            elif len(ins) == 1:
                a, b = in_shape[1:-1], shape[1:-1]
                if all(d is not None for d in a + b) and tuple(a) != tuple(b) and all(d > 0 for d in a + b):
                    lv += sum(math.log2(x / y) for x, y in zip(a, b)) / len(a)
            levels[k] = lv
    return levels


def encoder_decoder(graph) -> EncoderDecoder | None:
    """The encoder-decoder structure of a single-input network, or None when it has none.

    A network is an encoder-decoder (a U-Net, with or without skip
    connections; an autoencoder) when, on some input-to-output path before
    any classifier head, the spatial size goes down and then up again: an
    upsampling (``UpSampling1D/2D/3D``, ``Conv1D/2D/3DTranspose`` with
    strides, or a resizing) whose input lies below the input's resolution.
    No ``keras.applications`` classifier has one. Models with several
    inputs are left to the other rules.
    """
    if len(graph.input_keys) != 1:
        return None
    relevant = relevant_mask(graph)
    levels = spatial_levels(graph, relevant)
    n = len(graph.tensors)
    head = [False] * n
    decoder = [False] * n
    found = False
    for o in graph.ops:
        if head_op := (_layers.starts_head(graph, o) or any(head[i] for i in o.inputs)):
            for k in o.outputs:
                head[k] = True
        if head_op or not any(relevant[k] for k in o.outputs):
            continue
        ins = [i for i in o.inputs if relevant[i] and levels[i] is not None]
        up = bool(ins) and any(
            levels[k] is not None and levels[k] < levels[ins[0]] - LEVEL_TOL for k in o.outputs
        ) and levels[ins[0]] > LEVEL_TOL
        found |= up
        if up or any(decoder[i] for i in o.inputs):
            for k in o.outputs:
                decoder[k] = True
    if not found:
        return None
    down = [levels[k] for k in range(n) if relevant[k] and not decoder[k] and not head[k] and levels[k] is not None]
    return EncoderDecoder(levels, decoder, max(down))


def encoder_decoder_ends(graph, ed: EncoderDecoder) -> tuple[list[int], list[str]]:
    """Block ends of an encoder-decoder network (rule 5 of :func:`discover_blocks`)."""
    relevant = relevant_mask(graph)
    n = len(graph.tensors)
    conv_before = [False] * n
    for o in graph.ops:
        c = _layers.is_conv(graph, o) or any(conv_before[i] for i in o.inputs)
        for k in o.outputs:
            conv_before[k] = c
    # The output head: the outputs, and the tensors before them through single-input
    # operations that are no convolution, up to the output of the last convolution.
    head = set()
    for out in graph.output_keys:
        k = out
        head.add(k)
        while graph.tensors[k].producer is not None:
            o = graph.ops[graph.tensors[k].producer]
            ins = [i for i in o.inputs if relevant[i]]
            if _layers.is_conv(graph, o) or _layers.starts_head(graph, o) or len(ins) != 1:
                break
            k = ins[0]
            head.add(k)
    after_head = [False] * n  # a classifier head after a global pooling
    for o in graph.ops:
        if _layers.starts_head(graph, o) or any(after_head[i] for i in o.inputs):
            for k in o.outputs:
                after_head[k] = True
    cands = [
        k for k in range(n)
        if relevant[k] and k not in graph.input_keys and k not in head and not after_head[k]
        and is_map(graph, k) and conv_before[k] and ed.levels[k] is not None
    ]
    last: dict = {}
    for k in cands:  # graph order: the last tensor at each (part, level) wins
        last[(ed.decoder[k], round(ed.levels[k] / LEVEL_TOL))] = k
    ends = sorted(last.values())
    counts = {s: sum(1 for k in ends if ed.stage(k) == s) for s in ("encoder", "bottleneck", "decoder")}
    notes = [
        f"Model {graph.model.name!r} is an encoder-decoder network (its spatial size goes down, then up "
        f"again): its blocks are the last tensor at each spatial size on the way down ({counts['encoder']} "
        f"encoder blocks), the bottleneck ({counts['bottleneck']}) and the last tensor at each size on the way "
        f"up, after the merge and its convolutions ({counts['decoder']} decoder blocks). Encoder blocks read by "
        "a skip connection are not cut points."
    ]
    return ends, notes


def block_infos(graph, keys) -> list:
    """:class:`~.graph.Block` of each key, with its ``stage`` in an encoder-decoder network."""
    import dataclasses

    infos = [graph.block_info(k) for k in keys]
    ed = encoder_decoder(graph)
    if ed is None:
        return infos
    return [dataclasses.replace(b, stage=ed.stage(k)) for b, k in zip(infos, keys)]


def discover_blocks(graph) -> tuple[list[int], list[str]]:
    """Automatic block ends. Returns (tensor keys, notes explaining the choice).

    Rule (documented in README "Block discovery"; docs/ARCHITECTURES.md
    shows what it finds for each ``keras.applications`` family):

    1. Candidates are cut points with a feature-map output, at least one
       convolution before them, that come before the classifier head. A
       feature map has rank 3, 4 or 5, (batch, spatial axes..., channels),
       the rank of the convolutions before it (``Conv1D``, ``Conv2D`` or
       ``Conv3D`` and their separable and depthwise variants; a ``Reshape``
       of a 2-D map to rank 3 is no 1-D block). A cut point produced by a
       global pooling (``GlobalAveragePooling1D/2D/3D``, also with
       ``keepdims=True``, or ``keras.ops.mean``/``max`` over all the
       spatial axes) or by a recurrent layer (``LSTM``, ``GRU``,
       ``Bidirectional``: a Conv1D + LSTM hybrid) starts the head, and it
       and every tensor after it are no candidates (MobileNetV3's 1x1
       ``Conv2D`` logits are not a block).
    2. Natural block ends among them: pooling outputs; tensors that close
       a multi-path region (their operation merges two or more tensors,
       whether a ``keras.layers.Add``/``Concatenate``/``Multiply`` layer or
       an operator such as ``x + y``) holding at least one convolution or
       pooling (a region of elementwise operations only, such as a swish
       or hard-swish written as ``x * f(x)``, is an activation, not a
       block); the last candidate.
    3. Each natural end is extended to the deepest cut point reached
       before the next convolution.
    4. A stretch of graph without a single cut point that holds more than
       ``MAX_CONVS_WITHOUT_CUT`` convolutions (NASNet's cells each read the
       two previous cells) gets its *cell outputs*: the merges (feature maps, after
       a convolution) that every input-to-output path passes through
       except the paths of one skip connection jumping over them. Formally,
       a merge ``m`` of the stretch for which some tensor ``u`` of the
       stretch *in series* with it (an ancestor or a descendant of ``m``,
       where the skip leaves or arrives) makes ``{m, u}`` separate the
       input from the output. Two branches side by side (a reshaped skip
       beside a reduction cell, the two halves of a cell) separate only
       together with each other and do not count. Of two cell outputs with
       no convolution between them the deeper is kept, as in 3. They are
       not cut points, and a note says so.

    5. An encoder-decoder network (:func:`encoder_decoder`: a U-Net,
       whose skip connections, a ``Concatenate`` of each encoder map into
       the decoder, leave no cut point but the last merge; an autoencoder)
       replaces rules 1 to 4: its blocks are the last tensor at each
       spatial size on the way down (``stage="encoder"``), the last tensor
       at the deepest size (``"bottleneck"``), and the last tensor at each
       size on the way up (``"decoder"``: after the upsampling, the merge
       with the skip and the convolutions), each a feature map after a
       convolution. The output head (the output, back through
       single-input operations to the last convolution's output, such as
       a 1x1 ``Conv2D`` with a softmax) is no block. Encoder blocks are
       not cut points: the tail engine caches what crosses them (the skip).

    A model with several inputs: rules 1 to 4 run on the *branch* of every
    input whose shape is a feature map (an image, signal or volume; a
    tabular input of shape (batch, features) has no branch and no block),
    the tensors that depend on that input alone, with the tensors where the
    branch meets another input's as its outputs; then on the whole graph,
    for the blocks after the branches merge (every path from every input
    passes through them). Each block's ``branch`` names its input(s).
    """
    ed = encoder_decoder(graph)
    if ed is not None:
        ends, notes = encoder_decoder_ends(graph, ed)
    elif len(graph.input_keys) > 1:
        ends, notes = branch_ends(graph)
    else:
        ends, notes = natural_ends(graph)
    if not ends:
        if not any(_layers.is_conv(graph, o) for o in graph.ops):
            raise ValueError(
                f"Model {graph.model.name!r} has no convolution: it is a Dense-only (or "
                "otherwise convolution-free) model, with no filters to interpret. "
                "keras-hybrid-interp analyses convolutional networks with 1-D, 2-D and 3-D "
                "convolutional blocks (Conv1D, Conv2D, Conv3D and their separable and "
                "depthwise variants), channels last."
            )
        raise ValueError(
            f"Model {graph.model.name!r} has no convolutional block: no feature map ({RANKS_TEXT}) "
            "after a convolution lies on every path from the input to the output before the "
            "classifier head (global pooling or a recurrent layer). Pass `blocks=[...]` to choose "
            f"layers yourself; layers with a feature-map output: {abbrev(graph.feature_map_names())}."
        )
    if len(ends) == 1:
        notes.append(
            f"Only one block ({graph.tensors[ends[0]].name!r}) was found: it is the only feature map "
            "tensor after a convolution that every input-to-output path passes through, "
            "with no pooling or merge before it. Pass `blocks=[...]` to choose layers yourself."
        )
    return ends, notes


class _Branch:
    """``graph`` seen from one input: its ``input_keys`` are that input, its ``output_keys`` the branch's exits."""

    def __init__(self, graph, key, exits):
        self._graph = graph
        self.input_keys = [key]
        self.output_keys = list(exits)

    def __getattr__(self, name):
        return getattr(self._graph, name)


def branch_exits(graph, key) -> list[int]:
    """Tensors that depend on input ``key`` alone and are read by an operation that also reads another input."""
    only = [key]
    exits = set(k for k in graph.output_keys if graph.inputs_of(k) == only)
    for o in graph.ops:
        if any(graph.inputs_of(k) != only for k in o.outputs):
            exits.update(i for i in o.inputs if graph.inputs_of(i) == only)
    return sorted(exits)


def branch_ends(graph) -> tuple[list[int], list[str]]:
    """Block ends of a model with several inputs: on each feature-map input's branch, then after the merge."""
    ends: set = set()
    notes: list[str] = []
    for key in graph.input_keys:
        if not is_feature_map(graph.tensors[key].shape):
            continue  # a tabular input: no spatial axes, no blocks
        exits = branch_exits(graph, key)
        if exits:
            found, more = natural_ends(_Branch(graph, key, exits))
            ends.update(found)
            notes += more
    found, more = natural_ends(graph)
    ends.update(found)
    return sorted(ends), notes + more


def natural_ends(graph) -> tuple[list[int], list[str]]:
    """Rules 1 to 4 of :func:`discover_blocks` on ``graph`` (or a branch of it); no error when none is found."""
    relevant = relevant_mask(graph)
    cover = jump_cover(graph, relevant)
    n = len(graph.tensors)
    conv_before = [False] * n
    for o in graph.ops:
        c = _layers.is_conv(graph, o) or any(conv_before[i] for i in o.inputs)
        for k in o.outputs:
            conv_before[k] = c
    cuts = [k for k in range(n) if relevant[k] and cover[k] == 0 and k not in graph.input_keys]
    notes: list[str] = []

    def is4d(k):  # a feature map of the convolutions' rank
        return is_map(graph, k)

    def is_merge(k):
        p = graph.tensors[k].producer
        return p is not None and sum(1 for i in graph.ops[p].inputs if relevant[i]) >= 2

    def is_pool(k):
        p = graph.tensors[k].producer
        return p is not None and _layers.is_pooling(graph.ops[p])

    # The classifier head starts at the first cut point made by a global pooling.
    head = next((k for k in cuts if _layers.starts_head(graph, graph.ops[graph.tensors[k].producer])), n)
    cuts = [k for k in cuts if k < head]

    # Convolutions (and local poolings) in each region (prev cut, cut]; region i ends at cuts[i].
    conv_positions = [
        k for o in graph.ops if _layers.is_conv(graph, o) for k in o.outputs if relevant[k]
    ]
    pool_positions = [k for o in graph.ops if _layers.is_pooling(o) for k in o.outputs if relevant[k]]
    bounds = [-1] + cuts

    def convs_between(a, b):  # a < pos <= b
        return sum(1 for p in conv_positions if a < p <= b)

    def structural_between(a, b):  # convolutions or poolings, a < pos <= b
        return convs_between(a, b) + sum(1 for p in pool_positions if a < p <= b)

    cands = [k for k in cuts if is4d(k) and conv_before[k]]
    cut_index = {k: i for i, k in enumerate(cuts)}
    natural = {
        k for k in cands
        if is_pool(k) or (is_merge(k) and structural_between(bounds[cut_index[k]], k) > 0)
    }
    if cands:
        natural.add(cands[-1])
    ends = set()
    for k in natural:
        i = cut_index[k]
        while (
            i + 1 < len(cuts)
            and is4d(cuts[i + 1])
            and convs_between(cuts[i], cuts[i + 1]) == 0
        ):
            i += 1
        ends.add(cuts[i])

    # Long stretches without cut points (cells reading the two previous cells).
    for a, b in zip(bounds, cuts + [head]):  # head == n: no head, up to the outputs
        n_convs = convs_between(a, b)
        if n_convs <= MAX_CONVS_WITHOUT_CUT:
            continue
        chosen = cell_outputs(graph, a, b, relevant, conv_before)
        where = (
            f"Between {graph.tensors[a].name if a >= 0 else 'the input'!r} and "
            f"{graph.tensors[b].name if b < n else 'the output'!r} the graph has no cut point "
            f"for {n_convs} convolutions. "
        )
        if not chosen:
            notes.append(where + "No merge there carries all paths but those of one skip "
                         "connection, so no block end lies inside: pass `blocks=[...]` to choose "
                         "layers yourself.")
            continue
        ends.update(chosen)
        notes.append(
            where + f"There, the blocks are the {len(chosen)} cell outputs (as when each cell "
            "reads the two cells before it): merges that every path passes through except the "
            "paths of one skip connection jumping over them. They are not cut points."
        )
    return sorted(ends), notes

def cell_outputs(graph, a, b, relevant, conv_before) -> list[int]:
    """Cell outputs in the stretch between cut points ``a`` and ``b`` (rule 4).

    ``a == -1`` stands for the model inputs, ``b == len(graph.tensors)`` for
    the outputs. Returns tensor keys in graph order.
    """
    n = len(graph.tensors)
    inside = [k for k in range(a + 1, b) if relevant[k]]
    if not inside:
        return []
    in_stretch = set(inside)
    sources = [a] if a >= 0 else list(graph.input_keys)
    sinks = [b] if b < n else list(graph.output_keys)
    nodes = in_stretch | set(sources) | set(sinks)
    succ: dict[int, list[int]] = {k: [] for k in nodes}
    pred: dict[int, list[int]] = {k: [] for k in nodes}
    edges = []
    for o in graph.ops:
        for i in o.inputs:
            if i in nodes:
                for k in o.outputs:
                    if k in nodes and k != i and k not in sources and i not in sinks:
                        succ[i].append(k)
                        pred[k].append(i)
                        edges.append((i, k))

    def reach(starts, nxt, removed):
        seen = {s for s in starts if s != removed}
        stack = list(seen)
        while stack:
            k = stack.pop()
            for j in nxt[k]:
                if j != removed and j not in seen:
                    seen.add(j)
                    stack.append(j)
        return seen

    def crossed_by_one_skip(m):
        """Whether {m, u} separates input and output for a tensor u in series with m."""
        alive = reach(sources, succ, m) & reach(sinks, pred, m)
        # Cut points of the stretch without m: positions no edge jumps over (a
        # virtual source before the sources, a virtual sink after the sinks).
        lo = min(nodes) - 1
        diff: dict[int, int] = {}

        def jump(u, v):
            if v - u > 1:
                diff[u + 1] = diff.get(u + 1, 0) + 1
                diff[v] = diff.get(v, 0) - 1

        for s in sources:
            jump(lo, s)
        for t in sinks:
            jump(t, n + 1)
        for u, v in edges:
            if u in alive and v in alive:
                jump(u, v)
        run, partners = 0, []
        for pos in range(lo + 1, max(inside) + 1):
            run += diff.get(pos, 0)
            if run == 0 and pos in in_stretch and pos in alive and pos != m:
                partners.append(pos)
        if not partners:
            return False
        # In series (an ancestor or a descendant), not a branch beside m.
        related = reach([m], succ, None) | reach([m], pred, None)
        return any(u in related for u in partners)

    cells = [
        k for k in inside
        if is_map(graph, k) and conv_before[k]
        and sum(1 for i in graph.ops[graph.tensors[k].producer].inputs if relevant[i]) >= 2
        and crossed_by_one_skip(k)
    ]
    # Of two cell outputs with no convolution between them, keep the deeper.
    return [
        k for k, nxt in zip(cells, cells[1:] + [None])
        if nxt is None or nxt not in reach([k], succ, None) or conv_path_between(graph, k, nxt)
    ]

def conv_path_between(graph, a, b) -> bool:
    """Whether some path from tensor a to tensor b passes a convolution."""
    # Walk backwards from b, staying at positions > a.
    stack, seen = [b], {b}
    reach_a_with_conv = False
    conv_flag = {b: False}
    while stack:
        k = stack.pop()
        p = graph.tensors[k].producer
        if p is None:
            continue
        node = graph.ops[p]
        flag = conv_flag[k] or _layers.is_conv(graph, node)
        for i in node.inputs:
            if i == a:
                reach_a_with_conv |= flag
            elif i > a and (i not in seen or (flag and not conv_flag.get(i, False))):
                seen.add(i)
                conv_flag[i] = conv_flag.get(i, False) or flag
                stack.append(i)
    return reach_a_with_conv


def select_blocks(graph: ModelGraph, blocks="auto", argname: str = "blocks"):
    """Resolves a ``blocks`` argument to (keys, names, Block list).

    ``blocks`` is ``"auto"`` (see :func:`discover_blocks`), one
    layer name / index / layer object, or a list of them. Every chosen tensor
    must be a feature map: rank 3, 4 or 5 (batch, spatial axes..., channels).
    Notes on the automatic
    choice are emitted as warnings.
    """
    cf = _layers.channels_first_layers(graph)
    if cf:
        raise ValueError(
            f"Model {graph.model.name!r} uses data_format='channels_first' in {cf[:5]}; "
            "keras-hybrid-interp supports channels_last models (the Keras default). Rebuild "
            "the model with channels_last layers."
        )
    if isinstance(blocks, str) and blocks == "auto":
        keys, notes = discover_blocks(graph)
        for note in notes:
            _health.warn("blocks", note)
    else:
        if isinstance(blocks, (str, int, keras.layers.Layer)):
            blocks = [blocks]
        if not isinstance(blocks, (list, tuple)) or not blocks:
            raise TypeError(
                f"`{argname}` must be 'auto', or a non-empty list of layer names, top-level "
                f"indices or layer objects; received {blocks!r}."
            )
        keys = []
        for spec in blocks:
            k = graph.resolve(spec, argname)
            t = graph.tensors[k]
            if not is_feature_map(t.shape):
                raise ValueError(
                    f"`{argname}`: layer {t.name!r} has output shape {t.shape} (rank {len(t.shape)}), "
                    f"not a feature map ({RANKS_TEXT}). Choose a convolutional layer; layers with "
                    f"a feature-map output: {abbrev(graph.feature_map_names())}."
                )
            if k in keys:
                raise ValueError(f"`{argname}`: layer {t.name!r} is listed twice.")
            keys.append(k)
        keys.sort()
    names = [graph.tensors[k].name for k in keys]
    return keys, names, block_infos(graph, keys)
