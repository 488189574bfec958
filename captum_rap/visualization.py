"""Figures for signed relevance maps (RAP's relevant / irrelevant parts), built on Captum's
``visualize_image_attr`` / ``visualize_image_attr_multiple`` (which take HWC numpy arrays).

Colours (every figure of this module, as in the RAP paper): red = relevant (positive
relevance), blue = irrelevant (negative relevance); signed maps use the blue-white-red
``"bwr"`` colormap with a scale symmetric around 0.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np
from torch import Tensor

__all__ = ["to_hwc", "positive_negative", "visualize_rap", "visualize_rap_grid", "heatmap_figure", "acd_figure"]

ArrayLike = Union[Tensor, np.ndarray]


_IMAGE_CHANNELS = (1, 3, 4)


def to_hwc(image: ArrayLike, layout: Optional[str] = None) -> np.ndarray:
    """One image or map -> (H, W, C) float numpy array.

    Args:
        image (Tensor or ndarray): (C, H, W), (1, C, H, W), (H, W, C) or (H, W).
        layout (str, optional): ``"chw"`` or ``"hwc"`` for a 3-D (or 4-D) input.  Default:
            tensors are PyTorch's (C, H, W) (any number of channels, any width) unless
            only the last axis looks like image channels (1, 3 or 4) and the first does
            not; numpy arrays are matplotlib's (H, W, C) unless only the first axis looks
            like image channels.  A 2-D map gets a channel axis.
    """
    if layout not in (None, "chw", "hwc"):
        raise ValueError(f"layout must be None, 'chw' or 'hwc', got {layout!r}")
    is_tensor = isinstance(image, Tensor)
    arr = image.detach().cpu().double().numpy() if is_tensor else np.asarray(image, dtype=float)
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise ValueError(f"expected one example, got a batch of {arr.shape[0]}")
        arr = arr[0]
    if arr.ndim == 2:
        return arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f"expected an image of 2-4 dims, got shape {arr.shape}")
    if layout is None:
        first, last = arr.shape[0] in _IMAGE_CHANNELS, arr.shape[-1] in _IMAGE_CHANNELS
        if is_tensor:
            layout = "hwc" if last and not first else "chw"
        else:
            layout = "chw" if first and not last else "hwc"
    if layout == "chw":
        arr = np.transpose(arr, (1, 2, 0))
    return arr


def _finite(arr: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} contains NaN or infinite values; nothing can be drawn")
    return arr


def positive_negative(attribution: ArrayLike, layout: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Channel-summed relevant (positive) and irrelevant (negative) parts of one map, as
    in the RAP paper's figures: ``(pos, neg)`` with ``pos >= 0`` and ``neg <= 0``, (H, W).
    ``layout`` as for :func:`to_hwc`.

    Raises:
        ValueError: the map contains NaN or infinite values."""
    heat = _finite(to_hwc(attribution, layout), "the attribution").sum(-1)
    return np.clip(heat, 0, None), np.clip(heat, None, 0)


def _display_image(original_image: Optional[ArrayLike]) -> Optional[np.ndarray]:
    if original_image is None:
        return None
    img = _finite(to_hwc(original_image), "original_image")
    lo, hi = float(img.min()), float(img.max())
    if lo < 0 or hi > 1:  # a normalised network input: rescale to [0, 1] for display
        img = (img - lo) / (hi - lo if hi > lo else 1.0)
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    return img


def visualize_rap(
    attribution: ArrayLike,
    original_image: Optional[ArrayLike] = None,
    titles: Optional[Sequence[str]] = None,
    fig_size: Tuple[int, int] = (12, 3),
    outlier_perc: float = 1.0,
    use_pyplot: bool = False,
    layout: Optional[str] = None,
    **kwargs: Any,
):
    r"""Original image, relevant (positive), irrelevant (negative) and the signed map of one
    example side by side, as in the RAP paper: relevant in red (``"Reds"``), irrelevant in
    blue (``"Blues"``), the signed map in blue-white-red (``"bwr"``, red = relevant), the
    colours of :func:`visualize_rap_grid`.  An all-zero part is drawn as an empty panel.

    Args:
        attribution (Tensor or ndarray): one map, (C, H, W), (1, C, H, W) or (H, W, C).
        original_image (Tensor or ndarray, optional): the image (any of those layouts; a
            normalised network input is rescaled to [0, 1] for display).
        titles (sequence of str, optional): panel titles.
        fig_size (tuple): matplotlib figure size.
        outlier_perc (float): Captum's outlier percentile for the colour scale.
        use_pyplot (bool): draw with pyplot (notebooks) instead of a bare Figure.
        layout (str, optional): ``"chw"`` / ``"hwc"`` layout of ``attribution`` (see
            :func:`to_hwc`).
        **kwargs: passed to ``captum.attr.visualization.visualize_image_attr`` (one call
            per panel; ``cmap`` replaces the colours of every panel).

    Returns:
        ``(figure, axes)`` from Captum.

    Raises:
        ValueError: the map (or the image) contains NaN or infinite values.

    Examples::

        >>> attr = RAP(model).attribute(x, target=281)
        >>> fig, axes = visualize_rap(attr[0], x[0])
        >>> fig.savefig("rap.png")
    """
    from captum.attr import visualization as viz
    from matplotlib import pyplot as plt
    from matplotlib.figure import Figure

    attr = _finite(to_hwc(attribution, layout), "the attribution")
    img = _display_image(original_image)
    pos, neg = positive_negative(attr, "hwc")
    cmaps = {"positive": "Reds", "negative": "Blues", "all": "bwr"}
    user_cmap = kwargs.pop("cmap", None)
    panels = [("heat_map", "positive", "relevant (positive)", bool((pos > 0).any())),
              ("heat_map", "negative", "irrelevant (negative)", bool((neg < 0).any())),
              ("heat_map", "all", "signed", bool((pos > 0).any() or (neg < 0).any()))]
    if img is not None:
        panels.insert(0, ("original_image", "all", "input", True))
    names = list(titles) if titles is not None else [p[2] for p in panels]
    fig = plt.figure(figsize=fig_size) if use_pyplot else Figure(figsize=fig_size)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (method, sign, _, non_empty), title in zip(axes, panels, names):
        if method == "original_image":  # drawn here: Captum would scale the (maybe all-zero) map
            ax.imshow(img)
            ax.set_title(title)
            ax.set_xticks([])
            ax.set_yticks([])
        elif non_empty:
            viz.visualize_image_attr(attr, img, method=method, sign=sign, plt_fig_axis=(fig, ax),
                                     use_pyplot=False, title=title, outlier_perc=outlier_perc,
                                     cmap=user_cmap or cmaps[sign], **kwargs)
        else:  # Captum cannot scale an empty part; show it as an empty panel
            ax.imshow(np.zeros(attr.shape[:2]), cmap="Greys", vmin=0, vmax=1)
            ax.set_title(f"{title}: none")
            ax.set_xticks([])
            ax.set_yticks([])
    return fig, list(axes)


def visualize_rap_grid(
    attributions: Sequence[ArrayLike],
    original_image: Optional[ArrayLike] = None,
    names: Optional[Sequence[str]] = None,
    cell_size: float = 2.6,
):
    r"""Several signed maps of the same image (e.g. RAP vs LRP presets) in one figure:
    one row per map with its relevant (red, ``"Reds"``) and irrelevant (blue, ``"Blues"``)
    parts and the signed map (``"bwr"``, red = relevant), each row on one scale: the 99.5th
    percentile of ``|map|`` (the colours of :func:`visualize_rap`).

    Args:
        attributions (sequence): maps of one example, each (C, H, W) or (H, W, C).
        original_image (optional): shown in the first column.
        names (sequence of str, optional): row labels.
        cell_size (float): inches per panel.

    Returns:
        ``(figure, axes)`` (matplotlib).
    """
    from matplotlib.figure import Figure

    rows = len(attributions)
    img = _display_image(original_image)
    cols = 3 + (img is not None)
    fig = Figure(figsize=(cell_size * cols, cell_size * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for r, attr in enumerate(attributions):
        pos, neg = positive_negative(attr)
        signed = pos + neg
        lim = float(np.percentile(np.abs(signed), 99.5)) or 1.0
        c = 0
        if img is not None:
            axes[r, 0].imshow(img)
            c = 1
        axes[r, c].imshow(pos, cmap="Reds", vmin=0, vmax=lim)
        axes[r, c + 1].imshow(-neg, cmap="Blues", vmin=0, vmax=lim)
        axes[r, c + 2].imshow(signed, cmap="bwr", vmin=-lim, vmax=lim)
        label = names[r] if names is not None else f"map {r}"
        axes[r, 0].set_ylabel(label)
        if r == 0:
            titles = (["input"] if img is not None else []) + ["relevant", "irrelevant", "signed"]
            for a, t in zip(axes[0], titles):
                a.set_title(t)
    for a in axes.flat:
        a.set_xticks([])
        a.set_yticks([])
    fig.tight_layout()
    return fig, axes


def _signed_limit(heat: np.ndarray) -> float:
    """Symmetric colour limit: the 99.5th percentile of ``|heat|`` (1 for an empty map)."""
    lim = float(np.percentile(np.abs(heat), 99.5)) if heat.size else 0.0
    return lim if lim > 0 else 1.0


def heatmap_figure(attr: ArrayLike, display: np.ndarray, title: str):
    r"""Input | signed heat map of one map (channel sum, ``"bwr"`` on a scale symmetric
    around 0: the 99.5th percentile of ``|map|``), the figure of ``captum-rap explain``.

    Args:
        attr (Tensor or ndarray): one map, (C, H, W), (1, C, H, W) or (H, W, C).
        display (ndarray): the input as an (H, W, 3) image in [0, 1].
        title (str): title of the heat map.

    Returns:
        matplotlib Figure (not attached to pyplot).

    Examples::

        >>> fig = heatmap_figure(LRP(model).attribute(x, target=281)[0], image, "LRP")
        >>> fig.savefig("lrp.png")
    """
    from matplotlib.figure import Figure

    pos, neg = positive_negative(attr)
    heat = pos + neg
    lim = _signed_limit(heat)
    fig = Figure(figsize=(7, 3.6))
    ax = fig.subplots(1, 2)
    ax[0].imshow(display)
    ax[0].set_title("input")
    im = ax[1].imshow(heat, cmap="bwr", vmin=-lim, vmax=lim)
    ax[1].set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax[1], fraction=0.046, pad=0.04)
    for a in ax:
        a.set_xticks([])
        a.set_yticks([])
    fig.tight_layout()
    return fig


def acd_figure(tree: Any, display: np.ndarray, names: Sequence[str], max_levels: int = 5):
    r"""ACD on an image: input, the CD score of every block, then the groups of up to
    ``max_levels`` hierarchy levels (finest first) over the image, each group in its own
    colour with its CD score written at its centre (the ACD figure of ``captum-rap``).

    Args:
        tree (ACDHierarchy): an image hierarchy (:meth:`captum_rap.ACD.hierarchy`).
        display (ndarray): the explained input as an (H, W, 3) image in [0, 1].
        names (sequence of str): class names (the title names ``names[tree.target]``).
        max_levels (int, optional): most levels drawn (evenly spaced). Default: 5

    Returns:
        matplotlib Figure (not attached to pyplot).

    Examples::

        >>> tree = ACD(model).hierarchy(x, target=281, sweep_dim=16)
        >>> acd_figure(tree, image, categories).savefig("acd.png")
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    levels = [lev for lev in range(len(tree)) if tree.levels[lev]]
    if len(levels) > max_levels:
        pick = np.linspace(0, len(levels) - 1, max_levels).round().astype(int)
        levels = [levels[i] for i in pick]
    cols = 2 + len(levels)
    fig = Figure(figsize=(2.3 * cols, 2.7))
    axes = fig.subplots(1, cols, squeeze=False)[0]
    axes[0].imshow(display)
    axes[0].set_title("input", fontsize=9)
    units = np.asarray(tree.unit_scores, dtype=float)
    im = axes[1].imshow(units, cmap="viridis", interpolation="nearest")
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.04)
    axes[1].set_title(f"CD score of each {tree.sweep_dim}px block", fontsize=9)
    cmap = colormaps["tab10"]
    for a, lev in zip(axes[2:], levels):
        a.imshow(display)
        overlay = np.zeros(units.shape + (4,))
        for k, g in enumerate(tree.groups(lev)):
            overlay[g.mask] = cmap(k % 10)[:3] + (0.55,)
            yy, xx = np.nonzero(g.mask)
            a.text(xx.mean(), yy.mean(), f"{g.score:.1f}", ha="center", va="center", fontsize=7,
                   color="black", bbox=dict(boxstyle="round,pad=0.1", fc="white", alpha=0.7, lw=0))
        a.imshow(overlay, interpolation="nearest")
        a.set_title(f"level {lev}: {len(tree.levels[lev])} group(s)", fontsize=9)
    for a in axes:
        a.set_xticks([])
        a.set_yticks([])
    fig.suptitle(f"ACD hierarchy for {names[tree.target]!r} (numbers: CD score of each group)", fontsize=9)
    fig.tight_layout()
    return fig
