"""CD of token inputs: token ids carrying a mask over positions, and ``embedding``.

The decomposition of a text model starts at the embedding: ``rel = m_t * E[x_t]``,
``irr = (1 - m_t) * E[x_t]`` for the mask ``m`` over token positions (the reference
``cd_text``'s ``[t in phrase]``).  The mask value of each position is kept on the
embedding's output (``_pos``) for the recurrent layers' ``bias x bias`` term.

A constant added to the embedding output (position and segment embeddings of a
transformer, ``embed(ids) + pos[:T]``) belongs to the token at its position:
``rel' = rel + m_t * c_t``, ``irr' = irr + (1 - m_t) * c_t``.  This is CD-T's
decomposition (Hsu et al., ICLR 2025: the whole embedding vector of a position -- token,
position and segment embeddings -- is relevant when the position is in the mask), and it
keeps a full mask entirely relevant (``rel = logits``), as the reference's ``bias x bias``
convention does for the LSTM.  Any other constant goes to ``irr``.

Token ids can be read (comparisons such as ``ids != pad``, ``cumsum`` for position ids,
``pad in ids``): those results are constants.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .tensor import (
    _RSUB_NAMES,
    _STATE,
    _SUB_NAMES,
    _TOKEN_CONSTANT,
    TokenCDTensor,
    UnsupportedOperationError,
    _bcast,
    _bind,
    _is_cd,
    _new,
    _where,
    register,
)

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


#: functions that only read token ids (padding checks, attention masks ``ids != pad``,
#: position ids ``cumsum``): computed on the plain ids, their results are constants
_TOKEN_READS = {
    "__contains__", "__bool__", "item", "tolist", "eq", "ne", "lt", "le", "gt", "ge", "__eq__", "__ne__",
    "__lt__", "__le__", "__gt__", "__ge__", "equal", "isin", "sum", "cumsum", "any", "all", "max", "min",
    "amax", "amin", "argmax", "argmin", "unique", "nonzero", "count_nonzero", "bincount",
}


@register(*_TOKEN_READS, tokens=True)
def token_read(func, name, args, kwargs):
    """Comparisons and reductions of token ids: values of the ids, not decomposed."""
    def plain(v):
        if isinstance(v, TokenCDTensor):
            return v._ids
        if isinstance(v, (list, tuple)):
            return type(v)(plain(a) for a in v)
        return v
    with torch._C.DisableTorchFunctionSubclass():
        return func(*plain(list(args)), **{k: plain(v) for k, v in kwargs.items()})


def add_token_constant(func, name, args, kwargs, add):
    """``embedding + c`` (or ``c + embedding``, ``-``): the constant's entries go to the
    part of the token at their position (see the module docstring); ``add`` is the
    ordinary sum rule."""
    x_first = _is_cd(args[0])
    x, c = (args[0], args[1]) if x_first else (args[1], args[0])
    pos = x._pos
    out = add(func, name, args, kwargs)
    alpha = kwargs.get("alpha", 1)
    if name in _RSUB_NAMES:
        term = c  # c - alpha * x
    elif name in _SUB_NAMES:
        term = -alpha * c if x_first else c
    else:
        term = alpha * c if x_first else c
    if not _is_cd(out) or tuple(pos.shape) != tuple(x.shape[:-1]):
        return out
    with torch._C.DisableTorchFunctionSubclass():
        share = pos.to(out._rel.dtype).unsqueeze(-1) * torch.as_tensor(term, dtype=out._rel.dtype,
                                                                         device=out._rel.device)
        rel = out._rel + share
        if out._is_tot:
            out._relv = rel
        else:
            out._relv, out._sec = rel, out._sec - share
    out._loc = None
    out._pos = pos
    return out


_TOKEN_CONSTANT.append(add_token_constant)
