"""The base class of the layer rules and the hyperparameter checks shared by all rules."""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Tuple

import torch
from torch import Tensor

from .._compat import (PropagationRule)
from .._engine import AffineOp, LayerInfo

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

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # ``needs_input_layer`` (before 2026-12) meant both flags: keep rules written for it working
        if "needs_input_layer" in vars(cls):
            import warnings

            value = bool(vars(cls)["needs_input_layer"])
            warnings.warn(f"{cls.__name__}.needs_input_layer is deprecated: set input_layer_only (the rule "
                          "refuses other layers) and needs_input_mask (the engine computes info.input_mask); "
                          "both are set from it for now", DeprecationWarning, stacklevel=2)
            if "input_layer_only" not in vars(cls):
                cls.input_layer_only = value
            if "needs_input_mask" not in vars(cls):
                cls.needs_input_mask = value

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

