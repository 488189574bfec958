"""Layer outputs are kept without copies; in-place writes must not change any map.

The engine copies a saved layer output when the function mode sees an in-place op on it
(copy-on-write) and recomputes it from the layer input when a write it could not see
(through a view) changed the tensor's version counter.  Each model below is compared with
the same computation written out of place."""

import pytest
import torch
from torch import nn

from captum_rap import LRP, RAP


class Net(nn.Module):
    def __init__(self, style: str):
        super().__init__()
        torch.manual_seed(0)
        self.style = style
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 8 * 8, 5)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.3, 0.3)

    def forward(self, x):
        a = self.bn(self.c1(x))
        b = self.c2(torch.relu(a))
        if self.style == "out_of_place":
            a = torch.relu(a)
            b = torch.relu(b + a)
        elif self.style == "direct":  # seen by the function mode: copy-on-write
            a.relu_()
            b += a
            b.relu_()
        else:  # through views: unseen writes, recomputed from the layer inputs
            a.view(-1).relu_()
            b.view(-1).add_(a.view(-1))
            b.view(b.shape[0], -1).relu_()
        return self.fc(b.flatten(1))


@pytest.mark.parametrize("style", ["direct", "views"])
@pytest.mark.parametrize("method", ["epsilon", "epsilon_gamma_box", "rap"])
def test_in_place_writes_do_not_change_maps(style, method):
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    ref_model = Net("out_of_place").double().eval()
    model = Net(style).double().eval()
    model.load_state_dict(ref_model.state_dict())
    assert torch.allclose(model(x.clone()), ref_model(x.clone()))

    def run(m):
        if method == "rap":
            return RAP(m).attribute(x, target=[0, 1, 2])
        return LRP(m, method, low=-3.0, high=3.0).attribute(x, target=[0, 1, 2]) \
            if method.endswith("box") else LRP(m, method).attribute(x, target=[0, 1, 2])

    expected = run(ref_model)
    got = run(model)
    assert expected.abs().max() > 0
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-12 * float(expected.abs().max()))
