"""The rules of the operation table against explicit slow references (float64).

The references below are written from the rule definitions (``captum_rap/rules/``,
``captum_rap/_engine/optable.py`` and the papers they cite) as explicit loops over units,
without the engine: the identity rule on element-wise non-linearities (AttnLRP eq. 9), the
uniform and signal-take-all product rules, AttnLRP's softmax rule, CP-LRP's constant
attention weights, layer norm with its standard deviation as a constant, the z-rule of
residual sums and means, and token relevance through an embedding.  The models are
unchanged torch modules (``nn.MultiheadAttention``, ``nn.LayerNorm``, ``nn.GELU``, ...), so
the tests also check that the engine sees every operation inside them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from captum_rap import LRP, RAP
from captum_rap._engine import Propagator

TOL = 1e-10


def _err(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def _np(t):
    return t.detach().double().numpy().copy()


# ----------------------------------------------------------------------------------------
# a tiny transformer block, written in nn modules
# ----------------------------------------------------------------------------------------


class TinyTransformer(nn.Module):
    def __init__(self, feats=5, dim=4, heads=2, hidden=6, classes=3):
        super().__init__()
        self.inp = nn.Linear(feats, dim)
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h0 = self.inp(x)
        y1 = self.ln1(h0)
        a, _ = self.attn(y1, y1, y1, need_weights=False)
        h1 = h0 + a
        h2 = h1 + self.fc2(self.act(self.fc1(self.ln2(h1))))
        return self.head(h2.mean(1))


def _seeded_transformer():
    torch.manual_seed(0)
    m = TinyTransformer().double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.5)
    return m


def _linear_z(x, w, b, r_out):
    """z-rule (LRP-0) through ``z = x Wᵀ + b`` for one example: loops over units."""
    z = x @ w.T + b
    r_in = np.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(x.shape[1]):
            for k in range(w.shape[0]):
                r_in[t, j] += x[t, j] * w[k, j] / z[t, k] * r_out[t, k]
    return r_in


def _layer_norm_relevance(h, w, b, eps, r_y):
    """Layer norm: affine part by the z-rule (its bias takes its share), division by the
    standard deviation a constant, centering ``c_d = h_d - mean(h)`` by the z-rule."""
    mu = h.mean(1, keepdims=True)
    c = h - mu
    sd = np.sqrt((c ** 2).mean(1, keepdims=True) + eps)
    n = c / sd
    y = n * w + b
    r_n = n * w / y * r_y
    r_h = np.zeros_like(h)
    dim = h.shape[1]
    for t in range(h.shape[0]):
        for j in range(dim):
            for d in range(dim):
                r_h[t, j] += h[t, j] * ((1.0 if j == d else 0.0) - 1.0 / dim) / c[t, d] * r_n[t, d]
    return r_h


def _reference_transformer(m, x, target, mode):
    """Relevance of ``x`` (one example, (T, feats)) for the logit ``target`` with LRP-0 on
    every affine map; ``mode``: ``"attnlrp"`` (uniform products, AttnLRP softmax rule) or
    ``"cp_lrp"`` (attention weights constants)."""
    P = {k: _np(v) for k, v in m.state_dict().items()}
    T = x.shape[0]
    dim = P["inp.weight"].shape[0]
    heads = m.attn.num_heads
    hd = dim // heads
    eps = m.ln1.eps
    # forward
    h0 = x @ P["inp.weight"].T + P["inp.bias"]

    def ln(h, pre):
        c = h - h.mean(1, keepdims=True)
        return c / np.sqrt((c ** 2).mean(1, keepdims=True) + eps) * P[pre + ".weight"] + P[pre + ".bias"]

    y1 = ln(h0, "ln1")
    qkv = y1 @ P["attn.in_proj_weight"].T + P["attn.in_proj_bias"]
    q, k, v = qkv[:, :dim], qkv[:, dim:2 * dim], qkv[:, 2 * dim:]
    scale = 1.0 / math.sqrt(hd)
    S = np.zeros((heads, T, T))
    for hh in range(heads):
        for t in range(T):
            for s in range(T):
                S[hh, t, s] = scale * sum(q[t, hh * hd + e] * k[s, hh * hd + e] for e in range(hd))
    A = np.exp(S - S.max(2, keepdims=True))
    A = A / A.sum(2, keepdims=True)
    o = np.zeros((T, dim))
    for hh in range(heads):
        for t in range(T):
            for e in range(hd):
                o[t, hh * hd + e] = sum(A[hh, t, s] * v[s, hh * hd + e] for s in range(T))
    a = o @ P["attn.out_proj.weight"].T + P["attn.out_proj.bias"]
    h1 = h0 + a
    y2 = ln(h1, "ln2")
    u = y2 @ P["fc1.weight"].T + P["fc1.bias"]
    g = 0.5 * u * (1 + np.vectorize(math.erf)(u / math.sqrt(2)))
    f = g @ P["fc2.weight"].T + P["fc2.bias"]
    h2 = h1 + f
    hm = h2.mean(0)
    logits = hm @ P["head.weight"].T + P["head.bias"]
    # backward
    r_logit = np.zeros_like(logits)
    r_logit[target] = logits[target]
    r_hm = _linear_z(hm[None], P["head.weight"], P["head.bias"], r_logit[None])[0]
    r_h2 = (h2 / T) / hm * r_hm  # mean: z-rule over the T contributions
    r_h1 = h1 / h2 * r_h2
    r_f = f / h2 * r_h2
    r_g = _linear_z(g, P["fc2.weight"], P["fc2.bias"], r_f)
    r_u = r_g  # identity rule (GELU)
    r_y2 = _linear_z(y2, P["fc1.weight"], P["fc1.bias"], r_u)
    r_h1 = r_h1 + _layer_norm_relevance(h1, P["ln2.weight"], P["ln2.bias"], eps, r_y2)
    r_h0 = h0 / h1 * r_h1
    r_a = a / h1 * r_h1
    r_o = _linear_z(o, P["attn.out_proj.weight"], P["attn.out_proj.bias"], r_a)
    share = 0.5 if mode == "attnlrp" else 1.0  # uniform rule: half to each factor
    r_A = np.zeros_like(A)
    r_v = np.zeros_like(v)
    for hh in range(heads):
        for t in range(T):
            for e in range(hd):
                col = hh * hd + e
                for s in range(T):
                    part = A[hh, t, s] * v[s, col] / o[t, col] * r_o[t, col]
                    r_A[hh, t, s] += share * part
                    r_v[s, col] += share * part
    r_q = np.zeros_like(q)
    r_k = np.zeros_like(k)
    if mode == "attnlrp":
        # AttnLRP softmax rule: R_S = S (R_A - A ΣR_A), then the uniform rule on q kᵀ
        r_S = S * (r_A - A * r_A.sum(2, keepdims=True))
        for hh in range(heads):
            for t in range(T):
                for s in range(T):
                    for e in range(hd):
                        col = hh * hd + e
                        part = scale * q[t, col] * k[s, col] / S[hh, t, s] * r_S[hh, t, s]
                        r_q[t, col] += 0.5 * part
                        r_k[s, col] += 0.5 * part
    r_qkv = np.concatenate([r_q, r_k, r_v], axis=1)
    r_y1 = _linear_z(y1, P["attn.in_proj_weight"], P["attn.in_proj_bias"], r_qkv)
    r_h0 = r_h0 + _layer_norm_relevance(h0, P["ln1.weight"], P["ln1.bias"], eps, r_y1)
    return _linear_z(x, P["inp.weight"], P["inp.bias"], r_h0), logits


@pytest.mark.parametrize("mode", ["attnlrp", "cp_lrp"])
def test_transformer_block_matches_explicit_reference(mode):
    m = _seeded_transformer()
    x = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    targets = [0, 2]
    ours = LRP(m, mode, epsilon=0).attribute(x, target=targets)
    for i, t in enumerate(targets):
        ref, logits = _reference_transformer(m, _np(x[i]), t, mode)
        assert abs(logits[t] - float(m(x[i:i + 1])[0, t])) < 1e-12  # the reference's forward
        assert _err(_np(ours[i]), ref) < TOL, mode


def test_transformer_block_rules_differ_from_plain_gradient():
    """The reference is not gradient x input (the test can fail): AttnLRP's map differs
    from it by far more than the tolerance."""
    m = _seeded_transformer()
    x = torch.randn(1, 3, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64,
                    requires_grad=True)
    m(x)[0, 0].backward()
    gxi = _np(x.grad * x)[0]
    ref, _ = _reference_transformer(m, _np(x[0]), 0, "attnlrp")
    assert _err(gxi, ref) > 1e-3


# ----------------------------------------------------------------------------------------
# gates: SE block with SiLU, uniform vs signal-take-all
# ----------------------------------------------------------------------------------------


class GatedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.act = nn.SiLU()
        self.se1 = nn.Linear(6, 3)
        self.se2 = nn.Linear(3, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        h = self.act(self.fc(x))
        gate = torch.sigmoid(self.se2(torch.relu(self.se1(h))))
        return self.head(h * gate)


def _reference_gated(m, x, target, signal_take_all):
    P = {k: _np(v) for k, v in m.state_dict().items()}
    x = x[None]
    u = x @ P["fc.weight"].T + P["fc.bias"]
    h = u / (1 + np.exp(-u))
    s1 = h @ P["se1.weight"].T + P["se1.bias"]
    r1 = np.maximum(s1, 0)
    s2 = r1 @ P["se2.weight"].T + P["se2.bias"]
    gate = 1 / (1 + np.exp(-s2))
    p = h * gate
    logits = p @ P["head.weight"].T + P["head.bias"]
    r_out = np.zeros_like(logits)
    r_out[0, target] = logits[0, target]
    r_p = _linear_z(p, P["head.weight"], P["head.bias"], r_out)
    r_h = r_p if signal_take_all else 0.5 * r_p  # the product h * gate
    r_gate = np.zeros_like(r_p) if signal_take_all else 0.5 * r_p
    r_s2 = r_gate  # identity rule (sigmoid)
    r_r1 = _linear_z(r1, P["se2.weight"], P["se2.bias"], r_s2)
    r_s1 = r_r1  # ReLU
    r_h = r_h + _linear_z(h, P["se1.weight"], P["se1.bias"], r_s1)
    r_u = r_h  # identity rule (SiLU)
    return _linear_z(x, P["fc.weight"], P["fc.bias"], r_u)[0]


@pytest.mark.parametrize("preset,signal", [("attnlrp", False), ("cp_lrp", True)])
def test_gated_product_uniform_and_signal_take_all(preset, signal):
    torch.manual_seed(3)
    m = GatedNet().double().eval()
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    ours = LRP(m, preset, epsilon=0).attribute(x, target=[0, 1, 1])
    for i, t in enumerate([0, 1, 1]):
        assert _err(_np(ours[i]), _reference_gated(m, _np(x[i]), t, signal)) < TOL
    # the two product rules give different maps
    other = LRP(m, "cp_lrp" if not signal else "attnlrp", epsilon=0).attribute(x, target=[0, 1, 1])
    assert _err(_np(other), _np(ours)) > 1e-3


# ----------------------------------------------------------------------------------------
# element-wise non-linearities: the identity rule for every one in the table
# ----------------------------------------------------------------------------------------

ACTIVATIONS = {
    "silu": F.silu, "gelu": F.gelu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
    "hardswish": F.hardswish, "mish": F.mish, "elu": F.elu, "selu": F.selu, "celu": F.celu,
    "softplus": F.softplus, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "hardsigmoid": F.hardsigmoid,
    "logsigmoid": F.logsigmoid, "softsign": F.softsign, "square": torch.square, "exp": torch.exp,
    "relu6": F.relu6, "hardtanh": F.hardtanh, "leaky_relu": F.leaky_relu,
    "silu_inplace": lambda t: F.silu(t.clone(), inplace=True),
    "sigmoid_method_inplace": lambda t: t.clone().sigmoid_(),
}


class ActNet(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.fc1 = nn.Linear(5, 7)
        self.fc2 = nn.Linear(7, 3)

    def forward(self, x):
        return self.fc2(self.fn(self.fc1(x)))


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_identity_rule_on_elementwise_nonlinearities(name):
    torch.manual_seed(5)
    m = ActNet(ACTIVATIONS[name]).double().eval()
    x = torch.randn(2, 5, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    ours = LRP(m, "epsilon", epsilon=0).attribute(x, target=[2, 0])
    P = {k: _np(v) for k, v in m.state_dict().items()}
    for i, t in enumerate([2, 0]):
        xi = _np(x[i])[None]
        u = xi @ P["fc1.weight"].T + P["fc1.bias"]
        a = _np(ACTIVATIONS[name](torch.from_numpy(u)))
        out = a @ P["fc2.weight"].T + P["fc2.bias"]
        r_out = np.zeros_like(out)
        r_out[0, t] = out[0, t]
        r_u = _linear_z(a, P["fc2.weight"], P["fc2.bias"], r_out)  # = R at the activation output
        ref = _linear_z(xi, P["fc1.weight"], P["fc1.bias"], r_u)[0]  # identity rule: R_u unchanged
        assert _err(_np(ours[i]), ref) < TOL, name


# ----------------------------------------------------------------------------------------
# scaled_dot_product_attention with masks; embeddings
# ----------------------------------------------------------------------------------------


class SDPANet(nn.Module):
    def __init__(self, mask_kind, dim=4):
        super().__init__()
        self.mask_kind = mask_kind
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 2)

    def forward(self, x):  # (N, T, dim), one head
        T = x.shape[1]
        mask = None
        causal = self.mask_kind == "causal"
        if self.mask_kind == "bool":
            mask = torch.ones(T, T, dtype=torch.bool).triu(-1)
        elif self.mask_kind == "float":
            mask = torch.linspace(-1.0, 1.0, T * T, dtype=x.dtype).reshape(T, T)
        o = F.scaled_dot_product_attention(self.q(x)[:, None], self.k(x)[:, None], self.v(x)[:, None],
                                           attn_mask=mask, is_causal=causal)[:, 0]
        return self.head(o.sum(1))


@pytest.mark.parametrize("mask_kind", ["none", "bool", "float", "causal"])
def test_sdpa_attnlrp_matches_reference(mask_kind):
    torch.manual_seed(7)
    m = SDPANet(mask_kind).double().eval()
    x = torch.randn(1, 4, 4, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    ours = _np(LRP(m, "attnlrp", epsilon=0).attribute(x, target=1))[0]
    P = {k: _np(v) for k, v in m.state_dict().items()}
    xi = _np(x[0])
    T, dim = xi.shape
    q = xi @ P["q.weight"].T + P["q.bias"]
    k = xi @ P["k.weight"].T + P["k.bias"]
    v = xi @ P["v.weight"].T + P["v.bias"]
    S = q @ k.T / math.sqrt(dim)
    add = np.zeros((T, T))
    if mask_kind == "bool":
        add = np.where(np.triu(np.ones((T, T)), -1) > 0, 0.0, -np.inf)
    elif mask_kind == "float":
        add = np.linspace(-1.0, 1.0, T * T).reshape(T, T)
    elif mask_kind == "causal":
        add = np.where(np.tril(np.ones((T, T))) > 0, 0.0, -np.inf)
    L = S + add
    A = np.exp(L - L.max(1, keepdims=True))
    A /= A.sum(1, keepdims=True)
    o = A @ v
    osum = o.sum(0)
    out = osum @ P["head.weight"].T + P["head.bias"]
    r_out = np.zeros(2)
    r_out[1] = out[1]
    r_osum = _linear_z(osum[None], P["head.weight"], P["head.bias"], r_out[None])[0]
    r_o = o / osum * r_osum
    r_A = np.zeros((T, T))
    r_v = np.zeros_like(v)
    for t in range(T):
        for c in range(dim):
            for s in range(T):
                part = A[t, s] * v[s, c] / o[t, c] * r_o[t, c]
                r_A[t, s] += part / 2
                r_v[s, c] += part / 2
    r_L = np.where(np.isfinite(L), L, 0.0) * (r_A - A * r_A.sum(1, keepdims=True))  # softmax rule
    r_S = np.where(np.isfinite(L), S / np.where(np.isfinite(L), L, 1.0) * r_L, 0.0)  # the mask's share
    r_q = np.zeros_like(q)
    r_k = np.zeros_like(k)
    for t in range(T):
        for s in range(T):
            for c in range(dim):
                if S[t, s] != 0:
                    part = q[t, c] * k[s, c] / math.sqrt(dim) / S[t, s] * r_S[t, s]
                    r_q[t, c] += part / 2
                    r_k[s, c] += part / 2
    ref = (_linear_z(xi, P["q.weight"], P["q.bias"], r_q) + _linear_z(xi, P["k.weight"], P["k.bias"], r_k)
           + _linear_z(xi, P["v.weight"], P["v.bias"], r_v))
    assert _err(ours, ref) < TOL


class TokenNet(nn.Module):
    def __init__(self, vocab=11, dim=4):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(8, dim)
        self.fc = nn.Linear(dim, 3)

    def forward(self, ids):
        pos = torch.arange(ids.shape[1])
        h = self.emb(ids) + self.pos(pos)[None]
        return self.fc(torch.tanh(h).mean(1))


def test_token_ids_relevance_through_embedding():
    """Integer inputs: the relevance of each token is that of its looked-up vector (summed
    over the embedding axis); the position embedding is a constant and keeps its share."""
    torch.manual_seed(9)
    m = TokenNet().double().eval()
    ids = torch.tensor([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]])
    ours = LRP(m, "epsilon", epsilon=0).attribute(ids, target=[2, 0])
    assert ours.shape == ids.shape and ours.dtype == torch.float64
    P = {k: _np(v) for k, v in m.state_dict().items()}
    for i, t in enumerate([2, 0]):
        e = P["emb.weight"][ids[i].numpy()]
        h = e + P["pos.weight"][:5]
        a = np.tanh(h)
        hm = a.mean(0)
        out = hm @ P["fc.weight"].T + P["fc.bias"]
        r_out = np.zeros(3)
        r_out[t] = out[t]
        r_hm = _linear_z(hm[None], P["fc.weight"], P["fc.bias"], r_out[None])[0]
        r_a = (a / 5) / hm * r_hm
        r_e = e / h * r_a  # the sum with the constant position embedding: its share is lost
        assert _err(_np(ours[i]), r_e.sum(1)) < TOL
    # the same ids twice in one row get their own relevance each (positions 1 and 3)
    assert float(ours[0, 1]) != float(ours[0, 3])


# ----------------------------------------------------------------------------------------
# the decompositions compute what torch computes (forward pass, float64)
# ----------------------------------------------------------------------------------------


def _engine_forward(model, *inputs):
    """The model output computed under the engine's function mode."""
    prop = Propagator(model, rule_for=lambda info: _PassRule())
    _, outputs, _ = prop.run(tuple(inputs), (), lambda out: torch.zeros_like(out))
    return outputs


class _PassRule:
    def propagate(self, op, x, z, relevance, info):  # pragma: no cover - never reached
        return None, torch.zeros_like(x)


class MHAWrap(nn.Module):
    def __init__(self, kw, call):
        super().__init__()
        self.mha = nn.MultiheadAttention(**kw)
        self.call = call

    def forward(self, x):
        out, w = self.mha(*self.call(x))
        res = out.sum() * torch.ones(1, 1, dtype=out.dtype)
        if w is not None:
            res = res + w.sum()
        return res + out.flatten()[None, :3]


_T, _N, _E = 5, 2, 6
_BOOL = torch.rand(_T, _T, generator=torch.Generator().manual_seed(2)) > 0.7
_BOOL.fill_diagonal_(False)
_KPM = torch.tensor([[False, False, False, True, True], [False, False, False, False, True]])


MHA_CASES = {
    "self_batch_first_packed": (dict(embed_dim=_E, num_heads=2, batch_first=True),
                                lambda x: (x, x, x), (_N, _T, _E)),
    "seq_first_weights": (dict(embed_dim=_E, num_heads=3), lambda x: (x, x, x, None, True), (_T, _N, _E)),
    "per_head_weights": (dict(embed_dim=_E, num_heads=2, batch_first=True),
                         lambda x: (x, x, x, None, True, None, False), (_N, _T, _E)),
    "bool_mask_and_padding": (dict(embed_dim=_E, num_heads=2, batch_first=True),
                              lambda x: (x, x, x, _KPM, False, _BOOL), (_N, _T, _E)),
    "float_mask_cross": (dict(embed_dim=_E, num_heads=2, batch_first=True),
                         lambda x: (x, x[:, :3], x[:, :3], None, False,
                                    torch.linspace(-1, 1, _T * 3, dtype=x.dtype).reshape(_T, 3)),
                         (_N, _T, _E)),
    "kdim_vdim": (dict(embed_dim=_E, num_heads=2, kdim=4, vdim=3, batch_first=True),
                  lambda x: (x, x[..., :4], x[..., :3]), (_N, _T, _E)),
    "bias_kv_zero_attn": (dict(embed_dim=_E, num_heads=2, add_bias_kv=True, add_zero_attn=True,
                               batch_first=True), lambda x: (x, x, x, _KPM), (_N, _T, _E)),
    "unbatched": (dict(embed_dim=_E, num_heads=2), lambda x: (x[0], x[0], x[0]), (_N, _T, _E)),
    "no_bias_3d_mask": (dict(embed_dim=_E, num_heads=2, bias=False, batch_first=True),
                        lambda x: (x, x, x, None, False,
                                   torch.randn(_N * 2, _T, _T, generator=torch.Generator().manual_seed(3),
                                               dtype=x.dtype)), (_N, _T, _E)),
}


@pytest.mark.parametrize("case", list(MHA_CASES))
def test_multihead_attention_decomposition_equals_torch(case):
    kw, call, shape = MHA_CASES[case]
    torch.manual_seed(11)
    m = MHAWrap(kw, call).double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.5)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    with torch.no_grad():
        want = m(x)
    got = _engine_forward(m, x)
    assert torch.allclose(got, want, rtol=0, atol=1e-12 * float(want.abs().max()))
    # and relevance reaches every input position through it
    attr = LRP(m, "attnlrp", epsilon=0).attribute(x, target=1)
    assert torch.isfinite(attr).all() and float(attr.abs().sum()) > 0


NORMS = {
    "layer_norm": (nn.LayerNorm(6), (3, 4, 6)),
    "layer_norm_2d_shape": (nn.LayerNorm((4, 6)), (3, 4, 6)),
    "layer_norm_no_affine": (nn.LayerNorm(6, elementwise_affine=False), (3, 4, 6)),
    "group_norm": (nn.GroupNorm(2, 4), (3, 4, 5, 5)),
    "instance_norm": (nn.InstanceNorm2d(4, affine=True), (3, 4, 5, 5)),
    "instance_norm_running": (nn.InstanceNorm2d(4, affine=True, track_running_stats=True), (3, 4, 5, 5)),
    "rms_norm": (nn.RMSNorm(6), (3, 4, 6)),
    "normalize": (None, (3, 4, 6)),
}


class NormWrap(nn.Module):
    def __init__(self, norm, features):
        super().__init__()
        self.pre = nn.Linear(features, features)
        self.norm = norm
        self.post = nn.Linear(features, 2)

    def forward(self, x):
        h = self.pre(x.transpose(1, -1)).transpose(1, -1)
        h = F.normalize(h, dim=-1) if self.norm is None else self.norm(h)
        return self.post(h.transpose(1, -1)).flatten(1)[:, :4]


@pytest.mark.parametrize("case", list(NORMS))
def test_normalisations_forward_and_conservation(case):
    norm, shape = NORMS[case]
    torch.manual_seed(13)
    m = NormWrap(norm, shape[1]).double().eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.normal_(0.5 if name.startswith("norm.weight") else 0, 0.5)
        for b in m.buffers():
            if b.dtype.is_floating_point:
                b.uniform_(0.5, 1.5)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
    with torch.no_grad():
        want = m(x)
    got = _engine_forward(m, x)
    assert torch.allclose(got, want, rtol=0, atol=1e-12 * float(want.abs().max()))
    # bias-free: the standard deviation is a constant, centering and scaling are linear, so
    # LRP-0 conserves relevance through the normalisation
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("bias"):
                p.zero_()
        if norm is not None and getattr(norm, "running_mean", None) is not None:
            norm.running_mean.zero_()
    attr, delta = LRP(m, "epsilon", epsilon=0).attribute(x, target=[1, 3, 2], return_convergence_delta=True)
    logits = m(x)[torch.arange(3), [1, 3, 2]]
    assert float((delta.abs() / logits.abs()).max()) < 1e-10


def test_rap_on_sequence_first_transformer_per_example():
    """RAP's per-example uniform shift finds the examples on axis 1 of a sequence-first
    encoder (nn.TransformerEncoder with batch_first=False): a batch equals single calls."""
    torch.manual_seed(15)
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0)

    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(3, 8)
            self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = nn.Linear(8, 4)

        def forward(self, x):  # (N, T, 3) batch first in, sequence first inside
            h = self.enc(self.inp(x).transpose(0, 1))
            return self.head(h.mean(0))

    m = Seq().double().eval()
    x = torch.randn(3, 5, 3, generator=torch.Generator().manual_seed(16), dtype=torch.float64)
    batch, delta = RAP(m).attribute(x, target=[0, 1, 3], return_convergence_delta=True)
    for i, t in enumerate([0, 1, 3]):
        single = RAP(m).attribute(x[i:i + 1], target=t)
        assert _err(_np(batch[i:i + 1]), _np(single)) < 1e-9
    assert float(delta.abs().max()) < 1e-8 * float(m(x).abs().max())
