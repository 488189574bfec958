"""Decomposed tensors for contextual decomposition.

A :class:`CDTensor` stands for an activation ``x = rel + irr`` and intercepts every torch
function it takes part in (``__torch_function__``), so the decomposition follows the
*whole* forward pass of an unchanged model: modules, functional calls, ``+``, ``cat``,
reshapes, in-place activations.  Each supported function has a rule; any other function
that touches a decomposed tensor raises :class:`UnsupportedOperationError` naming the
function and the module it was called from.

Rules (``rel`` = relevant part, ``irr`` = irrelevant part):

* linear maps without constant term (reshapes, indexing, pooling by averaging, ``sum``,
  ``mean``, ``mul``/``div`` by a constant, ``matmul`` with a constant, eval dropout, ...):
  applied to both parts;
* affine maps ``W x + b`` (conv, linear, batch norm): ``r = W rel``, ``i = W irr`` and the
  bias is split proportionally to ``(|r| + 1e-20) / (|r| + |i| + 2e-20)`` (batch norm:
  ``|r| / (|r| + |i|)`` with ``0/0`` giving the whole shift to ``irr``);
* ``a + b`` adds parts; a constant added to a decomposed tensor goes to ``irr``;
* ReLU family ``f``: ``rel' = f(rel)``, ``irr' = f(rel + irr) - f(rel)``;
* max pooling: the arg-max of ``rel + irr`` selects the entries of both parts;
* ``torch.lstm``, ``torch.gru``: see :mod:`captum_rap._cd.lstm`.

Representation.  In the default mode a decomposed tensor carries ``rel`` and the *total*
``tot = rel + irr`` (``irr`` is ``tot - rel`` when a rule needs it).  The total never depends
on the masks (it is the model's own activation for the unmasked input), so it is computed
once for all masks of a forward: the input's total is the input expanded along the batch
axis (stride 0), and every batch-wise rule (conv, linear, batch norm, activations, pooling,
sums, concatenations, scaling) runs on one row of it and expands the result again.  A
decomposition of K masks therefore costs about one forward of the K relevant parts plus
one forward of a single image, instead of two forwards of K (relevant and irrelevant).
The arg-max of max pooling is the model's own (that of the true activation).  In
``reference`` mode the tensor carries ``rel`` and ``irr`` and every rule uses the
reference's arithmetic (``M(x) - M(0)``, batch norm's residual).
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from . import local as _local
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
        t = torch.Tensor._make_subclass(cls, _face(rel), False)
        t._relv = rel
        t._loc = None
        t._sec = sec
        t._is_tot = tot is not None
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
        t = torch.Tensor._make_subclass(cls, _face(tot), False)
        t._relv = None
        t._loc = loc
        t._sec = tot
        t._is_tot = True
        t._partial_view = False
        t._pos = None
        t._nobias = None
        t._fam = [0]  # version of the data shared with its views (see _dispatch)
        t._ver = 0
        return t

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
            "Supported: conv/linear/batch_norm (eval), the ReLU family (relu, relu6, "
            "leaky_relu, hardtanh, clamp, threshold), max/avg/adaptive pooling, dropout "
            "(identity), embedding, lstm, gru, sums of decomposed tensors and linear shape "
            "operations." % (name, _qualname(func), _where())
        )
    src = args[0] if args else kwargs.get("input")
    other = args[1] if len(args) > 1 else None
    pos = src._pos if _is_cd(src) else None
    nobias = src._nobias if _is_cd(src) else None
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
# rules
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


_PARTIAL_VIEWS = {"__getitem__", "narrow", "select", "split", "chunk", "unbind", "tensor_split",
                  "diagonal", "split_with_sizes", "unsafe_split", "unsafe_chunk"}

# linear functions that treat dim 0 as a batch axis (for the shared total)
_ROWWISE = {
    "mul", "__mul__", "__rmul__", "multiply", "div", "__truediv__", "true_divide", "divide",
    "neg", "__neg__", "negative", "__pos__", "positive", "clone", "contiguous", "to", "float",
    "double", "half", "bfloat16", "cpu", "cuda", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "interpolate",
    "upsample", "upsample_nearest", "upsample_bilinear", "pixel_shuffle", "pixel_unshuffle",
    "channel_shuffle", "native_channel_shuffle",
}
_REDUCTIONS = {"mean", "sum", "nansum", "cumsum"}


def _rowwise_ok(base: str, sec: torch.Tensor, args, kwargs) -> bool:
    """Whether ``base(sec, *args)`` may be computed on one row of a shared ``sec``."""
    if not _shared(sec):
        return False
    if base in _REDUCTIONS:
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
        if dim is None or isinstance(dim, str):
            return False
        dims = [dim] if isinstance(dim, int) else list(dim)
        if not dims or any((int(d) % sec.dim()) == 0 for d in dims):
            return False
    elif base not in _ROWWISE:
        return False
    for a in list(args) + list(kwargs.values()):  # constants must not vary along dim 0
        if isinstance(a, torch.Tensor) and not _is_cd(a) and a.dim() >= sec.dim() and a.shape[0] != 1:
            return False
    return True


_LIKE = {"expand_as", "view_as", "reshape_as", "type_as"}  # the 2nd argument gives a shape / dtype


def _unary_linear(func, name, args, kwargs):
    """Functions linear (without constant term) in their single decomposed argument."""
    if name in _LIKE and len(args) == 2 and _is_cd(args[1]):
        args = (args[0], args[1]._sec)  # a plain tensor of the same shape (and dtype)
        if not _is_cd(args[0]):  # a constant shaped like a decomposed tensor
            return _run_plain(func, args, kwargs)
    n = _count_cd(args, kwargs)
    if n != 1 or any(_is_cd(x) for a in args if isinstance(a, (list, tuple)) for x in a):
        raise UnsupportedOperationError(
            "CD: `%s` in %s takes %s decomposed tensors; a rule exists only when exactly one "
            "argument is decomposed (a product of two decomposed tensors is not linear)."
            % (name, _where(), "several" if n > 1 else "nested")
        )
    f, inplace = _oop_func(func, name)
    loc_arg = next((a for a in args if _is_cd(a) and a._loc is not None and a._sec.dim() == 4), None)
    if loc_arg is not None:
        base = _inplace_name(name) or name
        if base == "avg_pool2d" and args[0] is loc_arg:
            out = _local_avg_pool2d(loc_arg, args[1:], kwargs)
        elif base in _SCALINGS and len(args) == 2 and not kwargs:
            out = _local_scale(f, args)
        else:
            out = None
        if out is not None:
            return _set_inplace(args[0], out) if inplace else out
    is_tot = _mode_of(args, kwargs)
    ar, kr = _substitute(args, kwargs, "_rel")
    asec, ksec = _substitute(args, kwargs, "_sec", is_tot)
    out_r = f(*ar, **kr)
    out_s = None
    if is_tot:
        base = _inplace_name(name) or name
        pos = next((j for j, a in enumerate(args) if _is_cd(a)), None)
        sec = asec[pos] if pos is not None else None
        if sec is not None and _rowwise_ok(base, sec, asec[:pos] + [None] + asec[pos + 1:], ksec):
            a1 = list(asec)
            a1[pos] = sec[:1]
            o = f(*a1, **ksec)
            if isinstance(o, torch.Tensor) and o.dim() >= 1 and o.shape[0] == 1:
                out_s = _bcast(o, sec.shape[0])
    if out_s is None:
        out_s = f(*asec, **ksec)
    out = _wrap_pair(out_r, out_s, name in _PARTIAL_VIEWS, is_tot)
    if inplace:
        if not _is_cd(args[0]):
            raise UnsupportedOperationError(
                "CD: in-place `%s` writes a decomposed tensor into a plain tensor in %s" % (name, _where()))
        return _set_inplace(args[0], out)
    return out


def _div(func, name, args, kwargs):
    if name in ("__rtruediv__", "__rdiv__", "__rfloordiv__") or (len(args) > 1 and _is_cd(args[1])):
        raise UnsupportedOperationError(
            "CD: division by a decomposed tensor (`%s`) in %s is not linear" % (name, _where()))
    if kwargs.get("rounding_mode") is not None:
        raise UnsupportedOperationError("CD: `%s` with rounding_mode in %s is not linear" % (name, _where()))
    return _unary_linear(func, name, args, kwargs)


def _identity(func, name, args, kwargs):
    """Dropout: identity (the model is expected in eval mode)."""
    x = args[0] if args else kwargs.get("input")
    if _inplace_flag(func, args, kwargs):
        return x
    if x._loc is not None:
        return CDTensor.local(x._loc, x._sec[:1])
    return _new(x._rel, x._sec, False, x._is_tot)


def _parts(v, is_tot: bool):
    """``(rel, sec)`` of an operand; ``rel`` is None for a constant (all of it is ``irr``)."""
    if _is_cd(v):
        return v._rel, _sec_as(v, is_tot)
    return None, v


_ADD_NAMES = {"add", "__add__", "__radd__", "add_", "__iadd__"}
_SUB_NAMES = {"sub", "__sub__", "sub_", "__isub__", "subtract"}
_RSUB_NAMES = {"__rsub__", "rsub"}


def _axpy(a, b, coef):
    """``a + coef * b`` where either may be None (zero)."""
    if b is None:
        return a
    b = b if coef == 1 else coef * b
    return b if a is None else a + b


def _add_sub(func, name, args, kwargs):
    a = args[0] if args else kwargs.get("input")
    b = args[1] if len(args) > 1 else kwargs.get("other")
    alpha = kwargs.get("alpha", args[2] if len(args) > 2 else 1)
    if name in _RSUB_NAMES:  # other - self
        a, b = b, a
        sign = -1
    elif name in _SUB_NAMES:
        sign = -1
    else:
        sign = 1
    is_tot = _mode_of(args, kwargs)
    coef = sign * alpha
    out = None
    la, lb = _is_cd(a) and a._loc is not None, _is_cd(b) and b._loc is not None
    if la and lb and a._sec.shape == b._sec.shape and a._sec.dim() == 4:
        out = _local_sum([a, b], [1, coef])  # e.g. a residual addition
    elif la and _per_channel(b):  # a constant goes to irr (to the total)
        out = CDTensor.local(a._loc, a._sec[:1] + coef * b)
    elif lb and _per_channel(a) and coef in (1, -1):
        l_ = b._loc
        if coef == -1:
            l_ = LocalRel(-l_.bg, -l_.crop, l_.ys, l_.xs)
        out = CDTensor.local(l_, a + coef * b._sec[:1])
    if out is not None:
        if name in ("add_", "__iadd__", "sub_", "__isub__"):
            return _set_inplace(args[0], out)
        return out
    ra, sa = _parts(a, is_tot)
    rb, sb = _parts(b, is_tot)
    # at least one operand is decomposed; constants go to ``irr`` (hence to ``tot``)
    rel = torch.as_tensor(_axpy(ra, rb, coef))
    if is_tot and _shared(sa) and _shared(sb) and sa.shape == sb.shape:
        sec = _bcast(_axpy(sa[:1], sb[:1], coef), sa.shape[0])  # e.g. a residual addition
    elif is_tot and _shared(sa) and not isinstance(sb, torch.Tensor):
        sec = _bcast(_axpy(sa[:1], sb, coef), sa.shape[0])  # plus a Python number
    elif is_tot and _shared(sb) and not isinstance(sa, torch.Tensor):
        sec = _bcast(_axpy(sa, sb[:1], coef), sb.shape[0])
    else:
        sec = torch.as_tensor(_axpy(sa, sb, coef))
    rel, sec = torch.broadcast_tensors(rel, sec)
    out = _new(rel, sec, False, is_tot)
    if name in ("add_", "__iadd__", "sub_", "__isub__"):
        if not _is_cd(args[0]):
            raise UnsupportedOperationError(
                "CD: in-place `%s` adds a decomposed tensor into a plain tensor in %s" % (name, _where()))
        return _set_inplace(args[0], out)
    return out


def _joint_linear(func, name, args, kwargs):
    """cat / stack: jointly linear in all inputs; plain tensors are constants (-> irr)."""
    seq = args[0] if args else kwargs.get("tensors")
    rest = list(args[1:])
    kw = {k: v for k, v in kwargs.items() if k != "tensors"}
    is_tot = _mode_of(list(seq), {})
    if name in ("cat", "concat", "concatenate") and seq and all(_is_cd(t) and t._loc is not None for t in seq) \
            and all(t._sec.dim() == 4 for t in seq) and len({tuple(t._sec.shape[-2:]) for t in seq}) == 1 \
            and kw.get("dim", rest[0] if rest else 0) in (1, -3):
        out = _local_cat(list(seq))  # e.g. DenseNet / Inception concatenations (channels)
        if out is not None:
            return out
    rl, sl = [], []
    for t in seq:
        r, s_ = _parts(t, is_tot)
        rl.append(torch.zeros_like(t) if r is None else r)
        sl.append(s_)
    out_s = None
    if is_tot and name in ("cat", "concat", "concatenate") and sl and all(_shared(v) for v in sl) \
            and len({v.shape[0] for v in sl}) == 1:
        dim = kw.get("dim", rest[0] if rest else 0)
        if isinstance(dim, int) and dim % sl[0].dim() != 0:  # e.g. DenseNet / Inception concat
            out_s = _bcast(func([v[:1] for v in sl], *rest, **kw), sl[0].shape[0])
    if out_s is None:
        out_s = func(sl, *rest, **kw)
    return _new(func(rl, *rest, **kw), out_s, False, is_tot)


def _pad(func, name, args, kwargs):
    sig = _bind(F.pad, args, kwargs)
    x = sig["input"]
    if not _is_cd(x):
        raise UnsupportedOperationError("CD: `pad` of a decomposed value in %s" % _where())
    mode = sig.get("mode", "constant")
    value = sig.get("value", None)
    p = sig["pad"]
    sec = x._sec
    if x._loc is not None and sec.dim() == 4 and mode == "constant" and len(p) in (2, 4) \
            and min(p) >= 0:  # zero-padding a map: the boxes move, the background is padded
        left, top = int(p[0]), (int(p[2]) if len(p) == 4 else 0)
        loc = x._loc
        nl = LocalRel(F.pad(loc.bg, p), loc.crop, [y + top for y in loc.ys], [v + left for v in loc.xs])
        return CDTensor.local(nl, F.pad(sec[:1], p, mode="constant", value=value if value is not None else 0.0))
    if mode == "constant":
        def fs(t):
            return F.pad(t, p, mode="constant", value=value if value is not None else 0.0)
        rel = F.pad(x._rel, p, mode="constant", value=0.0)
    else:
        def fs(t):
            return F.pad(t, p, mode=mode)
        rel = F.pad(x._rel, p, mode=mode)
    if x._is_tot and len(p) // 2 < sec.dim():
        return _new(rel, _rowwise(fs, sec), False, True)
    return _new(rel, fs(sec), False, x._is_tot)


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


def _activation(func, name, args, kwargs):
    """ReLU family: rel' = f(rel), irr' = f(rel + irr) - f(rel)  (total: tot' = f(tot))."""
    x = args[0] if args else kwargs.get("input")
    others = list(args[1:]) + [v for k, v in kwargs.items() if k != "input"]
    if not _is_cd(x) or any(_is_cd(v) for v in others):
        raise UnsupportedOperationError("CD: `%s` with decomposed bounds in %s" % (name, _where()))
    f, oop = _oop_func(func, name)
    inplace = oop
    sig = None
    if not oop:
        try:
            sig = _bind(func, args, kwargs)
        except (TypeError, ValueError):
            sig = None
    if sig is not None and "inplace" in sig:
        inplace = bool(sig["inplace"])
        sig["inplace"] = False
        first = next(iter(sig))

        def fn(t):
            a = dict(sig)
            a[first] = t
            return f(**a)
    else:
        rest_a = list(args[1:])
        kw = {k: v for k, v in kwargs.items() if k != "input"}

        def fn(t):
            return f(t, *rest_a, **kw)
    if x._loc is not None and not any(isinstance(v, torch.Tensor) and v.numel() > 1 for v in others):
        loc = x._loc  # (bounds that are tensors would not fit the boxes: dense then)
        out = CDTensor.local(LocalRel(fn(loc.bg), fn(loc.crop), loc.ys, loc.xs), fn(x._sec[:1]))
        return _set_inplace(x, out) if inplace else out
    rel = fn(x._rel)
    if x._is_tot:
        out = _new(rel, _rowwise(fn, x._sec), False, True)
    else:
        irr = fn(x._rel + x._sec)
        irr = irr.sub_(rel) if irr.shape == rel.shape and irr.dtype == rel.dtype else irr - rel
        out = _new(rel, irr)
    return _set_inplace(x, out) if inplace else out


# ---- affine maps: conv / linear / batch norm ----------------------------------------
def _split_bias(r, i, b):
    """Reference arithmetic: ``r + (|r|+eps)/(|r|+|i|+2eps) * b`` (and for ``i``)."""
    ar, ai = r.abs(), i.abs()
    den = ar + ai + 2 * EPS
    pr = (ar + EPS) / den
    pi = (ai + EPS) / den
    return r + pr * b, i + pi * b


def _rel_share(r, i, b):
    """``r + (|r|+eps)/(|r|+|i|+2eps) * b`` with few temporaries (``i`` is consumed)."""
    ar = r.abs()
    w = i.abs_().add_(ar).add_(2 * EPS).reciprocal_().mul_(b)
    return ar.add_(EPS).mul_(w).add_(r)


_CONV_NAMES = {"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "linear"}


def _affine(func, name, args, kwargs):
    args = list(args)
    kwargs = dict(kwargs)
    x = args[0] if args else kwargs.pop("input")
    if args:
        args = args[1:]
    if not _is_cd(x) or _count_cd(args, kwargs):
        raise UnsupportedOperationError(
            "CD: `%s` in %s with a decomposed weight or bias is not supported" % (name, _where()))
    # separate the bias (3rd positional argument of every function here)
    if len(args) >= 2:
        weight, bias = args[0], args[1]
        rest = args[2:]
    else:
        weight = args[0] if args else kwargs.pop("weight")
        bias = kwargs.pop("bias", None)
        rest = []
    kwargs.pop("bias", None)
    if not x._is_tot:  # the reference's arithmetic, rel and irr carried separately
        r = func(x._rel, weight, bias, *rest, **kwargs)
        i = func(x._sec, weight, bias, *rest, **kwargs)
        if bias is None:  # M(0) = 0
            return _new(r, i)
        # M(0) of a zero-padded conv / linear is the bias broadcast, bit for bit
        # (the reference computes it with a forward of zeros)
        shape = [1] * r.dim()
        shape[-1 if name == "linear" else (1 if x._rel.dim() == weight.dim() else 0)] = -1
        zero = bias.view(shape).expand_as(r)
        r = r - zero
        i = i - zero
        rel, irr = _split_bias(r, i, zero)
        out = _new(rel, irr)
        if name == "linear" and _STATE.linear_bias_to_neither:
            # if this is the model's output layer, its bias goes to neither part (the
            # reference's text head); ``split_output`` uses these parts then
            out._nobias = (r, i)
        return out
    if x._loc is not None and name == "conv2d" and x._sec.dim() == 4:
        out = _local_conv2d(func, x, weight, bias, rest, kwargs)
        if out is not None:
            return out
    # total form: W tot once (one row of the shared total), W rel for every mask
    tot = x._sec
    batched = tot.dim() >= 2 if name == "linear" else tot.dim() == weight.dim()
    r = func(x._rel, weight, None, *rest, **kwargs)
    if batched:
        wt = _rowwise(func, tot, weight, None, *rest, **kwargs)
    else:
        wt = func(tot, weight, None, *rest, **kwargs)
    if bias is None:
        return _new(r, wt, False, True)
    if name == "linear":
        b = bias
    else:  # channel dim 1 (batched) or 0 (unbatched conv)
        shape = [1] * r.dim()
        shape[1 if batched else 0] = -1
        b = bias.view(shape)
    rel = _rel_share(r, wt - r, b)
    tot_out = _rowwise(torch.add, wt, b) if batched else wt + b
    return _new(rel, tot_out, False, True)


def _local_conv2d(func, x, weight, bias, rest, kwargs):
    """conv2d of boxes: each output box from the input window it depends on."""
    p = dict(zip(["stride", "padding", "dilation", "groups"], rest))
    p.update(kwargs)
    if isinstance(p.get("padding", 0), str):
        return None
    (sy, sx), (py, px) = _local.pair(p.get("stride", 1)), _local.pair(p.get("padding", 0))
    (dy, dx), groups = _local.pair(p.get("dilation", 1)), int(p.get("groups", 1))
    kh, kw = weight.shape[-2:]
    loc = x._loc
    tot1 = x._sec[:1]
    wt = func(tot1, weight, None, (sy, sx), (py, px), (dy, dx), groups)
    win = _local.plan_windows(loc, (kh, kw), (sy, sx), (py, px), (dy, dx), wt.shape[-2:])
    if win is None:
        return None
    r = func(loc.windows(win.y0s, win.x0s, win.ph, win.pw), weight, None, (sy, sx), 0, (dy, dx), groups)
    rbg = func(loc.bg, weight, None, (sy, sx), (py, px), (dy, dx), groups)
    if bias is None:
        return CDTensor.local(LocalRel(rbg, r, win.ys, win.xs), wt)
    b = bias.view(1, -1, 1, 1)
    crop = _rel_share(r, _local.boxes(wt, win.ys, win.xs, win.h, win.w).sub_(r), b)
    bg = _rel_share(rbg, wt - rbg, b)
    return CDTensor.local(LocalRel(bg, crop, win.ys, win.xs), wt + b)


def _batch_norm(func, name, args, kwargs):
    a = _bind(F.batch_norm, args, kwargs)
    x = a["input"]
    if not _is_cd(x) or any(_is_cd(a[k]) for k in ("running_mean", "running_var", "weight", "bias")):
        raise UnsupportedOperationError("CD: `batch_norm` with decomposed statistics in %s" % _where())
    if a["running_mean"] is None:
        raise UnsupportedOperationError(
            "CD: `batch_norm` in %s has no running statistics (track_running_stats=False): it "
            "normalises with the statistics of the batch, which is not an affine map of one "
            "input, so CD has no rule for it." % _where())
    if a["training"]:
        raise UnsupportedOperationError(
            "CD: `batch_norm` in %s runs in training mode (batch statistics are not an affine "
            "map, and running statistics would be updated). Put the model in eval mode "
            "(`model.eval()`) before calling CD." % _where())
    rm, rv, w, b, eps = a["running_mean"], a["running_var"], a["weight"], a["bias"], a["eps"]
    if not x._is_tot:  # the reference's arithmetic
        def M(t):
            return F.batch_norm(t, rm, rv, w, b, False, 0.0, eps)
        c = M(torch.zeros_like(x._sec))
        r = M(x._rel) - c
        i = M(x._sec) - c
        pr = r.abs() / (r.abs() + i.abs())
        pr = torch.where(torch.isnan(pr), torch.zeros_like(pr), pr)
        rel = r + pr * c
        irr = M(x._rel + x._sec) - rel
        return _new(rel, irr)
    nd = x._sec.dim()
    shape = [1] * nd
    shape[1 if nd > 1 else 0] = -1
    scale = torch.rsqrt(rv + eps)
    if w is not None:
        scale = scale * w
    shift = -rm * scale
    if b is not None:
        shift = shift + b
    scale = scale.view(shape).to(x._sec.dtype)
    shift = shift.view(shape).to(x._sec.dtype)

    def share(r, st):  # r + |r| / (|r| + |i|) * shift; 0/0 -> the whole shift to irr
        ar = r.abs()
        pr = torch.nan_to_num_(ar / (st - r).abs_().add_(ar), nan=0.0)
        return pr.mul_(shift).add_(r)

    if x._loc is not None and nd == 4:
        loc = x._loc
        st1 = x._sec[:1] * scale
        h, w_ = loc.box
        crop = share(loc.crop * scale, _local.boxes(st1, loc.ys, loc.xs, h, w_))
        return CDTensor.local(LocalRel(share(loc.bg * scale, st1), crop, loc.ys, loc.xs), st1 + shift)
    st = _rowwise(torch.mul, x._sec, scale)
    rel = share(x._rel * scale, st)
    return _new(rel, _rowwise(torch.add, st, shift), False, True)


# ---- max pooling ---------------------------------------------------------------------
_MAXPOOL = {
    "max_pool1d": (F.max_pool1d_with_indices, 1), "max_pool2d": (F.max_pool2d_with_indices, 2),
    "max_pool3d": (F.max_pool3d_with_indices, 3),
    "max_pool1d_with_indices": (F.max_pool1d_with_indices, 1),
    "max_pool2d_with_indices": (F.max_pool2d_with_indices, 2),
    "max_pool3d_with_indices": (F.max_pool3d_with_indices, 3),
    "_max_pool1d": (F.max_pool1d_with_indices, 1), "_max_pool2d": (F.max_pool2d_with_indices, 2),
    "_max_pool3d": (F.max_pool3d_with_indices, 3),
    "adaptive_max_pool1d": (F.adaptive_max_pool1d_with_indices, 1),
    "adaptive_max_pool2d": (F.adaptive_max_pool2d_with_indices, 2),
    "adaptive_max_pool3d": (F.adaptive_max_pool3d_with_indices, 3),
    "adaptive_max_pool1d_with_indices": (F.adaptive_max_pool1d_with_indices, 1),
    "adaptive_max_pool2d_with_indices": (F.adaptive_max_pool2d_with_indices, 2),
    "adaptive_max_pool3d_with_indices": (F.adaptive_max_pool3d_with_indices, 3),
}


def _max_pool(func, name, args, kwargs):
    fwi, nd = _MAXPOOL[name]
    kwargs = dict(kwargs)
    x = args[0] if args else kwargs.pop("input")
    args = list(args[1:]) if args else []
    if not _is_cd(x) or _count_cd(args, kwargs):
        raise UnsupportedOperationError("CD: `%s` in %s" % (name, _where()))
    want_idx = bool(kwargs.pop("return_indices", False))
    pos_ri = 2 if name.startswith("adaptive") else 6
    if len(args) >= pos_ri:
        want_idx = want_idx or bool(args[pos_ri - 1])
        args = args[: pos_ri - 1]
    if name.endswith("with_indices"):
        want_idx = True
    if x._loc is not None and not want_idx and nd == 2 and not name.startswith("adaptive") \
            and x._sec.dim() == 4:
        out = _local_max_pool2d(x, args, kwargs)
        if out is not None:
            return out
    # the arg-max of the true activation (in the total form: the model's own choice,
    # computed once for all masks)
    total = x._sec if x._is_tot else x._rel + x._sec
    k = total.shape[0] if x._is_tot and _shared(total) else None
    base = total[:1] if k else total
    out, idx = fwi(base, *args, **kwargs)
    if _STATE.pool_replay is not None:
        idx = _STATE.pool_replay.pop(0)
        sd = idx.dim() - nd
        out = base.flatten(sd).gather(sd, idx.flatten(sd)).view_as(out)
    if _STATE.pool_record is not None:
        _STATE.pool_record.append(idx)
    if k:
        idx = _bcast(idx, k)
        out = _bcast(out, k)
    sd = idx.dim() - nd
    fi = idx.flatten(sd)
    rel = x._rel.flatten(sd).gather(sd, fi).view_as(out)
    if x._is_tot:
        res = _new(rel, out, False, True)
    else:
        res = _new(rel, x._sec.flatten(sd).gather(sd, fi).view_as(out))
    return (res, idx) if want_idx else res


def _pool_params(args, kwargs, names):
    p = dict(zip(names, args))
    p.update({k: v for k, v in kwargs.items() if k in names})
    ks = _local.pair(p["kernel_size"])
    st = p.get("stride")
    st = ks if st is None or (isinstance(st, (list, tuple)) and len(st) == 0) else _local.pair(st)
    return p, ks, st, _local.pair(p.get("padding", 0))


def _local_max_pool2d(x, args, kwargs):
    """max_pool2d of boxes: the model's arg-max (of the total), gathered from each box's
    input window."""
    p, ks, st, pad = _pool_params(args, kwargs, ["kernel_size", "stride", "padding", "dilation", "ceil_mode"])
    dil = _local.pair(p.get("dilation", 1))
    loc = x._loc
    tot1 = x._sec[:1]
    out1, idx1 = F.max_pool2d_with_indices(tot1, ks, st, pad, dil, bool(p.get("ceil_mode", False)))
    win = _local.plan_windows(loc, ks, st, pad, dil, out1.shape[-2:])
    if win is None:
        return None  # dense
    if _STATE.pool_replay is not None:
        idx1 = _STATE.pool_replay.pop(0)
        out1 = tot1.flatten(2).gather(2, idx1.flatten(2)).view_as(out1)
    if _STATE.pool_record is not None:
        _STATE.pool_record.append(idx1)
    bg = loc.bg.flatten(2).gather(2, idx1.flatten(2)).view_as(out1)
    K, C = loc.crop.shape[:2]
    W = tot1.shape[-1]
    P = loc.windows(win.y0s, win.x0s, win.ph, win.pw)
    idx = _local.boxes(idx1, win.ys, win.xs, win.h, win.w)  # flat indices into the H x W map
    oy = torch.tensor(win.y0s, device=idx.device).view(K, 1, 1, 1)
    ox = torch.tensor(win.x0s, device=idx.device).view(K, 1, 1, 1)
    lidx = (torch.div(idx, W, rounding_mode="floor") - oy) * win.pw + (idx % W - ox)
    crop = P.flatten(2).gather(2, lidx.flatten(2)).view(K, C, win.h, win.w)
    return CDTensor.local(LocalRel(bg, crop, win.ys, win.xs), out1)


def _local_avg_pool2d(x, args, kwargs):
    """avg_pool2d of boxes (zero padding counted, as a convolution), or None."""
    p, ks, st, pad = _pool_params(args, kwargs, ["kernel_size", "stride", "padding", "ceil_mode",
                                                 "count_include_pad", "divisor_override"])
    if p.get("ceil_mode", False) or p.get("divisor_override") is not None or \
            (not p.get("count_include_pad", True) and pad != (0, 0)):
        return None
    loc = x._loc
    t1 = F.avg_pool2d(x._sec[:1], ks, st, pad)
    win = _local.plan_windows(loc, ks, st, pad, (1, 1), t1.shape[-2:])
    if win is None:
        return None
    crop = F.avg_pool2d(loc.windows(win.y0s, win.x0s, win.ph, win.pw), ks, st, 0)
    return CDTensor.local(LocalRel(F.avg_pool2d(loc.bg, ks, st, pad), crop, win.ys, win.xs), t1)


_SCALINGS = {"mul", "__mul__", "__rmul__", "multiply", "div", "__truediv__", "true_divide", "divide"}


def _per_channel(c) -> bool:
    """A constant that scales / shifts a (K, C, H, W) map the same at every position and
    for every mask: a number, or a tensor broadcasting as (1, C, 1, 1) at most."""
    if isinstance(c, (int, float)) and not isinstance(c, bool):
        return True
    if not isinstance(c, torch.Tensor) or _is_cd(c) or c.dim() > 4:
        return False
    shape = [1] * (4 - c.dim()) + list(c.shape)
    return shape[0] == 1 and shape[2] == 1 and shape[3] == 1


def _local_scale(f, args):
    """``x * c`` / ``x / c`` / ``c * x`` of a local tensor by a per-channel constant."""
    x, c = (args[0], args[1]) if _is_cd(args[0]) else (args[1], args[0])
    if not _per_channel(c) or (f in (torch.Tensor.div, torch.div) and x is not args[0]):
        return None
    loc = x._loc

    def g(t):
        return f(t, c) if x is args[0] else f(c, t)
    return CDTensor.local(LocalRel(g(loc.bg), g(loc.crop), loc.ys, loc.xs), g(x._sec[:1]))


def _local_sum(parts, coefs):
    """``sum_j coef_j * part_j`` of local decomposed tensors of one shape (union boxes)."""
    locs = [t._loc for t in parts]
    common = _local.common_boxes(locs, parts[0]._sec.shape[-2:])
    if common is None:
        return None
    ys, xs, _, _, crops = common
    crop = bg = tot = None
    for t, lc, cr, c in zip(parts, locs, crops, coefs):
        cr, b_, t1 = (cr, lc.bg, t._sec[:1]) if c == 1 else (c * cr, c * lc.bg, c * t._sec[:1])
        crop = cr if crop is None else crop + cr
        bg = b_ if bg is None else bg + b_
        tot = t1 if tot is None else tot + t1
    return CDTensor.local(LocalRel(bg, crop, ys, xs), tot)


def _local_cat(parts):
    """Channel concatenation of local decomposed tensors (union boxes)."""
    locs = [t._loc for t in parts]
    common = _local.common_boxes(locs, parts[0]._sec.shape[-2:])
    if common is None:
        return None
    ys, xs, _, _, crops = common
    return CDTensor.local(LocalRel(torch.cat([lc.bg for lc in locs], 1), torch.cat(crops, 1), ys, xs),
                          torch.cat([t._sec[:1] for t in parts], 1))


# ---- embedding / lstm ----------------------------------------------------------------
def _embedding(func, name, args, kwargs):
    a = _bind(F.embedding, args, kwargs)
    ids = a["input"]
    if _is_cd(a["weight"]) or not isinstance(ids, TokenCDTensor):
        raise UnsupportedOperationError("CD: `embedding` of a decomposed weight in %s" % _where())
    if a.get("max_norm") is not None:
        raise UnsupportedOperationError(
            "CD: `embedding` with max_norm in %s would renormalise (mutate) the weight" % _where())
    a["input"] = ids._ids
    with torch._C.DisableTorchFunctionSubclass():
        e = F.embedding(**a)
        mask = ids._mask.to(e.dtype)
        m = mask.unsqueeze(-1)
        out = _new(m * e, (1 - m) * e) if _STATE.reference else _new(m * e, e, False, True)
    out._pos = mask  # the share of each position, also where E[x_t] = 0 (padding_idx)
    return out


def _lstm(func, name, args, kwargs):
    from .lstm import cd_lstm

    return cd_lstm(args, kwargs, _where())


def _gru(func, name, args, kwargs):
    from .lstm import cd_gru

    return cd_gru(args, kwargs, _where())


# ---- token ids -----------------------------------------------------------------------
_TOKEN_SHAPE_OPS = {"__getitem__", "view", "reshape", "transpose", "permute", "t", "contiguous",
                    "squeeze", "unsqueeze", "clone", "detach", "to", "long", "int", "flatten",
                    "get:T", "narrow", "select", "expand", "repeat", "flip", "cpu", "cuda"}


def _token_dispatch(func, name, args, kwargs):
    if name == "embedding":
        return _embedding(func, name, args, kwargs)
    if name in _TOKEN_SHAPE_OPS and isinstance(args[0], TokenCDTensor):
        t = args[0]
        rest = list(args[1:])
        with torch._C.DisableTorchFunctionSubclass():
            ids = func(t._ids, *rest, **kwargs)
            if name in ("to", "long", "int"):
                mask = t._mask
            else:
                mask = func(t._mask, *rest, **kwargs)
        return TokenCDTensor(ids, mask)
    raise UnsupportedOperationError(
        "CD: `%s` on token ids carrying a CD mask in %s; only shape/indexing operations and "
        "`embedding` are supported on token inputs." % (name, _where()))


# --------------------------------------------------------------------------------------
_HANDLERS: Dict[str, Callable] = {}

for _n in [
    "mul", "__mul__", "__rmul__", "mul_", "__imul__", "multiply",
    "matmul", "__matmul__", "__rmatmul__", "mm", "bmm",
    "neg", "__neg__", "negative", "__pos__", "positive",
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "permute", "transpose",
    "transpose_", "swapaxes", "swapdims", "movedim", "moveaxis", "t", "t_", "contiguous",
    "squeeze", "squeeze_", "unsqueeze", "unsqueeze_", "__getitem__", "expand", "expand_as",
    "repeat", "tile", "flip", "fliplr", "flipud", "roll", "narrow", "select", "chunk", "split",
    "unbind", "tensor_split", "split_with_sizes", "clone", "detach", "to", "float", "double",
    "half", "bfloat16", "type_as", "cpu", "cuda", "diagonal", "get:T", "get:mT", "get:data",
    "mean", "sum", "nansum", "cumsum", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "interpolate",
    "upsample", "upsample_nearest", "upsample_bilinear", "pixel_shuffle", "pixel_unshuffle",
    "channel_shuffle", "native_channel_shuffle", "trace", "index_select", "gather", "take_along_dim",
]:
    _HANDLERS[_n] = _unary_linear
for _n in ["div", "__truediv__", "div_", "__itruediv__", "true_divide", "divide", "__rtruediv__", "__rdiv__"]:
    _HANDLERS[_n] = _div
for _n in ["dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout"]:
    _HANDLERS[_n] = _identity
for _n in _ADD_NAMES | _SUB_NAMES | _RSUB_NAMES:
    _HANDLERS[_n] = _add_sub
for _n in ["cat", "concat", "concatenate", "stack", "hstack", "vstack", "dstack"]:
    _HANDLERS[_n] = _joint_linear
for _n in ["relu", "relu_", "relu6", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_",
           "clamp", "clamp_", "clamp_min", "clamp_min_", "clamp_max", "clamp_max_", "clip", "clip_",
           "threshold", "threshold_", "_threshold", "rrelu", "rrelu_"]:
    _HANDLERS[_n] = _activation
for _n in _CONV_NAMES:
    _HANDLERS[_n] = _affine
_HANDLERS["batch_norm"] = _batch_norm
for _n in _MAXPOOL:
    _HANDLERS[_n] = _max_pool
_HANDLERS["pad"] = _pad


def _new_tensor(func, name, args, kwargs):
    """``t.new_tensor(data)``: a copy of ``data`` (a constant unless ``data`` is decomposed)."""
    data = args[1] if len(args) > 1 else kwargs.get("data")
    if not _is_cd(data):
        return _run_plain(func, args, kwargs)
    if set(kwargs) - {"data", "dtype", "device", "requires_grad"}:
        raise UnsupportedOperationError("CD: `new_tensor` with %s in %s" % (sorted(kwargs), _where()))
    return _new(data._rel.clone(), data._sec.clone(), False, data._is_tot)


_HANDLERS["new_tensor"] = _new_tensor
_HANDLERS["embedding"] = _embedding
_HANDLERS["lstm"] = _lstm


def _packed(func, name, args, kwargs):
    raise UnsupportedOperationError(
        "CD: packed sequences (`nn.utils.rnn.pack_padded_sequence`) in %s are not supported; "
        "CD decomposes one input at a time, so run the recurrent layer on the unpacked "
        "sequence (e.g. the input trimmed to its length)." % _where())


_HANDLERS["_pack_padded_sequence"] = _packed
_HANDLERS["pack_padded_sequence"] = _packed
_HANDLERS["gru"] = _gru


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
    if isinstance(out, torch.Tensor):
        return torch.zeros_like(out), out
    raise TypeError("CD: the model returned %r, expected a tensor" % type(out))
