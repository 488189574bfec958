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
# # 2. Class discrimination with contrastive LRP (CLRP) and Softmax-Gradient LRP (SGLRP)
#
# Plain LRP maps of a CNN often look the same whichever class you explain: they show
# "where the salient edges are" rather than "what makes this class different".  Two
# remedies both subtract a *dual* explanation from the target's:
#
# * **CLRP** (Gu, Yang & Tresp, ACCV 2018): variant 1 explains all other classes together
#   (the target's weights negated and spread over the rest), variant 2 the target through a
#   negated output layer; the map is the positive part of target minus dual.
# * **SGLRP** (Iwana, Kuroki & Uchida, ICCV-W 2019): starts LRP from the gradient of the
#   softmax, so every class enters with the weight it has in the prediction.
#
# To see the difference we build an image that contains **two** objects, scikit-image's
# `chelsea` (a cat) on the left and `coffee` (a cup) on the right, explain each half's
# class, and measure which share of the positive relevance lands on the correct half.

# %%
import time

import numpy as np
import torch
import torch.nn.functional as F

from _common import FAST, save  # backend, fast mode, output folder: tutorials/_common.py
import matplotlib.pyplot as plt

SIZE = 128 if FAST else 224
print(f"fast mode: {FAST}; composite of {SIZE}x{SIZE} px")

# %% [markdown]
# ## The composite image and the two classes
#
# Each photo is resized to `SIZE x SIZE/2` (squeezed horizontally) and the halves are put
# side by side.  The two classes we explain are the ones the model predicts for each photo
# on its own, so we know which half "belongs" to which class.

# %%
from captum_rap.zoo import efficientnet_lite0, imagenet_categories, lite0_preprocess, skimage_photo

model = efficientnet_lite0()
names = imagenet_categories()
LEFT, RIGHT = "chelsea", "coffee"


def half(photo: str) -> torch.Tensor:
    """Photo -> network input of SIZE x SIZE/2 (Lite0 preprocessing)."""
    full = lite0_preprocess(skimage_photo(photo), size=SIZE)
    return F.interpolate(full, size=(SIZE, SIZE // 2), mode="bilinear", align_corners=False, antialias=True)


composite = torch.cat([half(LEFT), half(RIGHT)], dim=3)
with torch.no_grad():
    alone = [int(model(lite0_preprocess(skimage_photo(p), size=SIZE)).argmax()) for p in (LEFT, RIGHT)]
    probs = model(composite).softmax(1)[0]
classes = {LEFT: alone[0], RIGHT: alone[1]}
for p, c in classes.items():
    print(f"{p:>8} alone -> {names[c]!r} ({c}); probability in the composite {float(probs[c]):.3f}")
top = probs.topk(5)
print("composite top 5: " + ", ".join(f"{names[int(i)]} {float(v):.3f}" for v, i in zip(top.values, top.indices)))

# %% [markdown]
# ## Four maps per class
#
# All methods use the `zplus_box` rules (z⁺ everywhere, z^B at the input; it is CLRP's
# base), so the only difference between the columns is the contrast.  Each method gets the
# composite twice in one batch, once per target class.
#
# The measure: the positive relevance (summed over colour channels) on the half that shows
# the explained class, divided by the positive relevance on the whole image.  0.5 means no
# discrimination, 1.0 means all evidence sits on the right object.

# %%
from captum_rap import CLRP, LRP, SGLRP

BOX = dict(low=-127 / 128, high=128 / 128)
methods = {
    "LRP zplus_box": LRP(model, "zplus_box", **BOX),
    "CLRP1": CLRP(model, variant=1, **BOX),
    "CLRP2": CLRP(model, variant=2, **BOX),
    "SGLRP": SGLRP(model, **BOX),
}
batch = composite.expand(2, -1, -1, -1)
target_list = [classes[LEFT], classes[RIGHT]]
maps, share = {}, {}
for name, method in methods.items():
    t0 = time.perf_counter()
    attr = method.attribute(batch, target=target_list).detach()
    maps[name] = attr
    pos = attr.sum(1).clamp(min=0)  # (2, H, W): positive pixel relevance per target
    left, right = pos[:, :, : SIZE // 2].sum((1, 2)), pos[:, :, SIZE // 2:].sum((1, 2))
    total = (left + right).clamp_min(1e-30)
    share[name] = (float(left[0] / total[0]), float(right[1] / total[1]))
    print(f"{name:<14} share on the correct half: {names[classes[LEFT]]!r} {share[name][0]:.3f}, "
          f"{names[classes[RIGHT]]!r} {share[name][1]:.3f}  ({time.perf_counter() - t0:.2f} s)")

# %%
img = ((composite[0].permute(1, 2, 0) * 128 + 127) / 255).clamp(0, 1).numpy()
fig, axes = plt.subplots(2, 1 + len(methods), figsize=(2.6 * (1 + len(methods)), 5.4))
for r, (photo, c) in enumerate(classes.items()):
    axes[r, 0].imshow(img)
    axes[r, 0].set_ylabel(f"target:\n{names[c]}", fontsize=9)
    for k, (name, attr) in enumerate(maps.items(), start=1):
        heat = attr[r].sum(0).numpy()
        lim = float(np.percentile(np.abs(heat), 99.5)) or 1.0
        axes[r, k].imshow(heat, cmap="bwr", vmin=-lim, vmax=lim)
        axes[r, k].axvline(SIZE / 2 - 0.5, color="k", lw=0.5)
        axes[r, k].set_title(f"{name}\n{share[name][r]:.0%} on the {'left' if r == 0 else 'right'}", fontsize=8)
for a in axes.flat:
    a.set_xticks([])
    a.set_yticks([])
fig.tight_layout()
save(fig, "02_contrastive_composite.png")

fig, ax = plt.subplots(figsize=(6, 3))
xs = np.arange(len(methods))
ax.bar(xs - 0.18, [share[m][0] for m in methods], 0.36, label=names[classes[LEFT]])
ax.bar(xs + 0.18, [share[m][1] for m in methods], 0.36, label=names[classes[RIGHT]])
ax.axhline(0.5, color="gray", lw=0.8, ls="--")
ax.set_xticks(xs)
ax.set_xticklabels(list(methods))
ax.set_ylim(0, 1.05)
ax.set_ylabel("positive relevance on the correct half")
ax.legend(fontsize=8)
fig.tight_layout()
save(fig, "02_correct_half_share.png")

# %% [markdown]
# ## SGLRP's dual map
#
# `SGLRP(...).attribute(..., return_dual=True)` also returns the dual (the part of the
# explanation that belongs to the competing classes), which shows what the contrast removes.
# SGLRP's seed is the softmax gradient, whose entries sum to zero, so with these bias-free
# rules the signed SGLRP map sums to (numerically) zero: print it to check.

# %%
attr, dual = SGLRP(model, **BOX).attribute(composite, target=classes[LEFT], return_dual=True)
print(f"SGLRP for {names[classes[LEFT]]!r}: sum {float(attr.sum()):+.2e}, "
      f"|map| {float(attr.abs().sum()):.3e}, |dual| {float(dual.abs().sum()):.3e}")
fig, axes = plt.subplots(1, 3, figsize=(9, 3))
for a, (title, m) in zip(axes, [("input", None), ("SGLRP (target)", attr[0]), ("dual", dual[0])]):
    if m is None:
        a.imshow(img)
    else:
        heat = m.detach().sum(0).numpy()
        lim = float(np.percentile(np.abs(heat), 99.5)) or 1.0
        a.imshow(heat, cmap="bwr", vmin=-lim, vmax=lim)
    a.set_title(title, fontsize=9)
    a.set_xticks([])
    a.set_yticks([])
fig.tight_layout()
save(fig, "02_sglrp_dual.png")

# %% [markdown]
# ## What to take away
#
# * Compare the printed shares: the contrastive methods are built to move the positive
#   relevance onto the object of the explained class, while plain LRP spreads it over both
#   objects.  How large the gap is depends on the image, its size and the classes.
# * CLRP and SGLRP take the same `target` argument as any Captum attribution; the contrast
#   classes are derived from it, so a batch can explain a different class per example.
