"""keras-hybrid-interp: a hybrid CNN interpreter for Keras 3.

Local interpretability: dense probes on every conv block give layer-specific
predictions (:class:`HybridInterpreter`). Global interpretability: filter
correlation, filter-class association, filter importance and layer
similarity (:class:`GlobalAnalyzer`).
"""

__version__ = "0.1.0"

from ._graph import Block
from .interpreter import BlockList, HybridInterpreter
from .probes import FeaturePooling, LinearProbe, OutputProbabilities
from .results import LayerPredictions, LocalExplanation

__all__ = [
    "Block",
    "BlockList",
    "FeaturePooling",
    "HybridInterpreter",
    "LayerPredictions",
    "LinearProbe",
    "LocalExplanation",
    "OutputProbabilities",
]
