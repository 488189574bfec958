"""Region perturbation (MoRF / LeRF, AOPC) and relevance distribution against hand-computed
cases.  A linear model ``f(x) = w·x + b`` with ``"zeros"`` replacement and patch size 1 has
closed-form curves: removing feature ``i`` lowers the score by its contribution ``w_i x_i``,
so MoRF removes the contributions in decreasing order and LeRF in increasing order."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from captum_rap.metrics import aopc, region_perturbation, relevance_distribution

W = torch.tensor([1.0, 0.75, -2.0, 6.0, -1.0, 0.25])
X = torch.tensor([[1.0, 2.0, -1.0, 0.5, 3.0, 1.0]])
B = 0.5
# contributions w*x = [1, 1.5, 2, 3, -3, 0.25], f(x) = 4.75 + 0.5 = 5.25
CONTRIB = (W * X)


def linear(x):
    return (x.reshape(x.shape[0], -1) * W).sum(1, keepdim=True) + B


def test_linear_morf_closed_form():
    r = region_perturbation(linear, X, CONTRIB, target=0, patch_size=1, order="morf",
                            replacement="zeros")
    # MoRF removes 3, 2, 1.5, 1, 0.25, -3 (features 3, 2, 1, 0, 5, 4)
    assert r.patch_order.tolist() == [[3, 2, 1, 0, 5, 4]]
    drops = [0, 3, 5, 6.5, 7.5, 7.75, 4.75]
    assert torch.allclose(r.drops, torch.tensor([drops], dtype=torch.float64))
    assert torch.allclose(r.curves, 5.25 - torch.tensor([drops], dtype=torch.float64))
    assert r.aopc.item() == pytest.approx(34.5 / 7)
    assert r.aopc_mean == pytest.approx(34.5 / 7)
    assert torch.allclose(r.normalized_drops, torch.tensor([drops], dtype=torch.float64) / 5.25)
    assert r.steps == 6 and r.n_patches == 6
    assert r.fraction_removed.tolist() == pytest.approx([k / 6 for k in range(7)])
    assert r.probability_curves is None                      # a single output: no softmax


def test_linear_lerf_closed_form():
    r = region_perturbation(linear, X, CONTRIB, target=0, patch_size=1, order="lerf",
                            replacement="zeros")
    assert r.patch_order.tolist() == [[4, 5, 0, 1, 2, 3]]
    drops = [0, -3, -2.75, -1.75, -0.25, 1.75, 4.75]
    assert torch.allclose(r.drops, torch.tensor([drops], dtype=torch.float64))
    assert r.aopc.item() == pytest.approx(-1.25 / 7)


def test_morf_beats_lerf_and_reversed_attribution_swaps():
    kw = dict(target=0, patch_size=1, replacement="zeros")
    morf = region_perturbation(linear, X, CONTRIB, order="morf", **kw)
    lerf = region_perturbation(linear, X, CONTRIB, order="lerf", **kw)
    assert morf.aopc.item() > lerf.aopc.item()
    # a reversed (negated) attribution ranks the other way round
    morf_rev = region_perturbation(linear, X, -CONTRIB, order="morf", **kw)
    lerf_rev = region_perturbation(linear, X, -CONTRIB, order="lerf", **kw)
    assert torch.allclose(morf_rev.curves, lerf.curves)
    assert torch.allclose(lerf_rev.curves, morf.curves)
    assert morf_rev.aopc.item() < lerf_rev.aopc.item()


def test_linear_random_closed_form_batched():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(20, generator=g)
    x = torch.randn(5, 20, generator=g)
    f = lambda t: t @ w                                      # (N,) output, target None
    contrib = x * w
    for order, desc in (("morf", True), ("lerf", False)):
        r = region_perturbation(f, x, contrib, patch_size=1, order=order, replacement="zeros",
                                batch_size=7)
        srt = torch.sort(contrib.double(), dim=1, descending=desc).values
        drops = torch.cat([torch.zeros(5, 1, dtype=torch.float64), srt.cumsum(1)], dim=1)
        assert torch.allclose(r.drops, drops, atol=1e-5)
        assert torch.allclose(r.aopc, drops.mean(1), atol=1e-5)
        assert torch.allclose(aopc(r.curves), r.aopc)


def test_steps_and_patches_per_step():
    r = region_perturbation(linear, X, CONTRIB, target=0, patch_size=1, order="morf",
                            replacement="zeros", steps=3, patches_per_step=2)
    assert torch.allclose(r.drops, torch.tensor([[0, 5, 7.5, 4.75]], dtype=torch.float64))
    r = region_perturbation(linear, X, CONTRIB, target=0, patch_size=1, steps=2, replacement="zeros")
    assert torch.allclose(r.drops, torch.tensor([[0, 3, 5]], dtype=torch.float64))
    assert r.aopc.item() == pytest.approx(8 / 3)
    r = region_perturbation(linear, X, CONTRIB, target=0, patch_size=1, patches_per_step=4,
                            replacement="zeros")                   # default: all patches
    assert r.steps == 2 and r.curves.shape == (1, 3)
    assert torch.allclose(r.drops, torch.tensor([[0, 7.5, 4.75]], dtype=torch.float64))
    with pytest.raises(ValueError):
        region_perturbation(linear, X, CONTRIB, target=0, patch_size=1, steps=7)


# -- images: patches, channels, replacements ---------------------------------------------

W_IMG = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4) / 10 - 1


def linear_img(x):
    return (x * W_IMG).flatten(1).sum(1, keepdim=True)


def _img():
    g = torch.Generator().manual_seed(1)
    return torch.randn(1, 2, 4, 4, generator=g)


def _expected(x, repl, order_patches, patch=2, steps=None):
    """Manual curve: replace patches of the 2x2 grid in the given order."""
    cur = x.clone()
    vals = [linear_img(cur).item()]
    for p in order_patches[: steps if steps is not None else len(order_patches)]:
        i, j = divmod(p, 4 // patch)
        sl = (slice(None), slice(None), slice(i * patch, (i + 1) * patch), slice(j * patch, (j + 1) * patch))
        cur[sl] = repl.expand_as(cur)[sl]
        vals.append(linear_img(cur).item())
    return torch.tensor([vals], dtype=torch.float64)


def test_patch_relevance_sums_over_patch_and_channels():
    x = _img()
    attr = torch.zeros(1, 2, 4, 4)
    attr[0, 0, 0, 0] = 5.0               # patch 0: one large entry, total 5 - 4 = 1
    attr[0, 1, 1, 1] = -4.0
    attr[0, :, 2:, 2:] = 0.75            # patch 3: 8 entries * 0.75 = 6
    attr[0, 0, 0, 2] = 2.0               # patch 1: 2
    r = region_perturbation(linear_img, x, attr, target=0, patch_size=2, order="morf")
    assert r.patch_order.tolist() == [[3, 1, 0, 2]]
    r = region_perturbation(linear_img, x, attr, target=0, patch_size=2, order="lerf")
    assert r.patch_order.tolist() == [[2, 0, 1, 3]]
    # a (N, 1, H, W) attribution ranks the same way
    r1 = region_perturbation(linear_img, x, attr.sum(1, keepdim=True), target=0, patch_size=2)
    assert r1.patch_order.tolist() == [[3, 1, 0, 2]]


@pytest.mark.parametrize("replacement", ["zeros", "mean", "blur", "callable", "tensor"])
def test_replacements_match_manual_perturbation(replacement):
    x = _img()
    attr = torch.tensor([1.0, 4.0, -2.0, 3.0]).repeat_interleave(2).view(2, 4)
    attr = attr.repeat_interleave(2, dim=0).view(1, 1, 4, 4).expand(1, 2, 4, 4)  # patches 0..3
    morf_order = [1, 3, 0, 2]
    if replacement == "zeros":
        repl, arg = torch.zeros_like(x), "zeros"
    elif replacement == "mean":
        repl, arg = x.mean(dim=(2, 3), keepdim=True), "mean"
    elif replacement == "blur":
        from scipy.ndimage import gaussian_filter

        repl = torch.from_numpy(gaussian_filter(x.numpy().astype(np.float64), sigma=(0, 0, 1, 1),
                                                mode="nearest", truncate=3.0)).float()
        arg = "blur"
    elif replacement == "callable":
        repl, arg = torch.full_like(x, 7.0), (lambda t: torch.full_like(t, 7.0))
    else:
        repl = torch.tensor([0.5, -0.5]).view(1, 2, 1, 1)
        arg = repl
    r = region_perturbation(linear_img, x, attr, target=0, patch_size=2, order="morf",
                            replacement=arg, blur_sigma=1.0)
    assert r.patch_order.tolist() == [morf_order]
    assert torch.allclose(r.curves, _expected(x, repl, morf_order), atol=1e-5)


def test_blur_of_constant_image_changes_nothing():
    x = torch.full((1, 3, 8, 8), 0.3)
    r = region_perturbation(lambda t: t.flatten(1).sum(1), x, torch.randn(1, 3, 8, 8),
                            patch_size=4, replacement="blur")
    assert torch.allclose(r.drops, torch.zeros_like(r.drops), atol=1e-5)


# -- batching, targets, ties ---------------------------------------------------------------


def _conv_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(16, 5)).eval()


def test_batching_equals_per_example():
    model = _conv_model()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 3, 8, 8, generator=g)
    attr = torch.randn(3, 3, 8, 8, generator=g)
    target = [1, 4, 2]
    kw = dict(patch_size=2, steps=9, patches_per_step=1, order="morf", replacement="mean")
    ref = region_perturbation(model, x, attr, target=target, batch_size=1000, **kw)
    for bs in (1, 4, 7):
        r = region_perturbation(model, x, attr, target=target, batch_size=bs, **kw)
        assert torch.allclose(r.curves, ref.curves, atol=1e-6)
        assert torch.allclose(r.probability_curves, ref.probability_curves, atol=1e-7)
    for i in range(3):
        r = region_perturbation(model, x[i:i + 1], attr[i:i + 1], target=target[i], **kw)
        assert torch.allclose(r.curves, ref.curves[i:i + 1], atol=1e-5)
        assert torch.allclose(r.aopc, ref.aopc[i:i + 1], atol=1e-5)


def test_target_conventions_and_softmax():
    model = _conv_model()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 8, 8, generator=g)
    attr = torch.randn(2, 3, 8, 8, generator=g)
    pred = model(x).argmax(1)
    kw = dict(patch_size=4, order="lerf", batch_size=3)
    ref = region_perturbation(model, x, attr, target=pred, **kw)
    for t in (pred.tolist(), None):
        assert torch.allclose(region_perturbation(model, x, attr, target=t, **kw).curves, ref.curves)
    with torch.no_grad():
        assert torch.allclose(ref.curves[:, 0], model(x).gather(1, pred[:, None])[:, 0].double())
    soft = region_perturbation(model, x, attr, target=pred, score="softmax", **kw)
    assert torch.allclose(soft.curves, ref.probability_curves)
    assert torch.allclose(soft.aopc, ref.probability_aopc)
    # a constant target and a 1-tuple input
    r0 = region_perturbation(model, (x,), (attr,), target=0, **kw)
    with torch.no_grad():
        assert torch.allclose(r0.curves[:, 0], model(x)[:, 0].double())


def test_additional_forward_args_follow_rows():
    def f(x, scale, offset):
        return (x.flatten(1).sum(1, keepdim=True) * scale[:, None]) + offset

    x = torch.ones(3, 1, 2, 2)
    scale = torch.tensor([1.0, 2.0, 3.0])
    r = region_perturbation(f, x, torch.ones_like(x), target=0, patch_size=1, replacement="zeros",
                            additional_forward_args=(scale, 10.0), batch_size=5)
    expected = scale[:, None].double() * torch.tensor([4.0, 3, 2, 1, 0], dtype=torch.float64) + 10
    assert torch.allclose(r.curves, expected)


def test_ties_are_deterministic():
    x = _img()
    attr = torch.zeros_like(x)
    morf = region_perturbation(linear_img, x, attr, target=0, patch_size=2, order="morf")
    lerf = region_perturbation(linear_img, x, attr, target=0, patch_size=2, order="lerf")
    assert morf.patch_order.tolist() == [[0, 1, 2, 3]] == lerf.patch_order.tolist()
    assert torch.equal(morf.curves, lerf.curves)
    attr[0, 0, 0, 2] = 1.0                       # patch 1 first; the tied rest in index order
    morf = region_perturbation(linear_img, x, attr, target=0, patch_size=2, order="morf")
    assert morf.patch_order.tolist() == [[1, 0, 2, 3]]
    again = region_perturbation(linear_img, x, attr, target=0, patch_size=2, order="morf")
    assert torch.equal(morf.curves, again.curves)


def test_edge_patches_and_fraction_removed():
    x = torch.ones(1, 1, 5, 5)
    attr = torch.arange(25.0).view(1, 1, 5, 5)
    r = region_perturbation(lambda t: t.flatten(1).sum(1), x, attr, patch_size=2,
                            replacement="zeros", order="morf")
    assert r.n_patches == 9
    # patch sums of 0..24 over the 3x3 grid of 2x2 patches (edge patches are smaller):
    # [12, 20, 13, 52, 60, 33, 41, 45, 24]
    assert r.patch_order.tolist() == [[4, 3, 7, 6, 5, 8, 1, 2, 0]]
    sizes = torch.tensor([4, 4, 2, 4, 4, 2, 2, 2, 1], dtype=torch.float64)[r.patch_order[0]]
    assert torch.allclose(r.drops[0, 1:], sizes.cumsum(0))
    assert torch.allclose(r.fraction_removed[1:], sizes.cumsum(0) / 25)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        region_perturbation(linear, X, CONTRIB, target=0, order="random")
    with pytest.raises(ValueError):
        region_perturbation(linear, X, CONTRIB, target=0, score="prob")
    with pytest.raises(ValueError):
        region_perturbation(linear, X, CONTRIB, target=0, replacement="noise")
    with pytest.raises(ValueError):
        region_perturbation(linear_img, _img(), torch.zeros(1, 2, 4, 3), target=0)
    with pytest.raises(TypeError):
        region_perturbation(linear_img, (_img(), _img()), _img(), target=0)


# -- relevance distribution ----------------------------------------------------------------


def test_relevance_distribution_hand_made():
    a = torch.tensor([[3.0, -1.0, 0.0, 0.0],
                      [1.0, 1.0, 1.0, 1.0],
                      [0.0, 0.0, 0.0, -2.0],
                      [0.0, 0.0, 0.0, 0.0]])
    s = relevance_distribution(a, top_fraction=0.25)
    assert s["total"].tolist() == [2.0, 4.0, -2.0, 0.0]
    assert s["positive_mass"].tolist() == [3.0, 4.0, 0.0, 0.0]
    assert s["negative_mass"].tolist() == [1.0, 0.0, 2.0, 0.0]
    r = s["negative_to_positive"]
    assert r[0].item() == pytest.approx(1 / 3) and r[1].item() == 0.0
    assert math.isinf(r[2].item()) and math.isnan(r[3].item())
    share = s["positive_share"]
    assert share[:3].tolist() == [0.75, 1.0, 0.0] and math.isnan(share[3].item())
    assert s["positive_fraction"].tolist() == [0.25, 1.0, 0.0, 0.0]
    assert s["negative_fraction"].tolist() == [0.25, 0.0, 0.25, 0.0]
    assert s["zero_fraction"].tolist() == [0.5, 0.0, 0.75, 1.0]
    # Gini (Hurley & Rickard): |a| sorted ascending c_k, 1 - 2 Σ c_k/|c|_1 (n - k + 1/2)/n
    # row 0: [0, 0, 1, 3] -> 1 - 2 (1/4 * 1.5/4 + 3/4 * 0.5/4) = 0.625
    assert s["gini"].tolist() == pytest.approx([0.625, 0.0, 0.75, 0.0])
    assert s["top_mass"][:3].tolist() == pytest.approx([0.75, 0.25, 1.0])
    assert math.isnan(s["top_mass"][3].item())


def test_relevance_distribution_shapes_channels_and_tuples():
    a = torch.zeros(2, 3, 4, 4)
    a[0, 0, 0, 0] = 2.0
    a[0, 1, 0, 0] = -1.0
    a[1] = 0.5
    s = relevance_distribution(a)
    assert s["gini"][0].item() == pytest.approx(1 - 2 * (2 / 3 * 0.5 / 48 + 1 / 3 * 1.5 / 48))
    assert s["gini"][1].item() == pytest.approx(0.0)
    # top 10% of 48 entries = 5 entries
    assert s["top_mass"][1].item() == pytest.approx(5 / 48)
    p = relevance_distribution(a, sum_channels=True)         # pixel relevance: 2 - 1 = 1
    assert p["positive_mass"][0].item() == 1.0 and p["negative_mass"][0].item() == 0.0
    assert p["gini"][0].item() == pytest.approx(1 - 1 / 16)
    t = relevance_distribution((a[:, :1], a[:, 1:]))           # a tuple is concatenated
    for k in s:
        assert torch.allclose(t[k], s[k], equal_nan=True)
    with pytest.raises(ValueError):
        relevance_distribution(a, top_fraction=0.0)
