"""The texts a report prints: each section's definition, per task, and the importance scores in words.

The README's *Definitions* and ``docs/definitions/`` state the same.
"""

from __future__ import annotations

__all__ = ["DEFINITIONS", "TASK_DEFINITIONS", "SCORE_WORDS", "task_definition", "importance_definition"]

#: The definitions printed in reports (the README states the same).
DEFINITIONS = {
    "blocks": (
        "A block end is a feature map: (steps x channels) for a 1-D CNN, (height x width x channels) "
        "for 2-D, (depth x height x width x channels) for 3-D. Automatic discovery keeps "
        "the cut points of the graph (tensors every input-to-output path passes through) that "
        "follow a convolution and are pooling outputs, close a multi-path region (Add, Concatenate, "
        "Multiply, or an operator such as x + y), or are the last feature map; each extends to the "
        "deepest cut point before the next convolution. Depth is the layer's position in the "
        "flattened graph."
    ),
    "layer_table": (
        "One linear softmax probe per block reads the block's globally pooled output. accuracy: "
        "fraction of samples whose probe top class equals the label. loss: mean cross-entropy "
        "against the labels (or the model's own distribution without labels). agreement: fraction "
        "whose probe top class equals the model's. chance: frequency of the most common label. "
        "The last row is the model itself. control_accuracy (when the probes were fitted with controls): "
        "mean accuracy of the same probe trained on the same samples with permuted labels (a control task, "
        "Hewitt and Liang 2019); selectivity: accuracy minus control accuracy, what the probe reads from "
        "the block beyond what it can memorise. <metric>_low and <metric>_high: percentile bootstrap "
        "interval over the evaluated samples (Poisson bootstrap), with the probes held fixed."
    ),
    "local": (
        "For one input: the probabilities each block's probe assigns to each class; the decision "
        "depth, the first block from which the probe's top class equals the model's class and "
        "stays equal; and class-evidence maps, the probe applied at every spatial position: a "
        "curve along time for a 1-D CNN, a map for 2-D, a volume for 3-D (for average pooling "
        "the mean of a map over positions is exactly the probe's logit)."
    ),
    "correlation": (
        "Each filter is summarized per sample by the spatial mean of its feature map; the matrix "
        "is the Pearson correlation of these summaries across samples, accumulated in one "
        "streaming pass in float64. Dead filters (constant over the data) have no correlation "
        "(NaN, hatched) and are listed. Redundancy is the mean |r| over pairs of live filters."
    ),
    "association": (
        "Point-biserial correlation between each filter's per-sample spatial mean and the "
        "indicator of each class: positive when the filter responds more strongly on that class "
        "than on the others. NaN for dead filters and for classes absent from the data."
    ),
    "importance": (
        "Permutation importance: the score (accuracy against the labels, or agreement with the "
        "model's own predictions without labels) on the unperturbed data minus the score after "
        "shuffling one filter's whole feature map across samples, leaving the other filters "
        "intact; repeated with different permutations (mean and standard deviation shown). "
        "Positive means the model relies on the filter."
    ),
    "atlas": (
        "Filter atlas: the activation of a sample for a filter is the maximum of the filter's feature map "
        "over spatial positions. Each row shows, for one of the most important filters, the samples with the "
        "largest activations (strongest first, ties by sample order), each cropped to the filter's receptive "
        "field at the position of the maximum: the input positions that can influence it, derived from the "
        "kernel sizes, strides, dilations, padding and pooling on the way to the block, clipped at the border."
    ),
    "similarity": (
        "Linear CKA (Kornblith et al., 2019) between the blocks' per-sample spatially averaged "
        "features: 1 means the two representations are the same up to rotation and scale, "
        "0 means unrelated. Estimated as in Nguyen, Raghu and Kornblith (2021): the unbiased HSIC "
        "(Song et al., 2012) averaged over minibatches of the report's batch size, in memory that "
        "does not grow with the number of channels."
    ),
}


#: The definitions of the sections that change with the task (multi-label, regression, segmentation);
#: a classifier's report prints :data:`DEFINITIONS`.
TASK_DEFINITIONS = {
    "layer_table": {
        "multilabel": (
            "One L2 logistic probe per label per block reads the block's globally pooled output (the model's "
            "labels are independent). auroc and average_precision: macro averages over the labels that are both "
            "present and absent in the data (scikit-learn's roc_auc_score and average_precision_score); f1: micro "
            "F1 of the label decisions at probability 0.5; hamming: fraction of wrong label decisions; loss: binary "
            "cross-entropy averaged over the labels; agreement: fraction of label decisions equal to the model's. "
            "Against the labels, or against the model's own label decisions without labels. The last row is the "
            "model itself. control_auroc and selectivity (with control probes): the AUROC of the same probe "
            "trained on permuted labels, and the AUROC minus it. <metric>_low and <metric>_high: percentile "
            "bootstrap interval over the evaluated samples (Poisson bootstrap), with the probes held fixed; the "
            "ranking metrics (AUROC, average precision) get none."
        ),
        "regression": (
            "One ridge probe per block reads the block's globally pooled output, standardized, all targets at "
            "once; its penalty is chosen by efficient leave-one-out (scikit-learn's RidgeCV). r2: coefficient of "
            "determination averaged uniformly over the targets (scikit-learn's r2_score); mae: mean absolute error; "
            "rmse: root mean squared error; loss: mean squared error (over samples and targets). Against the "
            "targets, or against the model's own predicted values without targets. The last row is the model "
            "itself. control_r2 and selectivity (with control probes): the R^2 of the same probe fitted on "
            "permuted targets, and the R^2 minus it. <metric>_low and <metric>_high: percentile bootstrap interval "
            "over the evaluated samples (Poisson bootstrap), with the probes held fixed."
        ),
        "segmentation": (
            "One per-position linear probe (a 1x1 convolution) per block predicts each position's class from the "
            "block's map; its mask is read at the model's output resolution by nearest neighbour (output position "
            "i reads block position floor(i * s / S)). mean_iou and dice: per-class IoU and Dice averaged over the "
            "classes present in the targets or the predictions (scikit-learn's jaccard_score and f1_score with "
            "average='macro' on the flattened pixels); pixel_accuracy: fraction of pixels of the right class; loss: "
            "mean pixel cross-entropy; agreement: fraction of pixels where the block's mask equals the model's. "
            "Against the masks, or against the model's own mask without masks. The last row is the model itself."
        ),
    },
    "local": {
        "multilabel": (
            "For one input: the probability each block's probe gives every label, then the model's (a label is "
            "predicted at probability 0.5, and several may be); the decision depth, the first block from which "
            "every label decision equals the model's and stays equal; and label-evidence maps, the probe applied "
            "at every spatial position (for average pooling the mean of a map over positions is exactly the "
            "probe's logit)."
        ),
        "regression": (
            "For one input: the value each block's probe predicts for every target, then the model's value "
            "(regression has no decision depth); and evidence maps, the probe applied at every spatial position "
            "(for average pooling the mean of a map over positions is exactly the probe's prediction)."
        ),
        "segmentation": (
            "For one input: the mask each block's per-position probe predicts at the model's output resolution, "
            "shallow to deep, then the model's mask, each with its mean IoU against the model's mask: the depth at "
            "which the model's mask forms."
        ),
    },
    "association": {
        "multilabel": (
            "Point-biserial correlation between each filter's per-sample spatial mean and each label's 0/1 "
            "indicator (a sample may carry several labels, so a filter may associate with several): positive when "
            "the filter responds more strongly on samples carrying the label. NaN for dead filters and for labels "
            "present in every sample or in none."
        ),
        "regression": (
            "Pearson correlation between each filter's per-sample spatial mean and each regression target across "
            "samples: positive when the filter responds more strongly on samples with larger values. NaN for dead "
            "filters and constant targets."
        ),
    },
}

#: The importance scores, in words (the importance section names the one it used).
SCORE_WORDS = {
    "accuracy": "accuracy against the labels, or agreement with the model's own predictions without labels",
    "loss": "the negative mean loss of the task against the labels, or against the model's own unperturbed "
            "outputs without labels",
    "average_precision": "the macro average precision of the model's label probabilities against the labels, or "
                         "against its own unperturbed label decisions without labels",
    "r2": "the R^2 of the model's predictions against the targets, or against its own unperturbed predictions "
          "without targets",
    "neg_mse": "the negative mean squared error of the model's predictions against the targets, or against its own "
               "unperturbed predictions without targets",
    "mean_iou": "the mean IoU of the model's mask against the masks, or against its own unperturbed mask without "
                "masks",
}


def task_definition(section: str, task: str) -> str:
    """The definition printed in ``section`` of a report on a ``task`` model (:data:`DEFINITIONS` for classifiers)."""
    base = {"layer_table": "layer_table", "local": "local", "association": "association"}[section]
    return TASK_DEFINITIONS[section].get(task, DEFINITIONS[base])


def importance_definition(task: str, score_name: str) -> str:
    """The importance section's definition, naming the score it used (the classifier's text for classifiers)."""
    if task in ("multiclass", "binary"):
        return DEFINITIONS["importance"]
    words = SCORE_WORDS.get(score_name, f"the callable score {score_name!r}")
    return (f"Permutation importance with the {task} model's score '{score_name}': {words}, on the unperturbed "
            "data minus the same score after shuffling one filter's whole feature map across samples, leaving the "
            "other filters intact; repeated with different permutations (mean and standard deviation shown). "
            "Positive means the model relies on the filter.")
