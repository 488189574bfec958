"""Layer-wise Relevance Propagation on unchanged models."""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .._compat import TargetType, log_usage
from .._engine import LayerInfo
from ..composites import Composite, get_composite
from ._propagation import PropagationAttribution, SeedType, check_flag, check_rule_attributes


class LRP(PropagationAttribution):
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

    Examples::

        >>> import torchvision
        >>> from captum_rap import LRP
        >>> model = torchvision.models.resnet18().eval()
        >>> lrp = LRP(model, composite="epsilon_gamma_box", low=-2.12, high=2.64)
        >>> x = torch.randn(2, 3, 64, 64)
        >>> attr, delta = lrp.attribute(x, target=[3, 7], return_convergence_delta=True)
    """

    method_name = "LRP"

    def __init__(self, model: nn.Module, composite: Union[str, Composite, None] = "epsilon",
                 merge_batchnorm: bool = True, dtype: Optional[torch.dtype] = None,
                 **composite_kwargs: Any) -> None:
        super().__init__(model, dtype)
        check_rule_attributes(self.model, type(self).__name__)
        self.composite = get_composite(composite, **composite_kwargs)
        self.merge_batchnorm = check_flag(type(self).__name__, "merge_batchnorm", merge_batchnorm)

    def _rule_for(self, info: LayerInfo) -> Any:
        return self.composite.rule_for(info)

    def _op_rule(self, kind: str) -> Any:
        return self.composite.op_rule(kind)

    @log_usage()
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        target: TargetType = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        output_relevance: SeedType = None,
    ):
        r"""Relevance of every input feature for the target output.

        Args:
            inputs (Tensor or tuple of Tensor): model input(s), batch first.
            target (int, tuple, Tensor or list, optional): output index per Captum's
                conventions.  ``None``: the single output per example, or the predicted
                class for (N, C) outputs.
            additional_forward_args (Any, optional): extra arguments passed to the model
                after the inputs (they carry no relevance).
            return_convergence_delta (bool, optional): also return, per example, the
                starting relevance (the target logit) minus the sum of input relevance
                (Captum's ``LRP`` convention: output minus attributions).
            output_relevance (Tensor or callable, optional): starting relevance at the
                output instead of ``logit * one_hot(target)``: a tensor of the output shape
                or a function ``outputs -> tensor``.  ``target`` is then ignored.

        Returns:
            *Tensor* or *tuple of Tensor* of the inputs' shapes (and the delta if asked).

        Examples::

            >>> attr = LRP(model, "epsilon_plus").attribute(x, target=281)
        """
        with torch.enable_grad():
            rel, outputs, seed, is_tuple = self._propagate(inputs, target, additional_forward_args,
                                                           output_relevance)
        return self._format(rel, outputs, seed, is_tuple, return_convergence_delta)


class LayerLRP(LRP):
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

    Examples::

        >>> LayerLRP(model, model.layer3).attribute(x, target=5)
        >>> r3, r4 = LayerLRP(model, [model.layer3, model.layer4]).attribute(x, target=5)
    """

    method_name = "LayerLRP"

    def __init__(self, model: nn.Module, layer: Union[nn.Module, Sequence[nn.Module]],
                 composite: Union[str, Composite, None] = "epsilon",
                 merge_batchnorm: bool = True, dtype: Optional[torch.dtype] = None,
                 **composite_kwargs: Any) -> None:
        super().__init__(model, composite, merge_batchnorm, dtype, **composite_kwargs)
        self.layer = check_layers(self.model, layer, self.method_name)

    @log_usage()
    def attribute(  # type: ignore[override]
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        target: TargetType = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        attribute_to_layer_input: bool = False,
        output_relevance: SeedType = None,
    ):
        r"""Relevance at the layer.

        Args:
            inputs, target, additional_forward_args, output_relevance: as for
                :meth:`LRP.attribute`.
            return_convergence_delta (bool): also return the starting relevance minus the
                layer relevance sum, per example (Captum's convention).
            attribute_to_layer_input (bool): relevance at the layer's input instead of its
                output.

        Returns:
            *Tensor* of the layer output (or input) shape; for a list of layers, a list of
            them (and a list of deltas).
        """
        return layer_attribute(self, self.layer, inputs, target, additional_forward_args,
                               return_convergence_delta, attribute_to_layer_input, output_relevance)


def check_layers(model: nn.Module, layer: Any, method: str) -> Any:
    """``layer`` (a submodule of ``model``) or a non-empty list of submodules."""
    layers = list(layer) if isinstance(layer, (list, tuple)) else [layer]
    if not layers:
        raise ValueError(f"{method}: the list of layers is empty")
    owned = {id(m) for m in model.modules()}
    for m in layers:
        if not isinstance(m, nn.Module):
            raise TypeError(f"{method}: layer must be an nn.Module or a list of them, got {type(m).__name__}")
        if id(m) not in owned:
            raise ValueError(f"{method}: the layer {type(m).__name__} is not a submodule of the model")
    return layers if isinstance(layer, (list, tuple)) else layer


def layer_attribute(method: PropagationAttribution, layer: Any, inputs, target,
                    additional_forward_args, return_convergence_delta, attribute_to_layer_input,
                    output_relevance, rule_for=None):
    """Run ``method``'s propagation and collect the relevance at ``layer`` (or at each
    layer of a list, from the same propagation)."""
    check_flag(method.method_name, "attribute_to_layer_input", attribute_to_layer_input)
    layers = list(layer) if isinstance(layer, list) else [layer]
    collected: List[List[Tuple[int, Tensor]]] = [[] for _ in layers]

    def make_callback(store: List[Tensor]):
        def callback(r: Tensor) -> None:
            if store and store[0][0] != method._runs:  # a run redone in float64 replaces the first
                store.clear()
            store.append((method._runs, r.detach()))
        return callback

    with torch.enable_grad():
        _, outputs, seed, _ = method._propagate(
            inputs, target, additional_forward_args, output_relevance,
            layer_hooks=[(m, make_callback(c), attribute_to_layer_input) for m, c in zip(layers, collected)],
            rule_for=rule_for)
    rels: List[Tensor] = []
    for m, c in zip(layers, collected):
        if not c:
            raise ValueError(f"{method.method_name}: the layer {type(m).__name__} was not called in the "
                             "forward pass or its activation carries no relevance")
        shapes = {tuple(t.shape) for _, t in c}
        if len(shapes) != 1:
            raise ValueError(f"{method.method_name}: the layer {type(m).__name__} was called {len(c)} times "
                             f"with different shapes {sorted(shapes)}")
        rels.append(torch.stack([t for _, t in c]).sum(0))
    n = seed.shape[0]
    deltas = method._to_result([seed.reshape(n, -1).sum(1) - r.reshape(n, -1).sum(1) for r in rels])
    rels = method._to_result(rels)
    if not isinstance(layer, list):
        return (rels[0], deltas[0]) if return_convergence_delta else rels[0]
    return (rels, deltas) if return_convergence_delta else rels
