"""Softmax-Gradient Layer-wise Relevance Propagation (Iwana, Kuroki, Uchida, ICCV-W 2019)."""

from __future__ import annotations

from typing import Any, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from .._compat import TargetType, log_usage
from .._engine import safe_divide
from ..composites import Composite
from ._contrastive import ContrastiveAttribution, per_example_sum
from ._propagation import check_flag


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

    @log_usage()
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        target: TargetType = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        return_dual: bool = False,
    ):
        r"""SGLRP map of the target class.

        Args:
            inputs (Tensor or tuple of Tensor): model input(s), batch first.
            target (int, Tensor or list, optional): the class per example (Captum
                conventions); ``None``: the predicted class.
            additional_forward_args (Any, optional): extra model arguments (no relevance).
            return_convergence_delta (bool, optional): also return, per example,
                ``Σ ∂ŷ_t/∂z - Σ(R_target - R_dual)`` (unscaled, before the ReLU; the
                gradient sums to 0, and the error is 0 for conservative rules).
            return_dual (bool, optional): also return the unscaled dual map ``R_dual``
                (uses the stacked batch).

        Returns:
            The attribution (*Tensor* or *tuple of Tensor*), then the dual map if
            ``return_dual``, then the delta (shape (N,)) if ``return_convergence_delta``.

        Examples::

            >>> attr = SGLRP(model, scaling=False, relu=True).attribute(x, target=3)
        """
        stacked = return_dual or self.scaling or not self.base_is_linear()
        with torch.enable_grad():
            (maps, dual), outputs, st, sd, is_tuple = self._run(
                inputs, target, additional_forward_args, self.seeds_for, stacked)
        n = st.shape[0]
        if stacked:
            diff = tuple(a - b for a, b in zip(maps, dual))
            if self.scaling:
                lam = safe_divide(per_example_sum(maps, n), per_example_sum(dual, n))
                contrast = tuple(a - lam.view((-1,) + (1,) * (b.dim() - 1)) * b for a, b in zip(maps, dual))
            else:
                contrast = diff
        else:
            diff = contrast = maps
        attr = tuple(c.clamp(min=0) for c in contrast) if self.relu else contrast
        delta = self._contrast_delta(diff, st, sd) if return_convergence_delta else None
        return self._pack(is_tuple, attr, dual, delta, return_dual, return_convergence_delta)
