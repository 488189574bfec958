"""Two-part form (``reference`` mode): the arithmetic of the reference ``acd`` package.

``rel`` and ``irr`` are carried separately and the affine layers compute their linear
parts as ``M(x) - M(0)`` (``M(0)`` being the bias map), as ``propagate_conv_linear`` /
``propagate_batchnorm2d`` do (see ``/work/shared/reference/CD_ACD.md`` section 2.2):

* conv / linear: ``r = M(rel) - M(0)``, ``i = M(irr) - M(0)``, bias split
  ``(|r| + 1e-20) / (|r| + |i| + 2e-20)``;
* batch norm (eval): ``r``, ``i`` likewise, shift split ``|r| / (|r| + |i|)`` with
  ``0/0 -> 0`` (the whole shift to ``irr``), ``irr`` as the residual ``M(rel + irr) - rel'``.

The rules of operations the reference does not have (normalisations, smooth
activations, attention) use the rule of the total form on the two parts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .tensor import _STATE, _new, _split_bias


def affine_two_part(func, name, x, weight, bias, rest, kwargs):
    """conv* / linear of a two-part decomposed ``x``."""
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


def batch_norm_two_part(x, rm, rv, w, b, eps):
    """Eval-mode batch norm of a two-part decomposed ``x``."""
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
