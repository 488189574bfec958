"""Quantus interoperability: captum_rap.quantus.explain_func runs every method through
Quantus' metrics, and our region_perturbation agrees with Quantus' RegionPerturbation.

Conventions compared (Quantus 0.6, ``RegionPerturbation``):
* Quantus returns ``f(x) - f(x^(k))`` for k = 1..L (one patch per step); ours is
  ``drops[:, 1:]`` with ``patches_per_step=1`` (column 0 is the unperturbed input).
* ``perturb_baseline=0.0`` is our ``replacement="zeros"``; ``"black"`` (the minimum over
  all channels and positions, the same at every step) is the tensor of per-example minima.
  Quantus' ``"mean"`` is the mean over all channels of the *current, already perturbed*
  image, recomputed at every step; ours is the per-channel mean of the original image, so
  those curves differ by design.
* ``softmax=False`` gives logits (``score="logit"``); ``softmax=True`` the probabilities
  (our ``probability_curves``).  Quantus' patches need no padding when the patch size
  divides the image (used here); its arg-sort is not stable, so ties would be ordered
  differently (the attributions here have none).
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from torch import nn

quantus = pytest.importorskip("quantus")

from captum_rap import CD, CLRP, LRP, RAP, SGLRP  # noqa: E402
from captum_rap.metrics import parameter_randomization, region_perturbation  # noqa: E402
from captum_rap.quantus import METHOD_NAMES, explain_func  # noqa: E402

# every CLI name (acd excluded: no per-feature map) plus explicit presets
METHODS = [m for m in METHOD_NAMES] + ["lrp:epsilon_plus", "lrp:zplus_box"]
CD_KW = {"block": 4, "local": False, "check_precision": False, "check_batching": False}


class _PositiveHead(nn.Linear):
    """A classifier whose (re-)initialisation draws non-negative weights: with ReLU features
    the target logit stays positive when Quantus' MPRT re-initialises it, so the signed maps
    (e.g. CD's block scores) are not all negative, which Quantus refuses (it asserts
    'Attributions should not all be less than zero')."""

    def reset_parameters(self):
        nn.init.uniform_(self.weight, 0.0, 1.0 / math.sqrt(self.in_features))


def _model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          _PositiveHead(6, 5, bias=False))
    with torch.no_grad():
        bn = model[1]
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _data(n=4, size=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    return x


def _kw(method):
    return dict(method=method, **(CD_KW if method == "cd" else {}))


def test_explain_func_matches_the_methods():
    model = _model()
    x = _data()
    y = np.array([0, 1, 2, 4])
    t = torch.as_tensor(y)
    direct = {
        "rap": RAP(model).attribute(x, target=t),
        "lrp": LRP(model, "epsilon_gamma_box").attribute(x, target=t),        # the CLI's default preset
        "lrp:epsilon_plus": LRP(model, "epsilon_plus").attribute(x, target=t),
        "lrp:zplus_box": LRP(model, "zplus_box").attribute(x, target=t),
        "clrp1": CLRP(model).attribute(x, target=t),
        "clrp2": CLRP(model, variant=2).attribute(x, target=t),
        "sglrp": SGLRP(model).attribute(x, target=t),
    }
    rows = torch.arange(16) // 4
    blocks = (rows.view(-1, 1) * 4 + rows.view(1, -1)).view(1, 1, 16, 16)
    direct["cd"] = CD(model, local=False, check_precision=False, check_batching=False).attribute(
        x, target=t, feature_mask=blocks)
    for name in METHODS:
        a = explain_func(model, x.numpy(), y, **_kw(name))
        assert isinstance(a, np.ndarray) and a.shape == (4, 1, 16, 16), name
        ref = direct[name].sum(1, keepdim=True).numpy()
        np.testing.assert_allclose(a, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max(), err_msg=name)
    # unreduced, tensors in, one target for all, keyword overrides reach the method
    full = explain_func(model, x, 3, method="lrp:epsilon", reduce_axes=(), epsilon=0.5)
    np.testing.assert_allclose(full, LRP(model, "epsilon", epsilon=0.5).attribute(x, target=3).numpy(), rtol=1e-5,
                               atol=1e-7)
    feat = explain_func(model, x.numpy(), y, method="cd", feature_mask=blocks.numpy(), local=False,
                        check_precision=False, check_batching=False)
    np.testing.assert_allclose(feat, direct["cd"].sum(1, keepdim=True).numpy(), rtol=1e-5, atol=1e-6)


def test_explain_func_rejects_bad_arguments():
    model = _model()
    x = _data(2).numpy()
    y = np.array([0, 1])
    with pytest.raises(ValueError, match="give the method"):
        explain_func(model, x, y)
    with pytest.raises(ValueError, match="unknown method"):
        explain_func(model, x, y, method="deeplift")
    with pytest.raises(ValueError, match="unknown LRP preset"):
        explain_func(model, x, y, method="lrp:nope")
    with pytest.raises(ValueError, match="hierarchy"):
        explain_func(model, x, y, method="acd")
    with pytest.raises(TypeError, match="stabiliser"):
        explain_func(model, x, y, method="rap", stabiliser=1e-6)
    with pytest.raises(TypeError, match="gamma"):
        explain_func(model, x, y, method="lrp:epsilon", gamma=0.5)      # epsilon takes no gamma
    with pytest.raises(TypeError, match="variant"):
        explain_func(model, x, y, method="clrp1", variant=2)
    with pytest.raises(TypeError, match="'cd' only"):
        explain_func(model, x, y, method="rap", block=4)
    with pytest.raises(ValueError, match="feature_mask= .* or block="):
        explain_func(model, x, y, method="cd")
    with pytest.raises(ValueError, match="3 targets"):
        explain_func(model, x, np.array([0, 1, 2]), method="rap")
    with pytest.raises(ValueError, match="batch axis"):
        explain_func(model, x, y, method="rap", reduce_axes=(0,))
    with pytest.raises(ValueError, match="integer group ids"):
        explain_func(model, x, y, method="cd", feature_mask=np.full((1, 1, 16, 16), 0.5))


@pytest.mark.parametrize("method", METHODS)
def test_quantus_metrics_run_through_the_adapter(method):
    model = _model()
    x = _data(4).numpy()
    with torch.no_grad():
        y = model(torch.as_tensor(x)).argmax(1).numpy()
    kw = _kw(method)
    t0 = time.perf_counter()
    rp = quantus.RegionPerturbation(patch_size=4, regions_evaluation=6, disable_warnings=True)(
        model=model, x_batch=x, y_batch=y, explain_func=explain_func, explain_func_kwargs=kw, device="cpu")
    assert np.asarray(rp).shape == (4, 6) and np.isfinite(rp).all()
    fc = quantus.FaithfulnessCorrelation(nr_runs=8, subset_size=32, return_aggregate=False, disable_warnings=True)(
        model=model, x_batch=x, y_batch=y, explain_func=explain_func, explain_func_kwargs=kw, device="cpu")
    assert len(fc) == 4 and np.isfinite(fc).all()
    mprt = quantus.MPRT(disable_warnings=True)(
        model=model, x_batch=x, y_batch=y, explain_func=explain_func, explain_func_kwargs=kw, device="cpu")
    assert list(mprt) == ["original", "8", "4", "1", "0"]       # top-down over the 4 layers with parameters
    assert all(len(v) == 4 for v in mprt.values())
    np.testing.assert_allclose(mprt["original"], 1.0, atol=1e-6)  # the method is deterministic
    rl = quantus.RandomLogit(num_classes=5, disable_warnings=True)(
        model=model, x_batch=x, y_batch=y, explain_func=explain_func, explain_func_kwargs=kw, device="cpu")
    assert len(rl) == 4 and np.isfinite(rl).all()
    sp = quantus.Sparseness(disable_warnings=True)(
        model=model, x_batch=x, y_batch=y, explain_func=explain_func, explain_func_kwargs=kw, device="cpu")
    assert len(sp) == 4 and np.isfinite(sp).all() and ((np.asarray(sp) >= 0) & (np.asarray(sp) <= 1)).all()
    assert time.perf_counter() - t0 < 300      # a hang guard, not a speed test


# ----------------------------------------------------------------------------------------
# region perturbation against Quantus' RegionPerturbation
# ----------------------------------------------------------------------------------------

# Measured on torch 2.14.1 CPU: max |difference| 1.9e-8 for logit curves of size <= 0.7 (Quantus
# subtracts the float32 scores in float32, we in float64: one float32 rounding), 0 for the
# probability curves.  The same perturbed images go through the model in different batch
# compositions (Quantus: one batch per step; ours: chunks of 7 rows), which other builds or
# kernels may round differently at the 1e-7 level; 1e-6 (absolute, scores of size ~1) leaves
# room for that and is still 1e-5 of the curves' range.
RP_TOL = 1e-6


def _rp_case():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 8 * 8, 6)).eval()
    x = _data(5, 16, seed=4)
    g = torch.Generator().manual_seed(5)
    attr = torch.randn(5, 1, 16, 16, generator=g)      # continuous: no ties between patch sums
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, attr, y


@pytest.mark.parametrize("order", ["morf", "lerf"])
@pytest.mark.parametrize("baseline", [0.0, "black"])
def test_region_perturbation_agrees_with_quantus(order, baseline):
    model, x, attr, y = _rp_case()
    ours = region_perturbation(model, x, attr, target=y, patch_size=4, order=order, batch_size=7,
                               replacement="zeros" if baseline == 0.0 else x.amin(dim=(1, 2, 3), keepdim=True))
    for softmax in (False, True):
        metric = quantus.RegionPerturbation(patch_size=4, order=order, regions_evaluation=16, normalise=False,
                                            perturb_baseline=baseline, disable_warnings=True)
        theirs = np.asarray(metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=attr.numpy(),
                                   softmax=softmax, device="cpu"), dtype=np.float64)
        curves = ours.probability_curves if softmax else ours.curves
        mine = (curves[:, :1] - curves[:, 1:]).numpy()
        assert theirs.shape == mine.shape == (5, 16)
        assert np.abs(theirs - mine).max() < RP_TOL, np.abs(theirs - mine).max()
        # and the comparison is not vacuous: the curves move
        assert np.abs(mine).max() > 100 * RP_TOL


def test_region_perturbation_quantus_mean_baseline_is_a_different_convention():
    model, x, attr, y = _rp_case()
    ours = region_perturbation(model, x, attr, target=y, patch_size=4, replacement="mean")
    theirs = np.asarray(quantus.RegionPerturbation(patch_size=4, regions_evaluation=16, normalise=False,
                                                   perturb_baseline="mean", disable_warnings=True)(
        model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=attr.numpy(), softmax=False, device="cpu"))
    mine = (ours.curves[:, :1] - ours.curves[:, 1:]).numpy()
    assert np.abs(theirs - mine).max() > 100 * RP_TOL        # per-channel mean of x vs global running mean


# ----------------------------------------------------------------------------------------
# our parameter_randomization against Quantus' MPRT
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["rap", "lrp:epsilon_plus"])
def test_parameter_randomization_agrees_with_quantus_mprt(method):
    """With Quantus' randomisation (``torch.manual_seed(seed + 1)`` then each module's
    ``reset_parameters()``, top-down, cumulative) our cascading test gives Quantus' MPRT
    Spearman correlations of the absolute maps, layer by layer."""
    model = _model()
    x = _data(4)
    with torch.no_grad():
        y = model(x).argmax(1)
    mprt = quantus.MPRT(layer_order="top_down", seed=42, disable_warnings=True)(
        model=model, x_batch=x.numpy(), y_batch=y.numpy(), explain_func=explain_func,
        explain_func_kwargs={"method": method}, device="cpu")

    def quantus_init(module, generator):
        torch.manual_seed(43)
        module.reset_parameters()

    def factory(m):
        return lambda inp, t: torch.as_tensor(explain_func(m, inp.numpy(), t.numpy(), method=method))

    ours = parameter_randomization(model, factory, x, target=y, init=quantus_init, similarities=["spearman_abs"])
    assert ours.labels == [k for k in mprt if k != "original"]
    # the same maps give the same ranks (measured: equal to 2e-16); 1e-5 would still allow a
    # few adjacent ranks swapped by one-ulp differences (7e-7 each on 256 pixels), while a wrong
    # layer order or randomisation moves these correlations by 1e-2 or more
    for i, layer in enumerate(ours.labels):
        np.testing.assert_allclose(ours.similarity["spearman_abs"][i].numpy(), mprt[layer], atol=1e-5,
                                   err_msg=layer)
    assert np.ptp(np.concatenate([mprt[k] for k in ours.labels])) > 0.05    # the layers do differ
