"""Relative Attributing Propagation (Nam et al., AAAI 2020, arXiv 1904.00605)."""

from __future__ import annotations

from typing import Any, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from .._compat import TargetType, log_usage
from .._engine import AffineOp, LayerInfo, per_example, safe_divide
from ..rules import (AttnLRPSoftmax, ConstantSoftmax, Rule, SignalTakeAll, Uniform, check_hyperparameter,
                     floored_epsilon)
from ._propagation import PropagationAttribution


def _divide_(den: Tensor, num: Tensor, eps: float) -> Tensor:
    """``_divide(num, den, eps)`` computed into ``den`` (a temporary of the caller)."""
    if eps > 0:
        den.add_(torch.sign(den).mul_(floored_epsilon(eps, den.dtype)))
    if den.shape != num.shape:
        return _divide(num, den, 0.0)
    return torch.div(num, den, out=den).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)


def _divide(a: Tensor, b: Tensor, eps: float) -> Tensor:
    """The reference's ``safe_divide`` (0 where ``b == 0``) or, with ``eps > 0``, the
    sign-preserving stabilized ``a / (b + eps·sign(b))`` (still 0 where ``b == 0``)."""
    if eps > 0:
        return safe_divide(a, b + floored_epsilon(eps, b.dtype) * torch.sign(b))
    return safe_divide(a, b)


def _per_sample_sum(t: Tensor, axis: Optional[int] = 0) -> Tensor:
    """Σ over each example (batch ``axis``; ``None``: one example), dims kept."""
    return per_example(t, axis)


def uniform_shift(c: Tensor, r_total: Tensor, inplace: bool = False, axis: Optional[int] = 0) -> Tensor:
    """RAP's uniform shifting: subtract ``(Σ C − Σ R) / #{C ≠ 0}`` from every non-zero
    entry of ``C`` (per example: ``axis`` is the batch axis, ``None`` for one example), so
    that ``Σ C = Σ R``.  An all-zero ``C`` stays zero.  ``inplace=True`` overwrites ``c``
    (fewer large allocations)."""
    nonzero = torch.sign(c).abs_()  # 1 where c != 0 (arithmetic: boolean masks are slow)
    count = _per_sample_sum(nonzero, axis)
    surplus = _per_sample_sum(c, axis) - r_total
    shift = nonzero.mul_(safe_divide(surplus, count))
    return c.sub_(shift) if inplace else c - shift


class RAPRule(Rule):
    """The per-layer rules of RAP as computed by the official implementation (see
    :class:`RAP` for the list).  One object serves every layer; it dispatches on
    :class:`~captum_rap._engine.LayerInfo`.

    Args:
        stabilizer (float): 0 reproduces the reference (exact-zero guarded divisions);
            ``> 0`` adds a sign-preserving ``stabilizer`` to every division, including the
            relevance density at residual additions.
    """

    #: the input layer gets z^B, which puts relevance on zero inputs: the engine then
    #: tells which entries of the layer input are zero padding (``info.input_mask``)
    needs_input_layer = True

    def __init__(self, stabilizer: float = 0.0) -> None:
        self.stabilizer = check_hyperparameter("RAP", "stabilizer", stabilizer)
        self.STABILITY_FACTOR = self.stabilizer

    def check_layer(self, info: LayerInfo) -> Optional[str]:
        return None

    # -- density helper ---------------------------------------------------------------
    def _out(self, x: Tensor, rel: Tensor, info: LayerInfo, axis: Optional[int]):
        """Return relevance ``rel`` as ``(factor, extra)``; with a stabilizer the density
        is ``rel / stab(x)``."""
        if self.stabilizer > 0 and not info.is_input_layer:
            # stabilized density R / (x + eps·sign(x)); the relevance this removes from
            # units with |x| ~ eps is given back in proportion to |x| (so the layer still
            # conserves and no unit's density explodes at a near-cancelling residual sum)
            density = _divide(rel, x, self.stabilizer)
            lost = _per_sample_sum(rel, axis) - _per_sample_sum(x * density, axis)
            density = density + torch.sign(x) * safe_divide(lost, _per_sample_sum(x.abs(), axis))
            return density, None
        return None, rel

    def propagate(self, op: AffineOp, x: Tensor, z: Tensor, relevance: Tensor, info: LayerInfo):
        if info.is_output_layer and op.kind == "linear" and not op.is_elementwise:
            return self._out(x, self._first_prop(op, x, z, relevance), info, None if x.dim() != 2 else 0)
        axis = info.example_axis("RAP")
        if op.is_elementwise:
            # reference: R * [x * w != 0] (beta is subtracted and added back; no effect).
            # Relevance at inputs that are exactly 0 (e.g. a bias-free conv over a dead
            # region, or concatenated ReLU outputs) would be lost there; it is given back
            # by RAP's own uniform shift over the non-zero inputs, so the layer conserves.
            kept = relevance
            w_zero = bool((op.weight == 0).any())
            if w_zero or x.numel() and float(x.abs().min()) == 0.0:
                keep = torch.sign(x).abs_()
                if w_zero:
                    keep = keep * op.weight_like((op.weight != 0).to(x.dtype), x)
                kept = relevance * keep
                if float((relevance - kept).abs().max()) > 0:
                    kept = uniform_shift(kept, _per_sample_sum(relevance, axis), inplace=True, axis=axis)
            return self._out(x, kept, info, axis)
        if info.is_input_layer:
            return None, self._zb(op, x, relevance, info.input_mask, axis)
        return self._out(x, self._hidden(op, x, z, relevance, axis), info, axis)

    # -- output layer: first_prop + redistribute ---------------------------------------
    def _first_prop(self, op: AffineOp, x: Tensor, z: Tensor, relevance: Tensor) -> Tensor:
        if x.dim() != 2:
            raise ValueError("RAP's output-layer rule needs a Linear layer on (N, features) inputs")
        eps = self.stabilizer
        w_all, b_all = op.weight, op.bias
        out = torch.zeros_like(x)
        xp, xn = x.clamp(min=0), x.clamp(max=0)
        for n, t in (relevance != 0).nonzero(as_tuple=False).tolist():
            # the reference seeds with the one-hot T and ends with sum(R) = y_t; a seed of
            # another magnitude scales the map by seed / y_t (linear extension)
            scale = _divide(relevance[n, t], z[n, t], eps)
            w = w_all[t]
            wp, wn = w.clamp(min=0), w.clamp(max=0)
            c = x[n] * w
            pos = (xp[n] * wp + xn[n] * wn).sum()
            neg = (xp[n] * wn + xn[n] * wp).sum()
            if b_all is None:
                bias = torch.zeros((), dtype=x.dtype, device=x.device)
            else:  # one bias per output, or a bias map (an input normalisation folded in)
                bias = b_all[min(n, b_all.shape[0] - 1), t] if op.is_bias_map(b_all) else b_all[t]
            b_pos = bias * _divide(pos, pos + neg, eps)
            b_neg = bias * _divide(neg, pos + neg, eps)
            c1 = xp[n] * wp
            c2 = xp[n] * wn
            cc = c + c1 * _divide(b_pos, c1.sum(), eps) + c2 * _divide(b_neg, c2.sum(), eps)
            total = cc.sum()
            r = cc.abs() * _divide(total, cc.abs().sum(), eps)
            out[n] = out[n] + scale * r
        return out

    # -- input layer: z^B with per-example scalar bounds -------------------------------
    def _zb(self, op: AffineOp, x: Tensor, relevance: Tensor, mask: Optional[Tensor],
            axis: Optional[int]) -> Tensor:
        # bounds: min / max over the example; zero padding between the model input and the
        # layer (e.g. a ZeroPad2d module) is padding for x, low and high alike, as the
        # reference's own conv padding is
        vals = x.detach() if mask is None else x.detach().masked_fill(mask == 0, float("nan"))
        low = per_example(vals, axis, "min").expand_as(x)
        high = per_example(vals, axis, "max").expand_as(x)
        if mask is not None:
            low, high = low * mask, high * mask
        w = op.weight
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        zz = op.forward(x, w, None) - op.forward(low, wp, None) - op.forward(high, wn, None)
        s = _divide(relevance, zz, self.stabilizer)
        return (x * op.backward(s, w, x.shape) - low * op.backward(s, wp, x.shape)
                - high * op.backward(s, wn, x.shape))

    # -- hidden layers: pos_prop on both input-sign branches, then one uniform shift ----
    def _hidden(self, op: AffineOp, x: Tensor, z: Tensor, relevance: Tensor, axis: Optional[int]) -> Tensor:
        # temporaries are updated in place: at large batch sizes, allocating fresh
        # activation-sized tensors (page faults) costs more than the arithmetic
        eps = self.stabilizer
        w = op.weight
        wp = w.clamp(min=0)
        is_linear = op.kind == "linear"
        total: Optional[Tensor] = None
        nonneg = x.numel() == 0 or float(x.min()) >= 0
        branches = [x] if nonneg else [x.clamp(min=0), -x.clamp(max=0)]
        # |W⁻|, and B = x|W⁻| by its own forward pass: computed as xW⁺ - xW (one pass
        # less), B is rounding noise instead of exactly 0 at units without negative
        # contributions (depthwise convs, sparse post-ReLU inputs), and R⁻ / noise then
        # sends arbitrary relevance through the cancelling backward pass
        wn_abs = wp - w
        for xb in branches:
            a = op.forward(xb, wp, None)
            b = op.forward(xb, wn_abs, None)
            s_ab = _divide_(torch.add(a, b), relevance, eps)  # R / (A + B)
            if is_linear:
                # reference Linear.pos_prop: a/A * R + b/(A+B) * R
                p = _divide_(a, relevance, eps)
                q = s_ab
            else:
                # reference Conv2d.pos_prop: a/A * R+ + b/B * R- + b/(A+B) * R
                p = _divide_(a, relevance.clamp(min=0), eps)
                q = _divide_(b, relevance.clamp(max=0), eps).add_(s_ab)
            del a, b, s_ab
            g = op.backward(p, wp, x.shape).add_(op.backward(q, wn_abs, x.shape))
            g.mul_(xb)
            total = g if total is None else total.add_(g)
        assert total is not None
        return uniform_shift(total, _per_sample_sum(relevance, axis), inplace=True, axis=axis)


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
    conserve relevance and, with RAP's large signed relevances, can be far off (on a
    random bias-free ViT-B/16 the map summed to -8987 for a logit of -0.19).

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

    @log_usage()
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        target: TargetType = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
    ):
        r"""RAP relevance of every input feature.

        Args:
            inputs (Tensor or tuple of Tensor): model input(s), batch first.
            target (int, tuple, Tensor or list, optional): output index per Captum's
                conventions; ``None`` = the predicted class (as the reference).
            additional_forward_args (Any, optional): extra model arguments.
            return_convergence_delta (bool, optional): also return ``logit − Σ relevance``
                per example (Captum's ``LRP`` convention).

        Returns:
            *Tensor* or *tuple of Tensor* of the inputs' shapes (signed relevance).

        Examples::

            >>> pos_neg = RAP(model).attribute(x, target=3)
            >>> relevant, irrelevant = pos_neg.clamp(min=0), pos_neg.clamp(max=0)
        """
        with torch.enable_grad():
            rel, outputs, seed, is_tuple = self._propagate(inputs, target, additional_forward_args)
        return self._format(rel, outputs, seed, is_tuple, return_convergence_delta)


class LayerRAP(RAP):
    r"""RAP relevance at the output (or input) of a hidden ``layer``.

    At the input of the layer that reads the model input this is the input attribution of
    :class:`RAP` (the input relevance, not ``relevance * input``).

    Args:
        model (nn.Module): the model.
        layer (nn.Module or list of nn.Module): a submodule of ``model`` (relevances of
            repeated calls are summed), or a list of them (one relevance per layer, from
            one propagation).
        stabilizer, operations, dtype: as for :class:`RAP`.

    Examples::

        >>> LayerRAP(model, model.layer4).attribute(x, target=5)
        >>> r3, r4 = LayerRAP(model, [model.layer3, model.layer4]).attribute(x, target=5)
    """

    method_name = "LayerRAP"

    def __init__(self, model: nn.Module, layer: Union[nn.Module, List[nn.Module]], stabilizer: float = 0.0,
                 operations: str = "cp_lrp", dtype: Optional[torch.dtype] = None) -> None:
        from .lrp import check_layers

        super().__init__(model, stabilizer, operations, dtype)
        self.layer = check_layers(self.model, layer, self.method_name)

    @log_usage()
    def attribute(  # type: ignore[override]
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        target: TargetType = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        attribute_to_layer_input: bool = False,
    ):
        r"""RAP relevance at the layer.

        Args:
            inputs, target, additional_forward_args: as for :meth:`RAP.attribute`.
            return_convergence_delta (bool): also return the target logit minus the layer
                relevance sum, per example.
            attribute_to_layer_input (bool): relevance at the layer input instead of output.

        Returns:
            *Tensor* of the layer output (or input) shape (a list of them for a list of
            layers, and a list of deltas).
        """
        from .lrp import layer_attribute

        return layer_attribute(self, self.layer, inputs, target, additional_forward_args,
                               return_convergence_delta, attribute_to_layer_input, None)
