"""The CD rules of activations, normalisations, products and attention against slow,
explicit references (``tests/_cd_slow.py``: Python loops over units, float64), at 1e-10;
``rel + irr`` equals the model's output; and each comparison is shown to fail when the
rule is planted wrong (``test_planted_bugs_are_caught``)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from captum_rap import CD, UnsupportedOperationError
from captum_rap._cd import tensor as cdt

import _cd_slow as slow

TOL = 1e-10


def _masks(shape, K=4, seed=0, full=True):
    g = torch.Generator().manual_seed(seed)
    m = (torch.rand((K,) + tuple(shape), generator=g) < 0.5).double()
    if full:
        m[0] = 1
        m[1] = 0
    return m


def _rel_err(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _err(rel, irr, ref):
    """Largest difference of the two parts from the reference ``(rel, irr)``, relative to
    the largest of the reference parts."""
    rel, irr = np.asarray(rel, dtype=np.float64), np.asarray(irr, dtype=np.float64)
    scale = max(np.abs(ref[0]).max(), np.abs(ref[1]).max(), 1e-30)
    return float(max(np.abs(rel - ref[0]).max(), np.abs(irr - ref[1]).max()) / scale)


def _check_conservation(model, x, rel, irr, tol=1e-12):
    with torch.no_grad():
        y = model(x)
    y = y[0] if isinstance(y, tuple) else y
    scale = max(float(y.abs().max()), 1e-30)
    assert float((rel + irr - y.reshape(1, -1)).abs().max()) <= tol * max(scale, 1.0)


# ------------------------------------------------------------------------------------
# element-wise activations
# ------------------------------------------------------------------------------------
ACTS = {
    "sigmoid": nn.Sigmoid(), "tanh": nn.Tanh(), "silu": nn.SiLU(), "gelu": nn.GELU(),
    "gelu_tanh": nn.GELU(approximate="tanh"), "hardswish": nn.Hardswish(), "hardsigmoid": nn.Hardsigmoid(),
    "elu": nn.ELU(alpha=0.7), "selu": nn.SELU(), "celu": nn.CELU(alpha=0.5),
    "softplus": nn.Softplus(beta=2.0, threshold=3.0), "mish": nn.Mish(), "softsign": nn.Softsign(),
    "logsigmoid": nn.LogSigmoid(), "tanhshrink": nn.Tanhshrink(), "hardshrink": nn.Hardshrink(0.4),
    "softshrink": nn.Softshrink(0.4), "leaky_relu": nn.LeakyReLU(0.1), "relu6": nn.ReLU6(),
}


def _mlp(act, seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(5, 6), act, nn.Linear(6, 3)).double().eval()
    with torch.no_grad():
        m[0].weight.mul_(3.0)  # pre-activations over the interesting range of f
        m[0].bias.normal_(0, 1.0)
    return m


def _mlp_ref(m, x, mask, f):
    rel0, irr0 = mask * x, (1 - mask) * x
    h = slow.linear(rel0, irr0, slow.np64(m[0].weight), slow.np64(m[0].bias))
    h = slow.elementwise(h[0], h[1], f)
    return slow.linear(h[0], h[1], slow.np64(m[2].weight), slow.np64(m[2].bias))


def _act_error(name):
    m = _mlp(ACTS[name])
    x = torch.randn(1, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    masks = _masks((5,), K=5)
    rel, irr = CD(m).decompose(x, masks)
    _check_conservation(m, x, rel, irr)
    err = 0.0
    for k in range(masks.shape[0]):
        ref = _mlp_ref(m, slow.np64(x[0]), slow.np64(masks[k]), slow.SCALAR_F[name])
        err = max(err, _err(rel[k].numpy(), irr[k].numpy(), ref))
    return err


@pytest.mark.parametrize("name", list(ACTS))
def test_elementwise_activation_matches_loop_reference(name):
    assert _act_error(name) <= TOL, name


def test_activation_full_mask_is_all_relevant_and_inplace_forms():
    m = nn.Sequential(nn.Linear(4, 4), nn.SiLU(inplace=True), nn.Hardswish(inplace=True), nn.ELU(inplace=True),
                      nn.Linear(4, 2)).double().eval()
    x = torch.randn(1, 4, dtype=torch.float64)
    rel, irr = CD(m).decompose(x, torch.ones(1, 4, dtype=torch.float64))
    assert float(irr.abs().max()) < 1e-12
    assert torch.allclose(rel, m(x), atol=1e-12)
    # functional and method forms
    f = lambda t: (torch.sigmoid(t) + t.tanh() + F.gelu(t) + t.sigmoid_()).sum(1, keepdim=True)  # noqa: E731
    r, i = CD(f).decompose(x, _masks((4,)))
    assert torch.allclose(r + i, f(x.clone()).expand_as(r), atol=1e-12)


# ------------------------------------------------------------------------------------
# normalisations
# ------------------------------------------------------------------------------------
class _LN(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.lin = nn.Linear(5, 6)
        self.conv = nn.Conv1d(2, 4, 3, padding=1)
        self.ln = nn.LayerNorm(6)
        self.ln2 = nn.LayerNorm((3, 6))
        self.gn = nn.GroupNorm(2, 4)
        self.inorm = nn.InstanceNorm1d(4, affine=True)
        self.inorm_rs = nn.InstanceNorm1d(4, affine=True, track_running_stats=True)
        self.rms = nn.RMSNorm(6, eps=1e-6)
        self.head = nn.Linear(18, 2)
        self.head_c = nn.Linear(20, 2)

    def forward(self, x):
        if self.kind in ("group", "instance", "instance_running"):
            h = self.conv(x.view(-1, 2, 5))
            h = {"group": self.gn, "instance": self.inorm, "instance_running": self.inorm_rs}[self.kind](h)
            return self.head_c(h.flatten(1))
        h = self.lin(x.view(-1, 3, 5))
        h = {"layer": self.ln, "layer2": self.ln2, "rms": self.rms,
             "normalize": lambda t: F.normalize(t, dim=-1)}[self.kind](h)
        return self.head(h.flatten(1))


def _randomize(m, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * (0.5 if "bias" in name else 1.0))
        for name, b in m.named_buffers():
            if "running_var" in name:
                b.copy_(0.5 + torch.rand(b.shape, generator=g, dtype=b.dtype))
            elif "running_mean" in name:
                b.copy_(torch.randn(b.shape, generator=g, dtype=b.dtype) * 0.3)
    return m


def _norm_ref(m, kind, x, mask):
    rel, irr = mask * x, (1 - mask) * x
    if kind in ("group", "instance", "instance_running"):
        h = slow.conv1d(rel.reshape(2, 5), irr.reshape(2, 5), slow.np64(m.conv.weight), slow.np64(m.conv.bias), 1)
        h = (h[0][None], h[1][None])
        if kind == "group":
            h = slow.group_norm(h[0], h[1], 2, slow.np64(m.gn.weight), slow.np64(m.gn.bias), m.gn.eps)
        elif kind == "instance":
            h = slow.group_norm(h[0], h[1], 4, slow.np64(m.inorm.weight), slow.np64(m.inorm.bias), m.inorm.eps)
        else:
            n = m.inorm_rs
            h = slow.batch_norm_eval(h[0], h[1], slow.np64(n.running_mean), slow.np64(n.running_var),
                                     slow.np64(n.weight), slow.np64(n.bias), n.eps)
        return slow.linear(h[0].reshape(-1), h[1].reshape(-1), slow.np64(m.head_c.weight), slow.np64(m.head_c.bias))
    h = slow.linear(rel.reshape(3, 5), irr.reshape(3, 5), slow.np64(m.lin.weight), slow.np64(m.lin.bias))
    if kind == "layer":
        h = slow.layer_norm(h[0], h[1], 1, slow.np64(m.ln.weight), slow.np64(m.ln.bias), m.ln.eps)
    elif kind == "layer2":
        h = slow.layer_norm(h[0], h[1], 2, slow.np64(m.ln2.weight), slow.np64(m.ln2.bias), m.ln2.eps)
    elif kind == "rms":
        h = slow.rms_norm(h[0], h[1], slow.np64(m.rms.weight), m.rms.eps)
    else:
        h = slow.l2_normalize(h[0], h[1])
    return slow.linear(h[0].reshape(-1), h[1].reshape(-1), slow.np64(m.head.weight), slow.np64(m.head.bias))


NORMS = ["layer", "layer2", "group", "instance", "instance_running", "rms", "normalize"]


def _norm_error(kind):
    m = _randomize(_LN(kind)).double().eval()
    x = torch.randn(1, 15 if kind not in ("group", "instance", "instance_running") else 10, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(2))
    masks = _masks(x.shape[1:], K=5)
    rel, irr = CD(m).decompose(x, masks)
    _check_conservation(m, x, rel, irr)
    err = 0.0
    for k in range(masks.shape[0]):
        ref = _norm_ref(m, kind, slow.np64(x[0]), slow.np64(masks[k]))
        err = max(err, _err(rel[k].numpy(), irr[k].numpy(), ref))
    return err


@pytest.mark.parametrize("kind", NORMS)
def test_normalisation_matches_loop_reference(kind):
    assert _norm_error(kind) <= TOL, kind


def test_normalisations_refuse_training_statistics_and_decomposed_weights():
    m = _LN("instance_running").double().train()
    x = torch.randn(1, 10, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(UnsupportedOperationError, match="instance_norm.*training mode"):
            CD(m).decompose(x, _masks((10,)))
    lin = nn.Linear(4, 4).double()
    f = lambda t: F.layer_norm(t, (4,), weight=lin(t))  # noqa: E731
    with pytest.raises(UnsupportedOperationError, match="layer_norm"):
        CD(f).decompose(torch.randn(1, 4, dtype=torch.float64), _masks((4,)))


# ------------------------------------------------------------------------------------
# products of decomposed tensors
# ------------------------------------------------------------------------------------
class _Gates(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(4, 6)
        self.c = nn.Linear(4, 8)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        if self.kind == "se":  # squeeze-and-excitation style gate
            h = torch.relu(self.a(x))
            return self.head(h * torch.sigmoid(self.b(x)))
        if self.kind == "glu":
            return self.head(F.pad(F.glu(self.c(x), -1), (0, 2)))
        if self.kind == "matmul":  # (2, 3) @ (3, 2) of two decomposed matrices
            p = self.a(x).reshape(-1, 2, 3)
            q = self.b(x).reshape(-1, 3, 2)
            return self.head(F.pad((p @ q).flatten(1), (0, 2)))
        if self.kind == "einsum":
            p = self.a(x).reshape(-1, 2, 3)
            q = self.b(x).reshape(-1, 3, 2)
            return self.head(F.pad(torch.einsum("bij,bjk->bik", p, q).flatten(1), (0, 2)))
        raise ValueError(self.kind)


def _gate_ref(m, kind, x, mask):
    rel, irr = mask * x, (1 - mask) * x

    def lin(mod, pair=(rel, irr)):
        return slow.linear(pair[0], pair[1], slow.np64(mod.weight), slow.np64(mod.bias))
    if kind == "se":
        h = lin(m.a)
        h = slow.elementwise(h[0], h[1], slow.SCALAR_F["relu"])
        g = lin(m.b)
        g = slow.elementwise(g[0], g[1], slow.SCALAR_F["sigmoid"])
        y = slow.product(h, g)
    elif kind == "glu":
        c = lin(m.c)
        s = slow.elementwise(c[0][4:], c[1][4:], slow.SCALAR_F["sigmoid"])
        y = slow.product((c[0][:4], c[1][:4]), s)
        y = (np.concatenate([y[0], [0, 0]]), np.concatenate([y[1], [0, 0]]))
    else:
        p, q = lin(m.a), lin(m.b)
        y = slow.matmul2((p[0].reshape(2, 3), p[1].reshape(2, 3)), (q[0].reshape(3, 2), q[1].reshape(3, 2)))
        y = (np.concatenate([y[0].reshape(-1), [0, 0]]), np.concatenate([y[1].reshape(-1), [0, 0]]))
    return lin(m.head, y)


def _gate_error(kind):
    torch.manual_seed(5)
    m = _Gates(kind).double().eval()
    x = torch.randn(1, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    masks = _masks((4,), K=5)
    rel, irr = CD(m).decompose(x, masks)
    _check_conservation(m, x, rel, irr)
    err = 0.0
    for k in range(masks.shape[0]):
        ref = _gate_ref(m, kind, slow.np64(x[0]), slow.np64(masks[k]))
        err = max(err, _err(rel[k].numpy(), irr[k].numpy(), ref))
    return err


@pytest.mark.parametrize("kind", ["se", "glu", "matmul", "einsum"])
def test_products_match_loop_reference(kind):
    assert _gate_error(kind) <= TOL, kind


# ------------------------------------------------------------------------------------
# attention
# ------------------------------------------------------------------------------------
class _MHA(nn.Module):
    def __init__(self, batch_first=True, bias_kv=False, zero_attn=False, mask=None, kpm=None):
        super().__init__()
        self.batch_first = batch_first
        self.inp = nn.Linear(3, 6)
        self.mha = nn.MultiheadAttention(6, 2, batch_first=batch_first, add_bias_kv=bias_kv,
                                         add_zero_attn=zero_attn)
        self.head = nn.Linear(6, 2)
        self.mask = mask
        self.kpm = kpm

    def forward(self, x):  # x: (B, L * 3)
        h = self.inp(x.reshape(x.shape[0], -1, 3))
        if not self.batch_first:
            h = h.transpose(0, 1)
        kpm = None if self.kpm is None else self.kpm.expand(h.shape[0 if self.batch_first else 1], -1)
        out, w = self.mha(h, h, h, attn_mask=self.mask, key_padding_mask=kpm, need_weights=False)
        if not self.batch_first:
            out = out.transpose(0, 1)
        return self.head(out.mean(1))


def _mha_ref(m, x, mask_vals, additive):
    L = x.size // 3
    rel, irr = mask_vals * x, (1 - mask_vals) * x
    h = slow.linear(rel.reshape(L, 3), irr.reshape(L, 3), slow.np64(m.inp.weight), slow.np64(m.inp.bias))
    o = slow.mha(h, m.mha, additive)
    pooled = (o[0].mean(0), o[1].mean(0))
    return slow.linear(pooled[0], pooled[1], slow.np64(m.head.weight), slow.np64(m.head.bias))


MHA_CASES = {
    "plain": {}, "seq_first": dict(batch_first=False), "bias_kv": dict(bias_kv=True),
    "zero_attn": dict(zero_attn=True), "bool_mask": "bool", "float_mask": "float", "key_padding": "kpm",
}


def _mha_error(case, seed=0):
    L = 4
    kw = MHA_CASES[case]
    additive = None
    if kw == "bool":
        bm = torch.tensor([[False, True, False, False], [False, False, True, True],
                           [True, False, False, False], [False, False, False, True]])
        kw = dict(mask=bm)
        additive = np.where(bm.numpy(), -np.inf, 0.0)
    elif kw == "float":
        fm = torch.randn(L, L, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
        kw = dict(mask=fm)
        additive = fm.numpy()
    elif kw == "kpm":
        kpm = torch.tensor([[False, False, True, False]])
        kw = dict(kpm=kpm)
        additive = np.tile(np.where(kpm.numpy(), -np.inf, 0.0), (L, 1))
    torch.manual_seed(seed)
    m = _MHA(**kw).double().eval()
    with torch.no_grad():
        m.mha.in_proj_bias.normal_(0, 0.5)
        m.mha.out_proj.bias.normal_(0, 0.5)
    x = torch.randn(1, 3 * L, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    masks = _masks((3 * L,), K=5)
    rel, irr = CD(m).decompose(x, masks)
    _check_conservation(m, x, rel, irr)
    err = 0.0
    for k in range(masks.shape[0]):
        ref = _mha_ref(m, slow.np64(x[0]), slow.np64(masks[k]), additive)
        err = max(err, _err(rel[k].numpy(), irr[k].numpy(), ref))
    return err


@pytest.mark.parametrize("case", list(MHA_CASES))
def test_multihead_attention_matches_loop_reference(case):
    assert _mha_error(case) <= TOL, case


class _SDPA(nn.Module):
    """q, k, v from linear maps, ``F.scaled_dot_product_attention`` or the same attention
    written out (``q @ k^T``, softmax, ``@ v``), two heads."""

    def __init__(self, mode, mask=None, causal=False, scale=None, gqa=False):
        super().__init__()
        self.mode, self.mask, self.causal, self.scale, self.gqa = mode, mask, causal, scale, gqa
        self.q = nn.Linear(3, 4)
        self.k = nn.Linear(3, 2 if gqa else 4)
        self.v = nn.Linear(3, 2 if gqa else 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        B = x.shape[0]
        h = x.reshape(B, -1, 3)
        L = h.shape[1]
        q = self.q(h).reshape(B, L, 2, 2).transpose(1, 2)
        hk = 1 if self.gqa else 2
        k = self.k(h).reshape(B, L, hk, 2).transpose(1, 2)
        v = self.v(h).reshape(B, L, hk, 2).transpose(1, 2)
        if self.mode == "sdpa":
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, is_causal=self.causal,
                                               scale=self.scale, enable_gqa=self.gqa)
        else:
            s = q @ k.transpose(-2, -1) * (self.scale or 1 / math.sqrt(2))
            if self.mask is not None:
                s = s.masked_fill(~self.mask, float("-inf")) if self.mask.dtype == torch.bool else s + self.mask
            p = torch.softmax(s, dim=-1)
            p = F.dropout(p, 0.1, training=False)
            o = torch.matmul(p, v)
        o = o.transpose(1, 2).reshape(B, L, 4)
        return self.head(o.mean(1))


def _sdpa_ref(m, x, mask_vals, additive):
    L = x.size // 3
    rel, irr = (mask_vals * x).reshape(L, 3), ((1 - mask_vals) * x).reshape(L, 3)

    def lin(mod):
        return slow.linear(rel, irr, slow.np64(mod.weight), slow.np64(mod.bias))
    q, k, v = lin(m.q), lin(m.k), lin(m.v)
    out_r, out_i = np.zeros((L, 4)), np.zeros((L, 4))
    for h in range(2):
        sq = slice(2 * h, 2 * h + 2)
        skv = slice(0, 2) if m.gqa else sq
        (o_r, o_i), _ = slow.attention((q[0][:, sq], q[1][:, sq]), (k[0][:, skv], k[1][:, skv]),
                                       (v[0][:, skv], v[1][:, skv]), m.scale or 1 / math.sqrt(2), additive)
        out_r[:, sq], out_i[:, sq] = o_r, o_i
    return slow.linear(out_r.mean(0), out_i.mean(0), slow.np64(m.head.weight), slow.np64(m.head.bias))


SDPA_CASES = ["plain", "bool_mask", "float_mask", "causal", "scale", "gqa"]


def _sdpa_error(case, mode="sdpa"):
    L = 4
    kw, additive = {}, None
    if case == "bool_mask":
        keep = torch.tensor([[True, False, True, True], [True, True, False, True],
                             [False, True, True, True], [True, True, True, False]])
        kw["mask"], additive = keep, np.where(keep.numpy(), 0.0, -np.inf)
    elif case == "float_mask":
        fm = torch.randn(L, L, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
        kw["mask"], additive = fm, fm.numpy()
    elif case == "causal":
        kw["causal"] = True
        additive = np.where(np.tril(np.ones((L, L))) > 0, 0.0, -np.inf)
    elif case == "scale":
        kw["scale"] = 0.37
    elif case == "gqa":
        kw["gqa"] = True
    if mode == "manual" and case == "causal":
        kw = {"mask": torch.ones(L, L, dtype=torch.bool).tril()}
    torch.manual_seed(11)
    m = _SDPA(mode, **kw).double().eval()
    x = torch.randn(1, 3 * L, dtype=torch.float64, generator=torch.Generator().manual_seed(12))
    masks = _masks((3 * L,), K=5)
    rel, irr = CD(m).decompose(x, masks)
    _check_conservation(m, x, rel, irr)
    err = 0.0
    for k in range(masks.shape[0]):
        ref = _sdpa_ref(m, slow.np64(x[0]), slow.np64(masks[k]), additive)
        err = max(err, _err(rel[k].numpy(), irr[k].numpy(), ref))
    return err


@pytest.mark.parametrize("case", SDPA_CASES)
def test_scaled_dot_product_attention_matches_loop_reference(case):
    assert _sdpa_error(case) <= TOL, case


@pytest.mark.parametrize("case", ["plain", "bool_mask", "float_mask", "causal", "scale"])
def test_written_out_attention_matches_loop_reference(case):
    """``q @ k^T``, ``softmax``, dropout and ``@ v`` written out: the product rule for
    ``q k^T``, attention weights of the total, linear in ``v``."""
    assert _sdpa_error(case, mode="manual") <= TOL, case


def test_softmax_is_attention_weights_only():
    lin = nn.Linear(4, 4).double().eval()
    x = torch.randn(1, 4, dtype=torch.float64)
    m = _masks((4,))
    for f, what in [(lambda t: torch.softmax(lin(t), -1), "output"),
                    (lambda t: torch.softmax(lin(t), -1) + lin(t), "add"),
                    (lambda t: torch.log(torch.softmax(lin(t), -1)), "log")]:
        with pytest.raises(UnsupportedOperationError, match="softmax"):
            CD(f).decompose(x, m)
    # weights times a decomposed tensor: linear in it; weights scaled / masked stay weights
    f = lambda t: (torch.softmax(lin(t), -1).masked_fill(torch.tensor([True, False, False, False]), 0.0)  # noqa: E731
                   * 2.0 * lin(t)).sum(-1, keepdim=True)
    r, i = CD(f).decompose(x, m)
    with torch.no_grad():
        y = f(x)
        p = torch.softmax(lin(x), -1).masked_fill(torch.tensor([True, False, False, False]), 0.0) * 2.0
    assert torch.allclose(r + i, y.expand_as(r), atol=1e-12)
    # rel = P * lin_rel (P of the total), lin_rel from the linear rule
    lr, _ = CD(lin).decompose(x, m)
    assert torch.allclose(r[:, 0], (p * lr).sum(-1), atol=1e-12)


def test_transformer_encoder_layer_matches_composed_loop_reference():
    """``nn.TransformerEncoderLayer`` (post- and pre-norm, ReLU / GELU, key padding) and a
    two-layer ``nn.TransformerEncoder``: the composition of the slow references of
    attention, layer norm, linear layers and activations."""
    L, E = 4, 6
    for norm_first, act, kpm in [(False, "relu", None), (True, "gelu", torch.tensor([[False, False, False, True]]))]:
        torch.manual_seed(13)
        layer = nn.TransformerEncoderLayer(E, 2, 8, 0.1, activation=act, batch_first=True, norm_first=norm_first)
        enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).double().eval()
        _randomize(enc, seed=14)
        head = nn.Linear(E, 2).double()

        def model(x):
            pad = None if kpm is None else kpm.expand(x.shape[0], -1)
            return head(enc(x.reshape(x.shape[0], L, E), src_key_padding_mask=pad).mean(1))

        x = torch.randn(1, L * E, dtype=torch.float64, generator=torch.Generator().manual_seed(15))
        masks = _masks((L * E,), K=3)
        rel, irr = CD(model).decompose(x, masks)
        _check_conservation(model, x, rel, irr, tol=1e-10)
        add = None if kpm is None else np.tile(np.where(kpm.numpy(), -np.inf, 0.0), (L, 1))
        for k in range(masks.shape[0]):
            mk = slow.np64(masks[k]).reshape(L, E)
            xv = slow.np64(x[0]).reshape(L, E)
            h = (mk * xv, (1 - mk) * xv)
            for lay in enc.layers:
                h = slow.encoder_layer(h, lay, add)
            ref = slow.linear(h[0].mean(0), h[1].mean(0), slow.np64(head.weight), slow.np64(head.bias))
            assert _err(rel[k].detach().numpy(), irr[k].detach().numpy(), ref) <= TOL, (norm_first, k)


# ------------------------------------------------------------------------------------
# the comparisons above fail when a rule is planted wrong
# ------------------------------------------------------------------------------------
def _plant(monkeypatch, name, fn):
    """Replace the handler of ``name`` (all its registered names) by ``fn``."""
    old = cdt._HANDLERS[name]
    for n, h in list(cdt._HANDLERS.items()):
        if h is old:
            monkeypatch.setitem(cdt._HANDLERS, n, fn)


def test_planted_bugs_are_caught(monkeypatch):
    from captum_rap._cd import attention as att
    from captum_rap._cd import norm, nonlinear

    def irr_first(func, name, args, kwargs):  # CD-T's prop_act order: f(irr) first
        out = nonlinear.elementwise(func, name, args, kwargs)
        x = args[0] if args else kwargs["input"]
        fi = nonlinear.elementwise(func, name, (cdt._new(x.irr, x.irr, False, True),) + tuple(args[1:]), kwargs)
        return cdt._new(out.tot - fi.tot, out.tot, False, True)

    with monkeypatch.context() as mp:
        _plant(mp, "gelu", irr_first)
        assert _act_error("gelu") > 1e-6
        assert _act_error("sigmoid") > 1e-6

    def ln_stats_of_parts(func, name, args, kwargs):  # statistics of each part (wrong)
        x = args[0]
        shape, w, b, eps = args[1], kwargs.get("weight"), kwargs.get("bias"), kwargs.get("eps", 1e-5)
        r = F.layer_norm(x.rel, shape, w, None, eps)
        t = F.layer_norm(x.tot, shape, w, b, eps)
        return cdt._new(r, t, False, True)

    with monkeypatch.context() as mp:
        _plant(mp, "layer_norm", ln_stats_of_parts)
        assert _norm_error("layer") > 1e-6

    def bias_to_rel(func, name, args, kwargs):  # whole bias to rel
        out = norm.rms_norm(func, name, args, kwargs)
        return cdt._new(out.rel * 1.01, out.tot, False, True)

    with monkeypatch.context() as mp:
        _plant(mp, "rms_norm", bias_to_rel)
        assert _norm_error("rms") > 1e-6

    def product_symmetric(func, name, args, kwargs):  # half of the cross terms to rel (wrong)
        out = att.product(func, name, args, kwargs)
        if len([a for a in args if cdt._is_cd(a)]) < 2:
            return out
        a, b = args
        f, _ = cdt._oop_func(func, name)
        extra = 0.5 * (f(a.rel, b.irr) + f(a.irr, b.rel))
        return cdt._new(out.rel + extra, out.tot, False, True)

    with monkeypatch.context() as mp:
        _plant(mp, "mul", product_symmetric)
        assert _gate_error("se") > 1e-6

    def weights_of_rel(q, k, v, mask_add, mask_keep, scale, causal, gqa):  # pattern of the relevant part
        out, P = real_attend(q, k, v, mask_add, mask_keep, scale, causal, gqa)
        sc = scale or 1 / math.sqrt(q.shape[-1])
        s = q.rel @ k.rel.transpose(-2, -1) * sc
        if mask_add is not None:
            s = s + mask_add
        if mask_keep is not None:
            s = s.masked_fill(~mask_keep, float("-inf"))
        if causal:
            s = s.masked_fill(~torch.ones(s.shape[-2:], dtype=torch.bool).tril(), float("-inf"))
        if gqa:
            return out, P
        return cdt._new(torch.softmax(s, -1) @ v.rel, out.tot, False, True), P

    real_attend = att._attend
    with monkeypatch.context() as mp:
        mp.setattr(att, "_attend", weights_of_rel)
        assert _sdpa_error("plain") > 1e-6
        assert _sdpa_error("causal") > 1e-6
        assert _mha_error("plain") > 1e-6
        assert _mha_error("key_padding") > 1e-6
    # and unpatched, all agree
    assert _act_error("gelu") <= TOL and _norm_error("layer") <= TOL and _gate_error("se") <= TOL
    assert _sdpa_error("plain") <= TOL and _mha_error("plain") <= TOL
