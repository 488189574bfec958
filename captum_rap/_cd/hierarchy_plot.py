"""Matplotlib figures of an ACD hierarchy (:meth:`captum_rap.ACDHierarchy.plot`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np
from torch import Tensor

if TYPE_CHECKING:  # (the hierarchy module imports this one)
    from captum_rap._cd.hierarchy import ACDHierarchy


def plot_hierarchy(h: "ACDHierarchy", image: Optional[Any] = None, levels: Optional[Sequence[int]] = None,
                   ax=None, cmap: str = "RdBu_r", **kwargs):
    """:meth:`ACDHierarchy.plot <captum_rap.ACDHierarchy.plot>` (see there)."""
    import matplotlib.pyplot as plt

    if h.kind == "text":
        return _plot_text(h, levels=levels, ax=ax, cmap=cmap, **kwargs)
    if ax is not None:
        axs = [ax] if hasattr(ax, "imshow") else list(np.ravel(np.asarray(ax, dtype=object)))
        if levels is None and len(axs) == 1:
            levels = [len(h.levels) - 1]
    if levels is None:
        levels = list(range(1, len(h.levels))) if len(h.levels) > 1 else [0]
    levels = h._plot_levels(levels)
    n = len(levels)
    if ax is None:
        cols = min(n, 6)
        rows = (n + cols - 1) // cols
        fig, grid = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows), squeeze=False)
        axs = list(grid.ravel())
        for a in axs:
            a.axis("off")
    else:
        if len(axs) != n:
            raise ValueError(f"plot: ax has {len(axs)} Axes for {n} levels {levels}; give one Axes per "
                             "level (or a single Axes and at most one level)")
        fig = axs[0].figure
    img = None
    if image is not None:
        img = image.detach().cpu().double().numpy() if isinstance(image, Tensor) else np.asarray(image, dtype=float)
        img = np.squeeze(img)
        if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
            img = np.moveaxis(img, 0, -1)
        img = (img - img.min()) / (img.max() - img.min() + 1e-12)
    cm = plt.get_cmap("tab20")
    for a, lev in zip(axs, levels):
        a.axis("off")
        groups = h.levels[lev]
        if img is not None:
            a.imshow(img, cmap="gray" if img.ndim == 2 else None)
        elif not groups:
            u = np.asarray(h.unit_scores, dtype=float)
            lim = float(np.nanmax(np.abs(u))) if np.isfinite(u).any() else 1.0
            a.imshow(u, cmap=cmap, vmin=-lim, vmax=lim, interpolation="nearest")
        if groups:
            lab = np.zeros(h._feature_shape(), dtype=float)
            for g in groups.values():
                lab[g.mask] = g.id
            over = np.ma.masked_where(lab == 0, lab % 20)
            a.imshow(over, cmap=cm, vmin=0, vmax=19, alpha=0.6 if img is not None else 1.0,
                     interpolation="nearest")
            a.set_title("level %d" % lev, fontsize=8)
        else:
            a.set_title("level %d (no groups)" % lev, fontsize=8)
    if ax is None:
        fig.tight_layout()
    return fig


def _plot_text(h: "ACDHierarchy", levels: Optional[Sequence[int]] = None, ax=None, cmap="RdBu_r", **kwargs):
    import matplotlib.pyplot as plt

    T = len(h.unit_scores)
    rows = h._plot_levels(range(len(h.levels)) if levels is None else levels)
    L = len(rows)
    data = np.full((L, T), np.nan)
    for r, lev in enumerate(rows):
        for g in h.levels[lev].values():
            data[r, g.mask] = g.score
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(4, 0.7 * T), 0.45 * L + 1))
    else:
        if not hasattr(ax, "pcolormesh"):
            axs = list(np.ravel(np.asarray(ax, dtype=object)))
            if len(axs) != 1:
                raise ValueError("plot: a text hierarchy is drawn on one Axes, got %d" % len(axs))
            ax = axs[0]
        fig = ax.figure
    vmax = np.nanmax(np.abs(data)) if np.isfinite(data).any() else 1.0
    ax.pcolormesh(np.ma.masked_invalid(data[::-1]), cmap=cmap, vmin=-vmax, vmax=vmax,
                  edgecolors="w", linewidth=0.5)
    words = h.words or [str(i) for i in range(T)]
    for r in range(L):
        for t in range(T):
            if np.isfinite(data[r, t]):
                ax.text(t + 0.5, L - r - 0.5, words[t], ha="center", va="center", fontsize=8)
    ax.set_yticks(np.arange(L) + 0.5)
    ax.set_yticklabels(["level %d" % lev for lev in rows][::-1], fontsize=8)
    ax.set_xticks([])
    return fig
