"""Sanity checks of every method on EfficientNet-Lite0 with its real ImageNet weights and
the photos shipped with scikit-image / scikit-learn (no download).

One command::

    python benchmarks/bench_sanity.py            # full run: table, figure, RESULTS_sanity.md
    python benchmarks/bench_sanity.py --quick    # smoke run: 2 photos at 64 px, 2 steps

Three checks:

1. Cascading model-parameter randomisation (Adebayo et al., NeurIPS 2018;
   ``captum_rap.metrics.parameter_randomization``): the classifier head, the head conv, then
   the blocks stage by stage down to the stem are re-drawn (each parameter tensor as
   Gaussian noise with its own mean and standard deviation, ``init="normal"``), and the
   channel-summed map of the same target class is compared with the original map
   (Spearman rank correlation of the absolute and of the signed maps, SSIM, top-10%
   intersection).  A method that explains the model must change: similarity near 1 after
   the classifier is random means the map does not depend on it.
2. Class sensitivity: Quantus' ``RandomLogit`` (SSIM between the map of the predicted
   class and of a random other class; our methods through
   ``captum_rap.quantus.explain_func``), and the cosine-similarity convergence of Sixt et
   al. (ICML 2020; ``cosine_similarity_convergence``): median |cos| between maps started
   from 4 random output relevance vectors (LRP presets, at the input and at two block
   outputs) or from 4 random target classes (every method, at the input).
3. The figure: rows = methods, columns = randomised down to each step.

Writes ``benchmarks/RESULTS_sanity.md`` and ``benchmarks/sanity_checks.png``.  Needs
``pip install "captum-rap[demo,quantus]"`` and scikit-learn.
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

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench_quality as bq  # noqa: E402  (photos, ZBox bounds, the GuidedBackprop copy)

import captum_rap  # noqa: E402
from captum_rap.composites import PRESETS  # noqa: E402
from captum_rap.metrics import (  # noqa: E402
    cosine_similarity_convergence,
    map_similarities,
    parameter_randomization,
    plot_parameter_randomization,
)
from captum_rap.zoo import efficientnet_lite0, imagenet_categories, lite0_to_unit  # noqa: E402

# cascading steps on EfficientNet-Lite0, top first (stages: blocks 0 | 1-2 | 3-4 | 5-7 | 8-10 | 11-14 | 15)
STEPS: List[Tuple[str, List[str]]] = [
    ("classifier", ["_fc"]),
    ("top block", ["_conv_head", "_bn1", "_blocks.15"]),          # head conv + block 15 (stage 7)
    ("blocks 11-14", [f"_blocks.{i}" for i in range(11, 15)]),
    ("blocks 8-10", [f"_blocks.{i}" for i in range(8, 11)]),
    ("blocks 5-7", [f"_blocks.{i}" for i in range(5, 8)]),
    ("blocks 0-4, stem", [f"_blocks.{i}" for i in range(0, 5)] + ["_conv_stem", "_bn0"]),
]
# table columns: after the classifier, after the top block, after half of the 16 blocks (8-15)
TABLE_STEPS = {"head": 0, "top block": 1, "half": 3}
CSC_LAYERS = ["_blocks.15", "_blocks.7"]
BOX = dict(low=bq.LOW, high=bq.HIGH)
PHOTOS = ["chelsea", "coffee", "astronaut", "rocket", "china", "flower"]

MapFn = Callable[[Tensor, Tensor], Tensor]


def _preset_kwargs(preset: str) -> dict:
    return BOX if "box" in preset else {}


def method_table(ig_steps: int, only: str = "") -> Dict[str, Tuple[Callable[[nn.Module], MapFn], dict]]:
    """name -> (factory(model) -> f(x, target) -> channel-summed map (N, 1, H, W),
    explain_func kwargs for Quantus or None).  RAP's positive part is derived from RAP's
    maps (the positive part of the channel-summed map) rather than run again."""
    from captum.attr import GuidedBackprop, InputXGradient, IntegratedGradients, Saliency

    def chsum(fn):
        return lambda x, t: fn(x, t).detach().sum(1, keepdim=True)

    table: Dict[str, Tuple[Callable[[nn.Module], MapFn], dict]] = {
        "RAP (signed)": (lambda m: chsum(lambda x, t: captum_rap.RAP(m).attribute(x, target=t)),
                         {"method": "rap"}),
    }
    for p in sorted(PRESETS):
        table[f"LRP {p}"] = ((lambda p: lambda m: chsum(lambda x, t: captum_rap.LRP(m, p, **_preset_kwargs(p))
                                                        .attribute(x, target=t)))(p),
                             {"method": f"lrp:{p}", **_preset_kwargs(p)})
    table["CLRP1 (zplus_box)"] = (lambda m: chsum(lambda x, t: captum_rap.CLRP(m, **BOX).attribute(x, target=t)),
                                  {"method": "clrp1", **BOX})
    table["SGLRP (zplus_box)"] = (lambda m: chsum(lambda x, t: captum_rap.SGLRP(m, **BOX).attribute(x, target=t)),
                                  {"method": "sglrp", **BOX})
    table[f"Captum IntegratedGradients ({ig_steps} steps)"] = (
        lambda m: chsum(lambda x, t: IntegratedGradients(m).attribute(x, target=t, n_steps=ig_steps,
                                                                      internal_batch_size=ig_steps)), {})
    table["Captum Saliency (abs)"] = (lambda m: chsum(lambda x, t: Saliency(m).attribute(x, target=t, abs=True)), {})
    table["Captum InputXGradient"] = (lambda m: chsum(lambda x, t: InputXGradient(m).attribute(x, target=t)), {})
    # GuidedBackprop runs on a copy made from the (randomised) model at every step
    table["Captum GuidedBackprop"] = (lambda m: chsum(lambda x, t: GuidedBackprop(bq.guided_copy(m))
                                                      .attribute(x, target=t)), {})
    table["input (ignores the model; control)"] = (lambda m: chsum(lambda x, t: x * 1.0), {})
    if only:
        keys = [k.strip().lower() for k in only.split(",")]
        table = {k: v for k, v in table.items() if any(q in k.lower() for q in keys) or k.startswith("input")}
    return table


def _quantus_fn(factory: Callable[[nn.Module], MapFn], positive: bool = False):
    """A Quantus explain_func for a bench method (Captum methods; RAP's positive part)."""
    def explain(model, inputs, targets, **kwargs):
        x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
        t = torch.as_tensor(np.asarray(targets)).long().reshape(-1)
        a = factory(model)(x, t)
        return (a.clamp(min=0) if positive else a).numpy()
    return explain


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 2 photos at 64 px, 2 steps, 4 methods, "
                   "no files written unless --out/--png are given")
    p.add_argument("--images", type=int, default=None, help=f"photos (default {len(PHOTOS)})")
    p.add_argument("--size", type=int, default=224, help="input size in pixels (default 224)")
    p.add_argument("--steps", type=int, default=None, help=f"cascading steps (default all {len(STEPS)})")
    p.add_argument("--init", default="normal", choices=["normal", "reset"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ig-steps", type=int, default=16)
    p.add_argument("--csc-images", type=int, default=3)
    p.add_argument("--csc-vectors", type=int, default=4)
    p.add_argument("--csc-layers", default=",".join(CSC_LAYERS), help="hidden layers of the LRP CSC "
                   "(comma-separated module names; empty: input only)")
    p.add_argument("--attr-batch", type=int, default=6, help="images per attribution call")
    p.add_argument("--only", default="", help="comma-separated substrings of method names")
    p.add_argument("--no-quantus", action="store_true", help="skip Quantus' RandomLogit")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="markdown output (default benchmarks/RESULTS_sanity.md)")
    p.add_argument("--png", default=None, help="figure (default benchmarks/sanity_checks.png)")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    only = args.only
    if args.quick:
        args.images = args.images or 2
        args.size = 64 if args.size == 224 else args.size
        args.steps = args.steps or 2
        args.csc_images = min(args.csc_images, 2)
        args.csc_vectors = min(args.csc_vectors, 3)
        args.csc_layers = "_blocks.15"
        args.ig_steps = min(args.ig_steps, 4)
        only = only or "rap,epsilon_plus,clrp,saliency"
    out_md = args.out or (None if args.quick else os.path.join(HERE, "RESULTS_sanity.md"))
    out_png = args.png or (None if args.quick else os.path.join(HERE, "sanity_checks.png"))
    steps = STEPS[: args.steps or len(STEPS)]

    t_start, cpu_start = time.perf_counter(), time.process_time()
    torch.manual_seed(args.seed)
    model = efficientnet_lite0()
    x, names = bq.load_photos(PHOTOS[: args.images or len(PHOTOS)])
    if args.size != 224:
        x = torch.nn.functional.interpolate(x, size=(args.size, args.size), mode="bilinear", antialias=True,
                                            align_corners=False)
    cats = imagenet_categories()
    with torch.no_grad():
        logits = model(x)
    target = logits.argmax(1)
    print(f"{len(names)} photos at {args.size} px: " + ", ".join(f"{n} -> {cats[t]}" for n, t in
                                                                 zip(names, target.tolist())), flush=True)

    def anchor() -> float:
        """Median time of a plain forward+backward (input gradient) of the photos: the unit
        the run time is reported in, measured in the same run (the machine may be shared)."""
        ts = []
        for _ in range(3):
            xa = x.clone().requires_grad_(True)
            t0 = time.perf_counter()
            model(xa).gather(1, target.view(-1, 1)).sum().backward()
            ts.append(time.perf_counter() - t0)
        return sorted(ts)[1]

    anchor_start = anchor()
    print(f"anchor: forward+backward of the {len(names)} photos {anchor_start:.2f} s", flush=True)
    layers = [mods for _, mods in steps]
    labels = [lab for lab, _ in steps]
    results = {}
    times: Dict[str, float] = {}
    for name, (factory, qkw) in method_table(args.ig_steps, only).items():
        t0 = time.perf_counter()
        res = parameter_randomization(model, factory, x, target=target, layers=layers, labels=labels,
                                      init=args.init, seed=args.seed, batch_size=args.attr_batch, return_maps=True)
        times[name] = time.perf_counter() - t0
        results[name] = res
        if name.startswith("RAP"):
            pos = {k: [] for k in res.similarity}
            for rmap in res.randomized:
                s = map_similarities(res.original.clamp(min=0), rmap.clamp(min=0))
                for k in pos:
                    pos[k].append(s[k])
            results["RAP (positive part)"] = type(res)(**{**res.__dict__, "similarity": {
                k: torch.stack(v) for k, v in pos.items()},
                "original": res.original.clamp(min=0), "randomized": [m.clamp(min=0) for m in res.randomized]})
            times["RAP (positive part)"] = 0.0
        print(f"  {name:42s} " + " ".join(f"{v:5.2f}" for v in res.mean("spearman_abs").tolist())
              + f"   ({times[name]:.0f} s)", flush=True)
    method_names = list(results)
    quantus_kw = {k: v[1] for k, v in method_table(args.ig_steps, only).items()}
    factories = {k: v[0] for k, v in method_table(args.ig_steps, only).items()}

    # class sensitivity: Quantus RandomLogit (SSIM, Quantus' defaults) with the maps above as a_batch
    random_logit: Dict[str, float] = {}
    t_q = time.perf_counter()
    if not args.no_quantus:
        try:
            import quantus
        except ImportError:
            print("quantus is not installed: RandomLogit skipped (pip install 'captum-rap[quantus]')")
        else:
            from captum_rap.quantus import explain_func

            xn, yn = x.numpy(), target.numpy()
            for name in method_names:
                if name.startswith("input"):
                    continue
                res = results[name]
                a_batch = res.original.numpy()
                if name == "RAP (positive part)":
                    fn, kw = _quantus_fn(factories["RAP (signed)"], positive=True), {}
                elif quantus_kw.get(name):
                    fn, kw = explain_func, dict(quantus_kw[name])
                else:
                    fn, kw = _quantus_fn(factories[name]), {}
                metric = quantus.RandomLogit(num_classes=logits.shape[1], seed=args.seed, disable_warnings=True)
                try:
                    scores = metric(model=model, x_batch=xn, y_batch=yn, a_batch=a_batch, explain_func=fn,
                                    explain_func_kwargs=kw, batch_size=args.attr_batch, device="cpu")
                    random_logit[name] = float(np.nanmean(np.asarray(scores, dtype=float)))
                except AssertionError as exc:            # Quantus rejects e.g. all-zero maps
                    print(f"  RandomLogit {name}: Quantus refused the maps ({exc})")
                    random_logit[name] = float("nan")
            print("Quantus RandomLogit (SSIM, target vs random class): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in random_logit.items()), flush=True)
    t_q = time.perf_counter() - t_q

    # cosine-similarity convergence
    t_c = time.perf_counter()
    xc = x[: args.csc_images]
    csc: Dict[str, Dict[str, float]] = {}
    for name in method_names:
        if name.startswith("input") or name == "RAP (positive part)":
            continue
        row: Dict[str, float] = {}
        if name.startswith("LRP "):
            preset = name.split(" ", 1)[1]
            lrp = captum_rap.LRP(model, preset, **_preset_kwargs(preset))
            r = cosine_similarity_convergence(lrp, xc, layers=[c for c in args.csc_layers.split(",") if c],
                                              n_vectors=args.csc_vectors, seed=args.seed)
            row.update({f"normal@{loc}": r.median(loc) for loc in r.locations})
        fac = factories[name]

        class _Wrapped:                     # the bench's map function as an attribution for seeds="classes"
            forward_func = model

            @staticmethod
            def attribute(inputs, target=None):
                return fac(model)(inputs, target)

        r = cosine_similarity_convergence(_Wrapped(), xc, n_vectors=args.csc_vectors, seeds="classes",
                                          seed=args.seed)
        row["classes@input"] = r.median("input")
        csc[name] = row
        print(f"  CSC {name:40s} " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
    t_c = time.perf_counter() - t_c

    anchor_end = anchor()
    total = time.perf_counter() - t_start
    cpu_total = time.process_time() - cpu_start
    threads = torch.get_num_threads()
    anchor_mean = (anchor_start + anchor_end) / 2
    print(f"total run time: {total:.0f} s wall, {cpu_total:.0f} s CPU time of this process ({threads} threads), "
          f"= {total / anchor_mean:.0f} forward+backward passes of the photos (anchor {anchor_start:.2f} s at the "
          f"start, {anchor_end:.2f} s at the end)")

    # ---- report
    def fmt(v: float) -> str:
        return "n/a" if v != v else f"{v:.2f}"

    tcols = {k: i for k, i in TABLE_STEPS.items() if i < len(steps)}
    lines = [
        "# Sanity checks on EfficientNet-Lite0 (ImageNet weights)",
        "",
        "Regenerate with `python benchmarks/bench_sanity.py` (smoke run: `--quick`).",
        "",
        f"- {len(names)} photos at {args.size} px, target = the trained model's predicted class (kept fixed "
        "while randomising): " + ", ".join(f"{n} → {cats[t]}" for n, t in zip(names, target.tolist())) + ".",
        f"- Cascading model-parameter randomisation (`captum_rap.metrics.parameter_randomization`, "
        f"`init=\"{args.init}\"`"
        + (": every parameter tensor of a step re-drawn as Gaussian noise with that tensor's mean and standard "
           "deviation, batch-norm statistics kept" if args.init == "normal" else
           ": each module's `reset_parameters()`, as Quantus' MPRT")
        + f", seed {args.seed}), top first: " + " → ".join(labels) + " (classifier = `_fc`; top block = the "
        "head conv `_conv_head`/`_bn1` and the last block `_blocks.15`; after blocks 8-10, the top half of the 16 "
        "blocks is random; the last step randomises the rest). Similarity between the channel-summed "
        "map of the trained model and of the randomised one, mean over the photos: **Spearman |·|** = rank "
        "correlation of the absolute maps (Adebayo et al.'s measure), Spearman = of the signed maps, SSIM of the "
        "absolute maps scaled to [0, 1], top-10% = share of the 10% largest |entries| still in the top 10%. "
        "**Lower is better** (the map depends on the weights); ≈1 after randomising the classifier means the "
        "map ignores the classifier.",
        "- RAP (positive part) = positive part of RAP's channel-summed map (same runs as RAP (signed)). "
        "LRP box presets, CLRP1 and SGLRP use the ZBox bounds of the `(x − 127)/128` preprocessing. "
        "GuidedBackprop runs on a ReLU6→ReLU-subclass copy (as in the quality benchmark) made from the "
        "randomised model at each step. \"input\" is a control that ignores the model (similarity 1 by "
        "construction).",
        "- Class sensitivity: **RandomLogit** = Quantus 0.6 `RandomLogit` (its defaults: SSIM of the "
        "max-normalised maps of the predicted class and of one random other class, computed by Quantus on the "
        "flattened maps), lower = more class-specific; our methods run through "
        "`captum_rap.quantus.explain_func`. **CSC** (Sixt et al. 2020, `cosine_similarity_convergence`): median "
        f"|cos| over {args.csc_images} photos × {args.csc_vectors * (args.csc_vectors - 1) // 2} pairs of "
        f"{args.csc_vectors} relevances started at the output: `classes` = {args.csc_vectors} random target "
        "classes (every method, at the input); `normal` = standard normal relevance vectors over the 1000 "
        "logits (LRP presets, which take any starting relevance), measured at the output of "
        f"{', '.join(c for c in args.csc_layers.split(',') if c) or 'no hidden layer'} and at the input. "
        "≈1 = the map is the same whatever the class / starting relevance.",
        f"- Run time: {total:.0f} s wall (randomisation {sum(times.values()):.0f} s, RandomLogit {t_q:.0f} s, "
        f"CSC {t_c:.0f} s; {cpu_total:.0f} s CPU time of the process), torch {torch.__version__}, {threads} CPU "
        f"threads ({platform.processor() or platform.machine()}), OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}, CPU shared with other jobs. In the unit of "
        f"the same run's anchor, one forward+backward pass of the {len(names)} photos ({anchor_start:.2f} s at "
        f"the start, {anchor_end:.2f} s at the end): **{total / anchor_mean:.0f} anchors**; on idle cores an "
        "anchor is ~0.3 s (Saliency on the quality benchmark's 12 photos took 0.6 s), i.e. "
        f"~{total / anchor_mean * 0.3 / 60:.0f} min.",
        "",
        "| method | " + " | ".join(f"Spearman \\|·\\| {k}" for k in tcols) + " | "
        + " | ".join(f"SSIM {k}" for k in tcols) + " | RandomLogit (SSIM) | CSC classes@input |",
        "|---|" + "---|" * (2 * len(tcols) + 2),
    ]
    for name in method_names:
        r = results[name]
        sa, ss = r.mean("spearman_abs"), r.mean("ssim") if "ssim" in r.similarity else None
        cells = [fmt(float(sa[i])) for i in tcols.values()]
        cells += [fmt(float(ss[i])) if ss is not None else "n/a" for i in tcols.values()]
        cells += [fmt(random_logit.get(name, float("nan"))), fmt(csc.get(name, {}).get("classes@input", float("nan")))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "All steps (cascading, mean over the photos; Spearman |·| / Spearman / SSIM / top-10%):", "",
              "| method | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for name in method_names:
        r = results[name]
        cells = []
        for i in range(len(labels)):
            vals = [float(r.mean(k)[i]) for k in ("spearman_abs", "spearman", "ssim", "topk") if k in r.similarity]
            cells.append(" / ".join(fmt(v) for v in vals))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Output change per step (relative L2 distance of the logits from the trained model's, mean "
              "over the photos): " + ", ".join(f"{lab} {float(c):.2f}" for lab, c in
                                                zip(labels, next(iter(results.values())).output_change)) + ".", ""]
    if csc:
        keys = sorted({k for row in csc.values() for k in row}, key=lambda k: (k != "classes@input", k))
        lines += ["Cosine-similarity convergence (median |cos|):", "",
                  "| method | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for name, row in csc.items():
            lines.append(f"| {name} | " + " | ".join(fmt(row.get(k, float("nan"))) for k in keys) + " |")
        lines.append("")
    lines.append("![sanity check figure](sanity_checks.png)" if out_png else "")
    text = "\n".join(lines) + "\n"
    print(text)
    if out_md:
        with open(out_md, "w") as fh:
            fh.write(text)
        print("wrote", out_md)
    if out_png:
        fig_methods = [n for n in ("RAP (signed)", "RAP (positive part)", "LRP epsilon", "LRP epsilon_plus",
                                   "LRP epsilon_gamma_box", "LRP zplus_box", "CLRP1 (zplus_box)",
                                   "SGLRP (zplus_box)", f"Captum IntegratedGradients ({args.ig_steps} steps)",
                                   "Captum Saliency (abs)", "Captum GuidedBackprop",
                                   "input (ignores the model; control)") if n in results]
        fig = plot_parameter_randomization({n: results[n] for n in fig_methods}, example=0,
                                           image=lite0_to_unit(x[0]), cell_size=1.05)
        fig.savefig(out_png, dpi=72)
        print("wrote", out_png, os.path.getsize(out_png), "bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
