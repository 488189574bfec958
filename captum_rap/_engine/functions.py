"""The autograd functions through which relevance leaves the rules of the engine.

The backward pass carries the relevance *density* ``R / a`` at every activation ``a``:

* :class:`RuleFunction`: an affine layer; its backward applies the layer's rule;
* :class:`MergedBatchNorm`: a batch norm folded into the layer before it;
* :class:`IdentityRule`: an element-wise non-linearity ``y = f(x)`` that passes its
  relevance unchanged (``R_x = R_y``, the identity rule of AttnLRP, Achtibat et al. 2024,
  eq. 9): the density becomes ``g · f(x) / x``;
* :class:`ScaleGradient`: identity forward, gradient times a constant backward (the uniform
  rule for products of relevance-carrying tensors).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from .affine import AffineOp
from .numerics import safe_divide
from .records import Node


class RuleFunction(torch.autograd.Function):
    """Forward: the affine op unchanged.  Backward: the node's propagation rule."""

    @staticmethod
    def forward(ctx, x: Tensor, node: Node) -> Tensor:  # type: ignore[override]
        out = node.op.forward(x, node.op.weight, node.op.bias)
        ctx.node = node
        ctx.save_for_backward(x)
        ctx.set_materialize_grads(False)  # folded batch norms send no (zero) gradient
        # no copy: the function mode copies it before an in-place op writes to it
        # (copy-on-write); the version counter catches any write it did not see
        node.out = out.detach()
        node.out_version = out._version
        return out

    @staticmethod
    def backward(ctx, grad_out: Optional[Tensor]):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        node: Node = ctx.node
        bn = node.bn
        bn_grad, node.bn_grad = node.bn_grad, None
        op = node.op
        if bn is not None and bn_grad is not None and grad_out is None and node.seed is None:
            # the folded batch norm is the only way relevance leaves this layer: the rule
            # sees the folded affine map BN(W x + b) and the relevance at the BN output
            op = node.merged_op
            z = node.folded_output(x)
            r_out = bn.seed if bn.seed is not None else bn_grad * z
            if bn.info.is_output_layer:
                node.info.is_output_layer = True
        else:
            # no batch norm folded, or the layer output also reaches the model output by
            # another way (e.g. y = relu(bn(c) + c)): folding would be wrong, so the batch
            # norm gets its own rule, exactly as with merge_batchnorm=False
            z = node.rule_output(x)
            if node.seed is not None:
                r_out = node.seed
            else:
                if bn is not None and bn_grad is not None:
                    if bn.problem is not None:
                        raise bn.problem
                    zb = node.folded_output(x)
                    r_bn = bn.seed if bn.seed is not None else bn_grad * zb
                    dens = apply_rule(bn, bn.op, z, zb, r_bn)
                    grad_out = dens if grad_out is None else grad_out + dens
                r_out = torch.zeros_like(z) if grad_out is None else grad_out * z
        for capture in node.captures:
            capture(r_out)
        return apply_rule(node, op, x, z, r_out), None


def apply_rule(node: Node, op: AffineOp, x: Tensor, z: Tensor, r_out: Tensor) -> Tensor:
    """Apply ``node``'s rule to the relevance ``r_out`` at the output ``z`` of ``op`` and
    return the relevance density at the input ``x`` (input layers store their relevance
    for the model inputs and return 0)."""
    hook = node.state.relevance_hooks.get(id(node))
    if hook is not None:
        r_out = hook(node, r_out)
    factor, extra = node.rule.propagate(op, x, z, r_out, node.info)
    if node.info.is_input_layer:
        relevance = combine(x, factor, extra)
        node.state.input_relevance.append((node.input_ref, relevance))
        return torch.zeros_like(x)
    if factor is None:
        return safe_divide(extra, x) if extra is not None else torch.zeros_like(x)
    if extra is not None:
        factor = factor + safe_divide(extra, x)
    return factor


def combine(x: Tensor, factor: Optional[Tensor], extra: Optional[Tensor]) -> Tensor:
    rel = x * factor if factor is not None else torch.zeros_like(x)
    if extra is not None:
        rel = rel + extra
    return rel


class MergedBatchNorm(torch.autograd.Function):
    """A batch norm that reads the output of a conv/linear layer directly, with
    ``merge_batchnorm``.  The backward pass hands the gradient at the BN output straight
    to that layer (``node.bn_grad``) and sends no gradient of its own; the layer's backward
    then folds the BN into its rule if no other relevance reaches the layer output, and
    otherwise applies the BN's own rule first (see :class:`_RuleFunction`).  Folding keeps
    relevance where the layer output is exactly 0 but the BN output is not."""

    @staticmethod
    def forward(ctx, x: Tensor, bn_node: "Node") -> Tensor:  # type: ignore[override]
        ctx.node = bn_node
        return bn_node.op.forward(x, bn_node.op.weight, bn_node.op.bias)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        parent = ctx.node.parent
        parent.bn_grad = grad if parent.bn_grad is None else parent.bn_grad + grad
        return None, None


class IdentityRule(torch.autograd.Function):
    """Element-wise ``y = f(x)`` whose relevance passes unchanged: backward returns
    ``grad * f(x) / x`` (so ``R_x = x · g_x = y · g_y = R_y``), also where the plain gradient
    is 0 (saturated ReLU6 / Hardtanh) or has another sign (SiLU, GELU below 0).  Where
    ``x == 0`` exactly and ``f(0) != 0`` (sigmoid, softplus) the relevance ``f(0) · g``
    cannot be carried as a density and is lost."""

    @staticmethod
    def forward(ctx, x: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:  # type: ignore[override]
        y = fn(x)
        ctx.save_for_backward(safe_divide(y, x))
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (ratio,) = ctx.saved_tensors
        return grad * ratio, None


class IdentityFromOutput(torch.autograd.Function):
    """The identity rule for ``y = f(x)`` computed elsewhere (a module whose forward is an
    element-wise function in several operations): forward returns ``y``, backward
    ``grad * y / x``."""

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(safe_divide(y, x))
        return y.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (ratio,) = ctx.saved_tensors
        return grad * ratio, None


class ScaleGradient(torch.autograd.Function):
    """Identity in the forward pass; multiplies the gradient by ``factor`` (``1/k`` for
    each of the ``k`` relevance-carrying factors of a product: the uniform rule, AttnLRP
    eq. 7)."""

    @staticmethod
    def forward(ctx, x: Tensor, factor: float) -> Tensor:  # type: ignore[override]
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return grad * ctx.factor, None
