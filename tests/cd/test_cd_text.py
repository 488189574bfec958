"""CD of LSTM text classifiers against an explicit, slow loop form of the reference's
``cd_text`` rules (``reference/CD_ACD.md`` section 3), on random weights with large biases
and on tokens whose embedding is zero (``padding_idx``); plus the argument edge cases."""

import numpy as np
import pytest
import torch
from torch import nn

from captum_rap import CD, UnsupportedOperationError


def _sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def _three(a, b, c, f):
    """Bias-first three-term linearisation, averaged over the two orders of a and b."""
    return (0.5 * ((f(a + c) - f(c)) + (f(a + b + c) - f(b + c))),
            0.5 * ((f(b + c) - f(c)) + (f(a + b + c) - f(a + c))),
            f(c))


def cd_text_loop(vecs, lstm, head, start, stop):
    """Relevant / irrelevant scores ``W_out h_T`` (no output bias) of the phrase
    ``[start, stop]`` (inclusive) for word vectors ``vecs`` (T, E), one time step and one
    gate at a time in float64 numpy."""
    W_ih = lstm.weight_ih_l0.detach().double().numpy()
    W_hh = lstm.weight_hh_l0.detach().double().numpy()
    b = (lstm.bias_ih_l0 + lstm.bias_hh_l0).detach().double().numpy()
    H = W_hh.shape[1]
    gi, gf, gg, go = (slice(k * H, (k + 1) * H) for k in range(4))
    h_rel, h_irr = np.zeros(H), np.zeros(H)
    c_rel, c_irr = np.zeros(H), np.zeros(H)
    for t in range(vecs.shape[0]):
        x = vecs[t]
        inside = start <= t <= stop
        pre_r = W_hh @ h_rel + (W_ih @ x if inside else 0.0)
        pre_i = W_hh @ h_irr + (0.0 if inside else W_ih @ x)
        i_r, i_i, i_b = _three(pre_r[gi], pre_i[gi], b[gi], _sig)
        f_r, f_i, f_b = _three(pre_r[gf], pre_i[gf], b[gf], _sig)
        g_r, g_i, g_b = _three(pre_r[gg], pre_i[gg], b[gg], np.tanh)
        new_rel = i_r * (g_r + g_b) + i_b * g_r
        new_irr = i_i * (g_r + g_i + g_b) + (i_r + i_b) * g_i
        if inside:
            new_rel = new_rel + i_b * g_b
        else:
            new_irr = new_irr + i_b * g_b
        if t > 0:
            new_rel, new_irr = (new_rel + (f_r + f_b) * c_rel,
                                new_irr + (f_r + f_i + f_b) * c_irr + f_i * c_rel)
        o = _sig(W_ih[go] @ x + W_hh[go] @ (h_rel + h_irr) + b[go])
        c_rel, c_irr = new_rel, new_irr
        h_rel = o * 0.5 * (np.tanh(c_rel) + np.tanh(c_rel + c_irr) - np.tanh(c_irr))
        h_irr = o * 0.5 * (np.tanh(c_irr) + np.tanh(c_rel + c_irr) - np.tanh(c_rel))
    W = head.weight.detach().double().numpy()
    return W @ h_rel, W @ h_irr


class _Sent(nn.Module):
    """embed -> LSTM -> last step -> linear; ``layout``: ``seq`` (T, B) ids, ``bf``
    (B, T) ids and a batch_first LSTM, ``bf_t`` (B, T) ids transposed for a sequence-first
    LSTM (after a dropout)."""

    def __init__(self, layout="seq", V=40, E=6, H=7, C=3):
        super().__init__()
        self.layout = layout
        self.embed = nn.Embedding(V, E, padding_idx=0)
        self.drop = nn.Dropout(0.3)
        self.lstm = nn.LSTM(E, H, batch_first=layout == "bf")
        self.head = nn.Linear(H, C)

    def forward(self, ids):
        e = self.embed(ids)
        if self.layout == "bf_t":
            e = self.drop(e).transpose(0, 1)
        out, _ = self.lstm(e)
        return self.head(out[:, -1] if self.layout == "bf" else out[-1])


def _random(m, seed=0, bias_scale=1.5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (bias_scale if "bias" in n else 0.6))
        m.embed.weight[0] = 0  # the padding row, as nn.Embedding(padding_idx=0) has it
    return m.double().eval()


IDS = [5, 12, 0, 7, 31, 0, 9, 0]  # pad tokens (zero embedding) inside and at the end
SPANS = [(0, 7), (1, 3), (2, 2), (4, 6), (5, 7), (3, 3)]


@pytest.mark.parametrize("layout", ["seq", "bf", "bf_t"])
def test_reference_mode_matches_the_loop_form_with_zero_embeddings(layout):
    m = _random(_Sent(layout))
    ids = torch.tensor(IDS)
    x = ids[:, None] if layout == "seq" else ids[None, :]
    cd = CD(m, batch_dim=1 if layout == "seq" else 0, reference_compatible=True)
    rel, irr = cd.decompose(x, spans=SPANS)
    vecs = m.embed(ids).detach().numpy()
    for k, (a, b) in enumerate(SPANS):
        r, i = cd_text_loop(vecs, m.lstm, m.head, a, b)
        np.testing.assert_allclose(rel[k].numpy(), r, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(irr[k].numpy(), i, rtol=1e-10, atol=1e-12)
    # whole sentence: everything relevant; no position: nothing
    assert irr[0].abs().max() < 1e-12
    r0, _ = cd.decompose(x, torch.zeros(1, len(IDS)))
    assert r0.abs().max() < 1e-12


@pytest.mark.parametrize("layout", ["seq", "bf_t"])
def test_default_mode_whole_sentence_with_zero_embeddings(layout):
    m = _random(_Sent(layout), seed=1)
    ids = torch.tensor(IDS)
    x = ids[:, None] if layout == "seq" else ids[None, :]
    rel, irr = CD(m, batch_dim=1 if layout == "seq" else 0).decompose(x, spans=SPANS)
    out = m(x).detach()
    assert torch.allclose(rel + irr, out.expand_as(rel), atol=1e-12)
    assert irr[0].abs().max() < 1e-12  # the whole sentence is relevant, pads included
    # an empty phrase keeps only the head's bias share (tiny: its W h^rel is 0)
    r0, _ = CD(m, batch_dim=1 if layout == "seq" else 0).decompose(x, torch.zeros(1, len(IDS)))
    assert r0.abs().max() < 1e-12


class _DeepHead(nn.Module):
    def __init__(self, tail):
        super().__init__()
        self.tail = tail
        self.embed = nn.Embedding(40, 6)
        self.lstm = nn.LSTM(6, 7)
        self.fc1 = nn.Linear(7, 7)
        self.fc = nn.Linear(7, 3)

    def forward(self, ids):
        _, (h, _) = self.lstm(self.embed(ids))
        z = self.fc(torch.relu(self.fc1(h[-1])))
        if self.tail == "squeeze":
            z = z.squeeze(0) if z.shape[0] == 1 else z
        elif self.tail == "plus_const":
            z = 2.0 + z
        elif self.tail == "iadd":
            z += 1.0
        return z


@pytest.mark.parametrize("tail", ["none", "squeeze", "plus_const", "iadd"])
@pytest.mark.parametrize("batch_size", [1, None])
def test_reference_mode_output_bias_only_in_neither_part(tail, batch_size):
    """Only the output layer's bias is left out (cd_text's head); hidden layers' biases
    are split as in the CNN rules, so ``rel + irr = logits - b_out``."""
    m = _random(_DeepHead(tail), seed=2)
    ids = torch.tensor(IDS)[:, None]
    rel, irr = CD(m, batch_dim=1, reference_compatible=True, batch_size=batch_size).decompose(
        ids, spans=[(0, 7), (1, 2)])
    out = m(ids).detach().reshape(1, -1)
    assert torch.allclose(rel + irr, (out - m.fc.bias.detach()).expand_as(rel), atol=1e-12)
    # the hidden bias is in the decomposition: setting it to 0 changes the sum
    with torch.no_grad():
        m.fc1.bias.zero_()
    rel0, irr0 = CD(m, batch_dim=1, reference_compatible=True).decompose(ids, spans=[(0, 7)])
    assert not torch.allclose(rel0 + irr0, rel[:1] + irr[:1], atol=1e-6)


def test_no_masks_negative_batch_dim_and_packed_sequences():
    m = _random(_Sent("seq"), seed=3)
    ids = torch.tensor(IDS)[:, None]
    rel, irr = CD(m, batch_dim=1).decompose(ids, spans=[])
    assert rel.shape == irr.shape == (0, 3)
    a = CD(m, batch_dim=1).decompose(ids, spans=[(1, 3), (0, 7)])
    b = CD(m, batch_dim=-1).decompose(ids, spans=[(1, 3), (0, 7)])
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="batch_dim=2"):
        CD(m, batch_dim=2).decompose(ids, spans=[(1, 3)])

    class Packed(nn.Module):
        def __init__(self, sort):
            super().__init__()
            self.sort, self.embed, self.lstm = sort, nn.Embedding(40, 6), nn.LSTM(6, 7)

        def forward(self, x, lengths):
            p = nn.utils.rnn.pack_padded_sequence(self.embed(x), lengths, enforce_sorted=self.sort)
            return self.lstm(p)[1][0][-1]

    for sort in (True, False):
        with pytest.raises(UnsupportedOperationError, match="packed sequences"):
            CD(Packed(sort).eval(), batch_dim=1).decompose(ids, spans=[(0, 2)],
                                                          additional_forward_args=(torch.tensor([8]),))


def test_batch_first_initial_state_argument_hint_and_batch_size_one():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.lstm, self.fc = nn.Embedding(40, 6), nn.LSTM(6, 7, batch_first=True), nn.Linear(7, 3)

        def forward(self, x, h0, c0):
            return self.fc(self.lstm(self.embed(x), (h0, c0))[0][:, -1])

    torch.manual_seed(0)
    m = Net().double().eval()
    ids = torch.tensor(IDS)[None, :]
    h0, c0 = torch.randn(1, 1, 7, dtype=torch.float64), torch.randn(1, 1, 7, dtype=torch.float64)
    # h0 (1, 1, H) is repeated along its layer axis: the batching check finds that the
    # batched forward fails and falls back to one mask per forward, with a warning
    cd = CD(m)
    with pytest.warns(RuntimeWarning, match="additional_forward_args"):
        rel, irr = cd.decompose(ids, spans=[(0, 2), (3, 6)], additional_forward_args=(h0, c0))
    assert cd.batching_error == float("inf")
    one, _ = CD(m).decompose(ids, spans=[(3, 6)], additional_forward_args=(h0, c0))
    assert torch.equal(rel[1:], one)
    assert torch.allclose(rel + irr, m(ids, h0, c0).detach().expand_as(rel), atol=1e-12)
    # without the check, the failure names the workaround
    with pytest.raises(RuntimeError, match="batch_size=1"):
        CD(m, check_batching=False).decompose(ids, spans=[(0, 2), (3, 6)], additional_forward_args=(h0, c0))
    r1, _ = CD(m, batch_size=1).decompose(ids, spans=[(0, 2), (3, 6)], additional_forward_args=(h0, c0))
    assert torch.equal(r1, rel)
