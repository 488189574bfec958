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
# # 3. Contextual decomposition (CD) and agglomerative CD (ACD) on text and on an image
#
# **CD** (Murdoch, Liu & Yu, ICLR 2018) runs the network forward on two parts of the
# input at once: the *relevant* part (a phrase, an image region) and the *irrelevant*
# rest.  Every layer splits its output between the two, so at the end
# `relevant + irrelevant = logits`, and the relevant logit is the **CD score** of the group:
# what the group contributes, interactions with the rest included.  Unlike a gradient, it
# scores whole phrases or regions, not single features.
#
# **ACD** (Singh, Murdoch & Yu, ICLR 2019) builds a *hierarchy* from CD scores: it starts
# from the best single words (or image blocks), grows them into phrases (regions) while
# that increases the score, then merges groups until one remains.
#
# Part 1 uses two small sentiment models trained on the same Rotten Tomatoes snippets and
# shipped with captum_rap: an LSTM (`captum_rap.zoo.rotten_tomatoes_lstm()`, the model shape
# of the ACD paper) and a transformer (`rotten_tomatoes_transformer()`: embedding + position
# embedding, two `nn.TransformerEncoder` layers); part 2 runs ACD on EfficientNet-Lite0.

# %%
import time

import numpy as np
import torch

from _common import FAST, OUT, save  # backend, fast mode, output folder: tutorials/_common.py
import matplotlib.pyplot as plt

print(f"fast mode: {FAST}; output folder {OUT}")

# %% [markdown]
# ## Part 1: text
#
# `rotten_tomatoes_lstm()` returns a `TextModel`: the LSTM (input `(T, B)` token ids,
# sequence first, output two logits: rotten, fresh), its vocabulary, `encode(text)` and a
# few held-out example snippets.  Because the model is sequence-first, CD and ACD are told
# that the batch axis is 1 (`batch_dim=1`).  `rotten_tomatoes_transformer()` has the same
# interface, vocabulary and examples.
#
# CD follows the transformer through every operation with the rules of
# `captum_rap._cd`: its position embeddings belong to the token at their position (as in
# CD-T, Hsu et al. 2025), layer norm uses the statistics of the whole activation, GELU
# keeps `f(relevant)` as the relevant part, and attention uses the attention pattern of the
# whole input (CD-T), so the relevant output of attention is that pattern applied to the
# relevant values.

# %%
from captum_rap import ACD, CD
from captum_rap.zoo import rotten_tomatoes_lstm, rotten_tomatoes_transformer

tm = rotten_tomatoes_lstm()
tr = rotten_tomatoes_transformer()
print(f"held-out accuracy: LSTM {tm.test_accuracy:.3f}, transformer {tr.test_accuracy:.3f}; classes {tm.classes}")
texts = tm.examples[:2] if FAST else tm.examples
cd = CD(tm.model, batch_dim=1)
cd_tr = CD(tr.model, batch_dim=1)

# %% [markdown]
# ### Phrase scores with spans
#
# `CD.decompose(ids, spans=[(start, stop), ...])` scores any list of inclusive token spans
# in batched forwards.  As in the ACD paper, the score of a phrase for the predicted class
# is its relevant logit for that class minus its relevant logit for the other class
# (positive = evidence for the prediction).  We score every single word and every
# three-word window and print the strongest phrases.  The check at the top: with the whole
# sentence as the relevant part, relevant + irrelevant reproduces the logits.

# %%
def phrase_scores(ids: torch.Tensor, spans, target: int, cd: CD = cd) -> np.ndarray:
    """CD score of each inclusive token span: relevant logit of ``target`` minus the other's."""
    rel, _ = cd.decompose(ids, spans=spans)
    return (rel[:, target] - rel[:, 1 - target]).numpy()


def phrase(words, span, score: float) -> str:
    return f"{' '.join(words[span[0]:span[1] + 1])!r} {score:+.2f}"


for text in texts:
    ids, words = tm.encode(text)
    print(f"\n{text!r}")
    for name, model, cd_m in (("LSTM", tm.model, cd), ("transformer", tr.model, cd_tr)):
        with torch.no_grad():
            logits = model(ids)[0]
        target = int(logits.argmax())
        rel, irr = cd_m.decompose(ids, spans=[(0, len(words) - 1)])
        print(f"  {name}: prediction {tm.classes[target]} (logits {logits.numpy().round(3)}); "
              f"CD check |rel + irr - logits| = {float((rel[0] + irr[0] - logits).abs().max()):.1e}")
        T = len(words)
        singles = [(i, i) for i in range(T)]
        triples = [(i, i + 2) for i in range(T - 2)]
        s1, s3 = phrase_scores(ids, singles, target, cd_m), phrase_scores(ids, triples, target, cd_m)
        best_words = np.argsort(-s1)[:3]
        print("    strongest words:   " + ", ".join(f"{words[i]!r} {s1[i]:+.2f}" for i in best_words))
        if triples:
            best = np.argsort(-s3)[:2]
            worst = np.argsort(s3)[:1]
            print("    strongest phrases: " + ", ".join(phrase(words, triples[k], s3[k]) for k in best)
                  + "; most against: " + phrase(words, triples[worst[0]], s3[worst[0]]))

# %% [markdown]
# ### The ACD hierarchy of a sentence
#
# `ACD(model, batch_dim=1).hierarchy_text(ids, words=words)` returns an `ACDHierarchy`:
# level 0 holds the single words (and, as in the reference's `collapse_tree`, phrases made
# only of words selected in the same step), each higher level the phrases the procedure
# has grown or merged so far, each with its CD score.  `plot()` draws the standard ACD figure: one row
# per level, the words written in, coloured by the score of the phrase they belong to
# (red = for the predicted class, blue = against).

# %%
acd_text = {"LSTM": ACD(tm.model, batch_dim=1), "transformer": ACD(tr.model, batch_dim=1)}
for k, text in enumerate(texts):
    ids, words = tm.encode(text)
    for name, acd_m in acd_text.items():
        t0 = time.perf_counter()
        tree = acd_m.hierarchy_text(ids, words=words)
        print(f"\n{name}, {text!r}: {len(tree)} levels, {tree.cd_evaluations} CD evaluations "
              f"(the reference procedure makes {tree.reference_cd_calls}), {time.perf_counter() - t0:.2f} s; "
              f"explained class {tm.classes[tree.target]}")
        for lev in range(1, len(tree)):
            phrases = [(" ".join(w for w, m in zip(words, g.mask) if m), g.score) for g in tree.groups(lev)]
            print(f"  level {lev}: " + "; ".join(f"[{p}] {s:+.2f}" for p, s in phrases))
        fig = tree.plot()
        fig.suptitle(f"ACD ({name}): {tm.classes[tree.target]}", fontsize=9)
        save(fig, f"03_acd_text_{k}.png" if name == "LSTM" else f"03_acd_text_transformer_{k}.png")

# %% [markdown]
# The hierarchy is plain data: `tree.to_json()` exports it (features as token positions),
# `tree.roots()` gives the top of the tree and every group knows its parent and children.

# %%
print(tree.to_json()[:300], "...")
print("roots:", [(g.level, g.id, round(g.score, 3)) for g in tree.roots()])

# %% [markdown]
# ## Part 2: an image
#
# On images ACD starts from square blocks of `sweep_dim` pixels.  Each CD evaluation is a
# full forward pass of the decomposed network, and ACD needs many, so we use coarse
# settings: a small input and large blocks (a 4 x 4 grid in fast mode, 7 x 7 otherwise).
# `hierarchy` decomposes all candidate masks of one step in batches; `progress=True` would
# show a progress bar.
#
# Precision: CD's bias split amplifies rounding on deep networks with batch norm, and on this
# pretrained EfficientNet-Lite0 float32 CD scores are off by several percent of the logits.
# CD therefore computes one mask in float32 and float64 for each new input and, when they
# disagree, runs in float64 (the model itself stays float32).  `acd.cd.computation_dtype`
# and `acd.cd.precision_error` show what happened; `ACD(model, dtype=torch.float64)` asks
# for float64 directly.

# %%
from captum_rap.zoo import efficientnet_lite0, imagenet_categories, lite0_preprocess, skimage_photo

model = efficientnet_lite0()
names = imagenet_categories()
SIZE, SWEEP, ITERS = (64, 16, 2) if FAST else (112, 16, 3)
x = lite0_preprocess(skimage_photo("chelsea"), size=SIZE)
with torch.no_grad():
    logits = model(x)
target = int(logits.argmax())
print(f"chelsea at {SIZE} px -> {names[target]!r} ({float(logits.softmax(1)[0, target]):.3f})")
t0 = time.perf_counter()
acd_img = ACD(model)
tree_img = acd_img.hierarchy(x, target=target, sweep_dim=SWEEP, percentile_include=90, num_iters=ITERS)
print(f"ACD: {len(tree_img)} levels, {tree_img.cd_evaluations} CD evaluations, {time.perf_counter() - t0:.1f} s")
print(f"CD precision check: float32 off by {acd_img.cd.precision_error:.1e} of the logits -> computed in "
      f"{acd_img.cd.computation_dtype or x.dtype}")
for lev in range(len(tree_img)):
    groups = tree_img.groups(lev)
    if groups:
        print(f"  level {lev}: " + ", ".join(f"{g.size} px score {g.score:+.2f}" for g in groups))

# %% [markdown]
# `plot(image)` overlays the groups of every level on the image; `attribution_map(level)`
# turns one level into an input-shaped map (each pixel gets its group's score), and
# `attribution_map()` (no level) gives the CD score of every block on its own.

# %%
img = ((x[0].permute(1, 2, 0) * 128 + 127) / 255).clamp(0, 1).numpy()
fig = tree_img.plot(img)
save(fig, "03_acd_image_levels.png")

level = max(1, (tree_img.num_before_final or 2) - 1)
fig, axes = plt.subplots(1, 3, figsize=(9, 3))
axes[0].imshow(img)
axes[0].set_title("input", fontsize=9)
im = axes[1].imshow(tree_img.attribution_map()[0, 0].numpy(), cmap="viridis")
fig.colorbar(im, ax=axes[1], fraction=0.046)
axes[1].set_title(f"CD score of each {SWEEP}px block", fontsize=9)
im = axes[2].imshow(tree_img.attribution_map(level)[0, 0].numpy(), cmap="Reds")
fig.colorbar(im, ax=axes[2], fraction=0.046)
axes[2].set_title(f"groups of level {level} (their CD score)", fontsize=9)
for a in axes:
    a.set_xticks([])
    a.set_yticks([])
fig.tight_layout()
save(fig, "03_acd_image_maps.png")

# %% [markdown]
# ## What to take away
#
# * CD scores groups (phrases, regions) with their interactions; the check
#   `relevant + irrelevant = logits` holds by construction, for the LSTM, the transformer and
#   the image model alike.
# * On 100 held-out snippets, per-word CD scores rank the words like occlusion does (Spearman
#   0.69 for the LSTM, 0.57 for the transformer; README, `benchmarks/cd_text_occlusion.py`).
# * Single-block CD scores of a deep CNN are not additive (each block alone can score close
#   to the whole image); ACD's hierarchy, which shows which blocks the procedure groups and
#   in which order, is usually the more informative view.
# * ACD costs many forward passes: choose `sweep_dim` and the input size so the block grid
#   stays small.
