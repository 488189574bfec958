"""Metrics of single attribution maps (public through :mod:`captum_rap.metrics`):
:func:`relevance_distribution` (descriptive statistics of a map) and
:func:`pointing_game` (does the map point into a given region)."""

from __future__ import annotations

import math
from typing import Dict, List, Tuple, Union

import torch
from torch import Tensor

__all__ = ["relevance_distribution", "pointing_game"]


# -- relevance distribution -------------------------------------------------------------


def relevance_distribution(
    attributions: Union[Tensor, Tuple[Tensor, ...]],
    top_fraction: float = 0.1,
    sum_channels: bool = False,
) -> Dict[str, Tensor]:
    r"""How the relevance of each example is distributed: positive vs negative mass and
    sparsity (the RAP paper's analysis of positive and negative relevance).

    For each example, with ``a`` its attribution entries (all tensors of a tuple
    concatenated; summed over dim 1 first if ``sum_channels``):

    * ``total``: ``Σ a``
    * ``positive_mass``: ``Σ max(a, 0)``; ``negative_mass``: ``Σ max(-a, 0)`` (>= 0)
    * ``negative_to_positive``: ``negative_mass / positive_mass`` (``inf`` if only
      negative mass, ``nan`` if no mass at all)
    * ``positive_share``: ``positive_mass / (positive_mass + negative_mass)`` (``nan`` with
      no mass)
    * ``positive_fraction``, ``negative_fraction``, ``zero_fraction``: fraction of entries
      ``> 0``, ``< 0``, ``== 0``
    * ``gini``: the Gini index of ``|a|`` (Hurley & Rickard 2009): 0 for equal magnitudes,
      ``1 - 1/n`` for a single non-zero entry; 0 for an all-zero map
    * ``top_mass``: the share of ``Σ |a|`` held by the ``ceil(top_fraction · n)`` largest
      ``|a|`` (``nan`` for an all-zero map)

    Args:
        attributions (Tensor or tuple of Tensor): batch first.
        top_fraction (float, optional): the fraction of entries for ``top_mass``.
            Default: 0.1.
        sum_channels (bool, optional): sum over dim 1 first (pixel relevance of images).
            Default: False.

    Returns:
        dict of str -> Tensor of shape (N,) (float64).

    Examples::

        >>> from captum_rap import RAP
        >>> from captum_rap.metrics import relevance_distribution
        >>> stats = relevance_distribution(RAP(model).attribute(x, target=281))
        >>> stats["positive_share"], stats["gini"]
    """
    if not 0 < top_fraction <= 1:
        raise ValueError(f"relevance_distribution: top_fraction must be in (0, 1], got {top_fraction}")
    tensors = attributions if isinstance(attributions, (tuple, list)) else (attributions,)
    flat: List[Tensor] = []
    for t in tensors:
        if not isinstance(t, Tensor):
            raise TypeError(f"relevance_distribution: attributions must be tensors, got {type(t).__name__}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError("relevance_distribution: the attributions contain NaN or infinite values")
        t = t.detach().to(torch.float64)
        if sum_channels and t.dim() > 2:
            t = t.sum(dim=1)
        flat.append(t.reshape(t.shape[0], -1))
    a = torch.cat(flat, dim=1)
    n_entries = a.shape[1]
    pos = a.clamp(min=0).sum(1)
    neg = (-a).clamp(min=0).sum(1)
    mass = pos + neg
    nan = torch.full_like(pos, float("nan"))
    ratio = torch.where(pos > 0, neg / pos.clamp_min(1e-300),
                        torch.where(neg > 0, torch.full_like(pos, float("inf")), nan))
    share = torch.where(mass > 0, pos / mass.clamp_min(1e-300), nan)
    mag = a.abs()
    srt = torch.sort(mag, dim=1).values                                   # ascending
    k = torch.arange(1, n_entries + 1, dtype=torch.float64, device=a.device)
    weights = (n_entries - k + 0.5) / n_entries
    gini = torch.where(mass > 0,
                       1 - 2 * (srt / mass.clamp_min(1e-300).unsqueeze(1) * weights).sum(1),
                       torch.zeros_like(pos))
    n_top = max(1, int(math.ceil(top_fraction * n_entries - 1e-9)))
    top = srt[:, n_entries - n_top:].sum(1)
    top_mass = torch.where(mass > 0, top / mass.clamp_min(1e-300), nan)
    return {
        "total": a.sum(1),
        "positive_mass": pos,
        "negative_mass": neg,
        "negative_to_positive": ratio,
        "positive_share": share,
        "positive_fraction": (a > 0).to(torch.float64).mean(1),
        "negative_fraction": (a < 0).to(torch.float64).mean(1),
        "zero_fraction": (a == 0).to(torch.float64).mean(1),
        "gini": gini,
        "top_mass": top_mass,
    }


# -- pointing game ----------------------------------------------------------------------


def pointing_game(
    attributions: Tensor,
    masks: Tensor,
    sum_channels: bool = True,
) -> Dict[str, Tensor]:
    r"""Does the relevance point at the right region?  Per example, with ``a`` the map
    (summed over dim 1 first if ``sum_channels`` and it has more than two dims) and ``M``
    the region (e.g. the half of a two-object composite image that shows the target):

    * ``mass``: the share of the positive relevance inside the region,
      ``Σ_{i∈M} max(a_i, 0) / Σ_i max(a_i, 0)`` (NaN without positive relevance); 0.5 is
      what a map that ignores the class gives on a half/half composite.
    * ``hit``: the pointing game of Zhang et al. (ECCV 2016) without tolerance: 1 if the
      largest entry inside the region is larger than every entry outside, 0 if smaller,
      0.5 for an exact tie (a constant map does not score).

    Args:
        attributions (Tensor): (N, C, *spatial) maps (or (N, *spatial) with
            ``sum_channels=False``).
        masks (Tensor): the regions, boolean or 0/1, of the map's shape after the channel
            sum, or with a channel axis of size 1 (e.g. (N, 1, H, W)), or without the batch
            axis (one region for all examples).
        sum_channels (bool, optional): sum over dim 1 first.  Default: True.

    Returns:
        dict with ``"mass"`` and ``"hit"``, each (N,) float64.

    Raises:
        ValueError: shapes that do not match, a mask with values other than 0 and 1, or
            an empty / full mask.

    Examples::

        >>> from captum_rap.metrics import pointing_game
        >>> left = torch.zeros(1, 224, 224, dtype=torch.bool); left[..., :112] = True
        >>> pointing_game(CLRP(model).attribute(x, target=cat), left)["mass"]
    """
    if not isinstance(attributions, Tensor) or not isinstance(masks, Tensor):
        raise TypeError("pointing_game: attributions and masks must be Tensors")
    a = attributions.detach().to(torch.float64)
    if sum_channels and a.dim() > 2:
        a = a.sum(1)
    n = a.shape[0]
    m = masks.detach()
    if m.dtype != torch.bool:
        if not bool(((m == 0) | (m == 1)).all()):
            raise ValueError("pointing_game: masks must be boolean or 0/1")
        m = m != 0
    if sum_channels and attributions.dim() > 2 and m.dim() == attributions.dim() and m.shape[1] == 1:
        m = m.squeeze(1)
    if m.dim() == a.dim() - 1:
        m = m.unsqueeze(0)
    try:
        m = torch.broadcast_to(m.to(a.device), a.shape)
    except RuntimeError:
        raise ValueError(f"pointing_game: masks of shape {tuple(masks.shape)} do not match maps of shape "
                         f"{tuple(a.shape)}") from None
    fa, fm = a.reshape(n, -1), m.reshape(n, -1)
    if not bool(fm.any(1).all()) or bool(fm.all(1).any()):
        raise ValueError("pointing_game: every mask must contain some but not all positions")
    pos = fa.clamp(min=0)
    total = pos.sum(1)
    inside = (pos * fm).sum(1)
    mass = torch.where(total > 0, inside / total.clamp_min(1e-300), torch.full_like(total, float("nan")))
    neg_inf = torch.full_like(fa, float("-inf"))
    best_in = torch.where(fm, fa, neg_inf).amax(1)
    best_out = torch.where(fm, neg_inf, fa).amax(1)
    hit = torch.where(best_in > best_out, torch.ones_like(mass),
                      torch.where(best_in == best_out, torch.full_like(mass, 0.5), torch.zeros_like(mass)))
    return {"mass": mass, "hit": hit}
