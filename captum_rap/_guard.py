"""Leave the user's model as it was: buffers (batch-norm running statistics) restored after
code that runs the model's forward, which in training mode updates them."""

from __future__ import annotations

import warnings
from typing import Any, List, Optional, Tuple

import torch
from torch import Tensor, nn

__all__ = ["module_of", "ModelStateGuard"]


def module_of(fn: Any) -> Optional[nn.Module]:
    """The ``nn.Module`` behind a forward function: the module itself, the module of a
    bound method (``model.forward``), else ``None``."""
    if isinstance(fn, nn.Module):
        return fn
    owner = getattr(fn, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


class ModelStateGuard:
    """Context manager: if any submodule of ``model`` is in training mode, snapshot every
    buffer on entry and restore it on exit (also after an error), and optionally warn.

    Args:
        model: the model (or a forward function; see :func:`module_of`); anything else
            is left alone.
        warn (str, optional): a warning to give when the model is in training mode.
    """

    def __init__(self, model: Any, warn: Optional[str] = None) -> None:
        self.module = module_of(model)
        self.warn = warn
        self.saved: List[Tuple[Tensor, Tensor]] = []

    def __enter__(self) -> "ModelStateGuard":
        m = self.module
        if m is not None and any(mod.training for mod in m.modules()):
            if self.warn:
                warnings.warn(self.warn, UserWarning, stacklevel=3)
            self.saved = [(b, b.detach().clone()) for b in m.buffers()]
        return self

    def __exit__(self, *exc: Any) -> bool:
        with torch.no_grad():
            for b, v in self.saved:
                if b.shape == v.shape and not torch.equal(b, v):
                    b.copy_(v)
        self.saved = []
        return False
