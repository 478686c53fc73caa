"""Generates docs/ARCHITECTURES.md: what automatic block discovery finds on keras.applications.

It also covers three small CNNs of other ranks built in code (``CUSTOM``): a
1-D CNN with a residual block, a 3-D CNN and a Conv1D + LSTM hybrid; their
*nested* form is the model without its head, nested in a model that adds it.

For every architecture below, block discovery (``blocks="auto"``, see README
"Blocks and block discovery") runs on four forms of the model, all with
``weights=None`` and the smallest input the architecture accepts:

* ``as is``: ``App(include_top=True, classes=10)``;
* ``nested``: ``App(include_top=False)`` as the backbone of a transfer-learning
  model (``base(inp, training=False)``, ``GlobalAveragePooling2D``, ``Dense``
  softmax); its block names carry the prefix ``"<backbone name>/"``;
* ``reloaded``: the ``as is`` model saved to ``.keras`` and loaded back with
  ``keras.models.load_model(path, safe_mode=True)``;
* ``nested, reloaded``: the same for the ``nested`` model.

Keras numbers unnamed layers per process (``add``, ``add_1``, ...), so a name
depends on what the process built before. Each (architecture, form) is
therefore built in a fresh subprocess, which makes the names of the four forms
comparable and the table reproducible.

Usage::

    python scripts/architectures.py                 # all, writes docs/ARCHITECTURES.md
    python scripts/architectures.py --only NASNetMobile EfficientNetB0 --output -
    python scripts/architectures.py --jobs 2        # subprocesses in parallel

Run it from the repository root (or anywhere: it adds the repository to the
import path of its subprocesses).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: name: (input size, family). The smallest input each accepts with weights=None.
ARCHITECTURES = {
    "VGG16": (32, "plain"),
    "ResNet50": (32, "residual"),
    "ResNet50V2": (32, "residual_v2"),
    "MobileNetV2": (32, "inverted_residual"),
    "MobileNetV3Small": (32, "squeeze_excitation"),
    "DenseNet121": (32, "dense"),
    "EfficientNetB0": (32, "squeeze_excitation"),
    "EfficientNetV2B0": (32, "squeeze_excitation"),
    "InceptionV3": (75, "inception"),
    "Xception": (71, "residual_separable"),
    "ConvNeXtTiny": (32, "convnext"),
    "NASNetMobile": (32, "cells"),
    # Not keras.applications: small CNNs of other ranks, built by ``CUSTOM`` below.
    "ResNet1D": ((128, 1), "signals_1d"),
    "CNN3D": ((16, 16, 16, 1), "volumes_3d"),
    "Conv1DLSTM": ((128, 1), "conv_recurrent"),
}


def _resnet1d(include_top=True):
    """A 1-D CNN for signals (ECG, audio): a stem, one residual block, a strided conv."""
    import keras
    from keras import layers

    inp = keras.Input((128, 1))
    x = layers.Conv1D(16, 7, padding="same", activation="relu", name="stem_conv")(inp)
    x = layers.MaxPooling1D(2, name="stem_pool")(x)
    y = layers.Conv1D(16, 5, padding="same", activation="relu", name="res1_conv1")(x)
    y = layers.Conv1D(16, 5, padding="same", name="res1_conv2")(y)
    x = layers.Add(name="res1_add")([x, y])
    x = layers.Activation("relu", name="res1_out")(x)
    x = layers.Conv1D(32, 5, strides=2, padding="same", activation="relu", name="down_conv")(x)
    x = layers.SeparableConv1D(32, 5, padding="same", activation="relu", name="sep_conv")(x)
    if not include_top:
        return keras.Model(inp, x, name="resnet1d")
    x = layers.GlobalAveragePooling1D(name="gap")(x)
    return keras.Model(inp, layers.Dense(CLASSES, activation="softmax", name="predictions")(x), name="resnet1d")


def _cnn3d(include_top=True):
    """A 3-D CNN for volumes (CT, MRI): two conv stages with pooling."""
    import keras
    from keras import layers

    inp = keras.Input((16, 16, 16, 1))
    x = layers.Conv3D(8, 3, padding="same", activation="relu", name="conv1")(inp)
    x = layers.MaxPooling3D(2, name="pool1")(x)
    x = layers.Conv3D(16, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling3D(2, name="pool2")(x)
    x = layers.Conv3D(32, 3, padding="same", activation="relu", name="conv3")(x)
    if not include_top:
        return keras.Model(inp, x, name="cnn3d")
    x = layers.GlobalAveragePooling3D(name="gap")(x)
    return keras.Model(inp, layers.Dense(CLASSES, activation="softmax", name="predictions")(x), name="cnn3d")


def _conv1d_lstm(include_top=True):
    """A Conv1D + LSTM hybrid: convolutional blocks, then a recurrent head."""
    import keras
    from keras import layers

    inp = keras.Input((128, 1))
    x = layers.Conv1D(16, 5, padding="same", activation="relu", name="conv1")(inp)
    x = layers.MaxPooling1D(2, name="pool1")(x)
    x = layers.Conv1D(32, 5, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling1D(2, name="pool2")(x)
    if not include_top:
        return keras.Model(inp, x, name="conv1d_lstm")
    x = layers.LSTM(16, return_sequences=True, name="lstm1")(x)
    x = layers.LSTM(16, name="lstm2")(x)
    return keras.Model(inp, layers.Dense(CLASSES, activation="softmax", name="predictions")(x),
                       name="conv1d_lstm")


#: name: (builder(include_top) -> model, head of the nested form). The head
#: of a recurrent hybrid is recurrent; the others pool over all spatial axes.
CUSTOM = {
    "ResNet1D": (_resnet1d, "GlobalAveragePooling1D"),
    "CNN3D": (_cnn3d, "GlobalAveragePooling3D"),
    "Conv1DLSTM": (_conv1d_lstm, "LSTM"),
}

FORMS = ("as_is", "nested", "reloaded", "nested_reloaded")
FORM_TITLES = {
    "as_is": "as is",
    "nested": "nested",
    "reloaded": "reloaded",
    "nested_reloaded": "nested, reloaded",
}
CLASSES = 10


# ----------------------------------------------------------------------
# Worker: one architecture, one form, in a fresh process
# ----------------------------------------------------------------------
def build(name: str, form: str):
    """Builds ``name`` in ``form`` ('as_is' or 'nested'). Returns (model, info dict)."""
    import keras

    size = ARCHITECTURES[name][0]
    if name in CUSTOM:
        builder, head = CUSTOM[name]
        info = {"input": size}
        if form == "as_is":
            info["top"] = "built in code (scripts/architectures.py)"
            return builder(include_top=True), info
        base = builder(include_top=False)
        inp = keras.Input(size)
        x = base(inp, training=False)
        x = keras.layers.LSTM(16, name="lstm")(x) if head == "LSTM" else getattr(keras.layers, head)(name="gap")(x)
        out = keras.layers.Dense(CLASSES, activation="softmax", name="head")(x)
        info["top"] = f"backbone without its head, then {head}"
        info["prefix"] = base.name + "/"
        return keras.Model(inp, out, name="transfer"), info
    app = getattr(keras.applications, name)
    shape = (size, size, 3)
    info = {"input": shape}
    if form == "as_is":
        try:
            model = app(include_top=True, weights=None, input_shape=shape, classes=CLASSES)
            info["top"] = "include_top=True"
        except ValueError as e:  # an architecture whose top needs a larger input
            info["top"] = f"include_top=False + GAP/Dense head ({e})"
            base = app(include_top=False, weights=None, input_shape=shape)
            x = keras.layers.GlobalAveragePooling2D()(base.output)
            model = keras.Model(base.input, keras.layers.Dense(CLASSES, activation="softmax")(x))
        return model, info
    if form == "nested":
        base = app(include_top=False, weights=None, input_shape=shape)
        inp = keras.Input(shape)
        x = base(inp, training=False)
        x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
        out = keras.layers.Dense(CLASSES, activation="softmax", name="head")(x)
        info["top"] = "include_top=False backbone"
        info["prefix"] = base.name + "/"
        return keras.Model(inp, out, name="transfer"), info
    raise ValueError(f"unknown form {form!r}")


def worker(name: str, form: str) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, str(REPO))
    import keras

    from keras_hybrid_interp.core.blocks import cut_points, discover_blocks
    from keras_hybrid_interp.core.graph import ModelGraph

    t0 = time.perf_counter()
    model, info = build(name, form.replace("_reloaded", "").replace("reloaded", "as_is"))
    t_build = time.perf_counter() - t0
    t_io = 0.0
    if form in ("reloaded", "nested_reloaded"):
        t1 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.keras")
            model.save(path)
            model = keras.models.load_model(path, safe_mode=True)
        t_io = time.perf_counter() - t1
    t2 = time.perf_counter()
    graph = ModelGraph(model)
    keys, notes = discover_blocks(graph)
    t_discover = time.perf_counter() - t2
    blocks = []
    for k in keys:
        t = graph.tensors[k]
        op = graph.ops[t.producer]
        blocks.append({"name": t.name, "shape": list(t.shape[1:]), "op": type(op.op).__name__})
    return {
        "arch": name,
        "form": form,
        "keras": keras.__version__,
        **info,
        "params": int(model.count_params()),
        "ops": len(graph.ops),
        "cut_points": len(cut_points(graph)),
        "blocks": blocks,
        "notes": notes,
        "seconds": {"build": t_build, "save_load": t_io, "discover": t_discover},
    }


def run_worker(name: str, form: str, timeout: float = 900) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", name, form],
        capture_output=True, text=True, env=env, timeout=timeout, cwd=str(REPO),
    )
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"arch": name, "form": form, "error": (proc.stderr or proc.stdout)[-2000:], "wall": wall}
    result = json.loads(lines[-1])
    result["wall"] = wall
    return result


# ----------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------
_NUM = re.compile(r"\d+")


def compress(names: list[str]) -> list[tuple[int, int, str]]:
    """Groups runs of three or more consecutive names that count up in one number.

    Returns (first index, last index, label), e.g. ``(1, 5, "conv2_block{1..5}_concat")``.
    """

    def numbers(name):
        return [int(x) for x in _NUM.findall(name)]

    out = []
    i = 0
    while i < len(names):
        parts, nums = _NUM.split(names[i]), numbers(names[i])
        j, pos = i, None
        while j + 1 < len(names) and _NUM.split(names[j + 1]) == parts:
            prev, nxt = numbers(names[j]), numbers(names[j + 1])
            diff = [d for d, (x, y) in enumerate(zip(prev, nxt)) if x != y]
            if len(diff) != 1 or nxt[diff[0]] != prev[diff[0]] + 1 or pos not in (None, diff[0]):
                break
            pos, j = diff[0], j + 1
        if j - i >= 2:
            last = numbers(names[j])[pos]
            label = "".join(
                text + ("" if d >= len(nums) else f"{{{nums[d]}..{last}}}" if d == pos else str(nums[d]))
                for d, text in enumerate(parts)
            )
            out.append((i, j, label))
        else:
            out.extend((k, k, names[k]) for k in range(i, j + 1))
        i = j + 1
    return out


def _shape(s) -> str:
    return "×".join("?" if d is None else str(d) for d in s)


def _params(n: int) -> str:
    return f"{n / 1e6:.1f} M" if n >= 100_000 else f"{n / 1e3:.1f} k"


def _input(shape) -> str:
    """The summary's input column: spatial size (``32×32``; ``128``; ``16×16×16``)."""
    return _shape(shape[:-1])


def _strip(names, prefix):
    return [n[len(prefix):] if prefix and n.startswith(prefix) else n for n in names]


def compare(results: dict) -> dict:
    """For every form other than 'as is': 'same' or a description of the difference."""
    base = results.get("as_is")
    verdict = {}
    if base is None or "error" in base:
        return verdict
    ref = [b["name"] for b in base["blocks"]]
    for form in FORMS[1:]:
        r = results.get(form)
        if r is None:
            continue
        if "error" in r:
            verdict[form] = "failed"
            continue
        names = [b["name"] for b in r["blocks"]]
        prefix = r.get("prefix") or ""
        if prefix and not all(n.startswith(prefix) for n in names):
            verdict[form] = "differs (names outside the backbone)"
        elif _strip(names, prefix) == ref:
            verdict[form] = "same" + (f" (prefix `{prefix}`)" if prefix else "")
        else:
            got = _strip(names, prefix)
            if len(got) == len(ref):
                diffs = [f"block {i + 1} is `{g}` instead of `{r}`"
                         for i, (g, r) in enumerate(zip(got, ref)) if g != r]
                verdict[form] = "differs: " + "; ".join(diffs[:4]) + (" ..." if len(diffs) > 4 else "")
            else:
                extra = [n for n in got if n not in ref]
                missing = [n for n in ref if n not in got]
                verdict[form] = f"differs: {len(got)} blocks, extra {extra[:4]}, missing {missing[:4]}"
    return verdict


FAMILY_TEXT = {
    "plain": (
        "**Plain stacks (VGG16).** Without any branch every tensor is a cut point, so only rule 2's "
        "pooling outputs and the last 4-D cut point are natural ends. The five `blockN_pool` outputs "
        "close the five conv stages; the last one is also the last 4-D cut point before `flatten`."
    ),
    "residual": (
        "**Residual networks (ResNet50).** Inside a bottleneck block the identity (or 1×1 projection) "
        "shortcut jumps over the three convolutions, so the only cut points are where a block starts or "
        "ends. Every `Add` closes a region holding convolutions; rule 3 moves the end past the ReLU "
        "(`convX_blockY_out`), the stem ends at `pool1_pool`. 1 + 3 + 4 + 6 + 3 = 17 blocks."
    ),
    "residual_v2": (
        "**Pre-activation residual networks (ResNet50V2).** The `Add` of a block (`convX_blockY_out`) is "
        "again a cut point, but the next block starts with BatchNorm + ReLU (`preact_bn`, "
        "`preact_relu`) before its first convolution, and the last block of a stage is followed by the "
        "first block of the next stage. Rule 3 extends an end to the deepest cut point before the next "
        "convolution, so the stem (`pool1_pool`) and the last block of each stage are reported as the "
        "*next* block's `preact_relu` (the same features, normalised), and the network's last block as "
        "`post_relu`. There is one end per residual block, 17 in all, as for ResNet50."
    ),
    "inverted_residual": (
        "**Inverted residuals (MobileNetV2).** A skip connection exists only where a block keeps its "
        "resolution and width; its `block_N_add` is a block end. The first block of each stage (stride 2 "
        "or a new width) and block 0 are a plain chain of convolutions with no merge: they are cut points "
        "all along but close no region, so they get no end of their own, and the stage is represented "
        "by its residual blocks. Nothing at the stem's resolution gets a probe (the first end is "
        "`block_2_add`, after two stride-2 convolutions); the last block is `out_relu`, after the final "
        "1×1 convolution."
    ),
    "squeeze_excitation": (
        "**Squeeze-and-excitation (MobileNetV3Small, EfficientNetB0, EfficientNetV2B0).** An SE gate "
        "multiplies a feature map by a per-channel vector computed from its global average pooling: a "
        "two-path region closed by a `Multiply`. Inside a residual block the skip connection jumps over "
        "the gate, so the gate is no cut point and the block ends at its `add`: SE does *not* split a "
        "block in two. In a block without a skip connection (the first block of most stages) the gate "
        "(`*_se_excite`, `*_squeeze_excite_mul`) is the only merge, so that block ends at its gate, just "
        "before its projection. This is kept rather than refined: the projection is a 1×1 convolution "
        "plus BatchNorm without activation, linear per pixel, so it commutes with global average pooling, "
        "and a linear probe on the pooled gate output can express any linear probe on the pooled block "
        "output; moving the end past it would need the rule to know which layers are linear. The global "
        "pooling inside a gate is no cut point, so it does not start the classifier head (rule 1). Blocks "
        "with neither a skip connection nor a gate get no end of their own, as in MobileNetV2: "
        "EfficientNetV2B0's Fused-MBConv stages 1-3 give only `block2b_add` and `block3b_add`. "
        "MobileNetV3's head (global pooling with `keepdims=True`, then 1×1 convolutions for 1024 features "
        "and for the logits) follows a global pooling and is excluded by rule 1; its last block is the "
        "hard-swish after the final 1×1 convolution `conv_1` (an unnamed `activation_N`). Hard-swish is an "
        "`Activation` layer in this Keras version; written out as `x * relu6(x + 3) / 6`, as older "
        "versions did, it would close a region without convolution, which rule 2 does not count."
    ),
    "dense": (
        "**Dense connectivity (DenseNet121).** Each dense layer (Keras names it `convX_blockY`) "
        "concatenates its input with its new features; the `concat` closes a region holding two "
        "convolutions, exactly as a residual `Add` does, so every dense layer is a block: 6 + 12 + 24 + 16 "
        "= 58, plus `pool1` and the three transition `pool*_pool` outputs. The last dense layer of a "
        "stage is extended by rule 3 to the transition's BatchNorm + ReLU (`pool*_relu`), the last cut "
        "point before the transition's 1×1 convolution; the last one of the network to `relu`."
    ),
    "inception": (
        "**Inception merges (InceptionV3).** Each Inception module runs 3 or 4 branches in parallel and "
        "concatenates them (`mixed0` ... `mixed10`); every concatenation closes a multi-path region. "
        "The stem is a plain chain, so only its two max-pooling outputs are ends."
    ),
    "residual_separable": (
        "**Residual separable convolutions (Xception).** Every entry-, middle- and exit-flow block closes "
        "with an unnamed `Add` (Keras numbers them `add`, `add_1`, ... per process, hence the fresh "
        "subprocesses), and the network ends with `block14_sepconv2_act`. The stem (`block1_conv*`) is a "
        "plain chain before the first residual block and gets no end."
    ),
    "convnext": (
        "**ConvNeXt (ConvNeXtTiny).** Each ConvNeXt block is a residual block (depthwise 7×7 convolution, "
        "LayerNormalization, two `Dense` layers on the 4-D tensor, which the rule counts as 1×1 "
        "convolutions, LayerScale) closed by an unnamed `Add`. The last block of each stage is extended "
        "by rule 3 to the LayerNormalization of the downsampling layer that follows (a nested "
        "`Sequential`, hence names such as `convnext_tiny_downsampling_block_0/...`), the last cut point "
        "before its strided convolution. 3 + 3 + 9 + 3 = 18 blocks; the stem (also a nested "
        "`Sequential`) is a plain chain and gets no end. The nested form differs in its last block only, "
        "because the model differs: `include_top=False` appends an unnamed `LayerNormalization` to the "
        "4-D feature map (with the top it comes after the global pooling), and rule 3 extends the last "
        "`Add` to it."
    ),
    "cells": (
        "**Cell-based networks (NASNetMobile).** Each cell reads the outputs of the *two* previous cells, "
        "so between the stem (`stem_bn1`) and the last cell (`normal_concat_12`) no tensor lies on every "
        "path: the model has only a handful of cut points, and rules 1-3 alone would give the final ReLU "
        "only. That stretch holds far more than `MAX_CONVS_WITHOUT_CUT` convolutions, so rule 4 gives "
        "its cell outputs: the `Concatenate` closing each cell is passed by every path except those of "
        "the one skip connection jumping over it (from the cell before to the cell after), so the "
        "concatenation and the cell before it (or after it, for the first cell) separate input and "
        "output. The reshaped skip beside a reduction cell (an unnamed `concatenate` of two strided "
        "1×1 convolutions) separates only together with the reduction cell, a branch beside it, and "
        "does not count. The result is all 4 reduction cells (`reduction_concat_stem_1`, `_stem_2`, "
        "`_reduce_4`, `_reduce_8`), the normal cells `normal_concat_0` … `_11` and, for the last cell "
        "(a real cut point), the ReLU after it (an unnamed `activation_N`): one block per cell. A "
        "warning says that the cell outputs are not cut points."
    ),
    "signals_1d": (
        "**1-D CNNs (ResNet1D).** A small CNN for signals, built in code: a `Conv1D` stem and "
        "`MaxPooling1D`, one residual block closed by an `Add`, a strided `Conv1D` and a "
        "`SeparableConv1D`. Block ends are rank-3 feature maps (batch, steps, channels), found by the "
        "same rules as in 2-D: the stem's pooling output, the residual block (extended past its ReLU "
        "to `res1_out`) and the last feature map before `GlobalAveragePooling1D`."
    ),
    "volumes_3d": (
        "**3-D CNNs (CNN3D).** A small CNN for volumes (CT, MRI), built in code: three `Conv3D` stages, "
        "the first two followed by `MaxPooling3D`. Block ends are rank-5 feature maps (batch, depth, "
        "height, width, channels): the two pooling outputs and the last convolution before "
        "`GlobalAveragePooling3D`, as for a plain 2-D stack."
    ),
    "conv_recurrent": (
        "**Conv1D + LSTM hybrids (Conv1DLSTM).** Two `Conv1D`/`MaxPooling1D` stages feed two `LSTM` "
        "layers (the first returns sequences, so its output is a rank-3 tensor after a convolution). "
        "A recurrent layer starts the classifier head, like a global pooling: the blocks are the "
        "convolutional ones before it (`pool1`, `pool2`), never the LSTM outputs."
    ),
}


def render(all_results: dict, total_wall: float) -> str:
    any_result = next((r for rs in all_results.values() for r in rs.values() if "keras" in r), {})
    lines = [
        "# Block discovery on `keras.applications` (and on 1-D and 3-D CNNs)",
        "",
        'What `blocks="auto"` (see README, *Blocks and block discovery*, and the docstring of '
        "`keras_hybrid_interp.core.blocks.discover_blocks`) finds on the Keras applications, "
        "built with `weights=None` and the "
        "smallest input each accepts, and on three small CNNs of other ranks built in code "
        "(`ResNet1D`, `CNN3D`, `Conv1DLSTM`: a 1-D CNN with a residual block, a 3-D CNN, a Conv1D + "
        "LSTM hybrid). Generated by `python scripts/architectures.py` "
        f"(Keras {any_result.get('keras', '?')}); do not edit by hand.",
        "",
        "Forms: **as is** is `App(include_top=True, classes=10)`; **nested** is `App(include_top=False)` "
        "used as the backbone of a transfer-learning model (`base(inp, training=False)`, "
        "`GlobalAveragePooling2D`, `Dense` softmax), whose block names carry the prefix "
        "`<backbone name>/`; **reloaded** is the *as is* model saved to `.keras` and loaded with "
        "`keras.models.load_model(path, safe_mode=True)`; **nested, reloaded** is the same for the nested "
        "model (for the CNNs built in code, *nested* is the model without its head inside a model that "
        'adds the head back). "same" means the same block names in the same order (after removing the prefix). Each '
        "model and form is built in a fresh process, because Keras numbers unnamed layers (`add_18`) "
        "per process.",
        "",
        "The rule in short: block ends are *cut points* (tensors every input-to-output path passes "
        "through) with a feature-map output (rank 3, 4 or 5: 1-D, 2-D or 3-D convolutions) after a "
        "convolution and before the classifier head (a global pooling or a recurrent layer); among them "
        "pooling outputs, merges that close a region holding a convolution or pooling, and the last one; "
        "each extended to the deepest cut point before the next convolution; and, in long stretches "
        "without any cut point, the cell outputs.",
        "",
        "## Summary",
        "",
        "| Architecture | Input | Parameters | Cut points | Blocks | "
        + " | ".join(FORM_TITLES[f] for f in FORMS[1:])
        + " |",
        "|---|---|---|---|---|" + "---|" * (len(FORMS) - 1),
    ]
    for name, results in all_results.items():
        base = results.get("as_is", {})
        if "error" in base:
            lines.append(f"| {name} | | | | build failed | " + " | ".join("" for _ in FORMS[1:]) + " |")
            continue
        verdict = compare(results)
        cells = [verdict.get(f, "not run").split(" (prefix")[0].replace("differs: ", "") for f in FORMS[1:]]
        lines.append(
            f"| [{name}](#{name.lower()}) | {_input(base['input'])} | {_params(base['params'])} | "
            f"{base['cut_points']} | {len(base['blocks'])} | " + " | ".join(cells) + " |"
        )
    lines += ["", "## Families", ""]
    seen = []
    for name in all_results:
        fam = ARCHITECTURES[name][1]
        if fam not in seen:
            seen.append(fam)
            lines += [FAMILY_TEXT[fam], ""]
    lines += ["## Blocks per architecture", ""]
    for name, results in all_results.items():
        base = results.get("as_is", {})
        lines += [f"### {name}", ""]
        if "error" in base:
            lines += ["Build failed:", "", "```", base["error"].strip(), "```", ""]
            continue
        lines.append(
            f"Input {_shape(base['input'])}, {base['top']}, {base['ops']} operations, {base['cut_points']} cut "
            f"points, **{len(base['blocks'])} blocks**."
        )
        lines.append("")
        lines += ["| # | Block (as is) | Output (spatial×C) | Layer |", "|---|---|---|---|"]
        blocks = base["blocks"]
        for start, end, label in compress([b["name"] for b in blocks]):
            idx = str(start + 1) if start == end else f"{start + 1}–{end + 1}"
            shapes = [_shape(blocks[i]["shape"]) for i in range(start, end + 1)]
            shape = shapes[0] if len(set(shapes)) == 1 else f"{shapes[0]} … {shapes[-1]}"
            ops = sorted({blocks[i]["op"] for i in range(start, end + 1)})
            lines.append(f"| {idx} | `{label}` | {shape} | {', '.join(ops)} |")
        lines.append("")
        verdict = compare(results)
        for form in FORMS[1:]:
            r = results.get(form)
            if r is None:
                continue
            if "error" in r:
                lines.append(f"- **{FORM_TITLES[form]}**: failed: `{r['error'].strip().splitlines()[-1]}`")
            else:
                lines.append(f"- **{FORM_TITLES[form]}**: {verdict[form]}.")
        notes = base.get("notes") or []
        for note in notes:
            lines.append(f"- Note (warning): {note}")
        lines.append("")
    timing = ", ".join(
        f"{name} {sum(r.get('wall', 0) for r in rs.values()):.0f} s" for name, rs in all_results.items()
    )
    lines += [
        "## Generation",
        "",
        f"{sum(len(rs) for rs in all_results.values())} subprocesses, {total_wall:.0f} s wall time in "
        f"all. Seconds per architecture (all forms, including Python and TensorFlow start-up): {timing}.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(ARCHITECTURES), help="architectures to run")
    parser.add_argument("--forms", nargs="+", choices=FORMS, default=list(FORMS))
    parser.add_argument("--jobs", type=int, default=2, help="subprocesses run in parallel (default 2)")
    parser.add_argument("--output", default=str(REPO / "docs" / "ARCHITECTURES.md"),
                        help="markdown file to write, '-' for stdout")
    parser.add_argument("--json", help="also write the raw results to this JSON file")
    parser.add_argument("--from-json", help="render the markdown from a file written by --json, "
                        "without building anything")
    parser.add_argument("--worker", nargs=2, metavar=("ARCH", "FORM"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return 0
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        results, total_wall = saved["results"], saved["total_wall"]
    else:
        names = args.only or list(ARCHITECTURES)
        forms = list(dict.fromkeys(["as_is"] + args.forms))
        t0 = time.perf_counter()
        results = {n: {} for n in names}
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = {pool.submit(run_worker, n, f): (n, f) for n in names for f in forms}
            for fut in concurrent.futures.as_completed(futures):
                n, f = futures[fut]
                r = fut.result()
                results[n][f] = r
                status = "FAILED" if "error" in r else f"{len(r['blocks'])} blocks"
                print(f"{n:18s} {f:16s} {status:12s} {r['wall']:6.1f} s", file=sys.stderr)
        results = {n: {f: results[n][f] for f in forms if f in results[n]} for n in names}
        total_wall = time.perf_counter() - t0
        if args.json:
            Path(args.json).write_text(json.dumps({"total_wall": total_wall, "results": results}, indent=1))
    text = render(results, total_wall)
    if args.output == "-":
        print(text)
    else:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}", file=sys.stderr)
    failed = [(n, f) for n, rs in results.items() for f, r in rs.items() if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
