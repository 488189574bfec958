"""The relevance filter (keep the top-k fraction of the relevance at each layer's output,
zero the rest): against an explicit layer-by-layer reference on a small Sequential, as a
preset option, with user rules, and as the base of CLRP/SGLRP (non-linear: stacked maps)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from captum_rap import CLRP, LRP, SGLRP
from captum_rap.composites import FilteredComposite, get_composite, with_relevance_filter
from captum_rap.rules import Epsilon, RelevanceFilter, ZPlus

from _lrp_utils import ref_alphabeta, ref_epsilon, rel_err


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(),
                         nn.Linear(16, 6)).double().eval()


def ref_filter(r, top_k, mode="value"):
    """Keep the ceil(top_k * n) entries with the largest value (or |value|)."""
    k = max(1, math.ceil(top_k * r.numel()))
    key = r if mode == "value" else r.abs()
    order = torch.argsort(key, descending=True)
    keep = torch.zeros_like(r)
    keep[order[:k]] = 1
    return r * keep


def ref_lrp_filtered(model, x, seed, top_k, mode="value", rule="epsilon_plus"):
    """Explicit per-layer LRP of one example on the MLP: dense layers use LRP-epsilon
    (epsilon_plus preset), the relevance at the output of every layer but the last is
    filtered before the layer's rule redistributes it."""
    layers = [m for m in model if isinstance(m, nn.Linear)]
    with torch.no_grad():
        return _ref_lrp_filtered(model, layers, x, seed, top_k, mode, rule)


def _ref_lrp_filtered(model, layers, x, seed, top_k, mode, rule):
    acts = [x]
    h = x
    for m in model:
        h = m(h)
        if isinstance(m, nn.ReLU):
            acts.append(h)
    r = seed
    for i in reversed(range(len(layers))):
        lay = layers[i]
        if i != len(layers) - 1:
            r = ref_filter(r, top_k, mode)
        A, b = lay.weight.detach(), lay.bias.detach()
        if rule == "zplus":
            r = ref_alphabeta(A, b, acts[i], r, 1.0, 0.0, 1e-6, True)
        else:
            r = ref_epsilon(A, b, acts[i], r, 1e-6)
    return r


@pytest.mark.parametrize("mode", ["value", "abs"])
@pytest.mark.parametrize("top_k", [0.1, 0.3, 1.0])
def test_filter_matches_explicit_per_layer_reference(top_k, mode):
    m = _mlp()
    x = torch.randn(5, 10, dtype=torch.float64)
    targets = [0, 1, 2, 3, 5]
    comp = RelevanceFilter(None, top_k=top_k, mode=mode)
    got = LRP(m, "epsilon_plus", relevance_filter=comp).attribute(x, target=targets)
    with torch.no_grad():
        out = m(x)
    for i, t in enumerate(targets):
        seed = torch.zeros(6, dtype=torch.float64)
        seed[t] = out[i, t]
        want = ref_lrp_filtered(m, x[i], seed, top_k, mode)
        assert rel_err(got[i], want) < 1e-10
    if top_k < 1:  # the filter changes the map (so the comparison can fail)
        plain = LRP(m, "epsilon_plus").attribute(x, target=targets)
        assert rel_err(got, plain) > 1e-3


def test_filter_is_sparse_at_each_layer_and_spares_the_output_layer():
    from captum_rap import LayerLRP

    m = _mlp(1)
    x = torch.randn(3, 10, dtype=torch.float64)
    seen = []

    class Spy(RelevanceFilter):
        def filter(self, r):
            out = super().filter(r)
            seen.append((r.shape[1], int((out != 0).sum(1).max())))
            return out

    m[0].rule = Spy(Epsilon(1e-6), top_k=0.25)
    m[2].rule = Spy(Epsilon(1e-6), top_k=0.25)
    m[4].rule = Spy(Epsilon(1e-6), top_k=0.25)
    try:
        LRP(m, "epsilon_plus").attribute(x, target=2)
    finally:
        for i in (0, 2, 4):
            del m[i].rule
    # the output layer (6 units) is not filtered; layers with 24 and 16 outputs keep at most
    # ceil(0.25 n) = 6 and 4 non-zero entries (dead units carry exactly 0 relevance)
    assert sorted(n for n, _ in seen) == [16, 24]
    assert all(0 < kept <= math.ceil(0.25 * n) for n, kept in seen)
    assert LayerLRP(m, m[3]).attribute(x, target=2).shape == (3, 16)


def test_preset_option_user_rules_and_conv():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(),
                      nn.Flatten(), nn.Linear(4 * 4 * 4, 5)).double().eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    a = LRP(m, "epsilon_plus", relevance_filter=0.2).attribute(x, target=1)
    b = LRP(m, with_relevance_filter("epsilon_plus", {"top_k": 0.2})).attribute(x, target=1)
    assert torch.equal(a, b)
    assert get_composite("epsilon_plus").__class__ is not FilteredComposite
    assert get_composite("zplus", relevance_filter=0.1).linear_in_relevance is False
    assert get_composite("zplus").linear_in_relevance is True
    # a user rule is wrapped too; the same filter placed by hand gives the same map
    m[2].rule = ZPlus(1e-6)
    try:
        auto = LRP(m, "epsilon_plus", relevance_filter=0.2).attribute(x, target=1)
    finally:
        del m[2].rule
    m[0].rule = RelevanceFilter(ZPlus(1e-6), 0.2)
    m[2].rule = RelevanceFilter(ZPlus(1e-6), 0.2)
    try:
        manual = LRP(m, "epsilon_plus").attribute(x, target=1)
    finally:
        del m[0].rule, m[2].rule
    assert rel_err(auto, manual) < 1e-12
    # only chosen layers
    only = LRP(m, with_relevance_filter("epsilon_plus", 0.2, layers=lambda info: info.index == 1))
    m[2].rule = RelevanceFilter(ZPlus(1e-6), 0.2)
    try:
        manual2 = LRP(m, "epsilon_plus").attribute(x, target=1)
    finally:
        del m[2].rule
    assert rel_err(only.attribute(x, target=1), manual2) < 1e-12
    with pytest.raises(ValueError, match="top_k"):
        RelevanceFilter(ZPlus(), 0.0)
    with pytest.raises(ValueError, match="mode"):
        RelevanceFilter(ZPlus(), 0.5, mode="max")
    with pytest.raises(TypeError):
        with_relevance_filter("epsilon", "ten percent")


def test_contrastive_methods_on_a_filtered_base_use_separate_maps():
    """The filter is not linear in the seed: CLRP/SGLRP must equal the definitions with the
    filtered LRP maps of each seed (a signed single pass would differ)."""
    m = _mlp(2)
    x = torch.randn(4, 10, dtype=torch.float64)
    t = [0, 2, 4, 5]
    kw = dict(composite="epsilon_plus", relevance_filter=0.3)
    with torch.no_grad():
        out = m(x)
    mask = torch.zeros_like(out)
    mask[range(4), t] = 1
    s = (out * mask).sum(1, keepdim=True)
    lrp = LRP(m, **kw)
    R = lrp.attribute(x, output_relevance=s * mask)
    D = lrp.attribute(x, output_relevance=s / 5 * (1 - mask))
    single = lrp.attribute(x, output_relevance=s * mask - s / 5 * (1 - mask))
    assert rel_err(single, R - D) > 1e-3  # non-linear indeed
    assert rel_err(CLRP(m, **kw).attribute(x, t), (R - D).clamp(min=0)) < 1e-10
    p = out.softmax(1)
    pt = (p * mask).sum(1, keepdim=True)
    G = lrp.attribute(x, output_relevance=pt * (1 - pt) * mask)
    GD = lrp.attribute(x, output_relevance=pt * p * (1 - mask))
    assert rel_err(SGLRP(m, scaling=False, **kw).attribute(x, t), G - GD) < 1e-10
