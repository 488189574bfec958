"""Contrastive Layer-wise Relevance Propagation (Gu, Yang, Tresp, ACCV 2018)."""

from __future__ import annotations

from typing import Any, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..composites import Composite
from ._contrastive import ContrastiveAttribution, normalized


class CLRP(ContrastiveAttribution):
    r"""Contrastive LRP (Gu, Yang & Tresp, ACCV 2018): the LRP map of the target class minus
    the LRP map of a *dual* virtual concept "not the target", clipped at 0:

    ``R_CLRP = max(0, R - R_dual)``, with ``R = f_LRP(x, W, S_t e_t)`` (``S_t`` = target logit).

    * ``variant=1`` (CLRP1): the dual concept is all other classes; its seed is ``S_t / (C-1)``
      on every class ``k != t``.  All LRP rules are linear in the seed, so the contrast is
      **one** backward pass with the signed seed ``S_t e_t - S_t/(C-1) (1 - e_t)``.
    * ``variant=2`` (CLRP2): the dual concept is the target neuron with negated weights
      ``-W^L_t``; the same score ``S_t`` is pushed through it.  This is not linear in the seed
      (z+ at the output layer sees ``(W_t)^-`` instead of ``(W_t)^+``) but everything below
      the output layer is, so a top-layer rule forms ``R^{L-1}(W) - R^{L-1}(-W)`` at the
      penultimate layer and the rest is **one** pass.  The output layer's bias is negated with
      its weights.  With a rule at the output layer that treats ``z`` and ``-z`` alike (LRP-ε:
      ``x_j W_tj / z_t``) the dual equals the target map and CLRP2 is 0; use a z+-type output
      rule (the default ``"zplus_box"``).
    * ``normalize="sum"`` reproduces the official code's combination
      ``max(0, R/ΣR - R_dual/ΣR_dual)``; the two maps are then computed as one stacked batch
      ``[x; x]`` (one forward and one backward pass of batch 2N, no repeated calls).
    * ``seeds="code"`` uses the official code's seeds: ``|y_t|`` for the target, ``|y_k|``
      (k != t) for the CLRP1 dual and ``|y_t|`` for the CLRP2 dual.

    The contrast classes derive from ``target`` alone, so Captum's ``NoiseTunnel`` and
    ``sensitivity_max`` work unchanged.  Any LRP preset or rules attached with
    ``module.rule = ...`` can be the base; a non-linear base (the relevance filter) makes
    every variant use the stacked batch.

    Args:
        model (nn.Module): the classifier (outputs (N, C) logits), in ``eval()`` mode.
        variant (int): 1 or 2 (see above). Default: 1.
        composite (str or Composite): the base LRP rules. Default: ``"zplus_box"`` (z^B on the
            input layer, z+ elsewhere without bias, stabilizer 1e-9: the official CLRP rules;
            pass ``low=..., high=...`` for the input range, by default the per-example
            minimum and maximum of the input).
        normalize (str): ``"none"`` (paper) or ``"sum"`` (official code). Default: ``"none"``.
        seeds (str): ``"paper"`` or ``"code"`` (see above). Default: ``"paper"``.
        merge_batchnorm (bool): as for :class:`~captum_rap.LRP`. Default: True.
        dtype (torch.dtype, optional): as for :class:`~captum_rap.LRP`.
        **composite_kwargs: preset overrides (``low``, ``high``, ``epsilon``,
            ``relevance_filter``, ...).

    Keyword options of ``attribute`` (``target``: the class per example, ``None``: the
    predicted class):
        return_dual (bool, optional): also return the dual map ``R_dual`` (not normalised,
            not clipped).  Needs the two maps, so it uses the stacked batch.

    ``attribute`` returns the attribution (*Tensor* or *tuple of Tensor* of the inputs'
    shapes, >= 0), then the dual map if ``return_dual``, then the delta (shape (N,)) if
    ``return_convergence_delta``: the conservation error of the signed contrast before
    clipping and normalising, ``Σ(seed - dual seed) - Σ(R - R_dual)`` (Captum's sign; the
    seed sums are equal, so this is ``-Σ(R - R_dual)``; 0 for conservative rules such as
    ``"zplus_box"``).

    Examples::

        >>> import torchvision
        >>> from captum_rap import CLRP
        >>> model = torchvision.models.vgg16(weights="IMAGENET1K_V1").eval()
        >>> clrp = CLRP(model, variant=1, low=-2.1179, high=2.64)
        >>> attr = clrp.attribute(x, target=[340, 386])           # zebra, elephant
        >>> attr, dual = clrp.attribute(x, target=340, return_dual=True)
        >>> attr, dual, delta = CLRP(model, variant=2).attribute(x, 281, return_dual=True,
        ...                                                      return_convergence_delta=True)
    """

    method_name = "CLRP"

    def __init__(self, model: nn.Module, variant: int = 1,
                 composite: Union[str, Composite, None] = "zplus_box", normalize: str = "none",
                 seeds: str = "paper", merge_batchnorm: bool = True, dtype: Optional[torch.dtype] = None,
                 **composite_kwargs: Any) -> None:
        if variant not in (1, 2):
            raise ValueError(f"CLRP: variant must be 1 or 2, got {variant!r}")
        if normalize not in ("none", "sum"):
            raise ValueError(f"CLRP: normalize must be 'none' or 'sum', got {normalize!r}")
        if seeds not in ("paper", "code"):
            raise ValueError(f"CLRP: seeds must be 'paper' or 'code', got {seeds!r}")
        super().__init__(model, composite, merge_batchnorm, dtype, **composite_kwargs)
        self.variant = variant
        self.normalize = normalize
        self.seeds = seeds
        self._top_layer = "negate" if variant == 2 else None

    def seeds_for(self, outputs: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor]:
        """The target and dual seeds ``(N, C)`` for logits ``outputs`` and a one-hot ``mask``
        of the target class (for variant 2 the dual seed enters the negated output layer)."""
        outputs = outputs.detach()
        c = outputs.shape[1]
        if self.seeds == "paper":
            score = (outputs * mask).sum(1, keepdim=True)
            target = score * mask
            dual = score / (c - 1) * (1 - mask) if self.variant == 1 else target
        else:
            target = outputs.abs() * mask
            dual = outputs.abs() * (1 - mask) if self.variant == 1 else target
        return target, dual

    def _needs_both_maps(self) -> bool:
        return self.normalize == "sum"

    def _contrast(self, maps, dual, diff, n):
        if self.normalize == "sum":
            return tuple(a - b for a, b in zip(normalized(maps, n), normalized(dual, n)))
        return diff

    def _finish(self, contrast):
        return tuple(c.clamp(min=0) for c in contrast)
