"""Captum's rule names, the translation of Captum's rule objects, and the relevance filter
(a wrapper of another rule)."""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor

from .._compat import (CaptumAlpha1Beta0Rule, CaptumEpsilonRule, CaptumGammaRule, CaptumIdentityRule)
from .._engine import LayerInfo
from .._engine.numerics import divide
from ._base import Rule, check_flag, check_hyperparameter
from ._lrp import AlphaBeta, Epsilon, Flat, PassThrough, WSquare, ZBox

# Captum's names ----------------------------------------------------------------------------
# The names Captum uses are Captum's own rule classes (swapping the import between
# captum.attr._utils.lrp_rules and captum_rap.rules gives the same map); in captum_rap.LRP
# they compute what captum.attr.LRP computes (see :func:`from_captum_rule`).  captum_rap's
# own rules keep their own names (Epsilon, Gamma, ZPlus, ...).
EpsilonRule = CaptumEpsilonRule
GammaRule = CaptumGammaRule
Alpha1_Beta0_Rule = CaptumAlpha1Beta0Rule
IdentityRule = CaptumIdentityRule

# Captum-style names of rules Captum does not have
ZBoxRule = ZBox
FlatRule = Flat
WSquareRule = WSquare


def Alpha2_Beta1_Rule(epsilon: float = 1e-6, bias: bool = True) -> AlphaBeta:  # noqa: N802
    """Captum-style alias of ``AlphaBeta(2, 1)``."""
    return AlphaBeta(2.0, 1.0, epsilon=epsilon, bias=bias)


class _CaptumWeightRule(Rule):
    """The meaning of Captum's weight-manipulating rules (``GammaRule``,
    ``Alpha1_Beta0_Rule``) as Captum's ``LRP`` computes them: the layer with modified
    weights ``w' = f(W)`` and the *unmodified* bias (or none with ``set_bias_to_zero``) is
    applied to the original input, ``R_j = Σ_k x_j w'_kj R_k / stab(Σ_i x_i w'_ki + b_k)``.
    (Captum's ``Alpha1_Beta0_Rule`` keeps the full signed bias and the signed input, so it
    is not :class:`ZPlus`, which uses ``b⁺`` and ``x⁻W⁻``.)"""

    def __init__(self, weight_fn, epsilon: float, use_bias: bool, name: str) -> None:
        self.weight_fn = weight_fn
        self.epsilon = float(epsilon)
        self.use_bias = use_bias
        self.STABILITY_FACTOR = epsilon
        self._name = name

    def propagate(self, op, x, z, relevance, info):
        w = self.weight_fn(op.weight)
        zz = op.forward(x, w, op.bias if self.use_bias else None)
        return op.backward(divide(relevance, zz, self.epsilon), w, x.shape), None

    def __repr__(self) -> str:
        return self._name


def from_captum_rule(rule: Any) -> Any:
    """Translate one of Captum's own rule objects into the equivalent captum_rap rule.

    Returns the rule unchanged if it already is a captum_rap :class:`Rule`."""
    if isinstance(rule, Rule):
        return rule
    if isinstance(rule, CaptumIdentityRule):
        return PassThrough()
    if isinstance(rule, CaptumEpsilonRule):
        return Epsilon(rule.STABILITY_FACTOR)
    if isinstance(rule, CaptumGammaRule):
        gamma = rule.gamma
        return _CaptumWeightRule(lambda w: w + gamma * w.clamp(min=0), rule.STABILITY_FACTOR,
                                 not getattr(rule, "set_bias_to_zero", False), repr(rule))
    if isinstance(rule, CaptumAlpha1Beta0Rule):
        return _CaptumWeightRule(lambda w: w.clamp(min=0), rule.STABILITY_FACTOR,
                                 not getattr(rule, "set_bias_to_zero", False), repr(rule))
    raise TypeError(f"Unsupported rule object {rule!r}: use a captum_rap.rules rule.")


class RelevanceFilter(Rule):
    r"""Relevance filter: keeps the top-k fraction of the relevance at a layer's output
    (per example, over all of the layer's output entries), sets the rest to 0, and
    redistributes what is left with the wrapped ``rule``.

    This is the practice of keeping only the strongest relevance flows layer by layer
    (``LRP for VGG`` style heatmaps): it sharpens and sparsifies maps.  The filter is *not*
    linear in the relevance, so contrastive methods built on a filtered composite compute
    their maps separately (as a stacked batch) instead of in one signed pass.

    Args:
        rule (Rule or None): the rule that redistributes the filtered relevance.  ``None``
            makes a template for :func:`captum_rap.composites.with_relevance_filter` /
            ``relevance_filter=`` (the composite fills in each layer's rule).
        top_k (float): fraction ``0 < top_k <= 1`` of the entries kept per example (at
            least one entry).  Default: 0.1.
        mode (str): ``"value"`` (default) keeps the ``k`` largest values (for positive
            relevance, as with z+-type rules, these are the largest relevances; kept
            entries keep their sign); ``"abs"`` keeps the ``k`` entries of largest ``|R|``.
        output_layer (bool): also filter the seed at the layer that produces the model
            output (with a one-hot seed this is a no-op anyway).  Default: False.

    Examples::

        >>> model.features[28].rule = RelevanceFilter(ZPlus(), top_k=0.2)
        >>> LRP(model, "epsilon_plus", relevance_filter=0.1).attribute(x, target=3)
    """

    linear_in_relevance = False

    def __init__(self, rule: Any = None, top_k: float = 0.1, mode: str = "value",
                 output_layer: bool = False) -> None:
        top_k = check_hyperparameter("RelevanceFilter", "top_k", top_k, 0.0, 1.0, strict=True)
        if mode not in ("value", "abs"):
            raise ValueError(f"RelevanceFilter: mode must be 'value' or 'abs', got {mode!r}")
        self.rule = None if rule is None else from_captum_rule(rule)
        self.top_k = float(top_k)
        self.mode = mode
        self.output_layer = check_flag("RelevanceFilter", "output_layer", output_layer)
        self.STABILITY_FACTOR = getattr(self.rule, "STABILITY_FACTOR", 1e-9)

    @property
    def input_layer_only(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.rule, "input_layer_only", False))

    @property
    def needs_input_mask(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.rule, "needs_input_mask", False))

    def check_layer(self, info: LayerInfo) -> Optional[str]:
        if self.rule is None:
            return "RelevanceFilter(rule=None) is a template; give it the rule to wrap."
        check = getattr(self.rule, "check_layer", None)
        return check(info) if check is not None else None

    def filter(self, relevance: Tensor, batch: Any = 0) -> Tensor:
        """Zero all but the top-k fraction of ``relevance`` per example (``batch``: the batch
        axis, ``(axis, inner)`` as in :attr:`LayerInfo.batch_inner`, or ``None`` for one
        example)."""
        if batch is None:
            ax, moved = None, relevance.reshape(1, -1)
            n = 1
        else:
            ax, inner = (batch, 1) if isinstance(batch, int) else batch
            moved = relevance.movedim(ax, 0)
            n = moved.shape[0] // inner
        flat = moved.reshape(n, -1)
        k = max(1, int(math.ceil(self.top_k * flat.shape[1])))
        if k >= flat.shape[1]:
            return relevance
        key = flat if self.mode == "value" else flat.abs()
        idx = key.topk(k, dim=1).indices
        keep = torch.zeros_like(flat).scatter_(1, idx, 1.0)
        out = (flat * keep).reshape(moved.shape)
        return out.reshape(relevance.shape) if ax is None else out.movedim(0, ax)

    def propagate(self, op, x, z, relevance, info):
        if self.rule is None:
            raise ValueError("RelevanceFilter(rule=None) is a template; give it the rule to wrap.")
        if self.output_layer or not info.is_output_layer:
            axis = 0 if info.is_output_layer else info.example_axis("RelevanceFilter")
            # ``filter(relevance)`` stays the call for batch-first layers, so subclasses that
            # override ``filter`` with one argument keep working
            relevance = self.filter(relevance) if axis in (0, (0, 1)) else self.filter(relevance, axis)
        return self.rule.propagate(op, x, z, relevance, info)

    def __repr__(self) -> str:
        return (f"RelevanceFilter({self.rule!r}, top_k={self.top_k!r}, mode={self.mode!r}, "
                f"output_layer={self.output_layer!r})")
