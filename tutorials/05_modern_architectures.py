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
# # 5. Modern architectures: a Vision Transformer, ConvNeXt and EfficientNet, unchanged
#
# captum_rap's propagation methods (LRP, RAP, CLRP, SGLRP) run on the models people train
# today — transformers with attention, layer norm and GELU; ConvNeXt; EfficientNet with
# SiLU and squeeze-and-excitation gates — without a canonizer, without swapping modules and
# without per-architecture code.  This tutorial shows
#
# 1. **AttnLRP** (`LRP(model, "attnlrp")`, Achtibat et al., ICML 2024), **CP-LRP**
#    (`LRP(model, "cp_lrp")`, Ali et al., ICML 2022) and **RAP** on a Vision Transformer
#    that was *trained* here: `captum_rap.zoo.fashion_mnist_vit()`, torchvision's own
#    `VisionTransformer` class on Fashion-MNIST (91% test accuracy), with 500 test images
#    shipped in the package;
# 2. what the **convergence delta** (logit − Σ relevance) says about conservation, on the
#    trained model and on a bias-free float64 copy;
# 3. the same calls on torchvision's **ConvNeXt-T** and **EfficientNet-B0**, built unchanged
#    but with **random weights** (no pretrained weights can be downloaded here): the point is
#    that they run, not what the maps show;
# 4. `captum_rap.supported_operations()`, the operation table, and what happens with an
#    operation that has no rule: an `UnsupportedOperationError` naming the operation and the
#    module.
#
# Nothing is downloaded.  `CAPTUM_RAP_FAST=1` uses fewer images and smaller inputs (what the
# test suite runs); figures go to `$CAPTUM_RAP_TUTORIAL_OUT` (default `tutorials/_out/`).
# Needs torchvision.

# %%
import copy
import time

from _common import FAST, OUT, save  # backend, fast mode, output folder: tutorials/_common.py

import torch
from torch import nn

torch.manual_seed(0)


N_EVAL = 100 if FAST else 500  # test images for the accuracy
SIZE = 64  # ConvNeXt / EfficientNet input size (random weights: small is enough)
print(f"fast mode: {FAST}; output folder {OUT}")

# %% [markdown]
# ## The trained Vision Transformer
#
# `fashion_mnist_vit()` returns torchvision's `VisionTransformer` (28 px images, 4 px patches,
# 6 encoder layers with `nn.MultiheadAttention`, `LayerNorm` and `GELU`, a class token and
# learned position embeddings) with weights trained here; its only change from torchvision's
# defaults is a one-channel patch embedding.  `fashion_mnist_test_subset()` gives 500
# official test images (50 per class) that were not used in training, `fmnist_preprocess`
# normalises uint8 images.

# %%
from captum_rap.zoo import FMNIST_CLASSES, fashion_mnist_test_subset, fashion_mnist_vit, fmnist_preprocess

vit = fashion_mnist_vit()
images, labels = fashion_mnist_test_subset()
with torch.no_grad():
    pred = vit(fmnist_preprocess(images[:N_EVAL])).argmax(1)
print(f"{type(vit).__module__}.{type(vit).__name__}: accuracy on {N_EVAL} shipped test images "
      f"{(pred == labels[:N_EVAL]).float().mean().item():.3f}")

# four images of different classes (the first of classes 0, 1, 7 and 9)
pick = [int((labels == c).nonzero()[0]) for c in (0, 1, 7, 9)]
x = fmnist_preprocess(images[pick])
with torch.no_grad():
    logits = vit(x)
target = logits.argmax(1)
for i, t in zip(pick, target.tolist()):
    print(f"image {i:3d}: true {FMNIST_CLASSES[int(labels[i])]:12s} predicted {FMNIST_CLASSES[t]:12s} "
          f"logit {float(logits[pick.index(i), t]):+.3f}")

# %% [markdown]
# ## AttnLRP, CP-LRP and RAP on the ViT
#
# The calls are the same as for a CNN.  The presets differ only in what they do at the
# operations a CNN does not have:
#
# * `"attnlrp"`: the ε rule on every linear layer and on the affine part of the layer
#   norms, the identity rule on GELU, the uniform rule on the products inside attention and
#   AttnLRP's softmax rule (this is what LXT, AttnLRP's reference code, computes);
# * `"cp_lrp"`: the same, but the attention weights are constants (relevance flows only
#   through the values), as LXT's patch of torchvision's ViT;
# * `RAP`: RAP's own rules on the linear layers, the CP-LRP treatment of attention by
#   default (`RAP(model, operations="attnlrp")` for AttnLRP's).
#
# `return_convergence_delta=True` also returns logit − Σ relevance per image.

# %%
from captum_rap import LRP, RAP

maps, deltas = {}, {}
for name, method in [("LRP attnlrp", LRP(vit, "attnlrp")), ("LRP cp_lrp", LRP(vit, "cp_lrp")),
                     ("RAP", RAP(vit))]:
    t0 = time.perf_counter()
    maps[name], deltas[name] = method.attribute(x, target=target, return_convergence_delta=True)
    seconds = time.perf_counter() - t0
    a = maps[name].detach()
    print(f"{name:12s} ({seconds:.2f} s for {len(x)} images)  Σ relevance / logit: "
          + ", ".join(f"{float(s / l):+.2f}" for s, l in zip(a.flatten(1).sum(1), logits[range(len(x)), target]))
          + "   max |R|: " + ", ".join(f"{float(v):.3g}" for v in a.abs().flatten(1).max(1).values))

# %% [markdown]
# The signed maps of the first two images, drawn with `captum_rap.visualization`
# (`visualize_rap_grid`: the relevant part in red, the irrelevant part in blue, the signed
# map; one colour scale per row, the 99.5th percentile of |map|).

# %%
from captum_rap.visualization import visualize_rap, visualize_rap_grid

for k in range(2):
    fig, _ = visualize_rap_grid([maps[n][k].detach() for n in maps], x[k], names=list(maps))
    fig.suptitle(f"{FMNIST_CLASSES[int(target[k])]} (image {pick[k]})", y=1.02)
    save(fig, f"05_vit_maps_{k}.png")

# %% [markdown]
# Two things to read from the numbers above, before looking at the maps:
#
# * **AttnLRP and CP-LRP do not sum to the logit on the trained model**: the biases, the
#   class token and the position embeddings are constants added to the activations, and
#   each takes its share of relevance (as a bias does in the ε rule).
# * **RAP's relevances are orders of magnitude larger than the logit** and cancel.  On
#   this ViT, RAP's rules (designed for ReLU networks) amplify the relevance at every
#   encoder block.  `benchmarks/bench_quality_vit.py` measures what that means: on this
#   model RAP's maps rank pixels no better than random noise in region perturbation
#   (`benchmarks/RESULTS_quality_vit.md`), while AttnLRP ranks best.  A stabilizer
#   (`RAP(model, stabilizer=0.1)`) tames the amplification and recovers much of the
#   ranking, at the cost of exact conservation.  Prefer `"attnlrp"` on transformers.
#
# `visualize_rap` shows one map with its parts; here AttnLRP for the first image.

# %%
fig, _ = visualize_rap(maps["LRP attnlrp"][0].detach(), x[0], fig_size=(10, 2.8))
fig.suptitle(f"AttnLRP for {FMNIST_CLASSES[int(target[0])]!r}", y=1.05)
save(fig, "05_vit_attnlrp_parts.png")

# %% [markdown]
# ## Conservation, checked with the convergence delta
#
# To see what the rules themselves conserve, take a float64 copy of the trained ViT and set
# every bias, the class token and the position embedding to zero (the copy computes another
# function, so its predictions change; that does not matter for the check).  Then:
#
# * CP-LRP conserves: its delta is at the level of float64 rounding;
# * AttnLRP's softmax rule does not conserve (its bias term): the delta stays;
# * RAP conserves in exact arithmetic, but its cancelling relevance mass (Σ|R|) is so large
#   that the delta is only small *relative to that mass*.

# %%
bias_free = copy.deepcopy(vit).double()
with torch.no_grad():
    for pname, p in bias_free.named_parameters():
        if pname.endswith("bias") or pname in ("class_token", "encoder.pos_embedding"):
            p.zero_()
xd = x.double()
with torch.no_grad():
    bf_logits = bias_free(xd)
bf_target = bf_logits.argmax(1)
bf_logit = bf_logits[range(len(x)), bf_target]
print(f"{'method':14s} {'max |delta| / |logit|':>22s} {'max Σ|R| / |logit|':>20s}")
for name, method in [("LRP cp_lrp", LRP(bias_free, "cp_lrp")), ("LRP attnlrp", LRP(bias_free, "attnlrp")),
                     ("RAP", RAP(bias_free))]:
    a, delta = method.attribute(xd, target=bf_target, return_convergence_delta=True)
    mass = a.detach().abs().flatten(1).sum(1)
    print(f"{name:14s} {float((delta.abs() / bf_logit.abs()).max()):22.2e} "
          f"{float((mass / bf_logit.abs()).max()):20.3g}")

# %% [markdown]
# ## ConvNeXt-T and EfficientNet-B0 from torchvision, unchanged
#
# The same classes work on any torchvision classifier.  ConvNeXt uses depthwise
# convolutions, `LayerNorm` over permuted feature maps, GELU, layer scale and stochastic
# depth; EfficientNet uses SiLU and squeeze-and-excitation gates (a sigmoid that multiplies
# the features).  Both are built here with **random weights** at 64 px: the maps of an
# untrained network say nothing about images, so we only show that every method runs, that
# the model is unchanged afterwards, and how well each map is conditioned.
#
# One preparation: with torchvision's initialisation and batch-norm statistics of 0 / 1,
# EfficientNet-B0's activations vanish with depth (its logits are ~1e-13, and so is every
# map).  We set the batch-norm statistics from one batch of random inputs first (train-mode
# forward with `momentum=None`), as training would; this changes only our own random model.

# %%
import torchvision


def random_model(arch: str) -> nn.Module:
    """torchvision model with seeded random weights and batch-norm statistics of random inputs."""
    torch.manual_seed(0)
    net = torchvision.models.get_model(arch, weights=None)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average over the calibration batch
    net.train()
    with torch.no_grad():
        net(torch.randn(16, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5)))
    return net.eval()


print("Σ R / logit = 1: conserved; Σ|R| / |logit| >> 1: large cancelling relevance (ill-conditioned map)")
for arch in ("convnext_tiny", "efficientnet_b0"):
    net = random_model(arch)
    xr = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = net(xr)
    t = out.argmax(1)
    logit = out[range(2), t]
    params = {k: v.clone() for k, v in net.state_dict().items()}
    for name, method in [("RAP", RAP(net)), ("LRP attnlrp", LRP(net, "attnlrp")),
                         ("LRP epsilon_gamma_box", LRP(net, "epsilon_gamma_box"))]:
        t0 = time.perf_counter()
        a, delta = method.attribute(xr, target=t, return_convergence_delta=True)
        seconds = time.perf_counter() - t0
        a = a.detach()
        unchanged = all(torch.equal(params[k], v) for k, v in net.state_dict().items())
        ratio = (a.flatten(1).sum(1) / logit).tolist()
        mass = (a.abs().flatten(1).sum(1) / logit.abs()).max()
        print(f"{arch:16s} {name:22s} {seconds:5.2f} s  finite {bool(torch.isfinite(a).all())}  "
              f"Σ R / logit {ratio[0]:+.3g}, {ratio[1]:+.3g}  Σ|R| / |logit| {float(mass):.3g}  "
              f"model unchanged {unchanged}")
    fig, _ = visualize_rap(a[0], xr[0], fig_size=(10, 2.8))
    fig.suptitle(f"{arch} (RANDOM weights), LRP epsilon_gamma_box: the map of an untrained network", y=1.05)
    save(fig, f"05_{arch}_random.png")

# %% [markdown]
# Read the two last columns before any map.  On ConvNeXt-T every method conserves the logit
# and the relevance mass is a few times the logit.  On EfficientNet-B0 only
# `epsilon_gamma_box` is well-conditioned.  RAP conserves there in exact arithmetic (in
# float64 Σ R / logit is 0.99999), but it moves relevance many orders of magnitude larger
# than the logit, which cancels, and float32 rounding of that mass is what moves Σ R.
# `attnlrp` uses ε = 1e-12 (LRP-0, as LXT) on every convolution: at the squeeze-and-excitation
# gates it divides by pre-activations near zero, and the relevance it creates there is not
# recovered (the sum is just as far off in float64).  For CNNs prefer the CNN presets
# (`epsilon_gamma_box`, `epsilon_plus`); `attnlrp` / `cp_lrp` are for transformers.  Which
# presets conserve on which architectures, on bias-free float64 copies, is tested in
# `tests/architectures/test_modern_architectures.py` for the smallest member of every torchvision family;
# `benchmarks/sweep_torchvision.py` runs all 80 classifiers.

# %% [markdown]
# ## The operation table, and an operation without a rule
#
# The engine looks every torch function the model calls up in one table: affine layers get
# the preset's rules, element-wise non-linearities the identity rule, normalisations and
# attention are written out in table operations, and so on.  `supported_operations()`
# lists it by treatment.

# %%
import captum_rap

for treatment, names in captum_rap.supported_operations().items():
    shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
    print(f"{treatment:14s} {shown}")

# %% [markdown]
# An operation on the relevance path that has no faithful rule raises
# `UnsupportedOperationError`, naming the operation and the module path, before any map is
# returned — never a silently wrong map.  Here a `log_softmax` sits in the middle of a
# small network (module `body.act`):

# %%
from captum_rap import UnsupportedOperationError


class Body(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.act = nn.LogSoftmax(dim=1)

    def forward(self, z):
        return self.act(self.fc(z))


toy = nn.Sequential()
toy.add_module("body", Body())
toy.add_module("head", nn.Linear(8, 3))
toy = toy.eval()
try:
    LRP(toy, "attnlrp").attribute(torch.randn(2, 8), target=0)
except UnsupportedOperationError as exc:
    print("UnsupportedOperationError:", str(exc).splitlines()[0])

# %% [markdown]
# ## Summary
#
# * `LRP(model, "attnlrp")`, `LRP(model, "cp_lrp")` and `RAP(model)` run on torchvision's
#   ViT, ConvNeXt and EfficientNet as they are.  On the trained ViT, AttnLRP gives the
#   maps that rank best in region perturbation (`benchmarks/RESULTS_quality_vit.md`);
#   RAP's rules are ill-conditioned there (use a stabilizer, or AttnLRP).
# * The convergence delta tells you how much relevance the biases (and on a ViT, the class
#   token and position embeddings) absorb; on bias-free copies CP-LRP conserves exactly and
#   AttnLRP's softmax rule does not, by design.
# * An operation without a rule raises with its name and module path.
