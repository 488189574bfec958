"""Captum's conventions (issue 16, item 5).

The cases of Captum's own LRP test suites (``tests/attr/test_lrp.py`` and
``tests/attr/layer/test_layer_lrp.py``) that are not deliberate differences, written here
on small hand-built models with hand-computed expected values; then targets (axis 1,
negative indices, numpy integers) for every method, the convergence-delta sign, layer
lists, Captum's rule names, our rules inside ``captum.attr.LRP`` and ACD as a Captum
``Attribution``.

Deliberate differences from Captum's suite (not tested here): tanh is refused (no rule,
``UnsupportedOperationError``) instead of being skipped; reused modules are supported
instead of refused; rules stay attached after a call; relevance at an input that is the
sum of two model inputs is split between them (Captum gives each the full relevance);
Captum's LayerLRP delta of a conv layer with biases (a quirk of its bookkeeping).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from captum.attr import Attribution, InputXGradient
from captum.attr import LRP as CaptumLRP
from captum.attr._utils import lrp_rules as captum_rules

from captum_rap import ACD, CD, CLRP, LRP, RAP, SGLRP, LayerLRP, LayerRAP
from captum_rap import rules as R

DT = torch.float64


# ---------------------------------------------------------------------------------- models
class OneConv(nn.Module):
    """1x4x4 input -> conv 3x3 (2 channels, ones, bias -50 / -75) -> ReLU -> 8 features ->
    Linear(8, 4) (five +1 and three -1 weights per row) -> ReLU."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 3)
        self.relu1 = nn.ReLU()
        self.fc1 = nn.Linear(8, 4)
        self.relu2 = nn.ReLU()
        with torch.no_grad():
            self.conv1.weight.fill_(1.0)
            self.conv1.bias.copy_(torch.tensor([-50.0, -75.0]))
            self.fc1.weight.copy_(torch.cat([torch.ones(4, 5), -torch.ones(4, 3)], dim=1))
            self.fc1.bias.zero_()

    def forward(self, x):
        return self.relu2(self.fc1(self.relu1(self.conv1(x)).view(-1, 8)))


class Simple(nn.Module):
    """Linear(3, 3) of 2s -> ReLU -> Linear(3, 1) of 3s -> Dropout (eval: identity)."""

    def __init__(self, inplace=False):
        super().__init__()
        self.linear = nn.Linear(3, 3, bias=False)
        self.relu = nn.ReLU(inplace=inplace)
        self.linear2 = nn.Linear(3, 1, bias=False)
        self.dropout = nn.Dropout(0.01)
        with torch.no_grad():
            self.linear.weight.fill_(2.0)
            self.linear2.weight.fill_(3.0)

    def forward(self, x):
        return self.dropout(self.linear2(self.relu(self.linear(x))))


def simple(inplace=False, w00=None):
    m = Simple(inplace).eval()
    if w00 is not None:
        with torch.no_grad():
            m.linear.weight[0, 0] = w00
    return m, torch.tensor([[1.0, 2.0, 3.0]])


class MultiLayer(nn.Module):
    """x (+ add) -> identity Linear -> Linear(3, 4) of ones, bias (-10, 1, 1, 1) -> ReLU ->
    Linear(4, 2) of ones, bias (-1, 1)."""

    def __init__(self):
        super().__init__()
        self.linear0 = nn.Linear(3, 3)
        self.linear1 = nn.Linear(3, 4)
        self.relu = nn.ReLU()
        self.linear2 = nn.Linear(4, 2)
        with torch.no_grad():
            self.linear0.weight.copy_(torch.eye(3))
            self.linear0.bias.zero_()
            self.linear1.weight.fill_(1.0)
            self.linear1.bias.copy_(torch.tensor([-10.0, 1.0, 1.0, 1.0]))
            self.linear2.weight.fill_(1.0)
            self.linear2.bias.copy_(torch.tensor([-1.0, 1.0]))

    def forward(self, x, add=None):
        inp = x if add is None else x + add
        return self.linear2(self.relu(self.linear1(self.linear0(inp))))


def one_conv():
    return OneConv().eval(), torch.arange(16.0).view(1, 1, 4, 4)


def close(a, b, tol=1e-4):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                          rtol=0, atol=tol)


# ----------------------------------------------------------------------- Captum's LRP suite
def test_rule_attribute_that_is_not_a_rule_is_refused_at_construction():
    model, _ = one_conv()
    model.conv1.rule = 1
    with pytest.raises(TypeError, match="conv1"):
        LRP(model)
    with pytest.raises(TypeError, match="conv1"):
        LayerLRP(model, model.conv1)


def test_one_conv_net_values_and_zero_delta():
    # hand computation: conv outputs (45, 54, 81, 90) - 50 and - 75 -> relu
    # (0, 4, 31, 40 | 0, 0, 6, 15); fc1 row: +1 on the 5 first, -1 on the 3 last features ->
    # every logit is 0 + 4 + 31 + 40 + 0 - 0 - 6 - 15 = 54; epsilon (LRP-0 up to 1e-6)
    model, x = one_conv()
    logits = model(x)
    assert close(logits, [[54.0] * 4], 1e-9)
    rel, delta = LRP(model).attribute(x, int(logits.argmax(1)), return_convergence_delta=True)
    assert rel.shape == x.shape
    want = torch.tensor([[[[0, 1, 2, 3], [0, 5, 6, 7], [0, 9, 10, 11], [0, 0, 0, 0]]]], dtype=torch.float32)
    assert close(rel, want)
    assert abs(float(delta)) < 1e-4


@pytest.mark.parametrize("inplace", [False, True])
def test_simple_epsilon_and_batch(inplace):
    # y = 3 * sum(relu(2 * sum(x))) = 18 * sum(x): relevance 18 x_j
    model, x = simple(inplace)
    for rules in (captum_rules, R):
        model.linear.rule = rules.EpsilonRule()
        model.linear2.rule = rules.EpsilonRule()
        assert close(LRP(model).attribute(x), [[18.0, 36.0, 54.0]])
    xb = torch.cat([x, 3 * x])
    rel, delta = LRP(model).attribute(xb, target=0, return_convergence_delta=True)
    assert rel.shape == xb.shape and delta.shape == (2,)
    assert close(rel, [[18.0, 36.0, 54.0], [54.0, 108.0, 162.0]])
    # rules stay attached and the model is unchanged
    assert isinstance(model.linear.rule, captum_rules.EpsilonRule)
    assert close(model(x), [[108.0]])


def test_gamma_rule_values():
    # w00 = -2: linear outputs (10, 12, 12); Captum's GammaRule(1) on linear (W + W+), GammaRule
    # (0.25) on linear2; hand result (28/3, 104/3, 52)
    for rules in (captum_rules, R):
        model, x = simple(w00=-2.0)
        model.linear.rule = rules.GammaRule(gamma=1)
        model.linear2.rule = rules.GammaRule()
        assert close(LRP(model).attribute(x), [[28 / 3, 104 / 3, 52.0]])


def test_alpha1_beta0_rule_values():
    for rules in (captum_rules, R):
        model, x = simple(w00=-2.0)
        model.linear.rule = rules.Alpha1_Beta0_Rule()
        model.linear2.rule = rules.Alpha1_Beta0_Rule()
        assert close(LRP(model).attribute(x), [[12.0, 33.6, 50.4]])


def test_identity_rule_on_a_square_linear():
    # identity on linear: R_in = R_out = epsilon relevance of linear2's input: 3 * (10, 12, 12)
    for rules in (captum_rules, R):
        model, x = simple(w00=-2.0)
        model.linear.rule = rules.IdentityRule()
        model.linear2.rule = rules.EpsilonRule()
        assert close(LRP(model).attribute(x), [[24.0, 36.0, 36.0]])
    model, x = simple()
    model.linear2.rule = R.PassThrough()  # 3 -> 1 features: not an identity
    with pytest.raises(Exception, match="same shape"):
        LRP(model).attribute(x)


def test_non_square_output_of_a_batch_selected_model():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)
            self.relu = nn.ReLU()
            with torch.no_grad():
                self.lin.weight.fill_(1.0)

        def forward(self, x):
            return self.relu(self.lin(x))[0].unsqueeze(0)

    x = torch.tensor([[1.0, 2.0], [1.0, 3.0]])
    assert LRP(Model()).attribute(x, 0).shape == x.shape


def test_skip_connection_z_rule():
    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(2, 2, bias=False)
            with torch.no_grad():
                self.linear.weight.fill_(5.0)

        def forward(self, x):
            return self.linear(x) + x

    # output 1 = 5*2 + 5*3 + 3 = 28: 25 through the linear (10, 15), 3 straight to x_1
    assert close(LRP(Skip()).attribute(torch.tensor([[2.0, 3.0]]), target=1), [[10.0, 18.0]])


def test_max_pooling_winner_takes_all():
    class Pool1(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(2, 2, bias=False)
            self.pool = nn.MaxPool1d(2)
            with torch.no_grad():
                self.linear.weight.fill_(2.0)

        def forward(self, x):
            return self.pool(self.linear(x))

    rel = LRP(Pool1()).attribute(torch.tensor([[[1.0, 2.0], [5.0, 6.0]]]), target=1)
    assert close(rel, [[[0.0, 0.0], [10.0, 12.0]]])
    rel = LRP(nn.Sequential(nn.MaxPool2d(2))).attribute(torch.tensor([[[[1.0, 2.0], [5.0, 6.0]]]]))
    assert close(rel, [[[[0.0, 0.0], [0.0, 6.0]]]])
    x3 = torch.tensor([[[[[1.0, 2.0], [5.0, 6.0]], [[3.0, 4.0], [7.0, 8.0]]]]])
    want = torch.zeros_like(x3)
    want[0, 0, 1, 1, 1] = 8.0
    assert close(LRP(nn.Sequential(nn.MaxPool3d(2))).attribute(x3), want)


def test_additional_forward_args_and_multi_inputs_delta_sign():
    model = MultiLayer()
    x = torch.tensor([[1.0, 2.0, 3.0]])
    assert torch.equal(LRP(model).attribute(x, target=0),
                       LRP(model).attribute(x, target=0, additional_forward_args=(None,)))
    # two inputs summed in forward: the relevance of x + 3x is split 1 : 3 between them
    attr, delta = LRP(model).attribute((x, 3 * x), target=0, return_convergence_delta=True)
    out = float(model(x, 3 * x)[0, 0])  # 88
    assert close(attr[0], [[4.0, 8.0, 12.0]]) and close(attr[1], [[12.0, 24.0, 36.0]])
    # Captum's LRP sign: output minus the sum of the attributions
    assert close(delta, [out - float(attr[0].sum() + attr[1].sum())], 1e-4)
    assert float(delta) < 0


def test_equals_input_x_gradient_for_relu_net_without_bias():
    model, x = simple()
    assert close(LRP(model, epsilon=0.0).attribute(x), InputXGradient(model).attribute(x), 1e-5)


def test_attribute_future_not_implemented():
    with pytest.raises(NotImplementedError):
        LRP(simple()[0]).attribute_future()


# ---------------------------------------------------------------- Captum's LayerLRP suite
def test_layer_lrp_one_conv_values():
    model, x = one_conv()
    rel, delta = LayerLRP(model, model.conv1).attribute(x, 0, return_convergence_delta=True)
    assert close(rel[0], [[[0, 4], [31, 40]], [[0, 0], [-6, -15]]])
    assert abs(float(delta)) < 1e-4  # the output-side relevance of conv1 sums to the logit


@pytest.mark.parametrize("inplace", [False, True])
def test_layer_lrp_upper_input_equals_lower_output(inplace):
    model, x = simple(inplace)
    model.linear.rule = captum_rules.EpsilonRule()
    model.linear2.rule = captum_rules.EpsilonRule()
    upper, delta = LayerLRP(model, model.linear2).attribute(x, attribute_to_layer_input=True,
                                                            return_convergence_delta=True)
    lower = LayerLRP(model, model.linear).attribute(x)
    assert close(upper, lower, 1e-5) and abs(float(delta)) < 1e-4


@pytest.mark.parametrize("rule", ["gamma", "zplus"])
def test_layer_lrp_rule_values(rule):
    model, x = simple(w00=-2.0)
    if rule == "gamma":
        model.linear.rule, model.linear2.rule = captum_rules.GammaRule(gamma=1), captum_rules.GammaRule()
    else:
        model.linear.rule, model.linear2.rule = captum_rules.Alpha1_Beta0_Rule(), captum_rules.Alpha1_Beta0_Rule()
    assert close(LayerLRP(model, model.linear).attribute(x)[0], [24.0, 36.0, 36.0])


@pytest.mark.parametrize("cls", [LayerLRP, LayerRAP])
def test_layer_lists(cls):
    model, x = simple()
    x = torch.cat([x, 2 * x])
    layers = [model.linear, model.linear2]
    rels, deltas = cls(model, layers).attribute(x, attribute_to_layer_input=True, return_convergence_delta=True)
    assert isinstance(rels, list) and len(rels) == len(deltas) == 2
    for layer, r, d in zip(layers, rels, deltas):
        single, sd = cls(model, layer).attribute(x, attribute_to_layer_input=True, return_convergence_delta=True)
        assert torch.equal(r, single) and torch.equal(d, sd)
    if cls is LayerLRP:
        assert close(rels[0], [[18.0, 36.0, 54.0], [36.0, 72.0, 108.0]])
    with pytest.raises(ValueError, match="not a submodule"):
        cls(model, [model.linear, nn.Linear(3, 3)])
    with pytest.raises(ValueError, match="empty"):
        cls(model, [])


# ----------------------------------------------------------------------------- conventions
class Column(nn.Module):
    """Outputs of shape (N, 4, 1)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(3, 4)

    def forward(self, x):
        return self.lin(x).unsqueeze(-1)


def test_int_target_indexes_axis_one():
    model = Column().double().eval()
    x = torch.randn(2, 3, dtype=DT)
    out = model(x).detach()
    with torch.no_grad():
        model.lin.bias.fill_(0.5)
    out = model(x).detach()
    a = LRP(model, epsilon=0.0).attribute(x, target=3)  # axis 1 has 4 entries (Captum: output[:, 3])
    lin = model.lin
    want = x * lin.weight[3]  # LRP-0 on one Linear: x_j w_tj (the bias keeps its share)
    assert torch.allclose(a, want.detach(), atol=1e-12)
    assert not torch.allclose(out[:, 3, 0], a.sum(1))
    assert torch.equal(LRP(model, epsilon=0.0).attribute(x, target=(3, 0)), a)
    with pytest.raises(ValueError, match="out of range"):
        LRP(model).attribute(x, target=4)
    with pytest.raises(ValueError, match="out of range"):
        LRP(model).attribute(x, target=(1, 1))


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 5)).double().eval()


METHODS = {
    "RAP": lambda m, x, t: RAP(m).attribute(x, target=t),
    "LRP": lambda m, x, t: LRP(m).attribute(x, target=t),
    "LayerLRP": lambda m, x, t: LayerLRP(m, m[1]).attribute(x, target=t),
    "LayerRAP": lambda m, x, t: LayerRAP(m, m[1]).attribute(x, target=t),
    "CLRP": lambda m, x, t: CLRP(m).attribute(x, target=t),
    "SGLRP": lambda m, x, t: SGLRP(m).attribute(x, target=t),
    "CD": lambda m, x, t: CD(m).attribute(x, target=t),
    "ACD": lambda m, x, t: ACD(m).attribute(x, target=t, sweep_dim=4, num_iters=2),
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_negative_and_numpy_targets_are_the_same_everywhere(name):
    m = _cnn()
    x = torch.randn(2, 3, 8, 8, dtype=DT, generator=torch.Generator().manual_seed(1))
    run = METHODS[name]
    base = run(m, x, [4, 2])
    for t in ([-1, -3], [np.int64(4), np.int64(2)], np.array([4, 2]), torch.tensor([-1, 2])):
        assert torch.equal(run(m, x, t), base), t
    last = run(m, x, 4)
    for t in (-1, np.int64(4), np.int32(-1), torch.tensor(-1)):
        assert torch.equal(run(m, x, t), last), t
    for bad in (5, -6, [1, 7]):
        with pytest.raises(ValueError):
            run(m, x, bad)
    with pytest.raises(TypeError):
        run(m, x, 1.5)


def test_captum_names_are_captums_rules():
    assert R.GammaRule is captum_rules.GammaRule
    assert R.Alpha1_Beta0_Rule is captum_rules.Alpha1_Beta0_Rule
    assert R.EpsilonRule is captum_rules.EpsilonRule
    assert R.IdentityRule is captum_rules.IdentityRule
    # swapping the import gives the same map, in Captum's LRP and in ours
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3)).double().eval()
    x = torch.randn(4, 5, dtype=DT).abs()
    maps = []
    for rules in (captum_rules, R):
        for impl in (CaptumLRP, LRP):
            net[0].rule, net[2].rule = rules.GammaRule(gamma=0.5), rules.Alpha1_Beta0_Rule()
            maps.append(impl(net).attribute(x, target=1).detach())
    for mp in maps[1:]:
        assert torch.allclose(mp, maps[0], rtol=1e-9, atol=1e-12)


def _biased_net(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3)).double().eval()
    with torch.no_grad():
        net[0].bias.uniform_(0.5, 1.0)
        net[2].bias.uniform_(0.5, 1.0)
        net[2].weight.abs_()  # non-negative inputs and outputs for the middle layer
    return net


@pytest.mark.parametrize("rule", ["gamma", "gamma_plain", "zplus", "zplus_nobias", "epsilon"])
def test_our_rules_inside_captum_lrp_compute_our_rule(rule):
    make = {"gamma": lambda: R.Gamma(0.5, epsilon=1e-9), "gamma_plain": lambda: R.Gamma(0.5, 1e-9, False),
            "zplus": lambda: R.ZPlus(1e-9), "zplus_nobias": lambda: R.ZPlus(1e-9, bias=False),
            "epsilon": lambda: R.Epsilon(0.01)}[rule]
    x = torch.rand(3, 5, dtype=DT, generator=torch.Generator().manual_seed(2))
    maps = []
    for impl in (CaptumLRP, LRP):
        net = _biased_net()
        net[0].rule, net[2].rule, net[4].rule = R.Epsilon(1e-9), make(), R.Epsilon(1e-9)
        maps.append(impl(net).attribute(x, target=1).detach())
    assert torch.allclose(maps[0], maps[1], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("rule", ["gamma_signed_out", "zplus_signed_in", "alphabeta", "zbox", "flat"])
def test_our_rules_inside_captum_lrp_raise_where_not_expressible(rule):
    net = _biased_net()
    x = torch.rand(3, 5, dtype=DT, generator=torch.Generator().manual_seed(2))
    for m in (net[0], net[2], net[4]):
        m.rule = R.Epsilon(1e-9)
    if rule == "gamma_signed_out":
        with torch.no_grad():
            net[2].weight.neg_()
            net[2].bias.fill_(-0.1)  # negative outputs
        net[2].rule = R.Gamma(0.5)
    elif rule == "zplus_signed_in":
        x = x - 0.5
        net[0].rule = R.ZPlus()
    elif rule == "alphabeta":
        net[2].rule = R.AlphaBeta(2.0, 1.0)
    elif rule == "zbox":
        net[0].rule = R.ZBox(0.0, 1.0)
    else:
        net[0].rule = R.Flat()
    with pytest.raises(NotImplementedError, match="captum_rap.LRP"):
        CaptumLRP(net).attribute(x, target=1)
    # the model is left as it was
    assert torch.equal(net(x), _biased_net()(x)) or rule == "gamma_signed_out"


def test_acd_is_a_captum_attribution_with_an_input_shaped_map():
    m = _cnn()
    x = torch.randn(2, 3, 8, 8, dtype=DT, generator=torch.Generator().manual_seed(1))
    acd = ACD(m)
    assert isinstance(acd, Attribution) and acd.has_convergence_delta() is False
    attr = acd.attribute(x, target=[1, 3], sweep_dim=2, num_iters=2)
    assert attr.shape == x.shape and attr.dtype == x.dtype
    assert isinstance(acd.attribute((x,), target=1, sweep_dim=2, num_iters=2), tuple)
    for n, t in enumerate([1, 3]):
        h = acd.hierarchy(x[n:n + 1], target=t, sweep_dim=2, num_iters=2)  # unchanged API
        want = np.array(h.unit_scores, dtype=np.float64)
        seen = np.zeros(want.shape, dtype=bool)
        for level in range(len(h)):
            for g in h.groups(level):
                for i, j in zip(*np.nonzero(g.mask)):
                    if not seen[i, j]:
                        want[i, j] = g.score
                        seen[i, j] = True
        assert seen.any()
        for c in range(3):
            assert np.allclose(attr[n, c].numpy(), want, rtol=0, atol=1e-12)


def test_acd_attribute_on_token_ids():
    class Bag(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.emb = nn.Embedding(20, 4)
            self.lin = nn.Linear(4, 2)

        def forward(self, ids):  # (N, T)
            return self.lin(torch.relu(self.emb(ids)).sum(1))

    ids = torch.randint(0, 20, (2, 6), generator=torch.Generator().manual_seed(0))
    attr = ACD(Bag().double()).attribute(ids, target=0, num_iters=2)
    assert attr.shape == ids.shape and attr.is_floating_point() and torch.isfinite(attr).all()
    h = ACD(Bag().double()).hierarchy_text(ids[:1], target=0, num_iters=2)
    want = np.array(h.unit_scores, dtype=np.float64)  # level 0 holds every word
    for g in h.groups(0):
        want[np.asarray(g.mask)] = g.score
    assert np.allclose(attr[0].numpy(), want, atol=1e-12)


def test_train_mode_dropout_warns():
    model, x = simple()
    model.train()
    with pytest.warns(UserWarning, match="dropout in training mode"):
        LRP(model).attribute(x)
    with pytest.warns(UserWarning, match="dropout in training mode"):
        RAP(model).attribute(x)
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LRP(model).attribute(x)


# issue 18: one attribute template; each method still shows (and binds) its own signature
@pytest.mark.parametrize("cls, options", [
    (LRP, ["output_relevance"]), (RAP, []), (CLRP, ["return_dual"]), (SGLRP, ["return_dual"]),
    (LayerLRP, ["attribute_to_layer_input", "output_relevance"]), (LayerRAP, ["attribute_to_layer_input"]),
])
def test_attribute_signature_per_method(cls, options):
    import inspect

    common = ["self", "inputs", "target", "additional_forward_args", "return_convergence_delta"]
    assert list(inspect.signature(cls.attribute).parameters) == common + options
    assert callable(cls.attribute.__wrapped__)  # Captum's NoiseTunnel calls attribute.__wrapped__


def test_attribute_options_bind_positionally_and_unknown_keywords_are_refused():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3)).eval()
    x = torch.randn(2, 4)
    seed = torch.randn(2, 3)
    by_name = LRP(model).attribute(x, output_relevance=seed)
    by_position = LRP(model).attribute(x, None, None, False, seed)
    assert torch.equal(by_name, by_position)
    with pytest.raises(TypeError, match=r"RAP\.attribute\(\) got an unexpected keyword argument 'output_relevance'"):
        RAP(model).attribute(x, output_relevance=seed)
    with pytest.raises(TypeError, match=r"LRP\.attribute\(\) got an unexpected keyword argument 'return_dual'"):
        LRP(model).attribute(x, return_dual=True)
