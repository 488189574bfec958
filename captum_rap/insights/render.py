"""Server-side PNG rendering for the Insights UI (matplotlib, no pyplot: thread safe).

Signed maps use a symmetric blue-white-red scale: red = positive (relevant), blue =
negative (irrelevant), white = 0, as in the RAP paper's figures.
"""

from __future__ import annotations

import base64
import io
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

__all__ = ["png_base64", "image_to_display", "signed_map", "heatmap_png", "overlay_png",
           "groups_overlay_png", "text_levels_png"]

SIGNED_CMAP = "bwr"


def png_base64(rgb: np.ndarray) -> str:
    """(H, W, 3|4) float array in [0, 1] -> base64 PNG string."""
    from matplotlib import image as mpimg

    buf = io.BytesIO()
    mpimg.imsave(buf, np.clip(rgb, 0.0, 1.0), format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=float)


def image_to_display(image: Any) -> np.ndarray:
    """An image as (1, C, H, W) / (C, H, W) / (H, W, C) / (H, W) -> (H, W, 3) in [0, 1]
    (rescaled by its own range when outside [0, 1])."""
    arr = _to_numpy(image)
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.transpose(arr, (1, 2, 0))
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f"cannot display an image of shape {arr.shape}")
    arr = arr[..., :3]
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    if lo < 0.0 or hi > 1.0:
        arr = (arr - lo) / (hi - lo if hi > lo else 1.0)
    return np.nan_to_num(arr)


def signed_map(attribution: Tensor) -> np.ndarray:
    """An image attribution ``(1, C, H, W)`` or ``(C, H, W)`` -> channel sum ``(H, W)``."""
    arr = _to_numpy(attribution)
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3:
        arr = arr.sum(0)
    if arr.ndim != 2:
        raise ValueError(f"cannot draw a heat map of shape {arr.shape}")
    return np.nan_to_num(arr)


def symmetric_limit(values: np.ndarray, percentile: float = 99.5) -> float:
    """Colour scale limit: the ``percentile`` of ``|values|`` (1 if the map is all zero)."""
    mag = np.abs(values[np.isfinite(values)])
    if mag.size == 0:
        return 1.0
    lim = float(np.percentile(mag, percentile))
    if lim <= 0.0:
        lim = float(mag.max())
    return lim if lim > 0.0 else 1.0


def _signed_rgba(values: np.ndarray, limit: float) -> np.ndarray:
    from matplotlib import colormaps

    normed = 0.5 + 0.5 * np.clip(values / limit, -1.0, 1.0)
    return colormaps[SIGNED_CMAP](normed)


def heatmap_png(heat: np.ndarray, limit: Optional[float] = None) -> Tuple[str, float]:
    """Signed (H, W) map -> (base64 PNG, colour limit); red positive, blue negative."""
    lim = symmetric_limit(heat) if limit is None else float(limit)
    return png_base64(_signed_rgba(heat, lim)[..., :3]), lim


def overlay_png(heat: np.ndarray, image: np.ndarray, limit: float) -> str:
    """Signed map over a grey version of ``image`` (both (H, W) / (H, W, 3) of equal size);
    the map's opacity grows with ``|value|``."""
    grey = image.mean(-1, keepdims=True).repeat(3, -1) * 0.6 + 0.2
    rgba = _signed_rgba(heat, limit)
    alpha = np.clip(np.abs(heat) / limit, 0.0, 1.0)[..., None] * 0.85
    return png_base64(grey * (1 - alpha) + rgba[..., :3] * alpha)


def groups_overlay_png(masks: Sequence[np.ndarray], scores: Sequence[float], image: Optional[np.ndarray],
                       limit: float) -> str:
    """ACD level: each group (boolean (H, W) mask) coloured by its signed score over the
    dimmed image; pixels outside every group keep the dimmed image."""
    if image is None:
        shape = masks[0].shape if masks else (1, 1)
        base = np.full(shape + (3,), 0.85)
    else:
        base = image.mean(-1, keepdims=True).repeat(3, -1) * 0.5 + 0.25
    out = base.copy()
    for m, s in zip(masks, scores):
        colour = _signed_rgba(np.array([s], dtype=float), limit)[0, :3]
        out[m] = base[m] * 0.35 + colour * 0.65
        # outline: pixels of the group with a neighbour outside it
        edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
        out[edge] = colour * 0.6
    return png_base64(out)


def text_levels_png(words: Sequence[str], rows: List[List[Optional[float]]], limit: float) -> str:
    """Levels x words heat map (the standard ACD text figure), rows = levels (finest first,
    drawn at the top), ``None`` = no group at that level."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    T = max(len(words), 1)
    L = max(len(rows), 1)
    data = np.array([[np.nan if v is None else float(v) for v in r] for r in rows], dtype=float).reshape(L, T)
    fig = Figure(figsize=(max(4.0, 0.75 * T), 0.4 * L + 0.6), dpi=90)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.08, 0.02, 0.91, 0.96))
    ax.pcolormesh(np.ma.masked_invalid(data[::-1]), cmap=SIGNED_CMAP, vmin=-limit, vmax=limit,
                  edgecolors="white", linewidth=0.5)
    for lev in range(L):
        for t in range(T):
            if np.isfinite(data[lev, t]):
                ax.text(t + 0.5, L - lev - 0.5, words[t], ha="center", va="center", fontsize=8)
    ax.set_yticks(np.arange(L) + 0.5)
    ax.set_yticklabels([str(lev) for lev in range(L)][::-1], fontsize=7)
    ax.set_xticks([])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def general_values(attribution: Tensor, data: Tensor, categories: Sequence[str]) -> List[Dict[str, Any]]:
    """Per-category value and attribution of a general feature ``(1, K)``."""
    a = _to_numpy(attribution).reshape(-1)
    d = _to_numpy(data).reshape(-1)
    names = list(categories) + [f"#{i}" for i in range(len(categories), len(a))]
    return [{"name": names[i], "value": float(d[i]) if i < len(d) else None, "attribution": float(a[i])}
            for i in range(len(a))]


def token_scores(attribution: Tensor) -> List[float]:
    """A text attribution ``(1, T)`` or ``(1, T, E)`` -> one score per token."""
    a = attribution.detach().double().cpu()
    while a.dim() > 1 and a.shape[0] == 1:
        a = a[0]
    if a.dim() > 1:
        a = a.reshape(a.shape[0], -1).sum(1)
    return [float(v) for v in torch.nan_to_num(a).reshape(-1)]
