"""Relative Attributing Propagation (Nam et al., AAAI 2020, arXiv 1904.00605)."""

from __future__ import annotations

from typing import Any, List, Optional, Union

import torch
from torch import nn

from .._engine import LayerInfo
from ..rules import AttnLRPSoftmax, ConstantSoftmax, RAPRule, SignalTakeAll, Uniform
from ..rules import uniform_shift  # noqa: F401  (re-exported: its old home)
from ._propagation import LayerPropagationMixin, PropagationAttribution, check_layers


class RAP(PropagationAttribution):
    r"""Relative Attributing Propagation (Nam, Gur, Choi, Wolf, Lee; AAAI 2020).

    Returns signed input relevance: positive = relevant, negative = irrelevant evidence
    for the target.  The relevance of each example sums to the target logit (as in the
    reference implementation).

    The default reproduces the official PyTorch code (wjNam/Relative_Attributing_Propagation)
    layer by layer, quirks included:

    * output ``Linear`` (the layer whose output is the model output): ``first_prop`` —
      the target bias is split over positive/negative contributions, then every input gets
      ``|c'_j| · Σc' / Σ|c'|`` ("absolute influence normalisation");
    * hidden ``Conv``/``Linear``: biases ignored; positive relevance goes to the positive
      contributions and negative relevance to the negative ones, plus a share
      ``B/(A+B)`` of ``R`` to the negative contributors, then the *uniform shift*
      ``C ← C − (ΣC − ΣR)/#{C≠0}`` on non-zero entries.  Hidden ``Linear`` layers use the
      reference's Linear variant (``R`` instead of ``R⁺``/``R⁻``);
    * input layer: ``z^B`` with per-example scalar bounds (min / max of the input);
    * batch norm (and the affine part of layer, group, instance and RMS norms):
      pass-through; ReLU / dropout: identity; max pooling: winner-take-all; average pooling
      and residual additions: the signed z-rule.

    Operations the reference never met (architectures since 2019) get the engine's
    treatments, as in every LRP preset (``captum_rap.supported_operations()``): element-wise
    non-linearities (SiLU, GELU, Hardswish, tanh, ...) pass relevance unchanged (identity
    rule); normalisations divide by their standard deviation as a constant; attention is
    written out as projections (hidden ``Linear`` rule above), products and a softmax.
    Products and softmax follow ``operations``: by default CP-LRP's (gates and attention
    weights are constants, so RAP still conserves relevance: the layer-wise uniform shift
    keeps each layer's total, and nothing else creates or removes relevance);
    ``"attnlrp"`` uses the uniform product rule and AttnLRP's softmax rule, which does not
    conserve relevance and, with RAP's large signed relevances, can be far off (see the
    ``Σ map / logit`` column of ``benchmarks/RESULTS_quality_vit.md``).

    RAP was designed for ReLU CNNs.  On a trained vision transformer its maps rank pixels no
    better than noise: on signed inputs its hidden rule multiplies Σ|R| by 2-5 per attention or
    MLP sublayer (the sum is kept), and the signed z-rule at the residual sums adds to it, so
    the relevance grows block by block (README, "Quality on a trained transformer").  Use
    ``LRP(model, "attnlrp")`` on transformers.  Its cost: layers with signed inputs (every
    layer after a GELU, SiLU or normalisation) run both input-sign branches, about 4.5x the
    products of a forward+backward (2.5x on ReLU networks).

    Where the reference is undefined or broken this implementation does the principled
    thing: layers with signed inputs get *one* uniform shift over both input-sign branches
    (the reference shifts each branch to ``ΣR`` and returns ``2·ΣR``; identical for the
    non-negative inputs of torchvision VGG/ResNet); BasicBlock ResNets (the reference
    crashes) use the same residual z-rule as Bottlenecks; non-square inputs and any
    convolution geometry are supported; the input layer is the layer that reads the input
    (not "any conv with 3 input channels"); a model whose last operation is not a
    ``Linear`` is seeded with the target logit and all its layers use the hidden rule.

    Args:
        model (nn.Module): the unchanged model (call ``eval()`` first).
        stabilizer (float): 0 (default) = reference arithmetic (divisions guarded only
            against exact zeros).  A small positive value (e.g. ``1e-6`` relative to your
            activations) adds a sign-preserving epsilon to every division, including the
            relevance split at residual additions; it keeps float32 maps close to float64
            ones on deep residual nets where the reference is ill-conditioned, at the cost
            of exact conservation.
        operations (str): the rules for products of two relevance-carrying tensors and for
            softmax: ``"cp_lrp"`` (default: signal-take-all for gates, attention weights as
            constants) or ``"attnlrp"`` (uniform rule, AttnLRP's softmax rule).
        dtype (torch.dtype, optional): computation dtype of the relevance path, as for
            :class:`~captum_rap.LRP` (``None``: at least float32, ill-conditioned float32
            runs redone in float64).

    ``attribute`` takes the common arguments only (``target=None``: the predicted class,
    as the reference); the delta is the target logit minus the sum of input relevance.

    Examples::

        >>> from captum_rap import RAP
        >>> rap = RAP(model.eval())
        >>> attr = rap.attribute(x)                 # predicted class
        >>> attr, delta = rap.attribute(x, target=281, return_convergence_delta=True)
    """

    method_name = "RAP"

    _OPERATIONS = {"cp_lrp": {"product": SignalTakeAll(), "softmax": ConstantSoftmax()},
                   "attnlrp": {"product": Uniform(), "softmax": AttnLRPSoftmax()}}

    def __init__(self, model: nn.Module, stabilizer: float = 0.0, operations: str = "cp_lrp",
                 dtype: Optional[torch.dtype] = None) -> None:
        super().__init__(model, dtype)
        if operations not in self._OPERATIONS:
            raise ValueError(f"operations must be one of {sorted(self._OPERATIONS)}, got {operations!r}")
        self.operations = operations
        self._rule = RAPRule(stabilizer)
        self.stabilizer = self._rule.stabilizer

    def _rule_for(self, info: LayerInfo) -> Any:
        return self._rule

    def _op_rule(self, kind: str) -> Any:
        return self._OPERATIONS[self.operations].get(kind)


class LayerRAP(LayerPropagationMixin, RAP):
    r"""RAP relevance at the output (or input) of a hidden ``layer``.

    At the input of the layer that reads the model input this is the input attribution of
    :class:`RAP` (the input relevance, not ``relevance * input``).

    Args:
        model (nn.Module): the model.
        layer (nn.Module or list of nn.Module): a submodule of ``model`` (relevances of
            repeated calls are summed), or a list of them (one relevance per layer, from
            one propagation).
        stabilizer, operations, dtype: as for :class:`RAP`.

    Keyword options of ``attribute``:
        attribute_to_layer_input (bool): relevance at the layer input instead of its
            output. Default: False.

    ``attribute`` returns a *Tensor* of the layer output (or input) shape (a list of them
    for a list of layers, and a list of deltas: the target logit minus the layer relevance
    sum, per example).

    Examples::

        >>> LayerRAP(model, model.layer4).attribute(x, target=5)
        >>> r3, r4 = LayerRAP(model, [model.layer3, model.layer4]).attribute(x, target=5)
    """

    method_name = "LayerRAP"
    _attribute_options = {"attribute_to_layer_input": False}

    def __init__(self, model: nn.Module, layer: Union[nn.Module, List[nn.Module]], stabilizer: float = 0.0,
                 operations: str = "cp_lrp", dtype: Optional[torch.dtype] = None) -> None:
        super().__init__(model, stabilizer, operations, dtype)
        self.layer = check_layers(self.model, layer, self.method_name)
