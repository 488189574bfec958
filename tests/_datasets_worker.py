"""Run by tests/datasets/test_datasets.py as a plain process or under torchrun: attribute (and
evaluate) a few dozen Fashion-MNIST test images with a seeded tiny CNN.

Usage: python _datasets_worker.py OUT [--method rap|lrp|cd] [--images N] [--shard-size S]
[--batch-size B] [--evaluate] [--slow SECONDS] [--format F]
"""

import argparse
import json
import os
import sys
import time

import torch
from torch import nn

from captum_rap import CD, LRP, RAP
from captum_rap.datasets import attribute_dataset, evaluate_dataset
from captum_rap.zoo import fashion_mnist_test_subset, fmnist_preprocess


def tiny_cnn() -> nn.Module:
    g = torch.Generator().manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Flatten(), nn.Linear(8 * 7 * 7, 10))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() > 1 else 0.05))
    return m.eval()


class Crash(BaseException):
    """Not an Exception: stops a run as Ctrl-C would (never a skipped item)."""


class Images(torch.utils.data.Dataset):
    """Fashion-MNIST test images (preprocessed) with labels; ``slow`` seconds per item;
    reading item ``crash_at`` or later raises :class:`Crash`."""

    def __init__(self, n: int, slow: float = 0.0, crash_at=None) -> None:
        imgs, labels = fashion_mnist_test_subset()
        self.x, self.y, self.slow, self.crash_at = fmnist_preprocess(imgs[:n]), labels[:n], slow, crash_at
        self.reads = 0

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        if self.crash_at is not None and i >= self.crash_at:
            raise Crash(i)
        self.reads += 1
        if self.slow:
            time.sleep(self.slow)
        return self.x[i], int(self.y[i])


def method(name: str, model: nn.Module):
    if name == "rap":
        return RAP(model), None
    if name == "lrp":
        return LRP(model, "epsilon_plus"), None
    if name == "cd":
        mask = (torch.arange(28)[:, None] // 7 * 4 + torch.arange(28)[None, :] // 7).view(1, 1, 28, 28)
        return CD(model), {"feature_mask": mask}
    raise SystemExit(f"unknown method {name}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--method", default="rap")
    p.add_argument("--images", type=int, default=36)
    p.add_argument("--shard-size", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--format", default="auto")
    p.add_argument("--slow", type=float, default=0.0)
    p.add_argument("--evaluate", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(1)
    model = tiny_cnn()
    m, kw = method(a.method, model)
    ds = Images(a.images, a.slow)
    run = attribute_dataset(m, ds, a.out, batch_size=a.batch_size, shard_size=a.shard_size, format=a.format,
                            attribute_kwargs=kw, progress=False)
    info = {"rank": run.rank, "world_size": run.world_size, "shards_computed": run.shards_computed,
            "shards_reused": run.shards_reused, "reads": ds.reads}
    if a.evaluate:
        ev = evaluate_dataset(a.out, model, ds, patch_size=7, steps=8, progress=False)
        info["evaluation"] = ev.summary
    with open(os.path.join(a.out, f"worker-rank{run.rank}.json"), "w") as fh:
        json.dump(info, fh)


if __name__ == "__main__":
    sys.exit(main())
