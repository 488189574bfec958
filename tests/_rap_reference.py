"""An explicit, slow RAP reference (matrix form, float64), independent of the engine.

Written from ``../shared/reference/RAP.md`` (the official code's per-layer rules) and the
docstring of :class:`captum_rap.RAP` (where it departs from the official code: one uniform
shift over both input-sign branches of a layer with signed inputs; the input layer is the
layer that reads the input; residual sums and concatenations by the signed z-rule / split).
Nothing here calls captum_rap: every layer is a dense matrix (convolutions built with
explicit loops over kernel offsets, ``_lrp_utils.conv2d_matrix_loops``), every rule a few
lines of per-example linear algebra over that matrix, and relevance is accumulated over an
explicit graph, consumers before producers.

The small networks are described by a list of nodes ``(name, kind, inputs)``;
:class:`GraphNet` runs the same list as an ordinary ``nn.Module`` (modules for the
parametrized layers and ReLU6 / max pooling, functional ``F.relu``, ``+``, ``torch.cat``,
``F.avg_pool2d`` and ``flatten`` in ``forward``), which is what the engine is given.

Rules (one example; ``x`` the layer input, ``W`` its matrix, ``R`` the output relevance):

* output ``Linear`` (target t): ``first_prop`` (RAP.md section 1) -- target bias split over
  the positive / negative contributions of ``x+``, then ``R_j = |c'_j| * sum c' / sum |c'|``;
* input layer: z^B with per-example scalar bounds ``l = min x``, ``h = max x`` (section 3);
* hidden conv: ``pos_prop`` on the branch ``x+`` and on the branch ``|x-|`` (section 2,
  Conv2d version: ``a/A R+ + b/B R- + b/(A+B) R``; Linear version ``a/A R + b/(A+B) R``),
  summed, then one uniform shift ``C <- C - (sum C - sum R) / #{C != 0}`` on ``C != 0``;
* batch norm: pass-through (``R * [x != 0]``; relevance that this drops at exact-zero inputs
  is given back by a uniform shift over the kept entries, as RAP's docstring says);
* ReLU, ReLU6 (also saturated units), flatten: identity; max pooling: to the arg-max;
  average pooling and residual sums: signed z-rule ``R_j = x_j sum_k P_kj R_k / z_k``
  (0 where ``z_k = 0``); concatenation: split.

Relevance at an activation that is exactly 0 is dropped (a relevance *density* at a zero
activation is 0 in the engine; the rules above never put relevance there except through
the shift, which only touches non-zero entries).
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


DT = torch.float64

Spec = Sequence[Tuple[str, str, Tuple[str, ...]]]


# ----------------------------------------------------------------------------------------
# the networks
# ----------------------------------------------------------------------------------------


class GraphNet(nn.Module):
    """``forward`` runs ``spec`` in order; ``modules`` holds the parametrized layers (and
    ReLU6 / max-pool modules) by node name.  The model input is the node ``"input"``."""

    FUNCTIONAL = {"relu", "add", "cat", "avgpool2", "gap", "flatten", "leaky", "hardtanh",
                  "affine_const", "pad"}

    def __init__(self, spec: Spec, modules: Dict[str, nn.Module]):
        super().__init__()
        self.spec = [tuple(s) for s in spec]
        self.layers = nn.ModuleDict(modules)

    def forward(self, x):
        env = {"input": x}
        for name, kind, ins in self.spec:
            a = [env[i] for i in ins]
            if kind in self.FUNCTIONAL:
                env[name] = functional(kind, a)
            else:
                env[name] = self.layers[name](a[0])
        return env[self.spec[-1][0]]


def functional(kind: str, a: List[Tensor]) -> Tensor:
    if kind == "relu":
        return F.relu(a[0])
    if kind == "leaky":
        return F.leaky_relu(a[0], 0.1)
    if kind == "hardtanh":
        return F.hardtanh(a[0], -1.5, 1.5)
    if kind == "add":
        return a[0] + a[1]
    if kind == "cat":
        return torch.cat(a, 1)
    if kind == "avgpool2":
        return F.avg_pool2d(a[0], 2)
    if kind == "gap":
        return F.adaptive_avg_pool2d(a[0], 1)
    if kind == "flatten":
        return a[0].flatten(1)
    if kind == "affine_const":  # a scaling and a constant (CD: the constant is irrelevant)
        return 0.5 * a[0] - 0.25
    if kind == "pad":
        return F.pad(a[0], (1, 0, 0, 1))
    raise AssertionError(kind)


def _randomize(net: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                fan = mod.weight[0].numel()
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * (2.0 / fan) ** 0.5)
                if mod.bias is not None:
                    mod.bias.copy_(torch.randn(mod.bias.shape, generator=g) * 0.2)
            elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
                n = mod.num_features
                mod.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                mod.running_var.copy_(0.5 + torch.rand(n, generator=g))
                mod.weight.copy_(0.5 + torch.rand(n, generator=g))
                mod.bias.copy_(torch.randn(n, generator=g) * 0.3)
    return net.to(DT).eval()


def mobile_net(seed: int = 0) -> GraphNet:
    """Inverted residual block with ReLU6 (saturating), depthwise conv, a projection whose
    BN output is signed, a residual sum of signed maps, a conv and a grouped conv on signed
    inputs (BN after a ReLU: exact zeros at the BN input), average + max pooling
    concatenated, a Linear on signed inputs.  Input (3, 8, 8)."""
    spec = [
        ("c1", "conv", ("input",)), ("bn1", "bn", ("c1",)), ("a1", "relu6", ("bn1",)),
        ("dw", "conv", ("a1",)), ("bn2", "bn", ("dw",)), ("a2", "relu6", ("bn2",)),
        ("pw", "conv", ("a2",)), ("bn3", "bn", ("pw",)), ("res", "add", ("bn3", "a1")),
        ("c2", "conv", ("res",)), ("a3", "relu", ("c2",)), ("bn4", "bn", ("a3",)),
        ("gc", "conv", ("bn4",)), ("a4", "relu", ("gc",)),
        ("ap", "avgpool2", ("a4",)), ("mp", "maxpool", ("a4",)), ("cat", "cat", ("ap", "mp")),
        ("fl", "flatten", ("cat",)), ("fc1", "linear", ("fl",)), ("fc2", "linear", ("fc1",)),
        ("a5", "relu", ("fc2",)), ("fc3", "linear", ("a5",)),
    ]
    mods = {
        "c1": nn.Conv2d(3, 8, 3, padding=1), "bn1": nn.BatchNorm2d(8), "a1": nn.ReLU6(),
        "dw": nn.Conv2d(8, 8, 3, padding=1, groups=8), "bn2": nn.BatchNorm2d(8), "a2": nn.ReLU6(),
        "pw": nn.Conv2d(8, 8, 1), "bn3": nn.BatchNorm2d(8),
        "c2": nn.Conv2d(8, 12, 3, padding=1), "bn4": nn.BatchNorm2d(12),
        "gc": nn.Conv2d(12, 12, 3, padding=1, groups=3), "mp": nn.MaxPool2d(2),
        "fc1": nn.Linear(24 * 4 * 4, 16), "fc2": nn.Linear(16, 10), "fc3": nn.Linear(10, 5),
    }
    net = _randomize(GraphNet(spec, mods), seed)
    with torch.no_grad():  # large BN scales before the ReLU6s: some units saturate at 6
        net.layers["bn1"].weight.mul_(6.0)
        net.layers["bn2"].weight.mul_(4.0)
    return net


def resnet_like(seed: int = 0) -> GraphNet:
    """A stem, two residual blocks (identity and strided 1x1 downsample), a dilated conv,
    global average pooling, a hidden Linear without activation so that the output Linear
    reads signed inputs.  Non-square input (3, 10, 8)."""
    spec = [
        ("c1", "conv", ("input",)), ("bn1", "bn", ("c1",)), ("a1", "relu", ("bn1",)),
        ("mp", "maxpool", ("a1",)),
        ("b1c1", "conv", ("mp",)), ("b1bn1", "bn", ("b1c1",)), ("b1a1", "relu", ("b1bn1",)),
        ("b1c2", "conv", ("b1a1",)), ("b1bn2", "bn", ("b1c2",)), ("b1s", "add", ("b1bn2", "mp")),
        ("b1a2", "relu", ("b1s",)),
        ("b2c1", "conv", ("b1a2",)), ("b2bn1", "bn", ("b2c1",)), ("b2a1", "relu", ("b2bn1",)),
        ("b2c2", "conv", ("b2a1",)), ("b2bn2", "bn", ("b2c2",)),
        ("b2d", "conv", ("b1a2",)), ("b2dbn", "bn", ("b2d",)), ("b2s", "add", ("b2bn2", "b2dbn")),
        ("b2a2", "relu", ("b2s",)),
        ("gp", "gap", ("b2a2",)), ("fl", "flatten", ("gp",)), ("fc1", "linear", ("fl",)),
        ("fc2", "linear", ("fc1",)),
    ]
    mods = {
        "c1": nn.Conv2d(3, 6, 3, padding=1), "bn1": nn.BatchNorm2d(6), "mp": nn.MaxPool2d(2),
        "b1c1": nn.Conv2d(6, 6, 3, padding=1), "b1bn1": nn.BatchNorm2d(6),
        "b1c2": nn.Conv2d(6, 6, 3, padding=2, dilation=2), "b1bn2": nn.BatchNorm2d(6),
        "b2c1": nn.Conv2d(6, 8, 3, stride=2, padding=1), "b2bn1": nn.BatchNorm2d(8),
        "b2c2": nn.Conv2d(8, 8, 3, padding=1), "b2bn2": nn.BatchNorm2d(8),
        "b2d": nn.Conv2d(6, 8, 1, stride=2), "b2dbn": nn.BatchNorm2d(8),
        "fc1": nn.Linear(8, 8), "fc2": nn.Linear(8, 5),
    }
    return _randomize(GraphNet(spec, mods), seed)


# ----------------------------------------------------------------------------------------
# the dense forward pass
# ----------------------------------------------------------------------------------------


class Layer:
    """One node in dense form: ``kind``, input names, output shape, and for affine nodes
    the matrix ``A`` (out, in) and bias ``b``; for max pooling the window index lists."""

    def __init__(self, name, kind, ins):
        self.name, self.kind, self.ins = name, kind, ins
        self.A = None
        self.b = None
        self.windows = None
        self.shape = None


def conv_matrix(weight: Tensor, in_shape, stride, padding, dilation, groups) -> Tensor:
    """Dense matrix of a 2-d convolution on one flattened example, by explicit indexing:
    for every kernel offset, the output positions whose input position is inside the map
    get the weights ``W[o, i, ky, kx]`` at (output o, input channel of o's group i)."""
    cin, h, w = in_shape
    cout, cin_g, kh, kw = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    A = torch.zeros(cout, oh, ow, cin, h, w, dtype=DT)
    oc = torch.arange(cout)
    ic = (oc // (cout // groups))[:, None] * cin_g + torch.arange(cin_g)[None, :]  # (cout, cin_g)
    for ky in range(kh):
        for kx in range(kw):
            for oy in range(oh):
                iy = oy * sh - ph + ky * dh
                if not 0 <= iy < h:
                    continue
                for ox in range(ow):
                    ix = ox * sw - pw + kx * dw
                    if 0 <= ix < w:
                        A[oc[:, None], oy, ox, ic, iy, ix] += weight[:, :, ky, kx].to(DT)
    return A.reshape(cout * oh * ow, cin * h * w)


def _pool_matrix(in_shape, k) -> Tensor:
    c, h, w = in_shape
    oh, ow = h // k, w // k
    P = torch.zeros(c * oh * ow, c * h * w, dtype=DT)
    for ch in range(c):
        for oy in range(oh):
            for ox in range(ow):
                row = (ch * oh + oy) * ow + ox
                for dy in range(k):
                    for dx in range(k):
                        P[row, (ch * h + oy * k + dy) * w + ox * k + dx] = 1.0 / (k * k)
    return P


def _windows(in_shape, k) -> List[List[int]]:
    c, h, w = in_shape
    oh, ow = h // k, w // k
    out = []
    for ch in range(c):
        for oy in range(oh):
            for ox in range(ow):
                out.append([(ch * h + oy * k + dy) * w + ox * k + dx for dy in range(k) for dx in range(k)])
    return out


def dense_forward(net: GraphNet, x: Tensor):
    """Node values ``(N, n)`` (flattened per example) and the dense layers, by name."""
    N = x.shape[0]
    vals: Dict[str, Tensor] = {"input": x.reshape(N, -1).to(DT)}
    shapes: Dict[str, tuple] = {"input": tuple(x.shape[1:])}
    layers: Dict[str, Layer] = {}
    for name, kind, ins in net.spec:
        lay = Layer(name, kind, ins)
        s_in = shapes[ins[0]]
        v = vals[ins[0]]
        if kind == "conv":
            mod = net.layers[name]
            A = conv_matrix(mod.weight.detach(), s_in, mod.stride, mod.padding, mod.dilation, mod.groups)
            c_out = mod.out_channels
            hw = A.shape[0] // c_out
            oh = (s_in[1] + 2 * mod.padding[0] - mod.dilation[0] * (mod.kernel_size[0] - 1) - 1) // mod.stride[0] + 1
            lay.shape = (c_out, oh, hw // oh)
            lay.A = A
            lay.b = mod.bias.detach().to(DT).repeat_interleave(hw)
            out = v @ A.T + lay.b
        elif kind == "linear":
            mod = net.layers[name]
            lay.A, lay.b = mod.weight.detach().to(DT), mod.bias.detach().to(DT)
            lay.shape = (lay.A.shape[0],)
            out = v @ lay.A.T + lay.b
        elif kind == "bn":
            mod = net.layers[name]
            scale = mod.weight.detach().to(DT) / torch.sqrt(mod.running_var.to(DT) + mod.eps)
            shift = mod.bias.detach().to(DT) - mod.running_mean.to(DT) * scale
            per = v.shape[1] // scale.numel()
            lay.A = torch.diag(scale.repeat_interleave(per))
            lay.b = shift.repeat_interleave(per)
            lay.shape = s_in
            out = v @ lay.A.T + lay.b
        elif kind == "relu":
            out, lay.shape = v.clamp(min=0), s_in
        elif kind == "relu6":
            out, lay.shape = v.clamp(0, 6), s_in
        elif kind == "add":
            out, lay.shape = v + vals[ins[1]], s_in
        elif kind == "cat":
            out = torch.cat([vals[i] for i in ins], 1)
            lay.shape = (sum(shapes[i][0] for i in ins),) + tuple(s_in[1:])
        elif kind in ("avgpool2", "gap"):
            if kind == "gap":
                c, h, w = s_in
                P = torch.zeros(c, c * h * w, dtype=DT)
                for ch in range(c):
                    P[ch, ch * h * w:(ch + 1) * h * w] = 1.0 / (h * w)
                lay.shape = (c, 1, 1)
            else:
                P = _pool_matrix(s_in, 2)
                lay.shape = (s_in[0], s_in[1] // 2, s_in[2] // 2)
            lay.A = P
            out = v @ P.T
        elif kind == "maxpool":
            lay.windows = _windows(s_in, 2)
            lay.shape = (s_in[0], s_in[1] // 2, s_in[2] // 2)
            out = torch.stack([torch.stack([v[n, w].max() for w in lay.windows]) for n in range(N)])
        elif kind == "flatten":
            out, lay.shape = v, (v.shape[1],)
        else:
            raise AssertionError(kind)
        vals[name] = out
        shapes[name] = lay.shape
        layers[name] = lay
    return vals, shapes, layers


# ----------------------------------------------------------------------------------------
# the rules (one example)
# ----------------------------------------------------------------------------------------


def sdiv(a: Tensor, b: Tensor) -> Tensor:
    """The reference's safe_divide: a / b, exactly 0 where b == 0."""
    out = torch.zeros_like(a)
    nz = b != 0
    out[nz] = a[nz] / b[nz]
    return out


def uniform_shift(C: Tensor, total: Tensor) -> Tensor:
    nz = C != 0
    count = int(nz.sum())
    if count == 0:
        return C
    s = (C.sum() - total) / count
    out = C.clone()
    out[nz] -= s
    return out


_PARTS: Dict[int, Tuple[Tensor, Tensor, Tensor]] = {}


def _signed_parts(A: Tensor) -> Tuple[Tensor, Tensor]:
    """``(W+, |W-|)`` of a layer matrix (cached per matrix object)."""
    hit = _PARTS.get(id(A))
    if hit is None or hit[0] is not A:
        hit = (A, A.clamp(min=0), -A.clamp(max=0))
        _PARTS.clear()  # one layer at a time is enough
        _PARTS[id(A)] = hit
    return hit[1], hit[2]


def pos_prop(A: Tensor, xb: Tensor, R: Tensor, linear: bool) -> Tensor:
    """One input-sign branch, ``xb >= 0`` being ``x+`` or ``|x-|``: contributions
    ``a_kj = xb_j W+_kj`` and ``b_kj = xb_j |W-_kj|`` (for ``|x-|`` these are the
    reference's ``a'_kj = |x-_j| W+_kj`` and ``b'_kj = x-_j W-_kj``), ``A = sum_j a``,
    ``B = sum_j b``; ``C_j = sum_k a_kj u_k + b_kj v_k`` in matrix form."""
    Wp, Wn = _signed_parts(A)
    Asum, Bsum = Wp @ xb, Wn @ xb
    if linear:  # Linear.pos_prop: a/A R + b/(A+B) R
        u, v = sdiv(R, Asum), sdiv(R, Asum + Bsum)
    else:  # Conv2d.pos_prop: a/A R+ + b/B R- + b/(A+B) R
        u = sdiv(R.clamp(min=0), Asum)
        v = sdiv(R.clamp(max=0), Bsum) + sdiv(R, Asum + Bsum)
    return xb * (Wp.T @ u + Wn.T @ v)


def hidden_rule(A: Tensor, x: Tensor, R: Tensor, linear: bool) -> Tensor:
    C = pos_prop(A, x.clamp(min=0), R, linear) + pos_prop(A, -x.clamp(max=0), R, linear)
    return uniform_shift(C, R.sum())


def first_prop(w: Tensor, b_t: Tensor, x: Tensor) -> Tensor:
    """RAP.md section 1 for the target row ``w`` and bias ``b_t``; sums to ``w x + b_t``."""
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    c = x * w
    pos = (xp * wp + xn * wn).sum()
    neg = (xp * wn + xn * wp).sum()
    b_pos = b_t * sdiv(pos.view(1), (pos + neg).view(1))[0]
    b_neg = b_t * sdiv(neg.view(1), (pos + neg).view(1))[0]
    c1, c2 = xp * wp, xp * wn
    cc = c + c1 * sdiv(b_pos.view(1), c1.sum().view(1))[0] + c2 * sdiv(b_neg.view(1), c2.sum().view(1))[0]
    return cc.abs() * sdiv(cc.sum().view(1), cc.abs().sum().view(1))[0]


def zb_rule(A: Tensor, x: Tensor, R: Tensor) -> Tensor:
    low, high = x.min(), x.max()
    Ap, An = A.clamp(min=0), A.clamp(max=0)
    Z = A @ x - low * Ap.sum(1) - high * An.sum(1)
    S = sdiv(R, Z)
    return x * (A.T @ S) - low * (Ap.T @ S) - high * (An.T @ S)


def z_rule(P: Tensor, x: Tensor, R: Tensor) -> Tensor:
    return x * (P.T @ sdiv(R, P @ x))


# ----------------------------------------------------------------------------------------
# the backward pass
# ----------------------------------------------------------------------------------------


def rap_reference(net: GraphNet, x: Tensor, targets: Sequence[int], at: Dict[str, Tensor] = None) -> Tensor:
    """Input relevance ``(N, *x.shape[1:])`` of RAP for the targets, by the rules above.
    ``at``: if given, filled with the relevance at every node output ``(N, n)``."""
    vals, shapes, layers = dense_forward(net, x)
    order = [name for name, _, _ in net.spec]
    out_name = order[-1]
    assert layers[out_name].kind == "linear"
    N = x.shape[0]
    result = torch.zeros(N, vals["input"].shape[1], dtype=DT)
    for n in range(N):
        R: Dict[str, Tensor] = {k: torch.zeros_like(v[n]) for k, v in vals.items()}

        def give(name, r):
            R[name] = R[name] + r

        for name in reversed(order):
            lay = layers[name]
            # relevance at an exactly-zero activation is dropped (density R / 0 = 0)
            r = R[name] * (vals[name][n] != 0) if name != out_name else None
            xin = vals[lay.ins[0]][n]
            if name == out_name:
                t = int(targets[n])
                give(lay.ins[0], first_prop(lay.A[t], lay.b[t], xin))
            elif lay.kind in ("conv", "linear"):
                if lay.ins[0] == "input":
                    give("input", zb_rule(lay.A, xin, r))
                else:
                    give(lay.ins[0], hidden_rule(lay.A, xin, r, lay.kind == "linear"))
            elif lay.kind == "bn":
                kept = r * (xin != 0) * (torch.diagonal(lay.A) != 0)
                if bool((kept != r).any()):
                    kept = uniform_shift(kept, r.sum())
                give(lay.ins[0], kept)
            elif lay.kind in ("relu", "relu6", "flatten"):
                give(lay.ins[0], r)
            elif lay.kind in ("avgpool2", "gap"):
                give(lay.ins[0], z_rule(lay.A, xin, r))
            elif lay.kind == "maxpool":
                g = torch.zeros_like(xin)
                for k, w in enumerate(lay.windows):
                    win = xin[w]
                    g[w[int(torch.argmax(win))]] += r[k]
                give(lay.ins[0], g)
            elif lay.kind == "add":
                other = vals[lay.ins[1]][n]
                d = sdiv(r, xin + other)
                give(lay.ins[0], xin * d)
                give(lay.ins[1], other * d)
            elif lay.kind == "cat":
                start = 0
                for i in lay.ins:
                    m = vals[i].shape[1]
                    give(i, r[start:start + m])
                    start += m
            else:
                raise AssertionError(lay.kind)
        result[n] = R["input"]
        if at is not None:
            for k, v in R.items():
                at.setdefault(k, torch.zeros(N, v.numel(), dtype=DT))[n] = v * (vals[k][n] != 0)
    return result.reshape(x.shape)
