"""Batch-norm folding (``merge_batchnorm``, ``captum_rap/_engine/batchnorm.py``): a batch norm
is folded into the conv / linear layer before it only where this is exact.

Every reference is independent of the engine:

* on a ReLU network without biases and without batch-norm shifts, LRP with ``epsilon=0``
  is exactly input x gradient (``x * d logit / d x``), and the relevance at a hidden
  tensor ``h`` is ``h * d logit / d h`` (plain autograd);
* ``merge_batchnorm=False`` where folding would be inexact, or a model whose batch norm
  was folded into the conv / linear weights by hand.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from captum_rap import CLRP, LRP, SGLRP, LayerLRP

from _lrp_utils import activation_x_gradient, input_x_gradient, rel_err

TOL = 1e-10  # float64 throughout


def shift_free_bn(bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Random positive scales, no shift (running_mean = beta = 0)."""
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.zero_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.running_mean.zero_()


def random_bn(bn: nn.modules.batchnorm._BatchNorm) -> None:
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.running_mean.uniform_(-0.5, 0.5)


# ----------------------------------------------------------------------------------------
# 1. batch-norm folding when the conv output has another consumer
# ----------------------------------------------------------------------------------------


class SharedConvBN(nn.Module):
    """The conv output feeds the batch norm and something else."""

    def __init__(self, style: str):
        super().__init__()
        self.style = style
        self.c = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.bn2 = nn.BatchNorm2d(4)
        shift_free_bn(self.bn)
        shift_free_bn(self.bn2)
        self.l = nn.Linear(4 * 6 * 6, 3, bias=False)

    def forward(self, x):
        c = self.c(x)
        if self.style == "skip_after":  # y = relu(bn(c) + c)
            h = F.relu(self.bn(c) + c)
        elif self.style == "skip_before":  # c used before the batch norm reads it
            d = 0.5 * c
            h = F.relu(d + self.bn(c))
        elif self.style == "two_bns":
            h = F.relu(self.bn(c)) + F.relu(self.bn2(c))
        elif self.style == "write_before_bn":  # c written in place, then normalised
            c[:, 1] = 0.7
            h = F.relu(self.bn(c))
        else:
            raise ValueError(self.style)
        return self.l(h.flatten(1))


# regression (audit, session 5): the BN was folded into a conv whose output had been overwritten in place in part
def test_bn_fold_after_in_place_write_to_conv_output():
    # the BN reads a conv output that was overwritten in part: folding BN(W x) would be
    # wrong (the constant channel does not depend on x); merge_batchnorm=False is exact
    torch.manual_seed(0)
    m = SharedConvBN("write_before_bn").double().eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    plain = LRP(m, "epsilon", epsilon=0.0, merge_batchnorm=False).attribute(x, target=1)
    folded = LRP(m, "epsilon", epsilon=0.0).attribute(x, target=1)
    assert rel_err(folded, plain) < TOL


# regression (audit, session 5): the BN was folded although the conv output also fed a skip or a second BN (relu(bn(c) + c): 44% off)
@pytest.mark.parametrize("style", ["skip_after", "skip_before", "two_bns"])
def test_bn_fold_with_shared_conv_output_is_exact(style):
    torch.manual_seed(0)
    m = SharedConvBN(style).double().eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    ref = input_x_gradient(m, x, 1)
    for merge in (True, False):
        a, delta = LRP(m, "epsilon", epsilon=0.0, merge_batchnorm=merge).attribute(
            x, target=1, return_convergence_delta=True)
        assert rel_err(a, ref) < TOL, (style, merge)
        assert float(delta.abs().max()) < 1e-10


# regression (audit, session 5): the same wrong fold in CLRP / SGLRP (they fold by default)
@pytest.mark.parametrize("method", ["CLRP", "SGLRP"])
def test_contrastive_fold_with_shared_conv_output(method):
    # CLRP / SGLRP fold by default; with a shared conv output the map must be the one of
    # merge_batchnorm=False (exact there)
    torch.manual_seed(1)
    m = SharedConvBN("skip_after").double().eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    cls = {"CLRP": CLRP, "SGLRP": SGLRP}[method]
    kw = {"composite": "epsilon", "epsilon": 0.0}
    folded = cls(m, **kw).attribute(x, target=[0, 2])
    plain = cls(m, merge_batchnorm=False, **kw).attribute(x, target=[0, 2])
    assert rel_err(folded, plain) < TOL


class ConvBNNet(nn.Module):
    """conv -> BN -> ReLU -> linear; the BN is the conv's only consumer."""

    def __init__(self, shift: bool = True, bias: bool = True):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, padding=1, bias=bias)
        self.bn = nn.BatchNorm2d(4)
        (random_bn if shift else shift_free_bn)(self.bn)
        self.l = nn.Linear(4 * 6 * 6, 3, bias=False)

    def forward(self, x):
        return self.l(F.relu(self.bn(self.c(x))).flatten(1))


def _folded_by_hand(m: ConvBNNet) -> nn.Module:
    scale = m.bn.weight / torch.sqrt(m.bn.running_var + m.bn.eps)
    shift = m.bn.bias - m.bn.running_mean * scale
    conv = nn.Conv2d(3, 4, 3, padding=1).double()
    with torch.no_grad():
        conv.weight.copy_(m.c.weight * scale.view(-1, 1, 1, 1))
        b = m.c.bias if m.c.bias is not None else torch.zeros_like(shift)
        conv.bias.copy_(b * scale + shift)
    return nn.Sequential(conv, nn.ReLU(), nn.Flatten(), m.l).eval()


# regression (audit, session 5): guards the fix above: a BN that is the conv's only consumer must still be folded
@pytest.mark.parametrize("composite", ["epsilon", "epsilon_plus", "epsilon_gamma_box"])
def test_bn_is_still_folded_when_it_is_the_only_consumer(composite):
    # the fix must not disable folding: compare with the conv folded by hand
    torch.manual_seed(2)
    m = ConvBNNet().double().eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    hand = _folded_by_hand(m)
    kw = {"epsilon": 1e-3} if composite == "epsilon" else {}
    a = LRP(m, composite, **kw).attribute(x, target=[0, 2])
    b = LRP(hand, composite, merge_batchnorm=False, **kw).attribute(x, target=[0, 2])
    assert rel_err(a, b) < 1e-9
    if composite != "epsilon_gamma_box":  # (ZBox ignores the bias: folding changes nothing)
        # and differs from the unfolded map (the BN shift matters), so folding did happen
        c = LRP(m, composite, merge_batchnorm=False, **kw).attribute(x, target=[0, 2])
        assert rel_err(a, c) > 1e-6


# ----------------------------------------------------------------------------------------
# 2. Linear on (N, L, F) followed by BatchNorm1d(L)
# ----------------------------------------------------------------------------------------


class Linear3dBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.l = nn.Linear(5, 4, bias=False)
        self.bn = nn.BatchNorm1d(4)  # normalises dim 1 = L (= 4 = out_features)
        shift_free_bn(self.bn)
        self.o = nn.Linear(16, 3, bias=False)

    def forward(self, x):
        return self.o(F.relu(self.bn(self.l(x))).flatten(1))


# regression (audit, session 5): Linear on (N, L, F) + BatchNorm1d(L) was folded on the Linear's feature axis (wrong axis)
def test_linear_3d_input_bn1d_not_folded_on_feature_axis():
    torch.manual_seed(0)
    m = Linear3dBN().double().eval()
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    ref = input_x_gradient(m, x, 0)
    a, delta = LRP(m, "epsilon", epsilon=0.0).attribute(x, target=0, return_convergence_delta=True)
    assert rel_err(a, ref) < TOL
    assert float(delta.abs().max()) < 1e-10


# regression (audit, session 5): guards the fix above: BatchNorm1d after a 2-D Linear must still be folded
def test_linear_2d_bn1d_still_folded():
    torch.manual_seed(3)
    lin, bn, out = nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 3, bias=False)
    random_bn(bn)
    m = nn.Sequential(lin, bn, nn.ReLU(), out).double().eval()
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    hand_lin = nn.Linear(5, 4).double()
    with torch.no_grad():
        hand_lin.weight.copy_(lin.weight * scale[:, None])
        hand_lin.bias.copy_(lin.bias * scale + bn.bias - bn.running_mean * scale)
    hand = nn.Sequential(hand_lin, nn.ReLU(), out).eval()
    x = torch.randn(4, 5, dtype=torch.float64)
    a = LRP(m, "epsilon", epsilon=1e-3).attribute(x, target=1)
    b = LRP(hand, "epsilon", epsilon=1e-3, merge_batchnorm=False).attribute(x, target=1)
    assert rel_err(a, b) < 1e-9


# ----------------------------------------------------------------------------------------
# 3. LayerLRP on a conv whose batch norm is folded into it
# ----------------------------------------------------------------------------------------


# regression (audit, session 5): LayerLRP on a conv with a folded BN crashed (TypeError in the capture hook)
def test_layer_lrp_on_folded_conv_is_relevance_at_bn_output():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(),
                      nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                      nn.Flatten(), nn.Linear(4 * 6 * 6, 3, bias=False)).double().eval()
    random_bn(m[3])  # with a shift: the BN output relevance differs from the conv's
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    # above the BN everything is bias-free: R(BN output) = BN output * gradient
    ref = activation_x_gradient(m, m[3], x, 0)
    conv, delta = LayerLRP(m, m[2], "epsilon", epsilon=0.0).attribute(x, target=0, return_convergence_delta=True)
    assert rel_err(conv, ref) < TOL
    assert float(delta.abs().max()) < 1e-10
    bn_out = LayerLRP(m, m[3], "epsilon", epsilon=0.0).attribute(x, target=0)
    bn_in = LayerLRP(m, m[3], "epsilon", epsilon=0.0).attribute(x, target=0, attribute_to_layer_input=True)
    assert rel_err(bn_out, ref) < TOL and rel_err(bn_in, ref) < TOL
    # without folding: the relevance at the conv output (PassThrough: the same)
    plain = LayerLRP(m, m[2], "epsilon", epsilon=0.0, merge_batchnorm=False).attribute(x, target=0)
    assert rel_err(plain, ref) < TOL


# regression (audit, session 5): LayerLRP on a conv with a folded BN crashed; its map is activation x gradient
def test_layer_lrp_on_folded_conv_shift_free_is_conv_output_x_gradient():
    torch.manual_seed(1)
    m = ConvBNNet(shift=False, bias=False).double().eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    ref = activation_x_gradient(m, m.c, x, 1)
    # every layer above the conv (shift-free BN, ReLU, bias-free Linear) uses LRP-0 in
    # both composites (epsilon_plus changes only the conv's own rule, which acts below
    # the captured output): relevance at the conv output = activation x gradient
    for composite in ("epsilon", "epsilon_plus"):
        got = LayerLRP(m, m.c, composite, epsilon=0.0).attribute(x, target=1)
        assert rel_err(got, ref) < TOL, composite


# regression (audit, session 5): LayerLRP on a conv whose output feeds a BN and a skip must collect both paths (folded wrongly before)
def test_layer_lrp_on_shared_folded_conv():
    # conv output shared by the BN and a skip: the relevance at the conv output collects both
    torch.manual_seed(2)
    m = SharedConvBN("skip_after").double().eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    ref = activation_x_gradient(m, m.c, x, 1)
    got = LayerLRP(m, m.c, "epsilon", epsilon=0.0).attribute(x, target=1)
    assert rel_err(got, ref) < TOL


# regression (audit, session 5): LayerLRP on ResNet-18's convs with folded BNs crashed (TypeError in the capture hook)
def test_layer_lrp_on_resnet_convs_with_folded_bn():
    # the audit's crash (TypeError in the capture hook) on torchvision's ResNet-18
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).double().eval()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    for conv, bn in ((model.conv1, model.bn1), (model.layer1[0].conv1, model.layer1[0].bn1)):
        r_conv, d_conv = LayerLRP(model, conv).attribute(x, target=1, return_convergence_delta=True)
        r_bn, d_bn = LayerLRP(model, bn).attribute(x, target=1, return_convergence_delta=True)
        assert r_conv.shape == r_bn.shape and torch.isfinite(r_conv).all()
        # by definition the folded layer's output relevance is the one at the BN output (two
        # separate runs: equal up to the summation order of the convolution kernels)
        scale = float(r_bn.abs().max())
        assert float((r_conv - r_bn).abs().max()) <= 1e-12 * scale
        assert torch.allclose(d_conv, d_bn, rtol=0, atol=1e-12 * scale)
