"""CD and ACD on every torchvision classifier (``torchvision.models.list_models(module=
torchvision.models)``, 80 models), random weights, writing a markdown table.

    python benchmarks/sweep_cd.py                       # all 80, results in benchmarks/RESULTS_sweep_cd.md
    python benchmarks/sweep_cd.py --only resnet18 vit_b_16 --out /tmp/sweep.md
    python benchmarks/sweep_cd.py --max-params 100      # skip models above 100 M parameters

For each model (random weights: batch-norm running statistics randomised, zero-initialised
heads given small random weights so that the logits are not all zero; eval mode):

* float64 (the model converted): ``CD(model).decompose(x, masks)`` with 3 masks (random
  scatter, a box, the full image): ``max |rel + irr - logits| / max |logits|`` (target
  <= 1e-8);
* float32, automatic mode (the precision check may switch the computation to float64):
  the same relative conservation error (target: within the precision check's tolerance,
  1e-3), the check's measured error and the computation dtype it chose, and the
  difference from the float64 decomposition;
* ``ACD(model).hierarchy`` in float32 on a 4 x 4 grid (percentile 75, 2 growth steps):
  levels, CD evaluations, seconds;
* whether the model is unchanged afterwards (parameters, buffers, modes, hooks).

Inputs are small where the architecture allows it (64 px; 75 for Inception-V3, 224 for
MaxViT, whose partitions need it; ViTs are built with ``image_size=64`` (56 for patch 14)).
Each model's row is appended to a JSON-lines log as it finishes (``--log``), so an
interrupted sweep can be resumed (``--resume``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import traceback
import warnings

import torch
import torch.nn as nn
import torchvision

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from captum_rap import ACD, CD  # noqa: E402


def size_and_kwargs(name):
    if name == "inception_v3":
        return 75, dict(aux_logits=False, init_weights=False)
    if name == "googlenet":
        return 64, dict(aux_logits=False, init_weights=False)
    if name == "maxvit_t":
        return 224, {}
    if name.startswith("vit_"):
        s = 56 if name.endswith("_14") else 64
        return s, dict(image_size=s)
    return 64, {}


def randomize_(model: nn.Module, g: torch.Generator) -> None:
    """Batch-norm running statistics randomised and zero-initialised ``nn.Linear`` heads
    (ViT, MaxViT) given small random weights, so that the logits are not all zero; in place,
    drawing from ``g`` (also used by tests/cd/test_cd_torchvision.py)."""
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.running_mean is not None:
                n = mod.num_features
                mod.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                mod.running_var.copy_(0.5 + torch.rand(n, generator=g))
            if isinstance(mod, nn.Linear) and float(mod.weight.abs().max()) == 0:
                mod.weight.normal_(0, 0.05, generator=g)
                if mod.bias is not None:
                    mod.bias.normal_(0, 0.05, generator=g)


def build(name, seed=0):
    s, kw = size_and_kwargs(name)
    torch.manual_seed(seed)
    m = torchvision.models.get_model(name, **kw)
    g = torch.Generator().manual_seed(seed + 1)
    randomize_(m, g)
    x = torch.randn(1, 3, s, s, generator=g)
    return m.eval(), x


def masks_for(s, dtype, seed=0):
    """Three masks of an ``s`` x ``s`` image: a random scatter (40 %), a box, the full image."""
    g = torch.Generator().manual_seed(seed)
    m = torch.zeros(3, 1, s, s, dtype=dtype)
    m[0] = (torch.rand(1, s, s, generator=g) < 0.4).to(dtype)
    m[1, :, s // 4: s // 2, s // 8: s // 2] = 1
    m[2] = 1
    return m


def snapshot(m):
    return ({k: v.detach().clone() for k, v in m.state_dict().items()},
            [(n, mod.training, len(mod._forward_hooks), len(mod._forward_pre_hooks)) for n, mod in m.named_modules()])


def unchanged(a, b):
    return a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0]) and a[1] == b[1]


def run_one(name):
    row = {"model": name}
    t0 = time.perf_counter()
    m, x = build(name)
    s = x.shape[-1]
    row["params_M"] = sum(p.numel() for p in m.parameters()) / 1e6
    row["size"] = s
    # float32, automatic mode
    before = snapshot(m)
    masks32 = masks_for(s, torch.float32)
    cd = CD(m)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        rel32, irr32 = cd.decompose(x, masks32)
    with torch.no_grad():
        y32 = m(x)
    sc32 = float(y32.abs().max())
    row["f32_conservation"] = float((rel32 + irr32 - y32).abs().max()) / sc32
    row["precision_error"] = cd.precision_error
    row["dtype"] = "float64" if cd.computation_dtype == torch.float64 else "float32"
    row["warnings"] = sorted({str(v.message).split(":")[0][:60] for v in w})
    # ACD, float32 (automatic dtype)
    t1 = time.perf_counter()
    h = ACD(m).hierarchy(x, sweep_dim=s // 4, percentile_include=75, num_iters=2)
    row["acd_s"] = time.perf_counter() - t1
    row["acd_levels"] = len(h.levels)
    row["acd_evals"] = h.cd_evaluations
    row["unchanged_f32"] = unchanged(before, snapshot(m))
    del cd, h, before, y32, irr32, m
    gc.collect()  # the largest models (600 M parameters) need their memory back
    rel32 = rel32.detach()
    # float64: the same weights, rebuilt (deterministic) and converted
    m, x = build(name)
    m = m.double()
    x64 = x.double()
    before = snapshot(m)
    rel, irr = CD(m).decompose(x64, masks_for(s, torch.float64))
    with torch.no_grad():
        y = m(x64)
    sc = float(y.abs().max())
    row["f64_conservation"] = float((rel + irr - y).abs().max()) / sc
    row["f32_vs_f64"] = float((rel32.double() - rel).abs().max()) / sc
    row["unchanged_f64"] = unchanged(before, snapshot(m))
    row["seconds"] = time.perf_counter() - t0
    return row


def table(rows):
    out = ["| model | params (M) | px | f64: max\\|rel+irr-y\\|/max\\|y\\| | f32: same | f32 precision check "
           "(dtype) | f32 vs f64 rel | ACD levels / evaluations / s | unchanged | s |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append("| %s | | | **failed**: %s | | | | | | |" % (r["model"], r["error"].replace("|", "/")[:120]))
            continue
        out.append("| %s | %.1f | %d | %.1e | %.1e | %.1e (%s) | %.1e | %d / %d / %.1f | %s | %.0f |" % (
            r["model"], r["params_M"], r["size"], r["f64_conservation"], r["f32_conservation"],
            r["precision_error"] if r["precision_error"] is not None else float("nan"), r["dtype"],
            r["f32_vs_f64"], r["acd_levels"], r["acd_evals"], r["acd_s"],
            "yes" if r["unchanged_f32"] and r["unchanged_f64"] else "**no**", r["seconds"]))
    ok = [r for r in rows if "error" not in r]
    f64 = [r for r in ok if r["f64_conservation"] <= 1e-8]
    f32 = [r for r in ok if r["f32_conservation"] <= CD.PRECISION_TOLERANCE]
    out.append("")
    out.append("%d models: %d ran; float64 conservation <= 1e-8 on %d, float32 within the precision "
               "check's tolerance (1e-3) on %d, float32 switched to float64 by the check on %d, model "
               "unchanged on %d." % (len(rows), len(ok), len(f64), len(f32),
                                     sum(r["dtype"] == "float64" for r in ok),
                                     sum(r["unchanged_f32"] and r["unchanged_f64"] for r in ok)))
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", default=None)
    ap.add_argument("--max-params", type=float, default=None, help="skip models above this many M parameters")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS_sweep_cd.md"))
    ap.add_argument("--log", default=None, help="JSON-lines log of the rows (default: OUT with .jsonl)")
    ap.add_argument("--resume", action="store_true", help="skip the models already in the log")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.only or torchvision.models.list_models(module=torchvision.models)
    log = args.log or os.path.splitext(args.out)[0] + ".jsonl"
    rows = {}
    if args.resume and os.path.exists(log):
        with open(log) as f:
            for line in f:
                r = json.loads(line)
                rows[r["model"]] = r
    elif os.path.exists(log):
        os.remove(log)
    for name in names:
        if name in rows:
            continue
        if args.max_params is not None:
            with torch.device("meta"):
                s, kw = size_and_kwargs(name)
                n = sum(p.numel() for p in torchvision.models.get_model(name, **kw).parameters()) / 1e6
            if n > args.max_params:
                print("skip %s (%.0f M parameters)" % (name, n), flush=True)
                continue
        try:
            r = run_one(name)
        except Exception as e:  # report and go on
            traceback.print_exc()
            r = {"model": name, "error": "%s: %s" % (type(e).__name__, str(e).splitlines()[0] if str(e) else "")}
        rows[name] = r
        print(json.dumps(r), flush=True)
        with open(log, "a") as f:
            f.write(json.dumps(r) + "\n")
    text = ("# CD / ACD on the torchvision classifiers\n\n`python benchmarks/sweep_cd.py` (torch %s, torchvision %s, "
            "%d threads)\n\n" % (torch.__version__, torchvision.__version__, torch.get_num_threads())
            + table([rows[n] for n in names if n in rows]) + "\n")
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
