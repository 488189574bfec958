"""Shared helpers for tests that use the reference fixtures in ../shared/fixtures/."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"


def fixture_path(name: str) -> Path:
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"reference fixture {name} not found in {FIXTURES} (shared/ is not checked out)")
    return path


def portable_init(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """The "portable seeded weights" of shared/fixtures/README.md: walk the state dict
    in order with one numpy RandomState, draw in float64, store in the model's dtype."""
    rs = np.random.RandomState(seed)
    state = model.state_dict()
    new = {}
    for name, t in state.items():
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
            v = rs.standard_normal(shape) * math.sqrt(2.0 / float(np.prod(shape[1:])))
        new[name] = torch.from_numpy(np.asarray(v, dtype=np.float64)).to(t.dtype)
    model.load_state_dict(new)
    return model
