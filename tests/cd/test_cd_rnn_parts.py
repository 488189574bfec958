"""CD through LSTMs and GRUs: the relevant and the irrelevant part *each* against the loop
form (``_rnn_reference.py``), not only their sum, for multi-layer, bidirectional,
``batch_first`` recurrent layers, in the default mode (output head splits its bias) and in
``reference_compatible`` mode (output bias in neither part, as the reference's
``cd_text``).  Random weights with large biases, so the bias terms matter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from captum_rap import CD

from _rnn_reference import head_split, rnn_loop

TOL = 1e-10  # float64; measured agreement ~1e-15


class Net(nn.Module):
    """embed -> (multi-layer, bidirectional, batch_first) LSTM / GRU -> mean over time -> head."""

    def __init__(self, kind, layers=2, bidirectional=True, batch_first=True):
        super().__init__()
        self.batch_first = batch_first
        self.embed = nn.Embedding(30, 5)
        rnn = nn.LSTM if kind == "lstm" else nn.GRU
        self.rnn = rnn(5, 4, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first)
        self.head = nn.Linear(4 * (2 if bidirectional else 1), 3)

    def forward(self, ids):
        out = self.rnn(self.embed(ids))[0]
        return self.head(out.mean(1 if self.batch_first else 0))


def _random(m, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (1.0 if "bias" in n else 0.5))
    return m.double().eval()


SPANS = [(0, 6), (1, 3), (4, 4), (0, 0), (5, 6)]


@pytest.mark.parametrize("kind,layers,bidir,bf", [("lstm", 2, True, True), ("gru", 2, True, True),
                                                  ("lstm", 1, False, False), ("gru", 3, False, False)])
def test_parts_against_loop_form(kind, layers, bidir, bf):
    m = _random(Net(kind, layers, bidir, bf), seed=layers + 7 * bidir + (kind == "gru"))
    ids = torch.tensor([3, 17, 9, 0, 25, 11, 4])
    x = ids[None, :] if bf else ids[:, None]
    bd = 0 if bf else 1
    rel, irr = CD(m, batch_dim=bd).decompose(x, spans=SPANS)
    ref_rel, ref_irr = CD(m, batch_dim=bd, reference_compatible=True).decompose(x, spans=SPANS)
    e = m.embed(ids).detach().numpy()
    W, b = m.head.weight.detach().numpy(), m.head.bias.detach().numpy()
    with torch.no_grad():
        scale = float(m(x).abs().max())
    for k, (a, z) in enumerate(SPANS):
        inside = np.zeros(len(ids))
        inside[a:z + 1] = 1
        o_r, o_i = rnn_loop(m.rnn, inside[:, None] * e, (1 - inside[:, None]) * e, inside)
        h_r, h_i = o_r.mean(0), o_i.mean(0)
        want_r, want_i = head_split(W, b, h_r, h_i)
        assert np.abs(rel[k].numpy() - want_r).max() < TOL * scale, (kind, k)
        assert np.abs(irr[k].numpy() - want_i).max() < TOL * scale, (kind, k)
        # reference_compatible: the same recurrent parts, the head's bias in neither part
        assert np.abs(ref_rel[k].numpy() - W @ h_r).max() < TOL * scale, (kind, k)
        assert np.abs(ref_irr[k].numpy() - W @ h_i).max() < TOL * scale, (kind, k)
