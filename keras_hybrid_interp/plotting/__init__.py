"""Plots of the local and global results, with seaborn on matplotlib.

Every function takes a result object (or the DataFrame it was made from) and
draws one figure ready to paste into a report: title, axis labels and colour
bar say what is shown and what was left out. Axes-level functions take
``ax=None`` and return the :class:`~matplotlib.axes.Axes` they drew on (a new
figure sized to the content when ``ax`` is None); the multi-panel
:func:`plot_local_explanation` returns its :class:`~matplotlib.figure.Figure`.
Nothing here calls ``plt.show()`` or ``savefig()``, and no global style is
changed.

Large blocks stay readable: the filter heatmaps show the ``top_k`` filters
(ranked as documented per function) and the title says how many were left
out; dead (constant) filters are marked.

Examples
--------
>>> from keras_hybrid_interp import plotting
>>> ax = plotting.plot_layer_accuracy(interp.evaluate_layers(x_test, y_test))
>>> fig = plotting.plot_local_explanation(interp.explain(x_test[0]))
>>> ax = plotting.plot_filter_correlation(ga.filter_correlation(x, block="conv3"), top_k=64)
>>> ax.figure.savefig("correlation.png", dpi=150)   # saving is the caller's choice
"""

from .atlas import plot_filter_examples
from .concepts import plot_concept_accuracy, plot_concept_maps, plot_concept_training, plot_tcav_scores
from .global_ import (
    plot_filter_class_association,
    plot_filter_correlation,
    plot_filter_importance,
    plot_layer_similarity,
)
from .local import (
    plot_layer_accuracy,
    plot_layer_metrics,
    plot_layer_predictions,
    plot_local_explanation,
    upsample,
    upsample_curve,
)
from .training import (
    plot_dead_filters_over_epochs,
    plot_importance_over_epochs,
    plot_training_dynamics,
    plot_training_metric,
    plot_training_story,
)

__all__ = [
    "plot_layer_accuracy",
    "plot_concept_accuracy",
    "plot_tcav_scores",
    "plot_concept_maps",
    "plot_concept_training",
    "plot_layer_metrics",
    "plot_layer_predictions",
    "plot_local_explanation",
    "plot_filter_correlation",
    "plot_filter_importance",
    "plot_filter_class_association",
    "plot_layer_similarity",
    "plot_filter_examples",
    "plot_training_dynamics",
    "plot_training_metric",
    "plot_dead_filters_over_epochs",
    "plot_importance_over_epochs",
    "plot_training_story",
    "upsample",
    "upsample_curve",
]
