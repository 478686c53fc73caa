"""B9: would a "linear first layer of the tail" shortcut pay? An upper bound from the graph, per block.

Issue #13 suggests: where the tail after a block starts with a convolution or a
Dense layer ``L``, the change a perturbation of channel ``c`` makes to ``L``'s
output is ``L`` (without bias) applied to the change in channel ``c`` alone, a
convolution with one input channel: ``1/C_in`` of ``L``'s cost. Every layer
after ``L`` must still run for every perturbation. So the shortcut saves at most
``L``'s share of the tail, and its speed-up over the tail engine is at most::

    T / (T - F + F / C_in)

with ``T`` the multiply-accumulates (MACs) per sample of the tail (every
operation after the block that the output needs) and ``F`` those of ``L``.
It applies only where ``L`` is the block's only reader and no other tensor
crosses the cut (a residual block's output also feeds the next ``Add``: no).

For every block that ``blocks="auto"`` finds on the nested (transfer-learning)
form of each architecture of the matrix at 224 x 224, the script prints
whether the shortcut applies and its bound, and per architecture the largest
bound. No forward pass is run: MACs are counted from the kernels' shapes and
the output shapes (``kernel weights x output positions``), which is what the
tail's compute is made of on a CPU.

Run: ``python benchmarks/b9_linear_first_layer.py`` (about 2 minutes: it
only builds the models).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402

import keras  # noqa: E402

from keras_hybrid_interp import GlobalAnalyzer  # noqa: E402
from keras_hybrid_interp.core.layers import global_pool_after, is_conv  # noqa: E402

ARCHS = ["VGG16", "ResNet50", "ResNet50V2", "MobileNetV2", "MobileNetV3Small", "DenseNet121", "EfficientNetB0",
         "EfficientNetV2B0", "InceptionV3", "Xception", "ConvNeXtTiny", "NASNetMobile"]
SIZE = 224


def nested(name):
    base = getattr(keras.applications, name)(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    inp = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.GlobalAveragePooling2D()(base(inp, training=False))
    return keras.Model(inp, keras.layers.Dense(10, activation="softmax")(h))


def op_macs(graph, o):
    """Kernel weights x output positions (0 for operations without a kernel)."""
    kernels = [w for w in getattr(o.op, "weights", []) if "kernel" in w.path.split("/")[-1]]
    if not kernels:
        return 0
    out = graph.tensors[o.outputs[0]].shape
    positions = int(np.prod([d for d in out[1:-1]], dtype=np.int64)) if len(out) > 2 else 1
    return sum(int(np.prod(w.shape)) for w in kernels) * positions


def analyse(name):
    keras.backend.clear_session()
    ga = GlobalAnalyzer(nested(name))
    g = ga.graph
    rows = []
    for key, block in zip(ga.block_keys, ga.block_names):
        producer = g.tensors[key].producer
        needed = g._ancestors_ops(g.output_keys, stop={key})  # the tail's operations
        tail = [g.ops[i] for i in needed if i > producer]
        t = sum(op_macs(g, o) for o in tail)
        readers = [o for o in g.ops if key in o.inputs]
        applies = (g.frontier(key) == [key] and len(readers) == 1 and is_conv(g, readers[0])
                   and global_pool_after(g, key) is None)
        bound = None
        if applies:
            f = op_macs(g, readers[0])
            c_in = int(g.tensors[key].shape[-1])
            bound = t / (t - f + f / c_in) if t else None
        rows.append((block, t, applies, bound))
    return rows


def main():
    print(
        "| architecture | blocks | blocks where it applies | largest bound | block of the largest "
        "| median bound where it applies |"
    )
    print("|---|---:|---:|---:|---|---:|")
    for name in ARCHS:
        rows = analyse(name)
        ok = [r for r in rows if r[2] and r[3] is not None]
        if ok:
            best = max(ok, key=lambda r: r[3])
            med = float(np.median([r[3] for r in ok]))
            print(f"| {name} | {len(rows)} | {len(ok)} | {best[3]:.2f}x | `{best[0]}` | {med:.2f}x |", flush=True)
        else:
            print(f"| {name} | {len(rows)} | 0 | - | - | - |", flush=True)


if __name__ == "__main__":
    main()
