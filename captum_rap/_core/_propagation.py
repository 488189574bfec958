"""Shared plumbing of the propagation-based attributions (LRP, RAP, CLRP, SGLRP): argument
checks, the one ``attribute`` template, the layer mixin and the convergence delta (the
precision handling is in :mod:`._precision`)."""

from __future__ import annotations

import contextlib
import inspect
import numbers
import warnings
from typing import Any, Callable, Dict, Iterator, List, Literal, Optional, Tuple, Union, overload

import numpy as np
import torch
from torch import Tensor, nn

from .._compat import (
    GradientAttribution,
    TargetType,
    TensorOrTupleOfTensorsGeneric,
    _format_additional_forward_args,
    _format_output,
    _format_tensor_into_tuples,
    _is_tuple,
    _select_targets,
    log_usage,
)
from .._engine import LayerInfo, Propagator
from ._precision import (PRECISION_TOLERANCE, autocast_disabled, cast_floating, check_dtype, model_dtype,
                         parameters_in, relative_error_estimate)
from ..composites import Composite, get_composite

SeedType = Union[None, Tensor, Callable[[Tensor], Tensor]]


def unwrap_model(model: Any, method: str) -> Any:
    """The module to explain: a ``torch.compile``d module is explained through the module
    it wraps (same parameters, same function); TorchScript modules and functions are
    refused with a clear error (their operations are invisible to Python hooks and torch
    function modes, so no relevance rule could be applied)."""
    if isinstance(model, (torch.jit.ScriptModule, torch.jit.ScriptFunction)):
        raise TypeError(f"{method}: TorchScript models (torch.jit.script / torch.jit.trace) cannot be "
                        "explained: their operations run outside Python, where no rule can see them. "
                        "Pass the original nn.Module instead.")
    orig = getattr(model, "_orig_mod", None)
    if isinstance(orig, nn.Module) and type(model).__name__ == "OptimizedModule":
        return orig
    return model


@contextlib.contextmanager
def autograd_enabled() -> Iterator[None]:
    """Gradients on, also inside ``torch.no_grad()`` and ``torch.inference_mode()`` (Captum's
    ``sensitivity_max`` calls attribution methods under ``no_grad``)."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def normal_tensor(t: Any) -> Any:
    """An inference tensor (created under ``torch.inference_mode()``) as an ordinary tensor
    (autograd cannot record operations on inference tensors); other values unchanged."""
    if isinstance(t, Tensor) and t.is_inference():
        with torch.inference_mode(False):
            return t.clone()
    return t


def check_rule_attributes(model: nn.Module, method: str) -> None:
    """Every ``module.rule`` attribute is a propagation rule (or None): TypeError otherwise,
    at construction (as Captum's ``LRP``)."""
    from .._compat import PropagationRule

    for name, m in model.named_modules():
        rule = getattr(m, "rule", None)
        if rule is not None and not isinstance(rule, PropagationRule) and not callable(
                getattr(rule, "propagate", None)):
            raise TypeError(f"{method}: module '{name}' ({type(m).__name__}) has rule={rule!r}, which is not "
                            "a propagation rule (captum_rap.rules or captum.attr._utils.lrp_rules)")


def warn_train_mode_dropout(model: nn.Module, method: str) -> None:
    """Warn if a dropout module is in training mode: every call would drop other units and
    give another map."""
    names = [n or type(m).__name__ for n, m in model.named_modules()
             if m.training and isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]
    if names:
        shown = ", ".join(repr(n) for n in names[:3]) + (", ..." if len(names) > 3 else "")
        warnings.warn(f"{method}: dropout in training mode ({shown}): each call drops other units and gives "
                      "another map; call model.eval() first", UserWarning, stacklevel=4)


def check_flag(method: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{method}: {name} must be True or False, got {value!r}")
    return value


def _as_index(v: Any, what: str) -> Any:
    """A Python int for an integer scalar (int, numpy integer, integer 0-dim tensor)."""
    if isinstance(v, Tensor) and v.numel() == 1 and not v.is_floating_point() and not v.is_complex() \
            and v.dtype != torch.bool:
        return int(v.item())
    if isinstance(v, bool):
        raise TypeError(f"{what} must be an integer index, got {v!r}")
    if isinstance(v, numbers.Integral):
        return int(v)
    return v


def normalize_target(target: Any, outputs: Tensor, method: str) -> Any:
    """Captum's target forms with numpy integers converted and negative indices counted from
    the end of the axis they index (as Python does): an int / 0-dim tensor indexes axis 1,
    a tuple axes ``1 .. len``, a list or 1-D tensor gives one index (or tuple) per example.

    Raises:
        TypeError: a non-integer target (float, bool, str ...).
        ValueError: an index out of range for its axis.
    """
    if target is None:
        return None
    shape = tuple(outputs.shape)

    def fix(v: Any, axis: int) -> int:
        v = _as_index(v, f"{method}: target")
        if not isinstance(v, int):
            raise TypeError(f"{method}: target must hold integer indices, got {v!r}")
        if axis >= len(shape):
            raise ValueError(f"{method}: target {target!r} indexes axis {axis} of outputs of shape {shape}")
        n = shape[axis]
        if not -n <= v < n:
            raise ValueError(f"{method}: target {v} is out of range for axis {axis} of the outputs (size {n}, "
                             f"outputs of shape {shape})")
        return v + n if v < 0 else v

    def fix_tuple(t: tuple) -> tuple:
        return tuple(fix(v, 1 + i) for i, v in enumerate(t))

    if isinstance(target, np.ndarray):
        if target.dtype.kind not in "iu":
            raise TypeError(f"{method}: target array must hold integers, got dtype {target.dtype}")
        target = torch.as_tensor(target)
    if isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"{method}: target tensor must hold integers, got {target.dtype}")
        if target.numel() == 1:
            return fix(target.reshape(()), 1)
        if target.dim() != 1:
            raise ValueError(f"{method}: target tensor must be 0-d or 1-d (one index per example), got shape "
                             f"{tuple(target.shape)}")
        return torch.tensor([fix(v, 1) for v in target.tolist()], dtype=torch.long, device=target.device)
    if isinstance(target, tuple):
        return fix_tuple(target)
    if isinstance(target, list):
        if not target:
            raise ValueError(f"{method}: empty target list")
        return [fix_tuple(t) if isinstance(t, tuple) else fix(t, 1) for t in target]
    return fix(target, 1)


def check_inputs(inputs: Tuple[Tensor, ...], method: str) -> None:
    """Reject NaN / Inf inputs with a message that names the input."""
    for i, inp in enumerate(inputs):
        if not isinstance(inp, Tensor):
            raise TypeError(f"{method}: input {i} is a {type(inp).__name__}, expected a torch.Tensor")
        if inp.is_floating_point() and not torch.isfinite(inp).all():
            bad = "NaN" if torch.isnan(inp).any() else "Inf"
            raise ValueError(f"{method}: input {i} contains {bad} values; relevance would be undefined")


def target_mask(outputs: Tensor, target: TargetType, method: str) -> Tensor:
    """A 0/1 tensor of the outputs' shape marking the entries that ``target`` selects,
    following Captum's target conventions.  ``target=None`` selects the single output of
    each example, or the predicted class (arg-max) of a (N, C) output."""
    n = outputs.shape[0]
    if target is None:
        if outputs.dim() == 1 or outputs[0].numel() == 1:
            return torch.ones_like(outputs)
        if outputs.dim() != 2:
            raise ValueError(f"{method}: target=None needs outputs of shape (N,) or (N, C), got "
                             f"{tuple(outputs.shape)}; pass a target")
        target = outputs.argmax(dim=1)
    target = normalize_target(target, outputs, method)
    if isinstance(target, Tensor) and target.dim() == 1 and target.numel() != n and target.numel() != 1:
        raise ValueError(f"{method}: target tensor has {target.numel()} entries for a batch of {n}")
    if isinstance(target, list) and len(target) != n:
        raise ValueError(f"{method}: target list has {len(target)} entries for a batch of {n}")
    probe = outputs.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        try:
            selected = _select_targets(probe, target)
        except (AssertionError, IndexError, RuntimeError) as exc:
            raise ValueError(f"{method}: invalid target {target!r} for outputs of shape "
                             f"{tuple(outputs.shape)}: {exc}") from None
        if selected.dim() == 0 or selected.shape[0] != n or selected[0].numel() != 1:
            raise ValueError(f"{method}: target {target!r} does not select one output per example "
                             f"from outputs of shape {tuple(outputs.shape)}")
        (mask,) = torch.autograd.grad(selected.sum(), probe)
    return mask


def per_example_sum(rel: Tuple[Any, ...], n: int) -> Tensor:
    """Sum of the floating relevance tensors of ``rel`` over all their features, per example
    (shape ``(n,)``)."""
    return sum(r.reshape(n, -1).sum(1) for r in rel if isinstance(r, Tensor) and r.is_floating_point())


def convergence_delta(seed: Tensor, rel: Tuple[Any, ...]) -> Tensor:
    """``Σ seed − Σ relevance`` per example: the one convergence delta of every propagation
    method (Captum's ``LRP`` convention: output minus the sum of the attributions)."""
    n = seed.shape[0]
    return seed.reshape(n, -1).sum(1) - per_example_sum(rel, n)


def check_layers(model: nn.Module, layer: Any, method: str) -> Any:
    """``layer`` (a submodule of ``model``) or a non-empty list of submodules."""
    layers = list(layer) if isinstance(layer, (list, tuple)) else [layer]
    if not layers:
        raise ValueError(f"{method}: the list of layers is empty")
    owned = {id(m) for m in model.modules()}
    for m in layers:
        if not isinstance(m, nn.Module):
            raise TypeError(f"{method}: layer must be an nn.Module or a list of them, got {type(m).__name__}")
        if id(m) not in owned:
            raise ValueError(f"{method}: the layer {type(m).__name__} is not a submodule of the model")
    return layers if isinstance(layer, (list, tuple)) else layer


class PropagationAttribution(GradientAttribution):
    """Base class of the propagation methods and the one ``attribute`` template.

    The public :meth:`attribute` checks the method's options and calls the private
    :meth:`_attribute` (as Captum's methods do).  A method provides its rules
    (:meth:`_rule_for`, :meth:`_op_rule`), its starting relevance (:meth:`_seed`) and, if
    it has any, its options (``_attribute_options``) and post-processing (by overriding
    :meth:`_attribute`).  Each subclass gets this ``attribute`` with its own signature (the
    four common arguments, then its options; see :func:`_attribute_with_options`)."""

    method_name = "propagation"
    merge_batchnorm = False
    #: the method's keyword options of :meth:`attribute` beyond the four common arguments,
    #: with their defaults
    _attribute_options: Dict[str, Any] = {}

    def __init__(self, model: nn.Module, dtype: Optional[torch.dtype] = None) -> None:
        model = unwrap_model(model, type(self).__name__)
        if not isinstance(model, nn.Module):
            raise TypeError(f"{type(self).__name__} needs an nn.Module, got {type(model).__name__}")
        super().__init__(model)
        self.model = model
        self.dtype = check_dtype(type(self).__name__, dtype)
        self._runs = 0  # propagations started (layer methods keep the last run's relevances)
        self._result_dtype: torch.dtype = torch.float32

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "attribute" not in cls.__dict__:
            cls.attribute = _attribute_with_options(cls)  # type: ignore[method-assign]

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    def has_convergence_delta(self) -> bool:
        return True

    def attribute_future(self) -> Callable:
        raise NotImplementedError(f"{type(self).__name__} has no asynchronous (future) variant")

    @overload
    def attribute(
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        return_convergence_delta: Literal[True],
        **options: Any,
    ) -> Tuple[TensorOrTupleOfTensorsGeneric, Tensor]: ...

    @overload
    def attribute(
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        target: TargetType = None,
        additional_forward_args: Any = None,
        return_convergence_delta: Literal[False] = False,
        **options: Any,
    ) -> TensorOrTupleOfTensorsGeneric: ...

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        target: TargetType = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        **options: Any,
    ) -> Union[TensorOrTupleOfTensorsGeneric, Tuple[TensorOrTupleOfTensorsGeneric, Tensor]]:
        r"""Relevance of every input feature (of the layer, for the layer methods) for the
        target output.

        Args:
            inputs (Tensor or tuple of Tensor): model input(s), batch first.
            target (int, tuple, Tensor or list, optional): output index per Captum's
                conventions.  ``None``: the single output per example, or the predicted
                class for (N, C) outputs.
            additional_forward_args (Any, optional): extra arguments passed to the model
                after the inputs (they carry no relevance).
            return_convergence_delta (bool, optional): also return, per example, the
                starting relevance minus the sum of the attributions (Captum's ``LRP``
                convention: output minus attributions).
            **options: the method's own keyword options, listed under "Keyword options of
                ``attribute``" in its class docstring (e.g. ``output_relevance`` for
                :class:`~captum_rap.LRP`, ``return_dual`` for :class:`~captum_rap.CLRP`).
                Any other keyword raises ``TypeError``.

        Returns:
            *Tensor* or *tuple of Tensor* of the inputs' shapes (of the layer's, for the
            layer methods), then what the method's options add, then the delta (shape
            ``(N,)``) if ``return_convergence_delta``.

        Examples::

            >>> attr = LRP(model, "epsilon_plus").attribute(x, target=281)
            >>> attr, delta = RAP(model).attribute(x, target=3, return_convergence_delta=True)
        """
        for name in options:
            if name not in self._attribute_options:
                raise TypeError(f"{type(self).__name__}.attribute() got an unexpected keyword argument {name!r}")
        return self._attribute(inputs, target, additional_forward_args, return_convergence_delta,
                               **{**self._attribute_options, **options})

    def _attribute(self, inputs: Any, target: TargetType, additional_forward_args: Any,
                   return_convergence_delta: bool, output_relevance: SeedType = None) -> Any:
        """One propagation from :meth:`_seed` (or ``output_relevance``) to the inputs."""
        with torch.enable_grad():
            rel, outputs, seed, is_tuple = self._propagate(inputs, target, additional_forward_args,
                                                           output_relevance)
        out = _format_output(is_tuple, self._to_result(tuple(rel)))
        if return_convergence_delta:
            return out, self._to_result(convergence_delta(seed, rel))
        return out

    # -- to be provided by subclasses ----------------------------------------------------
    def _rule_for(self, info: LayerInfo) -> Any:
        raise NotImplementedError

    def _op_rule(self, kind: str) -> Any:
        """The rule for a parameter-free operation (``"product"``, ``"softmax"``); ``None``:
        the engine's default (uniform products, AttnLRP's softmax rule)."""
        return None

    def _seed(self, outputs: Tensor, target: TargetType) -> Tensor:
        return outputs * target_mask(outputs, target, self.method_name)

    # -- core -----------------------------------------------------------------------------
    def _propagate(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        target: TargetType,
        additional_forward_args: Any,
        output_relevance: SeedType = None,
        layer_hooks: Optional[List[Tuple[nn.Module, Callable[[Tensor], None], bool]]] = None,
        rule_for: Optional[Callable[[LayerInfo], Any]] = None,
    ) -> Tuple[Tuple[Tensor, ...], Tensor, Tensor, bool]:
        is_inputs_tuple = _is_tuple(inputs)
        inputs_t = tuple(normal_tensor(t) for t in _format_tensor_into_tuples(inputs))
        check_inputs(inputs_t, self.method_name)
        extra = _format_additional_forward_args(additional_forward_args)
        extra = tuple(normal_tensor(a) for a in extra) if extra is not None else ()
        warn_train_mode_dropout(self.model, self.method_name)

        def seed_fn(outputs: Tensor) -> Tensor:
            if output_relevance is None:
                seed = self._seed(outputs, target)
            elif callable(output_relevance):
                seed = output_relevance(outputs)
            else:
                seed = output_relevance
            if not isinstance(seed, Tensor) or seed.shape != outputs.shape:
                raise ValueError(f"{self.method_name}: output relevance must be a tensor of the output "
                                 f"shape {tuple(outputs.shape)}, got "
                                 f"{tuple(seed.shape) if isinstance(seed, Tensor) else type(seed).__name__}")
            return seed.to(dtype=outputs.dtype, device=outputs.device)

        # precision: the relevance path runs in float32 at least (half models and autocast
        # are propagated in float32, results returned in the model's dtype); with
        # ``dtype=None`` an ill-conditioned float32 run is redone in float64, with an
        # explicit dtype it warns
        self._result_dtype = model_dtype(self.model, inputs_t)
        if self.dtype is not None:
            work = self.dtype
        else:
            work = torch.float64 if self._result_dtype == torch.float64 else torch.float32
        plan = [work] + ([torch.float64] if self.dtype is None and work != torch.float64 else [])
        for i, dtype in enumerate(plan):
            self._runs += 1
            prop = Propagator(self.model, rule_for or self._rule_for, method_name=self.method_name,
                              merge_batchnorm=self.merge_batchnorm, op_rule=self._op_rule)
            with parameters_in(self.model, dtype), autocast_disabled(inputs_t), autograd_enabled():
                rel, outputs, seed = prop.run(cast_floating(inputs_t, dtype), cast_floating(extra, dtype), seed_fn,
                                              layer_hooks=layer_hooks)
            err = relative_error_estimate(rel, seed, dtype)
            if err <= PRECISION_TOLERANCE:
                break
            if i + 1 == len(plan):
                hint = ("pass dtype=None or dtype=torch.float64" if dtype != torch.float64 else
                        "a larger epsilon / stabilizer makes the rules better conditioned")
                warnings.warn(
                    f"{self.method_name}: the relevance sum is ill-conditioned in {dtype} (Σ|R| is "
                    f"{err / torch.finfo(dtype).eps:.1e} times the output relevance: estimated relative "
                    f"error {err:.1e}); the map may be dominated by rounding ({hint}).", RuntimeWarning,
                    stacklevel=4)
        return rel, outputs, seed, is_inputs_tuple

    def _to_result(self, value: Any) -> Any:
        """A floating tensor (or a tuple / list of them) in the dtype of the user's model."""
        if isinstance(value, (tuple, list)):
            return type(value)(self._to_result(v) for v in value)
        if isinstance(value, Tensor) and value.is_floating_point() and value.dtype != self._result_dtype:
            out = value.to(self._result_dtype)
            if not bool(torch.isfinite(out).all()) and bool(torch.isfinite(value).all()):
                warnings.warn(f"{self.method_name}: relevance of up to {float(value.abs().max()):.2e} (computed in "
                              f"{value.dtype}) overflows the model's {self._result_dtype}: the result has Inf "
                              f"entries.  A copy of the model in {value.dtype} (e.g. model.double()) returns "
                              "the values.", RuntimeWarning, stacklevel=3)
            return out
        return value

    def compute_convergence_delta(self, attributions, output: Tensor) -> Tensor:  # type: ignore[override]
        """``output − Σ attributions`` per example (Captum's ``LRP`` convention)."""
        return convergence_delta(output, _format_tensor_into_tuples(attributions))


def _attribute_with_options(cls: type) -> Callable:
    """``PropagationAttribution.attribute`` with ``cls``'s signature: the common arguments
    followed by the method's options (``cls._attribute_options``), so that the arguments
    bind as in a hand-written ``attribute`` (positional or keyword; unknown keyword ->
    TypeError) and ``inspect.signature`` shows what the method takes."""
    template = PropagationAttribution.attribute.__wrapped__  # type: ignore[attr-defined]  (without log_usage)
    template_sig = inspect.signature(template)
    params = [p for p in template_sig.parameters.values() if p.kind != p.VAR_KEYWORD]
    params += [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default)
               for name, default in cls._attribute_options.items()]  # type: ignore[attr-defined]
    sig = template_sig.replace(parameters=params)

    def attribute(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            bound = sig.bind(self, *args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{type(self).__name__}.attribute() {exc}") from None
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        del arguments["self"]
        return template(self, **arguments)

    attribute.__signature__ = sig  # type: ignore[attr-defined]
    attribute.__doc__ = template.__doc__
    attribute.__module__ = cls.__module__
    attribute.__qualname__ = f"{cls.__qualname__}.attribute"
    # as a hand-written Captum method: decorated, with the undecorated function as
    # ``__wrapped__`` (Captum's NoiseTunnel calls ``attribute.__wrapped__``)
    return log_usage()(attribute)


class CompositeAttribution(PropagationAttribution):
    """Base of the methods whose rules come from a composite (LRP, CLRP, SGLRP): the
    composite, ``merge_batchnorm`` and the check of ``module.rule`` attributes.  The
    arguments are documented on :class:`~captum_rap.LRP`."""

    def __init__(self, model: nn.Module, composite: Union[str, Composite, None] = "epsilon",
                 merge_batchnorm: bool = True, dtype: Optional[torch.dtype] = None,
                 **composite_kwargs: Any) -> None:
        super().__init__(model, dtype)
        check_rule_attributes(self.model, type(self).__name__)
        self.composite = get_composite(composite, **composite_kwargs)
        self.merge_batchnorm = check_flag(type(self).__name__, "merge_batchnorm", merge_batchnorm)

    def _rule_for(self, info: LayerInfo) -> Any:
        return self.composite.rule_for(info)

    def _op_rule(self, kind: str) -> Any:
        return self.composite.op_rule(kind)


class LayerPropagationMixin:
    """The layer variant of a propagation method (``LayerLRP``, ``LayerRAP``): the relevance
    the propagation carries at the output (or input) of ``self.layer`` (a module or a list
    of them, all from one propagation), instead of at the model inputs.  Put it before the
    method in the bases and set ``self.layer`` with :func:`check_layers`; it adds the
    ``attribute_to_layer_input`` option."""

    layer: Any

    def _attribute(self, inputs: Any, target: TargetType, additional_forward_args: Any,
                   return_convergence_delta: bool, attribute_to_layer_input: bool = False,
                   output_relevance: SeedType = None) -> Any:
        method: Any = self
        check_flag(method.method_name, "attribute_to_layer_input", attribute_to_layer_input)
        layer = self.layer
        layers = list(layer) if isinstance(layer, list) else [layer]
        collected: List[List[Tuple[int, Tensor]]] = [[] for _ in layers]

        def make_callback(store: List[Tuple[int, Tensor]]) -> Callable[[Tensor], None]:
            def callback(r: Tensor) -> None:
                if store and store[0][0] != method._runs:  # a run redone in float64 replaces the first
                    store.clear()
                store.append((method._runs, r.detach()))
            return callback

        with torch.enable_grad():
            _, outputs, seed, _ = method._propagate(
                inputs, target, additional_forward_args, output_relevance,
                layer_hooks=[(m, make_callback(c), attribute_to_layer_input) for m, c in zip(layers, collected)])
        rels: List[Tensor] = []
        for m, c in zip(layers, collected):
            if not c:
                raise ValueError(f"{method.method_name}: the layer {type(m).__name__} was not called in the "
                                 "forward pass or its activation carries no relevance")
            shapes = {tuple(t.shape) for _, t in c}
            if len(shapes) != 1:
                raise ValueError(f"{method.method_name}: the layer {type(m).__name__} was called {len(c)} times "
                                 f"with different shapes {sorted(shapes)}")
            rels.append(torch.stack([t for _, t in c]).sum(0))
        deltas = method._to_result([convergence_delta(seed, (r,)) for r in rels])
        rels = method._to_result(rels)
        if not isinstance(layer, list):
            return (rels[0], deltas[0]) if return_convergence_delta else rels[0]
        return (rels, deltas) if return_convergence_delta else rels
