"""Cost of the contrastive methods relative to one LRP call with the same base composite.

    python benchmarks/bench_contrastive.py            # VGG16 + ResNet50, 224 px, batch 1 and 8
    python benchmarks/bench_contrastive.py --quick    # tiny run (64 px, batch 1 and 2)

Prints, per model and batch size, the median time of LRP and the ratios
CLRP1 / LRP, CLRP2 / LRP, SGLRP(scaling=False) / LRP, SGLRP(scaling=True) / LRP.
CLRP1, CLRP2 and SGLRP without scaling are one forward + one backward pass of batch N;
SGLRP with scaling (and CLRP normalize="sum") needs two maps: one pass of batch 2N.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torchvision

from captum_rap import CLRP, LRP, SGLRP


def _round_robin(fns, repeats):
    """Median time per method; the methods alternate within every round, so a transient
    slowdown of the machine hits all of them alike."""
    for fn in fns.values():
        fn()  # warm-up
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="64 px, batch 1 and 2, one repeat")
    ap.add_argument("--models", nargs="+", default=["vgg16", "resnet50"])
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--batches", nargs="+", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--composite", default="zplus_box")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--realtime", action="store_true", help="SCHED_FIFO (root): for shared machines")
    args = ap.parse_args()
    if args.realtime:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    size = args.size or (64 if args.quick else 224)
    batches = args.batches or ([1, 2] if args.quick else [1, 8])
    repeats = args.repeats or (1 if args.quick else 3)
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"composite={args.composite}  size={size}  float32  threads={torch.get_num_threads()}  "
          f"median of {repeats}")
    header = f"{'model':10s} {'batch':>5s} {'LRP s':>8s} {'CLRP1':>7s} {'CLRP2':>7s} {'SGLRP':>7s} {'SGLRP+sc':>9s}"
    print(header)
    print("-" * len(header))
    for arch in args.models:
        model = getattr(torchvision.models, arch)().eval()
        methods = {
            "LRP": LRP(model, args.composite),
            "CLRP1": CLRP(model, variant=1, composite=args.composite),
            "CLRP2": CLRP(model, variant=2, composite=args.composite),
            "SGLRP": SGLRP(model, composite=args.composite, scaling=False),
            "SGLRP+sc": SGLRP(model, composite=args.composite, scaling=True),
        }
        for n in batches:
            x = torch.randn(n, 3, size, size)
            target = list(range(n))
            t = _round_robin({k: (lambda m=m: m.attribute(x, target=target)) for k, m in methods.items()},
                             repeats)
            base = t["LRP"]
            print(f"{arch:10s} {n:5d} {base:8.3f} " + " ".join(
                f"{t[k] / base:{7 if k != 'SGLRP+sc' else 9}.2f}" for k in ("CLRP1", "CLRP2", "SGLRP", "SGLRP+sc")))
        del model, methods


if __name__ == "__main__":
    main()
