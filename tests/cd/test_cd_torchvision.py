"""CD and ACD on every family of torchvision classifiers (the smallest member of each, at
small inputs): ``rel + irr`` equals the logits within 1e-8 (relative) in float64, within
the precision check's tolerance in float32, and the model is left unchanged.
``benchmarks/sweep_cd.py`` runs all 80 classifiers of
``torchvision.models.list_models(module=torchvision.models)``."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from captum_rap import ACD, CD

from _integrity import assert_unchanged, snapshot

# the sweep's model set-up (batch-norm statistics and zero heads randomised) and masks
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from sweep_cd import masks_for, randomize_  # noqa: E402

tv = pytest.importorskip("torchvision")

# family -> (smallest member, builder keyword arguments, input size)
FAMILIES = {
    "alexnet": ("alexnet", {}, 64),
    "convnext": ("convnext_tiny", {}, 32),
    "densenet": ("densenet121", {}, 32),
    "efficientnet": ("efficientnet_b0", {}, 32),
    "efficientnet_v2": ("efficientnet_v2_s", {}, 32),
    "googlenet": ("googlenet", dict(aux_logits=False, init_weights=False), 32),
    "inception": ("inception_v3", dict(aux_logits=False, init_weights=False), 75),
    # maxvit_t needs 224 px (its partitions); the tests use the same MaxVit code, scaled down
    # (``_small_maxvit``); benchmarks/sweep_cd.py runs maxvit_t itself
    "maxvit": ("maxvit_t", {}, 32),
    "mnasnet": ("mnasnet0_5", {}, 32),
    "mobilenet_v2": ("mobilenet_v2", {}, 32),
    "mobilenet_v3": ("mobilenet_v3_small", {}, 32),
    "regnet_x": ("regnet_x_400mf", {}, 32),
    "regnet_y": ("regnet_y_400mf", {}, 32),
    "resnet": ("resnet18", {}, 32),
    "resnext": ("resnext50_32x4d", {}, 32),
    "shufflenet": ("shufflenet_v2_x0_5", {}, 32),
    "squeezenet": ("squeezenet1_1", {}, 32),
    "swin": ("swin_t", {}, 32),
    "swin_v2": ("swin_v2_t", {}, 32),
    "vgg": ("vgg11", {}, 32),
    "vgg_bn": ("vgg11_bn", {}, 32),
    "vit": ("vit_b_32", dict(image_size=32), 32),
    "wide_resnet": ("wide_resnet50_2", {}, 32),
}


def test_every_torchvision_classifier_has_a_tested_family():
    names = tv.models.list_models(module=tv.models)
    assert len(names) == 80
    prefixes = sorted((f for f in FAMILIES if f != "vgg_bn"), key=len, reverse=True)

    def family(n):
        if n.startswith("vgg"):
            return "vgg_bn" if n.endswith("_bn") else "vgg"
        return next((f for f in prefixes if n.startswith(f)), None)

    missing = [n for n in names if family(n) is None]
    assert not missing, missing
    assert all(m in names and family(m) == f for f, (m, _, _) in FAMILIES.items())


def build(family, dtype=torch.float64, seed=0):
    """The family's smallest member with random weights (batch-norm statistics and the
    zero-initialised heads of ViT / MaxViT randomised), eval mode, and its input."""
    name, kw, s = FAMILIES[family]
    torch.manual_seed(seed)
    if family == "maxvit":
        m = tv.models.MaxVit(input_size=(s, s), stem_channels=16, partition_size=2, block_channels=[16, 32],
                             block_layers=[1, 1], head_dim=8, stochastic_depth_prob=0.0, num_classes=10)
    else:
        m = tv.models.get_model(name, **kw)
    g = torch.Generator().manual_seed(seed + 1)
    randomize_(m, g)
    m = m.to(dtype).eval()
    x = torch.randn(1, 3, s, s, dtype=dtype, generator=g)
    return m, x


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_cd_and_acd_on_torchvision_family(family):
    m, x = build(family)
    s = x.shape[-1]
    before = snapshot(m)
    with torch.no_grad():
        y = m(x)
    masks = masks_for(s, torch.float64)
    rel, irr = CD(m).decompose(x, masks)
    scale = float(y.abs().max())
    assert scale > 0
    assert float((rel + irr - y).abs().max()) <= 1e-8 * scale, family
    assert float(rel[0].abs().max()) > 0 and float(irr[0].abs().max()) > 0
    assert_unchanged(m, before)
    # ACD: a 3 x 3 grid of blocks, one growth step, then the merges
    h = ACD(m).hierarchy(x, sweep_dim=-(-s // 3), percentile_include=60, num_iters=1)
    assert h.kind == "image" and len(h.levels) >= 2 and h.cd_evaluations > 9
    top = h.levels[-1]
    assert len(top) == 1 and np.isfinite(next(iter(top.values())).score)
    assert_unchanged(m, before)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["convnext", "efficientnet", "swin_v2", "vit", "maxvit"])
def test_float32_within_the_precision_check(family):
    """float32 models with the new rules (smooth activations, gates, layer norm,
    attention): the automatic mode's scores are within the precision check's tolerance
    of the float64 decomposition (or the check switched to float64)."""
    m, x = build(family, dtype=torch.float32)
    masks = masks_for(x.shape[-1], torch.float32)
    cd = CD(m)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no precision / batching warnings
        rel, irr = cd.decompose(x, masks)
    with torch.no_grad():
        y = m(x)
    scale = float(y.abs().max())
    assert float((rel + irr - y).abs().max()) <= CD.PRECISION_TOLERANCE * scale, family
    ref, _ = CD(m, dtype=torch.float64).decompose(x, masks)
    assert float((rel.double() - ref).abs().max()) <= CD.PRECISION_TOLERANCE * scale, family
    assert cd.precision_error is not None


@pytest.mark.slow
@pytest.mark.parametrize("family", ["convnext", "efficientnet", "regnet_y", "vit", "swin"])
def test_local_boxes_equal_dense_with_the_new_rules(family):
    """Small box masks: the local (boxed) computation keeps the boxes through the new
    element-wise activations and falls back densely at the operations that mix positions
    (gates, layer norm over permuted maps, attention), with the dense numbers."""
    m, x = build(family)
    s = x.shape[-1]
    g = torch.Generator().manual_seed(3)
    masks = torch.zeros(4, 1, s, s, dtype=torch.float64)
    for k in range(4):
        r, c = torch.randint(0, s - 6, (2,), generator=g).tolist()
        masks[k, :, r:r + 6, c:c + 5] = 1
    rel, irr = CD(m).decompose(x, masks)
    rel_d, irr_d = CD(m, local=False).decompose(x, masks)
    scale = float((rel_d + irr_d).abs().max())
    # (random batch-norm statistics amplify rounding in EfficientNet, as in MobileNetV2)
    tol = 1e-6 if family == "efficientnet" else 1e-10
    assert float((rel - rel_d).abs().max()) <= tol * scale, family
    assert float((irr - irr_d).abs().max()) <= tol * scale, family
