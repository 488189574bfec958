"""CD and ACD on transformer text classifiers: ``nn.Embedding`` + ``nn.TransformerEncoder``
and Hugging Face BERT (random configuration, eager and SDPA attention) against slow,
explicit references composed from ``tests/_cd_slow.py`` (float64, 1e-10); phrase masks
over token positions, batched; ACD text hierarchies; the shipped Rotten Tomatoes
transformer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import _cd_slow as slow
from captum_rap import ACD, CD
from captum_rap._core.cd import spans_to_masks

TOL = 1e-10


def _err(rel, irr, ref):
    rel, irr = np.asarray(rel, dtype=np.float64), np.asarray(irr, dtype=np.float64)
    scale = max(np.abs(ref[0]).max(), np.abs(ref[1]).max(), 1e-30)
    return float(max(np.abs(rel - ref[0]).max(), np.abs(irr - ref[1]).max()) / scale)


def _randomize(m, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * (0.3 if "bias" in name else 0.5))
    return m


class TokenTransformer(nn.Module):
    """Embedding + learned positions -> TransformerEncoder -> mean -> linear; ``(B, T)``
    ids (batch first) or ``(T, B)`` (``seq_first``)."""

    def __init__(self, vocab=30, d=8, heads=2, layers=2, classes=3, norm_first=False, act="gelu",
                 seq_first=False):
        super().__init__()
        self.seq_first = seq_first
        self.embed = nn.Embedding(vocab, d, padding_idx=1)
        self.pos = nn.Parameter(torch.zeros(16, d))
        layer = nn.TransformerEncoderLayer(d, heads, 12, 0.1, activation=act, batch_first=not seq_first,
                                           norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, ids):
        if self.seq_first:  # (T, B)
            h = self.embed(ids) + self.pos[:ids.shape[0]].unsqueeze(1)
            return self.head(self.encoder(h).mean(0))
        h = self.embed(ids) + self.pos[:ids.shape[1]]
        return self.head(self.encoder(h).mean(1))


def _token_model_ref(m, ids, mask):
    """Slow CD of :class:`TokenTransformer`: ``rel_0 = m_t (E[x_t] + pos_t)``, the encoder
    layers, the mean and the head."""
    E = slow.np64(m.embed.weight)[ids] + slow.np64(m.pos)[:len(ids)]
    mk = mask[:, None]
    h = (mk * E, (1 - mk) * E)
    for lay in m.encoder.layers:
        h = slow.encoder_layer(h, lay)
    return slow.linear(h[0].mean(0), h[1].mean(0), slow.np64(m.head.weight), slow.np64(m.head.bias))


SPANS = [(0, 6), (2, 4), (5, 5), (0, 0), (3, 6)]


@pytest.mark.parametrize("norm_first,act,seq_first", [(False, "gelu", False), (True, "relu", True)])
def test_token_transformer_matches_slow_reference(norm_first, act, seq_first):
    torch.manual_seed(0)
    m = _randomize(TokenTransformer(norm_first=norm_first, act=act, seq_first=seq_first), 1).double().eval()
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(2, 30, (1, 7), generator=g)
    x = ids.t() if seq_first else ids
    cd = CD(m, batch_dim=1 if seq_first else 0)
    rel, irr = cd.decompose(x, spans=SPANS)
    with torch.no_grad():
        y = m(x)
    assert float((rel + irr - y).abs().max()) <= 1e-12 * float(y.abs().max())
    # the whole sentence is relevant: position embeddings belong to their tokens
    assert float(irr[0].abs().max()) <= 1e-10 * float(y.abs().max())
    masks = spans_to_masks(SPANS, 7, dtype=torch.float64)
    for k in range(len(SPANS)):
        ref = _token_model_ref(m, ids[0].numpy(), masks[k].numpy())
        assert _err(rel[k].numpy(), irr[k].numpy(), ref) <= TOL, SPANS[k]
    # batched == one mask per forward
    r1, i1 = CD(m, batch_dim=1 if seq_first else 0, batch_size=1).decompose(x, spans=SPANS)
    assert torch.allclose(r1, rel, atol=1e-13) and torch.allclose(i1, irr, atol=1e-13)


@pytest.mark.parametrize("arch", ["token_transformer", "bert_eager", "bert_sdpa"])
def test_total_is_computed_once(arch):
    """The total of the decomposition (the unmasked activation) is computed on one row for
    all masks: one mask costs a relevant stream and the total (about two forwards), each
    further mask one relevant stream (flop count; computing the total per mask -- e.g.
    after adding segment embeddings of expanded ids, or through written-out attention --
    would make K masks cost K times one mask)."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    if arch == "token_transformer":
        m = _randomize(TokenTransformer(d=16, layers=2), 1).double().eval()
    else:
        m = _bert(arch.split("_")[1])
    ids = torch.randint(2, 30, (1, 12))
    flops = {}
    for K in (1, 6):
        masks = (torch.rand(K, 12, generator=torch.Generator().manual_seed(K)) < 0.5).double()
        with FlopCounterMode(display=False) as fc:
            CD(m, check_batching=False).decompose(ids, masks)
        flops[K] = fc.get_total_flops()
    assert flops[6] <= (6 + 1) / 2 * flops[1] * 1.05, flops[6] / flops[1]


# ------------------------------------------------------------------------------------
# Hugging Face BERT (random configuration)
# ------------------------------------------------------------------------------------
def _bert(impl, seed=0):
    tr = pytest.importorskip("transformers")
    cfg = tr.BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=12, max_position_embeddings=16, num_labels=3,
                        attn_implementation=impl)
    torch.manual_seed(seed)
    m = tr.BertForSequenceClassification(cfg).double().eval()
    _randomize(m, seed + 1)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.LayerNorm):
                mod.weight.add_(1.0)
    return m


def _bert_ref(m, ids, mask, pad=None):
    """Slow CD of ``BertForSequenceClassification``: the embedding vector of a position
    (word + position + segment) relevant iff the position is in the mask, then the
    layers (self-attention with the weights of the total, dense + residual + layer
    norm, GELU feed-forward), the pooler (dense + tanh of the first token) and the
    classifier."""
    b = m.bert
    T = len(ids)
    E = slow.np64(b.embeddings.word_embeddings.weight)[ids] + slow.np64(b.embeddings.position_embeddings.weight)[:T] \
        + slow.np64(b.embeddings.token_type_embeddings.weight)[0]
    mk = mask[:, None]
    h = (mk * E, (1 - mk) * E)

    def ln(p, mod):
        return slow.layer_norm(p[0], p[1], 1, slow.np64(mod.weight), slow.np64(mod.bias), mod.eps)

    def lin(p, mod):
        return slow.linear(p[0], p[1], slow.np64(mod.weight), slow.np64(mod.bias))
    h = ln(h, b.embeddings.LayerNorm)
    add = None if pad is None else np.tile(np.where(pad, -np.inf, 0.0), (T, 1))
    H = m.config.num_attention_heads
    hd = m.config.hidden_size // H
    for layer in b.encoder.layer:
        sa = layer.attention.self
        q, k, v = lin(h, sa.query), lin(h, sa.key), lin(h, sa.value)
        ar, ai = np.zeros_like(q[0]), np.zeros_like(q[1])
        for hh in range(H):
            s = slice(hh * hd, (hh + 1) * hd)
            (o_r, o_i), _ = slow.attention((q[0][:, s], q[1][:, s]), (k[0][:, s], k[1][:, s]),
                                           (v[0][:, s], v[1][:, s]), 1 / np.sqrt(hd), add)
            ar[:, s], ai[:, s] = o_r, o_i
        a = ln(slow.add(lin((ar, ai), layer.attention.output.dense), h), layer.attention.output.LayerNorm)
        f = lin(a, layer.intermediate.dense)
        f = slow.elementwise(f[0], f[1], slow.SCALAR_F["gelu"])
        h = ln(slow.add(lin(f, layer.output.dense), a), layer.output.LayerNorm)
    p = lin((h[0][0], h[1][0]), b.pooler.dense)
    p = slow.elementwise(p[0], p[1], np.tanh)
    return lin(p, m.classifier)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_hf_bert_matches_slow_reference(impl):
    m = _bert(impl)
    ids = torch.randint(2, 40, (1, 7), generator=torch.Generator().manual_seed(3))
    rel, irr = CD(m).decompose(ids, spans=SPANS)
    with torch.no_grad():
        y = m(ids).logits
    scale = float(y.abs().max())
    assert float((rel + irr - y).abs().max()) <= 1e-12 * scale
    assert float(irr[0].abs().max()) <= 1e-10 * scale  # whole sentence: rel = logits
    masks = spans_to_masks(SPANS, 7, dtype=torch.float64)
    for k in range(len(SPANS)):
        ref = _bert_ref(m, ids[0].numpy(), masks[k].numpy())
        assert _err(rel[k].numpy(), irr[k].numpy(), ref) <= TOL, (impl, SPANS[k])


def test_hf_bert_attention_mask_padding_and_eager_equals_sdpa():
    ids = torch.randint(2, 40, (1, 7), generator=torch.Generator().manual_seed(4))
    ids[0, 5:] = 0  # padding
    att = torch.ones(1, 7, dtype=torch.long)
    att[0, 5:] = 0
    res = {}
    for impl in ("eager", "sdpa"):
        m = _bert(impl)
        rel, irr = CD(m).decompose(ids, spans=SPANS[:3], additional_forward_args=(att,))
        with torch.no_grad():
            y = m(ids, att).logits
        assert float((rel + irr - y).abs().max()) <= 1e-12 * float(y.abs().max())
        res[impl] = rel
        masks = spans_to_masks(SPANS[:3], 7, dtype=torch.float64)
        for k in range(3):
            ref = _bert_ref(m, ids[0].numpy(), masks[k].numpy(), pad=(att[0] == 0).numpy())
            assert _err(rel[k].numpy(), irr[k].numpy(), ref) <= TOL, (impl, k)
    assert torch.allclose(res["eager"], res["sdpa"], atol=1e-12)


def test_acd_text_hierarchies_on_transformers():
    torch.manual_seed(0)
    m = _randomize(TokenTransformer(classes=2), 5).double().eval()
    ids = torch.randint(2, 30, (1, 9), generator=torch.Generator().manual_seed(6))
    h = ACD(m).hierarchy_text(ids, words=["w%d" % i for i in range(9)], percentile_include=80, num_iters=10)
    assert h.kind == "text" and len(h.levels) >= 2
    assert sorted(h.levels[0]) and h.unit_scores.shape == (9,)
    # every phrase score is its CD score: rel[target] - rel[other]
    cd = CD(m)
    for lev in h.levels[1:]:
        for g in lev.values():
            r, _ = cd.decompose(ids, torch.from_numpy(g.mask.astype(np.float64))[None])
            assert abs(float(r[0, h.target] - r[0, 1 - h.target]) - g.score) < 1e-9
    b = _bert("sdpa")
    hb = ACD(b).hierarchy_text(ids[:, :7] + 3, percentile_include=80, num_iters=5)
    assert len(hb.levels) >= 1 and np.isfinite(hb.unit_scores).all()


def test_rotten_tomatoes_transformer_demo():
    from captum_rap.zoo import rotten_tomatoes_transformer

    tm = rotten_tomatoes_transformer()
    assert tm.test_accuracy > 0.6
    assert sum(p.numel() for p in tm.model.parameters()) * 2 <= 5 * 2 ** 20
    ids, words = tm.encode(tm.examples[0])
    assert ids.shape == (len(words), 1)
    cd = CD(tm.model, batch_dim=1)
    T = len(words)
    rel, irr = cd.decompose(ids, spans=[(0, T - 1)] + [(t, t) for t in range(T)])
    with torch.no_grad():
        y = tm.model(ids)
    assert float((rel + irr - y).abs().max()) <= 1e-4 * float(y.abs().max())
    assert float(irr[0].abs().max()) <= 1e-4 * float(y.abs().max())  # whole sentence
    tree = ACD(tm.model, batch_dim=1).hierarchy_text(ids, words=words)
    assert tree.words == words and len(tree.levels) >= 2


def test_insights_text_view_shows_the_transformer_next_to_the_lstm():
    pytest.importorskip("flask")
    from captum_rap.insights.demo import demo_text_visualizer
    from captum_rap.zoo import rotten_tomatoes_transformer

    tm = rotten_tomatoes_transformer()
    vis = demo_text_visualizer(tm.examples[:2])
    assert [type(m).__name__ for m in vis.models] == ["RottenTomatoesLSTM", "RottenTomatoesTransformer"]
    out = vis.acd(1, {}, 0)
    ids, words = tm.encode(tm.examples[0])
    h = ACD(tm.model, batch_dim=1).hierarchy_text(ids, words=words)
    assert out["kind"] == "text" and out["words"] == words and out["target"] == h.target
    assert len(out["levels"]) == len(h.levels)
    # level 0: each word's group (a word, or a phrase of words selected together)
    level0 = [next(g.score for g in h.levels[0].values() if g.mask[t]) for t in range(len(words))]
    assert out["levels"][0]["scores"] == pytest.approx(level0, abs=1e-5)
    res = vis.attribute(1, "CD", {}, [0], target=1)["results"][0]["features"][0]
    rel, _ = CD(tm.model, batch_dim=1).decompose(ids, masks=torch.eye(len(words)))
    assert res["scores"] == pytest.approx(rel[:, 1].tolist(), abs=1e-5)
    with pytest.raises(ValueError, match="models"):
        demo_text_visualizer(models=("gru",))
