"""LRP and LayerLRP (``captum_rap/_core/lrp.py``).

Most of LRP is tested by rule and by topic: every rule against a slow reference
(``rules/test_rules_reference.py``), the presets (``rules/test_composites.py``), Captum's LRP
suite and conventions (``integration/test_captum_conventions.py``), batch-norm folding
(``engine/test_batchnorm.py``), the precision guard (``attr/test_precision.py``).  Here:
the layer attribution at the input of the input layer (LRP-0 on a bias-free ReLU net is
input x gradient; at the input layer's input LayerLRP is LRP).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from captum_rap import LRP, LayerLRP

from _lrp_utils import input_x_gradient, rel_err

TOL = 1e-10  # float64 throughout


# ----------------------------------------------------------------------------------------
# LayerLRP at the input of the input layer
# ----------------------------------------------------------------------------------------


def _small_net(bias: bool):
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=bias), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 3, bias=bias))


class InputSkip(nn.Module):
    """The model input feeds the input layer and a skip connection."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.l = nn.Linear(3 * 6 * 6, 3, bias=False)

    def forward(self, x):
        return self.l(F.relu(self.c(x) + x).flatten(1))


# regression (audit, session 5): LayerLRP with attribute_to_layer_input=True on the input layer returned relevance x input
@pytest.mark.parametrize("model_kind", ["sequential", "input_skip"])
def test_layer_lrp_at_input_layer_input_is_input_x_gradient(model_kind):
    torch.manual_seed(0)
    m = (_small_net(False) if model_kind == "sequential" else InputSkip()).double().eval()
    layer = m[0] if model_kind == "sequential" else m.c
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    ref = input_x_gradient(m, x, 2)
    lay = LayerLRP(m, layer, "epsilon", epsilon=0.0).attribute(x, target=2, attribute_to_layer_input=True)
    assert rel_err(lay, ref) < TOL


# regression (audit, session 5): LayerLRP at the input layer's input differed from LRP's input map (relevance x input)
@pytest.mark.parametrize("composite", ["epsilon", "epsilon_plus", "epsilon_gamma_box"])
def test_layer_lrp_at_input_layer_input_equals_lrp(composite):
    torch.manual_seed(1)
    m = _small_net(True).double().eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    full = LRP(m, composite).attribute(x, target=[0, 2])
    lay, delta = LayerLRP(m, m[0], composite).attribute(x, target=[0, 2], attribute_to_layer_input=True,
                                                        return_convergence_delta=True)
    assert rel_err(lay, full) < 1e-12
    _, full_delta = LRP(m, composite).attribute(x, target=[0, 2], return_convergence_delta=True)
    assert torch.allclose(delta, full_delta, atol=1e-12)
