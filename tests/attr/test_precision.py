"""The precision guard of the propagation methods (RAP, LRP, CLRP, SGLRP, Layer*).

* Half-precision models (float16, bfloat16) and autocast: the relevance path runs in
  float32 on copies of the parameters, the result comes back in the model's dtype, and the
  model is unchanged (same parameter objects, dtypes and values).
* ``dtype=None``: a float32 run whose estimated relative error ``Σ|R| / Σ|seed| · eps``
  exceeds 1e-3 is redone in float64 (the result is then the float64 map, cast); an explicit
  ``dtype`` warns instead.
* A fuzz over dtypes, memory formats, in-model normalisation, train/eval and batch sizes:
  no NaN/Inf, half-precision maps correlate >= 0.99 with the float64 map (or the call
  warns), batch rows equal single calls, RAP conserves.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from captum_rap import CLRP, LRP, RAP, SGLRP, LayerLRP, LayerRAP

from _integrity import assert_unchanged, snapshot


class Normalize(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class Net(nn.Module):
    """In-model normalisation, conv + BN + ReLU, a residual block, dropout, pooling, head."""

    def __init__(self):
        super().__init__()
        self.norm = Normalize()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.b2 = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        h = torch.relu(self.b1(self.c1(self.norm(x))))
        h = torch.relu(h + self.b2(self.c2(h)))
        h = nn.functional.adaptive_avg_pool2d(h, 4)
        return self.fc(self.drop(h.flatten(1)))


def _net():
    torch.manual_seed(0)
    m = Net()
    with torch.no_grad():
        for bn in (m.b1, m.b2):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
            bn.weight.uniform_(0.5, 1.5)
    return m.eval()


def _x(n=3, dtype=torch.float32):
    return torch.rand(n, 3, 12, 12, generator=torch.Generator().manual_seed(1)).to(dtype)


def _corr(a, b):
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


METHODS = {
    "rap": lambda m, **kw: RAP(m, **kw),
    "epsilon": lambda m, **kw: LRP(m, "epsilon", **kw),
    "epsilon_gamma_box": lambda m, **kw: LRP(m, "epsilon_gamma_box", low=0.0, high=1.0, **kw),
    "clrp1": lambda m, **kw: CLRP(m, variant=1, low=0.0, high=1.0, **kw),
    "sglrp": lambda m, **kw: SGLRP(m, low=0.0, high=1.0, **kw),
}


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", list(METHODS))
def test_half_models_run_in_float32_and_come_back_in_their_dtype(half, method):
    model = _net().to(half)
    x = _x(dtype=half)
    before = snapshot(model)
    params = [id(p) for p in model.parameters()]
    attr = METHODS[method](model).attribute(x, target=[1, 2, 3])
    assert attr.dtype == half and attr.shape == x.shape
    assert torch.isfinite(attr).all()
    assert_unchanged(model, before)
    assert [id(p) for p in model.parameters()] == params
    assert all(p.dtype == half for p in model.parameters())
    # the float32 propagation of the same (half) weights, cast: the same map
    want = METHODS[method](_net().to(half).float()).attribute(x.float(), target=[1, 2, 3])
    assert torch.equal(attr, want.to(half))
    # and close to the float64 map of the same weights (the bar: >= 0.99)
    ref = METHODS[method](_net().to(half).double()).attribute(x.double(), target=[1, 2, 3])
    assert _corr(attr, ref) >= 0.99


def test_without_the_guard_half_precision_is_far_off():
    """The premise: propagating in float16 itself (what the guard prevents) is measurably
    worse than the guarded map, so the comparison above can fail."""
    model = _net().to(torch.float16)
    x = _x(dtype=torch.float16)
    ref = RAP(_net().to(torch.float16).double()).attribute(x.double(), target=[1, 2, 3])
    guarded = RAP(model).attribute(x, target=[1, 2, 3])
    assert _corr(guarded, ref) > 0.999
    # float16 arithmetic on the relevance path: the reference's own float16 rounding
    naive = (ref.half().float() - ref.float()).abs().max()
    assert float((guarded.float() - ref.float()).abs().max()) <= 2 * float(naive) + 1e-6


@pytest.mark.parametrize("device_dtype", [torch.bfloat16, torch.float16])
def test_autocast_is_disabled_inside(device_dtype):
    model = _net()
    x = _x()
    plain = RAP(model).attribute(x, target=[0, 1, 2])
    with torch.autocast("cpu", dtype=device_dtype):
        inside = RAP(model).attribute(x, target=[0, 1, 2])
        lrp = LRP(model, "epsilon").attribute(x, target=[0, 1, 2])
    assert inside.dtype == torch.float32
    assert torch.allclose(inside, plain, rtol=0, atol=1e-6 * float(plain.abs().max()))
    assert torch.allclose(lrp, LRP(model, "epsilon").attribute(x, target=[0, 1, 2]), rtol=0,
                          atol=1e-6 * float(lrp.abs().max()))


class Cancel(nn.Module):
    """Two linear layers whose relevance cancels: Σ|R| is ~1e4 times the logit."""

    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(4, 2, bias=False)
        self.l2 = nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            self.l1.weight.copy_(torch.tensor([[1e4, -1e4, 1.0, 0.0], [0.0, 0.0, 0.5, 1.0]]))
            self.l2.weight.copy_(torch.tensor([[1.0, 1.0]]))

    def forward(self, x):
        return self.l2(self.l1(x))


X_CANCEL = torch.tensor([[0.7, 0.7 - 1e-5, 0.4, 0.3], [0.3, 0.3 + 2e-5, 0.9, 0.2]])


@pytest.mark.parametrize("eps", [1e-12, 1e-3])
def test_ill_conditioned_float32_is_redone_in_float64(eps):
    model, x = Cancel(), X_CANCEL
    f64 = LRP(Cancel().double(), "epsilon", epsilon=eps).attribute(x.double(), target=0)
    with torch.no_grad():
        logit = Cancel().double()(x.double())[:, 0]
    ratio = float((f64.abs().sum(1) / logit.abs()).max())
    assert ratio * torch.finfo(torch.float32).eps > 1e-3  # the premise: ill-conditioned in float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        auto = LRP(model, "epsilon", epsilon=eps).attribute(x, target=0)
    assert auto.dtype == torch.float32
    assert torch.equal(auto, f64.float())  # the float64 map, cast
    with pytest.warns(RuntimeWarning, match="ill-conditioned in torch.float32"):
        forced = LRP(model, "epsilon", epsilon=eps, dtype=torch.float32).attribute(x, target=0)
    if eps == 1e-3:  # float32 rounding of the cancelling pre-activations is visible in the map
        assert float((forced.double() - f64).abs().max()) > 10 * float((auto.double() - f64).abs().max())
    # explicit float64 on a float32 model: float64 arithmetic, float32 result, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explicit = LRP(model, "epsilon", epsilon=eps, dtype=torch.float64).attribute(x, target=0)
    assert torch.equal(explicit, auto)


def test_well_conditioned_float32_stays_float32():
    model = _net()
    x = _x()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        auto = LRP(model, "epsilon").attribute(x, target=1)
        forced = LRP(model, "epsilon", dtype=torch.float32).attribute(x, target=1)
    assert torch.equal(auto, forced)


def test_layer_methods_and_deltas_follow_the_guard():
    model, x = Cancel(), X_CANCEL
    r, d = LayerLRP(model, model.l1, "epsilon", epsilon=1e-12).attribute(x, target=0, return_convergence_delta=True)
    m64 = Cancel().double()
    r64, d64 = LayerLRP(m64, m64.l1, "epsilon", epsilon=1e-12).attribute(x.double(), target=0,
                                                                           return_convergence_delta=True)
    assert r.dtype == torch.float32 and d.dtype == torch.float32
    assert torch.equal(r, r64.float()) and torch.equal(d, d64.float())  # one run's relevances, not two
    half = _net().half()
    lr = LayerRAP(half, [half.c2, half.fc]).attribute(_x(dtype=torch.float16), target=1)
    assert [t.dtype for t in lr] == [torch.float16, torch.float16]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fuzz_dtypes_layouts_batches(dtype, channels_last):
    model = _net().to(dtype)
    x = _x(4, dtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    ref_model = _net().to(dtype).double()
    targets = [0, 1, 2, 3]
    for name, make in METHODS.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            attr = make(model).attribute(x, target=targets)
        assert attr.dtype == dtype and torch.isfinite(attr).all(), name
        ref = make(ref_model).attribute(x.double(), target=targets)
        warned = any("ill-conditioned" in str(w.message) for w in caught)
        assert _corr(attr, ref) >= 0.99 or warned, name
        one = make(model).attribute(x[2:3], target=targets[2])
        scale = float(attr[2].abs().max())
        tol = {torch.float16: 1e-2, torch.bfloat16: 1e-2, torch.float32: 1e-5, torch.float64: 1e-10}[dtype]
        assert float((one[0].double() - attr[2].double()).abs().max()) <= tol * scale, name
    # RAP conserves (the target logit, with biases) in the computation dtype
    attr, delta = RAP(model).attribute(x, target=targets, return_convergence_delta=True)
    assert delta.dtype == dtype
    with torch.no_grad():
        logits = ref_model(x.double())[torch.arange(4), targets]
    total = attr.double().reshape(4, -1).sum(1)
    tol = 1e-6 if dtype == torch.float64 else 2e-2
    assert torch.allclose(total, logits, rtol=tol, atol=tol * float(logits.abs().max()))


def test_train_mode_dropout_warns_and_batch_norm_is_kept():
    model = _net().train()
    x = _x()
    before = snapshot(model)
    with pytest.warns(UserWarning, match="[Dd]ropout"):
        try:
            RAP(model).attribute(x, target=1)
        except Exception:  # training-mode batch norm may be refused; the model must be intact
            pass
    assert_unchanged(model, before)


def test_dtype_argument_is_checked():
    model = _net()
    for bad in (torch.float16, torch.int64, "float64", 64):
        with pytest.raises(ValueError, match="dtype"):
            RAP(model, dtype=bad)
        with pytest.raises(ValueError, match="dtype"):
            LRP(model, "epsilon", dtype=bad)


def test_relevance_overflowing_the_model_dtype_warns():
    # float16 model: x = 1 -> h = 200x - 199 = 1 -> y = 400h = 400.  LRP-0 (tiny epsilon)
    # gives the input 200 * 400 = 80000 (the bias -199 * 400 takes the rest), beyond
    # float16's largest value 65504: computed in float32, the cast back used to give a
    # silent Inf
    model = nn.Sequential(nn.Linear(1, 1), nn.Linear(1, 1, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(200.0)
        model[0].bias.fill_(-199.0)
        model[1].weight.fill_(400.0)
    model = model.half().eval()
    x = torch.ones(1, 1, dtype=torch.float16)
    with pytest.warns(RuntimeWarning, match="overflows the model's torch.float16"):
        r = LRP(model, "epsilon", epsilon=1e-9).attribute(x, target=0)
    assert r.dtype == torch.float16 and bool(torch.isinf(r).all())
    # the float32 copy returns the value: 80000 = 200 * 400
    r32 = LRP(model.float(), "epsilon", epsilon=1e-9).attribute(x.float(), target=0)
    assert abs(float(r32) - 80000.0) < 1e-2
