"""Slow, explicit contextual-decomposition references (numpy, float64, Python loops).

Written independently of ``captum_rap._cd``: every function takes and returns a pair
``(rel, irr)`` of numpy arrays and loops over the units, so the tests compare the
vectorized rules with their definitions.  The rules (see the module docstrings of
``captum_rap._cd``):

* affine ``W x + b``: ``r = W rel``, ``i = W irr``, ``rel' = r + (|r| + 1e-20) / (|r| + |i|
  + 2e-20) * b``, ``irr' = i + (|i| + 1e-20) / (|r| + |i| + 2e-20) * b``;
* element-wise ``f``: ``rel' = f(rel)``, ``irr' = f(rel + irr) - f(rel)``;
* layer / group / instance / RMS norm: statistics of the total, centering and weight per
  part, bias as an affine bias;
* product of two decomposed tensors: ``rel' = a_rel b_rel``, the rest to ``irr``;
* attention: ``P = softmax(q_tot k_tot^T * scale + mask)`` (a constant),
  ``out = P v`` per part.
"""

from __future__ import annotations

import math

import numpy as np

EPS = 1e-20


def np64(t):
    return t.detach().double().cpu().numpy().copy()


# --------------------------------------------------------------------------------- affine
def bias_split(r, i, b):
    """One unit: the two parts of ``r + i + b``."""
    den = abs(r) + abs(i) + 2 * EPS
    return r + (abs(r) + EPS) / den * b, i + (abs(i) + EPS) / den * b


def linear(rel, irr, W, b=None):
    """``(..., In) -> (..., Out)`` by loops over rows and output units."""
    shp = rel.shape[:-1]
    R = rel.reshape(-1, rel.shape[-1])
    I_ = irr.reshape(-1, irr.shape[-1])
    out_r = np.zeros((R.shape[0], W.shape[0]))
    out_i = np.zeros_like(out_r)
    for n in range(R.shape[0]):
        for o in range(W.shape[0]):
            r = sum(W[o, j] * R[n, j] for j in range(W.shape[1]))
            i = sum(W[o, j] * I_[n, j] for j in range(W.shape[1]))
            if b is None:
                out_r[n, o], out_i[n, o] = r, i
            else:
                out_r[n, o], out_i[n, o] = bias_split(r, i, b[o])
    return out_r.reshape(shp + (W.shape[0],)), out_i.reshape(shp + (W.shape[0],))


def conv1d(rel, irr, W, b, padding):
    """``(C, L)`` conv1d, stride 1, zero padding, by loops."""
    C_out, C_in, k = W.shape
    L = rel.shape[1]
    pr = np.pad(rel, ((0, 0), (padding, padding)))
    pi = np.pad(irr, ((0, 0), (padding, padding)))
    Lo = L + 2 * padding - k + 1
    out_r, out_i = np.zeros((C_out, Lo)), np.zeros((C_out, Lo))
    for o in range(C_out):
        for t in range(Lo):
            r = sum(W[o, c, u] * pr[c, t + u] for c in range(C_in) for u in range(k))
            i = sum(W[o, c, u] * pi[c, t + u] for c in range(C_in) for u in range(k))
            out_r[o, t], out_i[o, t] = bias_split(r, i, b[o])
    return out_r, out_i


# ------------------------------------------------------------------------ element-wise
def _sig(v):
    return 1.0 / (1.0 + math.exp(-v))


def _softplus(v, beta=1.0, threshold=20.0):
    return v if beta * v > threshold else math.log1p(math.exp(beta * v)) / beta


SCALAR_F = {
    "relu": lambda v: max(v, 0.0),
    "sigmoid": _sig,
    "tanh": math.tanh,
    "silu": lambda v: v * _sig(v),
    "gelu": lambda v: 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))),
    "gelu_tanh": lambda v: 0.5 * v * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v ** 3))),
    "hardswish": lambda v: v * min(max(v + 3.0, 0.0), 6.0) / 6.0,
    "hardsigmoid": lambda v: min(max(v / 6.0 + 0.5, 0.0), 1.0),
    "elu": lambda v: v if v > 0 else 0.7 * (math.exp(v) - 1.0),
    "selu": lambda v: 1.0507009873554804934193349852946 * (
        v if v > 0 else 1.6732632423543772848170429916717 * (math.exp(v) - 1.0)),
    "celu": lambda v: max(0.0, v) + min(0.0, 0.5 * (math.exp(v / 0.5) - 1.0)),
    "softplus": lambda v: _softplus(v, 2.0, 3.0),
    "mish": lambda v: v * math.tanh(_softplus(v)),
    "softsign": lambda v: v / (1.0 + abs(v)),
    "logsigmoid": lambda v: -math.log1p(math.exp(-v)) if v > -30 else v - math.log1p(math.exp(v)),
    "tanhshrink": lambda v: v - math.tanh(v),
    "hardshrink": lambda v: v if abs(v) > 0.4 else 0.0,
    "softshrink": lambda v: v - 0.4 if v > 0.4 else (v + 0.4 if v < -0.4 else 0.0),
    "leaky_relu": lambda v: v if v > 0 else 0.1 * v,
    "relu6": lambda v: min(max(v, 0.0), 6.0),
}


def elementwise(rel, irr, f):
    out_r = np.zeros_like(rel)
    out_i = np.zeros_like(irr)
    for idx in np.ndindex(rel.shape):
        out_r[idx] = f(rel[idx])
        out_i[idx] = f(rel[idx] + irr[idx]) - out_r[idx]
    return out_r, out_i


# --------------------------------------------------------------------------- norms
def _mean(vals):
    return sum(vals) / len(vals)


def normalize_groups(rel, irr, groups, eps, weight=None, bias=None, center=True, rms=False):
    """Generic normalisation: ``groups`` is a list of lists of indices (tuples) into the
    arrays; statistics of the total over each group; ``weight`` / ``bias`` map an index
    to its weight / bias (or None)."""
    out_r = np.zeros_like(rel)
    out_i = np.zeros_like(irr)
    for g in groups:
        tot = [rel[ix] + irr[ix] for ix in g]
        if rms:
            s = 1.0 / math.sqrt(_mean([t * t for t in tot]) + eps)
        else:
            mu = _mean(tot)
            s = 1.0 / math.sqrt(_mean([(t - mu) ** 2 for t in tot]) + eps)
        mr = _mean([rel[ix] for ix in g]) if center else 0.0
        mi = _mean([irr[ix] for ix in g]) if center else 0.0
        for ix in g:
            w = weight(ix) if weight is not None else 1.0
            r = (rel[ix] - mr) * s * w
            i = (irr[ix] - mi) * s * w
            if bias is not None:
                r, i = bias_split(r, i, bias(ix))
            out_r[ix], out_i[ix] = r, i
    return out_r, out_i


def layer_norm(rel, irr, n_axes, w, b, eps):
    """Layer norm over the last ``n_axes`` axes (weight / bias of those axes' shape)."""
    lead = rel.shape[:rel.ndim - n_axes]
    tail = rel.shape[rel.ndim - n_axes:]
    groups = [[lix + tix for tix in np.ndindex(tail)] for lix in np.ndindex(lead)]
    k = len(lead)
    return normalize_groups(rel, irr, groups, eps,
                            (lambda ix: w[ix[k:]]) if w is not None else None,
                            (lambda ix: b[ix[k:]]) if b is not None else None)


def group_norm(rel, irr, G, w, b, eps):
    """``(N, C, *)`` group norm."""
    N, C = rel.shape[:2]
    rest = rel.shape[2:]
    groups = []
    for n in range(N):
        for g in range(G):
            groups.append([(n, c) + s for c in range(g * C // G, (g + 1) * C // G) for s in np.ndindex(rest)])
    return normalize_groups(rel, irr, groups, eps,
                            (lambda ix: w[ix[1]]) if w is not None else None,
                            (lambda ix: b[ix[1]]) if b is not None else None)


def rms_norm(rel, irr, w, eps):
    lead = rel.shape[:-1]
    groups = [[lix + (e,) for e in range(rel.shape[-1])] for lix in np.ndindex(lead)]
    return normalize_groups(rel, irr, groups, eps, (lambda ix: w[ix[-1]]) if w is not None else None,
                            None, center=False, rms=True)


def l2_normalize(rel, irr, eps=1e-12):
    """``F.normalize(x, dim=-1)``: the total's norm as a constant."""
    out_r, out_i = np.zeros_like(rel), np.zeros_like(irr)
    for lix in np.ndindex(rel.shape[:-1]):
        n = math.sqrt(sum((rel[lix + (e,)] + irr[lix + (e,)]) ** 2 for e in range(rel.shape[-1])))
        n = max(n, eps)
        for e in range(rel.shape[-1]):
            out_r[lix + (e,)] = rel[lix + (e,)] / n
            out_i[lix + (e,)] = irr[lix + (e,)] / n
    return out_r, out_i


def batch_norm_eval(rel, irr, mean, var, w, b, eps, axis=1):
    """Eval batch norm: ``a x + c`` with the shift split ``|r| / (|r| + |i|)`` (0/0: to irr)."""
    out_r, out_i = np.zeros_like(rel), np.zeros_like(irr)
    for ix in np.ndindex(rel.shape):
        c = ix[axis]
        a = w[c] / math.sqrt(var[c] + eps)
        shift = b[c] - mean[c] * a
        r, i = a * rel[ix], a * irr[ix]
        p = abs(r) / (abs(r) + abs(i)) if (abs(r) + abs(i)) > 0 else 0.0
        out_r[ix] = r + p * shift
        out_i[ix] = i + (1 - p) * shift
    return out_r, out_i


# ------------------------------------------------------------------------- products
def product(a, b):
    """Element-wise product of two decomposed arrays (same shape)."""
    (ar, ai), (br, bi) = a, b
    out_r, out_i = np.zeros_like(ar), np.zeros_like(ai)
    for ix in np.ndindex(ar.shape):
        out_r[ix] = ar[ix] * br[ix]
        out_i[ix] = (ar[ix] + ai[ix]) * (br[ix] + bi[ix]) - out_r[ix]
    return out_r, out_i


def matmul2(a, b):
    """``(n, k) @ (k, m)`` of two decomposed matrices."""
    (ar, ai), (br, bi) = a, b
    n, k = ar.shape
    m = br.shape[1]
    out_r, out_i = np.zeros((n, m)), np.zeros((n, m))
    for x in range(n):
        for y in range(m):
            out_r[x, y] = sum(ar[x, z] * br[z, y] for z in range(k))
            tot = sum((ar[x, z] + ai[x, z]) * (br[z, y] + bi[z, y]) for z in range(k))
            out_i[x, y] = tot - out_r[x, y]
    return out_r, out_i


# ------------------------------------------------------------------------- attention
def softmax_rows(s):
    out = np.zeros_like(s)
    for ix in np.ndindex(s.shape[:-1]):
        row = s[ix]
        m = max(v for v in row if v != -np.inf) if np.isfinite(row).any() else 0.0
        e = [math.exp(v - m) if v != -np.inf else 0.0 for v in row]
        z = sum(e)
        out[ix] = [v / z for v in e]
    return out


def attention(q, k, v, scale, mask=None):
    """One head: ``q (L, d)``, ``k, v (S, d)`` decomposed pairs, ``mask (L, S)`` added
    (-inf = not allowed).  Returns the decomposed output and the weights."""
    qt = q[0] + q[1]
    kt = k[0] + k[1]
    L, S = qt.shape[0], kt.shape[0]
    s = np.zeros((L, S))
    for i in range(L):
        for j in range(S):
            s[i, j] = sum(qt[i, d] * kt[j, d] for d in range(qt.shape[1])) * scale
            if mask is not None:
                s[i, j] += mask[i, j]
    P = softmax_rows(s)
    out_r = np.zeros((L, v[0].shape[1]))
    out_i = np.zeros_like(out_r)
    for i in range(L):
        for d in range(v[0].shape[1]):
            out_r[i, d] = sum(P[i, j] * v[0][j, d] for j in range(S))
            out_i[i, d] = sum(P[i, j] * v[1][j, d] for j in range(S))
    return (out_r, out_i), P


def mha(x, mha_module, mask=None, kv=None):
    """``nn.MultiheadAttention`` (packed in-projection, batch of one, ``(L, E)`` pairs):
    in-projection, per-head attention, out-projection.  ``mask (L, S)`` additive;
    ``kv``: the key / value input pair (default: self-attention)."""
    E = mha_module.embed_dim
    H = mha_module.num_heads
    hd = E // H
    W = np64(mha_module.in_proj_weight)
    b = np64(mha_module.in_proj_bias) if mha_module.in_proj_bias is not None else None
    kv = x if kv is None else kv
    parts = []
    for j, inp in enumerate((x, kv, kv)):
        parts.append(linear(inp[0], inp[1], W[j * E:(j + 1) * E], None if b is None else b[j * E:(j + 1) * E]))
    (qr, qi), (kr, ki), (vr, vi) = parts
    if mha_module.bias_k is not None:
        bk = np64(mha_module.bias_k).reshape(1, E)
        bv = np64(mha_module.bias_v).reshape(1, E)
        kr, ki = np.concatenate([kr, 0 * bk]), np.concatenate([ki, bk])
        vr, vi = np.concatenate([vr, 0 * bv]), np.concatenate([vi, bv])
        if mask is not None:
            mask = np.concatenate([mask, np.zeros((mask.shape[0], 1))], 1)
    if mha_module.add_zero_attn:
        z = np.zeros((1, E))
        kr, ki = np.concatenate([kr, z]), np.concatenate([ki, z])
        vr, vi = np.concatenate([vr, z]), np.concatenate([vi, z])
        if mask is not None:
            mask = np.concatenate([mask, np.zeros((mask.shape[0], 1))], 1)
    out_r = np.zeros_like(qr)
    out_i = np.zeros_like(qi)
    for h in range(H):
        sl = slice(h * hd, (h + 1) * hd)
        (o_r, o_i), _ = attention((qr[:, sl], qi[:, sl]), (kr[:, sl], ki[:, sl]), (vr[:, sl], vi[:, sl]),
                                  1.0 / math.sqrt(hd), mask)
        out_r[:, sl], out_i[:, sl] = o_r, o_i
    ob = mha_module.out_proj.bias
    return linear(out_r, out_i, np64(mha_module.out_proj.weight), None if ob is None else np64(ob))


def add(a, b):
    return a[0] + b[0], a[1] + b[1]


def encoder_layer(x, layer, mask=None):
    """``nn.TransformerEncoderLayer`` (eval) on an ``(L, E)`` pair, post- or pre-norm."""
    act = SCALAR_F["gelu"] if "gelu" in str(layer.activation) else SCALAR_F["relu"]

    def ln(pair, mod):
        return layer_norm(pair[0], pair[1], 1, np64(mod.weight), np64(mod.bias), mod.eps)

    def ff(pair):
        h = linear(pair[0], pair[1], np64(layer.linear1.weight), np64(layer.linear1.bias))
        h = elementwise(h[0], h[1], act)
        return linear(h[0], h[1], np64(layer.linear2.weight), np64(layer.linear2.bias))

    if layer.norm_first:
        x = add(x, mha(ln(x, layer.norm1), layer.self_attn, mask))
        return add(x, ff(ln(x, layer.norm2)))
    x = ln(add(x, mha(x, layer.self_attn, mask)), layer.norm1)
    return ln(add(x, ff(x)), layer.norm2)
