"""Every bad input gets a TypeError or ValueError raised by our code, with a message that
names the argument, what was expected, what was received and what is available.

No ``assert``, no raw backend traceback, no silently wrong result. The API cases run in
process; the command-line cases run ``python -m keras_hybrid_interp``'s ``__main__`` in
one subprocess (``runpy``, as ``-m`` does) so that TensorFlow is imported once for all of
them. ``tests/test_report_cli.py`` covers the other CLI errors (missing files, missing
keys, a wrong sample shape, an unknown block, ``--epochs 0``, a Lambda layer).
"""

import contextlib
import json
import os
import re
import subprocess
import sys
import traceback
import types
import zipfile

import numpy as np
import pytest

import keras
import tensorflow as tf
from keras import layers

from keras_hybrid_interp import GlobalAnalyzer, HybridInterpreter
from keras_hybrid_interp.datasets import load_digits, make_synthetic

from models import Subclassed, edit_keras_config, small_cnn

PKG = os.path.dirname(os.path.abspath(__import__("keras_hybrid_interp").__file__))


@contextlib.contextmanager
def raises_ours(exc_type, match, *more):
    """``pytest.raises(exc_type, match=match)``, then: every pattern of ``more`` is in the
    message, and the exception was raised by keras_hybrid_interp (its last frame is ours)."""
    with pytest.raises(exc_type, match=match) as info:
        yield info
    msg = str(info.value)
    for pattern in more:
        assert re.search(pattern, msg), f"{pattern!r} not found in: {msg}"
    last = traceback.extract_tb(info.value.__traceback__)[-1]
    assert os.path.abspath(last.filename).startswith(PKG + os.sep), f"raised outside the package: {last}"


def dense_only():
    inp = keras.Input((16, 16, 1))
    h = layers.Dense(4, activation="relu")(layers.Flatten()(inp))
    return keras.Model(inp, layers.Dense(3, activation="softmax")(h), name="mlp")


def regression(units=1):
    inp = keras.Input((16, 16, 1))
    h = layers.Conv2D(4, 3, activation="relu", name="conv")(inp)
    h = layers.GlobalAveragePooling2D()(h)
    return keras.Model(inp, layers.Dense(units, name="regressor")(h), name="regression")


def multilabel(labels=3):
    inp = keras.Input((16, 16, 1))
    h = layers.Conv2D(4, 3, activation="relu", name="conv")(inp)
    h = layers.GlobalAveragePooling2D()(h)
    return keras.Model(inp, layers.Dense(labels, activation="sigmoid", name="findings")(h), name="multilabel")


def segmenter(classes=3):
    inp = keras.Input((16, 16, 1))
    h = layers.Conv2D(4, 3, padding="same", activation="relu", name="enc")(inp)
    return keras.Model(inp, layers.Conv2D(classes, 1, activation="softmax", name="mask")(h), name="segmenter")


def sigmoid_masks(labels=3):
    inp = keras.Input((16, 16, 1))
    h = layers.Conv2D(4, 3, padding="same", activation="relu", name="enc")(inp)
    return keras.Model(inp, layers.Conv2D(labels, 1, activation="sigmoid", name="masks")(h), name="sigmoid_masks")


def two_heads():
    inp = keras.Input((16, 16, 1))
    h = layers.GlobalAveragePooling2D()(layers.Conv2D(4, 3, activation="relu", name="conv")(inp))
    return keras.Model(inp, [layers.Dense(3, activation="softmax", name="diagnosis")(h),
                             layers.Dense(1, name="severity")(h)], name="two_heads")


def channels_first():
    inp = keras.Input((1, 16, 16))
    h = layers.Conv2D(4, 3, data_format="channels_first", name="conv_cf")(inp)
    h = layers.GlobalAveragePooling2D(data_format="channels_first")(h)
    return keras.Model(inp, layers.Dense(3, activation="softmax")(h), name="cf")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.random((40, 16, 16, 1), dtype=np.float32)
    y = np.arange(40) % 3
    model = small_cnn(classes=3)
    interp = HybridInterpreter(model)
    interp.fit_probes(x, y, verbose=0)
    interp(x[:1])  # built, so that save() stores every weight
    d = tmp_path_factory.mktemp("bad_files")
    model.save(d / "model.keras")
    interp.save(d / "interp.keras")
    raw = (d / "model.keras").read_bytes()
    (d / "truncated.keras").write_bytes(raw[: len(raw) // 2])
    with zipfile.ZipFile(d / "interp.keras") as z:
        items = {n: z.read(n) for n in z.namelist()}
    items["model.weights.h5"] = items["model.weights.h5"][:300]
    with zipfile.ZipFile(d / "bad_weights.keras", "w") as z:
        for n, b in items.items():
            z.writestr(n, b)
    (d / "model.keras.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    cli = start_cli_cases(d)
    yield types.SimpleNamespace(x=x, y=y, model=model, interp=interp, ga=GlobalAnalyzer(model), dir=d, cli=cli)
    cli.stop()


def ds(*arrays, batch=8):
    return tf.data.Dataset.from_tensor_slices(arrays if len(arrays) > 1 else arrays[0]).batch(batch)


def with_nan(x, value=np.nan, at=(25, 3, 4, 0)):
    x = x.copy()
    x[at] = value
    return x


class Endless(keras.utils.PyDataset):
    """A PyDataset without a length (``num_batches`` None): it never ends."""

    def __init__(self, x, y):
        super().__init__()
        self.x, self.y = x, y

    @property
    def num_batches(self):
        return None

    def __getitem__(self, i):
        j = (8 * i) % len(self.x)
        return self.x[j:j + 8], self.y[j:j + 8]


class HalfLabelled(keras.utils.PyDataset):
    """Labels in the first batch only."""

    def __init__(self, x, y):
        super().__init__()
        self.x, self.y = x, y

    def __len__(self):
        return 2

    def __getitem__(self, i):
        return (self.x[:16], self.y[:16]) if i == 0 else (self.x[16:32],)


LAYERS4D = r"\['conv1', 'pool1', 'conv2', 'pool2', 'conv3'\]"

# id, call(env), exception, patterns: argument + expected (match), then received / available.
CASES = [
    # --- shapes ---------------------------------------------------------------
    ("rank_missing_channel_axis", lambda e: e.interp.fit_probes(e.x[..., 0], e.y, verbose=0), ValueError,
     [r"`x` must have shape \(batch, 16, 16, 1\) \(rank 4\)", r"received shape \(40, 16, 16\) \(rank 3\)",
      r"x\[\.\.\., None\]"]),
    ("rank_unbatched_dataset", lambda e: e.ga.filter_correlation(tf.data.Dataset.from_tensor_slices(e.x), block="conv3"),
     ValueError, [r"`x` \(batch 0\) must have shape \(batch, 16, 16, 1\)", r"received shape \(16, 16, 1\)",
                  r"\.batch\(32\)"]),
    ("wrong_channel_count", lambda e: e.ga.filter_correlation(np.repeat(e.x, 3, axis=-1), block="conv3"), ValueError,
     [r"`x` has sample shape \(16, 16, 3\)", r"model expects \(16, 16, 1\)"]),
    ("channels_first_data", lambda e: e.interp.evaluate_layers(np.transpose(e.x, (0, 3, 1, 2)), e.y), ValueError,
     [r"`x` has sample shape \(1, 16, 16\)", r"expects \(16, 16, 1\)", r"channels_first",
      r"np\.transpose\(x, \(0, 2, 3, 1\)\)"]),
    ("explain_two_images", lambda e: e.interp.explain(e.x[:2]), ValueError,
     [r"`x` must be one input of shape \(16, 16, 1\)", r"received shape \(2, 16, 16, 1\)", r"layer_predictions"]),
    # --- labels ---------------------------------------------------------------
    ("more_labels_than_samples", lambda e: e.interp.fit_probes(e.x, np.arange(41) % 3, verbose=0), ValueError,
     [r"`y` has 41 labels but `x` has 40 samples", r"same length"]),
    ("fewer_labels_than_samples", lambda e: e.interp.evaluate_layers(e.x, e.y[:30]), ValueError,
     [r"`y` has 30 labels but `x` has 40 samples"]),
    ("labels_out_of_range", lambda e: e.ga.filter_importance(e.x, e.y + 1, block="conv3", n_repeats=1), ValueError,
     [r"`y` has labels outside 0\.\.2", r"model has 3 classes", r"found \[3\]"]),
    ("negative_labels", lambda e: e.ga.filter_class_association(e.x, e.y - 1, block="conv3"), ValueError,
     [r"`y` has labels outside 0\.\.2", r"found \[-1\]"]),
    ("dataset_labels_out_of_range", lambda e: e.interp.evaluate_layers(ds(e.x, e.y + 5)), ValueError,
     [r"`y \(the labels yielded by x\)` has labels outside 0\.\.2", r"found \[5, 6, 7\]"]),
    ("one_hot_wrong_width", lambda e: e.interp.fit_probes(e.x, np.eye(4)[e.y], verbose=0), ValueError,
     [r"`y` is one-hot with 4 columns", r"model has 3 classes", r"expected shape \(n, 3\)"]),
    ("fractional_labels", lambda e: e.interp.fit_probes(e.x, e.y + 0.5, verbose=0), ValueError,
     [r"`y` holds non-integer values", r"integers 0\.\.K-1 or one-hot"]),
    ("labels_in_some_batches_only", lambda e: e.ga.filter_importance(HalfLabelled(e.x, e.y), None, block="conv3"),
     ValueError, [r"`x` yields labels for some batches but not for others", r"label every batch or none"]),
    ("x_and_y_as_one_tuple", lambda e: e.ga.filter_correlation((e.x, e.y), block="conv3"), TypeError,
     [r"`x` must be a NumPy array", r"received a tuple of 2 items", r"\(40, 16, 16, 1\), \(40,\)",
      r"separate arguments"]),
    # --- values ---------------------------------------------------------------
    ("nan_in_inputs", lambda e: e.ga.filter_correlation(with_nan(e.x), block="conv3"), ValueError,
     [r"`x` contains 1 NaN or infinite values", r"clean or impute"]),
    ("inf_in_one_image", lambda e: e.interp.explain(with_nan(e.x, np.inf)[25]), ValueError,
     [r"`x` contains 1 NaN or infinite"]),
    ("nan_in_a_later_dataset_batch", lambda e: e.ga.layer_similarity(ds(with_nan(e.x))), ValueError,
     [r"`x` \(batch 3\) contains 1 NaN"]),
    # --- empty and too small --------------------------------------------------
    ("empty_array", lambda e: e.interp.fit_probes(e.x[:0], e.y[:0], verbose=0), ValueError,
     [r"`x` is empty: received 0 samples"]),
    ("empty_tf_data", lambda e: e.ga.filter_correlation(ds(e.x[:0]), block="conv3"), ValueError,
     [r"`x` is empty: the tf\.data yielded no samples"]),
    ("empty_for_importance", lambda e: e.ga.filter_importance(e.x[:0], e.y[:0], block="conv3"), ValueError,
     [r"`x` is empty: received 0 samples"]),
    ("one_sample_permutation", lambda e: e.ga.filter_importance(e.x[:1], e.y[:1], block="conv3"), ValueError,
     [r"Permutation importance shuffles across samples and needs at least 2 samples; `x` has 1"]),
    ("one_sample_dataset_permutation",
     lambda e: e.ga.filter_importance(ds(e.x[:1], e.y[:1]), None, block="conv3"), ValueError,
     [r"needs at least 2 samples; `x` has 1"]),
    ("max_samples_zero", lambda e: e.interp.evaluate_layers(e.x, e.y, max_samples=0), ValueError,
     [r"`max_samples` must be a positive int or None; received 0"]),
    ("one_sample_probes", lambda e: e.interp.fit_probes(e.x[:1], e.y[:1], verbose=0), ValueError,
     [r"Probes need at least 2 training samples; received 1"]),
    # --- endless data ---------------------------------------------------------
    ("steps_zero", lambda e: e.interp.evaluate_layers(e.x, e.y, steps=0), ValueError,
     [r"`steps` must be a positive int or None; received 0"]),
    ("repeating_tf_data_without_steps", lambda e: e.interp.fit_probes(ds(e.x, e.y).repeat(), verbose=0), ValueError,
     [r"`x` is a tf\.data of infinite cardinality", r"Pass `steps=` \(number of batches\) or `max_samples=`"]),
    ("repeating_tf_data_for_importance",
     lambda e: e.ga.filter_importance(ds(e.x, e.y).repeat(), None, block="conv3", n_repeats=1), ValueError,
     [r"`x` is a tf\.data of infinite cardinality", r"`steps=`"]),
    ("endless_pydataset_without_steps", lambda e: e.ga.filter_correlation(Endless(e.x, e.y), block="conv3"), ValueError,
     [r"`x` is a PyDataset of infinite cardinality", r"`steps=`"]),
    # --- blocks and layers ----------------------------------------------------
    ("unknown_block_analyzer", lambda e: e.ga.filter_correlation(e.x, block="conv9"), ValueError,
     [r"`block`: no layer named 'conv9' in model 'small_cnn'", r"Closest names: \['conv3'",
      r"Layers with a feature-map output \(rank 3-5\): " + LAYERS4D]),
    ("unknown_block_interpreter", lambda e: HybridInterpreter(e.model, blocks=["pool1", "nope"]), ValueError,
     [r"`blocks`: no layer named 'nope'", LAYERS4D]),
    ("unknown_probe_block", lambda e: e.interp.probe_model(block="conv1"), ValueError,
     [r"`block` must be one of the interpreter's blocks \['pool1', 'pool2', 'conv3'\]", r"received 'conv1'"]),
    ("dense_layer_as_block", lambda e: e.ga.filter_importance(e.x, e.y, block="head"), ValueError,
     [r"`block`: layer 'head' has output shape \(None, 3\) \(rank 2\), not a feature map", LAYERS4D]),
    ("block_index_out_of_range", lambda e: HybridInterpreter(e.model, blocks=[99]), ValueError,
     [r"`blocks`: layer index 99 is out of range", r"8 top-level layers \(indices 0\.\.7"]),
    ("pooling_grid_too_large", lambda e: HybridInterpreter(e.model, pooling=5), ValueError,
     [r"`pooling`=5 needs feature maps of at least 5x5", r"blocks \['pool2', 'conv3'\] are smaller"]),
    # --- models ---------------------------------------------------------------
    ("dense_only_model", lambda e: HybridInterpreter(dense_only()), ValueError,
     [r"Model 'mlp' has no convolution: it is a Dense-only", r"no filters to interpret",
      r"1-D, 2-D and 3-D convolutional blocks \(Conv1D, Conv2D, Conv3D"]),
    ("dense_only_model_analyzer", lambda e: GlobalAnalyzer(dense_only()), ValueError,
     [r"has no convolution:", r"1-D, 2-D and 3-D convolutional blocks"]),
    ("regression_model", lambda e: HybridInterpreter(regression()), ValueError,
     [r"`task`='auto' cannot tell what this output means: model 'regression' outputs shape \(None, 1\)",
      r"task='regression' for real values", r"task='multiclass' \(or 'binary' for one unit\)"]),
    ("regression_model_class_analysis", lambda e: GlobalAnalyzer(regression(3), blocks="conv").filter_class_association(
        e.x, e.y, block="conv"), ValueError,
     [r"filter_class_association reads the model output through its task",
      r"output shape \(None, 3\)", r"task='regression'", r"callable `scoring"]),
    ("regression_model_importance", lambda e: GlobalAnalyzer(regression(3), blocks="conv").filter_importance(e.x, e.y, block="conv"),
     ValueError, [r"filter_importance\(method='permutation', scoring='auto'\)", r"Pass task= to GlobalAnalyzer"]),
    ("subclassed_model", lambda e: HybridInterpreter(Subclassed()), TypeError,
     [r"`model` is a subclassed model \(Subclassed\)", r"Functional models", r"keras\.Model\(inputs, outputs\)"]),
    ("subclassed_model_analyzer", lambda e: GlobalAnalyzer(Subclassed()), TypeError,
     [r"subclassed model \(Subclassed\)"]),
    ("channels_first_model", lambda e: HybridInterpreter(channels_first()), ValueError,
     [r"data_format='channels_first' in \['conv_cf'", r"supports channels_last models"]),
    ("interpreter_of_interpreter", lambda e: HybridInterpreter(e.interp), TypeError,
     [r"`model` must be the classifier to interpret; received a HybridInterpreter \(wrapping 'small_cnn'\)",
      r"interp\.wrapped_model"]),
    ("not_a_model", lambda e: GlobalAnalyzer("model.keras"), TypeError,
     [r"`model` must be a keras\.Model", r"received an object of type builtins\.str"]),
    ("class_names_wrong_length", lambda e: HybridInterpreter(e.model, class_names=["cat", "dog"]), ValueError,
     [r"`class_names` has 2 names but the model has 3 classes"]),
    # --- options --------------------------------------------------------------
    ("n_repeats_zero", lambda e: e.ga.filter_importance(e.x, e.y, block="conv3", n_repeats=0), ValueError,
     [r"`n_repeats` must be a positive int; received 0"]),
    ("n_repeats_negative", lambda e: e.ga.filter_importance(e.x, e.y, block="conv3", n_repeats=-2), ValueError,
     [r"`n_repeats` must be a positive int; received -2"]),
    ("n_repeats_with_ablation", lambda e: e.ga.filter_importance(e.x, e.y, block="conv3", method="ablation", n_repeats=3),
     ValueError, [r"`n_repeats` applies to method='permutation' only; received n_repeats=3 with method='ablation'"]),
    ("bad_scoring", lambda e: e.ga.filter_importance(e.x, e.y, block="conv3", scoring="f1"), ValueError,
     [r"`scoring` must be 'auto' \(the task's default\), a named score", r"or a callable", r"received 'f1'"]),
    ("bad_method", lambda e: e.ga.filter_importance(e.x, e.y, block="conv3", method="shap"), ValueError,
     [r"`method` must be one of \['permutation', 'ablation', 'taylor'\]", r"received 'shap'"]),
    ("bad_statistic", lambda e: e.ga.filter_correlation(e.x, block="conv3", statistic="median"), ValueError,
     [r"`statistic` must be one of \['mean', 'max'\]", r"received 'median'"]),
    ("groups_out_of_range", lambda e: e.ga.filter_importance(e.x, e.y, block="conv3", groups=[[0, 99]]), ValueError,
     [r"`groups\[0\]` has filter indices outside 0\.\.15", r"\[99\]"]),
    ("C_negative", lambda e: e.interp.fit_probes(e.x, e.y, C=-0.1, verbose=0), ValueError,
     [r"`C` must be a positive float", r"LogisticRegression", r"received -0\.1"]),
    ("C_string", lambda e: e.interp.fit_probes(e.x, e.y, C="1", verbose=0), ValueError,
     [r"`C` must be a positive float", r"received '1'"]),
    ("verbose_bad", lambda e: e.interp.fit_probes(e.x, e.y, verbose=3), ValueError,
     [r"`verbose` must be 'auto', 0, 1 or 2; received 3"]),
    ("analyzer_batch_size", lambda e: GlobalAnalyzer(e.model, batch_size=0), ValueError,
     [r"`batch_size` must be a positive int; received 0"]),
    ("analyzer_output", lambda e: GlobalAnalyzer(e.model, output="probabilities"), ValueError,
     [r"`output` must be 'auto', the name or index of one of the model's outputs, or an output kind",
      r"received 'probabilities'", r"has outputs 0: "]),
    ("digits_image_size", lambda e: load_digits(image_size=4), ValueError,
     [r"`image_size` must be an int >= 8; received 4"]),
    ("synthetic_factor", lambda e: make_synthetic(10, factor="size"), ValueError,
     [r"`factor` must be one of \['colour', 'shape', 'texture'\]", r"received 'size'"]),
    # --- tasks: targets, task= against the output, output= ------------------------
    ("multilabel_y_as_class_indices", lambda e: HybridInterpreter(multilabel(), blocks="conv").fit_probes(e.x, e.y, verbose=0),
     ValueError, [r"`y` must be multi-label indicators of shape \(n, 3\)", r"received shape \(40,\)",
                  r"integer class indices", r"MultiLabelBinarizer"]),
    ("multilabel_y_not_binary", lambda e: HybridInterpreter(multilabel(), blocks="conv").fit_probes(
        e.x, np.full((40, 3), 0.7), verbose=0), ValueError,
     [r"`y` must hold only 0 and 1", r"\[0\.7\]"]),
    ("multilabel_y_wrong_width", lambda e: HybridInterpreter(multilabel(), blocks="conv").fit_probes(
        e.x, np.zeros((40, 5)), verbose=0), ValueError,
     [r"`y` must be multi-label indicators of shape \(n, 3\) for a model with 3 labels", r"received shape \(40, 5\)"]),
    ("regression_y_nan", lambda e: HybridInterpreter(regression(), blocks="conv", task="regression").fit_probes(
        e.x, np.where(np.arange(40) == 3, np.nan, 1.0), verbose=0), ValueError,
     [r"`y` holds 1 NaN or infinite regression targets", r"drop or impute"]),
    ("regression_y_wrong_width", lambda e: HybridInterpreter(regression(2), blocks="conv", task="regression").fit_probes(
        e.x, np.zeros((40, 3)), verbose=0), ValueError,
     [r"`y` must be regression targets of shape \(n, 2\)", r"received shape \(40, 3\)"]),
    ("regression_y_strings", lambda e: HybridInterpreter(regression(), blocks="conv", task="regression").fit_probes(
        e.x, np.array(["a"] * 40), verbose=0), TypeError,
     [r"`y` must hold numbers \(regression targets\); received dtype <U1"]),
    ("regression_y_from_dataset", lambda e: HybridInterpreter(regression(), blocks="conv", task="regression").fit_probes(
        tf.data.Dataset.from_tensor_slices((e.x, np.full(40, np.inf))).batch(8), verbose=0), ValueError,
     [r"`y \(the labels yielded by x\)` holds 8 NaN or infinite regression targets"]),
    ("masks_wrong_size", lambda e: GlobalAnalyzer(segmenter(), blocks="enc").filter_importance(
        e.x, np.zeros((40, 8, 8), int), block="enc"), ValueError,
     [r"`y` must be masks of shape \(n, 16, 16\) of class indices, or \(n, 16, 16, 3\) one-hot",
      r"received shape \(40, 8, 8\)"]),
    ("masks_wrong_class_count", lambda e: GlobalAnalyzer(segmenter(), blocks="enc").filter_importance(
        e.x, np.full((40, 16, 16), 5), block="enc"), ValueError,
     [r"`y` masks hold classes outside 0\.\.2 \(the model outputs 3 classes per position\)", r"\[5\]"]),
    ("masks_one_hot_wrong_channels", lambda e: GlobalAnalyzer(segmenter(), blocks="enc").filter_importance(
        e.x, np.eye(4)[np.zeros((40, 16, 16), int)], block="enc"), ValueError,
     [r"`y`: one-hot masks must have 3 channels \(the model's classes\)", r"received shape \(40, 16, 16, 4\)"]),
    ("task_regression_on_softmax", lambda e: HybridInterpreter(e.model, task="regression"), ValueError,
     [r"`task`='regression' was declared, but model 'small_cnn' outputs shape \(None, 3\) and ends in a softmax",
      r"probabilities, not regression targets"]),
    ("task_multilabel_on_softmax", lambda e: HybridInterpreter(e.model, task="multilabel"), ValueError,
     [r"`task`='multilabel' was declared, but .* ends in a softmax", r"labels exclusive"]),
    ("task_binary_on_sigmoid_units", lambda e: HybridInterpreter(multilabel(), task="binary"), ValueError,
     [r"`task`='binary' means one output unit", r"outputs shape \(None, 3\)", r"task='multilabel'"]),
    ("task_segmentation_on_vector", lambda e: HybridInterpreter(e.model, task="segmentation"), ValueError,
     [r"`task`='segmentation' needs a spatial output map", r"outputs shape \(None, 3\)"]),
    ("task_unknown", lambda e: HybridInterpreter(e.model, task="detection"), ValueError,
     [r"`task` must be 'auto' or one of \['multiclass', 'binary', 'multilabel', 'regression', 'segmentation'\]",
      r"received 'detection'"]),
    ("output_several_unnamed", lambda e: HybridInterpreter(two_heads()), ValueError,
     [r"Model 'two_heads' has 2 outputs \(0: 'diagnosis' \(None, 3\), 1: 'severity' \(None, 1\)\)",
      r"pass `output=` with the name or index"]),
    ("output_unknown_name", lambda e: HybridInterpreter(two_heads(), output="grade"), ValueError,
     [r"`output` must be 'auto', the name or index of one of the model's outputs", r"received 'grade'",
      r"'diagnosis'", r"'severity'"]),
    ("output_index_out_of_range", lambda e: HybridInterpreter(two_heads(), output=2), ValueError,
     [r"`output`=2 is not an output index of model 'two_heads'", r"1: 'severity'"]),
    ("output_kind_on_two_heads", lambda e: HybridInterpreter(two_heads(), output="logits"), ValueError,
     [r"`output`='logits' declares how a single output is read, but model 'two_heads' has 2 outputs",
      r"`task=`"]),
    ("scoring_of_another_task", lambda e: GlobalAnalyzer(multilabel(), blocks="conv").filter_importance(
        e.x, np.zeros((40, 3)), block="conv", scoring="r2"), ValueError,
     [r"`scoring` must be 'auto', one of \['average_precision', 'loss'\] \(the scores of a multilabel model\)",
      r"received 'r2'"]),
    ("label_names_wrong_length", lambda e: HybridInterpreter(multilabel(), blocks="conv", class_names=["a", "b"]), ValueError,
     [r"`class_names` has 2 names but the model has 3 labels"]),
    ("analyzer_keeps_a_refusal_that_is_not_ambiguity", lambda e: GlobalAnalyzer(sigmoid_masks()),
     ValueError, [r"`task`='segmentation' reads one class per position", r"multi-label", r"not supported yet"]),
    ("taylor_regression_without_targets", lambda e: GlobalAnalyzer(regression(), blocks="conv", task="regression").filter_importance(
        e.x, block="conv", method="taylor"), ValueError,
     [r"method='taylor' on a regression model needs targets `y`", r"zero gradient"]),
    # --- files ----------------------------------------------------------------
    ("load_a_plain_model", lambda e: HybridInterpreter.load(e.dir / "model.keras"), TypeError,
     [r"holds a Functional 'small_cnn', not a HybridInterpreter", r"interp\.save\(\)",
      r"HybridInterpreter\(keras\.models\.load_model\(filepath\)\)"]),
    ("load_truncated", lambda e: HybridInterpreter.load(e.dir / "truncated.keras"), ValueError,
     [r"`filepath`: .*truncated\.keras is not a valid \.keras archive", r"truncated or corrupt"]),
    ("load_corrupt_weights", lambda e: HybridInterpreter.load(e.dir / "bad_weights.keras"), ValueError,
     [r"`filepath`: could not load .*bad_weights\.keras: OSError", r"truncated file"]),
    ("load_missing", lambda e: HybridInterpreter.load(e.dir / "nope.keras"), ValueError,
     [r"`filepath`: no such file: .*nope\.keras"]),
    ("load_legacy_h5", lambda e: HybridInterpreter.load(e.dir / "model.keras.h5"), ValueError,
     [r"`filepath` must be a Keras v3 \.keras file", r"received '.*model\.keras\.h5'"]),
]


@pytest.mark.parametrize("call, exc, patterns", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_clearly(env, call, exc, patterns):
    with raises_ours(exc, patterns[0], *patterns[1:]):
        call(env)


def test_unlabelled_data_is_allowed_and_the_results_say_so(env):
    """No analysis strictly needs labels: each falls back to the model's own predictions
    (documented), and the result records where its labels came from."""
    x_only = ds(env.x)
    imp = env.ga.filter_importance(x_only, None, block="conv3", n_repeats=1, random_state=0)
    assert imp.label_source == "model predictions" and imp.baseline_score == 1.0
    assert "labels from model predictions" in repr(imp)
    assert env.ga.filter_importance(ds(env.x, env.y), None, block="conv3", n_repeats=1).label_source == "dataset"
    assert env.ga.filter_importance(env.x, env.y, block="conv3", n_repeats=1).label_source == "y"
    assoc = env.ga.filter_class_association(x_only, None, block="conv3")
    assert assoc.label_source == "model predictions"
    table = env.interp.evaluate_layers(x_only).to_frame()
    assert table["accuracy"].isna().all() and table["agreement"].notna().all()
    # A regression model is still analysable with a callable score and without classes:
    # the callable receives the raw outputs (no probabilities are made up).
    model = regression(1)
    reg = GlobalAnalyzer(model, blocks="conv")
    seen = []

    def neg_mse(y_true, y_pred):
        seen.append(y_pred)
        return -float(np.mean((y_pred[:, 0] - y_true) ** 2))

    out = reg.filter_importance(env.x, env.y.astype("float32"), block="conv", n_repeats=1, random_state=0, scoring=neg_mse)
    assert np.all(np.isfinite(out.importances))
    raw = model.predict(env.x, verbose=0).astype(np.float64)
    np.testing.assert_allclose(seen[0], raw, rtol=1e-5, atol=1e-6)
    assert out.baseline_score == pytest.approx(-np.mean((raw[:, 0] - env.y) ** 2), rel=1e-5)


# ----------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------
RUNNER = r"""
import contextlib, io, json, runpy, sys, traceback
results = []
for argv in json.loads(sys.argv[1]):
    err, out = io.StringIO(), io.StringIO()
    sys.argv = ["keras_hybrid_interp"] + argv
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            runpy.run_module("keras_hybrid_interp", run_name="__main__", alter_sys=True)
            rc = 0
        except SystemExit as exc:
            rc = exc.code
        except BaseException:
            traceback.print_exc()
            rc = 1
    results.append({"rc": rc, "stderr": err.getvalue(), "stdout": out.getvalue()})
print("RESULTS" + json.dumps(results))
"""


class CliBatch:
    """Starts ``python -m keras_hybrid_interp <argv>`` for each argv, in one background subprocess
    (it imports TensorFlow while the in-process tests run); :meth:`results` waits for it."""

    def __init__(self, argvs, cwd):
        root = os.path.dirname(PKG)
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", MPLBACKEND="Agg", PYTHONPATH=path)
        self.proc = subprocess.Popen([sys.executable, "-c", RUNNER, json.dumps(argvs)], cwd=cwd, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._results = None

    def results(self):
        if self._results is None:
            out, err = self.proc.communicate(timeout=600)
            line = [ln for ln in out.splitlines() if ln.startswith("RESULTS")]
            assert line, err[-3000:]
            self._results = json.loads(line[-1][len("RESULTS"):])
        return self._results

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


_tampered = edit_keras_config  # shared helper in tests/models.py


def _os_system(config):
    conv = config["config"]["layers"][1]
    conv.update(module="os", class_name="system", registered_name=None)
    conv["config"] = {"command": "touch PWNED"}


CLI_CASES = [
    # id, argv, parts of the one-line message
    ("npz_object_array", ["analyze", "model.keras", "--data", "objects.npz", "--x-key", "images", "--out", "o"],
     ["--x-key: array 'images' of objects.npz holds Python objects", "allow_pickle=False"]),
    ("npy_not_npz", ["analyze", "model.keras", "--data", "images.npy", "--out", "o"],
     ["--data: expected an .npz archive of named arrays", "single array of shape (30, 16, 16, 1)"]),
    ("truncated_model", ["analyze", "truncated.keras", "--data", "data.npz", "--out", "o"],
     ["MODEL: ", "truncated.keras is not a valid .keras archive", "truncated or corrupt"]),
    ("legacy_h5_model", ["analyze", "model.h5", "--data", "data.npz", "--out", "o"],
     ["MODEL: expected a Keras v3 .keras file; received model.h5"]),
    ("tampered_os_system", ["analyze", "os_system.keras", "--data", "data.npz", "--out", "o"],
     ["was refused", "names ['os.system']", "neither Keras objects nor registered"]),
    ("fewer_labels", ["analyze", "model.keras", "--data", "short_labels.npz", "--out", "o"],
     ["--y-key: array 'y' has shape (20,) but --x-key array 'x' has shape (30, 16, 16, 1)", "one label per image"]),
    ("labels_out_of_range", ["analyze", "model.keras", "--data", "bad_labels.npz", "--out", "o"],
     ["--y-key array 'y' has labels outside 0..2 (the model has 3 classes): found [7]"]),
    ("one_hot_wrong_width", ["analyze", "model.keras", "--data", "one_hot4.npz", "--out", "o"],
     ["--y-key array 'y' is one-hot with 4 columns, but the model has 3 classes"]),
    ("nan_images", ["analyze", "model.keras", "--data", "nan.npz", "--out", "o"],
     ["--x-key array 'x' contains 1 NaN or infinite values"]),
    ("missing_channel_axis", ["analyze", "model.keras", "--data", "rank3.npz", "--out", "o"],
     ["--x-key array 'x' must have shape (batch, 16, 16, 1) (rank 4)", "received shape (30, 16, 16)", "x[..., None]"]),
    ("dense_only_model", ["analyze", "mlp.keras", "--data", "data.npz", "--out", "o"],
     ["Model 'mlp' has no convolution:", "1-D, 2-D and 3-D convolutional blocks"]),
    ("regression_model", ["analyze", "regression.keras", "--data", "data.npz", "--out", "o"],
     ["--task 'auto' cannot tell what this output means", "--task 'regression' for real values"]),
    ("dense_layer_as_block", ["analyze", "model.keras", "--data", "data.npz", "--blocks", "head", "--out", "o"],
     ["`blocks`: layer 'head' has output shape (None, 3) (rank 2), not a feature map", "['conv1', 'pool1', 'conv2', 'pool2', 'conv3']"]),
    ("test_fraction_out_of_range", ["analyze", "model.keras", "--data", "data.npz", "--test-fraction", "1.5",
                                    "--out", "o"],
     ["--test-fraction must be between 0 and 1; received 1.5"]),
]


def start_cli_cases(d):
    """Writes the files of CLI_CASES into ``d`` and starts them (see CliBatch)."""
    rng = np.random.default_rng(1)
    x = rng.random((30, 16, 16, 1), dtype=np.float32)
    y = np.arange(30) % 3
    np.savez(d / "data.npz", x=x, y=y)
    np.savez(d / "objects.npz", images=np.array([{"a": 1}, None], dtype=object))
    np.save(d / "images.npy", x)
    np.savez(d / "short_labels.npz", x=x, y=y[:20])
    np.savez(d / "bad_labels.npz", x=x, y=np.where(np.arange(30) == 4, 7, y))
    np.savez(d / "one_hot4.npz", x=x, y=np.eye(4)[y])
    np.savez(d / "nan.npz", x=with_nan(x, at=(3, 0, 0, 0)), y=y)
    np.savez(d / "rank3.npz", x=x[..., 0], y=y)
    (d / "model.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    dense_only().save(d / "mlp.keras")
    regression().save(d / "regression.keras")
    _tampered(d / "model.keras", d / "os_system.keras", _os_system)
    return CliBatch([argv for _, argv, _ in CLI_CASES], cwd=d)


@pytest.fixture(scope="module")
def cli_results(env):
    results = env.cli.results()
    assert not (env.dir / "PWNED").exists()
    return dict(zip([c[0] for c in CLI_CASES], results))


@pytest.mark.parametrize("case", [c[0] for c in CLI_CASES])
def test_cli_bad_input_exits_2_with_a_clear_message(cli_results, case):
    parts = next(c[2] for c in CLI_CASES if c[0] == case)
    res = cli_results[case]
    assert res["rc"] == 2, res
    assert "Traceback" not in res["stderr"], res["stderr"]
    assert res["stderr"].startswith("keras-hybrid-interp analyze: error: "), res["stderr"]
    for part in parts:
        assert part in res["stderr"], f"{part!r} not in {res['stderr']!r}"
