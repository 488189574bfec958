"""One run, one table: the speed of every captum_rap method next to a plain forward and
forward+backward and next to the anchor libraries (Captum's LRP, zennit, the ``acd``
package), measured in the same process on the same inputs.

    python benchmarks/bench_all.py              # VGG16 + ResNet50, 224 px, batch 8 (~15 min on 2 cores)
    python benchmarks/bench_all.py --quick      # 64 px, batch 2 (about a minute)
    python benchmarks/bench_all.py --realtime   # SCHED_FIFO (root), for machines shared with other jobs

Rows:

* propagation methods (LRP presets, RAP, CLRP1/2, SGLRP with and without scaling) and the
  anchors Captum ``LRP`` and zennit: time of one call on the batch / time of a plain
  forward+backward (input gradient of the target logits) on the same batch;
* ``CD.decompose`` with as many masks as the batch size (one image): time / a plain forward of
  that many images; the ``acd`` package's ``cd`` looped over the same masks (VGG16 only: the
  package has no ResNet-50 path);
* ACD hierarchy of one image at ``--acd-size`` px, ``--acd-sweep`` px blocks, percentile 95,
  5 iterations: our time and the ``acd`` package's (VGG16), with the number of CD evaluations.

Methods are timed round robin (best of ``--repeat`` rounds after a warm-up).  Random weights.
The heavier CD/ACD comparisons (paper grid, 64-mask throughput) are in ``bench_cd.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import List

import numpy as np
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_cd  # noqa: E402
import bench_propagation  # noqa: E402

from captum_rap import ACD, CD, CLRP, SGLRP  # noqa: E402


def bench_model(arch: str, batch: int, size: int, repeat: int, ref, acd_size: int, acd_sweep: int) -> List[tuple]:
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)().eval()
    x = torch.randn(batch, 3, size, size)
    t = [int(i) for i in torch.arange(batch) % 1000]
    fns = bench_propagation.baselines(model, x, t)
    for name, fn in bench_propagation.methods(arch, model).items():
        fns[name] = (lambda f: lambda: f(x, t))(fn)
    for label, method in (("captum_rap CLRP1 (zplus_box)", CLRP(model, variant=1)),
                          ("captum_rap CLRP2 (zplus_box)", CLRP(model, variant=2)),
                          ("captum_rap SGLRP (zplus_box, no scaling)", SGLRP(model, scaling=False)),
                          ("captum_rap SGLRP (zplus_box, scaling: two maps)", SGLRP(model))):
        fns[label] = (lambda m: lambda: m.attribute(x, target=t))(method)
    # CD: `batch` masks of one image vs a forward of `batch` images
    rng = np.random.default_rng(0)
    x1 = x[:1]
    masks = bench_cd._box_masks(batch, size, rng)
    cd = CD(model)
    fns[f"captum_rap CD.decompose, {batch} masks of one image"] = lambda: cd.decompose(x1, masks)
    if ref is not None and arch.startswith("vgg"):
        fns[f"acd package cd, {batch} masks looped"] = lambda: [
            ref["cd"](x1, model, masks[k, 0].numpy()[None], None, device="cpu") for k in range(batch)]
    print(f"  timing {len(fns)} methods on {arch}, batch {batch}, {size} px ...", file=sys.stderr, flush=True)
    best, failed = bench_propagation.round_robin(fns, repeat)
    t_fb, t_f = best["forward+backward"], best["forward"]
    rows = []
    for name in fns:
        if name in failed:
            rows.append((arch, name, float("nan"), f"failed ({failed[name]})"))
            continue
        if "cd" in name.lower() and "masks" in name:
            rows.append((arch, name, best[name], f"{best[name] / t_f:.2f}x forward of {batch} images"))
        else:
            rows.append((arch, name, best[name], f"{best[name] / t_fb:.2f}"))
    # ACD: one hierarchy (single run each: minutes for the reference)
    torch.manual_seed(1)
    xa = torch.randn(1, 3, acd_size, acd_size)
    with torch.no_grad():
        target = int(model(xa).argmax())
    acd = ACD(model)
    t0 = time.perf_counter()
    h = acd.hierarchy(xa, target, sweep_dim=acd_sweep, percentile_include=95, num_iters=5)
    t_ours = time.perf_counter() - t0
    g = -(-acd_size // acd_sweep)
    label = f"ACD hierarchy, {acd_size} px, {g}x{g} blocks"
    rows.append((arch, f"captum_rap {label}", t_ours,
                 f"{h.cd_evaluations} CD evaluations in {acd.cd.num_forwards} forwards "
                 f"(reference procedure: {h.reference_cd_calls} calls)"))
    if ref is not None and arch.startswith("vgg"):
        bench_cd._RefCounter.calls = 0
        t0 = time.perf_counter()
        ref_lists = ref["agglomerate"](model, None, 95, "cd", acd_sweep, np.zeros((acd_size, acd_size)), target,
                                       num_iters=5, im_torch=xa, model_type=None, device="cpu")
        t_ref = time.perf_counter() - t0
        same = bench_cd.compare_hierarchies(h.raw, ref_lists)
        rows.append((arch, f"acd package {label}", t_ref,
                     f"{bench_cd._RefCounter.calls} CD calls; ours {t_ref / t_ours:.1f}x faster, "
                     f"same groups at {same['groups_equal']} of {same['levels'][1] - 1} levels"))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", nargs="+", default=["vgg16", "resnet50"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--acd-size", type=int, default=112)
    ap.add_argument("--acd-sweep", type=int, default=28, help="ACD block size in px (default 28: 4x4 blocks at 112 px)")
    ap.add_argument("--no-reference", action="store_true", help="skip the acd package")
    ap.add_argument("--quick", action="store_true", help="64 px, batch 2, one round, ACD 32 px / 8 px blocks")
    ap.add_argument("--realtime", action="store_true", help="SCHED_FIFO (root): for shared machines")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.realtime:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.size, args.batch, args.repeat, args.acd_size, args.acd_sweep = 64, 2, 1, 32, 8
    ref = None if args.no_reference else bench_cd.load_reference()
    rows: List[tuple] = []
    for arch in args.arch:
        rows += bench_model(arch, args.batch, args.size, args.repeat, ref, args.acd_size, args.acd_sweep)
    import captum

    print(f"\n{args.size} px, batch {args.batch}, float32, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, captum {captum.__version__}, CPU; best of {args.repeat} rounds\n")
    print("| model | method | seconds | ratio to forward+backward (or as stated) |")
    print("|---|---|---|---|")
    for arch, name, sec, ratio in rows:
        print(f"| {arch} | {name} | {sec:.3f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
