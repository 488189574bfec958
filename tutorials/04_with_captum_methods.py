# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 4. captum_rap next to Captum's own methods
#
# captum_rap's methods are Captum `Attribution` objects, so they sit next to Captum's
# gradient methods with the same call (`attribute(inputs, target=...)`), the same output
# shape, the same visualisation helpers and the same wrappers.  This tutorial explains one
# EfficientNet-Lite0 prediction with
#
# * Captum: `IntegratedGradients`, `Saliency`, `GuidedBackprop`;
# * captum_rap: `RAP`, `LRP` (the `epsilon_gamma_box` preset);
# * Captum's `NoiseTunnel` wrapped around **RAP** (SmoothGrad-style averaging over noisy
#   copies of the input),
#
# then compares run time, how much the maps agree, and how fast the logit drops when the
# most relevant regions are removed.

# %%
import time
import warnings

import numpy as np
import torch
from torch import nn

from _common import FAST, save  # backend, fast mode, output folder: tutorials/_common.py
import matplotlib.pyplot as plt

SIZE = 128 if FAST else 224
IG_STEPS = 8 if FAST else 32
NT_SAMPLES = 4 if FAST else 16
print(f"fast mode: {FAST}; {SIZE} px; IG steps {IG_STEPS}; NoiseTunnel samples {NT_SAMPLES}")

# %%
from captum_rap.zoo import efficientnet_lite0, imagenet_categories, lite0_preprocess, skimage_photo

model = efficientnet_lite0()
names = imagenet_categories()
x = lite0_preprocess(skimage_photo("chelsea"), size=SIZE)
with torch.no_grad():
    logits = model(x)
target = int(logits.argmax())
print(f"prediction: {names[target]!r}, probability {float(logits.softmax(1)[0, target]):.3f}")
BOX = dict(low=-127 / 128, high=128 / 128)
# Captum reminds us that it switches on requires_grad and hooks the ReLUs; expected here
warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")
warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU activations")
img = ((x[0].permute(1, 2, 0) * 128 + 127) / 255).clamp(0, 1).numpy()

# %% [markdown]
# ## GuidedBackprop on a ReLU6 network
#
# Captum's `GuidedBackprop` changes the backward pass of `nn.ReLU` modules only.
# EfficientNet-Lite uses `nn.ReLU6`, so we explain a copy of the model whose ReLU6 modules
# are replaced by a module that *is* an `nn.ReLU` (so Captum hooks it) and clamps at 6 (so
# the forward pass is unchanged).  The propagation methods of captum_rap need no such copy:
# they run on the original model.

# %%
import copy


class ClampedReLU(nn.ReLU):
    """min(ReLU(x), 6): ReLU6, but an ``nn.ReLU`` for Captum's guided backpropagation."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return super().forward(inputs).clamp(max=6.0)


def with_guided_relu6(net: nn.Module) -> nn.Module:
    net = copy.deepcopy(net)
    for module in list(net.modules()):
        for child_name, child in module.named_children():
            if isinstance(child, nn.ReLU6):
                setattr(module, child_name, ClampedReLU())
    return net.eval()


guided_model = with_guided_relu6(model)
with torch.no_grad():
    print("the copy computes the same logits:", torch.allclose(guided_model(x), logits, atol=1e-5))

# %% [markdown]
# ## All methods with one calling convention
#
# The baseline of Integrated Gradients is a uniform grey image (0 in Lite0's input space).
# `NoiseTunnel(RAP(model))` averages RAP maps over `NT_SAMPLES` noisy copies of the input
# (`nt_type="smoothgrad"`, noise standard deviation 0.1 in the network's input units).

# %%
from captum.attr import GuidedBackprop, IntegratedGradients, NoiseTunnel, Saliency

from captum_rap import LRP, RAP

methods = {
    "IntegratedGradients": lambda: IntegratedGradients(model).attribute(
        x, baselines=torch.zeros_like(x), target=target, n_steps=IG_STEPS, internal_batch_size=IG_STEPS),
    "Saliency": lambda: Saliency(model).attribute(x, target=target, abs=False),
    "GuidedBackprop": lambda: GuidedBackprop(guided_model).attribute(x, target=target),
    "RAP": lambda: RAP(model).attribute(x, target=target),
    "LRP epsilon_gamma_box": lambda: LRP(model, "epsilon_gamma_box", **BOX).attribute(x, target=target),
    "NoiseTunnel(RAP)": lambda: NoiseTunnel(RAP(model)).attribute(
        x, target=target, nt_type="smoothgrad", nt_samples=NT_SAMPLES, stdevs=0.1,
        nt_samples_batch_size=NT_SAMPLES),
}
maps, seconds = {}, {}
for name, run in methods.items():
    torch.manual_seed(0)
    t0 = time.perf_counter()
    maps[name] = run().detach()
    seconds[name] = time.perf_counter() - t0
    m = maps[name]
    print(f"{name:<24} {seconds[name]:6.2f} s   shape {tuple(m.shape)}   sum {float(m.sum()):+.4g}")

# %% [markdown]
# The sums differ in meaning: Integrated Gradients approximates `logit(x) - logit(baseline)`
# (completeness, up to the integration error of `IG_STEPS` steps), RAP conserves the logit,
# LRP with this preset passes part of it to the biases, and gradients have no such
# property.  We print the references next to them.

# %%
with torch.no_grad():
    base_logit = float(model(torch.zeros_like(x))[0, target])
print(f"logit {float(logits[0, target]):+.4f}; logit - baseline logit {float(logits[0, target]) - base_logit:+.4f}")
print(f"IG sum {float(maps['IntegratedGradients'].sum()):+.4f}; RAP sum {float(maps['RAP'].sum()):+.4f}")

# %% [markdown]
# ## Side by side
#
# `visualize_rap_grid` shows each map's positive part, negative part and the signed map
# (channels summed).  For gradient methods the sign means "increasing this pixel raises
# the logit", for RAP "relevant" vs "irrelevant", so compare shapes, not colours alone.

# %%
from captum_rap.visualization import visualize_rap_grid

fig, _ = visualize_rap_grid([m[0] for m in maps.values()], img, names=list(maps))
save(fig, "04_side_by_side.png")

# %% [markdown]
# Captum's own `visualize_image_attr_multiple` takes the same tensors (as HWC arrays):

# %%
from captum.attr import visualization as viz

from captum_rap.visualization import to_hwc

fig, _ = viz.visualize_image_attr_multiple(
    to_hwc(maps["NoiseTunnel(RAP)"][0]), img, methods=["original_image", "blended_heat_map", "heat_map"],
    signs=["all", "positive", "all"], titles=["input", "NoiseTunnel(RAP), positive", "signed"],
    use_pyplot=False, fig_size=(9, 3))
save(fig, "04_captum_visualization.png")

# %% [markdown]
# ## Agreement and a perturbation check
#
# Agreement: the Spearman rank correlation between the absolute pixel maps (|channel sum|)
# of every pair of methods, as in the sanity checks of Adebayo et al. (2018); signed maps
# of gradient methods are too noisy for a signed comparison to say much.  Perturbation: the MoRF AOPC of `region_perturbation` (remove
# patches in order of decreasing positive relevance; a larger value means the logit falls
# faster).  Both are single-image numbers here, an illustration, not a benchmark.

# %%
from captum_rap.metrics import region_perturbation


def ranks(a: torch.Tensor) -> torch.Tensor:
    flat = a.flatten()
    r = torch.empty_like(flat)
    r[flat.argsort()] = torch.arange(flat.numel(), dtype=flat.dtype)
    return r


pixel = {k: m[0].sum(0).double().abs() for k, m in maps.items()}
keys = list(pixel)
corr = np.array([[float(torch.corrcoef(torch.stack([ranks(pixel[a]), ranks(pixel[b])]))[0, 1]) for b in keys]
                 for a in keys])
short = [k.replace("IntegratedGradients", "IG").replace("LRP epsilon_gamma_box", "LRP eps-γ-box")
         .replace("NoiseTunnel(RAP)", "NT(RAP)").replace("GuidedBackprop", "GBP") for k in keys]
print("Spearman rank correlation of the absolute pixel maps:")
print(" " * 14 + "".join(f"{s:>14}" for s in short))
for s, row in zip(short, corr):
    print(f"{s:>14}" + "".join(f"{v:14.2f}" for v in row))

print(f"\n{'method':<24}{'MoRF AOPC':>10}")
for name, m in maps.items():
    res = region_perturbation(model, x, m.clamp(min=0), target=target, patch_size=16,
                              patches_per_step=4 if FAST else 2)
    print(f"{name:<24}{res.aopc_mean:>10.3f}")

fig, ax = plt.subplots(figsize=(6, 5))
im = ax.imshow(corr, cmap="RdBu_r", vmin=-1, vmax=1)
ax.set_xticks(range(len(short)))
ax.set_xticklabels(short, rotation=45, ha="right", fontsize=8)
ax.set_yticks(range(len(short)))
ax.set_yticklabels(short, fontsize=8)
fig.colorbar(im, ax=ax, fraction=0.046)
ax.set_title("Spearman rank correlation of |pixel maps|", fontsize=9)
fig.tight_layout()
save(fig, "04_agreement.png")

# %% [markdown]
# ## What to take away
#
# * One calling convention for everything: captum_rap attributions can be swapped into
#   code written for Captum's methods, wrapped in `NoiseTunnel`, drawn with
#   `captum.attr.visualization` and scored with Captum's or captum_rap's metrics.
# * Propagation methods cost about one forward and one backward pass, like `Saliency`;
#   Integrated Gradients and NoiseTunnel multiply that by their number of samples (see the
#   printed timings).
# * Agreement between methods is partial; look at several maps and at a perturbation test
#   before trusting any single one.
