"""The ``attribute-dataset`` and ``evaluate-dataset`` commands.

``add_parsers(subparsers)`` adds both to an ``argparse`` sub-parser set (the ``captum-rap``
command line) and ``run(args)`` executes a parsed command; ``main(argv)`` is the stand-alone
entry point ``python -m captum_rap.datasets``.  Both commands run under
``torchrun --standalone --nproc_per_node=N -m captum_rap.datasets ...`` unchanged.

User errors (missing folder, unknown method or model, a foreign output folder, ...) print one
line and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

__all__ = ["add_parsers", "run", "main", "METHODS"]

#: --method values (lrp takes :PRESET)
METHODS = ("rap", "lrp", "clrp1", "clrp2", "sglrp", "cd", "saliency", "input_x_gradient", "integrated_gradients")
FMNIST_VIT = "fashion-mnist-vit"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DatasetCLIError(Exception):
    """A user error of these commands (one line, exit status 2)."""


# ----------------------------------------------------------------------------- models
class Preprocess:
    """HWC uint8 RGB image (already resized) -> the model's input tensor (picklable, so
    loader workers can use it; its attributes are part of the run's identity)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __call__(self, img: np.ndarray):
        import torch

        x = torch.from_numpy(np.array(img, copy=True)).float()
        if self.kind == "fmnist":
            from ..zoo import FMNIST_MEAN, FMNIST_STD

            grey = (x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114).round()
            return ((grey / 255.0 - FMNIST_MEAN) / FMNIST_STD)[None]
        x = x.permute(2, 0, 1)
        if self.kind == "lite0":
            return (x - 127.0) / 128.0
        return (x / 255.0 - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


def load(spec: str, weights: Optional[str]) -> Tuple[Any, str, Any, Any, str]:
    """``(model, preprocess kind, low, high, description)`` for ``--model``."""
    if spec.strip().lower() in (FMNIST_VIT, "fmnist-vit"):
        if weights is not None:
            raise DatasetCLIError(f"{FMNIST_VIT} has its weights shipped; --weights is not used with it")
        from ..zoo import FMNIST_HIGH, FMNIST_LOW, fashion_mnist_vit

        try:
            return fashion_mnist_vit(), "fmnist", FMNIST_LOW, FMNIST_HIGH, "Fashion-MNIST ViT (shipped weights)"
        except ImportError as exc:
            raise DatasetCLIError(str(exc)) from None
    from ..cli.common import CLIError
    from ..cli.loading import load_model

    if spec.strip().lower().startswith("torchvision:") and weights is None:
        raise DatasetCLIError("a torchvision model needs --weights FILE here (random weights would differ in every "
                              "process and every resumed run)")
    try:
        ex = load_model(spec, weights)
    except CLIError as exc:
        raise DatasetCLIError(str(exc)) from None
    kind = "imagenet" if spec.strip().lower().startswith("torchvision:") else "lite0"
    return ex.model, kind, ex.low, ex.high, ex.description


def build_method(spec: str, model: Any, low: Any, high: Any, size: int, cd_block: int) -> Tuple[Any, Dict[str, Any]]:
    """``(attribution, attribute_kwargs)`` for ``--method``."""
    import torch

    from .. import CD, CLRP, LRP, RAP, SGLRP
    from ..composites import PRESETS, preset_keywords

    s = spec.strip().lower()
    name, _, preset = s.partition(":")
    if name not in METHODS:
        raise DatasetCLIError(f"unknown method {spec!r}; choose one of rap, lrp[:PRESET], clrp1, clrp2, sglrp, cd, "
                              "saliency, input_x_gradient, integrated_gradients")
    if preset and name != "lrp":
        raise DatasetCLIError(f"method {name} takes no preset (only lrp:PRESET does)")
    box = {"low": low, "high": high}
    if name == "rap":
        return RAP(model), {}
    if name == "lrp":
        preset = (preset or "epsilon_gamma_box").replace("-", "_")
        if preset not in PRESETS:
            raise DatasetCLIError(f"unknown LRP preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}")
        return LRP(model, preset, **{k: v for k, v in box.items() if k in preset_keywords(preset)}), {}
    if name in ("clrp1", "clrp2"):
        return CLRP(model, variant=int(name[-1]), **box), {}
    if name == "sglrp":
        return SGLRP(model, **box), {}
    if name == "cd":
        if size <= 0:
            raise DatasetCLIError("--method cd needs a fixed --size (its blocks are a grid over the image)")
        block = cd_block or max(1, size // 8)
        if not 1 <= block <= size:
            raise DatasetCLIError(f"--cd-block must be in 1..{size} pixels, got {block}")
        ids = torch.arange(size) // block
        mask = (ids[:, None] * int(ids.max() + 1) + ids[None, :]).view(1, 1, size, size)
        return CD(model), {"feature_mask": mask}
    from captum.attr import InputXGradient, IntegratedGradients, Saliency

    cls = {"saliency": Saliency, "input_x_gradient": InputXGradient, "integrated_gradients": IntegratedGradients}[name]
    return cls(model), {}


# ----------------------------------------------------------------------------- parsers
def add_parsers(subparsers: Any) -> None:
    """Add ``attribute-dataset`` and ``evaluate-dataset`` to an argparse sub-parser set
    (each parser's ``func`` default is :func:`run`)."""
    a = subparsers.add_parser(
        "attribute-dataset", help="attribute every image of a folder; shards + manifest, resumable, torchrun-ready",
        description="Attribute every image of DIR (a flat folder, or one sub-folder per class as torchvision's "
                    "ImageFolder) with one method; maps in shards plus a manifest in --out.  Run it again with "
                    "the same arguments to resume; under torchrun --nproc_per_node=N the ranks share the work.")
    a.add_argument("source", metavar="DIR_OR_IMAGEFOLDER")
    a.add_argument("--method", default="rap", help="rap (default) | lrp[:PRESET] | clrp1 | clrp2 | sglrp | cd | "
                                                   "saliency | input_x_gradient | integrated_gradients")
    a.add_argument("--model", default="efficientnet-lite0",
                   help=f"efficientnet-lite0 (default), torchvision:NAME (with --weights) or {FMNIST_VIT}")
    a.add_argument("--weights", default=None, help="state_dict file (torch.load(..., weights_only=True))")
    a.add_argument("--out", required=True, help="output folder (new, empty, or this run's to resume)")
    a.add_argument("--size", type=int, default=None,
                   help="resize every image to SIZE x SIZE (default 224, 28 for the Fashion-MNIST ViT; 0: no resize, "
                        "images must then share one size)")
    a.add_argument("--target", default="pred", help="pred (default), label (the class folder) or a class index")
    a.add_argument("--batch-size", type=int, default=16, help="images per batch (default 16)")
    a.add_argument("--shard-size", type=int, default=256, help="images per shard (default 256)")
    a.add_argument("--num-workers", type=int, default=0, help="image loading processes (default 0)")
    a.add_argument("--save-dtype", default="float32", choices=("float32", "float16"))
    a.add_argument("--format", default="auto", choices=("auto", "safetensors", "npz"))
    a.add_argument("--cd-block", type=int, default=0, help="CD block size in pixels (default size // 8)")
    a.add_argument("--on-error", default="skip", choices=("skip", "raise"),
                   help="unreadable / non-image files: skip and list them (default) or stop")
    a.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    a.add_argument("--no-progress", action="store_true", help="no progress bar")
    a.set_defaults(func=run)

    e = subparsers.add_parser(
        "evaluate-dataset", help="region perturbation (MoRF / LeRF AOPC) over attribute-dataset outputs",
        description="Region perturbation over the maps of one or more attribute-dataset runs (model and images "
                    "as recorded in each run); prints a summary table.")
    e.add_argument("outs", metavar="OUT", nargs="+")
    e.add_argument("--metric", default="region_perturbation", choices=("region_perturbation",))
    e.add_argument("--patch-size", type=int, default=None, help="patch edge in pixels (default size // 14)")
    e.add_argument("--steps", type=int, default=None, help="perturbation steps (default: all patches)")
    e.add_argument("--patches-per-step", type=int, default=1)
    e.add_argument("--orders", default="morf,lerf", help="morf,lerf (default), morf or lerf")
    e.add_argument("--replacement", default="mean", choices=("mean", "blur", "zeros"))
    e.add_argument("--positive-only", action="store_true", help="rank patches by positive relevance only")
    e.add_argument("--batch-size", type=int, default=16, help="images per region_perturbation call (default 16)")
    e.add_argument("--num-workers", type=int, default=0)
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m captum_rap.datasets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_parsers(parser.add_subparsers(dest="command"))
    return parser


# ----------------------------------------------------------------------------- commands
def _dataset(source: str, kind: str, size: int):
    from .images import ImageFiles

    return ImageFiles(source, transform=Preprocess(kind), size=size if size > 0 else None)


def _attribute(args: argparse.Namespace) -> int:
    from .attribute import attribute_dataset

    source = os.path.abspath(args.source)
    if not os.path.isdir(source):
        raise DatasetCLIError(f"not a folder: {args.source}")
    model, kind, low, high, desc = load(args.model, args.weights)
    size = (28 if kind == "fmnist" else 224) if args.size is None else args.size
    if size < 0 or size > 4096:
        raise DatasetCLIError(f"--size must be 0 (no resize) or a size in pixels up to 4096, got {size}")
    if kind == "fmnist" and size != 28:
        raise DatasetCLIError(f"{FMNIST_VIT} takes 28 x 28 images (--size 28), got --size {size}")
    method, kwargs = build_method(args.method, model, low, high, size, args.cd_block)
    target: Any = args.target.strip().lower()
    if target in ("pred", "predicted"):
        target = "predicted"
    elif target != "label":
        try:
            target = int(target)
        except ValueError:
            raise DatasetCLIError(f"--target must be pred, label or a class index, got {args.target!r}") from None
    ds = _dataset(source, kind, size)
    if target == "label" and not ds.classes:
        raise DatasetCLIError(f"--target label needs one sub-folder per class in {args.source}")
    meta = {"label": args.method.strip().lower(), "cli": {
        "source": source, "model": args.model, "weights": os.path.abspath(args.weights) if args.weights else None,
        "size": size, "method": args.method, "cd_block": args.cd_block, "classes": ds.classes}}
    run_ = attribute_dataset(method, ds, args.out, target=target, batch_size=args.batch_size,
                             shard_size=args.shard_size, num_workers=args.num_workers, save_dtype=args.save_dtype,
                             format=args.format, attribute_kwargs=kwargs or None, on_error=args.on_error,
                             overwrite=args.overwrite, progress=not args.no_progress, metadata=meta)
    if run_.rank == 0:
        s = run_.summary
        print(f"{args.method} on {desc}: {s['n_attributed']} of {s['n_images']} images attributed, "
              f"{s['n_skipped']} skipped; {run_.shards_computed} shard(s) computed, {run_.shards_reused} reused"
              + (f" on rank 0 of {run_.world_size}" if run_.world_size > 1 else "")
              + (f", {run_.images_per_second:.1f} images/s" if run_.images_computed else ""))
        if s["n_skipped"]:
            print(f"skipped images are listed in {os.path.join(args.out, 'skipped.jsonl')}")
        print(f"wrote {args.out}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from ._common import read_json
    from .evaluate import evaluate_dataset, summary_table

    orders = tuple(o.strip() for o in args.orders.split(",") if o.strip())
    evaluations = []
    for out in args.outs:
        path = os.path.join(out, "run.json")
        if not os.path.isfile(path):
            raise DatasetCLIError(f"{out} holds no attribute-dataset run (no run.json)")
        cli = (read_json(path).get("metadata") or {}).get("cli")
        if not isinstance(cli, dict):
            raise DatasetCLIError(f"{out} was not written by the attribute-dataset command; call "
                                  "captum_rap.datasets.evaluate_dataset with its model and dataset")
        model, kind, _, _, _ = load(cli["model"], cli["weights"])
        if not os.path.isdir(cli["source"]):
            raise DatasetCLIError(f"the images of {out} are no longer in {cli['source']}")
        ds = _dataset(cli["source"], kind, cli["size"])
        patch = args.patch_size or max(1, (cli["size"] or 224) // 14)
        ev = evaluate_dataset(out, model, ds, metric=args.metric, patch_size=patch, steps=args.steps,
                              patches_per_step=args.patches_per_step, orders=orders, replacement=args.replacement,
                              positive_only=args.positive_only, batch_size=args.batch_size,
                              num_workers=args.num_workers, progress=not args.no_progress)
        evaluations.append(ev)
    if evaluations[0].rank == 0:
        print(summary_table(evaluations))
        for ev in evaluations:
            print(f"wrote {ev.folder}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Execute a parsed ``attribute-dataset`` / ``evaluate-dataset`` command; returns the
    exit status (2 and one line on stderr for user errors)."""
    try:
        if args.command == "attribute-dataset":
            return _attribute(args)
        if args.command == "evaluate-dataset":
            return _evaluate(args)
    except (DatasetCLIError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"captum-rap {args.command}: error: {first}", file=sys.stderr)
        return 2
    raise ValueError(f"not a dataset command: {args.command!r}")


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m captum_rap.datasets``: returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return run(args)
