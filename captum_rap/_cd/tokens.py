"""CD of token inputs: token ids carrying a mask over positions, and ``embedding``.

The decomposition of a text model starts at the embedding: ``rel = m_t * E[x_t]``,
``irr = (1 - m_t) * E[x_t]`` for the mask ``m`` over token positions (the reference
``cd_text``'s ``[t in phrase]``).  The mask value of each position is kept on the
embedding's output (``_pos``) for the recurrent layers' ``bias x bias`` term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .tensor import _STATE, TokenCDTensor, UnsupportedOperationError, _bcast, _bind, _is_cd, _new, _where, register

@register("embedding", tokens=True)
def embedding(func, name, args, kwargs):
    """``E[ids]`` with ``rel = m_t * E[x_t]``, ``irr = (1 - m_t) * E[x_t]`` (total: ``E[x_t]``,
    computed on one row when the rows of ids along dim 0 are the same sequence)."""
    a = _bind(F.embedding, args, kwargs)
    ids = a["input"]
    if _is_cd(a["weight"]) or not isinstance(ids, TokenCDTensor):
        raise UnsupportedOperationError("CD: `embedding` of a decomposed weight in %s" % _where())
    if a.get("max_norm") is not None:
        raise UnsupportedOperationError(
            "CD: `embedding` with max_norm in %s would renormalise (mutate) the weight" % _where())
    ids_t = ids._ids
    with torch._C.DisableTorchFunctionSubclass():
        one = ids_t.dim() > 1 and ids_t.shape[0] > 1 and not _STATE.reference \
            and torch.equal(ids_t, ids_t[:1].expand_as(ids_t))
        a["input"] = ids_t[:1] if one else ids_t
        e = F.embedding(**a)
        if one:  # the total, shared along dim 0 (see ``_rowwise``)
            e = _bcast(e, ids_t.shape[0])
        mask = ids._mask.to(e.dtype)
        m = mask.unsqueeze(-1)
        out = _new(m * e, (1 - m) * e) if _STATE.reference else _new(m * e, e, False, True)
    out._pos = mask  # the share of each position, also where E[x_t] = 0 (padding_idx)
    return out


# ---- token ids -----------------------------------------------------------------------
_TOKEN_SHAPE_OPS = {"__getitem__", "view", "reshape", "transpose", "permute", "t", "contiguous",
                    "squeeze", "unsqueeze", "clone", "detach", "to", "long", "int", "flatten",
                    "get:T", "narrow", "select", "expand", "repeat", "flip", "cpu", "cuda"}


@register(*_TOKEN_SHAPE_OPS, tokens=True)
def token_shape(func, name, args, kwargs):
    """Shape / indexing operations on token ids apply to the ids and the mask alike."""
    if not isinstance(args[0], TokenCDTensor):
        raise UnsupportedOperationError(
            "CD: `%s` with token ids carrying a CD mask as a non-first argument in %s" % (name, _where()))
    t = args[0]
    rest = list(args[1:])
    with torch._C.DisableTorchFunctionSubclass():
        ids = func(t._ids, *rest, **kwargs)
        if name in ("to", "long", "int"):
            mask = t._mask
        else:
            mask = func(t._mask, *rest, **kwargs)
    return TokenCDTensor(ids, mask)
