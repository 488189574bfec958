"""Layer-wise Relevance Propagation on unchanged models."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from ..composites import Composite
from ._propagation import CompositeAttribution, LayerPropagationMixin, check_layers

__all__ = ["LRP", "LayerLRP"]


class LRP(CompositeAttribution):
    r"""Layer-wise Relevance Propagation (Bach et al. 2015) with configurable rules.

    Unlike ``captum.attr.LRP``, this implementation runs on unchanged models: residual
    additions, concatenations, reshapes, padding and average pooling are handled by the
    engine (relevance split in proportion to the contributions), functional activations
    inside ``forward`` are seen, reused modules are fine, batch norm layers are passed
    through, and rules attached with ``module.rule = ...`` survive repeated calls.
    Operations that cannot be propagated faithfully raise
    :class:`~captum_rap.UnsupportedOperationError` naming the operation and module.

    The relevance starts at the target output (``R = logit`` of the target class) unless
    ``output_relevance`` gives another starting relevance.

    Args:
        model (nn.Module): the model, unchanged.  Put it in ``eval()`` mode first.
        composite (str or Composite): rule preset: ``"epsilon"`` (default),
            ``"epsilon_plus"``, ``"epsilon_plus_flat"``, ``"epsilon_gamma_box"``,
            ``"epsilon_alpha2_beta1"``, ``"epsilon_alpha2_beta1_flat"``, ``"zplus"``,
            ``"zplus_box"``, or a :class:`~captum_rap.composites.Composite`.
        merge_batchnorm (bool): fold a batch norm that directly follows a conv/linear layer
            into that layer's rule (the effective affine map ``BN(W x + b)``, as zennit's
            canonizers do); otherwise batch norm layers get their own rule
            (``PassThrough`` in the presets).  A batch norm is folded only where that is
            exact: it reads the layer's output itself (not an in-place modified one), its
            channel axis is the layer's output-feature axis (a ``Linear`` on ``(N, L, F)``
            followed by ``BatchNorm1d(L)`` is not folded), and it is the only way relevance
            leaves the layer (``relu(bn(c) + c)`` is not folded); elsewhere the batch norm
            keeps its own rule, as with ``False``. Default: True.
        dtype (torch.dtype, optional): computation dtype of the relevance path.  ``None``
            (default): the model's dtype, at least float32 (half-precision models and
            autocast are propagated in float32 on copies of the parameters; results come
            back in the model's dtype), and a float32 run whose relevance sum is
            ill-conditioned (``Σ|R| / Σ|seed| · eps > 1e-3``) is redone in float64.
            ``torch.float32`` / ``torch.float64``: that dtype, with a warning when the
            estimate exceeds the tolerance.
        **composite_kwargs: overrides for a preset, e.g. ``epsilon=1e-9``, ``gamma=0.5``,
            ``low=-2.12, high=2.64`` (ZBox bounds, scalars or per-channel tensors).

    Keyword options of ``attribute`` (besides ``inputs``, ``target``,
    ``additional_forward_args`` and ``return_convergence_delta``, see
    :meth:`~captum_rap._core._propagation.PropagationAttribution.attribute`; the delta is
    the target logit minus the sum of input relevance):
        output_relevance (Tensor or callable, optional): starting relevance at the
            output instead of ``logit * one_hot(target)``: a tensor of the output shape
            or a function ``outputs -> tensor``.  ``target`` is then ignored.

    Examples::

        >>> import torchvision
        >>> from captum_rap import LRP
        >>> model = torchvision.models.resnet18().eval()
        >>> lrp = LRP(model, composite="epsilon_gamma_box", low=-2.12, high=2.64)
        >>> x = torch.randn(2, 3, 64, 64)
        >>> attr, delta = lrp.attribute(x, target=[3, 7], return_convergence_delta=True)
    """

    method_name = "LRP"
    _attribute_options = {"output_relevance": None}


class LayerLRP(LayerPropagationMixin, LRP):
    r"""LRP relevance at the output (or input) of a hidden ``layer``.

    The relevance at a tensor is what the propagation carries there: the relevance that
    the next layers' rules hand back to it (for a conv/linear layer's output, the relevance
    its rule redistributes).  At the input of a layer that reads the model input it is the
    input attribution of :class:`LRP` (the input relevance, not ``relevance * input``).
    With ``merge_batchnorm=True``, a conv/linear layer whose batch norm is folded into it
    is one layer ``BN(W x + b)``: the relevance at its output (``layer`` = the conv, or the
    batch norm's input) is the relevance at the batch norm output.

    Args:
        model (nn.Module): the model.
        layer (nn.Module or list of nn.Module): a submodule of ``model`` (if it is called
            several times, the relevances of all calls are summed), or a list of them: then
            ``attribute`` returns a list with one relevance per layer (and a list of deltas),
            all from one propagation, as Captum's ``LayerLRP``.
        composite, merge_batchnorm, dtype, **composite_kwargs: as for :class:`LRP`.

    Keyword options of ``attribute``:
        attribute_to_layer_input (bool): relevance at the layer's input instead of its
            output. Default: False.
        output_relevance: as for :class:`LRP`.

    ``attribute`` returns a *Tensor* of the layer output (or input) shape; for a list of
    layers, a list of them (and a list of deltas: the starting relevance minus the layer
    relevance sum, per example).

    Examples::

        >>> LayerLRP(model, model.layer3).attribute(x, target=5)
        >>> r3, r4 = LayerLRP(model, [model.layer3, model.layer4]).attribute(x, target=5)
    """

    method_name = "LayerLRP"
    _attribute_options = {"attribute_to_layer_input": False, "output_relevance": None}

    def __init__(self, model: nn.Module, layer: Union[nn.Module, Sequence[nn.Module]],
                 composite: Union[str, Composite, None] = "epsilon",
                 merge_batchnorm: bool = True, dtype: Optional[torch.dtype] = None,
                 **composite_kwargs: Any) -> None:
        super().__init__(model, composite, merge_batchnorm, dtype, **composite_kwargs)
        self.layer = check_layers(self.model, layer, self.method_name)
