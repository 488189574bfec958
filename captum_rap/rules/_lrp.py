"""The LRP layer rules: Epsilon, Gamma, AlphaBeta / ZPlus, ZBox, Flat, WSquare, PassThrough."""

from __future__ import annotations

import math
from typing import Any, Optional, Union

import torch
from torch import Tensor

from .._compat import (CaptumIdentityRule)
from .._engine import LayerInfo, per_example
from .._engine.numerics import divide, floored_epsilon
from ._base import (Rule, _is_batchnorm, _is_nonneg, _neg, _nonneg_inputs, _pos, check_flag,
                    check_hyperparameter)


class Epsilon(Rule):
    r"""LRP-ε (Bach et al. 2015): ``R_j = Σ_k x_j W_kj R_k / stab(z_k)`` with
    ``z_k = Σ_j x_j W_kj + b_k`` (the layer output, bias included).

    Args:
        epsilon (float): stabilizer added with the sign of ``z``. ``0`` gives LRP-0.
            Default: 1e-6.

    Examples::

        >>> model.features[10].rule = Epsilon(0.25)
    """

    def __init__(self, epsilon: float = 1e-6) -> None:
        self.epsilon = check_hyperparameter("Epsilon", "epsilon", epsilon)
        self.STABILITY_FACTOR = self.epsilon

    def _manipulate_weights(self, module, inputs, outputs) -> None:
        # Captum's LRP computes R_in = x * W^T (R / stab(z)) with the unchanged layer and
        # STABILITY_FACTOR: exactly this rule
        pass

    def propagate(self, op, x, z, relevance, info):
        s = divide(relevance, z, self.epsilon)
        return op.backward(s, None, x.shape), None


class Gamma(Rule):
    r"""Generalized LRP-γ (Montavon et al. 2019; Andéol et al. 2021, as in zennit).

    For output units with ``z_k > 0`` the positive contributions are favoured:
    ``z⁺_k = Σ_j x⁺_j (W + γW⁺)_kj + x⁻_j (W + γW⁻)_kj + (b + γb⁺)_k``; for ``z_k < 0`` the
    negative ones: ``z⁻_k = Σ_j x⁺_j (W + γW⁻)_kj + x⁻_j (W + γW⁺)_kj + (b + γb⁻)_k``, and
    ``R_j = Σ_k [z_k>0] x_j (·)_kj R_k / stab(z⁺_k) + [z_k<0] x_j (·)_kj R_k / stab(z⁻_k)``.
    For non-negative inputs and positive outputs this is the original
    ``W + γW⁺`` rule.  With ``generalized=False`` the original rule is used for all outputs
    (``z_k = Σ_j x_j (W + γW⁺)_kj + b_k``, as Captum's ``GammaRule``).

    Args:
        gamma (float): weight of the favoured part. Default: 0.25.
        epsilon (float): stabilizer. Default: 1e-6.
        generalized (bool): see above. Default: True.
    """

    def __init__(self, gamma: float = 0.25, epsilon: float = 1e-6, generalized: bool = True) -> None:
        self.gamma = check_hyperparameter("Gamma", "gamma", gamma)
        self.epsilon = check_hyperparameter("Gamma", "epsilon", epsilon)
        self.generalized = check_flag("Gamma", "generalized", generalized)
        self.STABILITY_FACTOR = self.epsilon

    def _manipulate_weights(self, module, inputs, outputs) -> None:
        """Inside ``captum.attr.LRP``: the layer with ``W + γW⁺`` (and, generalized,
        ``b + γb⁺``) is this rule where it is exact (``generalized=False`` always; the
        generalized rule for non-negative inputs and outputs); otherwise it raises rather
        than computing another rule."""
        if _is_batchnorm(module) or not hasattr(module, "weight"):
            raise NotImplementedError(
                f"captum.attr.LRP cannot compute captum_rap's Gamma on {type(module).__name__}; "
                "use captum_rap.LRP")
        if self.generalized:
            outs = outputs if isinstance(outputs, Tensor) else None
            if not _nonneg_inputs(inputs) or outs is None or not _is_nonneg(outs.detach()):
                raise NotImplementedError(
                    "captum.attr.LRP can only compute captum_rap's generalized Gamma for a layer with "
                    f"non-negative inputs and outputs ({type(module).__name__} here has negative ones); use "
                    "captum_rap.LRP, or Gamma(generalized=False) (Captum's GammaRule)")
            if getattr(module, "bias", None) is not None:
                module.bias.data = module.bias.data + self.gamma * module.bias.data.clamp(min=0)
        module.weight.data = module.weight.data + self.gamma * module.weight.data.clamp(min=0)

    def propagate(self, op, x, z, relevance, info):
        g = self.gamma
        w, b = op.weight, op.bias
        wp = w + g * w.clamp(min=0)
        if not self.generalized:
            zz = op.forward(x, wp, b)
            s = divide(relevance, zz, self.epsilon)
            return op.backward(s, wp, x.shape), None
        if _is_nonneg(x):
            # x >= 0: with a = x W⁺, p = a + b⁺ and the layer output z = x W + b,
            #   z⁺ = (1+γ)a + (z - b - a) + b + γb⁺ = z + γp            (z > 0)
            #   z⁻ = a + (1+γ)(z - b - a) + b + γb⁻ = z + γ(z - p)      (z < 0)
            # i.e. z_sel = z + γ(sign(z) p + min(z, 0)): one extra forward pass instead of
            # two.  R_in = x (W⁺ᵀ s(1 + γ[z>0]) + W⁻ᵀ s(1 + γ[z<0])), s = R / stab(z_sel).
            # (temporaries updated in place: fresh activation-sized tensors are costly)
            wpos = w.clamp(min=0)
            p = op.forward(x, wpos, None)
            if b is not None:
                p.add_(op.bias_like(b.clamp(min=0), z))
            sg = torch.sign(z)
            zsel = torch.clamp(z, max=0).add_(p.mul_(sg)).mul_(g).add_(z)
            # stab(z_sel): z_sel has the sign of z where z != 0 (and R is masked where z == 0)
            eps = floored_epsilon(self.epsilon, z.dtype)
            den = zsel.abs_().add_(eps).copysign_(sg) if eps else zsel
            s = torch.mul(relevance, sg.abs(), out=p).div_(den).nan_to_num_(nan=0.0, posinf=0.0,
                                                                              neginf=0.0)
            m = sg.clamp(min=0)  # [z > 0]
            n = torch.sub(m, sg, out=sg)  # [z < 0]
            u = torch.addcmul(s, s, m, value=g, out=m)
            v = torch.addcmul(s, s, n, value=g, out=n)
            out = op.backward(u, wpos, x.shape)
            return out.add_(op.backward(v, w - wpos, x.shape)), None
        wn = w + g * w.clamp(max=0)
        bp = None if b is None else b + g * b.clamp(min=0)
        bn = None if b is None else b + g * b.clamp(max=0)
        pos_out = (z > 0).to(z.dtype)
        neg_out = (z < 0).to(z.dtype)
        xp, xn = x.clamp(min=0), x.clamp(max=0)
        zp = op.forward(xp, wp, bp) + op.forward(xn, wn, None)
        zn = op.forward(xp, wn, bn) + op.forward(xn, wp, None)
        sp = divide(pos_out * relevance, zp, self.epsilon)
        sn = divide(neg_out * relevance, zn, self.epsilon)
        f_pos_in = op.backward(sp, wp, x.shape) + op.backward(sn, wn, x.shape)
        f_neg_in = op.backward(sp, wn, x.shape) + op.backward(sn, wp, x.shape)
        return torch.where(x > 0, f_pos_in, f_neg_in), None


class AlphaBeta(Rule):
    r"""LRP-αβ (Bach et al. 2015).

    Positive contributions ``x⁺W⁺ + x⁻W⁻`` (plus ``b⁺``) and negative ones ``x⁺W⁻ + x⁻W⁺``
    (plus ``b⁻``) are normalised separately:
    ``R_j = Σ_k (α (x_j W_kj)⁺ / stab(z⁺_k) − β (x_j W_kj)⁻ / stab(z⁻_k)) R_k``.
    Conservative when ``α − β = 1`` and no bias absorbs relevance.

    Args:
        alpha (float): weight of the positive part. Default: 2.
        beta (float): weight of the negative part. Default: 1.
        epsilon (float): stabilizer. Default: 1e-6.
        bias (bool): include ``b⁺`` / ``b⁻`` in the denominators. Default: True.
    """

    def __init__(self, alpha: float = 2.0, beta: float = 1.0, epsilon: float = 1e-6, bias: bool = True) -> None:
        name = type(self).__name__
        self.alpha = check_hyperparameter(name, "alpha", alpha)
        self.beta = check_hyperparameter(name, "beta", beta)
        self.epsilon = check_hyperparameter(name, "epsilon", epsilon)
        self.bias = check_flag(name, "bias", bias)
        self.STABILITY_FACTOR = self.epsilon

    def _manipulate_weights(self, module, inputs, outputs) -> None:
        """Inside ``captum.attr.LRP`` only z⁺ (α = 1, β = 0) on non-negative inputs is
        expressible (the layer with ``W⁺`` and ``b⁺``, or no bias with ``bias=False``);
        anything else raises rather than computing another rule."""
        if (self.alpha == 1 and self.beta == 0 and hasattr(module, "weight") and not _is_batchnorm(module)
                and _nonneg_inputs(inputs)):
            module.weight.data = module.weight.data.clamp(min=0)
            if getattr(module, "bias", None) is not None:
                b = module.bias.data
                module.bias.data = b.clamp(min=0) if self.bias else torch.zeros_like(b)
            return
        raise NotImplementedError(
            f"captum.attr.LRP cannot compute {self!r} on this {type(module).__name__} (its weight "
            "manipulation expresses z+ on non-negative inputs only); use captum_rap.LRP instead")

    def propagate(self, op, x, z, relevance, info):
        w = op.weight
        b = op.bias if self.bias else None
        nonneg = _is_nonneg(x)
        if nonneg and self.beta != 0:
            # x >= 0: z⁺ = xW⁺ + b⁺ and z⁻ = xW⁻ + b⁻ = z - xW⁺ - b⁺ (the layer output
            # gives the negative part: one forward pass less); bias=False: z⁻ = z - b - xW⁺
            wp = w.clamp(min=0)
            zp = op.forward(x, wp, None)
            zn = torch.sub(z, zp)
            if op.bias is not None:
                if self.bias:
                    bp = op.bias_like(op.bias.clamp(min=0), z)
                    zp.add_(bp)
                    zn.sub_(bp)
                else:
                    zn.sub_(op.bias_like(op.bias, z))
            sp = divide(relevance, zp, self.epsilon)
            sn = divide(relevance, zn, self.epsilon)
            if self.alpha != 1:
                sp.mul_(self.alpha)
            out = op.backward(sp, wp, x.shape)
            return out.sub_(op.backward(sn.mul_(self.beta), w - wp, x.shape)), None
        wp = w.clamp(min=0)
        # W⁻ is only needed for negative inputs or a beta term (one pass over W less
        # for the common z⁺ case on post-ReLU inputs)
        wn = w - wp if (not nonneg or self.beta != 0) else None
        if nonneg:
            zp = op.forward(x, wp, _pos(b))
        else:
            xp, xn = x.clamp(min=0), x.clamp(max=0)
            zp = op.forward(xp, wp, _pos(b)) + op.forward(xn, wn, None)
        sp = divide(self.alpha * relevance, zp, self.epsilon)
        if self.beta != 0:
            if nonneg:
                zn = op.forward(x, wn, _neg(b))
            else:
                zn = op.forward(xp, wn, _neg(b)) + op.forward(xn, wp, None)
            sn = divide(self.beta * relevance, zn, self.epsilon)
        if nonneg:
            factor = op.backward(sp, wp, x.shape)
            if self.beta != 0:
                factor = factor - op.backward(sn, wn, x.shape)
            return factor, None
        f_pos_in = op.backward(sp, wp, x.shape)
        f_neg_in = op.backward(sp, wn, x.shape)
        if self.beta != 0:
            f_pos_in = f_pos_in - op.backward(sn, wn, x.shape)
            f_neg_in = f_neg_in - op.backward(sn, wp, x.shape)
        return torch.where(x > 0, f_pos_in, f_neg_in), None


class ZPlus(AlphaBeta):
    r"""LRP-z⁺ (= α1β0; Montavon et al. 2017): only positive contributions
    ``x⁺W⁺ + x⁻W⁻`` (plus ``b⁺`` if ``bias``) receive relevance.

    Args:
        epsilon (float): stabilizer. Default: 1e-6.
        bias (bool): include ``b⁺`` in the denominator. Default: True.
    """

    def __init__(self, epsilon: float = 1e-6, bias: bool = True) -> None:
        super().__init__(alpha=1.0, beta=0.0, epsilon=epsilon, bias=bias)

    def __repr__(self) -> str:
        return f"ZPlus(epsilon={self.epsilon!r}, bias={self.bias!r})"


BoundType = Union[float, Tensor, None]


def _check_bound(name: str, bound: Any) -> BoundType:
    """A z^B bound: None, a finite number or a finite floating tensor."""
    if bound is None:
        return None
    if isinstance(bound, Tensor):
        if not (bound.is_floating_point() or bound.dtype in (torch.int32, torch.int64, torch.int16, torch.int8,
                                                             torch.uint8)):
            raise TypeError(f"ZBox: {name} must be a number or a real tensor, got a {bound.dtype} tensor")
        if not bool(torch.isfinite(bound.detach()).all()):
            raise ValueError(f"ZBox: {name} must be finite, got a tensor with NaN or infinite entries")
        return bound.detach() if bound.is_floating_point() else bound.detach().double()
    return check_hyperparameter("ZBox", name, bound, minimum=-math.inf)


class ZBox(Rule):
    r"""LRP-z^B (Montavon et al. 2017) for the input layer of a bounded input domain
    ``low ≤ x ≤ high``:
    ``R_j = Σ_k (x_j W_kj − l_j W⁺_kj − h_j W⁻_kj) R_k / stab(Σ_i x_i W_ki − l_i W⁺_ki − h_i W⁻_ki)``.

    Args:
        low (float, Tensor or None): lowest input value, scalar or broadcastable to one
            input example (e.g. ``(1, 3, 1, 1)`` per channel). ``None``: the per-example
            minimum of the input (the convention of the official RAP code).
        high (float, Tensor or None): highest input value, as ``low``.
        epsilon (float): stabilizer. Default: 1e-6.
    """

    input_layer_only = True
    needs_input_mask = True

    def __init__(self, low: BoundType = None, high: BoundType = None, epsilon: float = 1e-6) -> None:
        self.low = _check_bound("low", low)
        self.high = _check_bound("high", high)
        if self.low is not None and self.high is not None:
            lo = self.low if isinstance(self.low, Tensor) else torch.tensor(self.low, dtype=torch.float64)
            hi = self.high if isinstance(self.high, Tensor) else torch.tensor(self.high, dtype=torch.float64)
            try:
                bad = bool((lo.detach().double().cpu() > hi.detach().double().cpu()).any())
            except RuntimeError:
                raise ValueError(f"ZBox: low of shape {tuple(lo.shape)} and high of shape {tuple(hi.shape)} "
                                 "do not broadcast") from None
            if bad:
                raise ValueError(f"ZBox: low must be <= high, got low={low!r}, high={high!r}")
        self.epsilon = check_hyperparameter("ZBox", "epsilon", epsilon)
        self.STABILITY_FACTOR = self.epsilon

    @staticmethod
    def _bound(bound: BoundType, x: Tensor, op: str, axis: Optional[int] = 0) -> Tensor:
        if bound is None:  # per example: min / max over every axis but the batch axis
            return per_example(x.detach(), axis, op).expand_as(x)
        if isinstance(bound, Tensor):
            return bound.to(device=x.device, dtype=x.dtype).expand_as(x)
        return torch.full_like(x, float(bound))

    def propagate(self, op, x, z, relevance, info):
        w = op.weight
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        axis = info.example_axis("ZBox") if self.low is None or self.high is None else 0
        low = self._bound(self.low, x, "min", axis)
        high = self._bound(self.high, x, "max", axis)
        if info.input_mask is not None:  # zero padding before the layer is not a bounded input
            low, high = low * info.input_mask, high * info.input_mask
        zz = op.forward(x, w, None) - op.forward(low, wp, None) - op.forward(high, wn, None)
        s = divide(relevance, zz, self.epsilon)
        extra = -low * op.backward(s, wp, x.shape) - high * op.backward(s, wn, x.shape)
        return op.backward(s, w, x.shape), extra


class _ReceptiveFieldRule(Rule):
    r"""Input-layer rules that spread relevance over the receptive field in proportion to a
    function ``ρ(W)`` of the weights alone: ``R_j = Σ_k ρ(W_kj) R_k / stab(Σ_i ρ(W_ki))``,
    the sum over the receptive field with padding excluded.  Subclasses give ``ρ``."""

    input_layer_only = True
    needs_input_mask = True

    def __init__(self, epsilon: float = 1e-6) -> None:
        self.epsilon = check_hyperparameter(type(self).__name__, "epsilon", epsilon)
        self.STABILITY_FACTOR = self.epsilon

    @staticmethod
    def _weight(w: Tensor) -> Tensor:
        raise NotImplementedError

    def propagate(self, op, x, z, relevance, info):
        rw = self._weight(op.weight)
        real = torch.ones_like(x) if info.input_mask is None else info.input_mask
        zz = op.forward(real, rw, None)
        s = divide(relevance, zz, self.epsilon)
        return None, real * op.backward(s, rw, x.shape)


class Flat(_ReceptiveFieldRule):
    r"""Flat rule (Lapuschkin et al. 2019): relevance spread uniformly over the receptive
    field, ``R_j = Σ_k R_k / n_k`` with ``n_k`` the number of inputs (padding excluded) that
    feed output ``k`` (``ρ(W) = 1``).  Input layers only.

    Args:
        epsilon (float): stabilizer. Default: 1e-6.
    """

    @staticmethod
    def _weight(w: Tensor) -> Tensor:
        return torch.ones_like(w)


class WSquare(_ReceptiveFieldRule):
    r"""w² rule (Montavon et al. 2017): ``R_j = Σ_k W_kj² R_k / Σ_i W_ki²`` (the sum over
    the receptive field, padding excluded; ``ρ(W) = W²``).  Input layers only.

    Args:
        epsilon (float): stabilizer. Default: 1e-6.
    """

    @staticmethod
    def _weight(w: Tensor) -> Tensor:
        return w * w


class PassThrough(Rule, CaptumIdentityRule):
    r"""Identity rule ``R_in = R_out`` for layers whose input and output have the same
    shape: batch norm (the normalisation layer is treated as if it were not there), a
    square ``nn.Linear``, a shape-preserving convolution.  Also usable in Captum's ``LRP``
    (it is Captum's ``IdentityRule``)."""

    def __init__(self) -> None:
        self.STABILITY_FACTOR = 1e-9

    def _manipulate_weights(self, module, inputs, outputs) -> None:
        pass

    def check_layer(self, info: LayerInfo) -> Optional[str]:
        if info.kind == "batchnorm" or info.is_norm:
            return None
        w = getattr(info.module, "weight", None)
        if info.kind == "linear" and isinstance(w, Tensor) and w.dim() == 2 and w.shape[0] != w.shape[1]:
            return (f"PassThrough (identity) needs a layer whose input and output have the same shape; this "
                    f"Linear maps {w.shape[1]} features to {w.shape[0]}.")
        return None

    def propagate(self, op, x, z, relevance, info):
        if tuple(relevance.shape) != tuple(x.shape):
            raise ValueError(f"PassThrough (identity) on '{info.name}': the layer maps an input of shape "
                             f"{tuple(x.shape)} to an output of shape {tuple(z.shape)}; the identity rule needs "
                             "the same shape")
        return None, relevance
