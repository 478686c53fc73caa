"""Plots of segmentation results: every block's mask over the input, and filter-class IoU (NetDissect)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from .common import check_top_k, new_ax

__all__ = ["plot_segmentation_masks", "plot_segmentation_association", "plot_segmentation_agreement"]


def _background(image):
    """A 2-D picture of the input: grey for one channel, RGB for three, the channel mean otherwise."""
    img = np.asarray(image, np.float64)
    if img.ndim == 1:  # a 1-D signal's single channel: a strip
        img = img[None]
    if img.ndim == 2:
        img = img[None] if img.shape[-1] <= 4 and img.shape[0] > 4 else img
    if img.ndim == 3 and img.shape[-1] == 3:
        lo, hi = np.nanmin(img), np.nanmax(img)
        return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img), None
    if img.ndim == 3:
        img = img.mean(axis=-1)
    return img, "gray"


def _mask2d(mask):
    m = np.asarray(mask)
    if m.ndim == 1:
        return m[None]
    while m.ndim > 2:  # a volume: its middle slice
        m = m[m.shape[0] // 2]
    return m


def plot_segmentation_masks(explanation, fig=None, *, alpha=0.55, show_background=False, cmap="tab10"):
    """A row of masks over the input: one panel per block, shallow to deep, then the model's mask.

    Each panel draws the input (grey) and, over it, the block's predicted
    mask at the model's output resolution, one colour per class (class 0
    left transparent unless ``show_background``); the title gives the block
    and the mean IoU of its mask with the model's. The reader sees at what
    depth the mask forms. A 3-D input shows its middle slice.

    Returns the :class:`~matplotlib.figure.Figure` (its axes are ``fig.axes``,
    one per block, then the model's).
    """
    masks = list(explanation.masks) + [explanation.model_mask]
    titles = [f"{b}\nIoU {v:.2f}" for b, v in zip(explanation.blocks, explanation.iou_with_model)] + ["model"]
    n = len(masks)
    if fig is None:
        fig = plt.figure(figsize=(2.2 * n, 2.6), layout="constrained")
    elif not hasattr(fig, "add_subplot"):
        raise TypeError(f"`fig` must be a matplotlib Figure or None; received {type(fig).__name__}.")
    axes = fig.subplots(1, n, squeeze=False)[0]
    image = np.asarray(explanation.image)
    if image.ndim == 4:
        image = image[image.shape[0] // 2]
    bg, bg_cmap = _background(image)
    K = len(explanation.class_names)
    colours = plt.get_cmap(cmap)(np.arange(K) % 10)
    if not show_background:
        colours[0, 3] = 0.0
    colours[:, 3] *= alpha
    for ax, mask, title in zip(axes, masks, titles):
        m = _mask2d(mask)
        extent = (0, m.shape[1], m.shape[0], 0)
        ax.imshow(bg, cmap=bg_cmap, extent=extent, interpolation="nearest")
        ax.imshow(colours[m], extent=extent, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [plt.Rectangle((0, 0), 1, 1, color=plt.get_cmap(cmap)(k % 10)) for k in range(K)]
    fig.legend(handles, explanation.class_names, loc="outside lower center", ncol=min(K, 8), fontsize=8)
    fig.suptitle("Each block's probe mask over the input (shallow to deep)", fontsize=10)
    return fig


def plot_segmentation_association(assoc, ax=None, *, top_k=32, cmap="viridis"):
    """Heatmap of filter x class IoU (NetDissect), the ``top_k`` filters by their best IoU.

    Returns the :class:`~matplotlib.axes.Axes`.
    """
    top_k = check_top_k(top_k)
    iou = np.asarray(assoc.iou)
    best = np.nanmax(np.where(np.isnan(iou), -1.0, iou), axis=1)
    order = np.argsort(-best, kind="stable")
    shown = order if top_k is None else order[:top_k]
    ax = new_ax(ax, (1.2 + 0.6 * iou.shape[1], 1.2 + 0.25 * len(shown)))
    im = ax.imshow(iou[shown], aspect="auto", cmap=cmap, vmin=0.0, vmax=max(1e-9, float(np.nanmax(iou[shown]))))
    ax.set_xticks(np.arange(iou.shape[1]))
    ax.set_xticklabels(assoc.class_names, rotation=45, ha="right")
    ax.set_yticks(np.arange(len(shown)))
    ax.set_yticklabels([str(int(f)) for f in shown], fontsize=7)
    ax.set_ylabel("filter")
    ax.set_xlabel("class")
    left = len(order) - len(shown)
    ax.set_title(f"{assoc.block}: IoU of each filter's top-{100 * assoc.quantile:g}% mask with each class"
                 + (f" ({left} filters not shown)" if left else ""), fontsize=9)
    ax.figure.colorbar(im, ax=ax, label="IoU")
    return ax


def plot_segmentation_agreement(predictions, ax=None, **kwargs):
    """Per block, the mean fraction of pixels whose probe class equals the model's (a line over depth).

    ``predictions`` is the result of ``layer_predictions`` on a segmentation model; returns the Axes.
    """
    blocks = list(predictions.blocks)
    ax = new_ax(ax, (max(6.0, 0.6 * len(blocks) + 3.0), 3.2))
    x = np.arange(len(blocks))
    ax.plot(x, np.asarray(predictions.agreement, np.float64).mean(axis=1), marker="o", gid="agreement", **kwargs)
    ax.set_xticks(x)
    ax.set_xticklabels(blocks, rotation=45, ha="right")
    ax.set_xlabel("Block (shallow \u2192 deep)")
    ax.set_ylabel("Pixel agreement with the model's mask")
    ax.set_ylim(0, 1.02)
    ax.grid(axis="y", alpha=0.3)
    return ax
