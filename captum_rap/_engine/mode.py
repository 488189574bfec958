"""The function mode that sees every torch function of the forward pass.

:class:`PropagationMode` looks each function that touches a relevance-carrying tensor up
in the operation table (:mod:`.optable`) and applies its treatment: affine layers become
:class:`~.functions.RuleFunction` nodes whose backward applies the layer's rule,
non-linearities and products get their relevance rules, normalisations and attention are
written out in table operations (:mod:`.decompositions`), and everything else on the
relevance path either is linear (left to autograd) or raises
:class:`~captum_rap._engine.UnsupportedOperationError` naming the operation and module.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Dict, Iterator, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from . import decompositions, input_affine
from .affine import AffineOp
from .callargs import (_arg, _fname, _out_of_place, _writes_in_place, infer_batch_axis,
                       iter_tensors)
from .functions import IdentityRule, ScaleGradient
from .layers import LayerHandlers
from .optable import OP_TABLE, Op
from .records import (KIND_ACT, KIND_AFFINE, KIND_IDS, KIND_INPUT, KIND_PRE, TAG, Batch, CallState, Node,
                      UnsupportedOperationError, batch_of, is_gate, producer_of, set_tag, tag_of)

if TYPE_CHECKING:  # pragma: no cover
    from .propagator import Propagator

__all__ = ["PropagationMode"]

_DIVISION_OPS = {"div", "__truediv__", "__itruediv__", "div_", "__div__", "divide", "true_divide"}
# the properties of a tensor that are selections of it
_VIEW_PROPERTIES = {"T", "mT", "H", "mH", "real"}
# positional / keyword slots of the factors of a product (the rest are added or flags)
_PRODUCT_FACTORS = {
    "baddbmm": ((1, "batch1"), (2, "batch2")), "addbmm": ((1, "batch1"), (2, "batch2")),
    "addmm": ((1, "mat1"), (2, "mat2")), "addmv": ((1, "mat"), (2, "vec")),
    "addr": ((1, "vec1"), (2, "vec2")),
}
_DEFAULT_FACTORS = ((0, "input"), (1, "other"))


class PropagationMode(LayerHandlers, TorchFunctionMode):
    """Runs the forward pass of one propagation (see the module docstring)."""

    def __init__(self, propagator: "Propagator", state: CallState):
        super().__init__()
        self.p = propagator
        self.state = state
        self.token = state.token
        self.layer_index = 0

    # -- helpers -----------------------------------------------------------------------
    def _where(self) -> str:
        path = self.state.module_stack[-1][0] if self.state.module_stack else ""
        return f"module '{path}'" if path else "the model's own forward"

    def unsupported(self, what: str, advice: str) -> UnsupportedOperationError:
        return UnsupportedOperationError(f"{self.p.method_name} cannot propagate relevance through {what} "
                                         f"(called in {self._where()}). {advice}")

    @contextlib.contextmanager
    def constants(self) -> Iterator[None]:
        """Compute constants of the propagation (statistics, masks) from activations:
        nothing inside is seen by the mode."""
        old = self.state.bypass
        self.state.bypass = True
        try:
            yield
        finally:
            self.state.bypass = old

    def _tag(self, t: Any) -> int:
        return tag_of(t, self.token)

    def _source(self, src: Any) -> Tuple[Optional[Tensor], Batch]:
        """The first relevance-carrying tensor among ``src`` whose batch axis is known."""
        first = None
        for t in iter_tensors(src):
            if self._tag(t) and self._tag(t) != KIND_IDS:
                ax = batch_of(t, self.token)
                if ax is not None:
                    return t, ax
                first = first if first is not None else t
        return first, None

    def _tag_outputs(self, out: Any, kind: int, producer: Optional[Node] = None, name: str = "",
                     gate: bool = False, src: Optional[Tuple[Sequence[Any], Dict[str, Any]]] = None) -> None:
        """Tag the floating tensors of ``out`` (computed by ``name`` from ``src = (args,
        kwargs)``, whose relevance-carrying tensor gives the batch axis)."""
        args, kwargs = src if src is not None else ((), {})
        inp, ax = self._source((args, kwargs))
        for t in iter_tensors(out):
            if t.is_floating_point() or t.is_complex():
                owner = self.p.param_owner.get(id(t))
                if owner is not None:
                    what = f"'{name}'" if name else "an operation"
                    raise self.unsupported(
                        f"{what} that writes an activation into the parameter or buffer of module "
                        f"'{owner[0]}'", "Do not store activations in model parameters or buffers.")
                batch = infer_batch_axis(name, args, kwargs, inp, ax, t) if inp is not None else None
                set_tag(t, self.state, kind, producer, gate, batch)

    @staticmethod
    def _derived_kind(kinds: Sequence[int], selection: bool) -> int:
        tainted = [k for k in kinds if k and k != KIND_IDS]
        if selection and all(k == KIND_INPUT for k in tainted):
            return KIND_INPUT
        if all(k in (KIND_INPUT, KIND_PRE, KIND_AFFINE) for k in tainted):
            return KIND_PRE
        return KIND_ACT

    def _all_gates(self, args: Any, kwargs: Any) -> bool:
        tainted = [t for t in iter_tensors((args, kwargs)) if self._tag(t)]
        return bool(tainted) and all(is_gate(t, self.token) for t in tainted)

    def _owner(self, weight: Any) -> Optional[Tuple[str, Any]]:
        """``(name, module)`` owning ``weight`` (or the tensor it is a view of)."""
        if not isinstance(weight, Tensor):
            return None
        owner = self.p.param_owner.get(id(weight))
        if owner is None and weight._base is not None:
            owner = self.p.param_owner.get(id(weight._base))
        return owner

    def _current_module(self) -> Tuple[str, Any]:
        return self.state.module_stack[-1] if self.state.module_stack else ("", self.p.model)

    # -- dispatch ----------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.state.bypass:
            return func(*args, **kwargs)
        tensors = list(iter_tensors(args)) + list(iter_tensors(kwargs))
        kinds = [self._tag(t) for t in tensors]
        if not any(kinds):
            return func(*args, **kwargs)
        name = _fname(func)
        if name == "__get__":
            return self._property(func, args, kwargs, kinds)
        op = OP_TABLE.get(name)
        if all(k == KIND_IDS for k in kinds if k):
            return self._token_ids(func, name, op, args, kwargs)
        if op is not None and op.treatment in ("constant", "shape_of"):
            return getattr(self, "_t_" + op.treatment)(func, name, op, args, kwargs, kinds)
        if _writes_in_place(name, kwargs):
            self._before_write(name, args, kwargs)
        if op is None:
            return self._unknown(func, name, args, kwargs)
        return getattr(self, "_t_" + op.treatment)(func, name, op, args, kwargs, kinds)

    def _before_write(self, name: str, args: Sequence[Any], kwargs: Dict[str, Any]) -> None:
        written = kwargs.get("out", args[0] if args else None)
        for t in iter_tensors(written):
            owner = self.p.param_owner.get(id(t))
            if owner is not None:
                raise self.unsupported(
                    f"'{name}' that writes an activation into the parameter or buffer of module "
                    f"'{owner[0]}'", "Do not store activations in model parameters or buffers.")
            producer = producer_of(t, self.token)
            if producer is not None:
                producer.protect(t)

    def _unknown(self, func, name, args, kwargs):
        out = func(*args, **kwargs)
        if not any(isinstance(t, Tensor) and (t.is_floating_point() or t.is_complex())
                   for t in iter_tensors(out)):
            return out  # sizes, shapes, booleans, indices: not on the relevance path
        raise self.unsupported(
            f"the operation '{name}'",
            "It is not in the engine's operation table (captum_rap.supported_operations()): "
            "affine layers, ReLU-family and element-wise activations, products, softmax, "
            "normalisations, attention, pooling and parameter-free linear operations are. "
            "Attribute the logits (remove a final softmax), or replace the operation.")

    def _property(self, func, args, kwargs, kinds):
        prop = getattr(getattr(func, "__self__", None), "__name__", "")
        out = func(*args, **kwargs)
        if not isinstance(out, Tensor) or not (out.is_floating_point() or out.is_complex()):
            return out
        if prop in _VIEW_PROPERTIES:
            self._tag_outputs(out, self._derived_kind(kinds, True), name=prop,
                              gate=self._all_gates(args, kwargs), src=(args, kwargs))
            return out
        raise self.unsupported(f"the tensor attribute '.{prop}'",
                               "It detaches the activation from the relevance path; use the tensor itself.")

    # -- token ids (integer model inputs) ----------------------------------------------
    def _token_ids(self, func, name, op, args, kwargs):
        """Only token ids (integers read from a model input) are involved: an embedding
        lookup starts a relevance path; selections keep track of where each id came from;
        anything else gives constants."""
        if name == "embedding":
            return self._t_embedding(func, name, op, args, kwargs, None)
        out = func(*args, **kwargs)
        ids = [t for t in iter_tensors((args, kwargs)) if self._tag(t) == KIND_IDS]
        if op is None or not op.selection or len(ids) != 1 or not isinstance(out, Tensor):
            return out
        src = ids[0]
        index, positions = getattr(src, TAG)[2]

        def swap(a):
            return positions if a is src else a

        pos = func(*[swap(a) for a in args], **{k: swap(v) for k, v in kwargs.items()})
        if isinstance(pos, Tensor) and pos.shape == out.shape:
            set_tag(out, self.state, KIND_IDS, (index, pos),
                    batch=infer_batch_axis(name, args, kwargs, src, batch_of(src, self.token), out))
        return out

    def _t_embedding(self, func, name, op, args, kwargs, kinds):
        ids = _arg(args, kwargs, 0, "input", None)
        weight = _arg(args, kwargs, 1, "weight", None)
        if self._tag(weight):
            raise self.unsupported("'embedding' whose weight depends on the input",
                                   "Only token ids may index an embedding.")
        out = func(*args, **kwargs)
        if self._tag(ids) != KIND_IDS:
            return out
        index, positions = getattr(ids, TAG)[2]
        leaf = out.detach().requires_grad_(True)
        proxy = leaf.clone()
        self.state.embeddings.append((index, positions, leaf))
        set_tag(proxy, self.state, KIND_PRE, batch=infer_batch_axis("embedding", args, kwargs, ids,
                                                                   batch_of(ids, self.token), proxy))
        return proxy

    # -- shapes and constants ------------------------------------------------------------
    @staticmethod
    def _split_first(args, kwargs):
        if args:
            return args[0], (args[1:], kwargs)
        first = kwargs.get("input", kwargs.get("self"))
        return first, ({k: v for k, v in kwargs.items() if k not in ("input", "self")},)

    def _t_constant(self, func, name, op, args, kwargs, kinds):
        # zeros_like(h), h.new_zeros(...): only h's shape / dtype / device are used
        first, rest = self._split_first(args, kwargs)
        if not any(self._tag(t) for t in iter_tensors(rest)):
            return func(*args, **kwargs)
        raise self.unsupported(f"'{name}' with an activation as its data",
                               "It copies the values out of the relevance path; use the tensor itself.")

    def _t_shape_of(self, func, name, op, args, kwargs, kinds):
        # p.type_as(h), p.expand_as(h): the result depends on p only
        first, _ = self._split_first(args, kwargs)
        first_kind = self._tag(first)
        if not first_kind:
            return func(*args, **kwargs)
        if _writes_in_place(name, kwargs):
            self._before_write(name, args, kwargs)
        out = func(*args, **kwargs)
        self._tag_outputs(out, self._derived_kind([first_kind], True), name=name,
                          gate=is_gate(first, self.token), src=(args, kwargs))
        return out

    # -- parameter-free linear maps --------------------------------------------------------
    def _t_linear(self, func, name, op, args, kwargs, kinds):
        if op.check is not None:
            msg = op.check(args, kwargs)
            if msg:
                raise self.unsupported(msg, "Use a supported variant of the operation.")
        # an input normalisation inside the model: keep its affine form (input_affine)
        on_input = any(k in (KIND_INPUT, KIND_AFFINE) for k in kinds)
        forms = (input_affine.operand_forms(self, args, kwargs, _writes_in_place(name, kwargs))
                 if on_input and not op.selection else None)
        out = func(*args, **kwargs)
        gate = op.selection and self._all_gates(args, kwargs)
        self._tag_outputs(out, self._derived_kind(kinds, op.selection), name=name, gate=gate, src=(args, kwargs))
        if on_input:
            if op.selection:
                input_affine.after_selection(self, func, args, kwargs, out)
            else:
                input_affine.after_constant_op(self, name, args, kwargs, out, forms)
        return out

    def _t_setitem(self, func, name, op, args, kwargs, kinds):
        # t[idx] = v is linear in (t, v): autograd sends the gradient of the written
        # entries to v and that of the others to t (z-rule, as for a selection)
        dest = args[0]
        value = args[2] if len(args) > 2 else None
        value_kind = self._tag(value)
        out = func(*args, **kwargs)
        # the written tensor is no longer any layer's output (producer cleared)
        self._tag_outputs(dest, self._derived_kind(kinds, False) if value_kind else self._tag(dest),
                          name=name, src=(args, kwargs))
        return out

    def _t_cut(self, func, name, op, args, kwargs, kinds):
        out = func(*args, **kwargs)
        if not any(isinstance(t, Tensor) and t.is_floating_point() for t in iter_tensors(out)):
            return out
        raise self.unsupported(f"'{name}'", "A detached activation cuts the relevance path; "
                               "remove the detach from the forward pass.")

    # -- products -------------------------------------------------------------------------
    def _t_scale(self, func, name, op, args, kwargs, kinds):
        a = _arg(args, kwargs, 0, "input", kwargs.get("self"))
        b = _arg(args, kwargs, 1, "other", None)
        ta, tb = self._tag(a), self._tag(b)
        if name in _DIVISION_OPS:
            if kwargs.get("rounding_mode") is not None:
                raise self.unsupported(f"'{name}' with rounding_mode", "Rounding is not linear.")
            if tb:
                raise self.unsupported(f"'{name}' with a divisor that depends on the input",
                                       "Division by an activation is not linear.")
        elif ta and tb:
            return self._product(func, name, args, kwargs, kinds, ((0, "input"), (1, "other")))
        return self._t_linear(func, name, Op("linear"), args, kwargs, kinds)

    def _t_product(self, func, name, op, args, kwargs, kinds):
        if name in ("einsum", "chain_matmul", "multi_dot"):
            return self._product(func, name, args, kwargs, kinds, None)
        if name not in _PRODUCT_FACTORS and len(args) < 2:
            # torch.mm(input=a, mat2=b) & co.: the two factors as positional arguments
            kwargs = dict(kwargs)
            first = [args[0]] if args else [kwargs.pop("input", None)]
            second = [kwargs.pop(k) for k in ("other", "mat2", "vec", "tensor", "vec2") if k in kwargs]
            args = tuple(first + second[:1])
        slots = _PRODUCT_FACTORS.get(name, _DEFAULT_FACTORS)
        factors = [_arg(args, kwargs, i, key, None) for i, key in slots]
        if name == "__rmatmul__":
            factors = factors[::-1]
        tainted = [f for f in factors if self._tag(f)]
        if len(tainted) == 1:
            layer = self._parameter_product(func, name, args, kwargs, factors)
            if layer is not None:
                return layer
        if len(tainted) <= 1:
            return self._t_linear(func, name, Op("linear"), args, kwargs, kinds)
        return self._product(func, name, args, kwargs, kinds, slots)

    def _parameter_product(self, func, name, args, kwargs, factors) -> Optional[Tensor]:
        """``x @ W`` / ``addmm(b, x, W)`` with a parameter ``W`` (2-D) of the model: an affine
        layer with the composite's dense rule (e.g. Hugging Face's ``Conv1D``)."""
        if name not in ("mm", "matmul", "__matmul__", "addmm"):
            return None
        x, w = factors
        if not self._tag(x) or self._tag(w) or not isinstance(w, Tensor) or w.dim() != 2:
            return None
        owner = self._owner(w)
        if owner is None:
            return None
        bias = None
        if name == "addmm":
            bias = _arg(args, kwargs, 0, "input", None)
            if _arg(args, kwargs, 3, "beta", 1) != 1 or _arg(args, kwargs, 4, "alpha", 1) != 1 \
                    or self._tag(bias) or not isinstance(bias, Tensor) or bias.dim() != 1:
                return None
        if _writes_in_place(name, kwargs):
            return None
        return self._layer(x, AffineOp("linear", w.t(), bias), owner, "linear")

    def _product(self, func, name, args, kwargs, kinds, slots) -> Any:
        """A product of several relevance-carrying factors: the product rule decides the
        share of each (uniform: ``1/k`` each; signal-take-all: none for gates)."""
        if _writes_in_place(name, kwargs):
            raise self.unsupported(f"in-place '{name}' of two tensors that both depend on the input",
                                   "Write the product out of place (y = a * b).")
        src = (args, kwargs)
        args = list(args)
        kwargs = dict(kwargs)
        if slots is None:  # einsum(eq, *ops) / einsum(eq, [ops]) / chain_matmul(*ops) / multi_dot([ops])
            start = 1 if name == "einsum" else 0
            nested = len(args) == start + 1 and isinstance(args[start], (list, tuple))
            ops = list(args[start]) if nested else args[start:]
            positions = [i for i, t in enumerate(ops) if self._tag(t)]
        else:
            ops = None
            positions = []
            for i, key in slots:
                if key in kwargs:
                    if self._tag(kwargs[key]):
                        positions.append(key)
                elif i < len(args) and self._tag(args[i]):
                    positions.append(i)

        def get(pos):
            if ops is not None:
                return ops[pos]
            return kwargs[pos] if isinstance(pos, str) else args[pos]

        factors = [get(pos) for pos in positions]
        weights = self.p.product_weights([is_gate(t, self.token) for t in factors], self._where())
        new = []
        for t, w in zip(factors, weights):
            if w == 0:
                with self.constants():
                    new.append(t.detach())
            elif w == 1:
                new.append(t)
            else:
                new.append(ScaleGradient.apply(t, float(w)))
        for pos, t in zip(positions, new):
            if ops is not None:
                ops[pos] = t
            elif isinstance(pos, str):
                kwargs[pos] = t
            else:
                args[pos] = t
        if ops is not None:
            start = 1 if name == "einsum" else 0
            nested = len(args) == start + 1 and isinstance(args[start], (list, tuple))
            args = args[:start] + ([ops] if nested else ops)
        out = func(*args, **kwargs)
        self._tag_outputs(out, self._derived_kind(kinds, False), name=name, src=src)
        return out

    # -- activations ------------------------------------------------------------------------
    def _t_relu(self, func, name, op, args, kwargs, kinds):
        # positively homogeneous, piecewise linear: the plain gradient passes relevance exactly
        if name in ("threshold", "threshold_", "_threshold") and not (
                _arg(args, kwargs, 1, "threshold", None) == 0 and _arg(args, kwargs, 2, "value", None) == 0):
            return self._elementwise(func, name, args, kwargs, kinds, gate=False)
        if name in ("rrelu", "rrelu_") and _arg(args, kwargs, 3, "training", False):
            raise self.unsupported(f"'{name}' in training mode (random slopes)", "Call model.eval() first.")
        if name == "prelu" and self._tag(_arg(args, kwargs, 1, "weight", None)):
            raise self.unsupported("'prelu' whose weight depends on the input", "Use a parameter.")
        out = func(*args, **kwargs)
        self._tag_outputs(out, self._derived_kind(kinds, False), name=name, src=(args, kwargs))
        return out

    def _t_saturating(self, func, name, op, args, kwargs, kinds):
        x = _arg(args, kwargs, 0, "input", None)
        if name.startswith("hardtanh"):
            lo = _arg(args, kwargs, 1, "min_val", -1.0)
            hi = _arg(args, kwargs, 2, "max_val", 1.0)
        elif name.startswith("relu6"):
            lo, hi = 0.0, 6.0
        elif name.startswith("clamp_min"):
            lo, hi = _arg(args, kwargs, 1, "min", None), None
        elif name.startswith("clamp_max"):
            lo, hi = None, _arg(args, kwargs, 1, "max", None)
        else:
            lo = _arg(args, kwargs, 1, "min", None)
            hi = _arg(args, kwargs, 2, "max", None)
        if isinstance(lo, Tensor) or isinstance(hi, Tensor):
            raise self.unsupported(f"'{name}' with tensor bounds", "Use scalar bounds.")
        if (lo is not None and lo > 0) or (hi is not None and hi < 0):
            raise self.unsupported(
                f"'{name}' with bounds [{lo}, {hi}] that exclude 0",
                "Relevance pass-through needs f(0) = 0.")
        out = IdentityRule.apply(x, lambda t: torch.clamp(t, lo, hi))
        set_tag(out, self.state, self._derived_kind([self._tag(x)], False), batch=batch_of(x, self.token))
        return out

    def _t_elementwise(self, func, name, op, args, kwargs, kinds):
        return self._elementwise(func, name, args, kwargs, kinds, gate=False)

    def _t_gate(self, func, name, op, args, kwargs, kinds):
        return self._elementwise(func, name, args, kwargs, kinds, gate=True)

    def _elementwise(self, func, name, args, kwargs, kinds, gate: bool):
        """``y = f(x)`` element-wise with one relevance-carrying argument: the identity
        rule (see :class:`~.functions.IdentityRule`)."""
        positions = [i for i, a in enumerate(args) if self._tag(a)]
        keys = [k for k, v in kwargs.items() if self._tag(v)]
        if len(positions) + len(keys) != 1:
            raise self.unsupported(f"'{name}' of several tensors that depend on the input",
                                   "The identity rule needs one relevance-carrying argument.")
        f, kw = _out_of_place(func, name, kwargs)
        args = list(args)
        if positions:
            pos = positions[0]
            x = args[pos]

            def fn(t):
                a = list(args)
                a[pos] = t
                return f(*a, **kw)
        else:
            key = keys[0]
            x = kw[key]

            def fn(t):
                return f(*args, **{**kw, key: t})

        out = IdentityRule.apply(x, fn)
        if out.shape != x.shape:
            raise self.unsupported(f"'{name}' with broadcasting against a constant",
                                   "The identity rule needs an output of the input's shape.")
        set_tag(out, self.state, self._derived_kind(kinds, False), None, gate, batch_of(x, self.token))
        return out

    def _t_softmax(self, func, name, op, args, kwargs, kinds):
        if self.p.softmax_is_constant(self._where()):
            # CP-LRP: attention weights are constants, no relevance flows through them
            with self.constants():
                a = [t.detach() if isinstance(t, Tensor) else t for t in args]
                k = {key: (v.detach() if isinstance(v, Tensor) else v) for key, v in kwargs.items()}
                return func(*a, **k)
        # AttnLRP's softmax rule R_in = x (R_out - s ΣR_out) is the plain gradient times x
        out = func(*args, **kwargs)
        self._tag_outputs(out, self._derived_kind(kinds, False), name=name, gate=True, src=(args, kwargs))
        return out

    def _t_winner(self, func, name, op, args, kwargs, kinds):
        other = _arg(args, kwargs, 1, "other", None)
        if name in ("max", "min") and isinstance(other, Tensor):
            return self._t_max_zero(func, name, op, args, kwargs, kinds)
        out = func(*args, **kwargs)
        self._tag_outputs(out, self._derived_kind(kinds, False), name=name, src=(args, kwargs))
        return out

    def _t_max_zero(self, func, name, op, args, kwargs, kinds):
        """``torch.maximum(h, 0)`` / ``torch.minimum(h, 0)`` with a constant all-zero
        operand: a ReLU-like gate (``f(0) = 0``, piecewise linear and positively
        homogeneous), so its plain gradient passes relevance exactly.  Anything else
        (two activations, a non-zero constant) raises."""
        a = _arg(args, kwargs, 0, "input", None)
        b = _arg(args, kwargs, 1, "other", None)
        ta, tb = self._tag(a), self._tag(b)
        const = b if ta else a
        if "out" not in kwargs and bool(ta) != bool(tb) and isinstance(const, Tensor) \
                and not bool(const.detach().any()):
            out = func(*args, **kwargs)
            self._tag_outputs(out, self._derived_kind([ta or tb], False), name=name, src=(args, kwargs))
            return out
        if ta and tb:
            what = "two tensors that both depend on the input"
        elif "out" in kwargs:
            what = "an out= tensor"
        else:
            what = "an activation and a constant that is not all zero"
        raise self.unsupported(
            f"'{name}' of {what}",
            "Only torch.maximum / torch.minimum with an all-zero constant (a ReLU) has an exact "
            "rule; use torch.relu or torch.clamp.")

    # -- normalisations and attention -------------------------------------------------------
    def _t_norm(self, func, name, op, args, kwargs, kinds):
        if _writes_in_place(name, kwargs) and name != "normalize":
            raise self.unsupported(f"in-place '{name}'", "Use the out-of-place operation.")
        return getattr(decompositions, name)(self, *args, **kwargs)

    def _t_attention(self, func, name, op, args, kwargs, kinds):
        return getattr(decompositions, name)(self, *args, **kwargs)
