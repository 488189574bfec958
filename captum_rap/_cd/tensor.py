"""Decomposed tensors for contextual decomposition: the tensor types, the dispatch and
the handler registry.

A :class:`CDTensor` stands for an activation ``x = rel + irr`` and intercepts every torch
function it takes part in (``__torch_function__``), so the decomposition follows the
*whole* forward pass of an unchanged model: modules, functional calls, ``+``, ``cat``,
reshapes, in-place activations.  Each supported function has a handler, registered by
name with :func:`register` in one of the rule modules:

* :mod:`.linear` -- linear maps without constant term, sums, concatenation, padding;
* :mod:`.affine` -- conv / linear / batch norm (bias split);
* :mod:`.nonlinear` -- element-wise activations, max pooling;
* :mod:`.norm` -- layer / group / instance / RMS normalisation, ``normalize``;
* :mod:`.attention` -- products of two decomposed tensors, softmax attention,
  ``scaled_dot_product_attention``, ``multi_head_attention_forward``;
* :mod:`.tokens` -- token ids and ``embedding``; :mod:`.lstm` -- ``lstm`` / ``gru``.

Any other function that touches a decomposed tensor raises
:class:`UnsupportedOperationError` naming the function and the module it was called from.

Computing forms.  A decomposed tensor is in one of three forms, and every handler
reads as one rule with a branch per form:

* **total form** (the default mode): ``rel`` and the *total* ``tot = rel + irr`` (``irr``
  is ``tot - rel`` when a rule needs it).  The total never depends on the masks (it is
  the model's own activation for the unmasked input), so it is computed once for all
  masks of a forward: the input's total is the input expanded along the batch axis
  (stride 0), and every batch-wise rule runs on one row of it and expands the result
  again (:func:`_rowwise`).  K masks cost about one forward of the K relevant parts plus
  one forward of a single input;
* **two-part form** (``reference`` mode): ``rel`` and ``irr`` carried separately, with
  the reference ``acd`` arithmetic where it has one (``M(x) - M(0)``, batch norm's
  residual; see :mod:`.reference`);
* **local form** (images, default mode): the relevant part kept as boxes around each
  mask (:mod:`.local`, rules in :mod:`.local_rules`); an operation without a local rule
  materializes the dense relevant part and goes on in the total form.

Why one module of more than 600 lines: the tensor types, the dispatch, the three computing
forms' bookkeeping (fields set by the constructors and read by the dispatch), the shared
total and the handler registry are one mechanism whose parts read each other's private
fields; splitting them would make those fields cross-module API.  The rules are in the
family modules listed above.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from .local import LocalRel

EPS = 1e-20


try:  # share the package-wide exception type when the propagation engine is present
    from captum_rap._engine import UnsupportedOperationError as _UnsupportedBase
except ImportError:  # pragma: no cover
    _UnsupportedBase = RuntimeError


class UnsupportedOperationError(_UnsupportedBase):
    """Raised when a function without a CD rule touches a decomposed tensor."""


# --------------------------------------------------------------------------------------
# per-call state (thread local): mode flags and the stack of running module names
# --------------------------------------------------------------------------------------
class _State(threading.local):
    def __init__(self) -> None:
        self.reference = False
        self.linear_bias_to_neither = False
        self.module_stack: List[str] = []
        self.names: Dict[int, str] = {}
        # testing aid: record / replay the max-pool arg-max indices (exact ties in the
        # true activation are broken by rounding noise, differently in each arithmetic)
        self.pool_record: Optional[List[torch.Tensor]] = None
        self.pool_replay: Optional[List[torch.Tensor]] = None
        # computation dtype (None: as given): the model's floating constants (weights,
        # biases, running statistics, in-forward constants) are cast to it, cached per call
        self.dtype: Optional[torch.dtype] = None
        self.face_dtype: Optional[torch.dtype] = None  # the dtype the model sees
        self.casts: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}


_STATE = _State()


def _where() -> str:
    if not _STATE.module_stack:
        return "the model's forward (outside any submodule)"
    return "module `%s`" % _STATE.module_stack[-1]


@contextlib.contextmanager
def cd_context(model: torch.nn.Module, reference: bool = False, linear_bias_to_neither: bool = False,
               dtype: Optional[torch.dtype] = None, face_dtype: Optional[torch.dtype] = None):
    """Set the rule flags and track module names (global forward hooks, removed on exit).

    ``dtype``: computation dtype; floating tensors that meet a decomposed tensor in a torch
    function (parameters, buffers, constants) are cast to it (copies: the model's own
    tensors are not touched), and dtype conversions of decomposed tensors keep it;
    ``face_dtype``: the dtype decomposed tensors report to the model (its own)."""
    names = {}
    if isinstance(model, torch.nn.Module):
        for n, m in model.named_modules():
            names.setdefault(id(m), n if n else "model")
    old = (_STATE.reference, _STATE.linear_bias_to_neither, _STATE.module_stack, _STATE.names,
           _STATE.dtype, _STATE.casts, _STATE.face_dtype)
    _STATE.reference = reference
    _STATE.linear_bias_to_neither = linear_bias_to_neither
    _STATE.module_stack = []
    _STATE.names = names
    _STATE.dtype = dtype
    _STATE.casts = {}
    _STATE.face_dtype = face_dtype

    def pre(mod, inp):
        nm = _STATE.names.get(id(mod), "<%s>" % type(mod).__name__)
        _STATE.module_stack.append("%s (%s)" % (nm, type(mod).__name__))

    def post(mod, inp, out):
        if _STATE.module_stack:
            _STATE.module_stack.pop()

    h1 = torch.nn.modules.module.register_module_forward_pre_hook(pre)
    h2 = torch.nn.modules.module.register_module_forward_hook(post, always_call=True)
    try:
        yield
    finally:
        h1.remove()
        h2.remove()
        (_STATE.reference, _STATE.linear_bias_to_neither, _STATE.module_stack, _STATE.names,
         _STATE.dtype, _STATE.casts, _STATE.face_dtype) = old


# --------------------------------------------------------------------------------------
# the decomposed tensor types
# --------------------------------------------------------------------------------------
def _face(t: torch.Tensor) -> torch.Tensor:
    """What a decomposed tensor shows the model (shape, dtype, device): ``t`` itself, or,
    when the computation runs in another dtype than the model's, a stride-0 view of a
    scalar of the model's dtype (modules that check ``input.dtype`` against their weights,
    such as ``nn.LSTM``, see the dtype they expect; no memory is used)."""
    face = _STATE.face_dtype
    if _STATE.dtype is None or face is None or t.dtype == face or not t.is_floating_point():
        return t.detach()
    return torch.zeros((), dtype=face, device=t.device).expand(t.shape)


class CDTensor(torch.Tensor):
    """An activation split as ``rel + irr`` (relevant and irrelevant parts).

    Built as ``CDTensor(rel, irr)`` (two parts, reference mode) or ``CDTensor(rel,
    tot=total)`` (relevant part and total, the default mode; see the module docstring).
    The properties :attr:`rel`, :attr:`irr` and :attr:`tot` work in both.  The tensor's
    own storage is that of ``rel`` (it only provides shape, dtype and device for the
    model's metadata queries); every computation goes through the rules.
    """

    _sec: torch.Tensor  # ``irr`` (two-part form) or ``tot`` (total form)
    _is_tot: bool
    _partial_view: bool
    _loc: Optional[LocalRel]  # boxes of the relevant part (see ``captum_rap._cd.local``)
    # token models: relevant share of each token position (the mask, shape of the ids) on
    # the embedding's output and on views of it; the recurrent layers read it
    _pos: Optional[torch.Tensor]
    # reference-compatible text mode: (W rel, W irr) of a ``linear`` output without its bias
    # (the reference's output layer puts its bias in neither part)
    _nobias: Optional[Tuple[torch.Tensor, torch.Tensor]]

    @staticmethod
    def __new__(cls, rel: torch.Tensor, irr: Optional[torch.Tensor] = None, partial_view: bool = False,
                *, tot: Optional[torch.Tensor] = None):
        if (irr is None) == (tot is None):
            raise TypeError("CDTensor needs exactly one of irr and tot")
        sec = irr if tot is None else tot
        if rel.shape != sec.shape:  # views: a total may stay expanded (stride 0)
            rel, sec = torch.broadcast_tensors(rel, sec)
        return cls._make(_face(rel), rel, None, sec, tot is not None, partial_view)

    @classmethod
    def _make(cls, face: torch.Tensor, relv: Optional[torch.Tensor], loc: Optional[LocalRel],
              sec: torch.Tensor, is_tot: bool, partial_view: bool) -> "CDTensor":
        t = torch.Tensor._make_subclass(cls, face, False)
        t._relv = relv
        t._loc = loc
        t._sec = sec
        t._is_tot = is_tot
        t._partial_view = partial_view
        t._pos = None
        t._nobias = None
        t._fam = [0]  # version of the data shared with its views (see _dispatch)
        t._ver = 0
        return t

    @classmethod
    def local(cls, loc: LocalRel, tot1: torch.Tensor) -> "CDTensor":
        """Total form with the relevant part kept as boxes; ``tot1`` is one row of the
        total (1, C, H, W), expanded to the K masks."""
        tot = tot1.expand((loc.crop.shape[0],) + tuple(tot1.shape[1:]))
        return cls._make(_face(tot), None, loc, tot, True, False)

    @property
    def _rel(self) -> torch.Tensor:
        """The dense relevant part (materialized from the boxes on first use)."""
        if self._loc is not None:
            self._relv = self._loc.materialize()
            self._loc = None
        return self._relv

    @_rel.setter
    def _rel(self, v: torch.Tensor) -> None:
        self._relv = v
        self._loc = None

    def __init__(self, *args, **kwargs):  # noqa: D401 - nothing to do
        pass

    @property
    def rel(self) -> torch.Tensor:
        return self._rel

    @property
    def irr(self) -> torch.Tensor:
        return self._sec - self._rel if self._is_tot else self._sec

    @property
    def tot(self) -> torch.Tensor:
        return self._sec if self._is_tot else self._rel + self._sec

    def __repr__(self, *args, **kwargs):  # pragma: no cover - debugging aid
        return "CDTensor(shape=%s, rel=%r, irr=%r)" % (tuple(self._rel.shape), self._rel, self.irr)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return _dispatch(func, args, kwargs or {})


class TokenCDTensor(torch.Tensor):
    """Integer token ids carrying a mask over token positions (1 = relevant).

    Shape and indexing operations apply to ids and mask alike; ``F.embedding`` turns it
    into a :class:`CDTensor` with ``rel = mask * E[ids]`` and ``irr = (1 - mask) * E[ids]``.
    """

    _ids: torch.Tensor
    _mask: torch.Tensor

    @staticmethod
    def __new__(cls, ids: torch.Tensor, mask: torch.Tensor):
        t = torch.Tensor._make_subclass(cls, ids, False)
        t._ids = ids
        t._mask = mask
        return t

    def __init__(self, *args, **kwargs):
        pass

    def __repr__(self, *args, **kwargs):  # pragma: no cover
        return "TokenCDTensor(ids=%r, mask=%r)" % (self._ids, self._mask)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return _dispatch(func, args, kwargs or {})


class AttentionWeights(torch.Tensor):
    """Softmax of a decomposed tensor, held as a constant: the attention weights of the
    total (the model's own, for the unmasked input), as in CD-T (Hsu et al., ICLR 2025).

    Multiplying a decomposed tensor by them (``matmul``, ``mul``, ``einsum``, ``bmm``)
    is linear in that tensor; shape operations, dropout (eval), dtype moves, scalings by
    constants and ``masked_fill`` keep them attention weights; any other use (an
    addition, the model's output, ...) raises :class:`UnsupportedOperationError`
    (see :mod:`.attention`)."""

    _w: torch.Tensor

    @staticmethod
    def __new__(cls, w: torch.Tensor):
        t = torch.Tensor._make_subclass(cls, _face(w), False)
        t._w = w
        return t

    def __init__(self, *args, **kwargs):
        pass

    def __repr__(self, *args, **kwargs):  # pragma: no cover
        return "AttentionWeights(%r)" % (self._w,)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return _dispatch(func, args, kwargs or {})


def _token_dispatch(func, name, args, kwargs):
    handler = _TOKEN_HANDLERS.get(name)
    if handler is None:
        raise UnsupportedOperationError(
            "CD: `%s` on token ids carrying a CD mask in %s; only shape/indexing operations and "
            "`embedding` are supported on token inputs." % (name, _where()))
    return handler(func, name, args, kwargs)


def _is_cd(x) -> bool:
    return isinstance(x, CDTensor)


def _func_name(func) -> str:
    name = getattr(func, "__name__", None)
    if name == "__get__":
        owner = getattr(func, "__self__", None)
        return "get:" + str(getattr(owner, "__name__", owner))
    if name is None:
        return str(func)
    return name


# functions that only read metadata (shape, dtype, ...) -> run on the wrapper itself
_META = {
    "size", "dim", "ndimension", "numel", "nelement", "is_contiguous", "is_floating_point",
    "is_complex", "element_size", "get_device", "stride", "storage_offset", "__len__",
    "__hash__", "data_ptr", "is_signed", "has_names", "__format__", "requires_grad_",
    "is_inference", "untyped_storage",
    # factories that only use shape / dtype / device: their results are constants
    "new_zeros", "new_ones", "new_full", "new_empty", "zeros_like", "ones_like",
    "empty_like", "full_like", "rand_like", "randn_like", "randint_like",
}
_META_GETTERS_LINEAR = {"get:T", "get:mT", "get:data", "get:H", "get:mH"}


def _run_plain(func, args, kwargs):
    with torch._C.DisableTorchFunctionSubclass():
        return func(*args, **kwargs)


def _cast(a):
    """``a`` in the computation dtype when it is a plain floating tensor of another one."""
    if isinstance(a, (list, tuple)):
        out = [_cast(v) for v in a]
        return type(a)(out) if isinstance(a, list) else tuple(out)
    if (type(a) is torch.Tensor or isinstance(a, torch.nn.Parameter)) and a.is_floating_point() \
            and a.dtype != _STATE.dtype:
        hit = _STATE.casts.get(id(a))
        if hit is None or hit[0] is not a:
            with torch._C.DisableTorchFunctionSubclass():
                hit = (a, a.detach().to(_STATE.dtype))
            _STATE.casts[id(a)] = hit
        return hit[1]
    return a


_DTYPE_CONVERSIONS = {"to", "type", "float", "double", "half", "bfloat16"}


def _dispatch(func, args, kwargs):
    name = _func_name(func)
    if name in _META or (name.startswith("get:") and name not in _META_GETTERS_LINEAR):
        return _run_plain(func, args, kwargs)
    if _STATE.dtype is not None:
        if name in _DTYPE_CONVERSIONS and args and _is_cd(args[0]):
            # the decomposition keeps its computation dtype (a device move still applies)
            if name != "to":
                return args[0]
            rest = [a.device if isinstance(a, torch.Tensor) else a for a in args[1:]
                    if not isinstance(a, torch.dtype)]
            kwargs = {k: v for k, v in kwargs.items() if k != "dtype"}
            if not rest and "device" not in kwargs:
                return args[0]
            args = (args[0],) + tuple(rest)
        args = _cast(args)
        kwargs = {k: _cast(v) for k, v in kwargs.items()}
    if kwargs.get("out") is not None:
        raise UnsupportedOperationError(
            "CD: `%s` with out= in %s writes into a plain tensor; use the returned value" % (name, _where()))
    # one pass over the arguments: token ids, and tensors made stale by an in-place op
    stale = None
    for a in _iter_args(args, kwargs):
        if isinstance(a, TokenCDTensor):
            return _token_dispatch(func, name, args, kwargs)
        if isinstance(a, AttentionWeights):
            return _WEIGHTS_HANDLER[0](func, name, args, kwargs)
        if stale is None and _is_cd(a) and a._ver != a._fam[0]:
            stale = a
    if stale is not None:
        raise UnsupportedOperationError(
                "CD: `%s` in %s reads a tensor after an in-place operation changed another view "
                "of its data (e.g. `flat = h.view(n, -1)` then `relu_(h)`, or an in-place op on "
                "`h.flatten(1)` and then `h`). Decomposed tensors do not share storage with their "
                "views; use the out-of-place form (inplace=False) there." % (name, _where()))
    handler = _HANDLERS.get(name)
    if handler is None:
        raise UnsupportedOperationError(
            "CD has no decomposition rule for `%s` (%s), called on a decomposed tensor in %s. "
            "Supported: conv/linear/batch_norm (eval), element-wise activations (the ReLU "
            "family, sigmoid, tanh, silu, gelu, hardswish, elu, softplus, ...), layer / group "
            "/ instance / RMS norm, max/avg/adaptive pooling, dropout (identity), products of "
            "decomposed tensors, softmax attention, scaled_dot_product_attention, "
            "multi-head attention, embedding, lstm, gru, sums of decomposed tensors and "
            "linear shape operations (captum_rap._cd.tensor.registered() lists them)."
            % (name, _qualname(func), _where())
        )
    src = args[0] if args else kwargs.get("input")
    other = args[1] if len(args) > 1 else None
    pos = src._pos if _is_cd(src) else None
    nobias = src._nobias if _is_cd(src) else None
    if _TOKEN_CONSTANT and len(args) == 2 and (name in _ADD_NAMES or name in _SUB_NAMES or name in _RSUB_NAMES) \
            and _is_cd(args[0]) != _is_cd(args[1]) and set(kwargs) <= {"alpha"}:
        x = args[0] if _is_cd(args[0]) else args[1]
        if x._pos is not None and x._nobias is None:  # a constant added to token embeddings
            return _TOKEN_CONSTANT[0](func, name, args, kwargs, handler)
    if pos is None and nobias is None and not (_is_cd(other) and other._nobias is not None):
        if name in _VIEWS and _is_cd(src):
            return _same_data(handler(func, name, args, kwargs), src)
        return handler(func, name, args, kwargs)
    summed = None  # operands of a sum (before an in-place sum overwrites the first one)
    if (name in _ADD_NAMES or name in _SUB_NAMES or name in _RSUB_NAMES) and len(args) == 2 \
            and set(kwargs) <= {"alpha"} and any(_is_cd(a) and a._nobias is not None for a in args):
        summed = [_nobias_parts(a) for a in args]
    res = handler(func, name, args, kwargs)
    if _is_cd(res):
        if pos is not None and res._pos is None:
            res._pos = _carry_pos(func, name, pos, res, args, kwargs)
        res._nobias = _carry_nobias(func, name, args, kwargs, nobias, summed)
    if name in _VIEWS and _is_cd(src):
        _same_data(res, src)
    return res


def _nobias_parts(v):
    if _is_cd(v):
        return v._nobias if v._nobias is not None else (v.rel, v.irr)
    return 0, v


# functions whose result is a view of (or the same tensor as) their input in torch: an
# in-place change of one makes the others stale (torch's storage sharing is not mirrored)
_VIEWS = {
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "permute", "transpose",
    "swapaxes", "swapdims", "movedim", "moveaxis", "t", "squeeze", "unsqueeze", "expand",
    "expand_as", "detach", "contiguous", "to", "type", "float", "double", "half", "bfloat16",
    "type_as", "cpu", "cuda", "get:T", "get:mT", "get:data", "__getitem__", "narrow", "select",
    "split", "chunk", "unbind", "tensor_split", "diagonal", "split_with_sizes", "unsafe_split",
    "unsafe_chunk", "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
    "feature_alpha_dropout",
}


def _same_data(res, src):
    """Put the result(s) of a view function in the version family of ``src`` (and carry
    the token shares / bias-free parts as for any function)."""
    items = res if isinstance(res, (list, tuple)) else (res,)
    for r in items:
        if _is_cd(r) and r is not src:
            r._fam = src._fam
            r._ver = src._fam[0]
    return res


def _carry_nobias(func, name, args, kwargs, nobias, summed):
    """Bias-free parts of the result (reference text mode), or None: shape functions of a
    bias-free output, and sums / differences with it (the other operand with its parts;
    a constant in the irrelevant part)."""
    with torch._C.DisableTorchFunctionSubclass():
        if nobias is not None and name in _NOBIAS_CARRY:
            return tuple(func(part, *args[1:], **kwargs) for part in nobias)
        if summed is not None:
            (ar, ai), (br, bi) = summed
            alpha = kwargs.get("alpha", 1)
            if name in _RSUB_NAMES:  # other - alpha * self
                return br - alpha * ar, bi - alpha * ai
            sign = -1 if name in _SUB_NAMES else 1
            return ar + sign * alpha * br, ai + sign * alpha * bi
    return None


# shape-preserving functions after which a token position keeps its relevant share
_POS_SAME = {"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
             "clone", "contiguous", "detach", "to", "float", "double", "half", "bfloat16", "type_as",
             "cpu", "cuda"}
_POS_SCALE = {"mul", "__mul__", "__rmul__", "mul_", "__imul__", "multiply", "div", "__truediv__", "div_",
              "__itruediv__", "true_divide", "divide"}
# functions that rearrange the token axes (the last, feature, axis staying last)
_POS_MOVE = {"transpose", "transpose_", "swapaxes", "swapdims", "permute", "movedim", "moveaxis",
             "unsqueeze", "unsqueeze_"}
# shape functions applied to the bias-free output parts of the reference text mode
_NOBIAS_CARRY = {"view", "reshape", "squeeze", "unsqueeze", "flatten", "__getitem__", "select", "narrow",
                 "contiguous", "clone", "transpose", "permute", "t", "to", "float", "double", "detach"}


def _carry_pos(func, name, pos, res, args, kwargs) -> Optional[torch.Tensor]:
    """The token shares ``pos`` (shape of the token ids) for the result ``res`` of
    ``func`` on a decomposed tensor that carried them, or None when ``func`` mixes
    positions or changes the shares (the recurrent layers then derive the share from the
    magnitudes of the parts)."""
    if name in _POS_SAME or (name in _POS_SCALE and len(args) == 2 and not kwargs and (
            isinstance(args[1], (int, float)) or (isinstance(args[1], torch.Tensor) and args[1].dim() == 0))):
        return pos if res.shape[:-1] == pos.shape else None
    if name in _POS_MOVE and not kwargs:
        with torch._C.DisableTorchFunctionSubclass():
            try:
                p = _oop_func(func, name)[0](pos.unsqueeze(-1), *args[1:])
            except Exception:  # pragma: no cover - e.g. an axis that only the features have
                return None
        if p.dim() == res.dim() and p.shape[-1] == 1 and p.shape[:-1] == res.shape[:-1]:
            return p.squeeze(-1)
    return None


def _qualname(func) -> str:
    mod = getattr(func, "__module__", None) or ""
    qn = getattr(func, "__qualname__", None) or getattr(func, "__name__", str(func))
    return ("%s.%s" % (mod, qn)) if mod else str(qn)


def _iter_args(args, kwargs):
    for a in args:
        if isinstance(a, (list, tuple)):
            yield from a
        else:
            yield a
    for a in kwargs.values():
        if isinstance(a, (list, tuple)):
            yield from a
        else:
            yield a


def _new(rel, sec, partial_view=False, is_tot=False):
    """Decomposed tensor from ``rel`` and ``sec`` (``tot`` if ``is_tot`` else ``irr``)."""
    if is_tot:
        return CDTensor(rel, None, partial_view, tot=sec)
    return CDTensor(rel, sec, partial_view)


def _wrap_pair(out_r, out_s, partial_view=False, is_tot=False):
    if isinstance(out_r, torch.Tensor):
        return _new(out_r, out_s, partial_view, is_tot)
    if isinstance(out_r, (list, tuple)):
        res = [_wrap_pair(a, b, partial_view, is_tot) for a, b in zip(out_r, out_s)]
        return type(out_r)(res) if isinstance(out_r, list) else tuple(res)
    return out_r


def _set_inplace(target: CDTensor, result: CDTensor) -> CDTensor:
    if target._partial_view:
        raise UnsupportedOperationError(
            "CD: in-place modification of a slice of a decomposed tensor in %s is not "
            "supported (the base tensor would not see it)." % _where()
        )
    target._relv = result._relv
    target._loc = result._loc
    target._sec = result._sec
    target._is_tot = result._is_tot
    target._pos = None
    target._nobias = None
    # the views of ``target`` (and what it is a view of) now hold stale parts
    target._fam[0] += 1
    target._ver = target._fam[0]
    return target


def _inplace_name(name: str) -> Optional[str]:
    """Out-of-place name of an in-place function name, or None."""
    if name.startswith("__i") and name.endswith("__"):
        return "__" + name[3:]
    if name.endswith("_") and not name.endswith("__"):
        return name[:-1]
    return None


def _oop_func(func, name):
    """Out-of-place variant of an in-place torch function."""
    base = _inplace_name(name)
    if base is None:
        return func, False
    for ns in (torch.Tensor, torch, F):
        f = getattr(ns, base, None)
        if f is not None:
            return f, True
    raise UnsupportedOperationError("CD: no out-of-place variant for in-place `%s` in %s" % (name, _where()))


# --------------------------------------------------------------------------------------
# the shared total: expanded along the batch axis (stride 0), computed on one row
# --------------------------------------------------------------------------------------
def _shared(t) -> bool:
    """True for a tensor expanded along dim 0 (all rows are one row)."""
    return isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape[0] > 1 and t.stride(0) == 0


def _bcast(t: torch.Tensor, k: int) -> torch.Tensor:
    return t.expand((k,) + tuple(t.shape[1:]))


def _rowwise(f, t: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """``f(t, ...)`` for an ``f`` that treats dim 0 as a batch axis: on one row of a shared
    ``t`` (re-expanded), else on ``t`` itself."""
    if _shared(t):
        return _bcast(f(t[:1], *args, **kwargs), t.shape[0])
    return f(t, *args, **kwargs)


def _mode_of(args, kwargs) -> bool:
    for a in _iter_args(args, kwargs):
        if _is_cd(a):
            return a._is_tot
    return not _STATE.reference


# --------------------------------------------------------------------------------------
# helpers shared by the rules
# --------------------------------------------------------------------------------------
def _sec_as(v: CDTensor, is_tot: bool) -> torch.Tensor:
    """Second slot of ``v`` in the representation ``is_tot``."""
    if v._is_tot == is_tot:
        return v._sec
    return v.tot if is_tot else v.irr


def _substitute(args, kwargs, which: str, is_tot: bool = False):
    """Replace decomposed tensors by one of their parts (top-level args / kwargs)."""
    if which == "_rel":
        a2 = [a._rel if _is_cd(a) else a for a in args]
        k2 = {k: (v._rel if _is_cd(v) else v) for k, v in kwargs.items()}
    else:
        a2 = [_sec_as(a, is_tot) if _is_cd(a) else a for a in args]
        k2 = {k: (_sec_as(v, is_tot) if _is_cd(v) else v) for k, v in kwargs.items()}
    return a2, k2


def _count_cd(args, kwargs) -> int:
    return sum(1 for a in args if _is_cd(a)) + sum(1 for v in kwargs.values() if _is_cd(v))



_SIG_CACHE: Dict[Any, inspect.Signature] = {}


def _bind(func, args, kwargs) -> Dict[str, Any]:
    sig = _SIG_CACHE.get(func)
    if sig is None:
        sig = inspect.signature(func)
        _SIG_CACHE[func] = sig
    b = sig.bind(*args, **kwargs)
    b.apply_defaults()
    return dict(b.arguments)


def _inplace_flag(func, args, kwargs) -> bool:
    if "inplace" in kwargs:
        return bool(kwargs["inplace"])
    try:
        return bool(_bind(func, args, kwargs).get("inplace", False))
    except (TypeError, ValueError):
        return False


def _split_bias(r, i, b):
    """Reference arithmetic: ``r + (|r|+eps)/(|r|+|i|+2eps) * b`` (and for ``i``)."""
    ar, ai = r.abs(), i.abs()
    den = ar + ai + 2 * EPS
    pr = (ar + EPS) / den
    pi = (ai + EPS) / den
    return r + pr * b, i + pi * b


def _rel_share(r, i, b):
    """``r + (|r|+eps)/(|r|+|i|+2eps) * b``: the relevant part of an affine output whose
    linear parts are ``r`` and ``i`` (both are consumed: ``i`` holds the denominator and
    the result is written into ``r``; one temporary)."""
    ar = r.abs()
    den = i.abs_().add_(ar).add_(2 * EPS)
    return r.addcdiv_(ar.add_(EPS).mul_(b), den)


_ADD_NAMES = {"add", "__add__", "__radd__", "add_", "__iadd__"}
_SUB_NAMES = {"sub", "__sub__", "sub_", "__isub__", "subtract"}
_RSUB_NAMES = {"__rsub__", "rsub"}


# --------------------------------------------------------------------------------------
# the handler registry
# --------------------------------------------------------------------------------------
Handler = Callable[[Callable, str, tuple, dict], Any]

#: torch function name -> handler ``(func, name, args, kwargs) -> result`` for calls with a
#: decomposed tensor among the arguments
_HANDLERS: Dict[str, Handler] = {}
#: the same for calls on token ids carrying a mask (:class:`TokenCDTensor`)
_TOKEN_HANDLERS: Dict[str, Handler] = {}
#: the handler of calls with attention weights (:class:`AttentionWeights`) among the arguments
_WEIGHTS_HANDLER: List[Handler] = []
#: the rule of a constant added to token embeddings (``(func, name, args, kwargs, add_handler)``)
_TOKEN_CONSTANT: List[Callable] = []


def register(*names: str, tokens: bool = False) -> Callable[[Handler], Handler]:
    """Decorator: ``handler`` is the CD rule of the torch functions ``names`` (the
    ``__name__`` of the function torch dispatches, e.g. ``"conv2d"``, ``"__add__"``,
    ``"add_"``; ``"get:T"`` for the ``.T`` property).  ``tokens=True``: the rule of
    calls on token ids carrying a mask.  A name can have one handler only."""
    table = _TOKEN_HANDLERS if tokens else _HANDLERS

    def deco(handler: Handler) -> Handler:
        for n in names:
            if n in table and table[n] is not handler:
                raise RuntimeError("CD: two handlers registered for `%s`" % n)
            table[n] = handler
        return handler
    return deco


def registered() -> List[str]:
    """Names of the torch functions with a CD rule (sorted)."""
    return sorted(_HANDLERS)


# --------------------------------------------------------------------------------------
def split_output(out) -> Tuple[torch.Tensor, torch.Tensor]:
    """(rel, irr) of a model output (first tensor of a tuple / namedtuple output)."""
    if isinstance(out, (tuple, list)) and not isinstance(out, torch.Tensor):
        out = out[0]
    if isinstance(out, dict):
        out = next(iter(out.values()))
    if _is_cd(out):
        if out._ver != out._fam[0]:
            raise UnsupportedOperationError(
                "CD: the model's output was changed by an in-place operation on another view "
                "of its data after it was computed; use out-of-place operations there")
        if out._nobias is not None:
            return out._nobias
        return out.rel, out.irr
    if isinstance(out, AttentionWeights):
        raise UnsupportedOperationError(
            "CD: the model's output is a softmax of decomposed values. CD decomposes a softmax "
            "only as attention weights applied to decomposed values; decompose the logits "
            "(a model without the final softmax).")
    if isinstance(out, torch.Tensor):
        return torch.zeros_like(out), out
    raise TypeError("CD: the model returned %r, expected a tensor" % type(out))
