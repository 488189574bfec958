"""RAP's layer rules (Nam et al., AAAI 2020) as computed by the official implementation."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._engine import AffineOp, LayerInfo, per_example, safe_divide
from .._engine.numerics import divide_keep_zero
from ._base import Rule, check_hyperparameter


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
    :class:`~captum_rap.RAP` for the list).  One object serves every layer; it dispatches on
    :class:`~captum_rap._engine.LayerInfo`.

    Args:
        stabilizer (float): 0 reproduces the reference (exact-zero guarded divisions);
            ``> 0`` adds a sign-preserving ``stabilizer`` to every division, including the
            relevance density at residual additions.
    """

    #: the input layer gets z^B, which puts relevance on zero inputs: the engine then
    #: tells which entries of the layer input are zero padding (``info.input_mask``); the
    #: other layers get RAP's hidden / output rules, so the rule is not input-layer only
    needs_input_mask = True

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
            density = divide_keep_zero(rel, x, self.stabilizer)
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
            scale = divide_keep_zero(relevance[n, t], z[n, t], eps)
            w = w_all[t]
            wp, wn = w.clamp(min=0), w.clamp(max=0)
            c = x[n] * w
            pos = (xp[n] * wp + xn[n] * wn).sum()
            neg = (xp[n] * wn + xn[n] * wp).sum()
            if b_all is None:
                bias = torch.zeros((), dtype=x.dtype, device=x.device)
            else:  # one bias per output, or a bias map (an input normalisation folded in)
                bias = b_all[min(n, b_all.shape[0] - 1), t] if op.is_bias_map(b_all) else b_all[t]
            b_pos = bias * divide_keep_zero(pos, pos + neg, eps)
            b_neg = bias * divide_keep_zero(neg, pos + neg, eps)
            c1 = xp[n] * wp
            c2 = xp[n] * wn
            cc = c + c1 * divide_keep_zero(b_pos, c1.sum(), eps) + c2 * divide_keep_zero(b_neg, c2.sum(), eps)
            total = cc.sum()
            r = cc.abs() * divide_keep_zero(total, cc.abs().sum(), eps)
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
        s = divide_keep_zero(relevance, zz, self.stabilizer)
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
            s_ab = divide_keep_zero(relevance, torch.add(a, b), eps, overwrite_den=True)  # R / (A + B)
            if is_linear:
                # reference Linear.pos_prop: a/A * R + b/(A+B) * R
                p = divide_keep_zero(relevance, a, eps, overwrite_den=True)
                q = s_ab
            else:
                # reference Conv2d.pos_prop: a/A * R+ + b/B * R- + b/(A+B) * R
                p = divide_keep_zero(relevance.clamp(min=0), a, eps, overwrite_den=True)
                q = divide_keep_zero(relevance.clamp(max=0), b, eps, overwrite_den=True).add_(s_ab)
            del a, b, s_ab
            g = op.backward(p, wp, x.shape).add_(op.backward(q, wn_abs, x.shape))
            g.mul_(xb)
            total = g if total is None else total.add_(g)
        assert total is not None
        return uniform_shift(total, _per_sample_sum(relevance, axis), inplace=True, axis=axis)
