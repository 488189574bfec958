"""CD's precision check is keyed by the input's content (issue 16): a new input written
at a reused address (a recycled buffer, ``torch.from_numpy`` of a reused array: same
``data_ptr``, ``_version`` and shape) is checked; the same values again are not."""

from __future__ import annotations

import numpy as np
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
