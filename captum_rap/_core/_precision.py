"""Precision of the relevance path: the computation dtype, the model's parameters in that
dtype for one call, no autocast, and the estimate of the relevance sum's rounding error
that decides whether a float32 run is redone in float64."""

from __future__ import annotations

import contextlib
import itertools
import math
from typing import Any, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn

_HALF = (torch.float16, torch.bfloat16)

#: Estimated relative error of the relevance sum above which a run is redone in float64
#: (``dtype=None``) or a warning is given (an explicit ``dtype``).  The estimate is
#: ``Σ|R_in| / Σ|seed| · eps(dtype)``: relevance that cancels in the sum carries rounding
#: errors of the size of its mass.
PRECISION_TOLERANCE = 1e-3


def check_dtype(method: str, dtype: Any) -> Optional[torch.dtype]:
    """``None`` (automatic) or the computation dtype of the relevance path."""
    if dtype is None:
        return None
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{method}: dtype must be None (automatic), torch.float32 or torch.float64, "
                         f"got {dtype!r} (half precision is never used on the relevance path)")
    return dtype


def model_dtype(model: nn.Module, inputs: Tuple[Any, ...]) -> torch.dtype:
    """The floating dtype the model computes in: its first floating parameter or buffer,
    else its first floating input, else torch's default."""
    for t in itertools.chain(model.parameters(), model.buffers()):
        if t.is_floating_point():
            return t.dtype
    for t in inputs:
        if isinstance(t, Tensor) and t.is_floating_point():
            return t.dtype
    return torch.get_default_dtype()


@contextlib.contextmanager
def parameters_in(model: nn.Module, dtype: torch.dtype) -> Iterator[None]:
    """The model's floating parameters and buffers replaced by copies in ``dtype`` for the
    duration (tied parameters stay tied, ``requires_grad`` kept); the original objects are
    put back afterwards, also when the body raises, so the model is unchanged."""
    saved: List[Tuple[dict, str, Tensor]] = []
    copies: dict = {}
    try:
        for mod in model.modules():
            for store, is_param in ((mod._parameters, True), (mod._buffers, False)):
                for name, t in list(store.items()):
                    if t is None or not t.is_floating_point() or t.dtype == dtype:
                        continue
                    new = copies.get(id(t))
                    if new is None:
                        data = t.detach().to(dtype)
                        new = nn.Parameter(data, requires_grad=t.requires_grad) if is_param else data
                        copies[id(t)] = new
                    saved.append((store, name, t))
                    store[name] = new
        yield
    finally:
        for store, name, t in reversed(saved):
            store[name] = t


@contextlib.contextmanager
def autocast_disabled(inputs: Tuple[Any, ...]) -> Iterator[None]:
    """No autocast inside a propagation (it would run layers in half precision)."""
    kinds = {"cpu"} | {t.device.type for t in inputs if isinstance(t, Tensor)}
    with contextlib.ExitStack() as stack:
        for kind in sorted(kinds):
            try:
                stack.enter_context(torch.autocast(device_type=kind, enabled=False))
            except (RuntimeError, ValueError):  # a device type without autocast
                pass
        yield


def cast_floating(values: Tuple[Any, ...], dtype: torch.dtype) -> Tuple[Any, ...]:
    return tuple(v.to(dtype) if isinstance(v, Tensor) and v.is_floating_point() and v.dtype != dtype else v
                 for v in values)


def relative_error_estimate(rel: Tuple[Any, ...], seed: Tensor, dtype: torch.dtype) -> float:
    """``max over examples of Σ|R_in| / Σ|seed| · eps(dtype)`` (inf for non-finite maps)."""
    n = seed.shape[0]
    mass = torch.zeros(n, dtype=torch.float64, device=seed.device)
    for r in rel:
        if isinstance(r, Tensor) and r.is_floating_point() and r.shape[:1] == seed.shape[:1]:
            mass = mass + r.detach().abs().reshape(n, -1).sum(1, dtype=torch.float64)
    if not bool(torch.isfinite(mass).all()):
        return math.inf
    ref = seed.detach().abs().reshape(n, -1).sum(1, dtype=torch.float64)
    ratio = torch.where(ref > 0, mass / ref.clamp(min=torch.finfo(torch.float64).tiny), torch.zeros_like(mass))
    return float(ratio.max()) * torch.finfo(dtype).eps if n else 0.0
