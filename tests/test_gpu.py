"""Device tests (``pytest -m gpu``): RAP, LRP presets, CLRP, SGLRP and CD computed on CUDA
against the same method on the CPU in float64.  Skipped without CUDA.

* float64 on the device must equal the CPU float64 result up to summation-order rounding;
* float32 on the device (TF32 off, so the comparison measures the method, not TF32) must
  stay about as close to the float64 result as float32 on the CPU does: measured on the
  CPU, the relative L2 error is 9e-6 for RAP (its uniform shift amplifies rounding) and
  below 6e-7 for the others; the bound is 1e-4;
* results live on the input's device in the input's dtype, and the model is unchanged.

``CAPTUM_RAP_TEST_DEVICE=cpu`` runs the group on the CPU (to check the tests themselves).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from captum_rap import CD, CLRP, LRP, RAP, SGLRP, LayerLRP

DEVICE = os.environ.get("CAPTUM_RAP_TEST_DEVICE", "cuda")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.fixture(autouse=True)
def no_tf32():
    """Full float32 matmuls and convolutions on the device (restored afterwards)."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class ResNetLike(nn.Module):
    """Conv + BN input layer, a residual block with a functional addition, max and average
    pooling, concatenation, a ReLU6, and a Linear head."""

    def __init__(self, classes=6):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.pool = nn.MaxPool2d(2)
        self.act = nn.ReLU6()
        self.head = nn.Linear(16 * 4, classes)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)) + h)
        h = self.pool(self.act(self.conv3(h)))
        h = torch.cat([F.adaptive_avg_pool2d(h, 2), F.adaptive_max_pool2d(h, 2)], dim=1)
        return self.head(h.flatten(1))


def model64():
    torch.manual_seed(0)
    m = ResNetLike().double()
    with torch.no_grad():
        for bn in (m.bn1, m.bn2):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
            bn.weight.uniform_(0.5, 1.5)
    return m.eval()


def inputs64(n=3):
    return torch.rand(n, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2 - 1


TARGETS = [1, 4, 2]

METHODS = {
    "RAP": lambda m: RAP(m),
    "RAP_stabilized": lambda m: RAP(m, stabilizer=1e-6),
    "LRP_epsilon": lambda m: LRP(m, "epsilon", epsilon=1e-6),
    "LRP_epsilon_plus": lambda m: LRP(m, "epsilon_plus"),
    "LRP_gamma_box": lambda m: LRP(m, "epsilon_gamma_box", low=-1.0, high=1.0),
    "LRP_alpha2_beta1_flat": lambda m: LRP(m, "epsilon_alpha2_beta1_flat"),
    "LRP_unmerged": lambda m: LRP(m, "epsilon_plus", merge_batchnorm=False),
    "CLRP1": lambda m: CLRP(m, low=-1.0, high=1.0),
    "CLRP2_sum": lambda m: CLRP(m, variant=2, normalize="sum", low=-1.0, high=1.0),
    "SGLRP": lambda m: SGLRP(m, low=-1.0, high=1.0),
    "LayerLRP": lambda m: LayerLRP(m, m.conv2),
}


def rel_l2(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _state(m):
    return {k: v.detach().cpu().clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_propagation_on_the_device_matches_cpu_float64(name):
    ref_model, x = model64(), inputs64()
    want = METHODS[name](ref_model).attribute(x, target=TARGETS)
    assert torch.isfinite(want).all() and float(want.abs().max()) > 0
    for dtype, bound in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        m = model64().to(device=DEVICE, dtype=dtype)
        before = _state(m)
        xd = x.to(device=DEVICE, dtype=dtype)
        got = METHODS[name](m).attribute(xd, target=torch.tensor(TARGETS, device=DEVICE))
        assert got.device == xd.device and got.dtype == dtype and got.shape == want.shape
        assert torch.isfinite(got).all()
        err = rel_l2(got, want)
        assert err < bound, (name, dtype, err)
        after = _state(m)
        assert all(torch.equal(after[k], v) for k, v in before.items())


def test_rap_conserves_on_the_device():
    m, x = model64().to(DEVICE), inputs64().to(DEVICE)
    attr, delta = RAP(m).attribute(x, target=TARGETS, return_convergence_delta=True)
    logits = m(x).detach()[torch.arange(3), torch.tensor(TARGETS)]
    assert delta.device == x.device
    assert float(delta.abs().max()) < 1e-9 * float(logits.abs().max() + attr.abs().sum())


@pytest.mark.parametrize("dtype, bound", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_cd_on_the_device_matches_cpu_float64(dtype, bound):
    ref_model, x = model64(), inputs64(2)
    masks = torch.zeros(5, 1, 16, 16, dtype=torch.float64)
    for k in range(4):
        masks[k, :, (k // 2) * 8:(k // 2 + 1) * 8, (k % 2) * 8:(k % 2 + 1) * 8] = 1
    masks[4] = 1
    rel_want, irr_want = CD(ref_model, dtype=torch.float64).decompose(x[:1], masks)
    fm = torch.arange(4).view(2, 2).repeat_interleave(8, 0).repeat_interleave(8, 1).view(1, 1, 16, 16)
    attr_want = CD(ref_model, dtype=torch.float64).attribute(x, target=[1, 3], feature_mask=fm)
    m = model64().to(device=DEVICE, dtype=dtype)
    cd = CD(m, dtype=dtype, check_precision=False)
    rel, irr = cd.decompose(x[:1].to(DEVICE, dtype), masks.to(DEVICE, dtype))
    assert rel.device.type == torch.device(DEVICE).type
    assert rel_l2(rel, rel_want) < bound and rel_l2(irr, irr_want) < bound
    # relevant + irrelevant = the logits, for every mask
    logits = m(x[:1].to(DEVICE, dtype)).detach()
    assert rel_l2(rel + irr, logits.expand_as(rel)) < bound
    attr = cd.attribute(x.to(DEVICE, dtype), target=[1, 3], feature_mask=fm.to(DEVICE))
    assert attr.device.type == torch.device(DEVICE).type and rel_l2(attr, attr_want) < bound
