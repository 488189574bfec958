"""RAP against an explicit, engine-independent reference of its per-layer rules
(``_rap_reference.py``: dense matrices, float64) on small networks that cover what the
VGG16 / ResNet50 fixtures do not: layers with signed inputs (both input-sign branches),
residual sums of signed maps, concatenations, depthwise and grouped convolutions, batch
norm pass-through (also at exact-zero inputs), saturated ReLU6 units, average pooling, a
dilated and a strided convolution, a non-square input, an output layer with signed inputs.

Tolerance 1e-10 of max|R|: the engine and the reference compute the same sums in different
orders; measured agreement is ~5e-14 (the official code's own float64 reproducibility on
VGG16 is below 3e-15, see test_rap.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from captum_rap import RAP

from _lrp_utils import rel_err
from _rap_reference import DT, GraphNet, _randomize, dense_forward, mobile_net, rap_reference, resnet_like

TOL = 1e-10


def test_depthwise_conv_on_sparse_inputs_regression():
    """Regression: the hidden rule took ``B = x|W-|`` as ``xW+ - xW`` on non-negative
    inputs.  Where a unit has no negative contribution (a depthwise 3x3 kernel over a
    sparse post-ReLU map) B must be exactly 0 (the reference's safe division then drops
    the ``b/B R-`` term); the subtraction left rounding noise, ``R- / noise`` sent
    arbitrary relevance through the backward pass (computed as ``W+ (p + q) - W q``), and
    the map was off by 0.4% of max|R| on this net (4% on ``mobile_net``)."""
    spec = [("c1", "conv", ("input",)), ("a1", "relu6", ("c1",)), ("dw", "conv", ("a1",)),
            ("a2", "relu", ("dw",)), ("fl", "flatten", ("a2",)), ("fc", "linear", ("fl",))]
    mods = {"c1": nn.Conv2d(3, 6, 3, padding=1), "a1": nn.ReLU6(),
            "dw": nn.Conv2d(6, 6, 3, padding=1, groups=6), "fc": nn.Linear(6 * 36, 4)}
    net = _randomize(GraphNet(spec, mods), seed=3)
    x = torch.randn(3, 3, 6, 6, generator=torch.Generator().manual_seed(4), dtype=DT)
    vals, _, layers = dense_forward(net, x)
    # the situation of the bug: units of the depthwise conv with no negative contribution
    wn = (-layers["dw"].A.clamp(max=0)) @ vals["a1"].T
    assert int((wn == 0).sum()) > 10 and float(wn.max()) > 0
    targets = [0, 2, 3]
    want = rap_reference(net, x, targets)
    got = RAP(net).attribute(x, target=targets)
    assert rel_err(got, want) < TOL


NETS = {"mobile": (mobile_net, (3, 8, 8)), "resnet_like": (resnet_like, (3, 10, 8))}


@pytest.mark.parametrize("net", list(NETS))
def test_rap_matches_explicit_reference(net):
    build, shape = NETS[net]
    m = build()
    x = torch.randn((3,) + shape, generator=torch.Generator().manual_seed(1), dtype=DT)
    targets = [0, 3, 1]
    vals, _, layers = dense_forward(m, x)
    with torch.no_grad():
        y = m(x)
    assert float((vals[m.spec[-1][0]] - y).abs().max()) < 1e-12  # the dense forward is the model's
    # what the nets cover: layers with signed inputs (both input-sign branches non-empty;
    # resnet_like: its output layer)
    signed = [n for n, lay in layers.items() if lay.kind in ("conv", "linear") and lay.ins[0] != "input"
              and float(vals[lay.ins[0]].min()) < 0 < float(vals[lay.ins[0]].max())]
    assert signed == ["fc2"] if net == "resnet_like" else {"c2", "gc", "fc2"} <= set(signed)
    if net == "mobile":
        for a in ("bn1", "bn2"):  # saturated ReLU6 units (input > 6), but not all
            assert 0.05 < float((vals[a] > 6).double().mean()) < 0.5
        assert float((vals["a3"] == 0).double().mean()) > 0.2  # bn4 reads exact zeros
    want = rap_reference(m, x, targets)
    got = RAP(m).attribute(x, target=targets)
    assert rel_err(got, want) < TOL
    # not vacuous: both signs, and another target gives another map
    assert float(want.clamp(min=0).sum()) > 0 > float(want.clamp(max=0).sum())
    assert rel_err(rap_reference(m, x, [1, 0, 2]), want) > 1e-2


def test_layer_relevance_matches_the_reference_at_every_layer():
    """LayerRAP at each parametrized layer's output equals the reference's relevance there
    (so an error cannot cancel out on its way to the input)."""
    m = mobile_net()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5), dtype=DT)
    targets = [2, 4]
    at = {}
    rap_reference(m, x, targets, at)
    from captum_rap import LayerRAP

    for name in ("fc2", "fc1", "gc", "bn4", "c2", "bn3", "pw", "dw", "bn1", "c1"):
        got = LayerRAP(m, m.layers[name]).attribute(x, target=targets).reshape(2, -1)
        assert rel_err(got, at[name]) < TOL, name
