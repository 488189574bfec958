"""CD rules of normalisations whose statistics come from the activation itself.

``layer_norm``, ``group_norm``, ``instance_norm`` (input statistics), ``rms_norm`` and
``normalize`` divide by (and layer / group / instance norm centre with) statistics of the
activation.  The statistics are taken from the **total** activation (the model's own, for
the unmasked input) and held as constants, as CD-T does for layer norm (Hsu et al., ICLR
2025, ``prop_layer_norm``); what remains is affine in the activation:

    y = (x - mean(x)) * s * w + b,    s = 1 / sqrt(var(tot) + eps)

* centering is linear and applied to each part (``rel - mean(rel)``, ``irr - mean(irr)``;
  the means sum to the total's), and so are the scale ``s`` and the weight ``w``;
* the bias ``b`` is split as the bias of a linear layer (:mod:`.affine`):
  ``rel' = r + (|r| + 1e-20) / (|r| + |i| + 2e-20) * b`` with ``r``, ``i`` the normalised
  parts.  (CD-T splits it by the magnitudes of the parts *before* the normalisation; the
  linear-layer rule keeps one bias rule for every layer of the model.)

``rms_norm`` (``x / sqrt(mean(x^2) + eps) * w``) and ``normalize`` (``x / max(||x||_p,
eps)``) have no centering and no bias: both parts are scaled.  ``instance_norm`` with
running statistics (``track_running_stats=True`` in eval mode) is a batch norm (see
:mod:`.affine`).  ``rel' + irr'`` is the model's own output exactly (``irr' = tot' - rel'``).
The statistics mix positions, so a local (boxed) relevant part is materialized first.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .tensor import (
    UnsupportedOperationError,
    _bind,
    _is_cd,
    _new,
    _rel_share,
    _rowwise,
    _shared,
    _where,
    register,
)


def _row(t: torch.Tensor) -> torch.Tensor:
    """One row of a shared total (statistics computed once), else the tensor itself."""
    return t[:1] if _shared(t) else t


def _finish(x, rel_lin, tot_lin, bias, bias_shape=None):
    """The decomposed output from the normalised relevant part ``rel_lin`` and the
    normalised total ``tot_lin`` (both without the bias): the bias split as in a linear
    layer; ``irr`` as the rest of the model's own output."""
    if bias is not None:
        b = bias.view(bias_shape) if bias_shape is not None else bias
        b = b.to(rel_lin.dtype)
        rel = _rel_share(rel_lin, tot_lin - rel_lin, b)
        tot = _rowwise(torch.add, tot_lin, b) if _shared(tot_lin) else tot_lin + b
    else:
        rel, tot = rel_lin, tot_lin
    if x._is_tot:
        return _new(rel, tot, False, True)
    return _new(rel, tot - rel)


def _check(x, name, *consts):
    if not _is_cd(x) or any(_is_cd(c) for c in consts):
        raise UnsupportedOperationError(
            "CD: `%s` in %s with decomposed weights or statistics is not supported" % (name, _where()))


def _centred_scaled(part: torch.Tensor, dims: Sequence[int], s: torch.Tensor) -> torch.Tensor:
    return (part - part.mean(dim=tuple(dims), keepdim=True)).mul_(s)


@register("layer_norm")
def layer_norm(func, name, args, kwargs):
    """Layer norm: statistics of the total as constants, centering and weight applied to
    each part, bias split as in a linear layer."""
    a = _bind(F.layer_norm, args, kwargs)
    x, shape, w, b, eps = a["input"], a["normalized_shape"], a["weight"], a["bias"], a["eps"]
    _check(x, name, w, b)
    tot = x.tot if not x._is_tot else x._sec
    dims = tuple(range(tot.dim() - len(tuple(shape)), tot.dim()))
    t1 = _row(tot)
    var = t1.var(dim=dims, unbiased=False, keepdim=True)
    s = torch.rsqrt(var + eps)
    rel = _centred_scaled(x._rel, dims, s)
    tot_lin = _rowwise(F.layer_norm, tot, shape, w, None, eps)
    if w is not None:
        rel = rel.mul_(w)
    return _finish(x, rel, tot_lin, b)


@register("group_norm")
def group_norm(func, name, args, kwargs):
    """Group norm (``(N, C, *)``, statistics per sample and group of channels)."""
    a = _bind(F.group_norm, args, kwargs)
    x, G, w, b, eps = a["input"], int(a["num_groups"]), a["weight"], a["bias"], a["eps"]
    _check(x, name, w, b)
    tot = x.tot if not x._is_tot else x._sec
    return _grouped(x, tot, G, w, b, eps, lambda t: F.group_norm(t, G, w, None, eps))


def _grouped(x, tot, G, w, b, eps, norm_fn):
    """Normalisation over groups of channels of ``(N, C, *)`` maps (group / instance norm)."""
    C = tot.shape[1]
    cshape = [1, C] + [1] * (tot.dim() - 2)
    t1 = _row(tot)
    g1 = t1.reshape(t1.shape[0], G, -1)
    s = torch.rsqrt(g1.var(dim=2, unbiased=False, keepdim=True) + eps)
    r = x._rel
    rel = _centred_scaled(r.reshape(r.shape[0], G, -1), (2,), s).reshape(r.shape)
    if w is not None:
        rel = rel.mul_(w.view(cshape))
    tot_lin = _rowwise(norm_fn, tot)
    return _finish(x, rel, tot_lin, b, cshape)


@register("instance_norm")
def instance_norm(func, name, args, kwargs):
    """Instance norm: input statistics as group norm with one channel per group; with
    running statistics (eval, ``track_running_stats=True``) a batch norm."""
    a = _bind(F.instance_norm, args, kwargs)
    x, rm, rv, w, b = a["input"], a["running_mean"], a["running_var"], a["weight"], a["bias"]
    _check(x, name, rm, rv, w, b)
    eps = a["eps"]
    if not a["use_input_stats"]:
        if rm is None:
            raise UnsupportedOperationError("CD: `instance_norm` in %s without statistics" % _where())
        return F.batch_norm(x, rm, rv, w, b, False, 0.0, eps)
    if rm is not None:
        raise UnsupportedOperationError(
            "CD: `instance_norm` in %s runs in training mode with running statistics (they would be "
            "updated). Put the model in eval mode (`model.eval()`) before calling CD." % _where())
    tot = x.tot if not x._is_tot else x._sec
    C = tot.shape[1]
    return _grouped(x, tot, C, w, b, eps, lambda t: F.instance_norm(t, None, None, w, None, True, 0.0, eps))


@register("rms_norm")
def rms_norm(func, name, args, kwargs):
    """RMS norm ``x / sqrt(mean(x^2) + eps) * w``: both parts scaled by the total's factor."""
    a = _bind(F.rms_norm, args, kwargs)
    x, shape, w, eps = a["input"], a["normalized_shape"], a["weight"], a["eps"]
    _check(x, name, w)
    tot = x.tot if not x._is_tot else x._sec
    if eps is None:
        eps = torch.finfo(tot.dtype).eps
    dims = tuple(range(tot.dim() - len(tuple(shape)), tot.dim()))
    t1 = _row(tot)
    s = torch.rsqrt(t1.pow(2).mean(dim=dims, keepdim=True) + eps)
    rel = x._rel * s
    if w is not None:
        rel = rel * w
    return _finish(x, rel, _rowwise(F.rms_norm, tot, shape, w, eps), None)


@register("normalize")
def normalize(func, name, args, kwargs):
    """``F.normalize``: ``x / max(||x||_p, eps)`` with the norm of the total as a constant."""
    a = _bind(F.normalize, args, kwargs)
    x, p, dim, eps = a["input"], a["p"], a["dim"], a["eps"]
    _check(x, name)
    if a.get("out") is not None:
        raise UnsupportedOperationError("CD: `normalize` with out= in %s" % _where())
    tot = x.tot if not x._is_tot else x._sec
    t1 = _row(tot)
    den = t1.norm(p, dim, keepdim=True).clamp_min(eps)
    return _finish(x, x._rel / den, _rowwise(F.normalize, tot, p, dim, eps), None)
