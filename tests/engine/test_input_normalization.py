"""Input normalisation inside the model is folded into the input layer.

``nn.Sequential(Normalize, net)`` must give the maps of ``net`` with the normalisation
folded into its first layer (weight / std, bias - W · mean / std), with the input-layer
rules (z^B and its bounds, flat, w²) acting in the raw input space and no relevance going
to the normalisation's constants; torchvision's ``inception_v3(transform_input=True)``
conserves like ``transform_input=False``.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from captum_rap import CLRP, LRP, RAP, SGLRP

from _lrp_utils import portable_init, rel_err

torchvision = pytest.importorskip("torchvision")

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """``(x - mean) / std`` with the constants as buffers (as users write it)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def _net(padding):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=padding), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)).double().eval()


def _folded(net):
    """``net`` with the normalisation folded into its first conv by hand."""
    f = copy.deepcopy(net)
    mean = torch.tensor(MEAN, dtype=torch.float64)
    std = torch.tensor(STD, dtype=torch.float64)
    with torch.no_grad():
        w = net[0].weight / std.view(1, 3, 1, 1)
        f[0].weight.copy_(w)
        f[0].bias.copy_(net[0].bias - (w * mean.view(1, 3, 1, 1)).sum((1, 2, 3)))
    return f


METHODS = {
    "epsilon": lambda m: LRP(m, "epsilon"),
    "epsilon_gamma_box": lambda m: LRP(m, "epsilon_gamma_box", low=0.0, high=1.0),
    "epsilon_plus_flat": lambda m: LRP(m, "epsilon_plus_flat"),
    "zplus_box_default_bounds": lambda m: LRP(m, "zplus_box"),  # per-example min / max of the raw input
    "rap": lambda m: RAP(m),
    "clrp1": lambda m: CLRP(m, low=0.0, high=1.0),
    "sglrp": lambda m: SGLRP(m, low=0.0, high=1.0),
}


@pytest.mark.parametrize("normalize", ["module", "torchvision"])
@pytest.mark.parametrize("method", list(METHODS))
def test_normalisation_inside_equals_folded_first_layer(method, normalize):
    net = _net(padding=0)  # no padding: the folded layer is a plain conv with a bias
    norm = Normalize() if normalize == "module" else torchvision.transforms.Normalize(MEAN, STD)
    full = nn.Sequential(norm, net).double().eval()
    ref = _folded(net)
    x = torch.rand(2, 3, 10, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(full(x), ref(x), rtol=0, atol=1e-12)
    a = METHODS[method](full).attribute(x, target=[1, 3])
    b = METHODS[method](ref).attribute(x, target=[1, 3])
    assert float(b.abs().max()) > 0
    assert rel_err(a, b) < 1e-8, method


def test_normalisation_with_padded_first_conv():
    """With zero padding the shift is not one bias per channel (border pixels see fewer
    of them): the folded layer gets an exact bias map; LRP-epsilon then equals a net whose
    first layer is the scaled conv plus that map (LRP-0: with a stabilizer, the map inside
    or after the layer's denominator differs by O(epsilon))."""
    net = _net(padding=1)
    full = nn.Sequential(Normalize(), net).double().eval()
    x = torch.rand(2, 3, 10, 10, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    mean = torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)

    class ScaledConvWithMap(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3, padding=1, bias=False, dtype=torch.float64)
            with torch.no_grad():
                self.conv.weight.copy_(net[0].weight / std.view(1, 3, 1, 1))
            bias_map = nn.functional.conv2d((-mean / std).expand(1, 3, 10, 10), net[0].weight, net[0].bias,
                                            padding=1)
            self.register_buffer("bias_map", bias_map)

        def forward(self, x):
            return self.conv(x) + self.bias_map

    ref = nn.Sequential(ScaledConvWithMap(), *list(net)[1:]).double().eval()
    with torch.no_grad():
        assert torch.allclose(full(x), ref(x), rtol=0, atol=1e-12)
    a = LRP(full, "epsilon", epsilon=0).attribute(x, target=[0, 4])  # LRP-0: the map's place
    b = LRP(ref, "epsilon", epsilon=0).attribute(x, target=[0, 4])  # in the layer does not matter
    assert rel_err(a, b) < 1e-8
    # the unfolded engine would scale relevance by x / (x - mean): a pixel 1e-7 from the
    # mean would get a huge relevance; folded, it stays of the order of its neighbours
    x2 = x.clone()
    x2[0, 0, 4, 4] = MEAN[0] + 1e-7
    r = LRP(full, "epsilon").attribute(x2, target=0)
    assert float(r[0, 0, 4, 4].abs()) < 10 * float(r[0].abs().mean())


def test_inception_v3_transform_input_conserves_like_without():
    """torchvision's transform_input (per-channel scale and shift of each input channel)
    is folded into the stem conv: with box rules at the input layer (they ignore its
    bias, where the shift goes), the bias-free model conserves relevance either way."""
    totals = {}
    for transform in (True, False):
        torch.manual_seed(0)
        m = torchvision.models.inception_v3(init_weights=False, aux_logits=False, transform_input=transform)
        m = portable_init(m, seed=0, bias_free=True).double().eval()
        x = torch.rand(2, 3, 80, 80, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        with torch.no_grad():
            logits = m(x)
        target = logits.argmax(1).tolist()
        want = logits[torch.arange(2), target]
        for preset in ("epsilon_gamma_box", "zplus_box"):
            attr = LRP(m, preset, low=0.0, high=1.0, epsilon=1e-12, stabilizer=1e-12).attribute(x, target=target)
            err = float(((attr.reshape(2, -1).sum(1) - want).abs() / want.abs()).max())
            totals[(transform, preset)] = err
            assert err < 1e-6, (transform, preset, err)


def test_position_dependent_scale_is_not_folded_and_warns():
    class PerPixel(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("scale", torch.linspace(0.5, 2.0, 100).view(1, 1, 10, 10))

        def forward(self, x):
            return x * self.scale

    full = nn.Sequential(PerPixel(), _net(padding=0)).double().eval()
    x = torch.rand(1, 3, 10, 10, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="varies over positions"):
        attr = LRP(full, "epsilon").attribute(x, target=1)
    assert torch.isfinite(attr).all()
    # per-channel constants fold silently
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LRP(nn.Sequential(Normalize(), _net(padding=0)).double().eval(), "epsilon").attribute(x, target=1)
