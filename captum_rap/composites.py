"""Named rule presets ("composites"): which rule each layer gets.

A composite maps a :class:`~captum_rap._engine.LayerInfo` (layer kind, whether it reads
the model input, its module) to a rule.  A rule attached by the user with
``module.rule = ...`` always wins over the composite and is never removed.

Presets (``Conv`` = any convolution, ``Dense`` = ``nn.Linear`` and other products with a
parameter, ``Norm`` = the affine part of batch, layer, group, instance and RMS norms):

================================  ============  =============  ===========  ===========  ========  =========
preset                            first layer   Conv           Dense        Norm         products  softmax
================================  ============  =============  ===========  ===========  ========  =========
``"epsilon"``                     Epsilon       Epsilon        Epsilon      PassThrough  Uniform   AttnLRP
``"epsilon_plus"``                ZPlus         ZPlus          Epsilon      PassThrough  Uniform   AttnLRP
``"epsilon_plus_flat"``           Flat          ZPlus          Epsilon      PassThrough  Uniform   AttnLRP
``"epsilon_gamma_box"``           ZBox          Gamma(0.25)    Epsilon      PassThrough  Uniform   AttnLRP
``"epsilon_alpha2_beta1"``        AlphaBeta     AlphaBeta(2,1) Epsilon      PassThrough  Uniform   AttnLRP
``"epsilon_alpha2_beta1_flat"``   Flat          AlphaBeta(2,1) Epsilon      PassThrough  Uniform   AttnLRP
``"zplus"``                       ZPlus         ZPlus          ZPlus        PassThrough  Uniform   AttnLRP
``"zplus_box"``                   ZBox          ZPlus          ZPlus        PassThrough  Uniform   AttnLRP
``"attnlrp"``                     Epsilon       Epsilon        Epsilon      Epsilon      Uniform   AttnLRP
``"cp_lrp"``                      Epsilon       Epsilon        Epsilon      Epsilon      SignalTA  constant
================================  ============  =============  ===========  ===========  ========  =========

Every preset treats the parameter-free operations of the engine's table the same way
(``captum_rap.supported_operations()``): element-wise non-linearities (SiLU, GELU, tanh,
sigmoid, ...) pass relevance unchanged (identity rule); normalisations divide by their
standard deviation as a constant and center linearly; attention is written out as
projections, products and a softmax.  They differ only where the table names a rule:

* products of two relevance-carrying tensors (SE gates, GLU, attention ``q kᵀ`` and
  ``attn @ v``): :class:`~captum_rap.rules.Uniform` (half each, AttnLRP) everywhere except
  ``cp_lrp``, which uses :class:`~captum_rap.rules.SignalTakeAll` (nothing to gates);
* softmax: AttnLRP's rule (:class:`~captum_rap.rules.AttnLRPSoftmax`) everywhere except
  ``cp_lrp``, whose attention weights are constants (:class:`~captum_rap.rules.ConstantSoftmax`).

``"attnlrp"`` is AttnLRP (Achtibat et al., ICML 2024) as LXT computes it: epsilon on every
affine layer, including the affine part of layer norms (whose bias takes its share, as the
plain gradient gives it), with ``epsilon=1e-12`` by default (LXT's gradient x input is
LRP-0; a larger epsilon such as ``1e-6`` gives smoother maps and moves them away from LXT's).  ``"cp_lrp"`` is CP-LRP (Ali et al., ICML 2022) as LXT's patch of
torchvision's ViT computes it: attention weights and gates are constants.

"First layer" means a layer that reads the model input (see ``LayerInfo.is_input_layer``);
if the first affine layer of a model sits behind a non-selection operation (e.g. an
in-model normalisation) the box/flat rules cannot be used and the Conv rule applies there.
``"zplus_box"`` is the base of CLRP (bias ignored, stabilizer 1e-9, as in the official code).

Every preset takes ``relevance_filter=`` (a fraction such as ``0.1``, or a
:class:`~captum_rap.rules.RelevanceFilter` template): the relevance at the output of every
conv/linear layer except the output layer is filtered to its top-k fraction per example
before the layer's rule redistributes it (see :func:`with_relevance_filter`).
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any, Callable, Dict, List, Optional, Union

from ._engine import LayerInfo
from .rules import (AlphaBeta, AttnLRPSoftmax, ConstantSoftmax, Epsilon, Flat, Gamma, PassThrough,
                    RelevanceFilter, SignalTakeAll, Uniform, ZBox, ZPlus, from_captum_rule)

__all__ = ["Composite", "PRESETS", "get_composite", "preset_keywords", "with_relevance_filter",
           "FilteredComposite"]


class Composite:
    """Chooses a rule for every affine layer call.

    Args:
        first (callable or None): rule factory for input layers (``None``: use ``conv`` /
            ``dense``).
        conv (callable): rule factory for convolutions.
        dense (callable): rule factory for ``nn.Linear``.
        norm (callable): rule factory for the affine part of normalisations (batch, layer,
            group, instance, RMS norm).
        name (str): preset name, for ``repr``.
        product (callable): factory of the rule for products of relevance-carrying tensors
            (:class:`~captum_rap.rules.Uniform` or :class:`~captum_rap.rules.SignalTakeAll`).
        softmax (callable): factory of the softmax rule
            (:class:`~captum_rap.rules.AttnLRPSoftmax` or
            :class:`~captum_rap.rules.ConstantSoftmax`).

    A factory is called once per layer call; stateless rules can be shared.

    Examples::

        >>> comp = Composite(conv=lambda: ZPlus(), dense=lambda: Epsilon(0.1))
        >>> LRP(model, composite=comp)
    """

    def __init__(
        self,
        conv: Callable[[], Any],
        dense: Callable[[], Any],
        norm: Callable[[], Any] = PassThrough,
        first: Optional[Callable[[], Any]] = None,
        name: str = "custom",
        product: Callable[[], Any] = Uniform,
        softmax: Callable[[], Any] = AttnLRPSoftmax,
    ) -> None:
        self._first = first() if first is not None else None
        self._conv = conv()
        self._dense = dense()
        self._norm = norm()
        self._product = product()
        self._softmax = softmax()
        self.name = name

    def rule_for(self, info: LayerInfo) -> Any:
        """The rule for one layer call: the module's own ``rule`` attribute if set,
        otherwise the composite's choice."""
        user_rule = getattr(info.module, "rule", None) if info.module is not None else None
        if user_rule is not None:
            return from_captum_rule(user_rule)
        if info.is_norm:
            return self._norm
        if self._first is not None and info.is_input_layer:
            return self._first
        if info.kind == "linear":
            return self._dense
        return self._conv

    def op_rule(self, kind: str) -> Any:
        """The rule for a parameter-free operation of the engine's table: ``"product"``
        or ``"softmax"``."""
        return {"product": self._product, "softmax": self._softmax}.get(kind)

    def __repr__(self) -> str:
        return (f"Composite(name={self.name!r}, first={self._first!r}, conv={self._conv!r}, "
                f"dense={self._dense!r}, norm={self._norm!r}, product={self._product!r}, "
                f"softmax={self._softmax!r})")

    @property
    def linear_in_relevance(self) -> bool:
        """All rules of the composite are linear in the relevance (user rules set with
        ``module.rule`` are not included)."""
        rules = (self._first, self._conv, self._dense, self._norm)
        return all(getattr(r, "linear_in_relevance", True) for r in rules if r is not None)


def _epsilon(epsilon=1e-6):
    return Composite(conv=lambda: Epsilon(epsilon), dense=lambda: Epsilon(epsilon), name="epsilon")


def _epsilon_plus(epsilon=1e-6, stabilizer=1e-6):
    return Composite(conv=lambda: ZPlus(stabilizer), dense=lambda: Epsilon(epsilon), name="epsilon_plus")


def _epsilon_plus_flat(epsilon=1e-6, stabilizer=1e-6):
    return Composite(conv=lambda: ZPlus(stabilizer), dense=lambda: Epsilon(epsilon),
                     first=lambda: Flat(stabilizer), name="epsilon_plus_flat")


def _epsilon_gamma_box(epsilon=1e-6, stabilizer=1e-6, gamma=0.25, low=None, high=None):
    return Composite(conv=lambda: Gamma(gamma, stabilizer), dense=lambda: Epsilon(epsilon),
                     first=lambda: ZBox(low, high, stabilizer), name="epsilon_gamma_box")


def _epsilon_alpha2_beta1(epsilon=1e-6, stabilizer=1e-6):
    return Composite(conv=lambda: AlphaBeta(2.0, 1.0, stabilizer), dense=lambda: Epsilon(epsilon),
                     name="epsilon_alpha2_beta1")


def _epsilon_alpha2_beta1_flat(epsilon=1e-6, stabilizer=1e-6):
    return Composite(conv=lambda: AlphaBeta(2.0, 1.0, stabilizer), dense=lambda: Epsilon(epsilon),
                     first=lambda: Flat(stabilizer), name="epsilon_alpha2_beta1_flat")


def _zplus(stabilizer=1e-6, bias=True):
    return Composite(conv=lambda: ZPlus(stabilizer, bias), dense=lambda: ZPlus(stabilizer, bias), name="zplus")


def _zplus_box(stabilizer=1e-9, bias=False, low=None, high=None):
    return Composite(conv=lambda: ZPlus(stabilizer, bias), dense=lambda: ZPlus(stabilizer, bias),
                     first=lambda: ZBox(low, high, stabilizer), name="zplus_box")


def _attnlrp(epsilon=1e-12, **_):
    return Composite(conv=lambda: Epsilon(epsilon), dense=lambda: Epsilon(epsilon),
                     norm=lambda: Epsilon(epsilon), name="attnlrp")


def _cp_lrp(epsilon=1e-12, **_):
    return Composite(conv=lambda: Epsilon(epsilon), dense=lambda: Epsilon(epsilon),
                     norm=lambda: Epsilon(epsilon), product=SignalTakeAll, softmax=ConstantSoftmax,
                     name="cp_lrp")


PRESETS: Dict[str, Callable[..., Composite]] = {
    "epsilon": _epsilon,
    "epsilon_plus": _epsilon_plus,
    "epsilon_plus_flat": _epsilon_plus_flat,
    "epsilon_gamma_box": _epsilon_gamma_box,
    "epsilon_alpha2_beta1": _epsilon_alpha2_beta1,
    "epsilon_alpha2_beta1_flat": _epsilon_alpha2_beta1_flat,
    "zplus": _zplus,
    "zplus_box": _zplus_box,
    "attnlrp": _attnlrp,
    "cp_lrp": _cp_lrp,
}


def preset_keywords(name: Optional[str] = None) -> List[str]:
    """The keyword overrides a preset takes (``name``), or those of any preset (``None``)."""
    def named(fn: Callable[..., Any]) -> List[str]:
        return [p.name for p in inspect.signature(fn).parameters.values()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]

    if name is not None:
        return named(PRESETS[name])
    return sorted({k for fn in PRESETS.values() for k in named(fn)})


def get_composite(composite: Union[str, Composite, None] = None, relevance_filter: Any = None,
                  **kwargs: Any) -> Composite:
    """Resolve a preset name (with keyword overrides such as ``epsilon=1e-12``,
    ``gamma=0.5``, ``low=-2.1, high=2.6``) or pass a :class:`Composite` through.
    ``relevance_filter`` (a fraction or a :class:`~captum_rap.rules.RelevanceFilter`
    template) adds the relevance filter (:func:`with_relevance_filter`).

    A keyword that no preset takes is an error (a misspelt ``gama=`` is not silently
    dropped); a keyword of another preset that this one does not use (``low`` for
    ``"epsilon_plus"``) is ignored with a warning.  Values are checked by the rules
    (non-finite or negative stabilizers, ``low > high``: ValueError).

    Raises:
        TypeError: a keyword no preset takes, or keywords with a :class:`Composite`.
        ValueError: unknown preset name (the message lists the valid ones), a bad value.
    """
    if relevance_filter is not None:
        return with_relevance_filter(get_composite(composite, **kwargs), relevance_filter)
    if composite is None:
        composite = "epsilon"
    if isinstance(composite, Composite):
        if kwargs:
            raise TypeError(f"keyword overrides ({', '.join(sorted(kwargs))}) only apply to preset names, "
                            "not to Composite objects (set them on the Composite's rules)")
        return composite
    if isinstance(composite, str):
        key = composite.lower().replace("-", "_")
        if key not in PRESETS:
            raise ValueError(f"unknown LRP preset {composite!r}; choose one of {sorted(PRESETS)}")
        own = preset_keywords(key)
        known = preset_keywords()
        unknown = sorted(k for k in kwargs if k not in own and k not in known)
        if unknown:
            raise TypeError(f"unknown keyword argument(s) {', '.join(map(repr, unknown))} for LRP preset "
                            f"{key!r}; it takes {', '.join(own) or 'none'}")
        unused = sorted(k for k in kwargs if k not in own)
        if unused:
            warnings.warn(f"LRP preset {key!r} does not use {', '.join(map(repr, unused))} (it takes "
                          f"{', '.join(own) or 'none'}); ignored", UserWarning, stacklevel=3)
        return PRESETS[key](**{k: v for k, v in kwargs.items() if k in own})
    raise TypeError(f"composite must be a preset name or a Composite, got {type(composite).__name__}")


class FilteredComposite(Composite):
    """A composite whose rules are wrapped in a :class:`~captum_rap.rules.RelevanceFilter`
    (built by :func:`with_relevance_filter`).  Rules attached with ``module.rule`` are
    wrapped too, unless they already are a ``RelevanceFilter``; batch norm layers are never
    filtered; the output layer is filtered only if the template says ``output_layer=True``.

    Args:
        base (Composite): the composite that chooses the rules.
        template (RelevanceFilter): ``top_k``, ``mode`` and ``output_layer`` of the filter.
        layers (callable, optional): ``LayerInfo -> bool``, the layers to filter
            (default: every conv/linear layer).
    """

    def __init__(self, base: Composite, template: RelevanceFilter,
                 layers: Optional[Callable[[LayerInfo], bool]] = None) -> None:
        self.base = base
        self.template = template
        self.layers = layers
        self.name = f"{base.name}+filter"
        self._wrapped: Dict[int, Any] = {}

    def rule_for(self, info: LayerInfo) -> Any:
        rule = self.base.rule_for(info)
        if rule is None or info.is_norm or isinstance(rule, RelevanceFilter):
            return rule
        if self.layers is not None and not self.layers(info):
            return rule
        wrapped = self._wrapped.get(id(rule))
        if wrapped is None or wrapped.rule is not rule:
            t = self.template
            wrapped = RelevanceFilter(rule, top_k=t.top_k, mode=t.mode, output_layer=t.output_layer)
            self._wrapped[id(rule)] = wrapped
        return wrapped

    @property
    def linear_in_relevance(self) -> bool:
        return False

    def op_rule(self, kind: str) -> Any:
        return self.base.op_rule(kind)

    def __repr__(self) -> str:
        return f"FilteredComposite({self.base!r}, {self.template!r})"


def with_relevance_filter(composite: Union[str, Composite], relevance_filter: Any = 0.1,
                          layers: Optional[Callable[[LayerInfo], bool]] = None) -> Composite:
    """Add the relevance filter to a composite (any preset, or a :class:`Composite`).

    Args:
        composite (str or Composite): the base composite.
        relevance_filter (float, dict or RelevanceFilter): the kept fraction ``top_k``, a dict
            of :class:`~captum_rap.rules.RelevanceFilter` arguments, or a template
            ``RelevanceFilter(None, top_k=..., mode=..., output_layer=...)``.
        layers (callable, optional): ``LayerInfo -> bool`` choosing the filtered layers
            (default: all conv/linear layers; the output layer only with
            ``output_layer=True``).

    Returns:
        Composite: a :class:`FilteredComposite` (the base is not modified).

    Examples::

        >>> comp = with_relevance_filter("epsilon_plus", 0.1)
        >>> LRP(model, comp).attribute(x, target=3)
        >>> LRP(model, "epsilon_plus", relevance_filter=0.1)  # the same
    """
    if isinstance(relevance_filter, RelevanceFilter):
        template = relevance_filter
    elif isinstance(relevance_filter, dict):
        template = RelevanceFilter(None, **relevance_filter)
    elif isinstance(relevance_filter, (int, float)) and not isinstance(relevance_filter, bool):
        template = RelevanceFilter(None, top_k=float(relevance_filter))
    else:
        raise TypeError("relevance_filter must be a fraction, a dict of RelevanceFilter arguments or a "
                        f"RelevanceFilter, got {type(relevance_filter).__name__}")
    return FilteredComposite(get_composite(composite), template, layers)
