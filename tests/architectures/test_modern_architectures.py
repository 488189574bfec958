"""Every torchvision classifier family runs unchanged with every propagation method.

The smallest member of each family of ``torchvision.models.list_models(module=torchvision.models)``
at a small input (``benchmarks/sweep_torchvision.py`` runs all 80 members):

* float32, seeded random weights with biases: every LRP preset, RAP, CLRP1, SGLRP, LayerLRP
  and LayerRAP on the last block give finite maps of the input's shape, and the model is
  unchanged afterwards (parameters, buffers, hooks, modes, flags);
* float64 bias-free copies: the input relevance sums to the target logit (1e-6 relative)
  wherever the rules conserve relevance:

  - on networks without softmax attention: ``epsilon``, ``epsilon_gamma_box``, ``attnlrp``,
    ``cp_lrp`` and RAP everywhere; the z+ and alpha-beta presets only where every hidden
    layer reads non-negative activations through units with many inputs (ReLU networks
    without gates or depthwise convolutions): z+ drops the relevance of a unit whose
    contributions are all negative, which signed activations (SiLU, GELU, Hardswish,
    layer norm outputs), the pre-activations of a gate branch (SE blocks, under the
    uniform product rule) and depthwise kernels over small maps make common; alpha-beta
    gives ``alpha * R`` to a unit without negative contributions, so it is checked on
    dense convolutions only;
  - on attention networks, ``cp_lrp`` and RAP (attention weights as constants), not the
    AttnLRP softmax rule of the other presets, which is not conservative.

  The class token and position embeddings of ViT are constants added to the activations
  (a bias); the bias-free copies zero them as well.  ConvNeXt's layer scales are drawn
  around 0.1 (the seeded recipe's unit scale makes its residual stream explode).  LRP-0
  and RAP are ill-conditioned on deep random networks (the relevance mass Σ|R| can exceed
  the logit by ten orders of magnitude), so the sum is checked within the rounding of that
  mass where it is larger (1e-10 of Σ|R|); at least one preset per network
  (``epsilon_gamma_box``, or ``cp_lrp`` with attention) must be well-conditioned
  (Σ|R| < 1e4 |logit|), so that the strict check applies to it.  CLRP1 and SGLRP seed several outputs with
  signed relevance: the input relevance sums to the seed's sum (their convergence delta).
"""

from __future__ import annotations

import functools

import pytest
import torch

from captum_rap import CLRP, LRP, RAP, SGLRP, LayerLRP, LayerRAP

from _integrity import assert_unchanged, snapshot
from _lrp_utils import portable_init

torchvision = pytest.importorskip("torchvision")
models = torchvision.models

# family: (builder, input size, last block, has softmax attention)
# every hidden layer reads non-negative activations (ReLU, no gates) through convolutions
# with many inputs per unit: z+ conserves relevance there
ZPLUS_FAMILIES = ("alexnet", "densenet", "googlenet", "inception_v3", "regnet_x", "resnet", "resnext",
                  "squeezenet", "vgg", "wide_resnet")
# ... and every convolution is dense (alpha-beta conserves only where both signs occur)
DENSE_FAMILIES = ("alexnet", "densenet", "googlenet", "inception_v3", "resnet", "vgg")
# large models (or 224 px): a few presets in the float32 test (the sweep runs all of them)
HEAVY = ("alexnet", "maxvit", "vgg", "vit", "wide_resnet")
FAMILIES = {
    "alexnet": (lambda: models.alexnet(), 64, lambda m: m.features, False),
    "convnext": (lambda: models.convnext_tiny(), 32, lambda m: m.features[-1], False),
    "densenet": (lambda: models.densenet121(), 32, lambda m: m.features.denseblock4, False),
    "efficientnet": (lambda: models.efficientnet_b0(), 32, lambda m: m.features[-2], False),
    "efficientnet_v2": (lambda: models.efficientnet_v2_s(), 32, lambda m: m.features[-2], False),
    "googlenet": (lambda: models.googlenet(aux_logits=False, init_weights=False), 32,
                  lambda m: m.inception5b, False),
    "inception_v3": (lambda: models.inception_v3(aux_logits=False, init_weights=False), 80,
                     lambda m: m.Mixed_7c, False),
    "maxvit": (lambda: models.maxvit_t(), 224, lambda m: m.blocks[-1], True),
    "mnasnet": (lambda: models.mnasnet0_5(), 32, lambda m: m.layers[-4], False),
    "mobilenet_v2": (lambda: models.mobilenet_v2(), 32, lambda m: m.features[-2], False),
    "mobilenet_v3": (lambda: models.mobilenet_v3_small(), 32, lambda m: m.features[-2], False),
    "regnet_x": (lambda: models.regnet_x_400mf(), 32, lambda m: m.trunk_output[-1], False),
    "regnet_y": (lambda: models.regnet_y_400mf(), 32, lambda m: m.trunk_output[-1], False),
    "resnet": (lambda: models.resnet18(), 32, lambda m: m.layer4, False),
    "resnext": (lambda: models.resnext50_32x4d(), 32, lambda m: m.layer4, False),
    "shufflenet_v2": (lambda: models.shufflenet_v2_x0_5(), 32, lambda m: m.stage4, False),
    "squeezenet": (lambda: models.squeezenet1_1(), 48, lambda m: m.features[-1], False),
    "swin": (lambda: models.swin_t(), 32, lambda m: m.features[-1], True),
    "swin_v2": (lambda: models.swin_v2_t(), 32, lambda m: m.features[-1], True),
    "vgg": (lambda: models.vgg11(), 32, lambda m: m.features, False),
    "vit": (lambda: models.vit_b_16(image_size=32), 32, lambda m: m.encoder.layers[-1], True),
    "wide_resnet": (lambda: models.wide_resnet50_2(), 32, lambda m: m.layer4, False),
}

PRESETS = ["epsilon", "epsilon_plus", "epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1",
           "epsilon_alpha2_beta1_flat", "zplus", "zplus_box", "attnlrp", "cp_lrp"]
TINY = dict(epsilon=1e-12, stabilizer=1e-12)
# additive constants that are not called "bias": ViT's class token and position embeddings
_CONSTANT_ADDENDS = ("class_token", "pos_embedding")


def _build(family: str, dtype: torch.dtype, bias_free: bool):
    torch.manual_seed(0)
    model = FAMILIES[family][0]()
    portable_init(model, seed=0, bias_free=bias_free)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if bias_free and name.split(".")[-1] in _CONSTANT_ADDENDS:
                p.zero_()
            if name.endswith("layer_scale"):
                p.uniform_(0.05, 0.15, generator=torch.Generator().manual_seed(2))
    return model.to(dtype).eval()


@functools.lru_cache(maxsize=1)
def _model(family: str, dtype: torch.dtype, bias_free: bool):
    return _build(family, dtype, bias_free)


def _input(family: str, dtype: torch.dtype, n: int = 2):
    size = FAMILIES[family][1]
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=dtype)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_method_finite_and_model_unchanged(family):
    model = _model(family, torch.float32, False)
    x = _input(family, torch.float32)
    with torch.no_grad():
        targets = model(x).argmax(1).tolist()  # non-zero logits (ReLU heads can zero others)
    before = snapshot(model)
    block = FAMILIES[family][2](model)
    presets = PRESETS if family not in HEAVY else ["epsilon_plus", "epsilon_gamma_box", "attnlrp", "cp_lrp"]
    methods = [(p, LRP(model, p)) for p in presets]
    methods += [("rap", RAP(model)), ("clrp1", CLRP(model, variant=1)), ("sglrp", SGLRP(model))]
    for name, method in methods:
        attr = method.attribute(x, target=targets)
        assert attr.shape == x.shape, name
        assert torch.isfinite(attr).all(), name
        # (CLRP clips the contrast at 0; SGLRP's seed, the softmax gradient, is exactly 0
        # where the random weights saturate the softmax: both may give an all-zero map)
        if name not in ("clrp1", "sglrp"):
            assert float(attr.abs().max()) > 0, name
        assert_unchanged(model, before)
    for layer_method in (LayerLRP(model, block, "epsilon_plus"), LayerRAP(model, block)):
        rel = layer_method.attribute(x, target=targets)
        assert torch.isfinite(rel).all() and float(rel.abs().max()) > 0
        assert_unchanged(model, before)


def _conserving(family: str):
    if FAMILIES[family][3]:
        return ["cp_lrp"]
    if family not in ZPLUS_FAMILIES:
        return ["epsilon", "epsilon_gamma_box", "attnlrp", "cp_lrp"]
    return [p for p in PRESETS if family in DENSE_FAMILIES or "alpha2" not in p]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_conservation_on_bias_free_float64_copies(family):
    model = _model(family, torch.float64, True)
    x = _input(family, torch.float64)
    with torch.no_grad():
        logits = model(x)
    targets = logits.argmax(1).tolist()
    want = logits[torch.arange(2), targets]
    runs = [(p, LRP(model, p, **TINY)) for p in _conserving(family)] + [("rap", RAP(model))]
    conditioned = []
    for name, method in runs:
        attr, delta = method.attribute(x, target=targets, return_convergence_delta=True)
        total = attr.reshape(2, -1).sum(1)
        mass = attr.abs().reshape(2, -1).sum(1)
        tol = torch.maximum(1e-6 * want.abs(), 1e-10 * mass)
        assert bool(((total - want).abs() <= tol).all()), (name, total.tolist(), want.tolist(), mass.tolist())
        assert torch.allclose(delta, want - total, rtol=0, atol=1e-9 * float(want.abs().max()) + 1e-10 * float(mass.max())), name
        if bool((mass < 1e4 * want.abs()).all()):
            conditioned.append(name)
    assert ("cp_lrp" if FAMILIES[family][3] else "epsilon_gamma_box") in conditioned, conditioned
    # contrastive seeds (signed, several classes): the input relevance sums to the seed's sum
    # (a seed on an output that is exactly 0, as SqueezeNet's ReLU head gives, cannot be
    # propagated: the check needs non-zero logits)
    if not bool((logits != 0).all()):
        return
    base = "epsilon_gamma_box" if not FAMILIES[family][3] else "cp_lrp"
    for method in (CLRP(model, variant=1, composite=base, **TINY), SGLRP(model, composite=base, **TINY)):
        attr, delta = method.attribute(x, target=targets, return_convergence_delta=True)
        assert torch.isfinite(attr).all()
        mass = float(LRP(model, base, **TINY).attribute(x, target=targets).abs().sum())
        assert float(delta.abs().max()) < 1e-6 * float(logits.abs().max()) + 1e-10 * mass


def test_attnlrp_on_attention_is_not_conservative_but_cp_lrp_is():
    """The softmax rule of AttnLRP drops relevance (its bias term), CP-LRP keeps it: the
    two presets differ only there, so the gap is the softmax's."""
    model = _model("vit", torch.float64, True)
    x = _input("vit", torch.float64)
    _, d_attn = LRP(model, "attnlrp", epsilon=0).attribute(x, target=[1, 7], return_convergence_delta=True)
    _, d_cp = LRP(model, "cp_lrp", epsilon=0).attribute(x, target=[1, 7], return_convergence_delta=True)
    assert float(d_cp.abs().max()) < 1e-9
    assert float(d_attn.abs().max()) > 1e-4
