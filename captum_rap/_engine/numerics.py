"""Division and stabiliser helpers: every division of the propagation engine, the LRP rules
and RAP goes through this module.

Sign convention (the one used everywhere): the sign of a stabilized value is its sign bit,
``sign(+0.0) = +1`` and ``sign(-0.0) = -1``, so ``stabilize(z, ε) = z + ε·sign(z)`` is never 0.

What happens at an exactly zero denominator is chosen by the caller, by name:

* :func:`divide` (LRP rules): ``num / stabilize(den, ε)``; a zero denominator is stabilized
  like any other (to ``±ε``).  ``ε = 0`` falls back to :func:`safe_divide`.
* :func:`divide_keep_zero` (RAP, as its reference implementation's ``safe_divide``): the
  quotient is ``0`` where ``den == 0`` exactly; non-zero denominators are stabilized as
  above (``den + ε·sign(den)`` and ``stabilize(den, ε)`` are the same number there).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["stabilize", "safe_divide", "floored_epsilon", "divide", "divide_keep_zero", "per_example"]


def stabilize(z: Tensor, epsilon: float) -> Tensor:
    """Sign-preserving stabilizer: ``z + epsilon * sign(z)``, with ``sign(+0.0) = +1``
    (and ``sign(-0.0) = -1``).  Returns a new tensor."""
    if epsilon == 0:
        return z.clone()
    # |z| + eps with the sign bit of z: one allocation, no boolean masks (slow on CPU)
    return torch.abs(z).add_(epsilon).copysign_(z)


def safe_divide(a: Tensor, b: Tensor) -> Tensor:
    """``a / b`` where ``b != 0`` and exactly ``0`` where ``b == 0``.

    Implemented as ``a / b`` with non-finite quotients set to 0 (boolean masks are several
    times slower than arithmetic on CPU).  This differs from the definition only where
    ``a`` is itself non-finite or the quotient overflows; the attribution methods reject
    non-finite inputs and model outputs before propagating, so neither occurs there."""
    return torch.div(a, b).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)


def floored_epsilon(epsilon: float, dtype: torch.dtype) -> float:
    """A positive stabilizer no smaller than the smallest normal number of ``dtype`` (a
    smaller one underflows to 0 there, e.g. ``1e-9`` in float16, and ``0 / 0`` would give
    NaN maps); ``0`` stays ``0`` (the unstabilized rules guard exact zeros themselves)."""
    if epsilon <= 0 or not dtype.is_floating_point:
        return epsilon
    return max(epsilon, float(torch.finfo(dtype).tiny))


def divide(num: Tensor, den: Tensor, epsilon: float) -> Tensor:
    """``num / stabilize(den, ε)`` (the LRP rules' division).  With ``epsilon == 0``
    (LRP-0, unstabilized z+/alpha-beta) outputs with ``den == 0`` pass no relevance (0
    instead of 0/0 = NaN): their numerators are all 0 (alpha-beta, z+) or their relevance
    ``R = grad * z`` is 0 (hidden layers), and a single NaN would otherwise poison the whole
    map (e.g. a dead receptive field in a bias-free ReLU network).  A positive ``epsilon``
    is floored at the smallest normal number of ``den``'s dtype (:func:`floored_epsilon`)."""
    if epsilon == 0:
        return safe_divide(num, den)
    d = stabilize(den, floored_epsilon(epsilon, den.dtype))
    if d.shape == num.shape and d.dtype == num.dtype:
        return torch.div(num, d, out=d)  # into the temporary: one allocation less
    return num / d


def divide_keep_zero(num: Tensor, den: Tensor, epsilon: float, overwrite_den: bool = False) -> Tensor:
    """``num / (den + ε·sign(den))``, exactly ``0`` where ``den == 0`` (RAP's division: the
    reference's ``safe_divide``, optionally stabilized; ``ε`` floored as in :func:`divide`).

    ``overwrite_den=True`` computes into ``den`` (a temporary of the caller: at large batch
    sizes a fresh activation-sized allocation costs more than the arithmetic)."""
    if not overwrite_den:
        if epsilon > 0:
            # torch.sign(0) = 0 keeps exact zeros at 0 (safe_divide then gives 0 there)
            return safe_divide(num, den + floored_epsilon(epsilon, den.dtype) * torch.sign(den))
        return safe_divide(num, den)
    if epsilon > 0:
        den.add_(torch.sign(den).mul_(floored_epsilon(epsilon, den.dtype)))
    if den.shape != num.shape:
        return divide_keep_zero(num, den, 0.0)
    return torch.div(num, den, out=den).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)


def per_example(t: Tensor, batch: Any, op: str = "sum") -> Tensor:
    """``t`` reduced over each example, broadcastable against ``t``.

    ``batch``: ``None`` (one example: reduce over everything), the batch axis, or
    ``(axis, inner)``: the examples in contiguous blocks of ``inner`` entries along ``axis``.
    ``op``: ``"sum"``, or ``"min"`` / ``"max"`` ignoring NaN entries."""
    if batch is None:
        axis, inner = None, 1
    elif isinstance(batch, int):
        axis, inner = batch, 1
    else:
        axis, inner = batch
    if op != "sum":
        fill = float("inf") if op == "min" else float("-inf")
        t = torch.nan_to_num(t, nan=fill)
    if axis is None:
        flat = t.reshape(1, -1)
    else:
        flat = t.movedim(axis, 0).reshape(t.shape[axis] // inner, -1)
    if op == "sum":
        red = flat.sum(1)
    else:
        red = (torch.amin if op == "min" else torch.amax)(flat, dim=1)
    if axis is None:
        return red.reshape((1,) * t.dim())
    red = red.repeat_interleave(inner) if inner > 1 else red
    shape = [1] * t.dim()
    shape[axis] = red.shape[0]
    return red.view(shape)
