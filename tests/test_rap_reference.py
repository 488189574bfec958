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
