"""``captum-rap explain``: one explanation of one image, written as a figure, a raw map or
(ACD) the hierarchy."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any, Optional, Tuple

import numpy as np

from .common import DEFAULT_SIZE, OUTPUT_KINDS, CLIError, _box_for, _use_agg, parse_method, resolve_target
from .loading import Explained, load_image, load_model


def _attribute(method: str, preset: Optional[str], ex: Explained, x, target: int, args) -> Tuple[Any, Any]:
    """Run one method; returns ``(map, acd_tree_or_None)``."""
    from .. import ACD, CLRP, LRP, RAP, SGLRP

    box = {"low": ex.low, "high": ex.high}
    if method == "rap":
        return RAP(ex.model).attribute(x, target=target), None
    if method == "lrp":
        return LRP(ex.model, preset, **_box_for(preset, box)).attribute(x, target=target), None
    if method in ("clrp1", "clrp2"):
        return CLRP(ex.model, variant=int(method[-1]), **box).attribute(x, target=target), None
    if method == "sglrp":
        return SGLRP(ex.model, **box).attribute(x, target=target), None
    sweep = args.acd_sweep or max(1, x.shape[-1] // 7)
    tree = ACD(ex.model).hierarchy(x, target=target, sweep_dim=sweep, percentile_include=args.acd_percentile,
                                   num_iters=args.acd_iters, progress=not args.no_progress and sys.stderr.isatty())
    return tree.attribution_map(None).float(), tree


def _check_output_file(path: str) -> None:
    """Refuse an output file that cannot be written, before any work."""
    if not path or not path.strip():
        raise CLIError("--out must name a file")
    out_dir = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(out_dir):
        raise CLIError(f"output folder does not exist: {out_dir}")
    if os.path.isdir(path):
        raise CLIError(f"--out names a folder, not a file: {path}")
    try:
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as exc:
        raise CLIError(f"cannot write to the folder {out_dir}: {exc.strerror or exc}") from None
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise CLIError(f"cannot write {path}: permission denied")


def _check_acd_args(args: argparse.Namespace, size: Optional[int]) -> None:
    """The ACD options (the block size against ``size`` unless it is None)."""
    if size is not None and not 0 <= args.acd_sweep < size:
        raise CLIError(f"--acd-sweep must be a block size in 1..{size - 1} pixels (0: size // 7), got "
                       f"{args.acd_sweep}")
    if not 1 <= args.acd_iters <= 100:
        raise CLIError(f"--acd-iters must be in 1..100, got {args.acd_iters}")
    if not 15 <= args.acd_percentile <= 100:  # False for NaN
        raise CLIError(f"--acd-percentile must be in [15, 100], got {args.acd_percentile}")


def run_explain(args: argparse.Namespace) -> int:
    """``captum-rap explain``: validate everything, explain one image, write ``--out``."""
    import torch

    from .._engine import UnsupportedOperationError

    method, preset = parse_method(args.method)
    ext = os.path.splitext(args.out)[1].lower()
    if ext not in OUTPUT_KINDS:
        raise CLIError(f"--out must end in .png, .npy, .pt or (acd) .json, got {args.out!r}")
    if ext == ".json" and method != "acd":
        raise CLIError("a .json output is the ACD hierarchy; use --method acd (or .png/.npy/.pt)")
    if args.size is not None and not 16 <= args.size <= 1024:
        raise CLIError(f"--size must be between 16 and 1024 pixels, got {args.size}")
    if method == "acd":  # the size is known before loading unless a weights file may set it (ViT)
        _check_acd_args(args, args.size if args.size is not None else None if args.weights else DEFAULT_SIZE)
    _check_output_file(args.out)
    image, image_desc = load_image(args.image)
    ex = load_model(args.model, args.weights)
    size = args.size if args.size is not None else (ex.image_size or DEFAULT_SIZE)
    if ex.image_size is not None and size != ex.image_size:
        raise CLIError(f"{args.model} takes {ex.image_size}x{ex.image_size} inputs only (its image_size), got "
                       f"--size {size}; use --size {ex.image_size} or leave --size out")
    if method == "acd":
        _check_acd_args(args, size)
    x = ex.preprocess(image, size)
    try:
        with torch.no_grad():
            logits = ex.model(x)
    except (RuntimeError, AssertionError, ValueError) as exc:  # e.g. an input too small for the pooling
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = (f"it runs at {ex.probe_size}x{ex.probe_size}: try --size {ex.probe_size}"
                if ex.probe_size and ex.probe_size != size else "try a larger --size")
        raise CLIError(f"{args.model} cannot run on a {size}x{size} input ({hint}): {first[:200]}") from None
    probs = logits.softmax(1)[0]
    top = probs.topk(min(5, probs.numel()))
    print(f"model: {ex.description}; image: {image_desc} at {size}x{size}")
    if bool((logits == logits[0, 0]).all()):
        print("warning: all outputs of the model are equal (e.g. torchvision initialises a ViT's head to "
              "zero): every map of it is zero", file=sys.stderr)
    print("prediction: " + ", ".join(f"{ex.names[int(i)]} ({int(i)}) {float(p):.3f}"
                                   for p, i in zip(top.values, top.indices)))
    target = resolve_target(args.target, logits, ex.names)
    label = f"{method}" + (f":{preset}" if preset else "")
    print(f"target: {ex.names[target]} ({target}), probability {float(probs[target]):.3f}, "
          f"logit {float(logits[0, target]):+.4f}")
    started = time.perf_counter()
    try:
        attr, tree = _attribute(method, preset, ex, x, target, args)
    except (UnsupportedOperationError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CLIError(f"{label} cannot explain {args.model}: {first}") from None
    attr = attr.detach()
    seconds = time.perf_counter() - started
    if tree is None:
        print(f"{label}: sum {float(attr.sum()):+.4f}, relevant (positive) {float(attr.clamp(min=0).sum()):+.4g}, "
              f"irrelevant (negative) {float(attr.clamp(max=0).sum()):+.4g} ({seconds:.1f} s)")
    else:
        units = np.asarray(tree.unit_scores)
        best = max(tree.roots(), key=lambda g: g.score)
        print(f"acd: {len(tree)} levels, {tree.cd_evaluations} CD evaluations, {tree.sweep_dim} px blocks "
              f"scoring {units.min():+.3f} .. {units.max():+.3f}; top group {best.size} px, "
              f"score {best.score:+.3f} ({seconds:.1f} s)")
    if ext == ".npy":
        np.save(args.out, attr.cpu().numpy())
    elif ext == ".pt":
        torch.save(attr.cpu(), args.out)
    elif ext == ".json":
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(tree.to_json())
    else:
        _use_agg()
        display = ex.unnormalize(x)
        if method == "rap":
            from ..visualization import visualize_rap

            fig, _ = visualize_rap(attr[0], display, fig_size=(12, 3.4))
            fig.suptitle(f"RAP for {ex.names[target]!r}", fontsize=10)
        elif tree is not None:
            from ..visualization import acd_figure

            fig = acd_figure(tree, display, ex.names)
        else:
            from ..visualization import heatmap_figure

            fig = heatmap_figure(attr[0], display, f"{label} for {ex.names[target]!r}")
        fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")
    return 0
