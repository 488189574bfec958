"""No silent wrong numbers (issue 16): hyper-parameters (the preset keywords are in
``rules/test_composites.py``), the epsilon floor, calls under no_grad / inference_mode,
compiled and TorchScript models, CD's masks and targets, the metrics on NaN maps, train-mode
models left unchanged by every entry point, and the RAP figures on all-zero / NaN maps and
their colours."""

from __future__ import annotations

import copy
import math
import warnings

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from captum_rap import ACD, CD, CLRP, LRP, RAP, SGLRP, LayerLRP  # noqa: E402
from captum_rap import rules as R  # noqa: E402
from captum_rap.metrics import region_perturbation, relevance_distribution  # noqa: E402

DT = torch.float64
NAN, INF = float("nan"), float("inf")


def cnn(bn=False, dropout=False, seed=0):
    torch.manual_seed(seed)
    layers = [nn.Conv2d(3, 4, 3, padding=1)]
    if bn:
        layers.append(nn.BatchNorm2d(4))
    layers += [nn.ReLU(), nn.MaxPool2d(2), nn.Flatten()]
    if dropout:
        layers.append(nn.Dropout(0.5))
    layers.append(nn.Linear(4 * 4 * 4, 5))
    return nn.Sequential(*layers).double().eval()


def images(n=2, seed=1):
    return torch.randn(n, 3, 8, 8, dtype=DT, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- hyper-parameters
# (the preset keywords are checked in rules/test_composites.py)
BAD_VALUES = [
    (lambda: R.Epsilon(NAN), ValueError), (lambda: R.Epsilon(-1e-3), ValueError), (lambda: R.Epsilon(INF), ValueError),
    (lambda: R.Epsilon("0.1"), TypeError), (lambda: R.Gamma(gamma=NAN), ValueError),
    (lambda: R.Gamma(gamma=-0.25), ValueError), (lambda: R.Gamma(epsilon=INF), ValueError),
    (lambda: R.Gamma(generalized="yes"), TypeError), (lambda: R.AlphaBeta(NAN, 1.0), ValueError),
    (lambda: R.AlphaBeta(2.0, INF), ValueError), (lambda: R.ZPlus(epsilon=-1.0), ValueError),
    (lambda: R.ZPlus(bias=1), TypeError), (lambda: R.ZBox(low=NAN), ValueError),
    (lambda: R.ZBox(high=torch.tensor([0.0, INF])), ValueError), (lambda: R.ZBox(low=1.0, high=0.0), ValueError),
    (lambda: R.ZBox(low=torch.tensor([0.0, 2.0]), high=1.0), ValueError), (lambda: R.Flat(NAN), ValueError),
    (lambda: R.WSquare(-1.0), ValueError), (lambda: R.RelevanceFilter(top_k=NAN), ValueError),
    (lambda: R.RelevanceFilter(top_k=True), TypeError), (lambda: RAP(cnn(), stabilizer=NAN), ValueError),
    (lambda: RAP(cnn(), stabilizer=INF), ValueError), (lambda: LRP(cnn(), "epsilon", epsilon=NAN), ValueError),
    (lambda: LRP(cnn(), "epsilon_plus", stabilizer=-1.0), ValueError),
    (lambda: LRP(cnn(), "epsilon_gamma_box", gamma=INF), ValueError),
    (lambda: LRP(cnn(), "zplus_box", low=2.0, high=1.0), ValueError),
    (lambda: CLRP(cnn(), high=NAN), ValueError), (lambda: LRP(cnn(), merge_batchnorm="no"), TypeError),
    (lambda: SGLRP(cnn(), scaling=1), TypeError), (lambda: SGLRP(cnn(), relu=None), TypeError),
    (lambda: LRP(cnn(), relevance_filter=NAN), ValueError),
]


@pytest.mark.parametrize("case", range(len(BAD_VALUES)))
def test_non_finite_negative_or_mistyped_values_are_refused(case):
    make, exc = BAD_VALUES[case]
    with pytest.raises(exc):
        make()


def test_epsilon_is_floored_at_the_dtypes_tiny():
    assert R.floored_epsilon(1e-9, torch.float16) == torch.finfo(torch.float16).tiny
    assert R.floored_epsilon(1e-9, torch.float32) == 1e-9
    assert R.floored_epsilon(0.0, torch.float16) == 0.0
    # float16: 1e-9 underflows to 0, and a unit with z = 0 gave 0 / 0 = NaN in the whole map
    lin = nn.Linear(4, 3, bias=False).half().eval()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -1.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5], [1.0, 0.0, 0.0, 1.0]]))
    model = nn.Sequential(lin, nn.ReLU(), nn.Linear(3, 2, bias=False).half()).eval()
    x = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float16)
    for rule in (R.Epsilon(1e-9), R.Gamma(0.25, epsilon=1e-9), R.ZPlus(epsilon=1e-9)):
        model[0].rule = model[2].rule = rule
        attr = LRP(model).attribute(x, target=1)
        assert torch.isfinite(attr).all(), rule


# ---------------------------------------------------------------- grad modes, compile, script
@pytest.mark.parametrize("name", ["RAP", "LRP", "CLRP", "SGLRP", "LayerLRP", "CD"])
def test_no_grad_and_inference_mode_give_the_plain_map(name):
    m, x = cnn(), images()
    make = {"RAP": lambda: RAP(m), "LRP": lambda: LRP(m), "CLRP": lambda: CLRP(m), "SGLRP": lambda: SGLRP(m),
            "LayerLRP": lambda: LayerLRP(m, m[1]), "CD": lambda: CD(m)}[name]
    want = make().attribute(x, target=1)
    with torch.no_grad():
        assert torch.equal(make().attribute(x, target=1), want)
    with torch.inference_mode():
        got = make().attribute(x, target=1)
        x_inf = x.clone()  # an inference tensor
    assert torch.equal(got, want)
    assert torch.equal(make().attribute(x_inf, target=1), want)


@pytest.mark.parametrize("name", ["RAP", "LRP", "CD"])
def test_torchscript_models_are_refused_with_a_clear_error(name):
    m, x = cnn(), images()
    cls = {"RAP": RAP, "LRP": LRP, "CD": CD}[name]
    for scripted in (torch.jit.script(m), torch.jit.trace(m, x)):
        with pytest.raises(TypeError, match="TorchScript"):
            cls(scripted)


def test_compiled_model_is_explained_through_its_module():
    m, x = cnn(), images()
    compiled = torch.compile(m)
    assert torch.equal(RAP(compiled).attribute(x, target=2), RAP(m).attribute(x, target=2))
    assert torch.equal(LRP(compiled, "epsilon_plus").attribute(x, target=2),
                       LRP(m, "epsilon_plus").attribute(x, target=2))
    assert torch.equal(CD(compiled).attribute(x, target=2), CD(m).attribute(x, target=2))


# ------------------------------------------------------------------------------ CD masks
def test_cd_mask_and_target_validation():
    m = cnn()
    x = images(2)
    cd = CD(m)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cd.decompose(x[:1], torch.full((1, 1, 8, 8), 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cd.decompose(x[:1], torch.full((1, 1, 8, 8), -0.5, dtype=DT))
    ok_int = cd.decompose(x[:1], torch.ones(1, 1, 8, 8, dtype=torch.long))
    ok_float = cd.decompose(x[:1], torch.ones(1, 1, 8, 8, dtype=DT))
    assert torch.equal(ok_int[0], ok_float[0])
    fm = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    fm[..., 4:] = 1
    with pytest.raises(TypeError, match="integer group ids"):
        cd.attribute(x, target=0, feature_mask=fm.double())
    with pytest.raises(ValueError, match="3 masks along the batch axis for 2 inputs"):
        cd.attribute(x, target=0, feature_mask=fm.expand(3, 1, 8, 8))
    with pytest.raises(ValueError, match="1 entries for 2 inputs"):
        cd.attribute(x, target=[1], feature_mask=fm)
    a = cd.attribute(x, target=[1, 1], feature_mask=fm.expand(2, 1, 8, 8))
    assert torch.allclose(a, cd.attribute(x, target=1, feature_mask=fm), rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------ metrics
def test_metrics_refuse_nan_maps():
    m, x = cnn(), images()
    a = torch.rand_like(x)
    a[0, 0, 0, 0] = NAN
    with pytest.raises(ValueError, match="NaN"):
        region_perturbation(m, x, a, target=1, patch_size=4)
    with pytest.raises(ValueError, match="NaN"):
        relevance_distribution(a)
    a[0, 0, 0, 0] = INF
    with pytest.raises(ValueError, match="infinite"):
        region_perturbation(m, x, a, target=1, patch_size=4)


def test_region_perturbation_flat_inputs_with_user_replacement():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 3)).double().eval()
    x = torch.randn(4, 6, dtype=DT)
    a = torch.randn(4, 6, dtype=DT)
    seen = []

    def repl(t):
        seen.append(tuple(t.shape))
        return torch.zeros_like(t)

    r1 = region_perturbation(model, x, a, target=0, patch_size=1, replacement=repl)
    assert seen == [(4, 6)]  # the user's layout, not an internal (N, 1, D) view
    r2 = region_perturbation(model, x, a, target=0, patch_size=1, replacement=torch.zeros(4, 6, dtype=DT))
    r3 = region_perturbation(model, x, a, target=0, patch_size=1, replacement="zeros")
    assert torch.equal(r1.curves, r3.curves) and torch.equal(r2.curves, r3.curves)
    with pytest.raises(ValueError, match="does not broadcast"):
        region_perturbation(model, x, a, target=0, patch_size=1, replacement=torch.zeros(3, 6, dtype=DT))


# ---------------------------------------------------------- models unchanged in train mode
def _state(model):
    return ({k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()],
            [p.requires_grad for p in model.parameters()],
            [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()])


def _same(a, b):
    return (a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0])
            and a[1:] == b[1:])


ENTRY_POINTS = {
    "RAP": lambda m, x: RAP(m).attribute(x, target=1),
    "LRP": lambda m, x: LRP(m).attribute(x, target=1),
    "CLRP": lambda m, x: CLRP(m).attribute(x, target=1),
    "CD": lambda m, x: CD(m).attribute(x, target=1),
    "ACD": lambda m, x: ACD(m).attribute(x, target=1, sweep_dim=4, num_iters=1),
    "region_perturbation": lambda m, x: region_perturbation(m, x, torch.rand_like(x), target=1, patch_size=4,
                                                            batch_size=3),
}


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_train_mode_model_is_never_changed(name):
    m = cnn(bn=True, dropout=True).train()
    x = images(2)
    before = _state(m)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ENTRY_POINTS[name](m, x)
        except Exception:  # noqa: BLE001 - raising is fine (train-mode batch norm), changing is not
            pass
    assert _same(_state(m), before)


def test_region_perturbation_warns_in_train_mode_and_keeps_bn_statistics():
    m = cnn(bn=True).train()
    x = images(4)
    stats = copy.deepcopy(m[1].state_dict())
    with pytest.warns(UserWarning, match="training mode"):
        region_perturbation(m, x, torch.rand_like(x), target=1, patch_size=4, batch_size=5)
    for k, v in stats.items():
        assert torch.equal(m[1].state_dict()[k], v)


# ------------------------------------------------------------------------------ figures
def test_visualize_rap_all_zero_and_nan_maps():
    from captum_rap.visualization import positive_negative, visualize_rap, visualize_rap_grid

    img = torch.rand(3, 8, 8)
    fig, axes = visualize_rap(torch.zeros(3, 8, 8), img)
    assert [a.get_title() for a in axes][0] == "input"
    assert all(a.get_title().endswith("none") for a in axes[1:])
    bad = torch.zeros(3, 8, 8)
    bad[0, 1, 1] = NAN
    for fn in (lambda: visualize_rap(bad, img), lambda: visualize_rap_grid([bad]), lambda: positive_negative(bad)):
        with pytest.raises(ValueError, match="NaN"):
            fn()


def test_one_colour_convention_red_relevant_blue_irrelevant():
    from captum_rap.visualization import visualize_rap, visualize_rap_grid

    attr = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(0))
    _, axes = visualize_rap(attr)
    _, grid = visualize_rap_grid([attr])
    for single, row in zip(axes, grid[0]):
        assert single.images[0].get_cmap().name == row.images[0].get_cmap().name
    assert [a.images[0].get_cmap().name for a in axes] == ["Reds", "Blues", "bwr"]
    # in the signed panel the most relevant pixel is drawn red, the most irrelevant blue
    signed = axes[2].images[0]
    heat = attr.sum(0).numpy()
    top, low = np.unravel_index(heat.argmax(), heat.shape), np.unravel_index(heat.argmin(), heat.shape)
    rgba = signed.to_rgba(signed.get_array())
    assert rgba[top][0] > rgba[top][2] and rgba[low][2] > rgba[low][0]


def test_to_hwc_reads_maps_of_any_channel_count_and_width():
    from captum_rap.visualization import to_hwc

    t = torch.arange(16 * 5 * 6, dtype=torch.float32).view(16, 5, 6)
    assert to_hwc(t).shape == (5, 6, 16) and np.array_equal(to_hwc(t)[:, :, 3], t[3].numpy())
    narrow = torch.arange(3 * 8 * 4, dtype=torch.float32).view(3, 8, 4)  # W = 4
    assert to_hwc(narrow).shape == (8, 4, 3) and np.array_equal(to_hwc(narrow)[..., 1], narrow[1].numpy())
    assert to_hwc(np.zeros((8, 4, 3))).shape == (8, 4, 3)  # numpy: matplotlib's HWC
    assert to_hwc(np.zeros((16, 5, 6)), layout="chw").shape == (5, 6, 16)
    assert math.isclose(float(to_hwc(narrow, layout="chw").sum()), float(narrow.sum()))
    with pytest.raises(ValueError, match="layout"):
        to_hwc(t, layout="whc")
