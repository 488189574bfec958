"""Helpers shared by the LRP test files (reference rules in matrix form, seeded weights).

Nothing here calls the propagation engine: the references are written from the rule
definitions (docstrings of ``captum_rap/rules/``) in explicit matrix form, so a test that
compares the engine against them can fail if the engine is wrong.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import Tensor, nn


# ----------------------------------------------------------------------------------------
# Dense matrices of affine layers
# ----------------------------------------------------------------------------------------


def dense_matrix(layer: nn.Module, in_shape) -> Tensor:
    """The (m, n) matrix of the bias-free layer acting on one flattened example of shape
    ``in_shape`` (no batch axis), built by applying the layer to the n basis vectors."""
    n = int(np.prod(in_shape))
    lay = copy.deepcopy(layer).double()
    if getattr(lay, "bias", None) is not None:
        with torch.no_grad():
            lay.bias.zero_()
    basis = torch.eye(n, dtype=torch.float64).reshape((n,) + tuple(in_shape))
    with torch.no_grad():
        out = lay(basis)
    return out.reshape(n, -1).T.contiguous()


def conv2d_matrix_loops(weight: Tensor, in_shape, stride, padding, dilation, groups) -> Tensor:
    """Matrix of a 2-d convolution built with explicit loops over output positions and
    kernel offsets (independent of torch's convolution)."""
    cin, h, w = in_shape
    cout, cin_g, kh, kw = weight.shape
    sh, sw = stride
    ph, pw = padding
    dh, dw = dilation
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    cout_g = cout // groups
    a = torch.zeros(cout * oh * ow, cin * h * w, dtype=torch.float64)
    for oc in range(cout):
        g = oc // cout_g
        for oy in range(oh):
            for ox in range(ow):
                row = (oc * oh + oy) * ow + ox
                for icg in range(cin_g):
                    ic = g * cin_g + icg
                    for ky in range(kh):
                        iy = oy * sh - ph + ky * dh
                        if not 0 <= iy < h:
                            continue
                        for kx in range(kw):
                            ix = ox * sw - pw + kx * dw
                            if not 0 <= ix < w:
                                continue
                            a[row, (ic * h + iy) * w + ix] += float(weight[oc, icg, ky, kx])
    return a


def output_bias(layer: nn.Module, out_shape) -> Tensor:
    """The bias of the layer broadcast to one flattened output example."""
    m = int(np.prod(out_shape))
    b = getattr(layer, "bias", None)
    if b is None:
        return torch.zeros(m, dtype=torch.float64)
    b = b.detach().double()
    per = m // b.numel()
    return b.repeat_interleave(per)


# ----------------------------------------------------------------------------------------
# Reference rules (one example, matrix form): A (m, n), b (m,), x (n,), R (m,) -> (n,)
# ----------------------------------------------------------------------------------------


def stab(z: Tensor, eps: float) -> Tensor:
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z)


def pos(t):
    return t.clamp(min=0)


def neg(t):
    return t.clamp(max=0)


def ref_epsilon(A, b, x, R, eps):
    C = A * x[None, :]
    z = C.sum(1) + b
    return (C * (R / stab(z, eps))[:, None]).sum(0)


def ref_gamma(A, b, x, R, gamma, eps, generalized):
    if not generalized:
        Ap = A + gamma * pos(A)
        C = Ap * x[None, :]
        z = C.sum(1) + b
        return (C * (R / stab(z, eps))[:, None]).sum(0)
    z = (A * x[None, :]).sum(1) + b  # the real output decides which side is favoured
    A_fav_pos = A + gamma * pos(A)
    A_fav_neg = A + gamma * neg(A)
    xpos = (x > 0)[None, :]
    # contributions favouring positive (for z > 0) / negative (for z < 0) outputs
    Cp = torch.where(xpos, A_fav_pos * x[None, :], A_fav_neg * x[None, :])
    Cn = torch.where(xpos, A_fav_neg * x[None, :], A_fav_pos * x[None, :])
    zp = Cp.sum(1) + b + gamma * pos(b)
    zn = Cn.sum(1) + b + gamma * neg(b)
    out = torch.zeros_like(x)
    for k in range(A.shape[0]):
        if z[k] > 0:
            out += Cp[k] * R[k] / stab(zp[k:k + 1], eps)[0]
        elif z[k] < 0:
            out += Cn[k] * R[k] / stab(zn[k:k + 1], eps)[0]
    return out


def ref_alphabeta(A, b, x, R, alpha, beta, eps, bias):
    C = A * x[None, :]
    P, N = pos(C), neg(C)
    zp = P.sum(1) + (pos(b) if bias else 0)
    zn = N.sum(1) + (neg(b) if bias else 0)
    return (alpha * P * (R / stab(zp, eps))[:, None] - beta * N * (R / stab(zn, eps))[:, None]).sum(0)


def ref_zbox(A, x, R, low, high, eps):
    C = A * x[None, :] - pos(A) * low[None, :] - neg(A) * high[None, :]
    z = C.sum(1)
    return (C * (R / stab(z, eps))[:, None]).sum(0)


def ref_flat(A, R, eps):
    conn = (A != 0).to(A.dtype)  # real inputs feeding each output (padding is not a column)
    return (conn * (R / stab(conn.sum(1), eps))[:, None]).sum(0)


def ref_wsquare(A, R, eps):
    A2 = A * A
    return (A2 * (R / stab(A2.sum(1), eps))[:, None]).sum(0)


# ----------------------------------------------------------------------------------------
# Portable seeded weights (recipe of ../shared/fixtures/README.md)
# ----------------------------------------------------------------------------------------


def portable_init(model: nn.Module, seed: int = 0, bias_free: bool = False) -> nn.Module:
    """Re-initialise ``model`` in place with the portable seeded recipe (one
    ``numpy.random.RandomState(seed)`` walked over ``state_dict()`` in order).  With
    ``bias_free``: biases, BN shifts and running means are set to 0 afterwards (gamma and
    running_var stay positive random)."""
    rs = np.random.RandomState(seed)
    sd = model.state_dict()
    new = type(sd)()
    new._metadata = getattr(sd, "_metadata", {})  # module versions (MNASNet checks its own)
    for name, t in sd.items():
        shape = tuple(t.shape)
        if name.endswith("num_batches_tracked"):
            new[name] = t
            continue
        if name.endswith("running_mean"):
            v = rs.standard_normal(shape) * 0.1
        elif name.endswith("running_var"):
            v = 0.5 + 1.5 * rs.random_sample(shape)
        elif name.endswith("weight") and t.dim() == 1:
            v = 0.5 + rs.random_sample(shape)
        elif name.endswith("bias"):
            v = rs.standard_normal(shape) * 0.05
        else:
            fan = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            v = rs.standard_normal(shape) * math.sqrt(2.0 / fan)
        new[name] = torch.from_numpy(np.asarray(v, dtype=np.float64)).to(t.dtype)
    if bias_free:
        for name in new:
            if name.endswith("bias") or name.endswith("running_mean"):
                new[name] = torch.zeros_like(new[name])
    model.load_state_dict(new)
    return model


def rel_err(a: Tensor, b: Tensor) -> float:
    """max |a - b| / max |b| (the scale of the reference map)."""
    scale = float(b.abs().max())
    return float((a - b).abs().max()) / (scale if scale > 0 else 1.0)


# ----------------------------------------------------------------------------------------
# Plain-autograd references (exact for LRP-0 on bias- and shift-free ReLU networks)
# ----------------------------------------------------------------------------------------


def input_x_gradient(model, x, target):
    """``x * d logit / d x`` by plain autograd."""
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xg)[:, target].sum(), xg)
    return x * g


def activation_x_gradient(model, module, x, target, at_input=False):
    """``h * d logit / d h`` at the output (or input) of ``module``, by plain autograd."""
    store = {}

    def hook(mod, args, out):
        store["h"] = args[0] if at_input else out

    handle = module.register_forward_hook(hook)
    try:
        out = model(x)
    finally:
        handle.remove()
    h = store["h"]
    (g,) = torch.autograd.grad(out[:, target].sum(), h)
    return (h * g).detach()
