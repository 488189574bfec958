"""Regression tests for propagation-engine defects found by an audit.

Every reference here is independent of the engine:

* on a ReLU network without biases and without batch-norm shifts, LRP with ``epsilon=0``
  is exactly input x gradient (``x * d logit / d x``), and the relevance at a hidden
  tensor ``h`` is ``h * d logit / d h`` (plain autograd);
* ``merge_batchnorm=False`` where folding would be inexact, or a model whose batch norm
  was folded into the conv / linear weights by hand;
* two code paths of the engine that must agree by definition (``LayerLRP`` at the input
  of the input layer is the input attribution).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from captum_rap import CLRP, LRP, RAP, SGLRP, LayerLRP, LayerRAP, UnsupportedOperationError

TOL = 1e-10  # float64 throughout


def rel_err(a, b):
    scale = float(b.abs().max())
    return float((a - b).abs().max()) / (scale if scale > 0 else 1.0)


def input_x_gradient(model, x, target):
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xg)[:, target].sum(), xg)
    return x * g


def activation_x_gradient(model, module, x, target, at_input=False):
    """``h * d logit / d h`` at the output (or input) of ``module``, by plain autograd."""
    store = {}

    def hook(mod, args, out):
        store["h"] = args[0] if at_input else out

    handle = module.register_forward_hook(hook)
    try:
        out = model(x)
    finally:
        handle.remove()
    h = store["h"]
    (g,) = torch.autograd.grad(out[:, target].sum(), h)
    return (h * g).detach()


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


def no_captum_tags(*objs):
    for obj in objs:
        tensors = list(obj.parameters()) + list(obj.buffers()) if isinstance(obj, nn.Module) else [obj]
        for t in tensors:
            assert not any("captum_rap" in k for k in vars(t)), "engine tag left on a user tensor"


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


def test_bn_fold_after_in_place_write_to_conv_output():
    # the BN reads a conv output that was overwritten in part: folding BN(W x) would be
    # wrong (the constant channel does not depend on x); merge_batchnorm=False is exact
    torch.manual_seed(0)
    m = SharedConvBN("write_before_bn").double().eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    plain = LRP(m, "epsilon", epsilon=0.0, merge_batchnorm=False).attribute(x, target=1)
    folded = LRP(m, "epsilon", epsilon=0.0).attribute(x, target=1)
    assert rel_err(folded, plain) < TOL


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


def test_linear_3d_input_bn1d_not_folded_on_feature_axis():
    torch.manual_seed(0)
    m = Linear3dBN().double().eval()
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    ref = input_x_gradient(m, x, 0)
    a, delta = LRP(m, "epsilon", epsilon=0.0).attribute(x, target=0, return_convergence_delta=True)
    assert rel_err(a, ref) < TOL
    assert float(delta.abs().max()) < 1e-10


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
# 3. LayerLRP / LayerRAP at the input of the input layer
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


@pytest.mark.parametrize("model_kind", ["sequential", "input_skip"])
def test_layer_lrp_at_input_layer_input_is_input_x_gradient(model_kind):
    torch.manual_seed(0)
    m = (_small_net(False) if model_kind == "sequential" else InputSkip()).double().eval()
    layer = m[0] if model_kind == "sequential" else m.c
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    ref = input_x_gradient(m, x, 2)
    lay = LayerLRP(m, layer, "epsilon", epsilon=0.0).attribute(x, target=2, attribute_to_layer_input=True)
    assert rel_err(lay, ref) < TOL


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


def test_layer_rap_at_input_layer_input_equals_rap():
    torch.manual_seed(2)
    m = _small_net(True).double().eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    full = RAP(m).attribute(x, target=[0, 2])
    lay = LayerRAP(m, m[0]).attribute(x, target=[0, 2], attribute_to_layer_input=True)
    assert rel_err(lay, full) < 1e-12


# ----------------------------------------------------------------------------------------
# 4. LayerLRP on a conv whose batch norm is folded into it
# ----------------------------------------------------------------------------------------


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


def test_layer_lrp_on_shared_folded_conv():
    # conv output shared by the BN and a skip: the relevance at the conv output collects both
    torch.manual_seed(2)
    m = SharedConvBN("skip_after").double().eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    ref = activation_x_gradient(m, m.c, x, 1)
    got = LayerLRP(m, m.c, "epsilon", epsilon=0.0).attribute(x, target=1)
    assert rel_err(got, ref) < TOL


# ----------------------------------------------------------------------------------------
# 5. parameter cast with type_as(activation); no tags left on user tensors
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


def test_activation_written_into_buffer_raises_and_leaves_it_unchanged():
    m = WritesBuffer().eval()
    with pytest.raises(UnsupportedOperationError, match="add_.*buffer"):
        LRP(m).attribute(torch.randn(2, 5), target=0)
    assert torch.equal(m.buf, torch.zeros(4))
    no_captum_tags(m)


# ----------------------------------------------------------------------------------------
# 6. constants built from an activation (zeros_like and friends)
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


@pytest.mark.parametrize("style", ["setitem", "maximum", "minimum", "ones_like"])
def test_constants_from_activation_supported(style):
    torch.manual_seed(0)
    m = Built(style).double().eval()
    x = torch.randn(4, 5, dtype=torch.float64)
    ref = input_x_gradient(m, x, 1)
    a, delta = LRP(m, "epsilon", epsilon=0.0).attribute(x, target=1, return_convergence_delta=True)
    assert rel_err(a, ref) < TOL
    assert float(delta.abs().max()) < 1e-10


@pytest.mark.parametrize("style,op", [("maximum_nonzero", "maximum"), ("maximum_two", "maximum"),
                                      ("new_tensor", "new_tensor")])
def test_unsupported_ops_after_constants_are_named(style, op):
    m = Built(style).eval()
    with pytest.raises(UnsupportedOperationError, match=f"'{op}'") as info:
        LRP(m).attribute(torch.randn(2, 5), target=0)
    assert "zeros_like" not in str(info.value) and "full_like" not in str(info.value)
    no_captum_tags(m)


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
