"""The Training section: what :class:`~keras_hybrid_interp.InterpretationCallback` recorded over the epochs.

``build_report(..., history=cb.history)`` (or a history read back with
:meth:`InterpretationCallback.load_history <keras_hybrid_interp.InterpretationCallback.load_history>`)
adds a section with the story of training, read from the history alone (no
pass over the data):

- the **probe metric by block over epochs**: the headline metric, the first
  recorded of :data:`HEADLINE_METRICS` (``accuracy`` with labels, ``mean_iou``,
  ``auroc``, ``r2``, else ``agreement``), the model itself (``output``) too;
- the **dead filters by block over epochs**;
- the **importance over epochs** of the recorded top filters of one block.

And two health findings, each a line in the report's health section:

``training_probe_fell`` (a block whose probe metric fell late in training)
    With records at epochs ``e_0 < ... < e_T``, the *second half* of training
    is the records at epochs ``>= e_T / 2``. A block (or the model) fell late
    when its value at the last record is lower than its best value in the
    second half by more than :data:`TRAINING_DROP` (0.05, in the metric's own
    units: 5 points of accuracy, 0.05 of AUROC, mean IoU or R^2). Earlier
    swings (the first epochs) are not findings; a block still falling at the
    end is. For ``accuracy`` and ``agreement`` (proportions of the ``n``
    evaluation samples), when the history knows ``n`` (the callback's
    :attr:`~keras_hybrid_interp.InterpretationCallback.history` and its
    ``log_path`` file do: ``history.attrs["eval_samples"]``), the drop must
    also exceed :data:`NOISE_SES` binomial standard errors,
    ``2 sqrt(q (1 - q) / n)`` with ``q`` the mean of the two values: one
    sample of 20 (0.05) is not a finding; 5 points on 500 samples (0.027 at
    q = 0.9) is.
``filters_died`` (filters that died during training)
    A block with more dead filters at the last record than at the first
    (its dead-filter count rose; a dead filter takes one value on every
    validation sample).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from .base import ReportSection, SectionContent

__all__ = ["HEADLINE_METRICS", "TRAINING_DROP", "NOISE_SES", "TrainingStory", "training_story", "TrainingSection"]

#: The headline probe metric of the Training section: the first of these the history holds (all higher-is-better).
HEADLINE_METRICS = ("accuracy", "mean_iou", "auroc", "r2", "agreement")
#: A block fell late in training when its last value is below its best of the second half by more than this.
TRAINING_DROP = 0.05
#: ... and, for a proportion of a known number of samples, by more than this many binomial standard errors.
NOISE_SES = 2.0
#: The metrics that are proportions of the evaluation samples (the noise band applies to them).
PROPORTIONS = ("accuracy", "agreement")

_COLUMNS = ("epoch", "block", "metric", "value", "filter")

DEFINITION = (
    "What InterpretationCallback recorded on its fixed validation subset while the model trained (epoch 0 is "
    "before training). Probe metric: the headline metric of each block's probe, refitted at each record on "
    "the probe-fit half and scored on the other half, and the model's own (output). Dead filters: filters "
    "taking one value on every validation sample. Importance: permutation importance of the top filters of "
    "one block at each record. A block fell late in training when its last value is below its best value in "
    f"the second half of training (records at epochs >= half the last) by more than {TRAINING_DROP}; filters "
    "died during training when a block has more dead filters at the last record than at the first."
)


def as_history(history, argname="history") -> pd.DataFrame:
    """``InterpretationCallback.history`` (or the callback itself) as its frame; a clear error otherwise."""
    if not isinstance(history, pd.DataFrame) and isinstance(getattr(history, "history", None), pd.DataFrame):
        history = history.history  # an InterpretationCallback
    if not isinstance(history, pd.DataFrame) or not set(_COLUMNS) <= set(history.columns):
        raise TypeError(
            f"`{argname}` must be InterpretationCallback.history (a DataFrame with columns "
            f"{', '.join(_COLUMNS)}), the callback, or InterpretationCallback.load_history(path); received "
            f"{type(history).__name__}."
        )
    if history.empty:
        raise ValueError(f"`{argname}` holds no record: train the model with the callback first.")
    return history


@dataclasses.dataclass(frozen=True)
class TrainingStory:
    """The training story of one history: metric, dead filters and importance by epoch, and what went wrong.

    Attributes
    ----------
    epochs : ndarray of int, shape (E,)
        The recorded epochs, ascending (0: before training).
    metric : str or None
        The headline probe metric (see :data:`HEADLINE_METRICS`); None when no probe was recorded.
    blocks : list of str
        The blocks of ``values``, shallow to deep, ``"output"`` (the model) last.
    values : ndarray, shape (E, B)
        ``metric`` by epoch and block (NaN where not recorded).
    late_best, late_best_epoch : ndarray, shape (B,)
        Each block's best value in the second half of training (epochs >= half the last) and its epoch.
    drop : ndarray, shape (B,)
        ``late_best`` minus the value at the last record (NaN where that is not recorded).
    noise : ndarray, shape (B,)
        The drop each block's value may take by chance: :data:`NOISE_SES` binomial
        standard errors for a proportion of ``eval_samples`` samples, else 0.
    eval_samples : int or None
        The number of evaluation samples of the probes (``history.attrs["eval_samples"]``), if known.
    dead_blocks : list of str
        The blocks of ``dead_filters``.
    dead_filters : ndarray, shape (E, D)
        Dead filters by epoch and block (NaN where not recorded).
    died : ndarray, shape (D,)
        Dead filters at each block's last record minus at its first.
    importance_block : str or None
        The block whose filter importance was recorded.
    importance_filters : ndarray of int, shape (F,)
        Every filter recorded at some epoch, the most important at the last record first.
    importance : ndarray, shape (E, F)
        Their importance by epoch (NaN where a filter was not among the recorded top filters).
    threshold : float
        :data:`TRAINING_DROP` when computed.
    """

    epochs: np.ndarray
    metric: str | None
    blocks: list
    values: np.ndarray
    late_best: np.ndarray
    late_best_epoch: np.ndarray
    drop: np.ndarray
    noise: np.ndarray
    eval_samples: int | None
    dead_blocks: list
    dead_filters: np.ndarray
    died: np.ndarray
    importance_block: str | None
    importance_filters: np.ndarray
    importance: np.ndarray
    threshold: float = TRAINING_DROP

    @property
    def fell_late(self) -> list[str]:
        """The blocks (``"output"``: the model) whose metric fell late in training."""
        return [b for b, d, e in zip(self.blocks, self.drop, self.noise)
                if np.isfinite(d) and d > max(self.threshold, e) + 1e-9]

    @property
    def died_blocks(self) -> list[str]:
        """The blocks in which filters died during training."""
        return [b for b, d in zip(self.dead_blocks, self.died) if np.isfinite(d) and d > 0]

    def findings(self) -> list[tuple[str, str]]:
        """``(kind, message)`` of every finding: ``training_probe_fell``, then ``filters_died``."""
        out = []
        last = int(self.epochs[-1])
        for b in self.fell_late:
            j = self.blocks.index(b)
            who = "the model's own" if b == "output" else f"the probe {self.metric} of block {b!r}"
            what = self.metric if b == "output" else ""
            out.append(("training_probe_fell", (
                f"Training: {who} {what}".rstrip() + f" fell late in training, from {self.late_best[j]:.3f} at epoch "
                f"{int(self.late_best_epoch[j])} to {self.values[-1, j]:.3f} at the last record (epoch {last}): more "
                f"than {max(self.threshold, float(self.noise[j])):.3g} below its best in the second half of training"
                + (f" (beyond {NOISE_SES:g} standard errors on {self.eval_samples} samples). "
                   if self.noise[j] > self.threshold else ". ")
                + ("The model may be overfitting: compare with its training metric, or stop earlier."
                   if b == "output" else "The block may be losing what it encoded (overfitting, a learning rate "
                   "too high, forgetting): compare with the model's own value and the deeper blocks.")
            )))
        for b in self.died_blocks:
            j = self.dead_blocks.index(b)
            col = self.dead_filters[:, j]
            rec = np.flatnonzero(np.isfinite(col))
            first, end = rec[0], rec[-1]
            out.append(("filters_died", (
                f"Training: {int(self.died[j])} filter(s) of block {b!r} died during training ({int(col[first])} "
                f"dead at epoch {int(self.epochs[first])}, {int(col[end])} at epoch {int(self.epochs[end])}): they "
                "take one value on every validation sample. Check for dying ReLUs (a learning rate too high, the "
                "initialization), or a block wider than the task needs."
            )))
        return out

    def findings_frame(self) -> pd.DataFrame:
        """One row per finding: ``block``, ``finding``, ``epoch_from``, ``value_from``, ``epoch_to``, ``value_to``."""
        rows = []
        for b in self.fell_late:
            j = self.blocks.index(b)
            rows.append((b, "probe fell late", int(self.late_best_epoch[j]), float(self.late_best[j]),
                         int(self.epochs[-1]), float(self.values[-1, j])))
        for b in self.died_blocks:
            j = self.dead_blocks.index(b)
            col = self.dead_filters[:, j]
            rec = np.flatnonzero(np.isfinite(col))
            rows.append((b, "filters died", int(self.epochs[rec[0]]), float(col[rec[0]]),
                         int(self.epochs[rec[-1]]), float(col[rec[-1]])))
        return pd.DataFrame(rows, columns=["block", "finding", "epoch_from", "value_from", "epoch_to", "value_to"])

    def to_frame(self) -> pd.DataFrame:
        """Tidy: one row per recorded value drawn (``epoch, block, metric, value, filter``)."""
        parts = []
        for names, values, metric in ((self.blocks, self.values, self.metric),
                                      (self.dead_blocks, self.dead_filters, "dead_filters")):
            for j, b in enumerate(names):
                ok = np.isfinite(values[:, j])
                parts.append(pd.DataFrame({"epoch": self.epochs[ok], "block": b, "metric": metric,
                                           "value": values[ok, j], "filter": pd.array([None] * int(ok.sum()),
                                                                                      dtype="Int64")}))
        for j, f in enumerate(self.importance_filters):
            ok = np.isfinite(self.importance[:, j])
            parts.append(pd.DataFrame({"epoch": self.epochs[ok], "block": self.importance_block,
                                       "metric": "importance", "value": self.importance[ok, j],
                                       "filter": pd.array([int(f)] * int(ok.sum()), dtype="Int64")}))
        if not parts:
            return pd.DataFrame({c: [] for c in _COLUMNS})
        return pd.concat(parts, ignore_index=True)

    def plot(self, fig=None):
        """Every panel recorded (:func:`~keras_hybrid_interp.plotting.training.plot_training_story`)."""
        from ..plotting.training import plot_training_story

        return plot_training_story(self, fig=fig)


def _blocks_in_order(frame) -> list:
    blocks = list(dict.fromkeys(frame["block"]))
    return [b for b in blocks if b != "output"] + (["output"] if "output" in blocks else [])


def _table(frame, epochs, metric):
    """(blocks, (E, B) values) of one per-block metric, NaN where not recorded."""
    data = frame[frame["metric"] == metric]
    if data.empty:
        return [], np.zeros((len(epochs), 0))
    blocks = _blocks_in_order(data)
    table = data.pivot_table(index="epoch", columns="block", values="value", aggfunc="last", dropna=False)
    table = table.reindex(index=epochs, columns=blocks)
    return blocks, table.to_numpy(dtype=np.float64)


def training_story(history, threshold: float = TRAINING_DROP) -> TrainingStory:
    """The :class:`TrainingStory` of ``InterpretationCallback.history`` (rules in the module docstring)."""
    h = as_history(history)
    epochs = np.array(sorted(int(e) for e in h["epoch"].unique()), dtype=np.int64)
    present = set(h["metric"])
    metric = next((m for m in HEADLINE_METRICS if m in present), None)
    blocks, values = _table(h, epochs, metric) if metric is not None else ([], np.zeros((len(epochs), 0)))
    late = epochs >= epochs[-1] / 2.0  # the second half of training (always holds the last record)
    late_best = np.full(len(blocks), np.nan)
    late_best_epoch = np.full(len(blocks), -1, dtype=np.int64)
    for j in range(len(blocks)):
        col = np.where(late, values[:, j], np.nan)
        if np.any(np.isfinite(col)):
            i = int(np.nanargmax(col))
            late_best[j], late_best_epoch[j] = col[i], epochs[i]
    drop = late_best - (values[-1] if len(blocks) else np.zeros(0))
    n = h.attrs.get("eval_samples")
    noise = np.zeros(len(blocks))
    if metric in PROPORTIONS and n:
        q = np.clip((late_best + (values[-1] if len(blocks) else 0.0)) / 2.0, 0.0, 1.0)
        noise = np.nan_to_num(NOISE_SES * np.sqrt(q * (1.0 - q) / float(n)))
    dead_blocks, dead = _table(h, epochs, "dead_filters")
    died = np.full(len(dead_blocks), np.nan)
    for j in range(len(dead_blocks)):
        rec = np.flatnonzero(np.isfinite(dead[:, j]))
        if len(rec):
            died[j] = dead[rec[-1], j] - dead[rec[0], j]
    imp = h[h["metric"] == "importance"]
    imp_block = None if imp.empty else str(imp["block"].iloc[0])
    if imp.empty:
        filters, importance = np.zeros(0, dtype=np.int64), np.zeros((len(epochs), 0))
    else:
        table = imp.pivot_table(index="epoch", columns="filter", values="value", aggfunc="last").reindex(epochs)
        last = table.iloc[-1].to_numpy(dtype=np.float64)
        order = np.lexsort((table.columns.to_numpy(dtype=np.int64), -np.nan_to_num(last, nan=-np.inf)))
        filters = table.columns.to_numpy(dtype=np.int64)[order]
        importance = table.to_numpy(dtype=np.float64)[:, order]
    return TrainingStory(epochs=epochs, metric=metric, blocks=blocks, values=values, late_best=late_best,
                         late_best_epoch=late_best_epoch, drop=drop, noise=noise,
                         eval_samples=None if n is None else int(n), dead_blocks=dead_blocks, dead_filters=dead,
                         died=died, importance_block=imp_block, importance_filters=filters, importance=importance,
                         threshold=float(threshold))


class TrainingSection(ReportSection):
    """The training story of ``build_report(history=...)`` (no pass: the history alone).

    Shown only with a ``history`` (:func:`~keras_hybrid_interp.report.check_sections` leaves it out
    without one, and refuses a ``history`` that ``sections=`` would ignore).
    """

    name = "training"

    def check(self):
        self.story = training_story(as_history(self.ctx.options.history))

    def compute(self):
        from ..core import health as _health

        for kind, message in self.story.findings():
            _health.warn(kind, message)
        return self.story

    def render(self, story):
        from .. import plotting

        if story is None:
            return None
        figures = []
        if story.metric is not None:
            figures.append((f"Probe {story.metric} per block over training (dashed: the model itself). An open circle "
                            "and a cross mark the best value of the second half and the last value of a block that "
                            "fell late.", plotting.plot_training_metric(story)))
        if story.dead_blocks:
            figures.append(("Dead filters per block over training.", plotting.plot_dead_filters_over_epochs(story)))
        if story.importance_block is not None:
            figures.append((f"Permutation importance of the recorded top filters of {story.importance_block} over "
                            "training (gaps: not among the top filters at that epoch).",
                            plotting.plot_importance_over_epochs(story)))
        last = int(story.epochs[-1])
        lines = [f"{len(story.epochs)} records, epochs 0 to {last}."]
        if story.fell_late:
            lines.append(f"Fell late in training: {', '.join(story.fell_late)}.")
        if story.died_blocks:
            lines.append(f"Filters died during training in: {', '.join(story.died_blocks)}.")
        if not (story.fell_late or story.died_blocks):
            lines.append("No block's probe fell late in training, and no filter died during training.")
        tables = [("Training findings", story.findings_frame()), ("Training history", story.to_frame())]
        return SectionContent("Training", DEFINITION + "\n\n" + " ".join(lines), figures=figures, tables=tables)
