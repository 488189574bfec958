"""An explicit two-part CD reference: ``rel`` and ``irr`` propagated *separately* through a
``torch.fx`` trace of the model, one rule per node, written from the rules in
``../shared/reference/CD_ACD.md`` (section 2) and the docstring of :class:`captum_rap.CD`
(its default mode).  Nothing here uses captum_rap: no decomposed tensor, no total form,
no boxes; every node of the traced graph is interpreted here, and an op without a rule
raises.  Slow (two full streams per mask) and only for tests.

Rules (``r``, ``i``: the linear images ``W rel``, ``W irr`` without the constant term):

* conv / linear with bias ``b``: ``rel' = r + (|r| + 1e-20) / (|r| + |i| + 2e-20) * b``,
  ``irr' = i + (|i| + 1e-20) / (|r| + |i| + 2e-20) * b``;
* batch norm (eval) ``y = s x + t``: ``r = s rel``, ``i = s irr``, ``rel' = r + |r| / (|r| +
  |i|) * t`` (``0 / 0``: all of ``t`` to ``irr``), ``irr' = i + (t - that share)``;
* ReLU family ``f`` (ReLU, ReLU6, LeakyReLU, Hardtanh): ``rel' = f(rel)``,
  ``irr' = f(rel + irr) - f(rel)``;
* max pooling: the arg-max of ``rel + irr`` selects the entries of both parts;
* average pooling, flatten / reshape, zero padding, concatenation, dropout (eval),
  products with constants: applied to each part;
* ``a + b`` of two decomposed values: parts added; a constant added: to ``irr``.
"""

from __future__ import annotations

import operator
from typing import Any, Tuple

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

EPS = 1e-20
REPLAY = None  # see cd_reference(pool_choices=...)


class Parts:
    """A decomposed value: relevant and irrelevant part."""

    __slots__ = ("rel", "irr")

    def __init__(self, rel: Tensor, irr: Tensor):
        self.rel, self.irr = rel, irr

    @property
    def tot(self) -> Tensor:
        return self.rel + self.irr


def split_bias(r: Tensor, i: Tensor, b: Tensor) -> Parts:
    ar, ai = r.abs(), i.abs()
    den = ar + ai + 2 * EPS
    return Parts(r + (ar + EPS) / den * b, i + (ai + EPS) / den * b)


def split_shift(r: Tensor, i: Tensor, t: Tensor) -> Parts:
    ar, ai = r.abs(), i.abs()
    den = ar + ai
    share = torch.where(den > 0, ar / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den))
    return Parts(r + share * t, i + (1 - share) * t)


def activation(f, x: Parts) -> Parts:
    rel = f(x.rel)
    return Parts(rel, f(x.rel + x.irr) - rel)


def both(f, x: Parts) -> Parts:
    return Parts(f(x.rel), f(x.irr))


def affine(func, x: Parts, weight: Tensor, bias, *rest) -> Parts:
    r = func(x.rel, weight, None, *rest)
    i = func(x.irr, weight, None, *rest)
    if bias is None:
        return Parts(r, i)
    shape = [1] * r.dim()
    shape[-1 if func is F.linear else 1] = -1
    return split_bias(r, i, bias.view(shape))


def batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: Parts) -> Parts:
    s = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        s = s * bn.weight
    t = -bn.running_mean * s
    if bn.bias is not None:
        t = t + bn.bias
    shape = [1] * x.rel.dim()
    shape[1] = -1
    s, t = s.view(shape), t.view(shape)
    return split_shift(s * x.rel, s * x.irr, t)


def max_pool(x: Parts, pool) -> Parts:
    """``pool(t)`` returns ``(values, indices)``; both parts are gathered at the arg-max
    of ``rel + irr``."""
    _, idx = pool(x.rel + x.irr)
    if REPLAY is not None:  # arg-max choices given from elsewhere (exact ties, see cd_reference)
        idx = REPLAY.pop(0).expand_as(idx)

    def g(t):
        return t.flatten(2).gather(2, idx.flatten(2)).view(idx.shape)
    return Parts(g(x.rel), g(x.irr))


def add(a: Any, b: Any, sign: float = 1.0) -> Any:
    if isinstance(a, Parts) and isinstance(b, Parts):
        return Parts(a.rel + sign * b.rel, a.irr + sign * b.irr)
    if isinstance(a, Parts):  # a constant goes to irr
        return Parts(a.rel + 0 * b, a.irr + sign * b)
    if isinstance(b, Parts):
        return Parts(sign * b.rel + 0 * a, a + sign * b.irr)
    return a + sign * b


_ACTS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh)
_LINEAR_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.Flatten,
                   nn.Identity, nn.ZeroPad2d, nn.Dropout)


def _module_rule(mod: nn.Module, args) -> Any:
    x = args[0]
    if not isinstance(x, Parts):
        return mod(*args)
    if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
        func = F.conv1d if isinstance(mod, nn.Conv1d) else F.conv2d
        assert mod.padding_mode == "zeros"
        return affine(func, x, mod.weight, mod.bias, mod.stride, mod.padding, mod.dilation, mod.groups)
    if isinstance(mod, nn.Linear):
        return affine(F.linear, x, mod.weight, mod.bias)
    if isinstance(mod, nn.modules.batchnorm._BatchNorm):
        assert not mod.training and mod.track_running_stats
        return batch_norm(mod, x)
    if isinstance(mod, _ACTS):
        return activation(lambda t: mod(t.clone()), x)  # (clone: in-place modules)
    if isinstance(mod, (nn.MaxPool1d, nn.MaxPool2d)):
        func = F.max_pool1d if isinstance(mod, nn.MaxPool1d) else F.max_pool2d
        return max_pool(x, lambda t: func(t, mod.kernel_size, mod.stride, mod.padding, mod.dilation,
                                           mod.ceil_mode, return_indices=True))
    if isinstance(mod, nn.AdaptiveMaxPool2d):
        return max_pool(x, lambda t: F.adaptive_max_pool2d(t, mod.output_size, return_indices=True))
    if isinstance(mod, _LINEAR_MODULES):
        assert not mod.training
        return both(mod, x)
    raise NotImplementedError("CD reference: no rule for module %s" % type(mod).__name__)


_RELU_FUNCS = {F.relu, torch.relu, F.relu6, F.leaky_relu, F.hardtanh}
_LINEAR_FUNCS = {torch.flatten, F.adaptive_avg_pool2d, F.avg_pool2d, F.pad, torch.reshape}


def _function_rule(fn, args, kwargs) -> Any:
    dec = [a for a in list(args) + list(kwargs.values()) if isinstance(a, Parts)]
    if fn is torch.cat:
        seq = args[0]
        if not any(isinstance(t, Parts) for t in seq):
            return fn(*args, **kwargs)
        rest = args[1:]
        rel = torch.cat([t.rel if isinstance(t, Parts) else torch.zeros_like(t) for t in seq], *rest, **kwargs)
        irr = torch.cat([t.irr if isinstance(t, Parts) else t for t in seq], *rest, **kwargs)
        return Parts(rel, irr)
    if not dec:
        return fn(*args, **kwargs)
    if fn in (operator.add, operator.iadd, torch.add):
        return add(args[0], args[1])
    if fn in (operator.sub, operator.isub, torch.sub):
        return add(args[0], args[1], -1.0)
    if fn in (operator.mul, operator.imul, torch.mul, operator.truediv):
        a, b = args
        assert not (isinstance(a, Parts) and isinstance(b, Parts))
        if isinstance(a, Parts):
            return Parts(fn(a.rel, b), fn(a.irr, b))
        assert fn is not operator.truediv
        return Parts(fn(a, b.rel), fn(a, b.irr))
    x = args[0]
    if fn in _RELU_FUNCS:
        return activation(lambda t: fn(t.clone(), *args[1:], **kwargs), x)  # (clone: inplace=True)
    if fn in (F.max_pool1d, F.max_pool2d):
        a = list(args[1:])
        return max_pool(x, lambda t: fn(t, *a, **dict(kwargs, return_indices=True)))
    if fn in (operator.neg, torch.neg):
        return Parts(-x.rel, -x.irr)
    if fn in (F.conv1d, F.conv2d, F.linear):
        return affine(fn, x, *args[1:])
    if fn is F.dropout:
        assert not kwargs.get("training", args[2] if len(args) > 2 else True), "dropout in training mode"
        return x
    if fn in _LINEAR_FUNCS:
        if fn is F.pad:
            assert kwargs.get("value", 0) in (0, None) and kwargs.get("mode", "constant") == "constant"
        return Parts(fn(x.rel, *args[1:], **kwargs), fn(x.irr, *args[1:], **kwargs))
    raise NotImplementedError("CD reference: no rule for function %s" % getattr(fn, "__name__", fn))


_SHAPE_METHODS = {"view", "reshape", "flatten", "contiguous", "squeeze", "unsqueeze", "permute", "transpose"}


def _method_rule(name: str, args, kwargs) -> Any:
    x = args[0]
    if not isinstance(x, Parts):
        return getattr(x, name)(*args[1:], **kwargs)
    if name in ("size", "dim"):
        return getattr(x.rel, name)(*args[1:], **kwargs)
    if name in _SHAPE_METHODS:
        return Parts(getattr(x.rel, name)(*args[1:], **kwargs), getattr(x.irr, name)(*args[1:], **kwargs))
    if name in ("relu", "relu_"):
        return activation(torch.relu, x)
    if name == "mean":
        return both(lambda t: t.mean(*args[1:], **kwargs), x)
    raise NotImplementedError("CD reference: no rule for method %s" % name)


def _load(a, env):
    if isinstance(a, fx.Node):
        return env[a]
    if isinstance(a, (list, tuple)):
        return type(a)(_load(v, env) for v in a)
    if isinstance(a, dict):
        return {k: _load(v, env) for k, v in a.items()}
    return a


def cd_reference(model: nn.Module, x: Tensor, masks: Tensor, pool_choices=None) -> Tuple[Tensor, Tensor]:
    """``(rel, irr)`` of the model output for each mask: ``(K, C)`` each.  ``x``: one input
    ``(1, *S)``; ``masks``: ``(K, *S)`` or broadcastable (e.g. ``(K, 1, H, W)``).
    ``pool_choices``: arg-max indices to use at the max pools, in forward order (for
    windows whose true activation has exact or near ties, which the rounding of each
    arithmetic breaks its own way)."""
    global REPLAY
    REPLAY = None if pool_choices is None else list(pool_choices)
    try:
        return _run(model, x, masks)
    finally:
        REPLAY = None


def _run(model, x, masks):
    gm = fx.symbolic_trace(model)
    K = masks.shape[0]
    xs = x.expand((K,) + tuple(x.shape[1:]))
    m = masks.to(x.dtype)
    env = {}
    first = True
    with torch.no_grad():
        for node in gm.graph.nodes:
            if node.op == "placeholder":
                assert first, "one input"
                env[node] = Parts(m * xs, (1 - m) * xs)
                first = False
            elif node.op == "get_attr":
                obj = gm
                for part in node.target.split("."):
                    obj = getattr(obj, part)
                env[node] = obj
            elif node.op == "call_module":
                env[node] = _module_rule(gm.get_submodule(node.target), _load(node.args, env))
            elif node.op == "call_function":
                env[node] = _function_rule(node.target, _load(node.args, env), _load(node.kwargs, env))
            elif node.op == "call_method":
                env[node] = _method_rule(node.target, _load(node.args, env), _load(node.kwargs, env))
            elif node.op == "output":
                out = _load(node.args[0], env)
                if isinstance(out, (tuple, list)):
                    out = out[0]
                return out.rel.reshape(K, -1), out.irr.reshape(K, -1)
    raise AssertionError("no output node")
