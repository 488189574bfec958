"""LRP propagation rules.

Every rule is a subclass of Captum's :class:`~captum.attr._utils.lrp_rules.PropagationRule`,
so it can be attached with ``module.rule = Rule(...)`` exactly as for Captum's ``LRP``.
``captum_rap`` evaluates a rule through :meth:`Rule.propagate`, which receives one call of
an affine layer (:class:`captum_rap._engine.AffineOp`), its input ``x``, its output ``z``
(bias included) and the relevance ``R`` at the output, and returns ``(factor, extra)`` with

    ``R_in = x * factor + extra``        (either term may be ``None``).

Notation in the docstrings: ``x⁺ = max(x, 0)``, ``x⁻ = min(x, 0)``, likewise ``W⁺``, ``W⁻``,
``b⁺``, ``b⁻``; ``stab(z) = z + ε·sign(z)`` with the sign convention of
:mod:`captum_rap._engine.numerics` (``sign(±0) = ±1``, the sign bit).  All rules are linear in
the output relevance ``R`` for a fixed forward pass.

The rules live in private modules (the layer rules of LRP in ``_lrp``, RAP's in ``_rap``,
the operation rules in ``_operations``, Captum's names and the relevance filter in
``_captum``); every public name is importable from ``captum_rap.rules``.
"""

from ._base import Rule, check_flag, check_hyperparameter  # noqa: F401  (helpers of rule authors)
from ._captum import (Alpha1_Beta0_Rule, Alpha2_Beta1_Rule, EpsilonRule, FlatRule, GammaRule, IdentityRule,
                      RelevanceFilter, WSquareRule, ZBoxRule, from_captum_rule)  # noqa: F401
from ._lrp import AlphaBeta, BoundType, Epsilon, Flat, Gamma, PassThrough, WSquare, ZBox, ZPlus  # noqa: F401
from ._operations import AttnLRPSoftmax, ConstantSoftmax, OperationRule, SignalTakeAll, Uniform
from ._rap import RAPRule, uniform_shift  # noqa: F401
from .._engine.numerics import floored_epsilon  # noqa: F401  (its former home)

__all__ = [
    "Rule",
    "Epsilon",
    "Gamma",
    "AlphaBeta",
    "ZPlus",
    "ZBox",
    "Flat",
    "WSquare",
    "PassThrough",
    "EpsilonRule",
    "GammaRule",
    "Alpha1_Beta0_Rule",
    "Alpha2_Beta1_Rule",
    "ZBoxRule",
    "FlatRule",
    "WSquareRule",
    "IdentityRule",
    "RelevanceFilter",
    "OperationRule",
    "Uniform",
    "SignalTakeAll",
    "AttnLRPSoftmax",
    "ConstantSoftmax",
    "RAPRule",
]
