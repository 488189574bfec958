"""captum_rap.LRP inside Captum's tooling: metrics, NoiseTunnel, visualization, target
conventions, tuple inputs, LayerLRP."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from torch import nn

from captum.attr import NoiseTunnel
from captum.metrics import infidelity, sensitivity_max

from captum_rap import LRP, LayerLRP

DT = torch.float64


def small_cnn(bias=True, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(32, 5),
    ).to(DT)
    with torch.no_grad():
        model[1].running_var.uniform_(0.5, 2.0)
        model[1].weight.uniform_(0.5, 1.5)
        if bias:
            model[1].running_mean.normal_(0, 0.2)
        else:
            for m in model:
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()
    return model.eval()


def image_batch(n=3, seed=1):
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=DT)


class TwoInputNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(4, 6, bias=False)
        self.b = nn.Linear(3, 6, bias=False)
        self.out = nn.Linear(6, 3, bias=False)

    def forward(self, x1, x2, scale=1.0):
        return self.out(torch.relu(self.a(x1) + self.b(x2))) * scale


# ----------------------------------------------------------------------------------------


def test_infidelity_runs_and_is_small_for_linear_model():
    """On a bias-free linear model LRP-0 gives x * w exactly, whose infidelity is ~0."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 3, bias=False)).to(DT).eval()
    x = torch.randn(4, 6, dtype=DT)
    lrp = LRP(model, epsilon=0.0)
    attr = lrp.attribute(x, target=1)
    assert torch.allclose(attr, x * model[0].weight[1], atol=1e-14)

    def perturb(inputs):
        # relative perturbation (LRP multiplies by the input): I_i = s_i, x' = x - s * x,
        # so I^T attr = sum s_i x_i w_i = f(x) - f(x') exactly for a linear model
        s = torch.randn_like(inputs) * 0.1
        return s, inputs - s * inputs

    inf = infidelity(model, perturb, x, attr, target=1, n_perturb_samples=8)
    assert inf.shape == (4,)
    assert float(inf.abs().max()) < 1e-24
    # on a CNN it runs and is finite
    cnn = small_cnn()
    xi = image_batch()
    attr = LRP(cnn).attribute(xi, target=2)
    inf = infidelity(cnn, perturb, xi, attr, target=2, n_perturb_samples=4)
    assert inf.shape == (3,) and torch.isfinite(inf).all()


def test_sensitivity_max_calls_attribute_under_no_grad():
    cnn = small_cnn()
    x = image_batch()
    lrp = LRP(cnn, "epsilon_plus")
    with torch.no_grad():
        direct = lrp.attribute(x, target=1)  # enable_grad inside attribute
    assert torch.equal(direct, lrp.attribute(x, target=1))
    sens = sensitivity_max(lrp.attribute, x, target=1, n_perturb_samples=3, perturb_radius=1e-3)
    assert sens.shape == (3,) and torch.isfinite(sens).all() and float(sens.max()) > 0


@pytest.mark.parametrize("with_delta", [False, True])
def test_noise_tunnel_smoothgrad(with_delta):
    cnn = small_cnn(bias=False)
    x = image_batch()
    lrp = LRP(cnn, epsilon=1e-12)
    nt = NoiseTunnel(lrp)
    seen = []  # the noisy inputs NoiseTunnel hands to the model (kept as given: no torch op here)
    handle = cnn.register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    torch.manual_seed(5)
    try:
        out = nt.attribute(x, nt_type="smoothgrad", nt_samples=4, stdevs=0.1, target=[0, 1, 2],
                           return_convergence_delta=with_delta)
    finally:
        handle.remove()
    if with_delta:
        attr, delta = out
        assert delta.shape == (3 * 4,)
        assert float(delta.abs().max()) < 1e-9  # bias-free: every noisy sample is conservative
    else:
        attr = out
    assert attr.shape == x.shape and torch.isfinite(attr).all()
    # zero noise: smoothgrad is the mean of 4 identical maps = the plain map
    flat = nt.attribute(x, nt_type="smoothgrad", nt_samples=4, stdevs=0.0, target=[0, 1, 2])
    assert torch.allclose(flat, lrp.attribute(x, target=[0, 1, 2]), rtol=0, atol=1e-12)
    # with noise the map differs from the plain one but keeps its total (bias-free model):
    # each example's map sums to the mean of its target logit over its 4 noisy copies
    assert not torch.allclose(attr, flat)
    noisy = torch.cat(seen).detach()
    assert noisy.shape == (3 * 4,) + x.shape[1:] and not torch.allclose(noisy[:3], x)
    with torch.no_grad():
        logits = cnn(noisy)
    rows = torch.arange(12)
    # Captum repeats the batch sample-major (example n, sample s at row n * 4 + s)
    want = logits[rows, torch.tensor([0, 1, 2]).repeat_interleave(4)].view(3, 4).mean(1)
    assert torch.allclose(attr.reshape(3, -1).sum(1), want, rtol=0, atol=1e-9)


def test_visualize_image_attr():
    from captum.attr import visualization as viz

    cnn = small_cnn()
    x = image_batch(1)
    attr = LRP(cnn, "epsilon_gamma_box").attribute(x, target=3)
    img = x[0].permute(1, 2, 0).numpy()
    a = attr[0].permute(1, 2, 0).numpy()
    shown = (img - img.min()) / (img.max() - img.min())
    # what the figure must show, computed here: the channel sum of the map divided by the
    # value where the cumulative sum of its sorted |values| reaches 98% of their total
    # (Captum's documented outlier_perc=2 threshold), clipped to [-1, 1]
    import numpy as np

    for method, sign in [("heat_map", "all"), ("blended_heat_map", "absolute_value"), ("original_image", "all")]:
        fig, ax = viz.visualize_image_attr(a, shown, method=method, sign=sign, use_pyplot=False)
        try:
            data = [np.asarray(im.get_array()) for im in ax.images]
            if method == "original_image":
                assert len(data) == 1 and np.allclose(data[0], 255 * shown, atol=1.0)  # as uint8
                continue
            combined = a.sum(2)
            if sign == "absolute_value":
                combined = np.abs(combined)
            srt = np.sort(np.abs(combined).flatten())
            cum = np.cumsum(srt)
            scale = srt[np.nonzero(cum >= 0.98 * cum[-1])[0][0]]
            want = np.clip(combined / scale, -1, 1)
            heat = data[-1]
            assert heat.shape == (8, 8) and np.allclose(heat, want, atol=1e-6)
            if method == "blended_heat_map":  # the image under the map (grey, 0..255 levels)
                assert len(data) == 2 and np.allclose(data[0], 255 * shown.mean(2), atol=1.0)
        finally:
            matplotlib.pyplot.close(fig)


def test_tuple_inputs_and_additional_args():
    model = TwoInputNet().to(DT).eval()
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(5, 4, generator=g, dtype=DT), torch.randn(5, 3, generator=g, dtype=DT)
    lrp = LRP(model, epsilon=1e-12)
    out, delta = lrp.attribute((x1, x2), target=2, additional_forward_args=(2.0,), return_convergence_delta=True)
    assert isinstance(out, tuple) and len(out) == 2
    assert out[0].shape == x1.shape and out[1].shape == x2.shape
    logits = model(x1, x2, 2.0)[:, 2].detach()
    assert torch.allclose(out[0].sum(1) + out[1].sum(1), logits, rtol=1e-9, atol=1e-12)
    assert torch.allclose(delta, torch.zeros(5, dtype=DT), atol=1e-9)
    # a single tensor gives a single tensor
    single = LRP(small_cnn()).attribute(image_batch(), target=0)
    assert isinstance(single, torch.Tensor)


def test_target_conventions():
    cnn = small_cnn(bias=False)
    x = image_batch(3)
    lrp = LRP(cnn, epsilon=1e-12)
    with torch.no_grad():
        logits = cnn(x)
    by_list = lrp.attribute(x, target=[0, 3, 4])
    by_tensor = lrp.attribute(x, target=torch.tensor([0, 3, 4]))
    assert torch.equal(by_list, by_tensor)
    for i, t in enumerate([0, 3, 4]):
        single = lrp.attribute(x[i:i + 1], target=t)
        assert torch.allclose(by_list[i:i + 1], single, rtol=0, atol=1e-12)
        assert abs(float(by_list[i].sum()) - float(logits[i, t])) < 1e-9
    # int target: same class for all
    by_int = lrp.attribute(x, target=2)
    assert torch.allclose(by_int.reshape(3, -1).sum(1), logits[:, 2], atol=1e-9)
    # scalar tensor
    assert torch.equal(lrp.attribute(x, target=torch.tensor(2)), by_int)
    # None: the predicted class
    pred = logits.argmax(1)
    assert torch.allclose(lrp.attribute(x).reshape(3, -1).sum(1), logits[torch.arange(3), pred], atol=1e-9)

    # tuple targets index a multi-dimensional output (N, 2, 3)
    class Grid(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 6, bias=False)

        def forward(self, x):
            return self.lin(x).view(-1, 2, 3)

    torch.manual_seed(0)
    grid = Grid().to(DT).eval()
    xg = torch.randn(2, 4, dtype=DT)
    out = grid(xg).detach()
    a = LRP(grid, epsilon=0.0).attribute(xg, target=(1, 2))
    assert torch.allclose(a.sum(1), out[:, 1, 2], atol=1e-12)
    a = LRP(grid, epsilon=0.0).attribute(xg, target=[(0, 1), (1, 0)])
    assert torch.allclose(a.sum(1), torch.stack([out[0, 0, 1], out[1, 1, 0]]), atol=1e-12)


def test_has_convergence_delta():
    cnn = small_cnn()
    lrp = LRP(cnn)
    assert lrp.has_convergence_delta() is True
    x = image_batch()
    attr, delta = lrp.attribute(x, target=1, return_convergence_delta=True)
    with torch.no_grad():
        logit = cnn(x)[:, 1]
    assert torch.allclose(delta, logit - attr.reshape(3, -1).sum(1), atol=1e-12)  # Captum's LRP sign
    assert torch.allclose(lrp.compute_convergence_delta(attr, logit), delta, atol=1e-12)
    # with biases, the biases absorb relevance: the delta is not 0
    assert float(delta.abs().max()) > 1e-6


@pytest.mark.parametrize("preset", ["epsilon", "epsilon_plus", "epsilon_gamma_box"])
def test_layer_lrp_hidden_layer_sums(preset):
    cnn = small_cnn(bias=False)
    x = image_batch()
    kw = dict(epsilon=1e-12, stabilizer=1e-12)
    full = LRP(cnn, preset, **kw).attribute(x, target=[1, 2, 3])
    for layer in (cnn[3], cnn[5], cnn[7]):
        rel, delta = LayerLRP(cnn, layer, preset, **kw).attribute(x, target=[1, 2, 3], return_convergence_delta=True)
        assert rel.shape[0] == 3
        assert torch.allclose(rel.reshape(3, -1).sum(1), full.reshape(3, -1).sum(1), rtol=1e-9, atol=1e-12)
        assert float(delta.abs().max()) < 1e-9
    # relevance at the layer input of the classifier == relevance at the flatten output
    a = LayerLRP(cnn, cnn[8], preset, **kw).attribute(x, target=[1, 2, 3], attribute_to_layer_input=True)
    b = LayerLRP(cnn, cnn[7], preset, **kw).attribute(x, target=[1, 2, 3])
    assert torch.allclose(a, b, rtol=0, atol=1e-12)
    # with epsilon: relevance at a layer output = activation * gradient-like density, check
    # against the hand computation at the last hidden layer (LRP-eps on the output layer)
    if preset == "epsilon":
        with torch.no_grad():
            h = cnn[:8](x)
            z = cnn[8](h)
        w = cnn[8].weight
        t = torch.tensor([1, 2, 3])
        zt = z[torch.arange(3), t]
        want = h * w[t] * (zt / (zt + 1e-12 * torch.where(zt >= 0, 1.0, -1.0)))[:, None]
        assert torch.allclose(b, want, rtol=1e-12, atol=1e-14)
