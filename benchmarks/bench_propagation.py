"""Speed of the propagation methods relative to a plain forward/backward, with Captum's LRP
and zennit measured in the same run.

    python benchmarks/bench_propagation.py                 # VGG16 + ResNet50, 224 px, batch 1 and 8
    python benchmarks/bench_propagation.py --quick         # tiny sizes, seconds
    python benchmarks/bench_propagation.py --memory        # + peak memory of RAP on VGG16, batch 32

Ratios are ``time(method) / time(forward + backward)`` where forward+backward is the
gradient of the target logit with respect to the input (what Captum's Saliency computes).
Random weights (speed does not depend on them).  Methods are timed round robin (best of
``--repeat`` rounds after a warm-up).  On a machine shared with other jobs, ``--realtime``
(root) runs the benchmark under SCHED_FIFO.  Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Callable, Dict, List

import torch


def _model(arch: str):
    import torchvision

    torch.manual_seed(0)
    return getattr(torchvision.models, arch)().eval()


def methods(arch: str, model) -> Dict[str, Callable]:
    from captum_rap import LRP, RAP

    out: Dict[str, Callable] = {}
    for preset in ("epsilon", "epsilon_plus", "zplus_box", "epsilon_gamma_box", "epsilon_alpha2_beta1"):
        lrp = LRP(model, preset)
        out[f"captum_rap LRP {preset}"] = (lambda l: lambda x, t: l.attribute(x, target=t))(lrp)
    rap = RAP(model)
    out["captum_rap RAP"] = lambda x, t: rap.attribute(x, target=t)
    # anchors
    try:
        from captum.attr import LRP as CaptumLRP

        clrp = CaptumLRP(model)
        out["captum LRP (default rules)"] = lambda x, t: clrp.attribute(x, target=t)
    except Exception:  # pragma: no cover
        pass
    try:
        import zennit.composites as zc
        from zennit.attribution import Gradient
        from zennit.torchvision import ResNetCanonizer, VGGCanonizer

        canon = [ResNetCanonizer()] if arch.startswith("resnet") else [VGGCanonizer()]

        def zennit_fn(comp_factory):
            def run(x, t):
                comp = comp_factory()
                onehot = torch.zeros(x.shape[0], 1000)
                onehot[torch.arange(x.shape[0]), t] = 1
                with Gradient(model, comp) as attributor:
                    _, rel = attributor(x, onehot)
                return rel
            return run

        out["zennit EpsilonPlus"] = zennit_fn(lambda: zc.EpsilonPlus(canonizers=canon))
        out["zennit EpsilonGammaBox"] = zennit_fn(lambda: zc.EpsilonGammaBox(low=-3.0, high=3.0, canonizers=canon))
        out["zennit EpsilonAlpha2Beta1"] = zennit_fn(lambda: zc.EpsilonAlpha2Beta1(canonizers=canon))
    except ImportError:  # pragma: no cover
        pass
    return out


def baselines(model, x: torch.Tensor, t: List[int]) -> Dict[str, Callable[[], object]]:
    """A plain forward and forward+backward (input gradient of the target logits)."""

    def forward():
        with torch.no_grad():
            model(x)

    def fwd_bwd():
        xx = x.clone().requires_grad_(True)
        out = model(xx)
        torch.autograd.grad(out[torch.arange(x.shape[0]), t].sum(), xx)

    return {"forward": forward, "forward+backward": fwd_bwd}


def round_robin(fns: Dict[str, Callable[[], object]], repeat: int):
    """Best time per method over ``repeat`` rounds after a warm-up; every round times every
    method once, so a transient slowdown of the machine hits all methods alike instead of
    one baseline.  Returns ``(best, failed)`` (``failed``: name -> error text)."""
    best: Dict[str, float] = {}
    failed: Dict[str, str] = {}
    for name, fn in fns.items():  # warm-up
        try:
            fn()
        except Exception as exc:  # report, keep going
            failed[name] = f"{type(exc).__name__}: {exc}"[:80]
    for _ in range(repeat):
        for name, fn in fns.items():
            if name in failed:
                continue
            t0 = time.perf_counter()
            fn()
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
    return best, failed


def bench(arch: str, batch: int, size: int, repeat: int, only: List[str]) -> List[tuple]:
    model = _model(arch)
    x = torch.randn(batch, 3, size, size)
    t = [int(i) for i in torch.arange(batch) % 1000]
    fns = baselines(model, x, t)
    for name, fn in methods(arch, model).items():
        if only and not any(o in name for o in only):
            continue
        fns[name] = (lambda f: lambda: f(x, t))(fn)
    best, failed = round_robin(fns, repeat)
    t_fb = best["forward+backward"]
    rows = []
    for name in fns:
        if name in failed:
            rows.append((arch, batch, f"{name} (failed: {failed[name]})", float("nan"), float("nan")))
        else:
            rows.append((arch, batch, name, best[name], best[name] / t_fb))
        print(f"  {arch} b{batch} {name}: {rows[-1][3]:.3f}s ratio {rows[-1][4]:.2f}", file=sys.stderr, flush=True)
    return rows


def peak_memory(arch: str, batch: int, size: int, method: str) -> float:
    """Peak resident memory (MiB) of one call in a fresh process, above the resident memory
    after building the model and input (the method's working memory).  Linux: the peak
    (VmHWM) is reset through /proc/self/clear_refs before the call."""
    code = f"""
import torch, torchvision
def _status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return float(line.split()[1]) / 1024.0
torch.manual_seed(0)
m = torchvision.models.{arch}().eval()
x = torch.randn({batch}, 3, {size}, {size})
open("/proc/self/clear_refs", "w").write("5")
base = _status("VmRSS")
if "{method}" == "rap":
    from captum_rap import RAP
    RAP(m).attribute(x, target=[1] * {batch})
elif "{method}" == "fwd_bwd":
    xx = x.clone().requires_grad_(True)
    out = m(xx)
    torch.autograd.grad(out[:, 1].sum(), xx)
print(_status("VmHWM") - base)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=["vgg16", "resnet50"])
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=[], help="substrings of method names to run")
    parser.add_argument("--quick", action="store_true", help="64 px, batch 1 and 2, one repeat")
    parser.add_argument("--memory", action="store_true", help="peak memory of RAP, VGG16 batch 32")
    parser.add_argument("--memory-only", action="store_true", help="only the peak-memory measurement")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--realtime", action="store_true",
                        help="run under SCHED_FIFO (root only): on a shared machine, keeps other "
                             "processes from skewing the timings")
    args = parser.parse_args(argv)
    if args.realtime:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.size, args.batch, args.repeat = 64, [1, 2], 1
    rows = []
    if args.memory_only:
        args.memory, args.arch = True, []
    for arch in args.arch:
        for b in args.batch:
            rows += bench(arch, b, args.size, args.repeat, args.only)
    print(f"\n{args.size} px, float32, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"device cpu\n")
    print("| model | batch | method | seconds | ratio to forward+backward |")
    print("|---|---|---|---|---|")
    for arch, b, name, tm, ratio in rows:
        print(f"| {arch} | {b} | {name} | {tm:.3f} | {ratio:.2f} |")
    if args.memory:
        size = 64 if args.quick else 224
        batch = 4 if args.quick else 32
        fb = peak_memory("vgg16", batch, size, "fwd_bwd")
        rp = peak_memory("vgg16", batch, size, "rap")
        print(f"\nPeak working memory, VGG16, batch {batch}, {size} px: forward+backward {fb:.0f} MiB, "
              f"RAP {rp:.0f} MiB (ratio {rp / fb:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
