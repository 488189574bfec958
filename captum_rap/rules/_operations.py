"""Rules for parameter-free operations (products of two relevance-carrying tensors, softmax).

Products of two relevance-carrying tensors and softmax have no parameters, so they are not
layers with an AffineOp; the engine treats them where it sees them (see
captum_rap._engine.optable) and asks the method's composite which of these rules to use.
"""

from __future__ import annotations





class OperationRule:
    """Base of the rules for parameter-free operations of the operation table (products,
    softmax).  ``kind`` names the table entry the rule is for."""

    kind: str = ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Uniform(OperationRule):
    r"""Uniform rule for products of relevance-carrying tensors (AttnLRP, Achtibat et al.,
    ICML 2024, eq. 7): in ``y = a ⊙ b`` (or ``a @ b``, ``einsum`` of ``k`` such factors) each
    factor receives an equal share ``R / k`` of the relevance of each product term; within
    a sum (matmul, einsum) the terms are weighted by their contributions (z-rule).
    Conserves relevance.

    Element-wise activations written as products (``x * sigmoid(x)``, GELU spelled out) get
    the same total as the identity rule: all shares end at the same input element.
    """

    kind = "product"

    def weights(self, gates: list) -> list:
        """Share of each relevance-carrying factor (``gates[i]``: factor ``i`` is a gate)."""
        return [1.0 / len(gates)] * len(gates)


class SignalTakeAll(OperationRule):
    r"""Signal-take-all for gated products (Arras et al., 2017, LRP for LSTMs; the gate
    treatment of CP-LRP): in a product of a *gate* (the output of ``sigmoid``,
    ``hardsigmoid`` or ``softmax``, or a selection of one) with other factors, the gate is a
    constant and the other factors share the relevance (all of it for one signal).  SE
    blocks (``x * sigmoid(fc(pool(x)))``), GLUs and attention ``softmax(q kᵀ) @ v`` give all
    relevance to the signal.  A product with no gate, or of gates only, uses the uniform
    rule.
    """

    kind = "product"

    def weights(self, gates: list) -> list:
        signals = [not g for g in gates]
        k = sum(signals)
        if k == 0 or k == len(gates):
            return [1.0 / len(gates)] * len(gates)
        return [1.0 / k if s else 0.0 for s in signals]


class AttnLRPSoftmax(OperationRule):
    r"""AttnLRP's softmax rule (Achtibat et al., ICML 2024): for ``s = softmax(x)``,
    ``R_in_i = x_i (R_i − s_i Σ_j R_j)`` (a first-order Taylor decomposition at 0 whose
    bias term is not redistributed; it does not conserve relevance).  In the engine this is
    the plain gradient of the softmax times its input, so it needs no code of its own."""

    kind = "softmax"
    constant = False


class ConstantSoftmax(OperationRule):
    r"""CP-LRP's treatment of attention (Ali et al., ICML 2022, "XAI for transformers: better
    explanations through conservative propagation"): softmax outputs (the attention
    weights) are constants, so relevance passes through ``softmax(q kᵀ) @ v`` to ``v`` only,
    by the z-rule, and none reaches ``q`` and ``k``.  Conserves relevance (bias-free)."""

    kind = "softmax"
    constant = True
