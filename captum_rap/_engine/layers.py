"""The affine layers of the forward pass (linear, convolutions, batch norm, the affine part
of normalisations) as nodes with a rule: the layer half of
:class:`~.mode.PropagationMode`, as a mixin."""

from __future__ import annotations

import weakref
from typing import Any, Optional, Tuple

import torch
from torch import Tensor

from . import input_affine
from .affine import AffineOp
from .batchnorm import fold_target, merge_bn
from .callargs import _arg, infer_batch_axis
from .functions import RuleFunction
from .records import KIND_ACT, KIND_AFFINE, KIND_INPUT, KIND_PRE, LayerInfo, Node, UnsupportedOperationError, \
    batch_of, set_tag

__all__ = ["LayerHandlers"]


class LayerHandlers:
    """Affine-layer treatments of the function mode (``_t_affine``) and the layer nodes
    (``_layer``) that the normalisation decompositions also use.  Mixed into
    :class:`~.mode.PropagationMode`, whose tagging helpers (``_tag``, ``_owner``,
    ``unsupported``, ...) it calls."""

    p: Any
    state: Any
    token: int
    layer_index: int

    def norm_affine(self, n: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], kind: str,
                    feature_dims: int = 0) -> Tensor:
        """The element-wise affine part ``w * n + b`` of a normalisation, as a layer with the
        composite's norm rule.  ``feature_dims > 0``: the weight covers the last
        ``feature_dims`` axes (layer / RMS norm); ``0``: one value per channel (axis 1)."""
        if weight is None and bias is None:
            return n
        if self._tag(weight) or self._tag(bias):
            raise self.unsupported(f"a {kind} whose weight or bias depends on the input",
                                   "Only the normalised tensor may carry relevance.")
        ref = weight if weight is not None else bias
        owner = self._owner(ref) or self._current_module()

        def shaped(t: Optional[Tensor]) -> Optional[Tensor]:
            if t is None or feature_dims:
                return t
            return t.view((1, -1) + (1,) * (n.dim() - 2))

        w = shaped(weight) if weight is not None else torch.ones_like(shaped(bias))
        return self._layer(n, AffineOp("elementwise", w, shaped(bias)), owner, kind)

    def batch_norm_layer(self, x: Tensor, running_mean, running_var, weight, bias, eps: float,
                         kind: str = "batchnorm") -> Tensor:
        """An eval batch norm (running statistics): a per-channel affine layer."""
        if running_mean is None or running_var is None:
            raise self.unsupported(
                "a batch norm that uses batch statistics (training mode or no running stats)",
                "Call model.eval() before attributing: relevance rules are defined for the "
                "inference-time affine map of batch norm.")
        if any(self._tag(t) for t in (running_mean, running_var, weight, bias)):
            raise self.unsupported(f"'{kind}' whose statistics depend on the input",
                                   "Only the layer input may carry relevance.")
        scale = torch.rsqrt(running_var.detach() + eps)
        if weight is not None:
            scale = scale * weight.detach()
        shift = -running_mean.detach() * scale
        if bias is not None:
            shift = shift + bias.detach()
        op = AffineOp("batchnorm", scale, shift)
        ref = weight if weight is not None else running_var
        owner = self._owner(ref) or self._current_module()
        fold_into = fold_target(self, x, scale) if self.p.merge_batchnorm and kind == "batchnorm" else None
        return self._layer(x, op, owner, kind, fold_into=fold_into)

    # -- affine layers -----------------------------------------------------------------
    def _t_affine(self, func, name, op_, args, kwargs, kinds):
        x = _arg(args, kwargs, 0, "input", None)
        if not self._tag(x):
            raise self.unsupported(f"'{name}' whose weight depends on the input",
                                   "Only the layer input may carry relevance.")
        if name == "batch_norm":
            training = _arg(args, kwargs, 5, "training", False)
            return self.batch_norm_layer(
                x, None if training else _arg(args, kwargs, 1, "running_mean", None),
                None if training else _arg(args, kwargs, 2, "running_var", None),
                _arg(args, kwargs, 3, "weight", None), _arg(args, kwargs, 4, "bias", None),
                _arg(args, kwargs, 7, "eps", 1e-5))
        weight = _arg(args, kwargs, 1, "weight", None)
        bias = _arg(args, kwargs, 2, "bias", None)
        if self._tag(weight) or self._tag(bias):
            raise self.unsupported(f"'{name}' whose weight depends on the input",
                                   "Only the layer input may carry relevance.")
        if name == "linear":
            op = AffineOp("linear", weight, bias)
        else:
            op = AffineOp(name, weight, bias,
                          stride=_arg(args, kwargs, 3, "stride", 1),
                          padding=_arg(args, kwargs, 4, "padding", 0),
                          dilation=_arg(args, kwargs, 5, "dilation", 1),
                          groups=_arg(args, kwargs, 6, "groups", 1))
        owner = self._owner(weight) or self._current_module()
        return self._layer(x, op, owner, op.kind)

    def _layer(self, x: Tensor, op: AffineOp, owner: Tuple[str, Any], kind: str,
               fold_into: Optional[Node] = None) -> Tensor:
        """Apply the affine ``op`` to ``x`` as a layer with a rule (a node of the call)."""
        mod_name, module = owner
        folded = input_affine.fold(self, x, op, f"module '{mod_name}'") if fold_into is None else None
        if folded is not None:  # an input normalisation folded in: the input layer of src
            x, op = folded
        xkind = self._tag(x)
        is_input = xkind == KIND_INPUT
        index = fold_into.info.index if fold_into is not None else self.layer_index
        x_batch = batch_of(x, self.token)
        info = LayerInfo(module=module, name=mod_name, kind=kind, is_input_layer=is_input,
                         is_first_layer=xkind in (KIND_INPUT, KIND_PRE, KIND_AFFINE), index=index,
                         batch_axis=x_batch[0] if x_batch else None,
                         batch_inner=x_batch[1] if x_batch else 1, batch_size=self.state.batch_size)
        if fold_into is None:
            self.layer_index += 1
        rule = self.p.rule_for(info)
        problem: Optional[Exception] = None
        if rule is None:
            problem = self.unsupported(f"'{kind}'", "The composite returned no rule for this layer.")
        else:
            check = getattr(rule, "check_layer", None)
            if check is not None:
                msg = check(info)
                if msg:
                    problem = UnsupportedOperationError(f"Rule {rule!r} on module '{mod_name}': {msg}")
        node = Node(info=info, op=op, rule=rule, state=self.state)
        if fold_into is not None:
            # the batch norm's rule is needed only if folding turns out not to be exact
            node.problem = problem
            return merge_bn(self, x, fold_into, node)
        if problem is not None:
            raise problem
        if is_input and getattr(rule, "needs_input_mask", False):
            info.input_mask = self._real_input_mask(x)
        if is_input:
            node.input_ref = x
        out = RuleFunction.apply(x, node)
        node.out_ref = weakref.ref(out)
        set_tag(out, self.state, KIND_ACT, node, batch=infer_batch_axis(kind, (), {}, x, x_batch, out))
        return out

    def _real_input_mask(self, x: Tensor) -> Optional[Tensor]:
        """Which entries of an input layer's input are model input values (1) and which are
        zero padding added by selection ops on the way (0); ``None`` if none is padding.

        ``x`` is a selection (pad, slice, reshape, cat) of the model inputs, i.e. ``x = J u``
        with a 0/1 matrix ``J``; ``J 1`` is the mask, obtained as the gradient with respect
        to ``v`` of ``<J^T v, 1>`` (double backward through the selection ops only).
        Without it, rules that put relevance on inputs that are 0 (ZBox, Flat, WSquare)
        would give relevance to padding positions, where it is silently lost."""
        leaves = self.state.leaves
        with self.constants():
            with torch.enable_grad():
                v = torch.zeros_like(x, requires_grad=True)
                grads = torch.autograd.grad(x, leaves, grad_outputs=v, create_graph=True,
                                            retain_graph=True, allow_unused=True)
                pairs = [(g, lf) for g, lf in zip(grads, leaves) if g is not None and g.requires_grad]
                if not pairs:
                    return None
                (mask,) = torch.autograd.grad([g for g, _ in pairs], v,
                                              grad_outputs=[torch.ones_like(lf) for _, lf in pairs],
                                              allow_unused=True)
        if mask is None or bool((mask != 0).all()):
            return None
        return (mask != 0).to(x.dtype)
