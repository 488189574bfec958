r"""Evaluation metrics for attribution maps, next to Captum's ``infidelity`` and
``sensitivity_max``.

* :func:`region_perturbation`: the MoRF / LeRF region perturbation curves and their AOPC
  (Samek, Binder, Montavon, Lapuschkin & Müller, "Evaluating the visualization of what a
  deep neural network has learned", IEEE TNNLS 2017), as used by the RAP paper (Nam et al.,
  AAAI 2020) to compare attribution methods.  Batched: all perturbation steps of all
  examples go through the model in a few large forward passes.
* :func:`relevance_distribution`: positive / negative relevance mass, their ratio, the
  fraction of positive / negative entries and sparsity (Gini index, mass in the top
  entries) per example, as in the RAP paper's analysis of the relevance distribution.
* :func:`pointing_game`: does the relevance point at the right object?  The share of
  positive relevance inside a mask (e.g. the half of a two-object composite that shows
  the target) and whether the maximum lies inside it.
* Sanity checks (implemented in ``_randomization.py``, ``_csc.py`` and ``_similarity.py``):
  :func:`parameter_randomization` (Adebayo et al.'s model-parameter randomisation test,
  cascading or independent), :func:`map_similarities` (Spearman, SSIM, top-k
  intersection), :func:`cosine_similarity_convergence` (Sixt et al.'s CSC diagnostic) and
  :func:`plot_parameter_randomization` (the figure).

They follow Captum's calling conventions (``forward_func``, ``inputs``, ``target``,
``additional_forward_args``; targets as in :mod:`captum.attr`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ._compat import TargetType, _select_targets
from ._guard import ModelStateGuard
from ._randomization import _forward

__all__ = ["region_perturbation", "RegionPerturbationResult", "relevance_distribution", "aopc",
           "pointing_game", "parameter_randomization", "ParameterRandomizationResult", "map_similarities",
           "SIMILARITIES", "cosine_similarity_convergence", "CSCResult", "plot_parameter_randomization"]

ReplacementType = Union[str, Callable[[Tensor], Tensor], Tensor]


@dataclass
class RegionPerturbationResult:
    r"""What :func:`region_perturbation` returns (float64 curves on the inputs' device).

    Attributes:
        curves (Tensor): (N, steps + 1), the score ``f(x^(k))`` of the target after ``k``
            perturbation steps (column 0: the unperturbed input).
        drops (Tensor): (N, steps + 1), ``f(x^(0)) - f(x^(k))``.
        normalized_drops (Tensor): (N, steps + 1), ``drops / |f(x^(0))|`` (NaN where
            ``f(x^(0)) == 0``).
        aopc (Tensor): (N,), the area over the perturbation curve
            ``1/(L+1) Σ_{k=0..L} (f(x^(0)) - f(x^(k)))``.  Average it over the examples for
            the dataset AOPC of Samek et al. (:attr:`aopc_mean`).
        probability_curves (Tensor or None): (N, steps + 1), the softmax probability of the
            target class at every step (whatever ``score`` is), when the model output is
            (N, C) with C > 1; else ``None``.
        patch_order (Tensor): (N, P) patch indices in removal order (row-major over the
            patch grid).
        fraction_removed (Tensor): (steps + 1,), the fraction of input positions replaced
            after each step (of the first example; the same for all examples when every
            patch has the full size).
        order (str), score (str), patch_size (tuple of int), patches_per_step (int),
        steps (int), n_patches (int): the settings used.
    """

    curves: Tensor
    drops: Tensor
    normalized_drops: Tensor
    aopc: Tensor
    probability_curves: Optional[Tensor]
    patch_order: Tensor
    fraction_removed: Tensor
    order: str
    score: str
    patch_size: Tuple[int, ...]
    patches_per_step: int
    steps: int
    n_patches: int

    @property
    def aopc_mean(self) -> float:
        """The AOPC averaged over the examples (Samek et al.'s ``< . >_{p(x)}``)."""
        return float(self.aopc.mean())

    @property
    def probability_aopc(self) -> Optional[Tensor]:
        """(N,) AOPC of the softmax probability curves (``None`` without them)."""
        if self.probability_curves is None:
            return None
        return aopc(self.probability_curves)

    def as_dict(self) -> Dict[str, Any]:
        return dict(self.__dict__)


def aopc(curves: Tensor) -> Tensor:
    r"""AOPC of score curves ``(N, L + 1)`` (column 0 unperturbed):
    ``1/(L+1) Σ_{k=0..L} (f(x^(0)) - f(x^(k)))`` per example."""
    return (curves[:, :1] - curves).mean(dim=1)


# -- helpers ----------------------------------------------------------------------------


def _as_tensor_input(inputs: Any, name: str) -> Tensor:
    if isinstance(inputs, (tuple, list)):
        if len(inputs) != 1:
            raise TypeError(f"region_perturbation: {name} must be one tensor (or a 1-tuple); "
                            f"got {len(inputs)} tensors")
        inputs = inputs[0]
    if not isinstance(inputs, Tensor):
        raise TypeError(f"region_perturbation: {name} must be a Tensor, got {type(inputs).__name__}")
    return inputs


def _patch_ids(spatial: Sequence[int], patch: Sequence[int], device) -> Tuple[Tensor, int]:
    """Patch index of every spatial position (row-major over the patch grid), flattened."""
    grids = [math.ceil(s / p) for s, p in zip(spatial, patch)]
    ids = torch.zeros(spatial, dtype=torch.long, device=device)
    stride = 1
    for d in reversed(range(len(spatial))):
        coord = torch.arange(spatial[d], device=device) // patch[d]
        shape = [1] * len(spatial)
        shape[d] = spatial[d]
        ids = ids + coord.view(shape) * stride
        stride *= grids[d]
    return ids.reshape(-1), stride


def _gaussian_blur(x: Tensor, sigma: Sequence[float]) -> Tensor:
    """Separable Gaussian blur over the spatial dims of ``x`` (N, C, *spatial), replicate
    padding."""
    out = x
    n_sp = x.dim() - 2
    for d in range(n_sp):
        s = float(sigma[d])
        if s <= 0:
            continue
        radius = max(1, int(math.ceil(3 * s)))
        t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
        k = torch.exp(-0.5 * (t / s) ** 2)
        k = k / k.sum()
        # move dim d+2 last, blur with conv1d over it
        moved = out.movedim(d + 2, -1)
        shape = moved.shape
        flat = moved.reshape(-1, 1, shape[-1])
        flat = torch.nn.functional.pad(flat, (radius, radius), mode="replicate")
        flat = torch.nn.functional.conv1d(flat, k.view(1, 1, -1))
        out = flat.reshape(shape).movedim(-1, d + 2)
    return out


def _replacement(x: Tensor, replacement: ReplacementType, patch: Sequence[int],
                 blur_sigma: Optional[float]) -> Tensor:
    """The tensor that replaces removed regions, broadcastable to ``x`` (N, C, *spatial)."""
    if isinstance(replacement, Tensor):
        return replacement.to(dtype=x.dtype, device=x.device)
    if callable(replacement):
        r = replacement(x)
        if not isinstance(r, Tensor):
            raise TypeError("region_perturbation: a callable replacement must return a Tensor")
        return r.to(dtype=x.dtype, device=x.device)
    if replacement == "zeros":
        return torch.zeros_like(x)
    if replacement == "mean":
        return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)
    if replacement == "blur":
        sig = [blur_sigma] * len(patch) if blur_sigma is not None else [p / 2.0 for p in patch]
        return _gaussian_blur(x, sig)
    raise ValueError(f"region_perturbation: unknown replacement {replacement!r}; use 'mean', "
                     "'blur', 'zeros', a tensor or a callable")


def _subset_target(target: TargetType, idx: Tensor, n: int) -> TargetType:
    """Captum target for the rows whose example indices are ``idx``."""
    if target is None or isinstance(target, (int, tuple)):
        return target
    if isinstance(target, Tensor):
        if target.numel() == 1:
            return int(target.item())
        if target.dim() == 1 and target.numel() == n:
            return target.to(idx.device)[idx]
        raise ValueError(f"region_perturbation: target tensor of shape {tuple(target.shape)} does "
                         f"not match {n} examples")
    if isinstance(target, list):
        if len(target) != n:
            raise ValueError(f"region_perturbation: target list has {len(target)} entries for {n} "
                             "examples")
        return [target[i] for i in idx.tolist()]
    raise TypeError(f"region_perturbation: unsupported target type {type(target).__name__}")


def _subset_args(args: Any, idx: Tensor, n: int) -> Any:
    """Index tensors with a batch dim of ``n`` in ``additional_forward_args`` by ``idx``."""
    if args is None:
        return None
    single = not isinstance(args, tuple)
    items = (args,) if single else args
    out = tuple(a[idx.to(a.device)] if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == n
                else a for a in items)
    return out[0] if single else out


def _select(output: Tensor, target: TargetType) -> Tensor:
    """One score per row (Captum's target selection)."""
    out = _select_targets(output, target)
    if out.numel() != output.shape[0]:
        raise ValueError("region_perturbation: the selected output is not one score per example "
                         f"(output shape {tuple(output.shape)}); give a target")
    return out.reshape(-1)


# -- region perturbation ----------------------------------------------------------------


def region_perturbation(
    forward_func: Callable[..., Tensor],
    inputs: Union[Tensor, Tuple[Tensor]],
    attributions: Union[Tensor, Tuple[Tensor]],
    target: TargetType = None,
    patch_size: Union[int, Sequence[int]] = 8,
    steps: Optional[int] = None,
    order: str = "morf",
    replacement: ReplacementType = "mean",
    additional_forward_args: Any = None,
    batch_size: int = 64,
    patches_per_step: int = 1,
    score: str = "logit",
    blur_sigma: Optional[float] = None,
) -> RegionPerturbationResult:
    r"""Region perturbation (Samek et al., IEEE TNNLS 2017): replace the input's regions
    one step at a time in the order given by the attribution and record the target score.

    The input is cut into non-overlapping patches of ``patch_size`` over its spatial
    dimensions (edge patches may be smaller).  The relevance of a patch is the sum of the
    attribution over the patch and over all channels.  ``"morf"`` (most relevant first)
    removes the patches in decreasing relevance, ``"lerf"`` (least relevant first) in
    increasing relevance; ties are broken by the patch index (row-major, lowest first) in
    both orders, so the result is deterministic.  After step ``k`` the first
    ``k * patches_per_step`` patches of that order are replaced (cumulatively), giving
    ``x^(0) = x, x^(1), ..., x^(L)`` with ``L = steps``.  The curve is the target score
    ``f(x^(k))`` and

    .. math::

        \mathrm{AOPC} = \frac{1}{L + 1} \sum_{k=0}^{L} f(x^{(0)}) - f(x^{(k)})

    per example (average over examples for the dataset AOPC).  A good attribution gives a
    *high* MoRF AOPC (the score falls quickly) and a *low* LeRF AOPC; ``MoRF - LeRF`` sums
    both.

    Layout: ``inputs`` of shape (N, C, *spatial) with 1 to 3 spatial dims (e.g. images
    (N, C, H, W)); a 2-D input (N, D) is treated as one channel over D positions.
    ``attributions`` must have the shape of ``inputs`` (or of one example's spatial layout
    with any channel count, e.g. (N, 1, H, W)); use ``attr.clamp(min=0)`` first to rank by
    the positive part only.

    Score: ``score="logit"`` (default) uses the raw ``forward_func`` output of the target
    (logits for a classifier); ``score="softmax"`` applies a softmax over dim 1 first (class
    probabilities).  The softmax probability curves are returned as well whenever the
    output is (N, C) with C > 1, so one run gives both.

    All ``N * (steps + 1)`` perturbed inputs are evaluated in chunks of ``batch_size``
    rows under ``torch.no_grad()``.

    Args:
        forward_func (Callable): the model or any function returning (N, C) scores (or
            (N,) / (N, 1) outputs with ``target=None``).
        inputs (Tensor or 1-tuple of Tensor): the inputs, batch first.
        attributions (Tensor or 1-tuple of Tensor): the attribution of ``inputs`` (same
            batch size; summed over channels and patches to rank the patches).
        target (int, tuple, Tensor or list, optional): the output index per Captum's
            conventions.  ``None``: the predicted class of the unperturbed input for (N, C)
            outputs with C > 1, else the single output.  Default: None.
        patch_size (int or tuple of int, optional): patch edge length per spatial dim.
            Default: 8.
        steps (int, optional): the number of perturbation steps ``L``.  Default: as many as
            needed to replace every patch (``ceil(P / patches_per_step)``).
        order (str, optional): ``"morf"`` or ``"lerf"``.  Default: ``"morf"``.
        replacement (str, Tensor or Callable, optional): what a removed patch becomes:
            ``"mean"`` (the per-channel mean of that example), ``"blur"`` (a Gaussian-blurred
            copy of the example, ``sigma = blur_sigma`` or half the patch size), ``"zeros"``,
            a tensor broadcastable to ``inputs``, or ``callable(inputs) -> Tensor``
            (broadcastable to ``inputs``; called once).  Default: ``"mean"``.
        additional_forward_args (Any, optional): extra arguments for ``forward_func``;
            tensors whose first dim is N are indexed along with the perturbed rows, other
            arguments are passed unchanged.
        batch_size (int, optional): rows per forward pass.  Default: 64.
        patches_per_step (int, optional): patches replaced per step.  Default: 1.
        score (str, optional): ``"logit"`` or ``"softmax"`` (see above).  Default: ``"logit"``.
        blur_sigma (float, optional): Gaussian sigma (in positions) for ``"blur"``.

    Returns:
        :class:`RegionPerturbationResult` with ``curves``, ``drops``, ``normalized_drops``,
        ``aopc`` (N,), ``probability_curves``, ``patch_order`` and the settings.

    The model is left as it was: in training mode (a warning is given) its buffers, e.g.
    batch-norm running statistics, are restored after the forward passes.

    Raises:
        ValueError: bad ``order``, ``score``, ``replacement``, ``patch_size``, ``steps``,
            mismatched shapes, or NaN / infinite attributions or inputs.

    Examples::

        >>> from captum.attr import Saliency
        >>> from captum_rap import RAP
        >>> from captum_rap.metrics import region_perturbation
        >>> attr = RAP(model).attribute(x, target=281).clamp(min=0)
        >>> morf = region_perturbation(model, x, attr, target=281, patch_size=16, steps=49,
        ...                            patches_per_step=4, order="morf")
        >>> lerf = region_perturbation(model, x, attr, target=281, patch_size=16, steps=49,
        ...                            patches_per_step=4, order="lerf")
        >>> morf.aopc_mean - lerf.aopc_mean         # larger is better
        >>> morf.curves.shape                        # (N, 50)
    """
    x = _as_tensor_input(inputs, "inputs").detach()
    a = _as_tensor_input(attributions, "attributions").detach()
    if a.is_floating_point() and not bool(torch.isfinite(a).all()):
        raise ValueError("region_perturbation: the attributions contain NaN or infinite values; they do not "
                         "define a removal order")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError("region_perturbation: the inputs contain NaN or infinite values")
    if order not in ("morf", "lerf"):
        raise ValueError(f"region_perturbation: order must be 'morf' or 'lerf', got {order!r}")
    if score not in ("logit", "softmax"):
        raise ValueError(f"region_perturbation: score must be 'logit' or 'softmax', got {score!r}")
    if x.dim() < 2 or x.dim() > 5:
        raise ValueError(f"region_perturbation: inputs must be (N, D) or (N, C, *spatial) with 1-3 "
                         f"spatial dims, got shape {tuple(x.shape)}")
    flat_input = x.dim() == 2
    xs = x.unsqueeze(1) if flat_input else x
    if a.dim() == 2 and flat_input:
        a = a.unsqueeze(1)
    n = xs.shape[0]
    spatial = tuple(xs.shape[2:])
    if a.shape[0] != n or tuple(a.shape[2:]) != spatial or a.dim() != xs.dim():
        raise ValueError(f"region_perturbation: attributions of shape {tuple(a.shape)} do not match "
                         f"inputs of shape {tuple(x.shape)}")
    patch = (patch_size,) * len(spatial) if isinstance(patch_size, int) else tuple(int(p) for p in patch_size)
    if len(patch) != len(spatial) or any(p < 1 for p in patch):
        raise ValueError(f"region_perturbation: patch_size {patch_size!r} does not fit spatial shape "
                         f"{spatial}")
    if patches_per_step < 1:
        raise ValueError("region_perturbation: patches_per_step must be >= 1")
    if batch_size < 1:
        raise ValueError("region_perturbation: batch_size must be >= 1")

    device = xs.device
    ids, n_patches = _patch_ids(spatial, patch, device)
    max_steps = math.ceil(n_patches / patches_per_step)
    if steps is None:
        steps = max_steps
    if steps < 0 or steps > max_steps:
        raise ValueError(f"region_perturbation: steps must be in [0, {max_steps}] for {n_patches} "
                         f"patches and patches_per_step={patches_per_step}, got {steps}")

    # patch relevance: sum over channels and over the patch
    pos_rel = a.to(torch.float64).sum(dim=1).reshape(n, -1)
    rel = torch.zeros(n, n_patches, dtype=torch.float64, device=device)
    rel.index_add_(1, ids, pos_rel)
    key = -rel if order == "morf" else rel
    patch_order = torch.sort(key, dim=1, stable=True).indices            # (N, P)
    rank = torch.empty_like(patch_order)
    rank.scatter_(1, patch_order, torch.arange(n_patches, device=device).expand(n, -1).contiguous())
    rank_map = rank[:, ids]                                               # (N, S) rank per position

    if flat_input and (isinstance(replacement, Tensor) or callable(replacement)):
        # the user's replacement sees (and may return) the (N, D) layout of the inputs
        repl = _replacement(x, replacement, patch, blur_sigma)
        if repl.dim() >= 1:
            repl = repl.unsqueeze(-2)
    else:
        repl = _replacement(xs, replacement, patch, blur_sigma)
    try:
        repl = torch.broadcast_to(repl, xs.shape) if repl.shape != xs.shape else repl
    except RuntimeError:
        raise ValueError(f"region_perturbation: the replacement of shape {tuple(repl.shape)} does not "
                         f"broadcast to the inputs of shape {tuple(x.shape)}") from None
    counts = torch.arange(steps + 1, device=device) * patches_per_step   # patches removed at k

    # rows (example n, step k): all k = 0 rows first (they fix target=None), then k >= 1
    rows_n = torch.cat([torch.arange(n, device=device),
                        torch.arange(n, device=device).repeat_interleave(steps)])
    rows_k = torch.cat([torch.zeros(n, dtype=torch.long, device=device),
                        torch.arange(1, steps + 1, device=device).repeat(n)])
    total = rows_n.numel()
    scores = torch.empty(total, dtype=torch.float64, device=device)
    probs = torch.full((total,), float("nan"), dtype=torch.float64, device=device)
    has_probs = True
    eff_target = target
    base_outputs: List[Tensor] = []

    def _score_rows(out: Tensor, nn_: Tensor, sl: slice) -> None:
        nonlocal has_probs
        tgt = _subset_target(eff_target, nn_, n)
        if score == "softmax" and out.dim() < 2:
            raise ValueError("region_perturbation: score='softmax' needs (N, C) outputs")
        values = _select(torch.softmax(out, dim=1) if score == "softmax" else out, tgt)
        scores[sl] = values.to(torch.float64)
        if has_probs and out.dim() == 2 and out.shape[1] > 1 and tgt is not None:
            probs[sl] = _select(torch.softmax(out, dim=1), tgt).to(torch.float64)
        else:
            has_probs = False

    train_warning = ("region_perturbation: the model is in training mode: batch norm would use (and update) "
                     "the statistics of each forward batch, so the curves would depend on batch_size, and "
                     "dropout is random; call model.eval() first (the model's buffers are restored)")
    with torch.no_grad(), ModelStateGuard(forward_func, warn=train_warning):
        chunks = [(s0, min(s0 + batch_size, n)) for s0 in range(0, n, batch_size)]
        chunks += [(s0, min(s0 + batch_size, total)) for s0 in range(n, total, batch_size)]
        for i, (s0, s1) in enumerate(chunks):
            sl = slice(s0, s1)
            nn_, kk = rows_n[sl], rows_k[sl]
            if s0 < n:                                                    # unperturbed rows
                batch = xs[nn_]
            else:
                mask = (rank_map[nn_] < counts[kk].unsqueeze(1)).view((-1, 1) + spatial)
                batch = torch.where(mask, repl[nn_], xs[nn_])
            if flat_input:
                batch = batch.squeeze(1)
            out = _forward(forward_func, batch, _subset_args(additional_forward_args, nn_, n))
            if s0 < n:
                if target is None:
                    base_outputs.append(out)
                    if s1 == n:
                        full = torch.cat(base_outputs)
                        if full.dim() == 2 and full.shape[1] > 1:
                            eff_target = full.argmax(dim=1)
                        for (b0, b1), o in zip(chunks, base_outputs):
                            _score_rows(o, rows_n[b0:b1], slice(b0, b1))
                else:
                    _score_rows(out, nn_, sl)
            else:
                _score_rows(out, nn_, sl)

    # back to (N, steps + 1)
    order_idx = torch.empty(total, dtype=torch.long, device=device)
    order_idx[rows_n * (steps + 1) + rows_k] = torch.arange(total, device=device)
    scores = scores[order_idx]
    probs = probs[order_idx]
    curves = scores.view(n, steps + 1)
    drops = curves[:, :1] - curves
    f0 = curves[:, :1].abs()
    normalized = torch.where(f0 > 0, drops / f0.clamp_min(torch.finfo(torch.float64).tiny),
                             torch.full_like(drops, float("nan")))
    n_pos = ids.numel()
    patch_sizes = torch.bincount(ids, minlength=n_patches).to(torch.float64)
    sorted_sizes = patch_sizes[patch_order[0]] if n > 0 else patch_sizes
    cum = torch.cat([torch.zeros(1, dtype=torch.float64, device=device), sorted_sizes.cumsum(0)])
    fraction = cum[counts.clamp(max=n_patches)] / n_pos
    return RegionPerturbationResult(
        curves=curves,
        drops=drops,
        normalized_drops=normalized,
        aopc=drops.mean(dim=1),
        probability_curves=probs.view(n, steps + 1) if has_probs else None,
        patch_order=patch_order,
        fraction_removed=fraction,
        order=order,
        score=score,
        patch_size=patch,
        patches_per_step=patches_per_step,
        steps=steps,
        n_patches=n_patches,
    )


from ._map_statistics import pointing_game, relevance_distribution  # noqa: E402  (re-exported)
from ._csc import CSCResult, cosine_similarity_convergence  # noqa: E402  (re-exported)
from ._randomization import (  # noqa: E402  (re-exported: the sanity checks live in their own modules)
    ParameterRandomizationResult,
    parameter_randomization,
    plot_parameter_randomization,
)
from ._similarity import SIMILARITIES, map_similarities  # noqa: E402  (re-exported)
