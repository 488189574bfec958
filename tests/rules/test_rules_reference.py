"""Every LRP rule against an explicit, slow reference (dense matrix form), float64.

The references (``tests/_lrp_utils.py``) are written from the rule definitions: the layer
is turned into its dense matrix ``A`` by applying it to basis vectors (and, for one conv,
by explicit loops over output positions), and relevance is redistributed with explicit
per-output sums.  Tolerance: 1e-10 relative to the max of the reference map.
"""

from __future__ import annotations


import pytest
import torch
from torch import nn

from captum_rap import LRP, UnsupportedOperationError
from captum_rap.rules import AlphaBeta, Epsilon, Flat, Gamma, PassThrough, WSquare, ZBox, ZPlus

from _lrp_utils import (conv2d_matrix_loops, dense_matrix, output_bias, ref_alphabeta, ref_epsilon,
                        ref_flat, ref_gamma, ref_wsquare, ref_zbox, rel_err)

TOL = 1e-10
DT = torch.float64
BATCH = 2


# ----------------------------------------------------------------------------------------
# layers: signed weights, non-zero biases, strides, padding, dilation, groups
# ----------------------------------------------------------------------------------------

LAYERS = {
    "linear": (lambda: nn.Linear(7, 5), (7,)),
    "conv1d_stride_pad": (lambda: nn.Conv1d(3, 4, 3, stride=2, padding=1), (3, 9)),
    "conv1d_same_even_dil_groups": (lambda: nn.Conv1d(4, 6, 4, padding="same", dilation=2, groups=2), (4, 8)),
    "conv2d_stride_pad": (lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1), (3, 6, 7)),
    "conv2d_aniso_dil_groups": (lambda: nn.Conv2d(4, 6, (3, 2), stride=(1, 2), padding=(2, 1),
                                                  dilation=(2, 1), groups=2), (4, 5, 6)),
    "conv2d_depthwise": (lambda: nn.Conv2d(4, 4, 3, padding=1, groups=4), (4, 5, 5)),
    "conv2d_same_even": (lambda: nn.Conv2d(3, 5, 4, padding="same"), (3, 5, 6)),
    "conv2d_same_even_dil3": (lambda: nn.Conv2d(2, 3, 2, padding="same", dilation=3), (2, 6, 5)),
    "conv3d_stride_pad": (lambda: nn.Conv3d(2, 3, 3, stride=(1, 2, 2), padding=1), (2, 3, 4, 5)),
    "conv3d_same_even_groups": (lambda: nn.Conv3d(2, 4, 2, padding="same", groups=2), (2, 3, 4, 3)),
}

BN_FOR = {1: nn.BatchNorm1d, 2: nn.BatchNorm1d, 3: nn.BatchNorm2d, 4: nn.BatchNorm3d}


def make_layer(name, seed=0):
    factory, in_shape = LAYERS[name]
    torch.manual_seed(seed)
    layer = factory().double()
    with torch.no_grad():
        layer.weight.normal_(0, 1.0)
        layer.bias.normal_(0, 0.5)
    layer.eval()
    return layer, in_shape


def make_bn(in_shape, seed=1):
    torch.manual_seed(seed)
    bn = BN_FOR[len(in_shape)](in_shape[0]).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.weight[::2] *= -1  # signed scale: the hidden layer sees signed inputs
        bn.bias.normal_(0, 0.5)
        bn.running_mean.normal_(0, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
    bn.rule = PassThrough()
    return bn.eval()


def signed_input(in_shape, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((BATCH,) + tuple(in_shape), generator=g, dtype=DT)


def output_relevance(layer, x, seed=3):
    with torch.no_grad():
        out = layer(x)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out.shape, generator=g, dtype=DT)


# ----------------------------------------------------------------------------------------
# rule specs: (name, factory, reference(A, b, x, R, in_shape) -> R_in, input-layer only)
# ----------------------------------------------------------------------------------------


def per_channel_bounds(in_shape, value_low, value_high):
    c = in_shape[0]
    shape = (1, c) + (1,) * (len(in_shape) - 1)
    low = torch.linspace(value_low, value_low + 0.5, c, dtype=DT).view(shape)
    high = torch.linspace(value_high, value_high + 0.7, c, dtype=DT).view(shape)
    return low, high


def _bounds_vec(bound, x_example, in_shape, kind):
    """The reference's own expansion of a ZBox bound for one example."""
    if bound is None:
        v = x_example.min() if kind == "low" else x_example.max()
        return torch.full_like(x_example, float(v))
    if isinstance(bound, torch.Tensor):
        return bound.expand((1,) + tuple(in_shape)).reshape(-1).to(DT)
    return torch.full_like(x_example, float(bound))


RULES = {
    "epsilon_0.05": (lambda s: Epsilon(0.05), lambda A, b, x, R, s: ref_epsilon(A, b, x, R, 0.05), False),
    "epsilon_0": (lambda s: Epsilon(0.0), lambda A, b, x, R, s: ref_epsilon(A, b, x, R, 0.0), False),
    "gamma_generalized": (lambda s: Gamma(0.3, epsilon=0.01, generalized=True),
                          lambda A, b, x, R, s: ref_gamma(A, b, x, R, 0.3, 0.01, True), False),
    "gamma_original": (lambda s: Gamma(0.3, epsilon=0.01, generalized=False),
                       lambda A, b, x, R, s: ref_gamma(A, b, x, R, 0.3, 0.01, False), False),
    "alphabeta21_bias": (lambda s: AlphaBeta(2, 1, epsilon=0.01, bias=True),
                         lambda A, b, x, R, s: ref_alphabeta(A, b, x, R, 2, 1, 0.01, True), False),
    "alphabeta21_nobias": (lambda s: AlphaBeta(2, 1, epsilon=0.01, bias=False),
                           lambda A, b, x, R, s: ref_alphabeta(A, b, x, R, 2, 1, 0.01, False), False),
    "alphabeta10_bias": (lambda s: AlphaBeta(1, 0, epsilon=0.01, bias=True),
                         lambda A, b, x, R, s: ref_alphabeta(A, b, x, R, 1, 0, 0.01, True), False),
    "alphabeta10_nobias": (lambda s: AlphaBeta(1, 0, epsilon=0.01, bias=False),
                           lambda A, b, x, R, s: ref_alphabeta(A, b, x, R, 1, 0, 0.01, False), False),
    "zplus_bias": (lambda s: ZPlus(epsilon=0.01, bias=True),
                   lambda A, b, x, R, s: ref_alphabeta(A, b, x, R, 1, 0, 0.01, True), False),
    "zplus_nobias": (lambda s: ZPlus(epsilon=0.01, bias=False),
                     lambda A, b, x, R, s: ref_alphabeta(A, b, x, R, 1, 0, 0.01, False), False),
    "zbox_scalar": (lambda s: ZBox(-1.5, 2.0, epsilon=0.01),
                    lambda A, b, x, R, s: ref_zbox(A, x, R, _bounds_vec(-1.5, x, s, "low"),
                                                   _bounds_vec(2.0, x, s, "high"), 0.01), True),
    "zbox_channel": (lambda s: ZBox(*per_channel_bounds(s, -2.0, 1.5), epsilon=0.01),
                     lambda A, b, x, R, s: ref_zbox(
                         A, x, R, _bounds_vec(per_channel_bounds(s, -2.0, 1.5)[0], x, s, "low"),
                         _bounds_vec(per_channel_bounds(s, -2.0, 1.5)[1], x, s, "high"), 0.01), True),
    "zbox_minmax": (lambda s: ZBox(None, None, epsilon=0.01),
                    lambda A, b, x, R, s: ref_zbox(A, x, R, _bounds_vec(None, x, s, "low"),
                                                   _bounds_vec(None, x, s, "high"), 0.01), True),
    "flat": (lambda s: Flat(0.01), lambda A, b, x, R, s: ref_flat(A, R, 0.01), True),
    "wsquare": (lambda s: WSquare(0.01), lambda A, b, x, R, s: ref_wsquare(A, R, 0.01), True),
}


def per_channel_bounds_for(layer_name):
    return per_channel_bounds(LAYERS[layer_name][1], -2.0, 1.5)


def reference(layer, in_shape, x, R, ref_fn):
    """Apply the reference rule example by example."""
    A = dense_matrix(layer, in_shape)
    out_shape = R.shape[1:]
    b = output_bias(layer, out_shape)
    out = []
    for i in range(x.shape[0]):
        out.append(ref_fn(A, b, x[i].reshape(-1), R[i].reshape(-1), in_shape).reshape(in_shape))
    return torch.stack(out)


# ----------------------------------------------------------------------------------------
# the matrix builder itself is checked against explicit loops
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["conv2d_stride_pad", "conv2d_aniso_dil_groups", "conv2d_depthwise"])
def test_dense_matrix_matches_explicit_loops(name):
    layer, in_shape = make_layer(name)
    A = dense_matrix(layer, in_shape)
    B = conv2d_matrix_loops(layer.weight.detach(), in_shape, layer.stride, layer.padding,
                            layer.dilation, layer.groups)
    assert torch.equal(A, B)


# ----------------------------------------------------------------------------------------
# each rule as the input layer (relevance returned exactly) and as a hidden layer
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer_name", list(LAYERS))
@pytest.mark.parametrize("rule_name", list(RULES))
def test_rule_input_layer_matches_reference(rule_name, layer_name):
    factory, ref_fn, _ = RULES[rule_name]
    layer, in_shape = make_layer(layer_name)
    layer.rule = factory(in_shape)
    x = signed_input(in_shape)
    R = output_relevance(layer, x)
    got = LRP(layer).attribute(x, output_relevance=R)
    want = reference(layer, in_shape, x, R, ref_fn)
    assert got.shape == x.shape and got.dtype == DT
    assert rel_err(got, want) < TOL, rel_err(got, want)


@pytest.mark.parametrize("layer_name", list(LAYERS))
@pytest.mark.parametrize("rule_name", list(RULES))
def test_rule_hidden_layer_matches_reference(rule_name, layer_name):
    factory, ref_fn, input_only = RULES[rule_name]
    layer, in_shape = make_layer(layer_name)
    layer.rule = factory(in_shape)
    bn = make_bn(in_shape)  # PassThrough: relevance at the layer input reaches the model input unchanged
    model = nn.Sequential(bn, layer).eval()
    x = signed_input(in_shape)
    R = output_relevance(model, x)
    lrp = LRP(model)
    if input_only:
        with pytest.raises(UnsupportedOperationError, match="input layer"):
            lrp.attribute(x, output_relevance=R)
        return
    with torch.no_grad():
        h = bn(x)
    want = reference(layer, in_shape, h, R, ref_fn)
    got = lrp.attribute(x, output_relevance=R)
    assert rel_err(got, want) < TOL, rel_err(got, want)


@pytest.mark.parametrize("layer_name", list(LAYERS))
@pytest.mark.parametrize("rule_name", [n for n, spec in RULES.items() if not spec[2]])
def test_rule_on_nonnegative_input_matches_reference(rule_name, layer_name):
    """Post-ReLU inputs (>= 0, with exact zeros) take the rules' fast paths for
    non-negative inputs (Gamma: z⁻ from the layer output, AlphaBeta: no x⁻ terms)."""
    factory, ref_fn, _ = RULES[rule_name]
    layer, in_shape = make_layer(layer_name)
    layer.rule = factory(in_shape)
    bn = make_bn(in_shape)
    model = nn.Sequential(bn, nn.ReLU(), layer).eval()
    x = signed_input(in_shape)
    R = output_relevance(model, x)
    with torch.no_grad():
        h = torch.relu(bn(x))
    assert bool((h == 0).any()) and bool((h > 0).any())
    # relevance passes the ReLU and the pass-through BN unchanged (it is 0 where h = 0)
    want = reference(layer, in_shape, h, R, ref_fn)
    got = LRP(model).attribute(x, output_relevance=R)
    assert rel_err(got, want) < TOL, rel_err(got, want)


@pytest.mark.parametrize("in_shape", [(5,), (3, 7), (3, 4, 5), (2, 3, 3, 4)])
def test_passthrough_batchnorm_exact(in_shape):
    bn = make_bn(in_shape)
    x = signed_input(in_shape)
    R = output_relevance(bn, x)
    got = LRP(bn).attribute(x, output_relevance=R)
    assert torch.allclose(got, R, rtol=0, atol=1e-14)
    # as a hidden layer behind a linear layer with LRP-0: R_in = reference epsilon-0 of R
    if len(in_shape) == 1:
        lin = nn.Linear(4, in_shape[0]).double()
        torch.manual_seed(7)
        with torch.no_grad():
            lin.weight.normal_()
            lin.bias.normal_()
        lin.rule = Epsilon(0.0)
        model = nn.Sequential(lin, bn).eval()
        x4 = signed_input((4,))
        R = output_relevance(model, x4)
        got = LRP(model, merge_batchnorm=False).attribute(x4, output_relevance=R)
        A = dense_matrix(lin, (4,))
        b = lin.bias.detach()
        want = torch.stack([ref_epsilon(A, b, x4[i], R[i], 0.0) for i in range(BATCH)])
        assert rel_err(got, want) < TOL


def test_zbox_bounds_none_uses_per_example_min_max():
    """Bounds None: each example uses its own min/max (not the batch's)."""
    layer, in_shape = make_layer("conv2d_stride_pad")
    layer.rule = ZBox(None, None, epsilon=0.01)
    x = signed_input(in_shape)
    x[1] *= 3.0  # different ranges per example
    R = output_relevance(layer, x)
    got = LRP(layer).attribute(x, output_relevance=R)
    single = torch.cat([LRP(layer).attribute(x[i:i + 1], output_relevance=R[i:i + 1]) for i in range(BATCH)])
    assert rel_err(got, single) < TOL


# ----------------------------------------------------------------------------------------
# conservation, linearity, persistence
# ----------------------------------------------------------------------------------------

CONSERVATIVE = {
    "epsilon0": lambda s: Epsilon(0.0),
    "gamma_generalized": lambda s: Gamma(0.3, epsilon=0.0, generalized=True),
    "gamma_original": lambda s: Gamma(0.3, epsilon=0.0, generalized=False),
    "alphabeta21": lambda s: AlphaBeta(2, 1, epsilon=0.0),
    "zplus": lambda s: ZPlus(epsilon=0.0),
    "zbox": lambda s: ZBox(-3.0, 3.0, epsilon=0.0),
    "flat": lambda s: Flat(0.0),
    "wsquare": lambda s: WSquare(0.0),
}


CONSERVATION_CASES = [(r, lay) for r in CONSERVATIVE for lay in
                      (["linear", "conv2d_stride_pad", "conv3d_stride_pad"] if r in ("alphabeta21", "zplus")
                       else ["linear", "conv1d_same_even_dil_groups", "conv2d_aniso_dil_groups",
                             "conv3d_stride_pad"])]


@pytest.mark.parametrize("rule_name,layer_name", CONSERVATION_CASES)
def test_conservation_bias_free(rule_name, layer_name):
    layer, in_shape = make_layer(layer_name)
    with torch.no_grad():
        layer.bias.zero_()
    layer.rule = CONSERVATIVE[rule_name](in_shape)
    x = signed_input(in_shape)
    if rule_name in ("alphabeta21", "zplus"):
        # alpha-beta / z+ conserve only at outputs with non-empty positive and negative
        # parts; make sure every output has both (all inputs non-zero, mixed signs per row)
        A = dense_matrix(layer, in_shape)
        for i in range(BATCH):
            C = A * x[i].reshape(-1)[None, :]
            if not (bool(((C > 0).sum(1) > 0).all()) and bool(((C < 0).sum(1) > 0).all())):
                raise AssertionError("test precondition: mixed-sign contributions at every output")
    R = output_relevance(layer, x)
    got = LRP(layer).attribute(x, output_relevance=R)
    s_in = got.reshape(BATCH, -1).sum(1)
    s_out = R.reshape(BATCH, -1).sum(1)
    scale = float(got.abs().sum(1).max() if got.dim() == 2 else got.reshape(BATCH, -1).abs().sum(1).max())
    assert float((s_in - s_out).abs().max()) <= 1e-12 * max(1.0, scale)


def test_conservation_passthrough():
    bn = make_bn((3, 4, 5))
    x = signed_input((3, 4, 5))
    R = output_relevance(bn, x)
    got = LRP(bn).attribute(x, output_relevance=R)
    assert torch.allclose(got.reshape(BATCH, -1).sum(1), R.reshape(BATCH, -1).sum(1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("rule_name", list(RULES))
@pytest.mark.parametrize("layer_name", ["linear", "conv2d_aniso_dil_groups"])
def test_linear_in_relevance(rule_name, layer_name):
    factory, _, _ = RULES[rule_name]
    layer, in_shape = make_layer(layer_name)
    layer.rule = factory(in_shape)
    x = signed_input(in_shape)
    Ra = output_relevance(layer, x, seed=11)
    Rb = output_relevance(layer, x, seed=12)
    lrp = LRP(layer)
    ra = lrp.attribute(x, output_relevance=Ra)
    rb = lrp.attribute(x, output_relevance=Rb)
    rab = lrp.attribute(x, output_relevance=2.0 * Ra - 0.5 * Rb)
    assert rel_err(2.0 * ra - 0.5 * rb, rab) < TOL


@pytest.mark.parametrize("rule_name", ["epsilon_0.05", "gamma_generalized", "alphabeta21_bias", "zbox_scalar"])
def test_user_rule_survives_repeated_calls(rule_name):
    factory, ref_fn, _ = RULES[rule_name]
    layer, in_shape = make_layer("conv2d_stride_pad")
    rule = factory(in_shape)
    layer.rule = rule
    x = signed_input(in_shape)
    R = output_relevance(layer, x)
    lrp = LRP(layer, composite="epsilon")
    first = lrp.attribute(x, output_relevance=R)
    assert layer.rule is rule
    second = lrp.attribute(x, output_relevance=R)
    third = LRP(layer, composite="zplus").attribute(x, output_relevance=R)  # the module's rule wins
    assert layer.rule is rule
    assert torch.equal(first, second) and torch.equal(first, third)
    assert rel_err(first, reference(layer, in_shape, x, R, ref_fn)) < TOL


def test_rule_on_reused_module_applies_to_every_call():
    """A module called twice gets its rule on both calls."""
    torch.manual_seed(0)
    lin = nn.Linear(4, 4).double()
    lin.rule = Epsilon(0.0)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin

        def forward(self, x):
            return self.lin(self.lin(x))

    model = Twice().eval()
    x = signed_input((4,))
    R = output_relevance(model, x)
    got = LRP(model, composite="zplus").attribute(x, output_relevance=R)
    A = dense_matrix(lin, (4,))
    b = lin.bias.detach()
    want = []
    for i in range(BATCH):
        h = A @ x[i] + b
        r_h = ref_epsilon(A, b, h, R[i], 0.0)
        want.append(ref_epsilon(A, b, x[i], r_h, 0.0))
    assert rel_err(got, torch.stack(want)) < TOL


# ----------------------------------------------------------------------------------------
# Captum's own rule objects
# ----------------------------------------------------------------------------------------


def test_captum_rules_set_on_modules_are_honoured():
    from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule, GammaRule, IdentityRule

    layer, in_shape = make_layer("conv2d_stride_pad")
    x = signed_input(in_shape)
    R = output_relevance(layer, x)
    def ref_captum_weight_rule(fn, use_bias):
        # Captum's meaning: modified weights, unmodified (or zeroed) bias, original input
        def ref(A, b, xx, RR, s):
            return ref_epsilon(fn(A), b if use_bias else torch.zeros_like(b), xx, RR, 1e-9)
        return ref

    A_cases = [
        (EpsilonRule(epsilon=0.05), lambda A, b, xx, RR, s: ref_epsilon(A, b, xx, RR, 0.05)),
        (GammaRule(gamma=0.3), lambda A, b, xx, RR, s: ref_gamma(A, b, xx, RR, 0.3, 1e-9, False)),
        (GammaRule(gamma=0.3, set_bias_to_zero=True),
         ref_captum_weight_rule(lambda A: A + 0.3 * A.clamp(min=0), False)),
        (Alpha1_Beta0_Rule(), ref_captum_weight_rule(lambda A: A.clamp(min=0), True)),
        (Alpha1_Beta0_Rule(set_bias_to_zero=True), ref_captum_weight_rule(lambda A: A.clamp(min=0), False)),
    ]
    for rule, ref_fn in A_cases:
        layer.rule = rule
        got = LRP(layer).attribute(x, output_relevance=R)
        assert layer.rule is rule
        assert rel_err(got, reference(layer, in_shape, x, R, ref_fn)) < TOL, type(rule).__name__
    # IdentityRule on a batch norm = pass-through
    bn = make_bn(in_shape)
    bn.rule = IdentityRule()
    Rb = output_relevance(bn, x)
    got = LRP(bn).attribute(x, output_relevance=Rb)
    assert torch.allclose(got, Rb, rtol=0, atol=1e-14)


def _captum_mlp(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 7), nn.ReLU(), nn.Linear(7, 3)).double()
    for m in model:
        if isinstance(m, nn.Linear):
            with torch.no_grad():
                m.weight.normal_()
                m.bias.normal_(0, 0.5)
    return model.eval()


class _CaptumCNN(nn.Module):
    """A model captum.attr.LRP handles (modules only, a view in forward)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 5, 3, stride=2)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(5 * 3 * 3, 4)

    def forward(self, x):
        h = self.relu1(self.bn(self.conv1(x)))
        h = self.relu2(self.conv2(h))
        return self.fc(h.view(h.shape[0], -1))


def _captum_cnn(seed=0):
    torch.manual_seed(seed)
    model = _CaptumCNN().double()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.normal_(0, 0.5)
                m.bias.normal_(0, 0.2)
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.bias.normal_(0, 0.2)
        model.bn.running_mean.normal_(0, 0.2)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _set_rules(model, conv_rule, lin_rule, bn_rule=None):
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.rule = conv_rule()
        elif isinstance(m, nn.Linear):
            m.rule = lin_rule()
        elif isinstance(m, nn.BatchNorm2d) and bn_rule is not None:
            m.rule = bn_rule()


@pytest.mark.parametrize("pair", ["epsilon", "gamma", "zplus_hidden"])
def test_our_rules_inside_captum_lrp(pair):
    """captum_rap rules attached to modules work in captum.attr.LRP exactly like Captum's own
    rule of the same meaning (Captum removes `rule` after a call, so rules are set per call)."""
    from captum.attr import LRP as CaptumLRP
    from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule, GammaRule, IdentityRule

    if pair == "epsilon":
        ours, theirs = (lambda: Epsilon(0.1)), (lambda: EpsilonRule(0.1))
        lin_ours, lin_theirs = ours, theirs
    elif pair == "gamma":
        ours, theirs = (lambda: Gamma(0.25, epsilon=1e-9, generalized=False)), (lambda: GammaRule(0.25))
        lin_ours, lin_theirs = (lambda: Epsilon(1e-9)), (lambda: EpsilonRule(1e-9))
    else:  # z+ on hidden layers (non-negative inputs), bias-free: Captum's Alpha1_Beta0 has the same meaning
        ours, theirs = (lambda: ZPlus(epsilon=1e-9)), (lambda: Alpha1_Beta0_Rule())
        lin_ours, lin_theirs = (lambda: Epsilon(1e-9)), (lambda: EpsilonRule(1e-9))
    x = signed_input((2, 8, 8))
    results = []
    for conv_rule, lin_rule, bn_rule in [(ours, lin_ours, PassThrough), (theirs, lin_theirs, IdentityRule)]:
        model = _captum_cnn()
        if pair == "zplus_hidden":
            with torch.no_grad():
                for m in model.modules():
                    if isinstance(m, (nn.Conv2d, nn.Linear)):
                        m.bias.zero_()
        _set_rules(model, conv_rule, lin_rule, bn_rule)
        if pair == "zplus_hidden":
            model.conv1.rule = lin_rule()  # the signed input layer: epsilon on both sides
        results.append(CaptumLRP(model).attribute(x, target=1))
    assert rel_err(results[0], results[1]) < 1e-12
    # Captum's and our LRP agree on the same model and rules
    model = _captum_cnn()
    if pair == "zplus_hidden":
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    m.bias.zero_()
    _set_rules(model, ours, lin_ours, PassThrough)
    if pair == "zplus_hidden":
        model.conv1.rule = lin_ours()
    mine = LRP(model, merge_batchnorm=False).attribute(x, target=1)
    assert rel_err(mine, results[1]) < 1e-10


def test_captum_default_mlp_matches():
    """Plain Sequential MLP: captum.attr.LRP (default epsilon 1e-9) == captum_rap epsilon 1e-9."""
    from captum.attr import LRP as CaptumLRP

    x = signed_input((6,))
    theirs = CaptumLRP(_captum_mlp()).attribute(x, target=2)
    mine = LRP(_captum_mlp(), composite="epsilon", epsilon=1e-9).attribute(x, target=2)
    assert rel_err(mine, theirs) < 1e-10


@pytest.mark.parametrize("rule", [Epsilon(0.0), ZPlus(epsilon=0.0, bias=False), AlphaBeta(2, 1, epsilon=0.0),
                                  Gamma(0.25, epsilon=0.0)])
def test_unstabilized_rules_on_dead_units_stay_finite(rule):
    """epsilon = 0 on a bias-free ReLU net whose hidden units see all-zero receptive fields
    (z = 0): those units carry no relevance; the map stays finite and conservative."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=False), nn.ReLU(),
                          nn.Conv2d(2, 2, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(),
                          nn.Linear(2 * 16, 3, bias=False)).double().eval()
    for m in model:
        if not isinstance(m, (nn.ReLU, nn.Flatten)):
            m.rule = rule
    x = torch.zeros(2, 1, 4, 4, dtype=DT)
    x[0, 0, 0, 0] = 1.0
    x[1, 0, 3, 2] = -2.0
    with torch.no_grad():
        logits = model(x)
    target = [int(logits[0].abs().argmax()), int(logits[1].abs().argmax())]
    attr = LRP(model).attribute(x, target=target)
    assert torch.isfinite(attr).all()
    if isinstance(rule, AlphaBeta) and rule.beta != 0:
        return  # alpha-beta is not conservative at units whose negative part is empty
    want = logits[torch.arange(2), target]
    assert torch.allclose(attr.reshape(2, -1).sum(1), want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("rule_name", ["alpha1beta0", "gamma"])
def test_captum_rules_in_our_lrp_match_captum_lrp_with_biases(rule_name):
    """Captum's own rule objects (signed biases, signed input layer) give in captum_rap.LRP
    what captum.attr.LRP gives."""
    from captum.attr import LRP as CaptumLRP
    from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule, GammaRule, IdentityRule

    conv_rule = Alpha1_Beta0_Rule if rule_name == "alpha1beta0" else (lambda: GammaRule(0.25))
    x = signed_input((2, 8, 8))
    out = []
    for impl in ("captum", "ours"):
        model = _captum_cnn()
        _set_rules(model, conv_rule, lambda: EpsilonRule(1e-9), IdentityRule)
        if impl == "captum":
            out.append(CaptumLRP(model).attribute(x, target=1).detach())
        else:
            out.append(LRP(model, merge_batchnorm=False).attribute(x, target=1))
    assert rel_err(out[1], out[0]) < 1e-10


@pytest.mark.parametrize("rule_name", ["zbox_scalar", "zbox_minmax", "flat", "wsquare"])
def test_input_rules_behind_zero_pad_module(rule_name):
    """ZeroPad2d / F.pad between the model input and the input layer: padding is not an
    input (no relevance, no bounds), so the map equals the reference of the composite map
    pad+conv over the real inputs, and relevance is conserved."""
    factory, ref_fn, _ = RULES[rule_name]
    in_shape = (3, 5, 6)
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, stride=2).double()
    with torch.no_grad():
        conv.weight.normal_()
        conv.bias.zero_()
    conv.rule = factory(in_shape)
    model = nn.Sequential(nn.ZeroPad2d((1, 2, 0, 1)), conv).eval()
    x = signed_input(in_shape)
    R = output_relevance(model, x)
    got = LRP(model).attribute(x, output_relevance=R)
    A = dense_matrix(model, in_shape)  # columns = real inputs only
    b = torch.zeros(A.shape[0], dtype=DT)
    want = torch.stack([ref_fn(A, b, x[i].reshape(-1), R[i].reshape(-1), in_shape).reshape(in_shape)
                        for i in range(BATCH)])
    assert rel_err(got, want) < TOL
    if rule_name != "zbox_minmax":
        # conservation up to the stabilizer (0.01 / |z|)
        assert rel_err(got.reshape(BATCH, -1).sum(1), R.reshape(BATCH, -1).sum(1)) < 0.05
