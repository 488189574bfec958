"""CD rules of products of decomposed tensors and of attention.

**Products** of two decomposed tensors ``a * b`` (``mul``, ``matmul``, ``bmm``,
``einsum``: squeeze-and-excitation gates, GLU, ``q k^T``): the convention of the
reference LSTM for its gate products (``cd_text``: ``c^rel = i_rel g_rel + ...``, every
term with an irrelevant factor to ``irr``), with the biases already split into the parts
by the affine layers:

    rel' = a_rel * b_rel,    irr' = a * b - a_rel * b_rel

so a full mask keeps ``irr = 0`` and an empty mask gives ``rel = 0``.  A product with a
constant is linear in the decomposed factor (:mod:`.linear`).

**Softmax attention** follows CD-T (Hsu et al., "Efficient automated circuit discovery in
transformers using contextual decomposition", ICLR 2025; code: ``adelaidehsu/CD_Circuit``,
``prop_self_attention`` / ``get_attention_probs``): the attention probabilities are
computed from the **total** queries and keys (the model's own attention pattern for the
unmasked input) and held as constants, so the attention output is linear in the values:

    P = softmax(q_tot k_tot^T * scale + mask),   out_rel = P v_rel,   out_irr = P v_irr

(CD-T also has a variant that takes ``softmax(q_rel k_rel^T)`` as the relevant pattern;
its BERT classifier uses the total pattern, which keeps ``rel + irr`` exact and makes
attention the CD analogue of a linear layer with input-dependent weights.)  So:

* ``softmax`` of a decomposed tensor returns :class:`~.tensor.AttentionWeights`, the
  softmax of the total as a constant; multiplying a decomposed tensor by them
  (``matmul`` / ``mul`` / ``bmm`` / ``einsum``) is linear in it; shape operations,
  dropout (eval), dtype moves, ``masked_fill``, reductions and scalings by constants
  keep them attention weights; any other use -- adding them to something, returning
  them as the model's output -- raises :class:`UnsupportedOperationError` (CD would have
  no relevant part to give them);
* ``scaled_dot_product_attention`` is decomposed as above (attention mask, causal mask,
  scale, grouped-query heads), and ``multi_head_attention_forward`` (what
  ``nn.MultiheadAttention`` calls: in-projection, ``bias_k`` / ``bias_v``,
  ``add_zero_attn``, key-padding and attention masks, out-projection) is computed with
  the rules of its parts: affine in-/out-projections (bias split), the attention above.

In the total form the attention pattern is computed once (on one row of the shared
total) for all masks.  Attention mixes every position, so a local (boxed) relevant part
is materialized first.  Dropout inside attention is the identity (eval mode expected).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .linear import _unary_linear
from .tensor import (
    _DTYPE_CONVERSIONS,
    _STATE,
    _WEIGHTS_HANDLER,
    AttentionWeights,
    UnsupportedOperationError,
    _bcast,
    _bind,
    _inplace_name,
    _is_cd,
    _iter_args,
    _new,
    _oop_func,
    _run_plain,
    _set_inplace,
    _shared,
    _where,
    register,
)

PRODUCTS = ["mul", "__mul__", "__rmul__", "mul_", "__imul__", "multiply",
            "matmul", "__matmul__", "__rmatmul__", "mm", "bmm"]


def _tot(v):
    """The total of a decomposed tensor, a constant as it is."""
    return (v._sec if v._is_tot else v.tot) if _is_cd(v) else v


def _one_row(*ts) -> bool:
    """True when every tensor is shared along dim 0 (stride 0) with the same number of
    rows, or has one row, and at least one is shared: then a batch-wise function of
    them can be computed on one row."""
    k = None
    for t in ts:
        if not isinstance(t, torch.Tensor):
            continue
        if _shared(t):
            if k is not None and t.shape[0] != k:
                return False
            k = t.shape[0]
        elif t.dim() > 0 and t.shape[0] != 1:
            return False
    return k is not None


def _first(t):
    return t[:1] if isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape[0] > 1 else t


@register(*PRODUCTS)
def product(func, name, args, kwargs):
    """``a * b`` / ``a @ b``: with one decomposed factor, linear in it; with two,
    ``rel' = a_rel * b_rel`` and the rest to ``irr``."""
    cds = [a for a in args if _is_cd(a)] + [v for v in kwargs.values() if _is_cd(v)]
    if len(cds) < 2:
        return _unary_linear(func, name, args, kwargs)
    if len(args) != 2 or kwargs:
        raise UnsupportedOperationError("CD: `%s` of decomposed tensors with extra arguments in %s"
                                        % (name, _where()))
    f, inplace = _oop_func(func, name)
    a, b = args
    rel = f(a._rel, b._rel)
    ta, tb = _tot(a), _tot(b)
    if _one_row(ta, tb):
        k = ta.shape[0] if _shared(ta) else tb.shape[0]
        tot = f(_first(ta), _first(tb))
        tot = _bcast(tot, k) if tot.dim() > 0 and tot.shape[0] == 1 else tot
    else:
        tot = f(ta, tb)
    rel, tot = torch.broadcast_tensors(rel, tot)
    is_tot = a._is_tot
    out = _new(rel, tot, False, True) if is_tot else _new(rel, tot - rel)
    return _set_inplace(a, out) if inplace else out


@register("einsum")
def einsum(func, name, args, kwargs):
    """``einsum`` (multilinear): linear in one decomposed operand, the product rule for
    two; more decomposed operands are not supported."""
    eq, ops = args[0], list(args[1:])
    idx = [j for j, o in enumerate(ops) if _is_cd(o)]
    if kwargs or len(idx) > 2:
        raise UnsupportedOperationError("CD: `einsum` of %d decomposed operands in %s" % (len(idx), _where()))
    x = ops[idx[0]]
    is_tot = x._is_tot

    def run(parts):
        o = list(ops)
        for j, p in zip(idx, parts):
            o[j] = p
        return torch.einsum(eq, *o)
    with torch._C.DisableTorchFunctionSubclass():
        rel = run([ops[j]._rel for j in idx])
        if len(idx) == 1:
            sec = run([x._sec])
            return _new(rel, sec, False, is_tot)
        tot = run([_tot(ops[j]) for j in idx])
        return _new(rel, tot, False, True) if is_tot else _new(rel, tot - rel)


@register("glu")
def glu(func, name, args, kwargs):
    """GLU ``a * sigmoid(b)`` (halves of the input): the sigmoid and product rules."""
    a_ = _bind(F.glu, args, kwargs)
    x, dim = a_["input"], a_["dim"]
    first, second = x.chunk(2, dim)
    return first * torch.sigmoid(second)


# ---- softmax: attention weights -----------------------------------------------------------
@register("softmax")
def softmax(func, name, args, kwargs):
    """Softmax of a decomposed tensor: the softmax of the total, as attention weights."""
    x = args[0] if args else kwargs.get("input")
    if any(_is_cd(v) for v in list(args[1:]) + list(kwargs.values())):
        raise UnsupportedOperationError("CD: `softmax` with decomposed arguments in %s" % _where())
    rest = list(args[1:])
    kw = {k: v for k, v in kwargs.items() if k != "input"}
    if _STATE.dtype is not None:  # keep the computation dtype
        kw.pop("dtype", None)
        if len(rest) >= 3:
            rest = rest[:2]
    t = _tot(x)
    with torch._C.DisableTorchFunctionSubclass():
        if _shared(t):
            w = _bcast(func(t[:1], *rest, **kw), t.shape[0])
        else:
            w = func(t, *rest, **kw)
    return AttentionWeights(w)


# operations after which attention weights stay attention weights (on their values)
_KEEP = {
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "permute", "transpose",
    "swapaxes", "swapdims", "movedim", "moveaxis", "t", "contiguous", "squeeze", "unsqueeze",
    "__getitem__", "expand", "expand_as", "repeat", "narrow", "select", "chunk", "split", "unbind",
    "clone", "detach", "to", "float", "double", "half", "bfloat16", "type_as", "type", "cpu", "cuda",
    "dropout", "dropout1d", "dropout2d", "dropout3d", "masked_fill", "masked_fill_",
    "mul", "__mul__", "__rmul__", "multiply", "div", "__truediv__", "true_divide", "divide",
    "sum", "mean", "get:T", "get:mT", "get:data", "tensor_split",
}
_IDENTITY_KEEP = {"dropout", "dropout1d", "dropout2d", "dropout3d", "detach", "clone", "contiguous"}


def _plain_weights(v):
    if isinstance(v, AttentionWeights):
        return v._w
    if isinstance(v, (list, tuple)):
        return type(v)(_plain_weights(x) for x in v)
    return v


def _wrap_weights(res):
    if isinstance(res, torch.Tensor) and not _is_cd(res) and res.is_floating_point():
        return AttentionWeights(res)
    if isinstance(res, (list, tuple)):
        return type(res)(_wrap_weights(r) for r in res)
    return res


def _weights_dispatch(func, name, args, kwargs):
    """Torch functions with attention weights among the arguments."""
    base = _inplace_name(name) or name
    has_cd = any(_is_cd(a) for a in _iter_args(args, kwargs))
    if base in ("matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "einsum", "mul", "__mul__", "__rmul__",
                "multiply") and has_cd:
        if name != base:
            raise UnsupportedOperationError("CD: in-place `%s` of attention weights in %s" % (name, _where()))
        # constant weights times a decomposed tensor: linear in it
        return func(*_plain_weights(list(args)), **{k: _plain_weights(v) for k, v in kwargs.items()})
    if name in _KEEP and not has_cd:
        x = args[0] if args else kwargs.get("input")
        if name in _IDENTITY_KEEP and isinstance(x, AttentionWeights):
            return x  # dropout (eval): the identity
        if name in _DTYPE_CONVERSIONS and _STATE.dtype is not None:
            return x  # the computation dtype is kept
        res = _run_plain(func, _plain_weights(list(args)), {k: _plain_weights(v) for k, v in kwargs.items()})
        if name.endswith("_") and isinstance(x, AttentionWeights):  # masked_fill_
            x._w = res
            return x
        return _wrap_weights(res)
    raise UnsupportedOperationError(
        "CD: `%s` in %s uses a softmax of decomposed values. CD decomposes softmax only as "
        "attention weights (CD-T: the softmax of the total, a constant) that multiply a "
        "decomposed tensor (matmul / mul / bmm / einsum), possibly after shape operations, "
        "dropout, masking or scaling; this use has no CD rule." % (name, _where()))


_WEIGHTS_HANDLER.append(_weights_dispatch)


# ---- scaled dot-product attention ---------------------------------------------------------
def _attend(q, k, v, mask_add, mask_keep, scale, causal, gqa):
    """``softmax(q_tot k_tot^T * scale + mask) @ v`` with the weights from the totals;
    ``mask_add``: float mask added to the scores; ``mask_keep``: bool mask, True =
    attend (sdpa's convention).  Returns the (decomposed or plain) output and the
    weights ``P``."""
    qt, kt = _tot(q), _tot(k)
    row = _one_row(qt, kt, *(m for m in (mask_add, mask_keep) if m is not None and m.dim() >= 4))
    with torch._C.DisableTorchFunctionSubclass():
        if row:
            K = next(t.shape[0] for t in (qt, kt) if _shared(t))
            qt, kt = _first(qt), _first(kt)
            mask_add = _first(mask_add) if mask_add is not None and mask_add.dim() >= 4 else mask_add
            mask_keep = _first(mask_keep) if mask_keep is not None and mask_keep.dim() >= 4 else mask_keep
        if gqa and kt.shape[-3] != qt.shape[-3]:
            rep = qt.shape[-3] // kt.shape[-3]
            kt = kt.repeat_interleave(rep, -3)
        L, S = qt.shape[-2], kt.shape[-2]
        sc = (1.0 / math.sqrt(qt.shape[-1])) if scale is None else scale
        scores = torch.matmul(qt, kt.transpose(-2, -1)) * sc
        if causal:
            keep = torch.ones(L, S, dtype=torch.bool, device=scores.device).tril()
            scores = scores.masked_fill(~keep, float("-inf"))
        if mask_keep is not None:
            scores = scores.masked_fill(~mask_keep, float("-inf"))
        if mask_add is not None:
            scores = scores + mask_add.to(scores.dtype)
        P = torch.softmax(scores, dim=-1)
        if row:
            P = _bcast(P, K)

    def vrep(t):
        if gqa and t.shape[-3] != P.shape[-3]:
            return t.repeat_interleave(P.shape[-3] // t.shape[-3], -3)
        return t
    with torch._C.DisableTorchFunctionSubclass():
        if not _is_cd(v):
            return torch.matmul(P, vrep(v)), P
        rel = torch.matmul(P, vrep(v._rel))
        sec = v._sec
        if row and _shared(sec):
            out_s = _bcast(torch.matmul(P[:1], vrep(sec[:1])), sec.shape[0])
        else:
            out_s = torch.matmul(P, vrep(sec))
    return _new(rel, out_s, False, v._is_tot), P


_SDPA_ARGS = ["query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa"]


@register("scaled_dot_product_attention")
def scaled_dot_product_attention(func, name, args, kwargs):
    """``F.scaled_dot_product_attention``: the weights of the totals (CD-T), linear in
    the values."""
    a = dict(zip(_SDPA_ARGS, args))
    a.update(kwargs)
    unknown = set(a) - set(_SDPA_ARGS)
    if unknown:
        raise UnsupportedOperationError("CD: `scaled_dot_product_attention` with %s in %s"
                                        % (sorted(unknown), _where()))
    mask = a.get("attn_mask")
    if _is_cd(mask) or isinstance(mask, AttentionWeights):
        raise UnsupportedOperationError("CD: a decomposed attention mask in %s" % _where())
    mask_add = mask_keep = None
    if mask is not None:
        if mask.dtype == torch.bool:
            mask_keep = mask
        else:
            mask_add = mask
    out, _ = _attend(a["query"], a["key"], a["value"], mask_add, mask_keep, a.get("scale"),
                     bool(a.get("is_causal", False)), bool(a.get("enable_gqa", False)))
    return out


# ---- nn.MultiheadAttention ---------------------------------------------------------------------
def _float_mask(m, dtype):
    """MHA's masks: bool True = not allowed -> -inf; float masks are added."""
    if m is None:
        return None
    if m.dtype == torch.bool:
        return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill_(m, float("-inf"))
    return m.to(dtype)


@register("multi_head_attention_forward")
def multi_head_attention(func, name, args, kwargs):
    """``F.multi_head_attention_forward`` decomposed with the rules of its parts."""
    a = _bind(F.multi_head_attention_forward, args, kwargs)
    for k_ in ("in_proj_weight", "in_proj_bias", "bias_k", "bias_v", "out_proj_weight", "out_proj_bias",
               "key_padding_mask", "attn_mask", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
        if _is_cd(a.get(k_)):
            raise UnsupportedOperationError("CD: decomposed `%s` of multi-head attention in %s" % (k_, _where()))
    if a["static_k"] is not None or a["static_v"] is not None:
        raise UnsupportedOperationError("CD: multi-head attention with static_k / static_v in %s" % _where())
    q, k, v = a["query"], a["key"], a["value"]
    H = int(a["num_heads"])
    unbatched = q.dim() == 2
    kpm, am = a["key_padding_mask"], a["attn_mask"]
    if unbatched:
        q, k, v = q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)
        if kpm is not None:
            kpm = kpm.unsqueeze(0)
    L, N, E = q.shape
    hd = E // H
    dt = _tot(q).dtype
    dev = _tot(q).device
    # batch-first (N, L, E): a total shared along the batch stays shared (one row)
    q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
    # in-projection (affine: the bias split of a linear layer)
    if not a["use_separate_proj_weight"]:
        wq, wk, wv = a["in_proj_weight"].chunk(3)
    else:
        wq, wk, wv = a["q_proj_weight"], a["k_proj_weight"], a["v_proj_weight"]
    b = a["in_proj_bias"]
    bq, bk, bv = b.chunk(3) if b is not None else (None, None, None)
    qp = F.linear(q, wq, bq)
    kp = F.linear(k, wk, bk)
    vp = F.linear(v, wv, bv)
    am = _float_mask(am, dt)
    kpm = _float_mask(kpm, dt)
    extra = []  # constant key / value rows (irrelevant)
    if a["bias_k"] is not None and a["bias_v"] is not None:
        extra.append((a["bias_k"].reshape(1, 1, E).to(dt), a["bias_v"].reshape(1, 1, E).to(dt)))
    if a["add_zero_attn"]:
        z = torch.zeros(1, 1, E, dtype=dt, device=dev)
        extra.append((z, z))
    for ck, cv in extra:
        kp = torch.cat([kp, ck.expand(N, 1, E)], 1)
        vp = torch.cat([vp, cv.expand(N, 1, E)], 1)
        am = F.pad(am, (0, 1)) if am is not None else None
        kpm = F.pad(kpm, (0, 1)) if kpm is not None else None
    S = kp.shape[1]
    # (N, L, E) -> (N, H, L, hd)
    qh = qp.reshape(N, L, H, hd).transpose(1, 2)
    kh = kp.reshape(N, S, H, hd).transpose(1, 2)
    vh = vp.reshape(N, S, H, hd).transpose(1, 2)
    mask = None
    if am is not None:  # (L, S) or (N * H, L, S) -> broadcastable to (N, H, L, S)
        mask = am.reshape(1, 1, L, S) if am.dim() == 2 or am.shape[0] == 1 else am.reshape(N, H, L, S)
    if kpm is not None:  # (N, S) -> (N, 1, 1, S)
        kmask = kpm.reshape(N, 1, 1, S)
        mask = kmask if mask is None else mask + kmask
    causal = bool(a["is_causal"]) and am is None
    out, P = _attend(qh, kh, vh, mask, None, None, causal, False)
    # (N, H, L, hd) -> (N, L, E), out-projection, -> (L, N, E)
    out = out.transpose(1, 2).reshape(N, L, E)
    out = F.linear(out, a["out_proj_weight"], a["out_proj_bias"]).transpose(0, 1)
    if unbatched:
        out = out.squeeze(1)
    weights = None
    if a["need_weights"]:
        with torch._C.DisableTorchFunctionSubclass():
            w = P.mean(dim=1) if a["average_attn_weights"] else P
            if unbatched:
                w = w.squeeze(0)
        weights = AttentionWeights(w)
    return out, weights
