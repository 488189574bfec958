"""``python -m captum_rap`` / ``captum-rap``: a short offline demo.

The demo builds a seeded convolutional network and a synthetic image (no download, runs
anywhere torch runs), prints the relevance totals of several LRP presets and writes a
PNG figure of the maps.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional


def _demo(out_dir: str) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from torch import nn

    from . import LRP

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        nn.Linear(32 * 16, 10),
    ).eval()
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    img = torch.stack([torch.sin(3 * xx), torch.cos(2 * yy), xx * yy])[None]
    with torch.no_grad():
        logits = model(img)
    target = int(logits.argmax())
    presets = ["epsilon", "epsilon_plus", "epsilon_gamma_box", "zplus_box"]
    fig, axes = plt.subplots(1, len(presets) + 1, figsize=(3 * (len(presets) + 1), 3))
    axes[0].imshow(((img[0].permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy())
    axes[0].set_title("input")
    for ax, preset in zip(axes[1:], presets):
        attr, delta = LRP(model, preset).attribute(img, target=target, return_convergence_delta=True)
        heat = attr[0].sum(0)
        lim = float(heat.abs().max()) or 1.0
        ax.imshow(heat.numpy(), cmap="bwr", vmin=-lim, vmax=lim)
        ax.set_title(preset)
        print(f"LRP {preset:>18}: sum of relevance {float(attr.sum()):+.4f}, target logit "
              f"{float(logits[0, target]):+.4f} (bias absorbs {float(-delta):+.4f})")
    for ax in axes:
        ax.axis("off")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "lrp_demo.png")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    print(f"figure written to {path}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="captum-rap", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser("demo", help="run the offline demo (default)")
    demo.add_argument("--out", default="captum_rap_demo", help="output folder for figures")
    args = parser.parse_args(argv)
    if args.command in (None, "demo"):
        return _demo(getattr(args, "out", "captum_rap_demo"))
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
