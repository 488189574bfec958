r"""Similarity of attribution maps (used by the sanity checks; public through
:mod:`captum_rap.metrics`): Spearman rank correlation of the signed and of the absolute
maps, SSIM of the normalised absolute maps, top-k intersection; batched, float64.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = ["map_similarities", "SIMILARITIES"]

#: the similarity measures of :func:`map_similarities`
SIMILARITIES = ("spearman", "spearman_abs", "ssim", "topk")


def _ranks(a: Tensor) -> Tensor:
    """Row-wise ranks 1..n of a (N, n) tensor, ties get the average of their ranks (the
    convention of ``scipy.stats.rankdata`` / ``spearmanr``)."""
    n = a.shape[1]
    srt, idx = torch.sort(a, dim=1, stable=True)
    pos = torch.arange(1, n + 1, dtype=torch.float64, device=a.device).expand_as(srt)
    # start of each run of equal values, propagated along the row
    new_run = torch.ones_like(srt, dtype=torch.bool)
    new_run[:, 1:] = srt[:, 1:] != srt[:, :-1]
    run_id = new_run.to(torch.long).cumsum(1) - 1                           # 0-based run index
    first = torch.zeros_like(pos).scatter_reduce(1, run_id, pos, "amin", include_self=False)
    last = torch.zeros_like(pos).scatter_reduce(1, run_id, pos, "amax", include_self=False)
    avg = ((first + last) / 2).gather(1, run_id)
    return torch.empty_like(avg).scatter_(1, idx, avg)


def _pearson(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise Pearson correlation (N,), NaN where a row is constant."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    num = (a * b).sum(1)
    den = torch.sqrt((a * a).sum(1) * (b * b).sum(1))
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, float("nan")))


def _gaussian_window(sigma: float, truncate: float, device) -> Tensor:
    radius = int(truncate * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _ssim(a: Tensor, b: Tensor, sigma: float = 1.5, truncate: float = 3.5) -> Tensor:
    """SSIM (Wang, Bovik, Sheikh & Simoncelli 2004) of (N, H, W) maps with values in [0, 1]
    (data range 1), Gaussian window (``sigma`` 1.5, truncated at 3.5 sigma: 11 x 11), mean
    over the positions whose window lies inside the map: the numbers of
    ``skimage.metrics.structural_similarity(a, b, data_range=1, gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False)``."""
    k = _gaussian_window(sigma, truncate, a.device)
    w = k.numel()
    if a.shape[-1] < w or a.shape[-2] < w:
        raise ValueError(f"ssim needs maps of at least {w} x {w} positions, got {tuple(a.shape[-2:])}")
    c1, c2 = 0.01 ** 2, 0.03 ** 2

    def filt(x: Tensor) -> Tensor:
        x = x.unsqueeze(1)
        x = torch.nn.functional.conv2d(x, k.view(1, 1, 1, -1))
        x = torch.nn.functional.conv2d(x, k.view(1, 1, -1, 1))
        return x.squeeze(1)

    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a * mu_a
    var_b = filt(b * b) - mu_b * mu_b
    cov = filt(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


def _as_single(value: Any, who: str, what: str = "inputs") -> Tensor:
    """One tensor given alone or as a 1-tuple / 1-list; TypeError naming ``what`` otherwise."""
    if isinstance(value, (tuple, list)):
        if len(value) != 1:
            raise TypeError(f"{who}: {what} must be one tensor (or a 1-tuple), got {len(value)} tensors")
        value = value[0]
    if not isinstance(value, Tensor):
        raise TypeError(f"{who}: {what} must be a Tensor, got {type(value).__name__}")
    return value


def _prepare(maps: Union[Tensor, Tuple[Tensor, ...]], sum_channels: bool, who: str) -> Tensor:
    m = _as_single(maps, who, "maps").detach().to(torch.float64)
    if m.dim() < 2:
        raise ValueError(f"{who}: maps must be batch first with at least one feature axis, got shape "
                         f"{tuple(m.shape)}")
    if sum_channels and m.dim() > 2:
        m = m.sum(1)
    return m


def map_similarities(
    original: Union[Tensor, Tuple[Tensor]],
    other: Union[Tensor, Tuple[Tensor]],
    similarities: Optional[Sequence[str]] = None,
    top_k: float = 0.1,
    sum_channels: bool = True,
) -> Dict[str, Tensor]:
    r"""Per-example similarity of two batches of attribution maps (as used by the
    randomisation test of Adebayo et al. 2018).

    The maps are summed over dim 1 (channels) first when ``sum_channels`` and they have more
    than two dims; then, per example, over all remaining entries:

    * ``"spearman"``: Spearman rank correlation of the signed maps (ties get their average
      rank, as ``scipy.stats.spearmanr``); NaN if a map is constant.
    * ``"spearman_abs"``: Spearman rank correlation of the absolute values (Adebayo et al.'s
      main measure; a sign flip does not count as a change).
    * ``"ssim"``: SSIM of the absolute maps, each divided by its largest value (range
      [0, 1]; an all-zero map stays 0), Gaussian 11 x 11 window (sigma 1.5), data range 1
      (``skimage.metrics.structural_similarity`` with ``gaussian_weights=True,
      use_sample_covariance=False``).  Needs 2-D maps (after the channel sum) of at least
      11 x 11.
    * ``"topk"``: the fraction of the ``ceil(top_k * n)`` largest absolute entries of
      ``original`` that are also among the ``ceil(top_k * n)`` largest of ``other`` (exact
      ties at the cut are broken by position).

    An example whose maps contain NaN or Inf gets NaN in every measure.

    Args:
        original (Tensor or 1-tuple): (N, ...) maps.
        other (Tensor or 1-tuple): maps of the same shape.
        similarities (sequence of str, optional): which measures.  Default: all of
            :data:`SIMILARITIES` (``"ssim"`` only for 2-D maps of at least 11 x 11).
        top_k (float, optional): the fraction for ``"topk"``, in (0, 1].  Default: 0.1.
        sum_channels (bool, optional): sum over dim 1 first.  Default: True.

    Returns:
        dict of str -> Tensor (N,) float64.

    Examples::

        >>> from captum_rap.metrics import map_similarities
        >>> sims = map_similarities(attr_original, attr_randomized)
        >>> sims["spearman_abs"].mean()
    """
    a = _prepare(original, sum_channels, "map_similarities")
    b = _prepare(other, sum_channels, "map_similarities")
    if a.shape != b.shape:
        raise ValueError(f"map_similarities: maps of shapes {tuple(a.shape)} and {tuple(b.shape)} differ")
    names = _check_similarities(similarities, tuple(a.shape), "map_similarities")
    if not 0 < top_k <= 1:
        raise ValueError(f"map_similarities: top_k must be in (0, 1], got {top_k}")
    bad = ~(torch.isfinite(a).flatten(1).all(1) & torch.isfinite(b).flatten(1).all(1))
    if bad.any():
        a = torch.where(torch.isfinite(a), a, torch.zeros_like(a))
        b = torch.where(torch.isfinite(b), b, torch.zeros_like(b))
    out: Dict[str, Tensor] = {}
    fa, fb = a.flatten(1), b.flatten(1)
    for name in names:
        if name == "spearman":
            out[name] = _pearson(_ranks(fa), _ranks(fb))
        elif name == "spearman_abs":
            out[name] = _pearson(_ranks(fa.abs()), _ranks(fb.abs()))
        elif name == "ssim":
            na, nb = a.abs(), b.abs()
            ma = na.flatten(1).amax(1).view(-1, 1, 1)
            mb = nb.flatten(1).amax(1).view(-1, 1, 1)
            na = torch.where(ma > 0, na / ma.clamp_min(1e-300), torch.zeros_like(na))
            nb = torch.where(mb > 0, nb / mb.clamp_min(1e-300), torch.zeros_like(nb))
            out[name] = _ssim(na, nb)
        else:
            n = fa.shape[1]
            k = max(1, int(math.ceil(top_k * n - 1e-9)))
            ta = torch.sort(fa.abs(), dim=1, descending=True, stable=True).indices[:, :k]
            tb = torch.sort(fb.abs(), dim=1, descending=True, stable=True).indices[:, :k]
            in_b = torch.zeros_like(fa, dtype=torch.bool).scatter_(1, tb, True)
            out[name] = in_b.gather(1, ta).to(torch.float64).mean(1)
    if bad.any():
        out = {k: torch.where(bad, torch.full_like(v, float("nan")), v) for k, v in out.items()}
    return out


def _check_similarities(similarities: Optional[Sequence[str]], shape: Sequence[int], who: str) -> List[str]:
    """The measures to compute for prepared maps of ``shape`` (default: all that apply)."""
    two_d = len(shape) == 3
    ssim_ok = two_d and min(shape[1:]) >= _gaussian_window(1.5, 3.5, "cpu").numel()
    if similarities is None:
        return [s for s in SIMILARITIES if ssim_ok or s != "ssim"]
    if isinstance(similarities, str):
        similarities = [similarities]
    names = list(similarities)
    for s in names:
        if s not in SIMILARITIES:
            raise ValueError(f"{who}: unknown similarity {s!r}; choose from {list(SIMILARITIES)}")
    if "ssim" in names and not two_d:
        raise ValueError(f"{who}: 'ssim' needs 2-D maps (N, H, W) after the channel sum")
    if not names:
        raise ValueError(f"{who}: similarities is empty")
    return names
