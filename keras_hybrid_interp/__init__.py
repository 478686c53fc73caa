"""keras-hybrid-interp: a hybrid CNN interpreter for Keras 3.

Local interpretability: dense probes on every conv block give layer-specific
predictions (:class:`HybridInterpreter`). Global interpretability: filter
correlation, filter-class association, filter importance and layer
similarity (:class:`GlobalAnalyzer`). Plots live in
:mod:`keras_hybrid_interp.plotting`, reports in :mod:`keras_hybrid_interp.report`.

The public names below load lazily (PEP 562): ``import keras_hybrid_interp``
imports neither Keras nor TensorFlow, so the command line starts quickly and
can set TensorFlow's log level first. ``from keras_hybrid_interp import
HybridInterpreter`` (or ``keras_hybrid_interp.HybridInterpreter``) imports
the submodule that defines the name on first use.
"""

import sys
from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Public name -> submodule that defines it. To export a new name, add it here
# (and to the TYPE_CHECKING imports below, for type checkers); __all__ follows.
_EXPORTS = {
    "Block": ".core.graph",
    "BlockList": ".local.interpreter",
    "ConceptMaps": ".local.concepts",
    "ConceptResult": ".local.concepts",
    "FeaturePooling": ".core.pooling",
    "FilterClassAssociation": ".global_.association",
    "FilterCorrelation": ".global_.correlation",
    "FilterExamples": ".global_.atlas",
    "FilterImportance": ".global_.importance",
    "GlobalAnalyzer": ".global_.analyzer",
    "HybridInterpreter": ".local.interpreter",
    "ImportanceOptions": ".callback",
    "InterpretationCallback": ".callback",
    "InterpretationWarning": ".core.health",
    "LayerPredictions": ".local.results",
    "LayerTable": ".local.results",
    "LayerSimilarity": ".global_.similarity",
    "LinearProbe": ".local.probes",
    "LocalExplanation": ".local.results",
    "OutputProbabilities": ".local.probes",
    "ProbeOptions": ".callback",
    "REPORT_SECTIONS": ".report",
    "Report": ".report",
    "build_report": ".report",
    "concept_maps": ".local.concepts",
    "linear_cka": ".global_.similarity",
}

__all__ = list(_EXPORTS)

# Submodules whose classes register with keras.saving (what
# keras.models.load_model needs to rebuild a saved interpreter).
_SERIALIZABLE = (".core.pooling", ".local.probes", ".local.interpreter")

if TYPE_CHECKING:  # static view of the lazy names (type checkers do not run __getattr__)
    from .callback import ImportanceOptions as ImportanceOptions
    from .callback import InterpretationCallback as InterpretationCallback
    from .callback import ProbeOptions as ProbeOptions
    from .core.graph import Block as Block
    from .core.health import InterpretationWarning as InterpretationWarning
    from .core.pooling import FeaturePooling as FeaturePooling
    from .global_.analyzer import GlobalAnalyzer as GlobalAnalyzer
    from .global_.association import FilterClassAssociation as FilterClassAssociation
    from .global_.atlas import FilterExamples as FilterExamples
    from .global_.correlation import FilterCorrelation as FilterCorrelation
    from .global_.importance import FilterImportance as FilterImportance
    from .global_.similarity import LayerSimilarity as LayerSimilarity
    from .global_.similarity import linear_cka as linear_cka
    from .local.concepts import ConceptMaps as ConceptMaps
    from .local.concepts import ConceptResult as ConceptResult
    from .local.concepts import concept_maps as concept_maps
    from .local.interpreter import BlockList as BlockList
    from .local.interpreter import HybridInterpreter as HybridInterpreter
    from .local.probes import LinearProbe as LinearProbe
    from .local.probes import OutputProbabilities as OutputProbabilities
    from .local.results import LayerPredictions as LayerPredictions
    from .local.results import LayerTable as LayerTable
    from .local.results import LocalExplanation as LocalExplanation
    from .report import REPORT_SECTIONS as REPORT_SECTIONS
    from .report import Report as Report
    from .report import build_report as build_report


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(import_module(module, __name__), name)
        globals()[name] = value  # later look-ups skip __getattr__
        return value
    if not name.startswith("__"):
        # Submodules as attributes (keras_hybrid_interp.plotting), as when
        # this package imported everything eagerly.
        try:
            return import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


if "keras" in sys.modules:
    # Keras is loaded already, so registering the saveable classes costs little,
    # and `import keras; import keras_hybrid_interp; keras.models.load_model(...)`
    # keeps working. (Without Keras, they register on first use of a name above.)
    for _module in _SERIALIZABLE:
        import_module(_module, __name__)
    del _module
