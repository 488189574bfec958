"""Optional oracle: zennit (LGPL, test-only dependency, nothing copied) on the models and
composites it supports.  Maps must agree to 1e-5 relative to max|R|.

Matching definitions: zennit's EpsilonPlus / EpsilonGammaBox / EpsilonAlpha2Beta1 map
Conv -> ZPlus / Gamma (generalized) / AlphaBeta(2, 1), Linear -> Epsilon, first layer ->
ZBox (GammaBox only), and put a stabilized z-rule (``Norm(stabilizer)``) on sum pooling
and, with the ResNet canonizer, on residual sums.  captum_rap splits relevance at these
parameter-free linear ops by autograd, i.e. the *unstabilized* z-rule; the two coincide
when the stabilizer is negligible, so both sides get the same small explicit
epsilon/stabilizer (zennit's defaults are 1e-6) and the stabilizer at sums is 1e-9.
"""

from __future__ import annotations

import functools

import pytest
import torch

from captum_rap import LRP

from _lrp_utils import portable_init, rel_err

zennit = pytest.importorskip("zennit")
torchvision = pytest.importorskip("torchvision")

from zennit.attribution import Gradient  # noqa: E402
from zennit.composites import EpsilonAlpha2Beta1, EpsilonGammaBox, EpsilonPlus  # noqa: E402
from zennit.torchvision import ResNetCanonizer  # noqa: E402

DT = torch.float64
EPS = 1e-6  # dense epsilon, both sides
STAB = 1e-9  # conv / box / sum stabilizer, both sides
LOW, HIGH = -3.0, 3.0


@functools.lru_cache(maxsize=1)
def model(name):
    torch.manual_seed(0)
    m = {"vgg16": torchvision.models.vgg16, "resnet50": torchvision.models.resnet50}[name]()
    portable_init(m, seed=0)  # with biases: the oracle also covers the bias terms
    return m.to(DT).eval()


def inputs(n=2, px=64):
    return torch.randn(n, 3, px, px, generator=torch.Generator().manual_seed(3), dtype=DT)


def zennit_map(m, composite, x, targets):
    with torch.no_grad():
        logits = m(x)
    seed = torch.zeros_like(logits)
    seed[torch.arange(x.shape[0]), targets] = logits[torch.arange(x.shape[0]), targets]
    with Gradient(model=m, composite=composite) as attributor:
        _, grad = attributor(x.clone(), seed)
    return grad  # zennit's "gradient" of an LRP composite is the input relevance


ZENNIT = {
    "epsilon_plus": lambda canon: EpsilonPlus(epsilon=EPS, stabilizer=STAB, canonizers=canon),
    "epsilon_gamma_box": lambda canon: EpsilonGammaBox(low=LOW, high=HIGH, epsilon=EPS, gamma=0.25,
                                                       stabilizer=STAB, canonizers=canon),
    "epsilon_alpha2_beta1": lambda canon: EpsilonAlpha2Beta1(epsilon=EPS, stabilizer=STAB, canonizers=canon),
}
OURS = {
    "epsilon_plus": dict(epsilon=EPS, stabilizer=STAB),
    "epsilon_gamma_box": dict(epsilon=EPS, stabilizer=STAB, gamma=0.25, low=LOW, high=HIGH),
    "epsilon_alpha2_beta1": dict(epsilon=EPS, stabilizer=STAB),
}


@pytest.mark.parametrize("preset", list(ZENNIT))
def test_vgg16_matches_zennit(preset):
    m = model("vgg16")
    x = inputs()
    targets = [7, 420]
    theirs = zennit_map(m, ZENNIT[preset](None), x, targets)
    ours = LRP(m, preset, **OURS[preset]).attribute(x, target=targets)
    err = rel_err(ours, theirs)
    assert err < 1e-5, err
    # not a vacuous comparison: a different preset gives a different map
    other = LRP(m, "epsilon", epsilon=EPS).attribute(x, target=targets)
    assert rel_err(other, theirs) > 1e-2


@pytest.mark.parametrize("preset", ["epsilon_plus"])
def test_resnet50_with_canonizer_matches_zennit(preset):
    """zennit's BN merge turns each batch norm into ``x / sqrt(1 + bn.eps)`` (running_var set
    to 1, eps kept), not the identity, so with the default eps=1e-5 its canonized ResNet is
    a slightly different model (maps differ by 9e-5 on ResNet18, 2e-4 on ResNet50, growing
    with depth; the stem alone already by 3e-7).  With ``bn.eps = 0`` (running variances
    are >= 0.5) its canonization is exact and the maps agree to ~1e-8."""
    m = model("resnet50")
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.eps = 0.0
    x = inputs(n=1)
    targets = [3]
    with torch.no_grad():
        y0 = m(x)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    structure = [(n, type(mod)) for n, mod in m.named_modules()]
    hooks = [(len(mod._forward_hooks), len(mod._forward_pre_hooks), len(mod._backward_hooks))
             for mod in m.modules()]
    theirs = zennit_map(m, ZENNIT[preset]([ResNetCanonizer()]), x, targets)
    ours = LRP(m, preset, merge_batchnorm=True, **OURS[preset]).attribute(x, target=targets)
    err = rel_err(ours, theirs)
    assert err < 1e-5, err
    # the canonizer leaves the model as it was (zennit removes its BN merge and sum modules
    # when the attributor exits): same parameters, buffers, modules, hooks and outputs
    after = m.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], v) for k, v in state.items())
    assert [(n, type(mod)) for n, mod in m.named_modules()] == structure
    assert [(len(mod._forward_hooks), len(mod._forward_pre_hooks), len(mod._backward_hooks))
            for mod in m.modules()] == hooks
    with torch.no_grad():
        assert torch.equal(m(x), y0)
