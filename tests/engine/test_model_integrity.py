"""The model is never corrupted: after every call, including calls that raise midway,
parameters, buffers, hooks, inplace flags, requires_grad, train/eval mode and module
attributes are exactly as before."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from captum_rap import LRP, LayerLRP, UnsupportedOperationError
from captum_rap.rules import Gamma, ZPlus

from _integrity import assert_unchanged, snapshot


class Net(nn.Module):
    """Conv/BN/in-place ReLU/residual; optionally a sigmoid after a few layers."""

    def __init__(self, sigmoid=False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)
        self.sigmoid = sigmoid

    def forward(self, x):
        h = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(h))
        if self.sigmoid:
            y = y - torch.logsumexp(y, dim=1, keepdim=True)  # unsupported
        h = self.relu(h + y)
        return self.fc(self.pool(h).flatten(1))


def make(sigmoid=False, with_user_state=True):
    torch.manual_seed(0)
    model = Net(sigmoid)
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            bn.running_mean.normal_(0, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
    model.eval()
    if with_user_state:
        # user hooks, a user rule and a frozen parameter must all survive
        model.conv1.register_forward_hook(lambda m, i, o: None)
        model.fc.register_forward_pre_hook(lambda m, i: None)
        model.conv2.register_full_backward_hook(lambda m, gi, go: None)
        model.conv2.rule = Gamma(0.5)
        model.fc.bias.requires_grad_(False)
    return model


X = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("preset", ["epsilon", "epsilon_plus", "epsilon_gamma_box", "zplus_box"])
@pytest.mark.parametrize("merge", [True, False])
def test_successful_calls_leave_model_unchanged(preset, merge):
    model = make()
    before = snapshot(model)
    for _ in range(2):
        LRP(model, preset, merge_batchnorm=merge).attribute(X, target=[0, 2])
        assert_unchanged(model, before)
    LayerLRP(model, model.conv2, preset).attribute(X, target=1)
    assert_unchanged(model, before)
    # the forward pass still gives the same outputs
    model2 = make()
    assert torch.equal(model(X), model2(X))


def test_raising_midway_unsupported_op():
    model = make(sigmoid=True)
    before = snapshot(model)
    with pytest.raises(UnsupportedOperationError, match="logsumexp"):
        LRP(model).attribute(X, target=0)
    assert_unchanged(model, before)
    # and the model still works normally, also for a second failing call
    with pytest.raises(UnsupportedOperationError):
        LRP(model, "epsilon_plus").attribute(X, target=0)
    assert_unchanged(model, before)


@pytest.mark.parametrize("kind", ["target", "nan", "seed_shape", "rule"])
def test_raising_on_bad_arguments(kind):
    model = make()
    before = snapshot(model)
    x = X.clone()
    kwargs = dict(target=0)
    if kind == "target":
        kwargs = dict(target=17)
    elif kind == "nan":
        x[0, 0, 0, 0] = float("nan")
    elif kind == "seed_shape":
        kwargs = dict(output_relevance=torch.ones(5, 5))
    with pytest.raises((ValueError, UnsupportedOperationError)):
        if kind == "rule":
            from captum_rap.rules import Flat
            model.fc.rule = Flat()  # input-layer-only rule on a hidden layer
            before = snapshot(model)
            LRP(model).attribute(x, **kwargs)
        else:
            LRP(model).attribute(x, **kwargs)
    assert_unchanged(model, before)


def test_exception_in_rule_during_backward():
    class Boom(ZPlus):
        def propagate(self, *args):
            raise RuntimeError("boom")

    model = make()
    model.conv1.rule = Boom()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        LRP(model).attribute(X, target=0)
    assert_unchanged(model, before)


def test_train_mode_bn_refused_and_buffers_unchanged():
    model = make()
    model.train()
    before = snapshot(model)
    with pytest.raises(UnsupportedOperationError, match="eval"):
        LRP(model).attribute(X, target=0)
    assert_unchanged(model, before)  # running stats not updated, still in train mode
    assert model.training and model.bn1.training


def test_requires_grad_of_input_untouched():
    model = make()
    x = X.clone()
    LRP(model).attribute(x, target=0)
    assert not x.requires_grad and x.grad is None
    xg = X.clone().requires_grad_(True)
    LRP(model).attribute(xg, target=0)
    assert xg.requires_grad and xg.grad is None
    for p in model.parameters():
        assert p.grad is None
