"""The official ``acd`` package (Singh et al.), run here as the reference for CD and ACD.

The package (in the test extra) needs three shims to run on this machine; none of them
changes a rule:

* ``np.int`` (removed in numpy 1.24) is restored for ``acd``'s 1-D code;
* its scoring calls default to ``device='cuda'`` (and ``agg_2d.agglomerate`` does not forward
  its ``device`` inside the loop), so ``cd`` is wrapped to run on the CPU;
* ``propagate_pooling`` allocates its unpooled output as float32 whatever the input dtype:
  it is replaced by the same rule (the arg-max of ``relevant + irrelevant``, computed by the
  pooler itself, gathered from both parts) in the input's dtype, so float64 stays float64.
  It can record the arg-max indices the reference chose, or replay given ones.

Calls run with float64 as torch's default dtype (``acd`` allocates ``torch.zeros`` in the
default dtype), as the fixtures in ``../shared/fixtures`` were made.

Why run the reference here at all: where a max-pool window holds *exact* ties of the true
activation (the digits' constant background), the reference picks the winner by the rounding
noise of its own arithmetic, which differs between torch builds (on torch 2.14.1 the official
``acd`` moves the stored fixture's ``half`` mask by 1.8e-2 of max|rel|).  Comparing with the
reference *as run on this build* is well defined; the distance to the stored fixture is then
bounded by the reference's own distance to it.
"""

from __future__ import annotations

import contextlib
from copy import deepcopy
from typing import Iterator, List, Optional

import numpy as np
import pytest
import torch


class Reference:
    """Handles to the patched ``acd`` functions (valid inside :func:`acd_reference`)."""

    def __init__(self, cd_module, agg_2d, agg_1d):
        self._cd_module = cd_module
        self.agg_2d = agg_2d
        self.agg_1d = agg_1d
        self.record: Optional[List[torch.Tensor]] = None  # arg-max indices chosen by the reference
        self.replay: Optional[List[torch.Tensor]] = None  # indices to use instead
        self.calls = 0

    def cd(self, x: torch.Tensor, model, mask) -> tuple:
        """``acd.cd`` on the CPU in float64; returns ``(rel, irrel)`` detached."""
        rel, irr = self._cd_module.cd(x, model, mask=np.asarray(mask), device="cpu")
        return rel.detach(), irr.detach()

    # the reference's propagate_pooling, dtype-preserving, with record / replay
    def propagate_pooling(self, relevant, irrelevant, pooler):
        p = deepcopy(pooler)
        p.return_indices = True
        _, ind = p(relevant + irrelevant)
        if self.replay is not None:
            ind = self.replay.pop(0)
        if self.record is not None:
            self.record.append(ind)
        n, c, h, w = ind.shape

        def unpool(t):
            return t.flatten(2).gather(2, ind.flatten(2)).reshape(n, c, h, w)

        return unpool(relevant), unpool(irrelevant)


@contextlib.contextmanager
def acd_reference() -> Iterator[Reference]:
    """Patch and yield the installed ``acd`` package (skips if it is not installed)."""
    pytest.importorskip("acd")
    from acd.agglomeration import agg_1d, agg_2d
    from acd.scores import cd as cd_module
    from acd.scores import score_funcs

    ref = Reference(cd_module, agg_2d, agg_1d)
    orig_cd = cd_module.cd

    def cpu_cd(im_torch, model, mask=None, model_type=None, device="cuda", transform=None):
        ref.calls += 1
        return orig_cd(im_torch, model, mask, model_type, device="cpu", transform=transform)

    old_dtype = torch.get_default_dtype()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(np, "int", int, raising=False)
        mp.setattr(cd_module, "propagate_pooling", ref.propagate_pooling)
        mp.setattr(score_funcs, "cd", cpu_cd)
        mp.setattr(agg_2d, "cd", cpu_cd)
        torch.set_default_dtype(torch.float64)
        try:
            yield ref
        finally:
            torch.set_default_dtype(old_dtype)
