"""Quality benchmark on a trained transformer: region perturbation (MoRF / LeRF AOPC) of
attribution methods on the shipped Fashion-MNIST Vision Transformer
(``captum_rap.zoo.fashion_mnist_vit``: torchvision's unchanged ``VisionTransformer``,
trained here) and its 500 shipped test images, with the relevance distribution and a
pointing game on two-object composites, as ``bench_quality.py`` does on EfficientNet-Lite0.

One command::

    python benchmarks/bench_quality_vit.py            # full run: 500 images, writes the table and the plot
    python benchmarks/bench_quality_vit.py --quick    # smoke run: 16 images, few steps, nothing written

Writes ``benchmarks/RESULTS_quality_vit.md`` and ``benchmarks/quality_curves_vit.png``.  The
target is the predicted class of each image; the score is the target logit (the softmax
probability AOPC is reported too, from the same forward passes).  Run time is given in
units of a plain forward+backward (input gradient of the target logits) measured in the
same run, round robin with the methods on one batch.  Needs torchvision (and matplotlib
for the plot).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch
from torch import Tensor, nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import captum_rap  # noqa: E402
from bench_propagation import baselines, round_robin  # noqa: E402
from bench_quality import finite_or_zero, score_maps, write_results  # noqa: E402
from captum_rap.metrics import pointing_game  # noqa: E402
from captum_rap.zoo import (FMNIST_CLASSES, FMNIST_HIGH, FMNIST_LOW, fashion_mnist_test_subset,  # noqa: E402
                            fashion_mnist_vit, fmnist_preprocess)

HERE = os.path.dirname(os.path.abspath(__file__))

# method name -> (attribution function, whether "Σ map / target logit" is meaningful for it)
Methods = Dict[str, Tuple[Callable[[Tensor, Tensor], Tensor], bool]]


def _epsilon_on_norms(epsilon: float = 1e-6):
    """The ``epsilon`` preset with the epsilon rule on the affine part of the layer norms
    (the preset passes relevance through them unchanged), as a public ``Composite``."""
    from captum_rap.composites import Composite
    from captum_rap.rules import Epsilon

    return Composite(conv=lambda: Epsilon(epsilon), dense=lambda: Epsilon(epsilon), norm=lambda: Epsilon(epsilon),
                     name="epsilon_norm_epsilon")


def _attnlrp_zbox():
    """``attnlrp`` with the z^B rule (bounds: black and white) at the patch embedding, as a
    public ``Composite`` (the preset uses the epsilon rule there, whose reference point is
    the model input 0, i.e. the training set's mean grey)."""
    from captum_rap.composites import Composite
    from captum_rap.rules import Epsilon, ZBox

    return Composite(conv=lambda: Epsilon(1e-12), dense=lambda: Epsilon(1e-12), norm=lambda: Epsilon(1e-12),
                     first=lambda: ZBox(FMNIST_LOW, FMNIST_HIGH), name="attnlrp_zbox")


def methods(model: nn.Module, ig_steps: int, seed: int, occlusion_patch: int = 0, only: str = "") -> Methods:
    from captum.attr import InputXGradient, IntegratedGradients, Occlusion, Saliency

    def lrp(preset: str):
        return lambda x, t: captum_rap.LRP(model, preset).attribute(x, target=t)

    def random_attr(x: Tensor, t: Tensor) -> Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.rand(x.shape, generator=g)

    black = torch.full((1, 1, 28, 28), FMNIST_LOW)
    out: Methods = {
        "LRP attnlrp": (lrp("attnlrp"), True),
        "LRP cp_lrp": (lrp("cp_lrp"), True),
        "RAP (signed)": (lambda x, t: captum_rap.RAP(model).attribute(x, target=t), True),
        "RAP (positive part)": (lambda x, t: captum_rap.RAP(model).attribute(x, target=t).clamp(min=0), False),
        "RAP (signed, operations='attnlrp')": (
            lambda x, t: captum_rap.RAP(model, operations="attnlrp").attribute(x, target=t), True),
        "LRP epsilon": (lrp("epsilon"), True),
        # diagnostics of the two failures above (see RESULTS_quality_vit.md): RAP's exact
        # arithmetic, and the epsilon preset's pass-through on layer norms
        "RAP (signed, stabilizer=0.01)": (
            lambda x, t: captum_rap.RAP(model, stabilizer=0.01).attribute(x, target=t), True),
        "RAP (signed, stabilizer=0.1)": (
            lambda x, t: captum_rap.RAP(model, stabilizer=0.1).attribute(x, target=t), True),
        "LRP epsilon with the ε rule on layer norms": (
            lambda x, t: captum_rap.LRP(model, _epsilon_on_norms()).attribute(x, target=t), True),
        "LRP attnlrp with z^B (black..white) at the input layer": (
            lambda x, t: captum_rap.LRP(model, _attnlrp_zbox()).attribute(x, target=t), True),
        f"Captum IntegratedGradients ({ig_steps} steps, black baseline)": (
            lambda x, t: IntegratedGradients(model).attribute(x, baselines=black.expand_as(x), target=t,
                                                              n_steps=ig_steps,
                                                              internal_batch_size=len(x) * ig_steps), True),
        f"Captum IntegratedGradients ({ig_steps} steps, zero baseline = mean grey)": (
            lambda x, t: IntegratedGradients(model).attribute(x, target=t, n_steps=ig_steps,
                                                              internal_batch_size=len(x) * ig_steps), True),
        "Captum Saliency (abs)": (lambda x, t: Saliency(model).attribute(x, target=t, abs=True), False),
        "Captum InputXGradient": (lambda x, t: InputXGradient(model).attribute(x, target=t), True),
        "random (seeded)": (random_attr, False),
    }
    if occlusion_patch:
        # sanity reference: the score drop of replacing each patch alone by the image mean
        # (what MoRF's first step measures), one forward per patch
        def occlusion(x: Tensor, t: Tensor) -> Tensor:
            base = x.mean(dim=(2, 3), keepdim=True).expand_as(x).contiguous()
            return Occlusion(model).attribute(x, baselines=base, target=t,
                                              sliding_window_shapes=(1, occlusion_patch, occlusion_patch),
                                              strides=(1, occlusion_patch, occlusion_patch),
                                              perturbations_per_eval=64)

        out[f"Captum Occlusion ({occlusion_patch} px, mean; reference)"] = (occlusion, False)
    if only:
        keys = [k.strip().lower() for k in only.split(",") if k.strip()]
        out = {k: v for k, v in out.items() if any(q in k.lower() for q in keys)}
    return out


def composites(model: nn.Module, x: Tensor, target: Tensor, n_pairs: int, seed: int,
               batch: int = 256) -> Tuple[Tensor, Tensor, Tensor, int]:
    """Two-object composites for the pointing game: image ``i`` squeezed into the left half
    (28 x 14) and image ``j`` into the right half, for seeded random pairs with distinct
    predicted classes, kept only when the model's two largest logits on the composite are
    exactly those two classes (the model recognises both objects; at 28 px most squeezed
    pairs are not recognised).  Returns the images (2P, 1, 28, 28) (each composite twice),
    the targets (2P,), the masks of the correct half (2P, 28, 28) and the number of
    candidate pairs tried."""
    n, _, h, w = x.shape
    half = torch.nn.functional.interpolate(x, size=(h, w // 2), mode="bilinear", antialias=True,
                                           align_corners=False)
    left = torch.zeros(h, w, dtype=torch.bool)
    left[:, : w // 2] = True
    g = torch.Generator().manual_seed(seed)
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j and int(target[i]) != int(target[j])]
    order = torch.randperm(len(pairs), generator=g).tolist()
    kept: List[Tuple[int, int]] = []
    tried = 0
    for s in range(0, len(order), batch):
        if len(kept) >= n_pairs:
            break
        cand = [pairs[k] for k in order[s:s + batch]]
        tried += len(cand)
        comp = torch.stack([torch.cat([half[i], half[j]], dim=2) for i, j in cand])
        with torch.no_grad():
            top2 = model(comp).topk(2, dim=1).indices
        for (i, j), tt in zip(cand, top2.tolist()):
            if set(tt) == {int(target[i]), int(target[j])} and len(kept) < n_pairs:
                kept.append((i, j))
    imgs, tgts, masks = [], [], []
    for i, j in kept:
        comp = torch.cat([half[i], half[j]], dim=2)
        imgs += [comp, comp]
        tgts += [int(target[i]), int(target[j])]
        masks += [left, ~left]
    if not kept:
        return torch.zeros(0, 1, h, w), torch.zeros(0, dtype=torch.long), torch.zeros(0, h, w, dtype=torch.bool), tried
    return torch.stack(imgs), torch.tensor(tgts), torch.stack(masks), tried


def _batched(fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, t: Tensor, size: int) -> Tensor:
    return torch.cat([fn(x[i:i + size], t[i:i + size]).detach() for i in range(0, len(x), size)])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 16 images, 4 steps, 1 timing round, no "
                   "files written unless --out/--png are given")
    p.add_argument("--images", type=int, default=None, help="use the first N shipped test images (default: all 500)")
    p.add_argument("--patch-size", type=int, default=2)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--patches-per-step", type=int, default=6)
    p.add_argument("--replacement", default="mean", choices=["mean", "blur", "zeros", "black"],
                   help="what a removed patch becomes: the image's mean, a blurred copy, 0 in the model's "
                   "input space (the training set's mean grey) or black (the background)")
    p.add_argument("--batch-size", type=int, default=1000, help="rows per perturbation forward pass")
    p.add_argument("--attr-batch", type=int, default=50, help="images per attribution call")
    p.add_argument("--ig-steps", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--occlusion", action="store_true", help="add Captum Occlusion with the same patches and "
                   "replacement value (mean) as a reference (one forward per patch and image)")
    p.add_argument("--only", default="", help="comma-separated substrings of method names to run "
                   "(the random baseline is always kept)")
    p.add_argument("--pairs", type=int, default=100, help="pointing game: composites (pairs recognised by the "
                   "model) to use (--quick: 2)")
    p.add_argument("--repeat", type=int, default=3, help="timing rounds (round robin, best of)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="markdown output (default benchmarks/RESULTS_quality_vit.md)")
    p.add_argument("--png", default=None, help="plot output (default benchmarks/quality_curves_vit.png)")
    p.add_argument("--no-png", action="store_true", help="no plot")
    args = p.parse_args(argv)
    for name in ("images", "patch_size", "steps", "patches_per_step", "batch_size", "attr_batch", "ig_steps",
                 "repeat"):
        v = getattr(args, name)
        if v is not None and v < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if args.pairs < 0:
        p.error(f"--pairs must be >= 0, got {args.pairs}")
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.images = args.images or 16
        args.steps = min(args.steps, 4)
        args.pairs = min(args.pairs, 2)
        args.repeat = 1
        args.ig_steps = min(args.ig_steps, 4)
    out_md = args.out or (None if args.quick else os.path.join(HERE, "RESULTS_quality_vit.md"))
    default_png = None if args.quick else os.path.join(HERE, "quality_curves_vit.png")
    out_png = None if args.no_png else args.png or default_png

    t_start = time.perf_counter()
    cpu_start = time.process_time()
    torch.manual_seed(args.seed)
    model = fashion_mnist_vit()
    images, labels = fashion_mnist_test_subset()
    n = min(args.images or len(images), len(images))
    x, labels = fmnist_preprocess(images[:n]), labels[:n]
    with torch.no_grad():
        logits = torch.cat([model(x[i:i + 250]) for i in range(0, n, 250)])
    target = logits.argmax(1)
    target_logit = logits.gather(1, target[:, None])[:, 0]
    accuracy = (target == labels).float().mean().item()
    print(f"{n} shipped Fashion-MNIST test images, accuracy {100 * accuracy:.1f}%, target = predicted class; "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}", flush=True)

    replacement = torch.full((1, 1, 1, 1), FMNIST_LOW) if args.replacement == "black" else args.replacement
    rp_kw = dict(patch_size=args.patch_size, steps=args.steps, patches_per_step=args.patches_per_step,
                 replacement=replacement, batch_size=args.batch_size)
    comp_x, comp_t, comp_m, tried = composites(model, x, target, args.pairs, args.seed)
    n_comp = len(comp_x) // 2
    print(f"pointing game: {n_comp} composites recognised by the model (top-2 logits = both classes) of "
          f"{tried} random pairs tried; {len(comp_x)} maps per method", flush=True)
    meths = methods(model, args.ig_steps, args.seed, args.patch_size if args.occlusion else 0,
                    args.only + ",random" if args.only else "")
    rows = []
    curves: Dict[str, Dict[str, np.ndarray]] = {}
    fraction = None
    morf = None
    for name, (fn, conserving) in meths.items():
        t0 = time.perf_counter()
        attr = _batched(fn, x, target, args.attr_batch)
        t_attr = time.perf_counter() - t0
        attr, finite = finite_or_zero(name, attr)
        scores, curves[name], morf = score_maps(model, x, target, attr, rp_kw)
        fraction = morf.fraction_removed.numpy()
        ratio = (attr.double().flatten(1).sum(1) / target_logit.double()).median().item() if conserving else None
        if n_comp:
            comp_attr = torch.nan_to_num(_batched(fn, comp_x, comp_t, args.attr_batch), nan=0.0, posinf=0.0,
                                         neginf=0.0)
            pg = pointing_game(comp_attr, comp_m)
            pg_mass, pg_hit = float(pg["mass"].nanmean()), float(pg["hit"].mean())
        else:
            pg_mass = pg_hit = float("nan")
        row = dict(method=name, **scores, t_attr=t_attr, finite=finite, ratio=ratio,
                   max_abs=attr.abs().flatten(1).max(1).values.median().item(), pg_mass=pg_mass, pg_hit=pg_hit)
        rows.append(row)
        print(f"  {name:45s} MoRF {row['morf']:7.3f} ± {row['morf_std']:6.3f}  LeRF {row['lerf']:7.3f}  "
              f"diff {row['morf'] - row['lerf']:7.3f}  pos.share {row['pos_share']:.2f}  gini {row['gini']:.2f}  "
              f"pointing {pg_mass:.2f} / {pg_hit:.2f}  Σ/logit {'n/a' if ratio is None else f'{ratio:.3g}'}  "
              f"(attr {t_attr:5.1f}s, perturb {row['t_rp']:5.1f}s)", flush=True)

    # run time in units of a plain forward+backward of the same batch, round robin
    tb = min(args.attr_batch, n)
    xb, tlist = x[:tb], target[:tb].tolist()
    fns = {"forward+backward": baselines(model, xb, tlist)["forward+backward"]}
    for name, (fn, _) in meths.items():
        if not name.startswith("random"):
            fns[name] = (lambda f: lambda: f(xb, target[:tb]))(fn)
    best, failed = round_robin(fns, args.repeat)
    t_fb = best["forward+backward"]
    for r in rows:
        r["rel_time"] = best[r["method"]] / t_fb if r["method"] in best else float("nan")
    print(f"forward+backward of {tb} images: {1000 * t_fb:.1f} ms (best of {args.repeat})")

    total = time.perf_counter() - t_start
    cpu_total = time.process_time() - cpu_start
    rnd = [r for r in rows if r["method"].startswith("random")][0]
    worst = min(rows, key=lambda r: r["morf"])
    random_worst = worst is rnd
    print(f"random baseline worst on MoRF: {random_worst} (lowest MoRF AOPC: {worst['method']})")
    print(f"total run time: {total:.1f} s wall, {cpu_total:.1f} s CPU time of this process "
          f"({torch.get_num_threads()} threads)")

    assert morf is not None and fraction is not None
    n_forward = len(rows) * 2 * n * (args.steps + 1)
    repl_text = {"mean": "the image's mean value", "blur": "a Gaussian-blurred copy of the image",
                 "zeros": "0 in the model's input space (the training set's mean grey)",
                 "black": "black (the background value)"}[args.replacement]
    per_class = torch.bincount(target, minlength=10).tolist()
    lines = [
        "# Quality benchmark: region perturbation on the Fashion-MNIST ViT (trained here)",
        "",
        "Regenerate with `python benchmarks/bench_quality_vit.py"
        + (f" --replacement {args.replacement}" if args.replacement != "mean" else "")
        + (f" --out benchmarks/{os.path.basename(out_md)}" if out_md and os.path.basename(out_md)
           != "RESULTS_quality_vit.md" else "")
        + (" --no-png" if out_png is None else "")
        + "` (smoke run: `--quick`).",
        "",
        "- Model: `captum_rap.zoo.fashion_mnist_vit()`: torchvision's unchanged `VisionTransformer` (28 px, 4 px "
        "patches, 6 layers, 4 heads, width 64, one-channel `conv_proj`), trained here; float32, eval mode.",
        f"- {n} shipped test images (`fashion_mnist_test_subset()`, 50 per class), accuracy "
        f"{100 * accuracy:.1f}%; target = predicted class (predictions per class "
        + ", ".join(f"{c} {k}" for c, k in zip(FMNIST_CLASSES, per_class)) + ").",
        f"- Region perturbation (`captum_rap.metrics.region_perturbation`): non-overlapping "
        f"{args.patch_size}×{args.patch_size} patches ({morf.n_patches} per image), patch relevance = sum of "
        f"the attribution over the patch, {args.patches_per_step} patches replaced per step by {repl_text}, "
        f"{args.steps} steps (up to {100 * float(fraction[-1]):.0f}% of the image).",
        "- AOPC = mean over k = 0..L of f(x⁽⁰⁾) − f(x⁽ᵏ⁾) with f the **target logit** (mean ± std over the "
        "images); the prob columns use the softmax probability from the same forward passes. MoRF (most relevant "
        "first): higher is better; LeRF (least relevant first): lower is better; MoRF − LeRF: higher is better.",
        "- Maps: LRP presets `attnlrp` (AttnLRP) and `cp_lrp` (CP-LRP), RAP (default `operations='cp_lrp'`) on its "
        "signed map and on its positive part (as in the RAP paper), RAP with AttnLRP's product / softmax rules, "
        "LRP `epsilon`; Captum's IntegratedGradients with a black-image baseline (the background), Saliency "
        "ranked by magnitude (`abs`), InputXGradient on its signed map; uniform noise (seed "
        f"{args.seed}). Random worst on MoRF: **{'yes' if random_worst else 'NO — ' + worst['method']}**.",
        "- Diagnostic rows: RAP with `stabilizer=0.01` / `0.1` (a sign-preserving epsilon in RAP's divisions; "
        "these two values were chosen after seeing the unstabilised RAP fail here, from a sweep 1e-3 / 1e-2 / "
        "0.1 / 1 on the first 100 of these images, so they are optimistic); the `epsilon` preset with the "
        "epsilon rule instead of pass-through on the affine part of the layer norms (a public `Composite`; "
        "`attnlrp` differs from `epsilon` only there and in its epsilon); `attnlrp` with the z^B rule "
        "(bounds black and white) at the patch embedding instead of epsilon, and IntegratedGradients from "
        "Captum's default zero baseline (the model input 0: the training set's mean grey), to show how "
        "the reference point of a method meets the replacement value of the evaluation.",
        "- **Σ map / logit**: median over the images of the map's sum divided by the target logit (1 = the "
        "map conserves the logit; biases, the class token and the position embedding absorb relevance in a ViT; "
        "for IntegratedGradients it is (f(x) − f(black)) / f(x)); **max\\|R\\|**: median of the largest "
        "\\|entry\\| per map (the logits are "
        f"{target_logit.abs().median().item():.2f} in median).",
        "- Relevance distribution (`captum_rap.metrics.relevance_distribution`, mean over the images): **pos. "
        "share** = positive / (positive + negative mass), **Gini** of \\|relevance\\| (0 = uniform), **top-10%** = "
        "share of Σ\\|relevance\\| in the 10% largest pixels. Descriptive.",
        f"- Pointing game (`captum_rap.metrics.pointing_game`): {n_comp} two-object composites (two images of "
        "distinct predicted classes, each squeezed into one 28 × 14 half), kept only where the model's two largest "
        f"logits are exactly these two classes ({n_comp} of {tried} seeded random pairs tried; at 28 px most "
        f"squeezed pairs are not recognised), each explained for both classes ({len(comp_x)} maps per method): "
        "**pointing (mass)** = share of the positive relevance on the half that shows the target, **hit** = the "
        "map's maximum lies on that half. 0.5 is chance.",
        f"- Run time: **time / fwd+bwd** = one attribution call on {tb} images / a plain forward+backward (input "
        f"gradient of the target logits) of the same {tb} images ({1000 * t_fb:.1f} ms), timed round robin in "
        f"this run, best of {args.repeat}; attribution time = all {n} images. Whole run {total:.0f} s wall "
        f"({n_forward} perturbed forward passes; {cpu_total:.0f} s CPU time of the process), torch "
        f"{torch.__version__}, {torch.get_num_threads()} CPU threads ({platform.processor() or platform.machine()}), "
        f"Python {platform.python_version()}, CPU shared with other jobs.",
        "",
        "| method | MoRF AOPC (logit) ↑ | LeRF AOPC (logit) ↓ | MoRF − LeRF ↑ | MoRF AOPC (prob) | LeRF AOPC (prob) "
        "| Σ map / logit | max\\|R\\| | pos. share | Gini | top-10% | pointing (mass) ↑ | hit ↑ | time / fwd+bwd "
        "| attribution time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: -(r["morf"] - r["lerf"])):
        ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.3g}"
        flag = "" if r["finite"] else " (non-finite entries set to 0)"
        lines.append(f"| {r['method']}{flag} | {r['morf']:.3f} ± {r['morf_std']:.3f} | {r['lerf']:.3f} | "
                     f"{r['morf'] - r['lerf']:.3f} | {r['pmorf']:.4f} | {r['plerf']:.4f} | {ratio} | "
                     f"{r['max_abs']:.3g} | {r['pos_share']:.2f} | {r['gini']:.2f} | {r['top_mass']:.2f} | "
                     f"{r['pg_mass']:.2f} | {r['pg_hit']:.2f} | {r['rel_time']:.1f} | {r['t_attr']:.1f} |")
    lines.append("")
    if out_png:
        lines.append(f"![mean MoRF / LeRF curves]({os.path.basename(out_png)})")
    write_results("\n".join(lines) + "\n", out_md, out_png, curves, fraction, figsize=(14, 4.4),
                  legend=dict(loc="upper left", bbox_to_anchor=(1.02, 1.0)))
    return 0 if random_worst else 1


if __name__ == "__main__":
    sys.exit(main())
