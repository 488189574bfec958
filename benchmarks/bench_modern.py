"""Speed of the propagation methods on post-2019 architectures, relative to a plain
forward/backward, with LXT (AttnLRP's reference implementation) measured in the same run.

    python benchmarks/bench_modern.py            # vit_b_16, convnext_tiny, efficientnet_b0; 224 px, batch 8
    python benchmarks/bench_modern.py --quick    # small sizes, seconds (smoke test)

Ratios are ``time(method) / time(forward + backward)``, forward+backward being the gradient
of the target logits with respect to the input (``bench_propagation.baselines``), timed
round robin with the methods (best of ``--repeat`` rounds after a warm-up).  LXT patches
torchvision's ViT classes globally, so it runs in a subprocess on the same weights and
input and times its gradient x input there next to its own unpatched forward+backward; its
ratio is to that baseline.  Random weights (speed does not depend on them).  Targets for
this issue: ViT-B/16 AttnLRP <= 2.0x, ConvNeXt-T and EfficientNet-B0 RAP <= 3.0x.

The last column counts floating-point operations (matrix products and convolutions, torch's
``flop_registry``, one example) relative to the forward+backward: a floor for the time ratio
that no implementation of a method's rules goes below.  RAP's rule for a layer with signed
inputs needs four forward products (both input-sign branches times ``W+`` and ``|W-|``) and
four backward ones, so on networks whose layers mostly see signed inputs (ConvNeXt's layer
norms and GELUs, EfficientNet's SiLUs and batch norms) its floor is about 4.5x.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Dict, List

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import flop_registry

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_propagation import baselines, round_robin  # noqa: E402

ARCHS = {
    "vit_b_16": ["attnlrp", "cp_lrp", "epsilon", "rap"],
    "convnext_tiny": ["rap", "rap_f32", "epsilon", "epsilon_plus", "epsilon_gamma_box", "attnlrp"],
    "efficientnet_b0": ["rap", "rap_f32", "epsilon", "epsilon_plus", "epsilon_gamma_box", "attnlrp"],
}

_LXT = r"""
import json, sys, time, torch, torchvision
import torchvision.models.vision_transformer as vt
state, inp, targets, repeat, threads = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
x = torch.load(inp)
t = torch.tensor(targets)
def build():
    m = torchvision.models.vit_b_16(image_size=x.shape[-1]).eval()
    m.load_state_dict(torch.load(state))
    return m
plain = build()
def fwd_bwd(model):
    xx = x.clone().requires_grad_(True)
    out = model(xx)
    g, = torch.autograd.grad(out[torch.arange(x.shape[0]), t].sum(), xx)
    return g * xx
best = {}
def timed(name, fn):
    t0 = time.perf_counter(); fn(); best[name] = min(best.get(name, 1e9), time.perf_counter() - t0)
from lxt.efficient import monkey_patch
monkey_patch(vt)
patched = build()
fwd_bwd(plain); fwd_bwd(patched)
for _ in range(repeat):
    timed("forward+backward", lambda: fwd_bwd(plain))
    timed("LXT (CP-LRP patch of torchvision ViT)", lambda: fwd_bwd(patched))
print(json.dumps(best))
"""


def _model(arch: str, size: int):
    import torchvision

    torch.manual_seed(0)
    kw = {"image_size": size} if arch.startswith("vit") else {}
    model = torchvision.models.get_model(arch, **kw).eval()
    with torch.no_grad():
        for p in model.parameters():  # ViT's head is initialised to 0
            if p.dim() >= 2 and not bool(p.any()):
                p.normal_(0, 0.02)
    return model


def methods(model, names: List[str]) -> Dict[str, Callable]:
    from captum_rap import LRP, RAP

    out: Dict[str, Callable] = {}
    for name in names:
        if name == "rap_f32":
            # one float32 pass, no float64 fallback of the precision guard (it may warn)
            method, label = RAP(model, dtype=torch.float32), "captum_rap RAP dtype=float32"
        else:
            method = RAP(model) if name == "rap" else LRP(model, name)
            label = "captum_rap RAP" if name == "rap" else f"captum_rap LRP {name}"

        def call(x, t, m=method):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                return m.attribute(x, target=t)
        out[label] = call
    return out


class _FlopCounter(TorchDispatchMode):
    """Counts the flops of every aten op torch's ``flop_registry`` knows (convolutions,
    matrix products, attention), forward and backward alike."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        count = flop_registry.get(func._overloadpacket)
        if count is not None:
            def shape(v):
                return v.shape if isinstance(v, torch.Tensor) else v
            self.total += count(*tree_map(shape, args), **tree_map(shape, kwargs), out_val=tree_map(shape, out))
        return out


def flops(fn: Callable) -> int:
    counter = _FlopCounter()
    with counter:
        fn()
    return counter.total


def lxt_times(model, x, t, repeat: int):
    """LXT's gradient x input on a patched copy, in a subprocess (None if not installed)."""
    try:
        import lxt  # noqa: F401
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(model.state_dict(), Path(tmp) / "state.pt")
        torch.save(x, Path(tmp) / "x.pt")
        res = subprocess.run([sys.executable, "-c", _LXT, str(Path(tmp) / "state.pt"), str(Path(tmp) / "x.pt"),
                              json.dumps(t), str(repeat), str(torch.get_num_threads())],
                             capture_output=True, text=True)
    if res.returncode != 0:
        print(res.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])


def bench(arch: str, batch: int, size: int, repeat: int) -> List[tuple]:
    model = _model(arch, size)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    t = [int(i) for i in (torch.arange(batch) * 7 + 3) % 1000]
    fns = {"forward+backward": baselines(model, x, t)["forward+backward"]}
    for name, fn in methods(model, ARCHS[arch]).items():
        fns[name] = (lambda f: lambda: f(x, t))(fn)
    best, failed = round_robin(fns, repeat)
    # flops of one example (the ratios do not depend on the batch)
    one = {"forward+backward": baselines(model, x[:1], t[:1])["forward+backward"]}
    for name, fn in methods(model, ARCHS[arch]).items():
        one[name] = (lambda f: lambda: f(x[:1], t[:1]))(fn)
    fl = {}
    for name, fn in one.items():
        try:
            fl[name] = flops(fn)
        except Exception:  # a failed method is reported by its timing row
            fl[name] = float("nan")
    rows = []
    t_fb = best["forward+backward"]
    for name in fns:
        if name in failed:
            rows.append((arch, batch, f"{name} (failed: {failed[name]})", float("nan"), float("nan"), float("nan")))
        else:
            rows.append((arch, batch, name, best[name], best[name] / t_fb, fl[name] / fl["forward+backward"]))
    if arch.startswith("vit"):
        lx = lxt_times(model, x, t, repeat)
        if lx is not None:
            for name, tm in lx.items():
                if name != "forward+backward":
                    rows.append((arch, batch, name, tm, tm / lx["forward+backward"], float("nan")))
    for row in rows:
        print(f"  {row[0]} b{row[1]} {row[2]}: {row[3]:.3f}s ratio {row[4]:.2f} flops {row[5]:.2f}",
              file=sys.stderr, flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=list(ARCHS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="32 px (ViT: 32 px), batch 2, one repeat")
    parser.add_argument("--realtime", action="store_true", help="SCHED_FIFO (root): see bench_propagation")
    args = parser.parse_args(argv)
    if args.realtime:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.size, args.batch, args.repeat = 32, 2, 1
    rows = []
    for arch in args.arch:
        rows += bench(arch, args.batch, args.size, args.repeat)
    print(f"\n{args.size} px, batch {args.batch}, float32, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, device cpu\n")
    print("| model | batch | method | seconds | ratio to forward+backward | flops / forward+backward |")
    print("|---|---|---|---|---|---|")
    for arch, b, name, tm, ratio, fr in rows:
        print(f"| {arch} | {b} | {name} | {tm:.3f} | {ratio:.2f} | {fr:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
