"""Contextual decomposition of ``torch.lstm`` and ``torch.gru`` (what ``nn.LSTM`` and
``nn.GRU`` call).

Rules of the reference ``acd`` package (``cd_text``, Murdoch et al. 2018 as modified for
ACD), for every layer and direction:

* gate pre-activations split into relevant ``r = W_i x^rel_t + W_h h^rel_{t-1}``,
  irrelevant ``i = W_i x^irr_t + W_h h^irr_{t-1}`` and bias ``b = b_ih + b_hh``;
* input, forget and cell gates linearised with the three-term rule (bias first, average
  over the two orders of the two other terms); the output gate is not decomposed;
* the ``bias x bias`` term of the cell goes to ``rel`` at positions whose input is
  relevant (inside the phrase) and to ``irr`` otherwise: on a layer fed by the embedding
  (directly or through dropout, scalings and axis permutations) the weight is the mask
  value of the token (the reference's ``[t in phrase]``, also for tokens whose embedding
  is zero, e.g. ``padding_idx``); elsewhere (deeper layers, other input transforms) it is
  ``|x^rel_t|_1 / (|x^rel_t|_1 + |x^irr_t|_1)``, equal to the mask for a mask applied to
  a nonzero input;
* ``h^rel = o * (tanh(c^rel) + tanh(c) - tanh(c^irr)) / 2`` and symmetrically.

Multi-layer LSTMs feed the decomposed hidden sequence of one layer to the next; the
reverse direction of a bidirectional LSTM runs the same recurrence on the reversed
sequence.  ``rel + irr`` equals the LSTM's output up to rounding.

The GRU (no reference implementation exists) follows the same conventions: see
:func:`cd_gru`.
"""

from __future__ import annotations

import torch

from .tensor import CDTensor, UnsupportedOperationError, _where, register

EPS = 1e-20


def _parts(v, like):
    if isinstance(v, CDTensor):
        return v.rel, v.irr
    if v is None:
        z = torch.zeros_like(like)
        return z, z
    return torch.zeros_like(v), v


def _three(a, b, c, f):
    fc = f(c)
    fac = f(a + c)
    fbc = f(b + c)
    fabc = f(a + b + c)
    la = 0.5 * ((fac - fc) + (fabc - fbc))
    lb = 0.5 * ((fbc - fc) + (fabc - fac))
    return la, lb, fc


def _input_share(xr, xi):
    """Relevant share of the input at each step, ``(T, B, 1)``: ``|x^rel|_1 / (|x^rel|_1 +
    |x^irr|_1)`` (1 inside a phrase, 0 outside, for a binary mask on the first layer)."""
    ar = xr.abs().sum(-1, keepdim=True)
    ai = xi.abs().sum(-1, keepdim=True)
    return (ar + EPS) / (ar + ai + 2 * EPS)


def _product(a, b, w):
    """Decomposed product of ``a = (a_rel, a_irr, a_bias)`` and ``b`` with the LSTM cell's
    convention (reference ``cd_text``): ``rel`` gets ``a_rel (b_rel + b_bias) + a_bias
    b_rel``, ``irr`` every term with an irrelevant factor, and the ``bias x bias`` term is
    split by ``w`` (the relevant share of the input at this step)."""
    ar, ai, ab = a
    br, bi, bb = b
    bias2 = ab * bb
    rel = ar * (br + bb) + ab * br + w * bias2
    irr = ai * (br + bi + bb) + (ar + ab) * bi + (1 - w) * bias2
    return rel, irr


def _lstm_direction(xr, xi, p, states, share=None):
    w_ih, w_hh = p[0], p[1]
    H = w_hh.shape[1]
    b = (p[2] + p[3]) if len(p) == 4 else torch.zeros(4 * H, dtype=xr.dtype, device=xr.device)
    pr_all = torch.matmul(xr, w_ih.t())
    pi_all = torch.matmul(xi, w_ih.t())
    inside = share if share is not None else _input_share(xr, xi)
    bi, bf, bg, bo = b.split(H)
    (h_r, h_i), (c_r, c_i) = states
    out_r, out_i = [], []
    w_hh_t = w_hh.t()
    for t in range(xr.shape[0]):
        pre_r = pr_all[t] + torch.matmul(h_r, w_hh_t)
        pre_i = pi_all[t] + torch.matmul(h_i, w_hh_t)
        ri, rf, rg, ro = pre_r.split(H, -1)
        ii, if_, ig, io = pre_i.split(H, -1)
        i = _three(ri, ii, bi, torch.sigmoid)
        f_r, f_i, f_b = _three(rf, if_, bf, torch.sigmoid)
        g = _three(rg, ig, bg, torch.tanh)
        o = torch.sigmoid(ro + io + bo)
        cb, cg = _product(i, g, inside[t])
        cb = cb + (f_r + f_b) * c_r
        cg = cg + (f_r + f_i + f_b) * c_i + f_i * c_r
        tb, tg, tt = torch.tanh(cb), torch.tanh(cg), torch.tanh(cb + cg)
        h_r = o * 0.5 * (tb + tt - tg)
        h_i = o * 0.5 * (tg + tt - tb)
        c_r, c_i = cb, cg
        out_r.append(h_r)
        out_i.append(h_i)
    return (torch.stack(out_r), torch.stack(out_i)), [(h_r, h_i), (c_r, c_i)]


def _gru_direction(xr, xi, p, states, share=None):
    w_ih, w_hh = p[0], p[1]
    H = w_hh.shape[1]
    zero = torch.zeros(3 * H, dtype=xr.dtype, device=xr.device)
    b_ih, b_hh = (p[2], p[3]) if len(p) == 4 else (zero, zero)
    pr_all = torch.matmul(xr, w_ih.t())
    pi_all = torch.matmul(xi, w_ih.t())
    inside = share if share is not None else _input_share(xr, xi)
    bir, biz, bin_ = b_ih.split(H)
    bhr, bhz, bhn = b_hh.split(H)
    (h_r, h_i), = states
    out_r, out_i = [], []
    w_hh_t = w_hh.t()
    for t in range(xr.shape[0]):
        xr_r, xr_z, xr_n = pr_all[t].split(H, -1)
        xi_r, xi_z, xi_n = pi_all[t].split(H, -1)
        hr_r, hr_z, hr_n = torch.matmul(h_r, w_hh_t).split(H, -1)
        hi_r, hi_z, hi_n = torch.matmul(h_i, w_hh_t).split(H, -1)
        w = inside[t]
        r = _three(xr_r + hr_r, xi_r + hi_r, bir + bhr, torch.sigmoid)
        z = _three(xr_z + hr_z, xi_z + hi_z, biz + bhz, torch.sigmoid)
        # n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
        pr_, pi_ = _product(r, (hr_n, hi_n, bhn), w)
        n = _three(xr_n + pr_, xi_n + pi_, bin_, torch.tanh)
        # h' = (1 - z) * n + z * h
        qr, qi = _product((-z[0], -z[1], 1 - z[2]), n, w)
        zr, zi, zb = z
        h_r, h_i = qr + (zr + zb) * h_r, qi + (zr + zi + zb) * h_i + zi * h_r
        out_r.append(h_r)
        out_i.append(h_i)
    return (torch.stack(out_r), torch.stack(out_i)), [(h_r, h_i)]


def _recurrent(op, direction, n_states, args, kwargs, where):
    """Shared driver of ``torch.lstm`` / ``torch.gru``: argument parsing, layers,
    directions (the reverse one on the flipped sequence), ``batch_first``; ``direction(xr,
    xi, params, states) -> ((out_rel, out_irr), final states)``.  Returns the decomposed
    output and the ``n_states`` decomposed final states (``h``, and ``c`` for the LSTM),
    in the representation of the input."""
    names = ["input", "hx", "params", "has_biases", "num_layers", "dropout", "train",
             "bidirectional", "batch_first"]
    a = dict(zip(names, args))
    a.update(kwargs)
    packed = isinstance(a.get("params"), torch.Tensor) or (
        n_states == 2 and isinstance(a.get("hx"), torch.Tensor))
    if packed:  # lstm/gru(data, batch_sizes, hx, ...)
        raise UnsupportedOperationError("CD: packed sequences in `%s` (%s) are not supported" % (op, where))
    x, hx, params = a["input"], a["hx"], list(a["params"])
    has_b, L, bidir, bf = a["has_biases"], a["num_layers"], a["bidirectional"], a["batch_first"]
    if any(isinstance(p, CDTensor) for p in params):
        raise UnsupportedOperationError("CD: decomposed `%s` weights in %s" % (op, where))
    nd = 2 if bidir else 1
    stride = 4 if has_b else 2
    if len(params) != L * nd * stride:
        raise UnsupportedOperationError("CD: `%s` with proj_size > 0 in %s is not supported" % (op, where))
    xr, xi = _parts(x, None)
    # token shares of the first layer's input: the mask when it comes straight from an
    # embedding (exact also for all-zero embedding rows), else derived from the parts
    share = getattr(x, "_pos", None) if isinstance(x, CDTensor) else None
    if share is not None and tuple(share.shape) == tuple(x.shape[:-1]) and x.dim() == 3:
        share = share.to(xr.dtype)
        share = (share.transpose(0, 1) if bf else share).unsqueeze(-1)
    else:
        share = None
    if bf:
        xr, xi = xr.transpose(0, 1), xi.transpose(0, 1)
    zeros = torch.zeros(L * nd, xr.shape[1], params[1].shape[1], dtype=xr.dtype, device=xr.device)
    given = [hx] if n_states == 1 else (list(hx) if hx is not None else [None, None])
    init = [_parts(v, zeros) for v in given]
    layer_in = (xr, xi)
    finals = [([], []) for _ in range(n_states)]
    for layer in range(L):
        outs_r, outs_i = [], []
        for d in range(nd):
            k = layer * nd + d
            sr, si = layer_in
            sh = share if layer == 0 else None
            if d == 1:
                sr, si = sr.flip(0), si.flip(0)
                sh = None if sh is None else sh.flip(0)
            (o_r, o_i), fin = direction(sr, si, params[k * stride:(k + 1) * stride],
                                        [(r[k], i[k]) for r, i in init], sh)
            if d == 1:
                o_r, o_i = o_r.flip(0), o_i.flip(0)
            outs_r.append(o_r)
            outs_i.append(o_i)
            for (lr, li), (fr, fi) in zip(finals, fin):
                lr.append(fr)
                li.append(fi)
        layer_in = (torch.cat(outs_r, -1), torch.cat(outs_i, -1))
    out_r, out_i = layer_in
    if bf:
        out_r, out_i = out_r.transpose(0, 1), out_i.transpose(0, 1)
    total_form = isinstance(x, CDTensor) and x._is_tot

    def wrap(r, i):  # same representation as the input
        return CDTensor(r, tot=r + i) if total_form else CDTensor(r, i)

    return wrap(out_r, out_i), [wrap(torch.stack(r), torch.stack(i)) for r, i in finals]


def cd_lstm(args, kwargs, where):
    """CD of ``torch.lstm``: returns ``(output, h_n, c_n)`` decomposed."""
    out, (h, c) = _recurrent("lstm", _lstm_direction, 2, args, kwargs, where)
    return out, h, c


def cd_gru(args, kwargs, where):
    """CD of ``torch.gru`` (what ``nn.GRU`` calls), any number of layers, bidirectional,
    ``batch_first``.  Gates ``r``, ``z`` and the candidate ``n`` are linearised with the
    three-term rule of the LSTM (relevant ``W x^rel + W h^rel``, irrelevant, bias); the
    products ``r * (W_hn h + b_hn)``, ``(1 - z) * n`` and ``z * h`` follow the LSTM cell's
    convention (relevant-first, ``bias x bias`` by the relevant share of the input); so
    ``rel + irr`` is the GRU's output up to rounding.  Returns ``(output, h_n)``."""
    out, (h,) = _recurrent("gru", _gru_direction, 1, args, kwargs, where)
    return out, h


@register("lstm")
def _lstm(func, name, args, kwargs):
    return cd_lstm(args, kwargs, _where())


@register("gru")
def _gru(func, name, args, kwargs):
    return cd_gru(args, kwargs, _where())


@register("_pack_padded_sequence", "pack_padded_sequence")
def _packed(func, name, args, kwargs):
    raise UnsupportedOperationError(
        "CD: packed sequences (`nn.utils.rnn.pack_padded_sequence`) in %s are not supported; "
        "CD decomposes one input at a time, so run the recurrent layer on the unpacked "
        "sequence (e.g. the input trimmed to its length)." % _where())
