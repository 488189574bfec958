"""Support sweep: every classifier of ``torchvision.models.list_models(module=torchvision.models)``
with every propagation method, on the unchanged model.

    python benchmarks/sweep_torchvision.py                 # all 80, writes benchmarks/RESULTS_sweep.md
    python benchmarks/sweep_torchvision.py --models vit_b_16,swin_t --out /tmp/sweep.md

Per model (seeded random weights, batch of 2, two targets):

* float32 with biases: every LRP preset, RAP, CLRP1, SGLRP, and LayerLRP / LayerRAP on the
  last block (the last module with children whose output is an activation map) give finite
  maps of the input's shape, and the model is bit-identical afterwards (state dict,
  requires_grad, train/eval flags, hook counts); one float32 pass each (``dtype=float32``);
* a float64 bias-free copy (biases, BN shifts and running means, ViT's class token and
  position embeddings set to 0): the gap between the input relevance sum and the target
  logit for the family's well-conditioned preset (``epsilon_gamma_box``; ``cp_lrp`` with
  softmax attention; epsilon and the gamma stabilizer 1e-12) and for RAP.  It conserves
  when the gap is within 1e-6 of the logit or within the rounding of the relevance mass
  (1e-10 Σ|R|: LRP-0-like rules on deep random networks carry Σ|R| up to 1e10 x the logit);
  the largest mass ratio is reported.

Input sizes are the smallest that the architecture accepts, from a few sizes tried (ViTs
are built with a smaller ``image_size``: the same layers, fewer tokens; MaxViT needs 224).
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision

from captum_rap import CLRP, LRP, RAP, SGLRP, LayerLRP, LayerRAP

PRESETS = ["epsilon", "epsilon_plus", "epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1",
           "epsilon_alpha2_beta1_flat", "zplus", "zplus_box", "attnlrp", "cp_lrp"]
TINY = dict(epsilon=1e-12)
ATTENTION = ("vit_", "swin_", "maxvit")
CONSTANT_ADDENDS = ("class_token", "pos_embedding")


def build(name: str, dtype: torch.dtype, bias_free: bool):
    """The model with seeded weights (normal, std sqrt(2 / fan-in); BN scales and running
    variances positive), and the input size it is run at."""
    kwargs = {}
    size = 64
    if name.startswith("vit_"):
        patch = int(name.split("_")[-1])
        kwargs["image_size"] = size = 4 * patch
    elif name.startswith("maxvit"):
        size = 224
    elif name in ("inception_v3",):
        size, kwargs = 80, {"aux_logits": False, "init_weights": False}
    elif name == "googlenet":
        kwargs = {"aux_logits": False, "init_weights": False}
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, **kwargs)
    rs = np.random.RandomState(0)
    sd = model.state_dict()
    new = type(sd)()
    if hasattr(sd, "_metadata"):  # module versions (MNASNet's _load_from_state_dict checks its own)
        new._metadata = sd._metadata
    for key, t in sd.items():
        shape = tuple(t.shape)
        if key.endswith("num_batches_tracked"):
            new[key] = t
            continue
        if key.endswith("running_mean") or key.endswith("bias"):
            v = np.zeros(shape) if bias_free else rs.standard_normal(shape) * 0.05
        elif key.endswith("running_var"):
            v = 0.5 + 1.5 * rs.random_sample(shape)
        elif key.endswith("weight") and t.dim() == 1:
            v = 0.5 + rs.random_sample(shape)
        elif bias_free and key.split(".")[-1] in CONSTANT_ADDENDS:
            v = np.zeros(shape)
        else:
            fan = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            v = rs.standard_normal(shape) * math.sqrt(2.0 / fan)
        new[key] = torch.from_numpy(np.asarray(v, dtype=np.float64)).to(t.dtype)
    model.load_state_dict(new)
    return model.to(dtype).eval(), size


def last_block(model, x):
    """The last module with children whose output is an activation map (rank >= 3)."""
    done = []
    handles = [m.register_forward_hook(lambda mod, a, o, n=n: done.append((n, mod, o)))
               for n, m in model.named_modules() if n and any(True for _ in m.children())]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    for n, mod, out in reversed(done):
        if isinstance(out, torch.Tensor) and out.dim() >= 3:
            return n, mod
    return done[-1][0], done[-1][1]


def fingerprint(model):
    return ([(k, v.clone()) for k, v in model.state_dict().items()],
            [(n, p.requires_grad) for n, p in model.named_parameters()],
            [(m.training, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
              getattr(m, "inplace", None)) for m in model.modules()])


def same(a, b):
    return (all(ka == kb and torch.equal(va, vb) for (ka, va), (kb, vb) in zip(a[0], b[0]))
            and a[1] == b[1] and a[2] == b[2])


def check(name: str) -> dict:
    row = {"model": name}
    t0 = time.perf_counter()
    model, size = build(name, torch.float32, False)
    row["params"] = sum(p.numel() for p in model.parameters())
    row["input"] = size
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    targets = [1, 7]
    before = fingerprint(model)
    block_name, block = last_block(model, x)
    row["block"] = block_name
    results = {}
    # one float32 pass each (dtype=float32: no float64 redo of ill-conditioned random-weight
    # runs, whose warning is silenced here; the default's redo is tested in tests/)
    f32 = dict(dtype=torch.float32)
    methods = [(p, lambda p=p: LRP(model, p, **f32)) for p in PRESETS]
    methods += [("rap", lambda: RAP(model, **f32)), ("clrp1", lambda: CLRP(model, variant=1, **f32)),
                ("sglrp", lambda: SGLRP(model, **f32)),
                ("layer_lrp", lambda: LayerLRP(model, block, "epsilon_plus", **f32)),
                ("layer_rap", lambda: LayerRAP(model, block, **f32))]
    for key, make in methods:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                attr = make().attribute(x, target=targets)
            ok = bool(torch.isfinite(attr).all()) and (key.startswith("layer") or attr.shape == x.shape)
            ok = ok and same(before, fingerprint(model))
            results[key] = "ok" if ok else "FAIL"
        except Exception as exc:  # report, go on with the next method
            results[key] = "ERROR: %s: %s" % (type(exc).__name__, str(exc).splitlines()[0][:160])
    row["methods"] = results
    model = None
    gc.collect()
    # conservation on a float64 bias-free copy: the well-conditioned preset of the family
    # (epsilon_gamma_box; cp_lrp with softmax attention) and RAP.  Deep random networks make
    # LRP-0-like rules ill-conditioned (Σ|R| up to 1e10+ x the logit); a run counts as
    # conserving when its gap is within 1e-6 of the logit or within the rounding of its
    # relevance mass (1e-10 Σ|R|), and the mass ratio is reported with it.
    model, _ = build(name, torch.float64, True)
    x64 = x.double()
    with torch.no_grad():
        logits = model(x64)
    want = logits[torch.arange(2), targets]
    attention = name.startswith(ATTENTION)
    runs = ["cp_lrp" if attention else "epsilon_gamma_box", "rap"]
    worst, mass_ratio, ok = 0.0, 0.0, True
    for key in runs:
        try:
            method = RAP(model) if key == "rap" else LRP(model, key, **TINY, **({"stabilizer": 1e-12} if key == "epsilon_gamma_box" else {}))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                attr = method.attribute(x64, target=targets)
            total = attr.reshape(2, -1).sum(1)
            mass = attr.abs().reshape(2, -1).sum(1)
            gap = (total - want).abs()
            worst = max(worst, float((gap / want.abs()).max()))
            mass_ratio = max(mass_ratio, float((mass / want.abs()).max()))
            ok = ok and bool((gap <= torch.maximum(1e-6 * want.abs(), 1e-10 * mass)).all())
        except Exception as exc:
            worst, ok = float("nan"), False
            results[key] += " (float64: %s)" % type(exc).__name__
    row["conservation"] = worst
    row["mass_ratio"] = mass_ratio
    row["conserves"] = ok
    row["conserving"] = ", ".join(runs)
    row["seconds"] = time.perf_counter() - t0
    model = None
    gc.collect()
    return row


def to_markdown(rows) -> str:
    lines = ["| model | input | params (M) | all LRP presets | RAP | CLRP1 | SGLRP | LayerLRP / LayerRAP "
             "(block) | conservation, bias-free float64: max gap / logit (max Σ\\|R\\| / logit) | time (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    problems = []
    for r in rows:
        m = r.get("methods", {})

        def cell(k):
            v = m.get(k, "n/a")
            if v != "ok":
                problems.append("* `%s` %s: %s" % (r["model"], k, v))
            return "ok" if v == "ok" else "**no**"

        presets = "ok" if all(m.get(p) == "ok" for p in PRESETS) else \
            "**no** (%s)" % ", ".join(p for p in PRESETS if m.get(p) != "ok")
        for p in PRESETS:
            if m.get(p) != "ok":
                problems.append("* `%s` %s: %s" % (r["model"], p, m.get(p)))
        layer = "%s / %s (`%s`)" % ("ok" if m.get("layer_lrp") == "ok" else "**no**",
                                    "ok" if m.get("layer_rap") == "ok" else "**no**", r.get("block", "?"))
        for k in ("layer_lrp", "layer_rap"):
            if m.get(k) != "ok":
                problems.append("* `%s` %s: %s" % (r["model"], k, m.get(k)))
        cons = "%s %.1e (%.0e; %s)" % ("ok" if r.get("conserves") else "**no**", r.get("conservation", float("nan")),
                                       r.get("mass_ratio", float("nan")), r.get("conserving", ""))
        if not r.get("conserves"):
            problems.append("* `%s` conservation: gap %.1e of the logit, mass %.1e x the logit"
                            % (r["model"], r.get("conservation", float("nan")), r.get("mass_ratio", float("nan"))))
        lines.append("| %s | %s | %.1f | %s | %s | %s | %s | %s | %s | %.0f |" % (
            r["model"], r.get("input", "?"), r.get("params", 0) / 1e6, presets, cell("rap"), cell("clrp1"),
            cell("sglrp"), layer, cons, r.get("seconds", 0)))
    out = "\n".join(lines) + "\n"
    if problems:
        out += "\nProblems:\n\n" + "\n".join(problems) + "\n"
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="", help="comma-separated names (default: all 80)")
    ap.add_argument("--out", default=str(Path(__file__).with_name("RESULTS_sweep.md")))
    args = ap.parse_args(argv)
    names = args.models.split(",") if args.models else torchvision.models.list_models(module=torchvision.models)
    rows = []
    t0 = time.perf_counter()
    for name in names:
        try:
            row = check(name)
        except Exception:
            traceback.print_exc()
            row = {"model": name, "methods": {"build": "ERROR"}}
        rows.append(row)
        bad = [k for k, v in row.get("methods", {}).items() if v != "ok"]
        print("%-22s %6.0f s  conservation %s %.1e  %s" % (name, row.get("seconds", 0), row.get("conserves"),
                                                        row.get("conservation", float("nan")),
                                                    "all ok" if not bad else "PROBLEMS: " + ", ".join(bad)),
              flush=True)
        Path(args.out).write_text(header(names, time.perf_counter() - t0) + to_markdown(rows))
    bad_models = [r["model"] for r in rows if any(v != "ok" for v in r.get("methods", {}).values())
                  or not r.get("conserves")]
    print("%d models, %d with problems: %s" % (len(rows), len(bad_models), ", ".join(bad_models) or "none"))
    return 1 if bad_models else 0


def header(names, seconds) -> str:
    return ("# Support sweep over torchvision classifiers\n\n"
            "`python benchmarks/sweep_torchvision.py` (torch %s, torchvision %s, %d models, %.0f s on this "
            "machine). See the script's docstring for what each column checks.\n\n"
            % (torch.__version__, torchvision.__version__, len(names), seconds))


if __name__ == "__main__":
    sys.exit(main())
