"""Command line: ``keras-hybrid-interp demo`` (and ``python -m keras_hybrid_interp``)."""

from __future__ import annotations

import argparse
import math
import os
import re
import shlex
import sys
import time
import warnings

__all__ = ["main", "demo_model", "split_train_test"]


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


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


def _log(msg, quiet):
    if not quiet:
        print(msg, flush=True)


def _print_tables(interp, table):
    import pandas as pd

    with pd.option_context("display.width", 120, "display.max_columns", 20):
        print("\nBlocks:")
        print(interp.blocks.to_frame().to_string(index=False))
        print("\nLayer-by-layer predictions (probe per block; last row = the model):")
        print(table.to_frame().to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def _write_report(interp, x, y, out, quiet, random_state, command_line=None, thresholds=None, concepts=None,
                  card=None):
    from .report import build_report

    report = build_report(interp, x, y, random_state=random_state, verbose=not quiet, card=card,
                          **(concepts or {}))
    if command_line:
        report.provenance["command_line"] = command_line
    if thresholds:
        report.set_thresholds(thresholds)
    os.makedirs(out, exist_ok=True)
    html_path = report.save(os.path.join(out, "report.html"))
    json_path = report.save(os.path.join(out, "report.json"))  # always: the audit record
    report.save_dir(os.path.join(out, "figures"))
    print(f"\nReport: {os.path.abspath(html_path)}")
    print(f"Record (every number, the health findings, the provenance; JSON): {os.path.abspath(json_path)}")
    print(f"Figures (PNG, PDF, SVG), tables (CSV) and summary.json: {os.path.abspath(os.path.join(out, 'figures'))}")
    checks = report.checks
    flagged = [f"{c['check']} {c['status']}" for c in checks if c["status"] != "pass"]
    print(f"Checks: {report.worst_status()}" + (f" ({', '.join(flagged)})" if flagged else f" (all {len(checks)})"))
    return report


#: Exit status when a check reaches --fail-on (2 is a usage or data error).
EXIT_CHECK_FAILED = 1


def _gate(report, fail_on) -> int:
    """0, or :data:`EXIT_CHECK_FAILED` when a check of ``report`` reached ``fail_on`` ("warn" or "fail")."""
    if report is None or fail_on is None:
        return 0
    from .report_sections.checks import STATUSES

    worst = report.worst_status()
    if STATUSES.index(worst) >= STATUSES.index(fail_on):
        print(f"--fail-on {fail_on}: a check's status is {worst!r}; exit status {EXIT_CHECK_FAILED}.")
        return EXIT_CHECK_FAILED
    return 0


def _load_thresholds(path):
    """The checks' thresholds from a JSON file ``{check: {"warn": x, "fail": y}}`` (checked), or None."""
    if not path:
        return None
    import json

    from .report_sections.checks import check_thresholds

    try:
        with open(path, encoding="utf-8") as fh:
            thresholds = json.load(fh)
        check_thresholds(thresholds)
    except (OSError, ValueError, TypeError) as exc:
        raise CLIError(f"--thresholds {path}: {exc}".replace("`thresholds`", "the file")) from None
    return thresholds


def _load_card(path):
    """The model card from ``path`` (checked): JSON, or YAML (PyYAML's safe loader) for .yaml/.yml; None without one."""
    if not path:
        return None
    import json

    from .report_sections.card import CARD_FIELDS, check_card

    yaml_file = path.lower().endswith((".yaml", ".yml"))
    example = ("{intended_use: ..., owners: [alice, bob]}" if yaml_file
               else '{"intended_use": "...", "owners": ["alice", "bob"]}')
    if not os.path.isfile(path):
        raise CLIError(f"--card: no such file: {path}")
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise CLIError(f"--card {path}: cannot be read as UTF-8 text ({exc})") from None
    if yaml_file:
        import yaml  # a requirement, imported only here (tests/test_security.py: safe_load only)

        try:
            card = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise CLIError(f"--card {path}: not valid YAML ({' '.join(str(exc).split())})") from None
    else:
        try:
            card = json.loads(text)
        except ValueError as exc:
            raise CLIError(f"--card {path}: not valid JSON ({exc}); a card is an object such as {example} "
                           "(a .yaml or .yml file is read as YAML)") from None
    if card is None or card == {}:
        raise CLIError(f"--card {path}: the card is empty; give at least one field, e.g. {example} (the known "
                       f"fields: {list(CARD_FIELDS)})")
    try:
        return check_card(card)
    except (TypeError, ValueError) as exc:
        quote = " (in YAML, quote a value that is not text: version: '2')" if yaml_file else ""
        raise CLIError(f"--card {path}: {exc}{quote}") from None


def run_demo(args) -> int:
    import keras

    from .datasets import load_digits
    from .local.interpreter import HybridInterpreter

    quiet = args.quiet
    t0 = time.time()
    _log("[1/4] Loading scikit-learn's bundled handwritten digits (no download)...", quiet)
    (x_train, y_train), (x_test, y_test) = load_digits(image_size=16, random_state=args.seed)
    _log(f"      {len(x_train)} training and {len(x_test)} test images of 16x16 pixels, 10 classes.", quiet)

    _log(f"[2/4] Training a small CNN for {args.epochs} epochs...", quiet)
    keras.utils.set_random_seed(args.seed)
    model = demo_model()
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=32, verbose=0 if quiet else 2)

    _log("[3/4] Fitting one probe per conv block (local interpretability)...", quiet)
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    interp = HybridInterpreter(model, class_names=names)
    interp.fit_probes(x_train, y_train, verbose=0)
    table = interp.evaluate_layers(x_test, y_test)
    _print_tables(interp, table)
    e = interp.explain(x_test[0])
    print(
        f"\nOne test image (label {names[y_test[0]]}): the model predicts {names[e.model_class]}; the probes "
        f"agree from block {e.decision_block!r} on."
    )
    if args.out:
        _log("\n[4/4] Global analysis (filters) and the report...", quiet)
        return _gate(_write_report(interp, x_test, y_test, args.out, quiet, args.seed, args.command_line,
                                   args.thresholds, card=args.card), args.fail_on)
    _log(f"\nDone in {time.time() - t0:.0f} s.", quiet)
    return 0


def _open_npz(path, flag, example):
    """The .npz archive at ``path`` (numeric arrays only: no pickle); one-line errors naming ``flag``."""
    import numpy as np

    if not os.path.isfile(path):
        raise CLIError(f"{flag}: no such file: {path}")
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise CLIError(f"{flag}: {path} is not a readable .npz file without pickled objects ({exc})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise CLIError(f"{flag}: expected an .npz archive of named arrays ({example}); "
                       f"{path} holds a single array of shape {getattr(data, 'shape', None)}")
    return data


def _read_array(data, key, path, flag):
    """Array ``key`` of an opened archive; one-line errors naming ``flag`` (object arrays need pickle: refused)."""
    try:
        return data[key]
    except ValueError as exc:  # object arrays need pickle, which is refused
        raise CLIError(
            f"{flag}: array {key!r} of {path} holds Python objects, which only pickle can load; refused "
            f"(np.load with allow_pickle=False, so the file cannot run code). Save numeric arrays ({exc})"
        ) from None
    except (OSError, EOFError, KeyError) as exc:
        raise CLIError(
            f"{flag}: could not read array {key!r} of {path}: the file is truncated or corrupt ({exc})"
        ) from None


def _load_npz(path, x_key, y_key):
    data = _open_npz(path, "--data", "np.savez(path, x=..., y=...)")
    keys = list(data.files)
    if x_key not in keys:
        raise CLIError(f"--x-key: {path} has no array {x_key!r}; it has {keys}")
    x = _read_array(data, x_key, path, "--x-key")
    y = None
    if y_key is not None:
        if y_key not in keys:
            raise CLIError(f"--y-key: {path} has no array {y_key!r}; it has {keys} (use --y-key '' for unlabeled data)")
        y = _read_array(data, y_key, path, "--y-key")
        if y.ndim == 0 or x.ndim == 0 or len(y) != len(x):
            raise CLIError(
                f"--y-key: array {y_key!r} has shape {y.shape} but --x-key array {x_key!r} has shape {x.shape}; "
                "they need one label per image (the same first dimension)"
            )
    return x, y


def _npz_class_names(path) -> list[str] | None:
    """The ``class_names`` array of the .npz at ``path`` (1-D, text or numbers), or None when it has none."""
    data = _open_npz(path, "--data", "np.savez(path, x=..., y=...)")
    if "class_names" not in data.files:
        return None
    names = _read_array(data, "class_names", path, "--data")
    if names.ndim != 1 or names.dtype.kind not in "USiu":
        raise CLIError(f"--data: array 'class_names' of {path} must be a 1-D array of names (text, e.g. "
                       f"np.array(['cat', 'dog'])); received dtype {names.dtype} and shape {names.shape}")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names.tolist()]


def _npz_arrays(path, flag) -> dict:
    """Every array of the .npz at ``path`` by name (numeric arrays only: no pickle); one-line errors naming ``flag``."""
    data = _open_npz(path, flag, "np.savez(path, name=array, ...)")
    out = {key: _read_array(data, key, path, flag) for key in data.files}
    if not out:
        raise CLIError(f"{flag}: {path} holds no array")
    return out


def _load_concepts(args, x) -> dict:
    """``build_report``'s concept arguments from --concepts (one array per concept, named by its key),
    --concept-random (one array), --concept-controls and --n-random; {} without --concepts."""
    if not args.concepts:
        for flag, value in (("--concept-random", args.concept_random), ("--concept-controls", args.concept_controls)):
            if value:
                raise CLIError(f"{flag} is given but --concepts is not: pass the concepts' examples as --concepts "
                               "concepts.npz (one array per concept)")
        return {}
    if args.n_random < 3:
        raise CLIError(f"--n-random must be at least 3 (the random sets' spread); received {args.n_random}")
    concepts = _npz_arrays(args.concepts, "--concepts")
    arrays = [("--concepts", f"array {k!r}", a) for k, a in concepts.items()]
    random = None
    if args.concept_random:
        pool = _npz_arrays(args.concept_random, "--concept-random")
        if len(pool) != 1:
            raise CLIError(f"--concept-random: {args.concept_random} must hold one array (the random inputs); it "
                           f"holds {len(pool)}: {list(pool)}")
        key, random = next(iter(pool.items()))
        arrays.append(("--concept-random", f"array {key!r}", random))
    for flag, what, a in arrays:
        if a.ndim != x.ndim or a.shape[1:] != x.shape[1:]:
            raise CLIError(f"{flag}: {what} has shape {a.shape}, but the model's inputs (--x-key array "
                           f"{args.x_key!r}) have shape {x.shape}: the examples need the inputs' sample shape "
                           f"{x.shape[1:]}")
    return {"concepts": concepts, "concept_random": random, "concept_controls": args.concept_controls or None,
            "concept_options": {"n_random": args.n_random}}


def split_train_test(labels, n, test_fraction, seed, *, label_flag="--y-key"):
    """Indices ``(train, test)`` of a shuffled train/test split of ``n`` samples.

    With ``labels`` (class indices of shape (n,)) the split is stratified:
    both parts keep the class proportions, so that data sorted by class
    still gives probes that see every class. ``labels=None`` (unlabeled
    data, or a model that is not a classifier: multi-label, regression,
    segmentation) only shuffles. ``test_fraction`` of the samples, rounded up as
    scikit-learn does, are held out; ``seed`` makes the split repeatable.
    Raises :class:`CLIError` (one line) for a single class, a class with
    fewer than two samples, and parts too small to hold every class.
    """
    import numpy as np
    from sklearn.model_selection import train_test_split

    n_test = int(math.ceil(test_fraction * n))
    n_train = n - n_test
    if n_test < 1 or n_train < 1:
        raise CLIError(f"--data: {n} samples are too few to hold out a test part (--test-fraction {test_fraction})")
    index = np.arange(n)
    if labels is None:
        train, test = train_test_split(index, test_size=n_test, random_state=seed, shuffle=True)
        return train, test
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        raise CLIError(
            f"{label_flag}: all {n} samples have the same label ({classes[0]}); the probes need at least "
            "two classes to learn to tell apart"
        )
    few = [(c, m) for c, m in zip(classes.tolist(), counts.tolist()) if m < 2]
    if few:
        which = ", ".join(f"class {c} has {m} sample" for c, m in few[:10]) + (" ..." if len(few) > 10 else "")
        raise CLIError(
            f"{label_flag}: too few samples to stratify the train/test split: {which} (each class needs at least 2, "
            "one to fit the probes and one to evaluate them); add samples of it, or drop it from the data"
        )
    k = len(classes)
    if n_test < k:
        least = math.ceil(1000 * k / n) / 1000
        raise CLIError(
            f"--test-fraction {test_fraction} holds out {n_test} of {n} samples, fewer than the {k} classes, so the "
            f"test part cannot hold every class; use at least {least:g}"
        )
    if n_train < k:
        most = math.floor(1000 * (n - k) / n) / 1000
        raise CLIError(
            f"--test-fraction {test_fraction} leaves {n_train} of {n} samples to fit the probes, fewer than the {k} "
            f"classes, so the fitting part cannot hold every class; use at most {most:g}"
        )
    train, test = train_test_split(index, test_size=n_test, random_state=seed, stratify=labels)
    for part, idx in (("fitting", train), ("test", test)):
        missing = np.setdiff1d(classes, labels[idx])
        if len(missing):
            warnings.warn(
                f"The stratified split left class(es) {missing[:10].tolist()} out of the {part} part (too few "
                "samples of them for their share to round up to one)",
                UserWarning, stacklevel=2,
            )
    return train, test


def run_analyze(args) -> int:
    from .core.data import to_class_indices
    from .core.saving import UnsafeFileError, load_keras_file
    from .local.interpreter import HybridInterpreter

    if not os.path.isfile(args.model):
        raise CLIError(f"MODEL: no such file: {args.model}")
    if not args.model.endswith(".keras"):
        raise CLIError(f"MODEL: expected a Keras v3 .keras file; received {args.model}")
    y_key = args.y_key or None
    x, y = _load_npz(args.data, args.x_key, y_key)
    concepts = _load_concepts(args, x)
    try:
        model = load_keras_file(args.model, safe_mode=not args.unsafe, argname="MODEL")
    except UnsafeFileError:
        raise CLIError(
            f"MODEL: {args.model} needs unsafe deserialization (it contains a Lambda layer or "
            "other arbitrary code), which could execute code. Only if you trust its source, "
            "rerun with --unsafe."
        ) from None
    except (TypeError, ValueError) as exc:
        raise CLIError(str(exc).replace("`MODEL`", "MODEL")) from None
    task, output = args.task, _output_arg(args.output)
    saved_names = None
    if isinstance(model, HybridInterpreter):
        saved_names = list(model.class_names)
        _log(f"{args.model} holds a saved HybridInterpreter: analysing its model {model.wrapped_model.name!r} "
             "(the probes are fitted again).", args.quiet)
        if not args.blocks:
            args.blocks = list(model.block_names)
        if task == "auto":  # the saved interpreter knows its task
            task = model.task
        model = model.wrapped_model
    blocks = args.blocks if args.blocks else "auto"
    # The classes' names: --class-names, else the .npz's class_names array, else a saved interpreter's.
    names, names_from = args.class_names, "--class-names"
    if names is None:
        names, names_from = _npz_class_names(args.data), f"the array 'class_names' of {args.data}"
    if names is None and saved_names is not None:
        names, names_from = saved_names, args.model
    try:
        try:
            interp = HybridInterpreter(model, blocks=blocks, task=task, output=output, class_names=names)
        except (TypeError, ValueError) as exc:
            if names is None or "`class_names`" not in str(exc):
                raise
            raise CLIError(str(exc).replace("`class_names`", names_from)) from None
        # Check the whole arrays against the model before splitting them, so that
        # errors name the .npz arrays and their full shapes.
        interp._stream(x, y)
        classes = interp.reader.is_classification
        if y is not None and not classes:  # the task's targets: 0/1 labels, finite values, masks (checked)
            interp.reader.targets(y, argname="y")
        labels = None if y is None or not classes else to_class_indices(y, interp.num_classes, argname="y")
        train, test = split_train_test(labels, len(x), args.test_fraction, args.seed,
                                       label_flag=f"--y-key array {args.y_key!r}")
        if y is None:
            _log("No labels (--y-key ''): the probes learn the model's own predictions.", args.quiet)
        if not classes:
            _log(f"Task: {interp.task} ({interp.num_classes} "
                 f"{ {'multilabel': 'labels', 'regression': 'targets'}.get(interp.task, 'classes') }).", args.quiet)
        how = "stratified by label, shuffled" if labels is not None else "shuffled"
        _log(f"Fitting probes on {len(train)} samples, evaluating on {len(test)} ({how}, --seed {args.seed})...",
             args.quiet)
        y_train, y_test = (None, None) if y is None else (y[train], y[test])
        x_train, x_test = x[train], x[test]
        del x
        interp.fit_probes(x_train, y_train, verbose=0)
        table = interp.evaluate_layers(x_test, y_test)
        _print_tables(interp, table)
        report = _write_report(interp, x_test, y_test, args.out, args.quiet, args.seed, args.command_line,
                               args.thresholds, concepts=concepts, card=args.card)
    except (TypeError, ValueError) as exc:
        msg = str(exc).replace("`x`", f"--x-key array {args.x_key!r}")
        # The interpreter's `task` / `output` (and task='...' advice) are this command's --task / --output.
        msg = re.sub(r"`(task|output)`(=?)", lambda m: f"--{m.group(1)}" + (" " if m.group(2) else ""), msg)
        msg = re.sub(r"(?<![-\w])(task|output)=", r"--\1 ", msg)
        msg = re.sub(r"`concepts\[('[^']*')\]`", r"--concepts array \1", msg)
        for name, flag in (("concept_random", "--concept-random"), ("random", "--concept-random"),
                           ("concept_controls", "--concept-controls"), ("n_random", "--n-random")):
            msg = msg.replace(f"`{name}`", flag)
        raise CLIError(msg.replace("`y`", f"--y-key array {args.y_key!r}")) from None
    return _gate(report, args.fail_on)


def _output_arg(value):
    """``--output``: an output's name, or its index (digits)."""
    if value is None:
        return "auto"
    return int(value) if value.lstrip("-").isdigit() else value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keras-hybrid-interp",
        description="Hybrid CNN interpreter for Keras 3: layer-wise probes and filter analysis.",
    )
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser("demo", help="train a small CNN on the bundled digits, interpret it, write the report")
    demo.add_argument("--out", default="hybrid-interp-demo",
                      help="folder for the report (default: ./hybrid-interp-demo; '' to skip the report)")
    demo.add_argument("--epochs", type=int, default=15, help="training epochs of the demo CNN (default 15)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--quiet", action="store_true", help="print only the results")
    _gate_arguments(demo)
    _card_argument(demo)

    ana = sub.add_parser("analyze", help="interpret your own .keras model on data from an .npz file")
    ana.add_argument("model", help="a .keras model file, or an interpreter saved with interp.save() "
                     "(loaded with safe_mode=True)")
    ana.add_argument("--data", required=True, help=".npz file with the images (and labels)")
    ana.add_argument("--x-key", default="x", help="name of the image array in the .npz (default x)")
    ana.add_argument("--y-key", default="y", help="name of the label array (default y; '' for none)")
    ana.add_argument("--blocks", nargs="+", default=None, help="layer names of the blocks (default: automatic)")
    ana.add_argument("--class-names", nargs="+", default=None, metavar="NAME",
                     help="the classes' (or labels', or targets') names, in output order; default: the .npz's "
                          "'class_names' array if it has one, else '0', '1', ...")
    ana.add_argument("--task", default="auto",
                     help="what the model's output means: auto (default: softmax -> multiclass, one sigmoid -> binary, "
                     "K sigmoids -> multilabel, a spatial map -> segmentation), multiclass, binary, multilabel, "
                     "regression or segmentation (linear units need it). The .npz's y has the task's shape: (N,) "
                     "class indices or (N, K) one-hot; (N, K) 0/1 labels; (N,) or (N, K) floats; (N, H, W) masks")
    ana.add_argument("--output", default=None,
                     help="for a model with several outputs: the name or index of the one to interpret")
    ana.add_argument("--out", required=True, help="folder for the report")
    ana.add_argument("--test-fraction", type=float, default=0.3,
                     help="fraction of the samples held out for evaluation and the report, drawn at random "
                     "(stratified by label for a classifier, so every class is in both parts; shuffled only for the "
                     "other tasks) (default 0.3)")
    ana.add_argument("--seed", type=int, default=0,
                     help="random seed of the train/test split and the report's permutations (default 0)")
    ana.add_argument("--concepts", default=None, metavar="NPZ",
                     help="an .npz with one array per human concept (its key is the concept's name; at least 10 "
                     "example inputs each, of the model's input shape): adds the report's Concepts section, TCAV with "
                     "significance on the test part")
    ana.add_argument("--concept-random", default=None, metavar="NPZ",
                     help="an .npz with one array of random inputs, the pool the concepts' random sets are drawn "
                     "from (default: the test part)")
    ana.add_argument("--concept-controls", nargs="+", default=None, metavar="NAME",
                     help="the concepts of --concepts that are negative controls (should not matter), shown beside "
                     "the others (default: a random control drawn from the random pool)")
    ana.add_argument("--n-random", type=int, default=20,
                     help="random sets per concept, hence CAVs per concept and block (default 20; fewer than 10 is "
                     "warned about)")
    ana.add_argument("--unsafe", action="store_true",
                     help="allow models that need unsafe deserialization (Lambda layers); only for trusted files")
    ana.add_argument("--quiet", action="store_true", help="print only the results")
    _gate_arguments(ana)
    _card_argument(ana)
    return parser


def _card_argument(parser) -> None:
    parser.add_argument("--card", default=None, metavar="FILE",
                        help="the model card: a JSON file (or YAML, for .yaml/.yml) of fields shown at the top of the "
                        "report and stored in report.json: intended_use, limitations, owners (a list), data, and any "
                        'other, e.g. {"intended_use": "screening", "owners": ["ml-team"]}')


def _gate_arguments(parser) -> None:
    parser.add_argument("--fail-on", choices=["warn", "fail"], default=None,
                        help="exit with status 1 when a check of the report (dead filters, probe convergence, drift, "
                        "noise, a collapsed model, missing classes, ...) reaches this status: a linter for a CI "
                        "pipeline (default: always 0 once the report is written)")
    parser.add_argument("--thresholds", default=None, metavar="FILE",
                        help='a JSON file overriding the checks\' thresholds, e.g. {"dead_filters": {"warn": 0.2, '
                        '"fail": 0.6}} (the checks and their defaults: docs/definitions/report.md)')


def _import_keras() -> None:
    """Import Keras, or say in one line which backend package is missing (TensorFlow is an extra)."""
    try:
        import keras  # noqa: F401
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing not in ("tensorflow", "jax", "torch"):
            raise
        raise CLIError(
            f"Keras' backend is {missing!r} (KERAS_BACKEND or ~/.keras/keras.json), which is not installed. "
            f"Install it (pip install 'keras-hybrid-interp[{missing}]') or choose an installed backend, "
            "e.g. KERAS_BACKEND=jax."
        ) from None


def main(argv=None) -> int:
    # Before anything imports TensorFlow (the package imports it lazily, on first use).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("MPLBACKEND", "Agg")
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["demo"] + argv
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["keras-hybrid-interp"] + argv)  # the report's provenance records it
    try:
        args.thresholds = _load_thresholds(args.thresholds)
        args.card = _load_card(args.card)
        _import_keras()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            if args.command == "demo":
                if args.epochs < 1:
                    raise CLIError("--epochs must be at least 1")
                status = run_demo(args)
            else:
                if not 0.0 < args.test_fraction < 1.0:
                    raise CLIError(f"--test-fraction must be between 0 and 1; received {args.test_fraction}")
                status = run_analyze(args)
    except CLIError as exc:
        print(f"keras-hybrid-interp {args.command}: error: {exc}", file=sys.stderr)
        return 2
    from .core.health import InterpretationWarning

    notes = []  # the package's findings; a framework's warnings (Keras, TensorFlow, NumPy) are not ours to print
    for w in caught:
        if issubclass(w.category, InterpretationWarning) and str(w.message) not in notes:
            notes.append(str(w.message))
    if notes:
        print("\nNotes:")
        for n in notes:
            print(f"  - {n}")
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
