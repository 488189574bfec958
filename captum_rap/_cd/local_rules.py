"""Local form: the CD rules of image layers computed inside boxes (see :mod:`.local`).

Each function takes a decomposed tensor in the local form and returns the result in the
local form, or None when the boxes would cover too much of the output map (the caller
then materializes the dense relevant part and applies the rule of the total form).
The numbers are those of the dense computation up to rounding (tested against it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import local as _local
from .local import LocalRel
from .tensor import _STATE, CDTensor, _is_cd, _rel_share

def local_conv2d(func, x, weight, bias, rest, kwargs):
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


def _pool_params(args, kwargs, names):
    p = dict(zip(names, args))
    p.update({k: v for k, v in kwargs.items() if k in names})
    ks = _local.pair(p["kernel_size"])
    st = p.get("stride")
    st = ks if st is None or (isinstance(st, (list, tuple)) and len(st) == 0) else _local.pair(st)
    return p, ks, st, _local.pair(p.get("padding", 0))


def local_max_pool2d(x, args, kwargs):
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


def local_avg_pool2d(x, args, kwargs):
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


def local_batch_norm(x, scale, shift, share):
    """Eval batch norm ``scale * x + shift`` of boxes; ``share(r, st, shift)`` is the
    shift split of the total form."""
    loc = x._loc
    st1 = x._sec[:1] * scale
    h, w_ = loc.box
    crop = share(loc.crop * scale, _local.boxes(st1, loc.ys, loc.xs, h, w_), shift)
    return CDTensor.local(LocalRel(share(loc.bg * scale, st1, shift), crop, loc.ys, loc.xs), st1 + shift)


def local_elementwise(x, fn):
    """An element-wise activation ``rel' = f(rel)`` (boxes and background), ``tot' = f(tot)``."""
    loc = x._loc
    return CDTensor.local(LocalRel(fn(loc.bg), fn(loc.crop), loc.ys, loc.xs), fn(x._sec[:1]))
