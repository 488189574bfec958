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
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Tuple, Union

import torch
from torch import Tensor

from ._compat import (CaptumAlpha1Beta0Rule, CaptumEpsilonRule, CaptumGammaRule, CaptumIdentityRule,
                      PropagationRule)
from ._engine import AffineOp, LayerInfo, per_example, safe_divide
from ._engine.numerics import divide, divide_keep_zero, floored_epsilon

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

_PropagateResult = Tuple[Optional[Tensor], Optional[Tensor]]


def check_hyperparameter(owner: str, name: str, value: Any, minimum: float = 0.0,
                         maximum: Optional[float] = None, strict: bool = False) -> float:
    """``value`` as a finite float ``>= minimum`` (``> minimum`` if ``strict``) and
    ``<= maximum``; TypeError for a non-number (``bool`` included), ValueError naming
    ``owner`` and ``name`` for NaN, infinity or a value out of range.  One-element tensors
    are read as numbers."""
    if isinstance(value, Tensor) and value.numel() == 1 and value.dtype != torch.bool:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{owner}: {name} must be finite, got {value!r}")
    if v < minimum or (strict and v == minimum) or (maximum is not None and v > maximum):
        low = f"> {minimum:g}" if strict else f">= {minimum:g}"
        rng = low if maximum is None else f"{low} and <= {maximum:g}"
        raise ValueError(f"{owner}: {name} must be {rng}, got {value!r}")
    return v


def check_flag(owner: str, name: str, value: Any) -> bool:
    """``value`` as a bool (``True``/``False`` only); TypeError otherwise."""
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be True or False, got {value!r}")
    return value


def _nonneg_inputs(inputs: Any) -> bool:
    ts = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
    return all(_is_nonneg(t.detach()) for t in ts if isinstance(t, Tensor))


def _is_batchnorm(module: Any) -> bool:
    return isinstance(module, torch.nn.modules.batchnorm._NormBase)


class Rule(PropagationRule):
    """Base class of captum_rap rules.

    Subclasses implement :meth:`propagate`.  ``_manipulate_weights`` is what Captum's own
    ``LRP`` calls; rules that Captum's weight-manipulation interface cannot express raise
    there with a pointer to :class:`captum_rap.LRP`.
    """

    #: the rule returns relevance at positions where the layer input is 0, so it is valid
    #: only on layers that read the model input directly (:meth:`check_layer` refuses others)
    input_layer_only: bool = False

    #: on the input layer, the rule needs ``info.input_mask`` (which entries of the layer
    #: input are real input and which are zero padding between the model input and the
    #: layer); the engine computes the mask only for rules that ask for it
    needs_input_mask: bool = False

    #: ``R_in`` is linear in ``R_out`` for a fixed forward pass (true for every LRP rule;
    #: :class:`RelevanceFilter` is not).  Contrastive methods (CLRP, SGLRP) use one
    #: backward pass with a signed seed only when all rules are linear.
    linear_in_relevance: bool = True

    def propagate(self, op: AffineOp, x: Tensor, z: Tensor, relevance: Tensor,
                  info: LayerInfo) -> _PropagateResult:
        """Redistribute ``relevance`` (shape of ``z``) onto ``x``.

        Args:
            op (AffineOp): the layer call (``op.forward`` / ``op.backward`` apply the layer
                and its transpose with any weight).
            x (Tensor): layer input.
            z (Tensor): layer output (bias included).
            relevance (Tensor): relevance at the output.
            info (LayerInfo): where the layer sits.

        Returns:
            ``(factor, extra)`` with ``R_in = x * factor + extra``.
        """
        raise NotImplementedError

    def check_layer(self, info: LayerInfo) -> Optional[str]:
        """Return a message if the rule cannot be used on this layer, else ``None``."""
        if self.input_layer_only and not info.is_input_layer:
            return (f"{type(self).__name__} puts relevance on inputs that are 0, which the engine can "
                    "only return exactly for layers that read the model input directly (or through "
                    "padding/reshape/slicing only). Use it on the input layer only.")
        return None

    def _manipulate_weights(self, module, inputs, outputs):  # pragma: no cover - Captum path
        raise NotImplementedError(
            f"{type(self).__name__} cannot be expressed by Captum's weight manipulation; "
            "use captum_rap.LRP instead of captum.attr.LRP.")

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items()
                           if not k.startswith("_") and k not in ("relevance_input", "relevance_output"))
        return f"{type(self).__name__}({params})"


def _pos(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.clamp(min=0)


def _neg(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.clamp(max=0)


def _is_nonneg(x: Tensor) -> bool:
    # one reduction instead of a boolean mask (slow on CPU); NaN -> False
    return x.numel() == 0 or bool(x.min() >= 0)


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


# RAP ------------------------------------------------------------------------------------


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


# Operation rules ------------------------------------------------------------------------
#
# Products of two relevance-carrying tensors and softmax have no parameters, so they are not
# layers with an AffineOp; the engine treats them where it sees them (see
# captum_rap._engine.optable) and asks the method's composite which of these rules to use.


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
    from ._compat import (CaptumAlpha1Beta0Rule, CaptumEpsilonRule, CaptumGammaRule,
                          CaptumIdentityRule as _CapId)

    if isinstance(rule, Rule):
        return rule
    if isinstance(rule, _CapId):
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
