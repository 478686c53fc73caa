"""Result objects of the local interpreter: small, NumPy-backed, tidy."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

__all__ = ["LayerPredictions", "LocalExplanation"]


@dataclasses.dataclass(frozen=True)
class LayerPredictions:
    """Per-block probe predictions for a set of inputs.

    Attributes
    ----------
    blocks : list of str
        Block names, shallow to deep.
    depths : ndarray of int, shape (L,)
        Graph depth of each block.
    probabilities : ndarray, shape (L, N, K)
        Probe class probabilities per block and sample.
    model_probabilities : ndarray, shape (N, K)
        The model's own class probabilities.
    class_names : list of str
    """

    blocks: list
    depths: np.ndarray
    probabilities: np.ndarray
    model_probabilities: np.ndarray
    class_names: list

    def __repr__(self):
        L, N, K = np.shape(self.probabilities)
        return f"LayerPredictions(blocks={L}, samples={N}, classes={K})"

    @property
    def predicted(self) -> np.ndarray:
        """Probe top class per block and sample, shape (L, N)."""
        return np.argmax(self.probabilities, axis=-1)

    @property
    def model_predicted(self) -> np.ndarray:
        """Model top class per sample, shape (N,)."""
        return np.argmax(self.model_probabilities, axis=-1)

    @property
    def agreement(self) -> np.ndarray:
        """Fraction of samples where each block's probe agrees with the model, shape (L,)."""
        return np.mean(self.predicted == self.model_predicted[None, :], axis=1)

    def __getitem__(self, block: str) -> np.ndarray:
        try:
            return self.probabilities[self.blocks.index(block)]
        except ValueError:
            raise KeyError(f"No block {block!r}; available blocks: {self.blocks}.") from None

    def to_frame(self) -> pd.DataFrame:
        """Tidy frame: one row per (sample, block, class) with the probability."""
        L, N, K = self.probabilities.shape
        return pd.DataFrame({
            "sample": np.tile(np.repeat(np.arange(N), K), L),
            "block": np.repeat(np.array(self.blocks, dtype=object), N * K),
            "depth": np.repeat(self.depths, N * K),
            "class": np.tile(np.array(self.class_names, dtype=object), L * N),
            "probability": self.probabilities.reshape(-1),
        })


@dataclasses.dataclass(frozen=True)
class LocalExplanation:
    """Layer-by-layer explanation of one input.

    Attributes
    ----------
    image : ndarray, shape (T, C), (H, W, C) or (D, H, W, C)
        The input (a signal, an image or a volume).
    blocks : list of str
    depths : ndarray of int, shape (L,)
    probabilities : ndarray, shape (L, K)
        Probe probabilities at each block.
    model_probabilities : ndarray, shape (K,)
    decision_index : int or None
        Index (into ``blocks``) of the first block from which the probe's top
        class equals the model's class and stays equal in every deeper
        block; None if the last block disagrees with the model.
    evidence_maps : list of ndarray, each (spatial_l..., K)
        Class-evidence map per block: the probe's logits applied at every
        spatial position: a curve (T_l, K) along time for a 1-D CNN, a map
        (H_l, W_l, K) for 2-D, a volume (D_l, H_l, W_l, K) for 3-D. For
        average pooling (and adaptive average pooling, where each position's
        contribution is rescaled by the number of positions) the mean of a
        map over positions equals the probe's logits exactly.
    class_names : list of str
    pooling : str or int
    """

    image: np.ndarray
    blocks: list
    depths: np.ndarray
    probabilities: np.ndarray
    model_probabilities: np.ndarray
    decision_index: int | None
    evidence_maps: list
    class_names: list
    pooling: object = "avg"

    def __repr__(self):
        decided = "never" if self.decision_block is None else repr(self.decision_block)
        return (f"LocalExplanation(model_class={self.class_names[self.model_class]!r}, blocks={len(self.blocks)}, "
                f"decision_block={decided})")

    @property
    def predicted(self) -> np.ndarray:
        """Probe top class per block, shape (L,)."""
        return np.argmax(self.probabilities, axis=-1)

    @property
    def model_class(self) -> int:
        return int(np.argmax(self.model_probabilities))

    @property
    def decision_block(self) -> str | None:
        return None if self.decision_index is None else self.blocks[self.decision_index]

    def to_frame(self) -> pd.DataFrame:
        """Tidy frame: one row per (block, class) with probability and flags."""
        L, K = self.probabilities.shape
        pred = self.predicted
        return pd.DataFrame({
            "block": np.repeat(np.array(self.blocks, dtype=object), K),
            "depth": np.repeat(self.depths, K),
            "class": np.tile(np.array(self.class_names, dtype=object), L),
            "probability": self.probabilities.reshape(-1),
            "is_top_class": (pred[:, None] == np.arange(K)[None, :]).reshape(-1),
            "is_model_class": np.tile(np.arange(K) == self.model_class, L),
        })
