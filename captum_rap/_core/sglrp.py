"""Softmax-Gradient Layer-wise Relevance Propagation (Iwana, Kuroki, Uchida, ICCV-W 2019)."""

from __future__ import annotations

from typing import Any, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from .._engine import safe_divide
from ..composites import Composite
from ._contrastive import ContrastiveAttribution
from ._propagation import check_flag, per_example_sum


class SGLRP(ContrastiveAttribution):
    r"""Softmax-Gradient LRP (Iwana, Kuroki & Uchida, ICCV Workshops 2019): LRP started from
    the gradient of the target *probability* ``ŷ_t = softmax(z)_t`` with respect to the
    logits, which is positive at the target and negative at every other class:

    * ``R_target = f_LRP(x, ŷ_t (1 - ŷ_t) e_t)``,
    * ``R_dual = f_LRP(x, Σ_{n≠t} ŷ_t ŷ_n e_n)`` (the magnitudes of the negative entries),
    * ``SGLRP = R_target - λ R_dual`` with ``λ = ΣR_target / ΣR_dual`` per example if
      ``scaling`` (the authors' default), else ``λ = 1``;  ``relu=True`` keeps the positive
      part.

    Without scaling the map is **one** backward pass with the signed seed
    ``∂ŷ_t/∂z`` (all LRP rules are linear in the seed); with scaling the two maps are
    computed as one stacked batch ``[x; x]`` (one forward and one backward pass of batch 2N).
    The authors' code adds 1e-8 to the target seed; this implementation does not.

    Args:
        model (nn.Module): the classifier (outputs (N, C) logits, no softmax), in ``eval()``.
        composite (str or Composite): the base LRP rules. Default: ``"zplus_box"``.
        scaling (bool): scale the dual map to the target map's total. Default: True.
        relu (bool): keep only positive relevance. Default: False.
        merge_batchnorm (bool): as for :class:`~captum_rap.LRP`. Default: True.
        dtype (torch.dtype, optional): as for :class:`~captum_rap.LRP`.
        **composite_kwargs: preset overrides (``low``, ``high``, ``relevance_filter``, ...).

    Keyword options of ``attribute`` (``target``: the class per example, ``None``: the
    predicted class):
        return_dual (bool, optional): also return the unscaled dual map ``R_dual`` (uses
            the stacked batch).

    ``attribute`` returns the attribution (*Tensor* or *tuple of Tensor*), then the dual
    map if ``return_dual``, then the delta (shape (N,)) if ``return_convergence_delta``:
    ``Σ ∂ŷ_t/∂z - Σ(R_target - R_dual)`` (unscaled, before the ReLU; the gradient sums to
    0, and the error is 0 for conservative rules).

    Examples::

        >>> from captum_rap import SGLRP
        >>> sglrp = SGLRP(model, "zplus_box", low=-1.0, high=1.0)
        >>> attr = sglrp.attribute(x, target=[281, 967])
    """

    method_name = "SGLRP"

    def __init__(self, model: nn.Module, composite: Union[str, Composite, None] = "zplus_box",
                 scaling: bool = True, relu: bool = False, merge_batchnorm: bool = True,
                 dtype: Optional[torch.dtype] = None, **composite_kwargs: Any) -> None:
        super().__init__(model, composite, merge_batchnorm, dtype, **composite_kwargs)
        self.scaling = check_flag("SGLRP", "scaling", scaling)
        self.relu = check_flag("SGLRP", "relu", relu)

    @staticmethod
    def seeds_for(outputs: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor]:
        """``(ŷ_t (1 - ŷ_t) e_t, ŷ_t ŷ_n (n != t))``: the positive and the negated negative
        part of ``∂ŷ_t / ∂z``, each (N, C)."""
        prob = torch.softmax(outputs.detach(), dim=1)
        pt = (prob * mask).sum(1, keepdim=True)
        return pt * (1 - pt) * mask, pt * prob * (1 - mask)

    def _needs_both_maps(self) -> bool:
        return self.scaling

    def _contrast(self, maps, dual, diff, n):
        if self.scaling:
            lam = safe_divide(per_example_sum(maps, n), per_example_sum(dual, n))
            return tuple(a - lam.view((-1,) + (1,) * (b.dim() - 1)) * b for a, b in zip(maps, dual))
        return diff

    def _finish(self, contrast):
        return tuple(c.clamp(min=0) for c in contrast) if self.relu else contrast
