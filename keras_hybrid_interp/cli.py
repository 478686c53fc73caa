"""Command line: ``keras-hybrid-interp demo`` (and ``python -m keras_hybrid_interp``)."""

from __future__ import annotations

import argparse
import os
import sys
import time

__all__ = ["main", "demo_model"]


def demo_model(input_shape=(16, 16, 1), classes=10):
    """The demo CNN: three conv blocks, global average pooling, softmax head."""
    import keras
    from keras import layers

    inp = keras.Input(input_shape, name="image")
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(inp)
    x = layers.MaxPooling2D(name="pool1")(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(name="pool2")(x)
    x = layers.Conv2D(48, 3, padding="same", activation="relu", name="conv3")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    out = layers.Dense(classes, activation="softmax", name="classifier")(x)
    return keras.Model(inp, out, name="digits_cnn")


def _log(msg, quiet):
    if not quiet:
        print(msg, flush=True)


def run_demo(args) -> int:
    import keras
    import pandas as pd

    from .datasets import load_digits
    from .interpreter import HybridInterpreter

    quiet = args.quiet
    t0 = time.time()
    _log("[1/3] Loading scikit-learn's bundled handwritten digits (no download)...", quiet)
    (x_train, y_train), (x_test, y_test) = load_digits(image_size=16, random_state=args.seed)
    _log(f"      {len(x_train)} training and {len(x_test)} test images of 16x16 pixels, 10 classes.", quiet)

    _log(f"[2/3] Training a small CNN for {args.epochs} epochs...", quiet)
    keras.utils.set_random_seed(args.seed)
    model = demo_model()
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=32, verbose=0 if quiet else 2)

    _log("[3/3] Fitting one probe per conv block and reading the network layer by layer...", quiet)
    interp = HybridInterpreter(model, class_names=[str(i) for i in range(10)])
    interp.fit_probes(x_train, y_train, random_state=args.seed, verbose=0)
    table = interp.evaluate_layers(x_test, y_test)

    with pd.option_context("display.width", 120, "display.max_columns", 20):
        print("\nBlocks found automatically:")
        print(interp.blocks.to_frame().to_string(index=False))
        print("\nLayer-by-layer predictions on the test set (probe per block; last row = the model):")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    e = interp.explain(x_test[0])
    print(
        f"\nOne test image (label {y_test[0]}): the model predicts {e.model_class}; the probes agree "
        f"from block {e.decision_block!r} on (decision depth {e.decision_depth})."
    )
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, "layer_table.csv")
        table.to_csv(path, index=False)
        interp.blocks.to_frame().to_csv(os.path.join(args.out, "blocks.csv"), index=False)
        print(f"\nWrote {path}")
    _log(f"\nDone in {time.time() - t0:.0f} s.", quiet)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keras-hybrid-interp",
        description="Hybrid CNN interpreter for Keras 3: layer-wise probes and filter analysis.",
    )
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser("demo", help="train a small CNN on the bundled digits and interpret it")
    demo.add_argument("--out", default=None, help="folder for the tables (CSV)")
    demo.add_argument("--epochs", type=int, default=15, help="training epochs of the demo CNN (default 15)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--quiet", action="store_true", help="print only the results")
    return parser


def main(argv=None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["demo"] + list(argv or []))
    if args.command == "demo":
        if args.epochs < 1:
            parser.error("--epochs must be at least 1")
        return run_demo(args)
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
