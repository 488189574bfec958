"""Sanity checks (captum_rap.metrics: parameter_randomization, map_similarities,
cosine_similarity_convergence, pointing_game, plot_parameter_randomization).

Every measure is compared with an independent reference (scipy's spearmanr, skimage's
structural_similarity, explicit loops); the randomisation test is checked on linear models
where the maps after each step are known in closed form, and on a model with every kind of
state a call could leave behind (it must be restored exactly)."""

from __future__ import annotations

import io
import math
from itertools import combinations

import numpy as np
import pytest
import torch
from torch import nn

from captum_rap import LRP, RAP
from captum_rap.metrics import (
    cosine_similarity_convergence,
    map_similarities,
    parameter_randomization,
    plot_parameter_randomization,
    pointing_game,
)

scipy_stats = pytest.importorskip("scipy.stats")


# ----------------------------------------------------------------------------------------
# similarity measures against independent references
# ----------------------------------------------------------------------------------------


def _maps(seed=0, n=3, shape=(2, 14, 13)):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn((n,) + shape, generator=g, dtype=torch.float64)
    b = a + 0.7 * torch.randn((n,) + shape, generator=g, dtype=torch.float64)
    a[0, :, :4] = 0.0        # ties (zeros) in both maps, of different extent
    b[0, :, :6] = 0.0
    b[1] = -a[1]             # a sign flip
    a[2, :, :, ::2] = a[2, :, :, ::2].round()  # more ties
    return a, b


def test_spearman_matches_scipy_with_ties_and_sign_flips():
    a, b = _maps()
    s = map_similarities(a, b, ["spearman", "spearman_abs"])
    A, B = a.sum(1).numpy(), b.sum(1).numpy()
    for i in range(3):
        ref = scipy_stats.spearmanr(A[i].ravel(), B[i].ravel())[0]
        ref_abs = scipy_stats.spearmanr(np.abs(A[i]).ravel(), np.abs(B[i]).ravel())[0]
        assert s["spearman"][i].item() == pytest.approx(ref, abs=1e-12)
        assert s["spearman_abs"][i].item() == pytest.approx(ref_abs, abs=1e-12)
    assert s["spearman"][1].item() == pytest.approx(-1.0, abs=1e-12)
    assert s["spearman_abs"][1].item() == pytest.approx(1.0, abs=1e-12)


def test_ssim_matches_skimage():
    metrics = pytest.importorskip("skimage.metrics")
    a, b = _maps(1)
    s = map_similarities(a, b, ["ssim"])["ssim"]
    for i in range(3):
        na = np.abs(a[i].sum(0).numpy())
        nb = np.abs(b[i].sum(0).numpy())
        ref = metrics.structural_similarity(na / na.max(), nb / nb.max(), data_range=1.0, gaussian_weights=True,
                                            sigma=1.5, use_sample_covariance=False)
        assert s[i].item() == pytest.approx(ref, abs=1e-10)
    same = map_similarities(a, 3.0 * a, ["ssim"])["ssim"]          # scale-free: normalised to the max
    assert torch.allclose(same, torch.ones(3, dtype=torch.float64), atol=1e-12)


def test_topk_matches_a_loop():
    a, b = _maps(2, shape=(1, 12, 12))
    for frac in (0.05, 0.1, 0.5, 1.0):
        s = map_similarities(a, b, ["topk"], top_k=frac)["topk"]
        for i in range(3):
            fa, fb = a[i].abs().flatten().tolist(), b[i].abs().flatten().tolist()
            k = math.ceil(frac * len(fa))
            top_a = sorted(range(len(fa)), key=lambda j: (-fa[j], j))[:k]
            top_b = set(sorted(range(len(fb)), key=lambda j: (-fb[j], j))[:k])
            assert s[i].item() == pytest.approx(sum(j in top_b for j in top_a) / k)


def test_similarity_edge_cases():
    a, _ = _maps()
    s = map_similarities(a, a)
    for v in s.values():
        assert torch.allclose(v, torch.ones(3, dtype=torch.float64))
    const = torch.ones_like(a)
    assert torch.isnan(map_similarities(a, const, ["spearman"])["spearman"]).all()
    bad = a.clone()
    bad[1, 0, 0, 0] = float("nan")
    s = map_similarities(a, bad)
    assert all(torch.isnan(v[1]) and not torch.isnan(v[0]) for v in s.values())
    with pytest.raises(ValueError, match="unknown similarity"):
        map_similarities(a, a, ["pearson"])
    with pytest.raises(ValueError, match="2-D"):
        map_similarities(a.flatten(1), a.flatten(1), ["ssim"])
    assert set(map_similarities(a.flatten(1), a.flatten(1))) == {"spearman", "spearman_abs", "topk"}
    assert set(map_similarities(a[:, :, :8], a[:, :, :8])) == {"spearman", "spearman_abs", "topk"}
    with pytest.raises(ValueError, match="differ"):
        map_similarities(a, a[:, :, :5])
    with pytest.raises(ValueError, match="top_k"):
        map_similarities(a, a, top_k=0)
    with pytest.raises(ValueError, match="11 x 11"):
        map_similarities(a[:, :, :8, :8], a[:, :, :8, :8], ["ssim"])


# ----------------------------------------------------------------------------------------
# the randomisation test where the answer is known
# ----------------------------------------------------------------------------------------


def _gradient_map(model, x, target):
    """A method whose map is the gradient of the target logit (Saliency without abs)."""
    x = x.detach().clone().requires_grad_(True)
    out = model(x)
    sel = out.gather(1, target.view(-1, 1)).sum()
    (g,) = torch.autograd.grad(sel, x)
    return g


class Recorder:
    """``init`` callable: draws new weights from the generator, records them."""

    def __init__(self):
        self.values = {}
        self.seeds = []

    def __call__(self, module, gen):
        self.seeds.append(gen.initial_seed())
        for name, p in module.named_parameters(recurse=False):
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
            self.values[(id(module), name)] = p.detach().clone()


def _linear2(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 12 * 12, 16), nn.Linear(16, 5)).double().eval()


def test_linear_model_maps_follow_the_weights_cascading_and_independent():
    model = _linear2()
    x = torch.randn(4, 3, 12, 12, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 4])
    W1, W2 = model[1].weight.detach().clone(), model[2].weight.detach().clone()

    def method(m):
        return lambda inp, t: _gradient_map(m, inp, t)

    for mode in ("cascading", "independent"):
        rec = Recorder()
        res = parameter_randomization(model, method, x, target=target, init=rec, mode=mode, return_maps=True)
        assert res.labels == ["2", "1"]                              # top first (reverse call order)
        R1, R2 = rec.values[(id(model[1]), "weight")], rec.values[(id(model[2]), "weight")]
        # the gradient of a linear model: W2[t] @ W1 (per example), reshaped like x
        expect_orig = (W2[target] @ W1).view_as(x)
        expect_1 = (R2[target] @ W1).view_as(x)                      # head randomised
        expect_2 = ((R2 if mode == "cascading" else W2)[target] @ R1).view_as(x)
        assert torch.allclose(res.original, expect_orig, atol=1e-12)
        assert torch.allclose(res.randomized[0], expect_1, atol=1e-12)
        assert torch.allclose(res.randomized[1], expect_2, atol=1e-12)
        for step, exp in enumerate((expect_1, expect_2)):
            for i in range(4):
                a, b = expect_orig[i].sum(0).flatten().numpy(), exp[i].sum(0).flatten().numpy()
                assert res.similarity["spearman"][step, i].item() == pytest.approx(
                    scipy_stats.spearmanr(a, b)[0], abs=1e-10)
                assert res.similarity["spearman_abs"][step, i].item() == pytest.approx(
                    scipy_stats.spearmanr(np.abs(a), np.abs(b))[0], abs=1e-10)
        # the model is back; each module had its own seed
        assert torch.equal(model[1].weight, W1) and torch.equal(model[2].weight, W2)
        assert len(set(rec.seeds)) == 2


def test_reset_init_is_per_module_and_the_same_in_both_modes():
    """Default init: each module's reset_parameters with its own seed; the maps of the
    first cascading step equal the independent ones of that layer."""
    model = _linear2(1)
    x = torch.randn(3, 3, 12, 12, dtype=torch.float64)

    def method(m):
        return lambda inp, t: _gradient_map(m, inp, t)

    cas = parameter_randomization(model, method, x, mode="cascading", return_maps=True, seed=3)
    ind = parameter_randomization(model, method, x, mode="independent", return_maps=True, seed=3)
    assert torch.equal(cas.randomized[0], ind.randomized[0])
    assert not torch.equal(cas.randomized[1], ind.randomized[1])
    again = parameter_randomization(model, method, x, mode="cascading", return_maps=True, seed=3)
    assert torch.equal(again.randomized[1], cas.randomized[1])
    other = parameter_randomization(model, method, x, mode="cascading", return_maps=True, seed=4)
    assert not torch.equal(other.randomized[0], cas.randomized[0])
    # targets are fixed to the original prediction
    with torch.no_grad():
        assert torch.equal(cas.target, model(x).argmax(1))
    assert (cas.output_change > 0).all()


def test_a_method_that_ignores_the_weights_scores_one():
    model = _linear2(2)
    x = torch.randn(3, 3, 12, 12, dtype=torch.float64)
    for init in ("reset", "normal"):
        res = parameter_randomization(model, lambda m: (lambda inp, t: inp * 1.0), x, init=init)
        for name, v in res.similarity.items():
            assert torch.allclose(v, torch.ones_like(v), rtol=0, atol=1e-12), name
    # a method with the weights scores less than 1
    res = parameter_randomization(model, lambda m: (lambda inp, t: _gradient_map(m, inp, t)), x)
    assert (res.similarity["spearman_abs"] < 0.5).all()


def test_captum_attribution_factories_groups_and_chunks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)).double().eval()
    x = torch.randn(5, 3, 12, 12, dtype=torch.float64)
    full = parameter_randomization(model, lambda m: LRP(m, "epsilon"), x, layers=["6", ["2", "0"]],
                                   labels=["head", "convs"], return_maps=True)
    assert full.labels == ["head", "convs"] and full.modules == [["6"], ["2", "0"]]
    chunked = parameter_randomization(model, lambda m: LRP(m, "epsilon"), x, layers=[model[6], [model[2], "0"]],
                                      batch_size=2, return_maps=True)
    assert chunked.labels == ["6", "2+0"]
    for a, b in zip(full.randomized, chunked.randomized):
        assert torch.allclose(a, b, atol=1e-10)
    # a module name covers its submodules with parameters
    wrapped = nn.Sequential(model)
    res = parameter_randomization(wrapped, lambda m: LRP(m, "epsilon"), x, layers=["0"])
    assert res.modules == [["0.0", "0.2", "0.6"]]


def test_invalid_arguments():
    model = _linear2()
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)

    def f(m):
        return lambda inp, t: inp

    with pytest.raises(ValueError, match="no submodule 'nope'"):
        parameter_randomization(model, f, x, layers=["nope"])
    with pytest.raises(ValueError, match="no parameters"):
        parameter_randomization(model, f, x, layers=["0"])
    with pytest.raises(ValueError, match="mode"):
        parameter_randomization(model, f, x, mode="bottom_up")
    with pytest.raises(ValueError, match="init"):
        parameter_randomization(model, f, x, init="uniform")
    with pytest.raises(ValueError, match="labels"):
        parameter_randomization(model, f, x, labels=["a"])
    with pytest.raises(TypeError, match="list of steps"):
        parameter_randomization(model, f, x, layers="1")
    with pytest.raises(TypeError, match="Attribution"):
        parameter_randomization(model, lambda m: 3, x)
    with pytest.raises(ValueError, match="target list"):
        parameter_randomization(model, f, x, target=[1, 2, 3])
    with pytest.raises(TypeError, match="unexpected keyword"):
        parameter_randomization(model, f, x, layer_order="top_down")
    with pytest.warns(RuntimeWarning, match="changed none"):
        bn = nn.Sequential(nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2 * 10 * 10, 3)).eval()
        parameter_randomization(bn, f, torch.randn(2, 3, 12, 12), layers=["1"])   # untrained BN: reset = same


# ----------------------------------------------------------------------------------------
# the model is restored exactly
# ----------------------------------------------------------------------------------------


class _Stateful(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU(inplace=True)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = self.act(self.bn(self.conv(x)))
        h = self.block(h) + h
        return self.fc(h.mean((2, 3)))


def _state(model):
    return {
        "params": {k: (v, v.detach().clone(), v.requires_grad) for k, v in model.named_parameters()},
        "buffers": {k: (v, v.detach().clone()) for k, v in model.named_buffers()},
        "modes": [m.training for m in model.modules()],
        "hooks": [(dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks))
                  for m in model.modules()],
        "dicts": [set(m.__dict__) for m in model.modules()],
        "grad": model.fc.weight.grad,
        "grad_value": model.fc.weight.grad.clone(),
        "inplace": model.act.inplace,
        "rule": model.block[0].rule,
    }


def _assert_same(model, s):
    for k, v in model.named_parameters():
        obj, val, req = s["params"][k]
        assert v is obj and torch.equal(v.detach(), val) and v.requires_grad == req, k
    for k, v in model.named_buffers():
        obj, val = s["buffers"][k]
        assert v is obj and torch.equal(v, val), k
    assert [m.training for m in model.modules()] == s["modes"]
    hooks = [(dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks)) for m in model.modules()]
    assert len(hooks) == len(s["hooks"])
    for h, h0 in zip(hooks, s["hooks"]):
        for d, d0 in zip(h, h0):
            assert list(d) == list(d0) and all(d[k] is d0[k] for k in d)
    assert [set(m.__dict__) for m in model.modules()] == s["dicts"]
    assert model.fc.weight.grad is s["grad"] and torch.equal(model.fc.weight.grad, s["grad_value"])
    assert model.act.inplace is s["inplace"] and model.block[0].rule is s["rule"]


def _stateful():
    torch.manual_seed(0)
    model = _Stateful()
    for bn in (model.bn, model.block[1]):     # "trained" batch norms (reset changes them)
        for t in (bn.weight, bn.bias, bn.running_mean):
            nn.init.normal_(t)
        bn.running_var.uniform_(0.5, 2.0)
    model.eval()
    model.block.train()                       # mixed modes: BN of the block updates its statistics
    model.block[0].rule = object()            # a user attribute the call must not touch
    model.conv.bias.requires_grad_(False)
    model.fc.weight.grad = torch.randn_like(model.fc.weight)
    calls = []
    model.fc.register_forward_hook(lambda m, i, o: calls.append(1))
    model.bn.register_forward_pre_hook(lambda m, i: None)
    return model, calls


@pytest.mark.parametrize("mode, init, train_block", [
    ("cascading", "reset", True), ("independent", "reset", True), ("cascading", "normal", True),
    ("independent", "normal", True), ("cascading", "reset", False)])
def test_model_restored_exactly(mode, init, train_block):
    model, calls = _stateful()
    if not train_block:
        model.eval()
    s = _state(model)
    x = torch.randn(2, 3, 8, 8)
    rng = torch.get_rng_state()
    if train_block:     # the block's batch norm updates its running statistics in every forward
        def factory(m):
            return lambda inp, t: _gradient_map(m, inp, t)
    else:
        def factory(m):
            return RAP(m)
    res = parameter_randomization(model, factory, x, mode=mode, init=init, similarities=["spearman"])
    assert res.labels == ["fc", "block.1", "block.0", "bn", "conv"]      # every owner, top first
    _assert_same(model, s)
    assert torch.equal(torch.get_rng_state(), rng)
    n = len(calls)
    with torch.no_grad():
        model(x)
    assert len(calls) == n + 1                        # the user's hook still runs


def test_model_restored_after_an_error_and_leaked_state():
    model, _ = _stateful()
    s = _state(model)
    count = []

    def factory(m):
        count.append(1)
        m.fc.register_forward_hook(lambda *a: None)          # a method that leaks a hook ...
        m.train()                                            # ... and switches the mode ...
        m.leftover = 1                                       # ... and leaves an attribute
        m.fc.weight = nn.Parameter(torch.zeros_like(m.fc.weight))   # ... and swaps a parameter
        if len(count) == 3:
            raise RuntimeError("boom")
        return lambda inp, t: inp

    with pytest.raises(RuntimeError, match="boom"):
        parameter_randomization(model, factory, torch.randn(2, 3, 8, 8))
    _assert_same(model, s)
    assert not hasattr(model, "leftover")


# ----------------------------------------------------------------------------------------
# cosine similarity convergence
# ----------------------------------------------------------------------------------------


class _LinearMapMethod:
    """A stand-in attribution: relevance = seed @ M (what any rule linear in the seed does
    for a fixed input); records the seeds it was given."""

    def __init__(self, model, M):
        self.forward_func = model
        self.M = M
        self.seeds = []
        self.targets = []

    def attribute(self, inputs, target=None, output_relevance=None):
        if output_relevance is None:
            output_relevance = torch.nn.functional.one_hot(target, self.M.shape[0]).double()
            self.targets.append(target)
        self.seeds.append(output_relevance)
        return (output_relevance.double() @ self.M).view(inputs.shape[0], 1, 4, 4)


def test_csc_pairs_match_a_loop():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 6)).double()
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    M = torch.randn(6, 16, dtype=torch.float64)
    for seeds in ("normal", "classes"):
        meth = _LinearMapMethod(model, M)
        res = cosine_similarity_convergence(meth, x, n_vectors=4, seeds=seeds, seed=1)
        r = (meth.seeds[0] @ M).view(3, 4, 16)
        assert res.cosine["input"].shape == (3, 6)
        for i in range(3):
            ref = [abs(float(torch.dot(r[i, a], r[i, b]) / (r[i, a].norm() * r[i, b].norm())))
                   for a, b in combinations(range(4), 2)]
            assert res.cosine["input"][i].tolist() == pytest.approx(ref, abs=1e-12)
        if seeds == "classes":
            t = meth.targets[0].view(3, 4)
            assert all(len(set(row.tolist())) == 4 for row in t)
    # a rank-one propagation: every starting relevance gives the same direction
    rank1 = torch.randn(6, 1, dtype=torch.float64) @ torch.randn(1, 16, dtype=torch.float64)
    res = cosine_similarity_convergence(_LinearMapMethod(model, rank1), x, n_vectors=3)
    assert torch.allclose(res.cosine["input"], torch.ones(3, 3, dtype=torch.float64), atol=1e-12)
    assert res.median() == pytest.approx(1.0)


def test_csc_with_lrp_on_a_linear_layer_is_the_seed_geometry():
    """LRP-epsilon on one linear layer with x = 1 and W = I: the input relevance is the
    seed itself, so the CSC is the |cos| of the random seeds (independent of the method)."""
    lin = nn.Linear(8, 8, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(torch.eye(8, dtype=torch.float64))
    model = nn.Sequential(nn.Flatten(), lin).eval()
    x = torch.ones(2, 1, 2, 4, dtype=torch.float64)
    seen = []
    lrp = LRP(model, "epsilon", epsilon=1e-12)
    orig = lrp.attribute

    def spy(inputs, target=None, output_relevance=None, **kw):
        seen.append(output_relevance)
        return orig(inputs, target=target, output_relevance=output_relevance, **kw)

    lrp.attribute = spy
    res = cosine_similarity_convergence(lrp, x, n_vectors=3, layers=["1"])
    r = seen[0].view(2, 3, 8)
    for i in range(2):
        ref = [abs(float(torch.dot(r[i, a], r[i, b]) / (r[i, a].norm() * r[i, b].norm())))
               for a, b in combinations(range(3), 2)]
        assert res.cosine["input"][i].tolist() == pytest.approx(ref, abs=1e-9)
        assert res.cosine["1"][i].tolist() == pytest.approx(ref, abs=1e-9)


def test_csc_real_methods_and_errors():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5)).eval()
    x = torch.randn(2, 3, 8, 8)
    res = cosine_similarity_convergence(LRP(model, "zplus"), x, layers=["2", "0"])
    assert res.locations == ["input", "2", "0"]
    for v in res.cosine.values():
        assert v.shape == (2, 10) and ((v >= 0) & (v <= 1 + 1e-9)).all()
    res = cosine_similarity_convergence(RAP(model), x, layers=["2"], seeds="classes", n_vectors=3)
    assert res.cosine["2"].shape == (2, 3)
    with pytest.raises(ValueError, match="output_relevance"):
        cosine_similarity_convergence(RAP(model), x)
    with pytest.raises(ValueError, match="seeds"):
        cosine_similarity_convergence(LRP(model), x, seeds="uniform")
    with pytest.raises(ValueError, match="n_vectors"):
        cosine_similarity_convergence(LRP(model), x, n_vectors=1)
    with pytest.raises(ValueError, match="distinct classes"):
        cosine_similarity_convergence(RAP(model), x, n_vectors=6, seeds="classes")
    with pytest.raises(ValueError, match="no submodule"):
        cosine_similarity_convergence(LRP(model), x, layers=["9"])
    from captum.attr import Saliency

    with pytest.raises(ValueError, match="LRP and RAP only"):
        cosine_similarity_convergence(Saliency(model), x, layers=["2"], seeds="classes")


# ----------------------------------------------------------------------------------------
# pointing game and the figure
# ----------------------------------------------------------------------------------------


def test_pointing_game_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 3, 6, 8, generator=g, dtype=torch.float64)
    masks = torch.zeros(4, 1, 6, 8, dtype=torch.bool)
    masks[:2, :, :, :4] = True
    masks[2:, :, 2:5, 1:6] = True
    res = pointing_game(a, masks)
    for i in range(4):
        m = a[i].sum(0)
        pos_in = sum(max(float(m[r, c]), 0.0) for r in range(6) for c in range(8) if masks[i, 0, r, c])
        pos_all = sum(max(float(v), 0.0) for v in m.flatten())
        assert res["mass"][i].item() == pytest.approx(pos_in / pos_all)
        best_in = max(float(m[r, c]) for r in range(6) for c in range(8) if masks[i, 0, r, c])
        best_out = max(float(m[r, c]) for r in range(6) for c in range(8) if not masks[i, 0, r, c])
        assert res["hit"][i].item() == (1.0 if best_in > best_out else 0.0)
    shared = pointing_game(a, masks[0, 0])                              # one mask for all examples
    assert torch.equal(shared["mass"][:2], res["mass"][:2])
    flat = pointing_game(torch.ones(2, 1, 4, 4), torch.ones(4, 4).tril().bool())
    assert torch.equal(flat["hit"], torch.full((2,), 0.5, dtype=torch.float64))
    assert torch.isnan(pointing_game(-torch.ones(1, 1, 4, 4), masks[2, 0, :4, :4])["mass"]).all()
    with pytest.raises(ValueError, match="some but not all"):
        pointing_game(a, torch.ones(6, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="do not match"):
        pointing_game(a, torch.ones(5, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="0/1"):
        pointing_game(a, torch.full((6, 8), 0.5))


def test_plot_parameter_randomization():
    model = _linear2()
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    results = {
        "gradient": parameter_randomization(model, lambda m: (lambda i, t: _gradient_map(m, i, t)), x,
                                            return_maps=True),
        "input": parameter_randomization(model, lambda m: (lambda i, t: i * 1.0), x, return_maps=True),
    }
    fig = plot_parameter_randomization(results, example=1, image=x[1])
    assert len(fig.axes) == 2 * 4
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="return_maps"):
        plot_parameter_randomization({"a": parameter_randomization(model, lambda m: (lambda i, t: i), x)})
