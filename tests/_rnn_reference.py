"""Loop form of CD through ``nn.LSTM`` / ``nn.GRU`` (any number of layers, bidirectional):
float64 numpy, one time step and one gate at a time, ``rel`` and ``irr`` carried separately.

LSTM cell: the reference's ``cd_text`` rules (``../shared/reference/CD_ACD.md`` section 3):
gate pre-activations ``W_i x^rel + W_h h^rel`` / ``W_i x^irr + W_h h^irr`` / bias ``b_ih +
b_hh``; input, forget and cell gates by the three-term rule (bias first, the two orders of
the other two terms averaged); output gate not decomposed; cell ``rel = i_r (g_r + g_b) +
i_b g_r``, ``irr = i_i (g_r + g_i + g_b) + (i_r + i_b) g_i``, the ``bias x bias`` term ``i_b
g_b`` to ``rel`` inside the phrase and to ``irr`` outside; ``c^rel += (f_r + f_b) c^rel``,
``c^irr += (f_r + f_i + f_b) c^irr + f_i c^rel``; ``h^rel = o (tanh c^rel + tanh c - tanh
c^irr) / 2`` and symmetrically.  Layers above the first, where "inside the phrase" is not
defined, weight the ``bias x bias`` term by the relevant share of the input,
``|x^rel|_1 / (|x^rel|_1 + |x^irr|_1)`` (captum_rap's documented extension, equal to the
mask on the first layer).  The reverse direction runs the same recurrence on the reversed
sequence.

GRU (no reference implementation exists; captum_rap's documented conventions, see
``captum_rap/_cd/lstm.py``): ``r``, ``z`` and the candidate ``n`` by the three-term rule; the
products ``r * (W_hn h + b_hn)`` and ``(1 - z) * n`` with the LSTM cell's convention
(relevant-first, ``bias x bias`` by the relevant share), ``h' = (1 - z) n + z h`` with
``z h``: ``rel = (z_r + z_b) h^rel``, ``irr = (z_r + z_i + z_b) h^irr + z_i h^rel``.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-20


def sig(v):
    return 1.0 / (1.0 + np.exp(-v))


def three(a, b, c, f):
    return (0.5 * ((f(a + c) - f(c)) + (f(a + b + c) - f(b + c))),
            0.5 * ((f(b + c) - f(c)) + (f(a + b + c) - f(a + c))),
            f(c))


def product(a, b, w):
    """``a * b`` of two decomposed values ``(rel, irr, bias)``."""
    ar, ai, ab = a
    br, bi, bb = b
    rel = ar * (br + bb) + ab * br + w * ab * bb
    irr = ai * (br + bi + bb) + (ar + ab) * bi + (1 - w) * ab * bb
    return rel, irr


def _params(rnn, layer, reverse):
    sfx = "_l%d%s" % (layer, "_reverse" if reverse else "")

    def get(name):
        p = getattr(rnn, name + sfx, None)
        return None if p is None else p.detach().double().numpy()
    return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh")


def _share(xr, xi):
    ar, ai = np.abs(xr).sum(), np.abs(xi).sum()
    return (ar + EPS) / (ar + ai + 2 * EPS)


def _lstm_dir(xr, xi, shares, p):
    W_ih, W_hh, b_ih, b_hh = p
    H = W_hh.shape[1]
    b = (b_ih + b_hh) if b_ih is not None else np.zeros(4 * H)
    gi, gf, gg, go = (slice(k * H, (k + 1) * H) for k in range(4))
    h_r, h_i, c_r, c_i = (np.zeros(H) for _ in range(4))
    out_r, out_i = [], []
    for t in range(xr.shape[0]):
        pre_r = W_ih @ xr[t] + W_hh @ h_r
        pre_i = W_ih @ xi[t] + W_hh @ h_i
        i = three(pre_r[gi], pre_i[gi], b[gi], sig)
        f_r, f_i, f_b = three(pre_r[gf], pre_i[gf], b[gf], sig)
        g = three(pre_r[gg], pre_i[gg], b[gg], np.tanh)
        o = sig(pre_r[go] + pre_i[go] + b[go])
        new_r, new_i = product(i, g, shares[t])
        c_r, c_i = new_r + (f_r + f_b) * c_r, new_i + (f_r + f_i + f_b) * c_i + f_i * c_r
        tr, ti, tt = np.tanh(c_r), np.tanh(c_i), np.tanh(c_r + c_i)
        h_r, h_i = o * 0.5 * (tr + tt - ti), o * 0.5 * (ti + tt - tr)
        out_r.append(h_r)
        out_i.append(h_i)
    return np.stack(out_r), np.stack(out_i)


def _gru_dir(xr, xi, shares, p):
    W_ih, W_hh, b_ih, b_hh = p
    H = W_hh.shape[1]
    if b_ih is None:
        b_ih, b_hh = np.zeros(3 * H), np.zeros(3 * H)
    gr, gz, gn = (slice(k * H, (k + 1) * H) for k in range(3))
    h_r, h_i = np.zeros(H), np.zeros(H)
    out_r, out_i = [], []
    for t in range(xr.shape[0]):
        w = shares[t]
        xr_, xi_ = W_ih @ xr[t], W_ih @ xi[t]
        hr_, hi_ = W_hh @ h_r, W_hh @ h_i
        r = three(xr_[gr] + hr_[gr], xi_[gr] + hi_[gr], b_ih[gr] + b_hh[gr], sig)
        z = three(xr_[gz] + hr_[gz], xi_[gz] + hi_[gz], b_ih[gz] + b_hh[gz], sig)
        pr, pi = product(r, (hr_[gn], hi_[gn], b_hh[gn]), w)
        n = three(xr_[gn] + pr, xi_[gn] + pi, b_ih[gn], np.tanh)
        qr, qi = product((-z[0], -z[1], 1 - z[2]), n, w)
        zr, zi, zb = z
        h_r, h_i = qr + (zr + zb) * h_r, qi + (zr + zi + zb) * h_i + zi * h_r
        out_r.append(h_r)
        out_i.append(h_i)
    return np.stack(out_r), np.stack(out_i)


def rnn_loop(rnn, x_rel, x_irr, inside):
    """``(out_rel, out_irr)`` of shape ``(T, D * H)`` for one sequence ``(T, E)`` (sequence
    first, no batch axis) through the ``nn.LSTM`` / ``nn.GRU`` ``rnn`` (zero initial
    states); ``inside`` ``(T,)``: the token mask (the first layer's ``bias x bias`` share)."""
    cell = _gru_dir if rnn.mode == "GRU" else _lstm_dir
    dirs = 2 if rnn.bidirectional else 1
    xr, xi = np.asarray(x_rel, dtype=np.float64), np.asarray(x_irr, dtype=np.float64)
    for layer in range(rnn.num_layers):
        shares = (np.asarray(inside, dtype=np.float64) if layer == 0
                  else np.array([_share(xr[t], xi[t]) for t in range(xr.shape[0])]))
        outs = []
        for d in range(dirs):
            p = _params(rnn, layer, d == 1)
            if d == 1:
                o_r, o_i = cell(xr[::-1], xi[::-1], shares[::-1], p)
                outs.append((o_r[::-1], o_i[::-1]))
            else:
                outs.append(cell(xr, xi, shares, p))
        xr = np.concatenate([o[0] for o in outs], -1)
        xi = np.concatenate([o[1] for o in outs], -1)
    return xr, xi


def head_split(w, b, h_rel, h_irr):
    """A linear head ``w h + b`` splitting its bias as every linear layer (default mode):
    ``(|r| + 1e-20) / (|r| + |i| + 2e-20)`` of ``b`` to ``rel``."""
    r, i = w @ h_rel, w @ h_irr
    den = np.abs(r) + np.abs(i) + 2 * EPS
    return r + (np.abs(r) + EPS) / den * b, i + (np.abs(i) + EPS) / den * b
