"""Division helpers of the propagation engine.

Sign convention: ``sign(+0.0) = +1`` and ``sign(-0.0) = -1`` (the sign bit), so a stabilized
denominator is never 0.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["stabilize", "safe_divide"]


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
