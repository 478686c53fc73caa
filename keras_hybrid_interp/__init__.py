"""keras-hybrid-interp: a hybrid CNN interpreter for Keras 3.

Local interpretability: dense probes on every conv block give layer-specific
predictions (:class:`HybridInterpreter`). Global interpretability: filter
correlation, filter-class association, filter importance and layer
similarity (:class:`GlobalAnalyzer`). Plots live in
:mod:`keras_hybrid_interp.plotting`, reports in :mod:`keras_hybrid_interp.report`.
"""

__version__ = "0.1.0"

from ._graph import Block
from .analyzer import GlobalAnalyzer
from .association import FilterClassAssociation
from .callback import InterpretationCallback
from .correlation import FilterCorrelation
from .importance import FilterImportance
from .interpreter import BlockList, HybridInterpreter
from .probes import FeaturePooling, LinearProbe, OutputProbabilities
from .report import Report
from .results import LayerPredictions, LocalExplanation
from .similarity import LayerSimilarity, linear_cka

__all__ = [
    "Block",
    "BlockList",
    "FeaturePooling",
    "FilterClassAssociation",
    "FilterCorrelation",
    "FilterImportance",
    "GlobalAnalyzer",
    "HybridInterpreter",
    "InterpretationCallback",
    "LayerPredictions",
    "LayerSimilarity",
    "LinearProbe",
    "LocalExplanation",
    "OutputProbabilities",
    "Report",
    "linear_cka",
]
