"""CD's checks: the precision check is keyed by the input's content (issue 16): a new
input written at a reused address (a recycled buffer, ``torch.from_numpy`` of a reused
array: same ``data_ptr``, ``_version`` and shape) is checked, the same values again are
not; the batching check tells a model that mixes its batch from an ill-conditioned
decomposition of a per-example model."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

from captum_rap import CD


def test_precision_check_is_keyed_by_content_not_address():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    buf = np.random.default_rng(0).standard_normal((1, 6)).astype(np.float32)
    masks = torch.tensor([[1, 1, 0, 0, 1, 0], [0, 1, 1, 1, 0, 0], [1, 0, 0, 1, 1, 1]], dtype=torch.float32)
    cd = CD(m)
    x1 = torch.from_numpy(buf)
    cd.decompose(x1, masks)
    n1 = cd.num_check_forwards
    assert n1 > 0 and cd.precision_error is not None
    err1 = cd.precision_error
    # new values at the same address: same data_ptr, _version and shape
    buf[:] = np.random.default_rng(1).standard_normal((1, 6)).astype(np.float32) * 3
    x2 = torch.from_numpy(buf)
    assert x2.data_ptr() == x1.data_ptr() and x2._version == x1._version
    cd.decompose(x2, masks)
    n2 = cd.num_check_forwards
    assert n2 > n1, "the new input was not checked"
    assert cd.precision_error != err1
    # the same values in another tensor: already checked
    cd.decompose(x2.clone(), masks)
    assert cd.num_check_forwards == n2
    # additional tensor arguments are part of the input
    m2 = lambda x, s: m(x * s)  # noqa: E731
    cd2 = CD(m2)
    cd2.decompose(x2, masks, additional_forward_args=(torch.tensor(1.0),))
    k = cd2.num_check_forwards
    cd2.decompose(x2, masks, additional_forward_args=(torch.tensor(2.0),))
    k2 = cd2.num_check_forwards
    assert k2 > k
    cd2.decompose(x2, masks, additional_forward_args=(torch.tensor(2.0),))
    assert cd2.num_check_forwards == k2


class _IllConditioned(nn.Module):
    """Per-example, but its rounding depends on the batch size (a 1e-12 constant in a
    forward of one), and a batch-norm shift is split at a unit where the relevant part is
    1e-13: CD amplifies the rounding difference (as deep batch-norm networks do)."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(2).eval()
        self.head = nn.Linear(2, 2)
        with torch.no_grad():
            self.bn.bias.fill_(10.0)

    def forward(self, x):
        h = x + (1e-12 if x.shape[0] == 1 else 0.0)
        return self.head(self.bn(h))


def test_batching_check_tells_ill_conditioning_from_mixing():
    torch.manual_seed(0)
    m = _IllConditioned().double().eval()
    x = torch.tensor([[1e-13, 5.0]], dtype=torch.float64)
    masks = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    cd = CD(m)
    with pytest.warns(RuntimeWarning, match="ill-conditioned.*does not mix its batch"):
        rel, irr = cd.decompose(x, masks)
    assert cd.conditioning_error > 0.1 and cd.batching_error == 0.0
    assert not cd._unbatched  # masks stay batched
    # and a model that mixes its batch is still caught
    mix = lambda t: m.head(t - t.mean(0, keepdim=True))  # noqa: E731
    cd2 = CD(mix)
    with pytest.warns(RuntimeWarning, match="mixes or reshapes the batch"):
        cd2.decompose(x, masks)
    assert cd2._unbatched and cd2.conditioning_error is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cd.decompose(x, masks)  # once per instance
