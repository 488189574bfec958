"""Clear errors instead of silent wrong maps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from captum_rap import LRP, UnsupportedOperationError


class Wrapped(nn.Module):
    """model.block.<act> : the error must name the module path."""

    def __init__(self, act_module=None, fn=None):
        super().__init__()
        self.block = nn.Module()
        self.block.lin = nn.Linear(4, 4)
        if act_module is not None:
            self.block.act = act_module
        self.fn = fn
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h = self.block.lin(x)
        if self.fn is not None:
            h = self.fn(h)
        else:
            h = self.block.act(h)
        return self.head(h)


class InnerLogSumExp(nn.Module):
    def forward(self, x):
        return x - torch.logsumexp(x, dim=-1, keepdim=True)


class InnerStd(nn.Module):
    def forward(self, x):
        return x * x.std()  # a statistic of the activation, not a normalisation


class DivideByActivation(nn.Module):
    def forward(self, x):
        return x / (x.abs().sum(-1, keepdim=True) + 1)  # division by an activation


@pytest.mark.parametrize("act,op_name,path", [
    (InnerLogSumExp(), "logsumexp", "block.act"),
    (nn.LogSoftmax(dim=-1), "log_softmax", "block.act"),
    (InnerStd(), "std", "block.act"),
    (DivideByActivation(), "div", "block.act"),
])
def test_unsupported_activation_names_op_and_module(act, op_name, path):
    torch.manual_seed(0)
    model = Wrapped(act).eval()
    with pytest.raises(UnsupportedOperationError) as info:
        LRP(model).attribute(torch.randn(2, 4), target=0)
    msg = str(info.value)
    assert op_name in msg and f"'{path}'" in msg, msg


def test_unsupported_functional_in_model_forward():
    torch.manual_seed(0)
    model = Wrapped(fn=lambda h: torch.logsumexp(h, dim=-1, keepdim=True)).eval()
    with pytest.raises(UnsupportedOperationError, match="logsumexp"):
        LRP(model).attribute(torch.randn(2, 4), target=0)


def test_lstm_module_named():
    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.Linear(3, 5)
            self.rnn = nn.LSTM(5, 4, batch_first=True)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            out, _ = self.rnn(self.enc(x))
            return self.fc(out[:, -1])

    with pytest.raises(UnsupportedOperationError) as info:
        LRP(Seq().eval()).attribute(torch.randn(2, 6, 3), target=1)
    msg = str(info.value)
    assert "'rnn'" in msg and "LSTM" in msg, msg


@pytest.mark.parametrize("bad,word", [(float("nan"), "NaN"), (float("inf"), "Inf"), (float("-inf"), "Inf")])
def test_nan_inf_input(bad, word):
    model = nn.Sequential(nn.Linear(4, 3)).eval()
    x = torch.randn(2, 4)
    x[1, 2] = bad
    with pytest.raises(ValueError, match=word):
        LRP(model).attribute(x, target=0)


@pytest.mark.parametrize("target", [3, -4, [0, 5], torch.tensor([1, 7]), 100])
def test_out_of_range_target(target):
    model = nn.Sequential(nn.Linear(4, 3)).eval()
    with pytest.raises(ValueError):
        LRP(model).attribute(torch.randn(2, 4), target=target)


def test_target_list_of_wrong_length():
    model = nn.Sequential(nn.Linear(4, 3)).eval()
    with pytest.raises(ValueError):
        LRP(model).attribute(torch.randn(2, 4), target=[0, 1, 2])


@pytest.mark.parametrize("shape", [(2, 4), (3, 3), (2, 3, 1), (6,)])
def test_output_relevance_of_wrong_shape(shape):
    model = nn.Sequential(nn.Linear(4, 3)).eval()
    with pytest.raises(ValueError, match="shape"):
        LRP(model).attribute(torch.randn(2, 4), output_relevance=torch.ones(shape))
    with pytest.raises(ValueError, match="shape"):
        LRP(model).attribute(torch.randn(2, 4), output_relevance=lambda out: torch.ones(shape))


def test_train_mode_batchnorm_refused():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2)).train()
    with pytest.raises(UnsupportedOperationError, match="eval"):
        LRP(model).attribute(torch.randn(5, 4), target=0)
