"""Input normalisation inside the model, folded into the input layer.

A model that normalises its input itself (``(x - mean) / std`` before the first conv,
``nn.Sequential(Normalize, net)``, torchvision's ``inception_v3(transform_input=True)``)
would otherwise have its first layer read a normalised tensor: the input-layer rules
(z^B and its bounds, flat, w²) would act in the wrong space and the constants would take
a share of the relevance at the subtraction (a pixel near the mean got a relevance of
-6026 for a logit of 0.125).

The engine follows such transforms instead: a tensor ``t = src * scale + shift``, where
``src`` is a selection of the model input and ``scale`` / ``shift`` are constants, keeps
``(src, scale, shift)`` in its tag (kind ``KIND_AFFINE``) through further constant
additions, multiplications, divisions and selections (reshapes, slicing, concatenation).
A convolution or linear layer that reads it is applied to ``src`` instead, with the scale
folded into its weight (``W' = W · scale``, one value per input channel or feature) and the
shift into a bias map (``W ⊛ shift + b``, exact also at zero-padded borders): it is the
input layer, in the raw input space.  Where the scale varies over positions it cannot be
folded into the weight; the layer then reads the normalised tensor, with a warning.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .affine import AffineOp
from .records import KIND_AFFINE, KIND_INPUT, TAG, batch_of, set_tag, tag_of

if TYPE_CHECKING:  # pragma: no cover
    from .mode import PropagationMode

__all__ = ["affine_of", "after_constant_op", "after_selection", "fold"]

Affine = Tuple[Tensor, Tensor, Tensor]  # (src, scale, shift)

_ADD = {"add", "__add__", "__radd__", "__iadd__", "add_"}
_SUB = {"sub", "__sub__", "__isub__", "sub_", "subtract"}
_RSUB = {"__rsub__", "rsub"}
_NEG = {"neg", "__neg__", "negative", "neg_"}
_MUL = {"mul", "__mul__", "__rmul__", "__imul__", "mul_", "multiply"}
_DIV = {"div", "__truediv__", "__itruediv__", "div_", "__div__", "divide", "true_divide"}


def affine_of(mode: "PropagationMode", t: Any) -> Optional[Affine]:
    """``(src, scale, shift)`` with ``t == src * scale + shift`` for a selection of the model
    input (scale 1, shift 0) or a constant affine transform of one; ``None`` otherwise."""
    kind = tag_of(t, mode.token)
    if kind == KIND_INPUT:
        one = torch.ones((), dtype=t.dtype, device=t.device)
        return t, one, torch.zeros_like(one)
    if kind == KIND_AFFINE:
        src, scale, shift, version = getattr(t, TAG)[2]
        return (src, scale, shift) if src._version == version else None
    return None


def _is_const(mode: "PropagationMode", c: Any) -> bool:
    if isinstance(c, (int, float)) and not isinstance(c, bool):
        return True
    return isinstance(c, Tensor) and c.is_floating_point() and not tag_of(c, mode.token)


def _tag(mode: "PropagationMode", out: Tensor, src: Tensor, scale: Tensor, shift: Tensor) -> None:
    # the source's version: an in-place change of it afterwards makes the form stale
    set_tag(out, mode.state, KIND_AFFINE, (src, scale, shift, src._version),
            batch=batch_of(out, mode.token) or (0, 1))


def _operands(args: Sequence[Any], kwargs: Dict[str, Any]) -> Tuple[Any, Any]:
    a = args[0] if args else kwargs.get("input", kwargs.get("self"))
    b = args[1] if len(args) > 1 else kwargs.get("other")
    return a, b


def operand_forms(mode: "PropagationMode", args: Sequence[Any], kwargs: Dict[str, Any], inplace: bool):
    """The affine forms of the two operands, read before the operation (an in-place one
    re-tags its output, which is its first operand, and overwrites its values: a source
    that is the operand itself is copied first)."""
    a, b = _operands(args, kwargs)
    fa = affine_of(mode, a)
    if inplace and fa is not None and fa[0] is a:
        with mode:
            fa = (a.clone(),) + fa[1:]
    return fa, affine_of(mode, b) if isinstance(b, Tensor) else None


def after_constant_op(mode: "PropagationMode", name: str, args: Sequence[Any], kwargs: Dict[str, Any],
                      out: Any, forms) -> None:
    """Tag ``out`` of ``t ± c``, ``c - t``, ``-t``, ``t * c``, ``t / c`` (``t`` an input
    selection or affine transform of one, ``c`` a constant) with its affine form; ``forms``:
    :func:`operand_forms` of the arguments."""
    if not isinstance(out, Tensor) or not out.is_floating_point():
        return
    a, b = _operands(args, kwargs)
    alpha = kwargs.get("alpha", 1)
    fa, fb = forms
    with mode.constants():
        if name in _NEG and fa is not None:
            src, s, sh = fa
            return _tag(mode, out, src, -s, -sh)
        if fa is not None and fb is None and _is_const(mode, b):
            src, s, sh = fa
            if name in _ADD:
                return _tag(mode, out, src, s, sh + alpha * b)
            if name in _SUB:
                return _tag(mode, out, src, s, sh - alpha * b)
            if name in _RSUB:  # b - alpha * t
                return _tag(mode, out, src, -alpha * s, b - alpha * sh)
            if name in _MUL:
                return _tag(mode, out, src, s * b, sh * b)
            if name in _DIV and kwargs.get("rounding_mode") is None:
                return _tag(mode, out, src, s / b, sh / b)
        if fb is not None and fa is None and _is_const(mode, a):
            src, s, sh = fb
            if name in _ADD:  # a + alpha * t
                return _tag(mode, out, src, alpha * s, a + alpha * sh)
            if name in _SUB:  # a - alpha * t
                return _tag(mode, out, src, -alpha * s, a - alpha * sh)
            if name in _MUL:
                return _tag(mode, out, src, s * a, sh * a)


def after_selection(mode: "PropagationMode", func: Any, args: Sequence[Any], kwargs: Dict[str, Any],
                    out: Any) -> None:
    """A selection (reshape, slicing, padding, concatenation) of affine transforms of the
    input is one: apply it to the sources, scales and shifts."""
    if not isinstance(out, Tensor) or not out.is_floating_point():
        return
    found: List[Tuple[Tensor, Affine]] = []
    consts = False

    def scan(a):
        nonlocal consts
        if isinstance(a, Tensor):
            f = affine_of(mode, a)
            if f is not None:
                found.append((a, f))
            elif a.is_floating_point() and a.dim() > 0:
                consts = True
        elif isinstance(a, (list, tuple)):
            for x in a:
                scan(x)

    scan((args, kwargs))
    if consts or not found or all(tag_of(t, mode.token) == KIND_INPUT for t, _ in found):
        return  # a constant piece has no source; plain input selections stay input

    def swap(a, part: int):
        if isinstance(a, Tensor):
            for t, f in found:
                if a is t:
                    return f[part] if part == 0 else f[part].expand(t.shape)
            return a
        if isinstance(a, (list, tuple)):
            return type(a)(swap(x, part) for x in a)
        return a

    try:
        with mode:  # the source: a selection of the input, tracked by the function mode
            src = func(*swap(args, 0), **{k: swap(v, 0) for k, v in kwargs.items()})
        with mode.constants():
            scale = func(*swap(args, 1), **{k: swap(v, 1) for k, v in kwargs.items()})
            shift = func(*swap(args, 2), **{k: swap(v, 2) for k, v in kwargs.items()})
    except (RuntimeError, TypeError, ValueError):  # e.g. an op that needs a contiguous input
        return
    if all(isinstance(v, Tensor) and v.shape == out.shape for v in (src, scale, shift)):
        _tag(mode, out, src, scale, shift)


def fold(mode: "PropagationMode", x: Tensor, op: AffineOp, where: str) -> Optional[Tuple[Tensor, AffineOp]]:
    """``(src, op')`` with ``op'(src) == op(x)`` and the input transform folded into
    ``op'`` (see the module docstring); ``None`` if ``x`` is not an affine transform of the
    input or its scale varies over positions (warned)."""
    form = affine_of(mode, x) if tag_of(x, mode.token) == KIND_AFFINE and not op.is_elementwise else None
    if form is None:
        return None
    src, scale, shift = form
    with mode.constants():
        s = scale.expand(x.shape)
        if op.kind == "linear":
            per = s.reshape(-1, x.shape[-1])
            vec = per[0]
        else:
            per = s.movedim(1, -1).reshape(-1, x.shape[1])
            vec = per[0]
        if not bool((per == vec).all()):
            warnings.warn(f"{mode.p.method_name}: the input transform before {where} varies over positions "
                          "and cannot be folded into the layer; its rules act on the transformed input",
                          RuntimeWarning, stacklevel=2)
            return None
        w = op.weight
        if op.kind == "linear":
            w2 = w * vec
        else:
            groups = int(op.conv_kwargs.get("groups", 1))
            cout, cin_g = w.shape[:2]
            w2 = (w.reshape((groups, cout // groups, cin_g) + tuple(w.shape[2:]))
                  * vec.reshape((groups, 1, cin_g) + (1,) * (w.dim() - 2))).reshape(w.shape)
        sh = shift.expand(x.shape)
        if bool((sh == sh[:1]).all()):
            sh = sh[:1]  # the same for every example
        bias_map = op.forward(sh, w, None)
        if op.bias is not None:
            bias_map = bias_map + op.bias_like(op.bias, bias_map)
        if not bool(bias_map.any()):
            bias_map = None
        folded = AffineOp(op.kind, w2, bias_map, **op.conv_kwargs)
        folded.pre_pad = op.pre_pad
    return src, folded
