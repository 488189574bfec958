"""The function mode (``captum_rap/_engine/mode.py``) on what a forward does with activations
besides layers: parameters cast with ``type_as(h)``, constants built from an activation
(``zeros_like`` and the other factories), activations written into buffers, and no
engine tag left on a user tensor, also after an error.

Reference: on bias-free ReLU networks LRP with ``epsilon=0`` is exactly input x gradient.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from captum_rap import LRP, UnsupportedOperationError

from _lrp_utils import input_x_gradient, rel_err

TOL = 1e-10  # float64 throughout


def no_captum_tags(*objs):
    for obj in objs:
        tensors = list(obj.parameters()) + list(obj.buffers()) if isinstance(obj, nn.Module) else [obj]
        for t in tensors:
            assert not any("captum_rap" in k for k in vars(t)), "engine tag left on a user tensor"


# ----------------------------------------------------------------------------------------
# 1. parameter cast with type_as(activation); no tags left on user tensors
# ----------------------------------------------------------------------------------------


class TypeAsScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.l = nn.Linear(5, 4, bias=False)
        self.scale = nn.Parameter(torch.rand(4) + 0.5)
        self.o = nn.Linear(4, 3, bias=False)

    def forward(self, x):
        h = torch.relu(self.l(x))
        h = h * self.scale.type_as(h)
        h = h * self.scale.expand_as(h).to(h)
        return self.o(h)


# regression (audit, session 5): p.type_as(h) raised a false error and left an internal attribute on the user's parameter
def test_type_as_parameter_is_a_constant():
    torch.manual_seed(0)
    m = TypeAsScale().double().eval()
    x = torch.randn(3, 5, dtype=torch.float64)
    a = LRP(m, "epsilon", epsilon=0.0).attribute(x, target=0)
    assert rel_err(a, input_x_gradient(m, x, 0)) < TOL
    no_captum_tags(m)


class CachesThenFails(nn.Module):
    def __init__(self):
        super().__init__()
        self.l = nn.Linear(5, 4)
        self.register_buffer("buf", torch.zeros(4))
        self.cache = None

    def forward(self, x):
        h = self.l(x)
        self.cache = h  # the model keeps an activation
        return torch.logsumexp(h, dim=1)  # unsupported: raises


# regression (audit, session 5): a call that raised left engine tags on the model's tensors (and on an activation it cached)
def test_no_tags_left_after_a_raising_call():
    torch.manual_seed(0)
    m = CachesThenFails().eval()
    x = torch.randn(2, 5)
    with pytest.raises(UnsupportedOperationError, match="logsumexp"):
        LRP(m).attribute(x, target=0)
    no_captum_tags(m, m.cache)


class WritesBuffer(nn.Module):
    def __init__(self):
        super().__init__()
        self.l = nn.Linear(5, 4)
        self.register_buffer("buf", torch.zeros(4))

    def forward(self, x):
        h = self.l(x)
        self.buf.add_(h[0])  # an activation written into a buffer
        return h


# regression (audit, session 5): an activation written into a buffer must be refused without changing the buffer or leaving tags
def test_activation_written_into_buffer_raises_and_leaves_it_unchanged():
    m = WritesBuffer().eval()
    with pytest.raises(UnsupportedOperationError, match="add_.*buffer"):
        LRP(m).attribute(torch.randn(2, 5), target=0)
    assert torch.equal(m.buf, torch.zeros(4))
    no_captum_tags(m)


# ----------------------------------------------------------------------------------------
# 2. constants built from an activation (zeros_like and friends)
# ----------------------------------------------------------------------------------------


class Built(nn.Module):
    def __init__(self, style):
        super().__init__()
        self.style = style
        self.l = nn.Linear(5, 4, bias=False)
        self.o = nn.Linear(4, 3, bias=False)

    def forward(self, x):
        h = self.l(x)
        if self.style == "setitem":  # keep two channels (a selection)
            g = torch.zeros_like(h)
            g[:, :2] = h[:, :2]
            g = torch.relu(g)
        elif self.style == "maximum":  # a ReLU written with maximum
            g = torch.maximum(h, torch.zeros_like(h))
        elif self.style == "minimum":
            g = -torch.minimum(h, h.new_zeros(h.shape))
        elif self.style == "ones_like":
            g = torch.relu(h * torch.ones_like(h) + torch.full_like(h, 0.0))
        elif self.style == "maximum_nonzero":
            g = torch.maximum(h, torch.full_like(h, 0.5))
        elif self.style == "maximum_two":
            g = torch.maximum(h, 2 * h)
        elif self.style == "new_tensor":
            g = h.new_tensor(h)  # copies the activation without its graph
        else:
            raise ValueError(self.style)
        return self.o(g)


# regression (audit, session 5): zeros_like(h) / ones_like / new_zeros, maximum(h, 0) as a ReLU and t[idx] = v were refused
@pytest.mark.parametrize("style", ["setitem", "maximum", "minimum", "ones_like"])
def test_constants_from_activation_supported(style):
    torch.manual_seed(0)
    m = Built(style).double().eval()
    x = torch.randn(4, 5, dtype=torch.float64)
    ref = input_x_gradient(m, x, 1)
    a, delta = LRP(m, "epsilon", epsilon=0.0).attribute(x, target=1, return_convergence_delta=True)
    assert rel_err(a, ref) < TOL
    assert float(delta.abs().max()) < 1e-10


# regression (audit, session 5): the error named the factory (zeros_like, full_like) instead of the unsupported op
@pytest.mark.parametrize("style,op", [("maximum_nonzero", "maximum"), ("maximum_two", "maximum"),
                                      ("new_tensor", "new_tensor")])
def test_unsupported_ops_after_constants_are_named(style, op):
    m = Built(style).eval()
    with pytest.raises(UnsupportedOperationError, match=f"'{op}'") as info:
        LRP(m).attribute(torch.randn(2, 5), target=0)
    assert "zeros_like" not in str(info.value) and "full_like" not in str(info.value)
    no_captum_tags(m)
