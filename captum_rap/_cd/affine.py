"""CD rules of affine layers: conv (1-3 d, transposed), linear, batch norm (eval).

``W x + b``: the linear parts ``r = W rel`` and ``i = W irr`` and the bias split between
them elementwise, proportionally to the absolute linear contributions (the reference
``acd`` rule, ``propagate_conv_linear``):

    rel' = r + (|r| + 1e-20) / (|r| + |i| + 2e-20) * b,   irr' = i + (the rest of b)

Batch norm (eval) is the affine map ``y = a x + c`` with ``a = w / sqrt(var + eps)`` and
``c = bias - mean * a``; its shift is split with ``|r| / (|r| + |i|)`` and ``0/0`` giving
the whole shift to ``irr`` (``propagate_batchnorm2d``).

Forms: total (``W tot`` once on one row of the shared total, ``W rel`` for every mask),
two-part (:mod:`.reference`), local boxes (:mod:`.local_rules`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .local_rules import local_batch_norm, local_conv2d
from .reference import affine_two_part, batch_norm_two_part
from .tensor import (
    UnsupportedOperationError,
    _bind,
    _count_cd,
    _is_cd,
    _new,
    _rel_share,
    _rowwise,
    _where,
    register,
)

CONV_NAMES = ("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "linear")


@register(*CONV_NAMES)
def affine(func, name, args, kwargs):
    """conv* / linear: bias split proportionally to ``|W rel|`` and ``|W irr|``."""
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
    if not x._is_tot:
        return affine_two_part(func, name, x, weight, bias, rest, kwargs)
    if x._loc is not None and name == "conv2d" and x._sec.dim() == 4:
        out = local_conv2d(func, x, weight, bias, rest, kwargs)
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


def shift_share(r, st, shift):
    """``r + |r| / (|r| + |st - r|) * shift`` (batch norm's shift split; ``0/0``: the
    whole shift to ``irr``)."""
    ar = r.abs()
    pr = torch.nan_to_num_(ar / (st - r).abs_().add_(ar), nan=0.0)
    return pr.mul_(shift).add_(r)


@register("batch_norm")
def batch_norm(func, name, args, kwargs):
    """Eval-mode batch norm: an affine map whose shift is split ``|r| / (|r| + |i|)``."""
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
    if not x._is_tot:
        return batch_norm_two_part(x, rm, rv, w, b, eps)
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
    if x._loc is not None and nd == 4:
        return local_batch_norm(x, scale, shift, shift_share)
    st = _rowwise(torch.mul, x._sec, scale)
    rel = shift_share(x._rel * scale, st, shift)
    return _new(rel, _rowwise(torch.add, st, shift), False, True)
