"""CD's default mode (total form, local boxes) against an explicit two-part reference
(``_cd_reference.py``: ``rel`` and ``irr`` propagated separately through a ``torch.fx``
trace, one rule per node), so the rules themselves are checked, not only ``rel + irr``
(which the total form gives by construction).

Small networks with every kind of layer: signed inputs, residual sums, concatenations,
depthwise / grouped / strided / dilated convolutions, batch norm (also reading exact zeros,
where the reference rule sends its whole shift to ``irr``), saturating ReLU6, LeakyReLU,
Hardtanh, average and max pooling, zero padding, a constant (irrelevant) shift.  Masks:
scattered, half, a box, full, empty.  float64; tolerance 1e-10 of max|logit| (measured
agreement ~1e-14: the same arithmetic in another order)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from captum_rap import CD

from _cd_reference import cd_reference
from _rap_reference import DT, GraphNet, _randomize, mobile_net, resnet_like

TOL = 1e-10


def zoo_net(seed: int = 0) -> GraphNet:
    """Leaky ReLU, a constant shift, zero padding, Hardtanh, max + average pooling
    concatenated.  Input (3, 8, 8)."""
    spec = [("c1", "conv", ("input",)), ("bn1", "bn", ("c1",)), ("a1", "leaky", ("bn1",)),
            ("k", "affine_const", ("a1",)), ("p", "pad", ("k",)), ("c2", "conv", ("p",)),
            ("a2", "hardtanh", ("c2",)), ("mp", "maxpool", ("a2",)), ("ap", "avgpool2", ("a2",)),
            ("cat", "cat", ("mp", "ap")), ("fl", "flatten", ("cat",)), ("fc", "linear", ("fl",))]
    mods = {"c1": nn.Conv2d(3, 6, 3, padding=1), "bn1": nn.BatchNorm2d(6),
            "c2": nn.Conv2d(6, 8, 2), "mp": nn.MaxPool2d(2), "fc": nn.Linear(16 * 16, 5)}
    return _randomize(GraphNet(spec, mods), seed)


NETS = {"mobile": (mobile_net, (3, 8, 8)), "resnet_like": (resnet_like, (3, 10, 8)), "zoo": (zoo_net, (3, 8, 8))}


def _masks(H, W, seed=2):
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(6, 1, H, W, dtype=DT)
    masks[0] = (torch.rand(1, H, W, generator=g) < 0.3).to(DT)
    masks[1, :, : H // 2] = 1
    masks[2, :, 2:5, 3:6] = 1
    masks[3] = 1
    masks[5, :, H - 2:, :3] = 1  # a corner (mask 4 stays empty)
    return masks


@pytest.mark.parametrize("net", list(NETS))
def test_default_and_local_modes_match_the_two_part_reference(net):
    build, shape = NETS[net]
    m = build()
    x = torch.randn((1,) + shape, generator=torch.Generator().manual_seed(1), dtype=DT)
    masks = _masks(*shape[1:])
    want_rel, want_irr = cd_reference(m, x, masks)
    with torch.no_grad():
        y = m(x)
    scale = float(y.abs().max())
    # the reference itself conserves (a sanity check of the reference, not of CD)
    assert float((want_rel + want_irr - y).abs().max()) < 1e-12 * scale
    for kw in ({}, {"local": False}, {"batch_size": 2}):
        rel, irr = CD(m, **kw).decompose(x, masks)
        assert float((rel - want_rel).abs().max()) < TOL * scale, (net, kw)
        assert float((irr - want_irr).abs().max()) < TOL * scale, (net, kw)
    # not a vacuous comparison: the masks give different, non-trivial parts
    assert float((want_rel[0] - want_rel[1]).abs().max()) > 1e-3 * scale
    assert float(want_irr[0].abs().max()) > 1e-3 * scale and float(want_rel[0].abs().max()) > 1e-3 * scale
