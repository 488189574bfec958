"""CD / ACD benchmarks on VGG16 (random weights, float32), with the reference ``acd`` package
(PyPI ``acd==0.0.2``) measured in the same run.

    python benchmarks/bench_cd.py            # CD throughput at 224 px + ACD at 112 px (sweep_dim 7)
    python benchmarks/bench_cd.py --full     # ... + ACD at 224 px (sweep_dim 14): acd alone ~10 min
    python benchmarks/bench_cd.py --only-224 --skip-throughput   # just the 224 px ACD comparison
    python benchmarks/bench_cd.py --quick    # tiny run (64 px, 8 masks, 8x8 grid)
    python benchmarks/bench_cd.py --no-reference   # ours only (no ``acd`` package needed)
    python benchmarks/bench_cd.py --image noise     # a seeded N(0, 1) image instead of chelsea
    python benchmarks/bench_cd.py --variants refcompat default dense   # which of ours to run
    python benchmarks/bench_cd.py --model small     # toy CNN (2 conv, 2 max-pool), 32 px, 16x16 grid
    python benchmarks/bench_cd.py --count-images chelsea coffee astronaut rocket   # counts only
    python benchmarks/bench_cd.py --model lite0   # counts on a trained model (EfficientNet-Lite0)
    python benchmarks/bench_cd.py --modern        # ConvNeXt-T throughput, ACD on ViT-B/16 (224 px)

Input: ``skimage.data.chelsea()`` resized to the ACD size and ImageNet-normalized (``--image``).

Measured:

1. CD throughput: ``CD(model).decompose(x, masks)`` with 64 box masks in one call, divided
   by a plain forward of a batch of 64 images (target <= 3), also with ``local=False``
   (every mask's relevant part computed on the whole map); the reference ``acd.cd`` for ONE
   mask and for the 64 masks looped (batch 1 each, as its ACD does).
2. Full ACD hierarchy (the paper's grid: 16x16 blocks, percentile 95, 5 iterations): the
   reference procedure run by the ``acd`` package itself (``acd.agg_2d.agglomerate``, its CD
   calls counted by a wrapper), then ours (``reference_compatible`` batched: the reference
   arithmetic; default mode: total form, local boxes).  For each: CD evaluations made for
   the hierarchy, the CD calls the reference procedure makes for the same tree, wall time,
   the evaluations and time that completing the reference's other lists takes (combined
   tiles, last step's gains: ``ACDHierarchy.raw``, deferred), and whether the hierarchy
   equals the reference's (same labelled blobs at every level, and same groups ignoring
   labels).

3. ``--modern`` (architectures the reference cannot run; random weights, float32, automatic
   dtype): ``CD(convnext_tiny).decompose`` with 64 box masks at 224 px against a plain
   forward of 64 images (target <= 3), and ``ACD(vit_b_16).hierarchy`` at 224 px on the
   paper's grid (16x16 blocks = ViT's patches, percentile 95, 5 iterations): time, CD
   evaluations and forwards.  (ViT's zero-initialised head gets small random weights.)

The ``acd`` package is a benchmark-only anchor, never imported by ``captum_rap``.  It does not
run unpatched on a CPU-only machine with numpy 2; the patches, all applied here and only here
(:func:`load_reference`):

* ``np.int = int`` before importing ``acd`` (``np.int`` was removed in numpy 1.24; ``acd`` uses
  it in ``agg_1d``/``tiling_1d``/``score_funcs``; not on the 2-D path timed here, set anyway).
* ``acd.scores.score_funcs.cd`` (the name ``get_scores_2d`` calls) is replaced by a wrapper that
  forces ``device='cpu'`` (``agg_2d.agglomerate`` does not forward its ``device`` argument to
  the scoring calls inside its loop nor to ``agglomerate_final``, so they default to
  ``'cuda'`` and crash) and counts the calls (the number of CD evaluations of the reference).
* ``model_type=None`` is passed explicitly (the default ``'mnist'`` selects a hard-coded MNIST
  network) and ``im_orig`` is an ``(H, W)`` array (only its shape is used with ``method='cd'``).
* ``acd.cd`` calls ``model.eval()`` and ``model.to(device)``: harmless here (the model is
  already in eval mode on the CPU).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch
import torchvision

from captum_rap import ACD, CD


# --------------------------------------------------------------------------------------
# the reference package, patched for CPU-only / numpy 2 (benchmark only)
# --------------------------------------------------------------------------------------
MODEL_NAME = ["VGG16"]


class _RefCounter:
    calls = 0


def load_reference():
    """Import ``acd`` with the patches listed in the module docstring; None if missing."""
    if not hasattr(np, "int"):
        np.int = int  # numpy >= 1.24 removed the alias that acd uses
    try:
        import acd  # noqa: F401
        from acd.agglomeration import agg_2d
        from acd.scores import cd as cd_module
        from acd.scores import score_funcs
    except ImportError:
        return None
    orig_cd = cd_module.cd

    def counting_cd(im_torch, model, mask=None, model_type=None, device="cuda", transform=None):
        _RefCounter.calls += 1
        return orig_cd(im_torch, model, mask, model_type, device="cpu", transform=transform)

    score_funcs.cd = counting_cd  # get_scores_2d (used by agg_2d) calls this name
    agg_2d.cd = counting_cd  # imported there too (unused by the 2-D path, patched for safety)
    return {"cd": orig_cd, "agglomerate": agg_2d.agglomerate}


# --------------------------------------------------------------------------------------
def _median_time(fn, repeats, warmup=1):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def small_cnn():
    """Toy CNN for a fast complete comparison with ``acd`` (32 px RGB input)."""
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(16 * 8 * 8, 10))


def _box_masks(n, size, rng):
    """``n`` random rectangular blobs (binary, (n, 1, size, size))."""
    m = torch.zeros(n, 1, size, size)
    for k in range(n):
        h, w = rng.integers(size // 8, size // 2, size=2)
        r, c = rng.integers(0, size - h), rng.integers(0, size - w)
        m[k, :, r:r + h, c:c + w] = 1
    return m


def bench_throughput(model, size, n_masks, ref, ref_repeats, loop_ref, rows, image="noise"):
    rng = np.random.default_rng(0)
    x = load_image(image, size)
    masks = _box_masks(n_masks, size, rng)
    xb = x.expand(n_masks, -1, -1, -1).contiguous()
    reps = 1 if n_masks > 8 else 2
    with torch.no_grad():
        t_fwd = _median_time(lambda: model(xb), reps)
    # a fresh CD per call: the times include the precision check (one float64 mask per input)
    t_cd = _median_time(lambda: CD(model).decompose(x, masks), reps)
    t_dense = _median_time(lambda: CD(model, local=False).decompose(x, masks), reps)
    cd, cd_dense = CD(model), CD(model, local=False)
    rel, irr = cd.decompose(x, masks)
    rel_d, _ = cd_dense.decompose(x, masks)
    with torch.no_grad():
        cons = float((rel + irr - model(x)).abs().max())
    res = {"fwd": t_fwd, "cd": t_cd, "cd_dense": t_dense, "cons": cons,
           "local_vs_dense": float((rel - rel_d).abs().max())}
    print("  forward of %d images: %.3f s; CD of %d masks (one decompose call): %.3f s (%.2fx), "
          "dense (local=False) %.3f s (%.2fx); conservation max|rel+irr-logits| = %.1e; "
          "max|rel_local - rel_dense| = %.1e; precision check: float32 off by %.1e of the output "
          "(computation dtype kept: %s)"
          % (n_masks, t_fwd, n_masks, t_cd, t_cd / t_fwd, t_dense, t_dense / t_fwd, cons,
             res["local_vs_dense"], cd.precision_error, cd.computation_dtype is None), flush=True)
    if ref is not None:
        m0 = masks[0, 0].numpy()[None]
        t1 = _median_time(lambda: ref["cd"](x, model, m0, None, device="cpu"), ref_repeats)
        res["ref1"] = t1
        print("  acd.cd, one mask: %.3f s" % t1, flush=True)
        if loop_ref:
            t0 = time.perf_counter()
            with torch.no_grad():  # acd's outputs keep their graphs otherwise (64 VGG16 graphs: OOM)
                outs = [ref["cd"](x, model, masks[k, 0].numpy()[None], None, device="cpu")[0]
                        for k in range(n_masks)]
            res["refN"] = time.perf_counter() - t0
            ref_rel = torch.cat([o.detach() for o in outs])
            res["maxdiff"] = float((ref_rel - rel).abs().max())
            print("  acd.cd, %d masks looped: %.2f s; max |rel_ours - rel_acd| = %.2e (max |rel| %.2e)"
                  % (n_masks, res["refN"], res["maxdiff"], float(rel.abs().max())), flush=True)
    rows.append(("CD throughput, %s %d px, %d masks" % (MODEL_NAME[0], size, n_masks), res))
    return res


# --------------------------------------------------------------------------------------
def _groups(comps):
    """Label-free set of groups of one level."""
    return frozenset(frozenset(np.flatnonzero(comps == k).tolist()) for k in np.unique(comps) if k != 0)


def compare_hierarchies(ours, ref):
    """(labelled levels equal, label-free groups equal per level, n levels ours / ref,
    first differing level)."""
    a = [np.asarray(c) for c in ours["comps_list"][1:]]
    b = [np.asarray(c) for c in ref["comps_list"][1:]]  # level 0: zeros of im_orig's shape
    n = min(len(a), len(b))
    lab = len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    same_groups = [_groups(x) == _groups(y) for x, y in zip(a[:n], b[:n])]
    first = next((i + 1 for i, s in enumerate(same_groups) if not s), None)
    if first is None and len(a) != len(b):
        first = n + 1
    nbf = ours["num_before_final"] == ref["num_before_final"]
    return {"labelled_equal": bool(lab and nbf), "groups_equal": sum(same_groups),
            "levels": (len(a) + 1, len(b) + 1), "first_diff": first}


def _save(save, name, obj):
    if save:
        import pickle
        os.makedirs(save, exist_ok=True)
        with open(os.path.join(save, name + ".pkl"), "wb") as f:
            pickle.dump(obj, f)


def load_image(image, size):
    """``noise``: a seeded N(0, 1) image; else a scikit-image photo (e.g. ``chelsea``),
    resized (bilinear) and ImageNet-normalized."""
    if image == "noise":
        torch.manual_seed(1)
        return torch.randn(1, 3, size, size)
    from captum_rap.__main__ import IMAGENET_MEAN, IMAGENET_STD
    from captum_rap.zoo import skimage_photo

    img = torch.tensor(skimage_photo(image)).permute(2, 0, 1)[None].float() / 255
    # plain bilinear (the measured tables used it; the CLI's imagenet_preprocess antialiases)
    img = torch.nn.functional.interpolate(img, size=(size, size), mode="bilinear", align_corners=False)
    return (img - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def bench_acd(model, size, sweep_dim, ref, variants, rows, percentile=95, num_iters=5, save=None,
              image="noise"):
    x = load_image(image, size)
    with torch.no_grad():
        target = int(model(x).argmax())
    g = -(-size // sweep_dim)
    print("\nACD, %s %d px (%s), sweep_dim %d (%dx%d grid), percentile %g, %d iterations, target %d"
          % (MODEL_NAME[0], size, image, sweep_dim, g, g, percentile, num_iters, target), flush=True)
    ref_lists = None
    if ref is not None:
        _RefCounter.calls = 0
        t0 = time.perf_counter()
        ref_lists = ref["agglomerate"](model, None, percentile, "cd", sweep_dim, np.zeros((size, size)),
                                       target, num_iters=num_iters, im_torch=x, model_type=None,
                                       device="cpu")
        t_ref = time.perf_counter() - t0
        n_ref = _RefCounter.calls
        _save(save, "acd_%d_ref" % size, ref_lists)
        print("  acd (reference package): %d CD calls, %.1f s, %d levels"
              % (n_ref, t_ref, len(ref_lists["comps_list"])), flush=True)
        rows.append(("ACD %d px / %d: acd package" % (size, sweep_dim),
                     {"evals": n_ref, "time": t_ref, "levels": len(ref_lists["comps_list"])}))
    for name, kw in variants:
        acd = ACD(model, **kw)
        t0 = time.perf_counter()
        h = acd.hierarchy(x, target, sweep_dim=sweep_dim, percentile_include=percentile, num_iters=num_iters)
        t = time.perf_counter() - t0
        n_fwd = acd.cd.num_forwards
        t0 = time.perf_counter()
        raw = h.raw  # completes the reference lists (combined tiles, last step's gains)
        t_raw = time.perf_counter() - t0
        _save(save, "acd_%d_%s" % (size, name.replace(" ", "").replace(",", "_")), raw)
        G = raw["scores_orig_raw"].shape[0]
        res = {"evals": h.cd_evaluations, "ref_calls": h.reference_cd_calls, "time": t,
               "levels": len(raw["comps_list"]), "forwards": n_fwd, "units": G + 1,
               "deferred": h.deferred_evaluations, "time_raw": t_raw}
        msg = ("  ours, %s: %d CD evaluations in %d forwards (%d of them the unit blocks and the full "
               "image; the reference procedure: %d calls for this tree), %.1f s; the reference's "
               "other lists (combined tiles, last step's gains): %d more evaluations, %.1f s"
               % (name, h.cd_evaluations, n_fwd, G + 1, h.reference_cd_calls, t,
                  h.deferred_evaluations, t_raw))
        if ref_lists is not None:
            cmp = compare_hierarchies(raw, ref_lists)
            res.update(cmp)
            res["ratio_evals"] = h.cd_evaluations / n_ref
            res["speedup"] = t_ref / t
            ours_units = raw["scores_orig_raw"][:, target]
            ref_units = np.asarray(ref_lists["scores_orig_raw"])[:, target]
            res["unit_diff"] = float(np.max(np.abs(ours_units - ref_units)))
            msg += ("; evals/acd %.3f, speed-up %.1fx; hierarchy identical: %s (same groups at %d of %d/%d levels,"
                    " first difference %s); max |unit score diff| %.1e"
                    % (res["ratio_evals"], res["speedup"], cmp["labelled_equal"], cmp["groups_equal"],
                       cmp["levels"][0] - 1, cmp["levels"][1] - 1, cmp["first_diff"], res["unit_diff"]))
        print(msg, flush=True)
        rows.append(("ACD %d px / %d: ours, %s" % (size, sweep_dim, name), res))


def count_sweep(model, size, sweep_dim, images, percentile=95, num_iters=5):
    """Ours only (default mode) on several photos: CD evaluations against the reference
    procedure's exact call count for the same tree (``h.reference_cd_calls``)."""
    print("\nACD evaluation counts, %s %d px, sweep_dim %d, percentile %g, %d iterations"
          % (MODEL_NAME[0], size, sweep_dim, percentile, num_iters), flush=True)
    print("| image | target | levels | blobs before merging | evaluations | reference procedure | ratio | time (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for image in images:
        x = load_image(image, size)
        with torch.no_grad():
            target = int(model(x).argmax())
        t0 = time.perf_counter()
        h = ACD(model).hierarchy(x, target, sweep_dim=sweep_dim, percentile_include=percentile,
                                 num_iters=num_iters)
        t = time.perf_counter() - t0
        blobs = len(h.levels[h.num_before_final - 1])
        print("| %s | %d | %d | %d | %d | %d | %.3f | %.1f |" % (
            image, target, len(h), blobs, h.cd_evaluations, h.reference_cd_calls,
            h.cd_evaluations / h.reference_cd_calls, t), flush=True)


def pretrained_sweep(sizes, images, ref, percentile=95, num_iters=5):
    """EfficientNet-Lite0 with its real ImageNet weights (the pretrained VGG16 of the paper
    cannot be loaded offline): our hierarchy (default mode) against the reference
    *procedure* run by the ``acd`` package's own code (``agg_2d.agglomerate``), whose CD calls
    are answered by our CD (``acd``'s CD walks ``model.modules()`` and would drop Lite0's
    residual additions): with the scores our procedure computed for the same masks, and a
    one-mask CD call for any other mask.  Counts the reference's calls for that tree and
    checks that both procedures build the same hierarchy from the same scores.  Times are
    ours only (ACD with the automatic CD dtype: float64 here, see ``CD(dtype=...)``)."""
    from captum_rap.zoo import efficientnet_lite0, lite0_preprocess, skimage_photo

    model = efficientnet_lite0(pretrained=True).eval()
    cd = CD(model)
    scores = {}  # pixel mask -> (rel, irr) of one mask, shared by both procedures

    def _key(mask):
        return np.packbits(np.asarray(mask, dtype=bool).ravel()).tobytes()

    def our_cd(im_torch, model_, mask=None, model_type=None, device="cuda", transform=None):
        _RefCounter.calls += 1
        key = _key(mask)
        if key not in scores:  # a mask our procedure did not score: one CD call
            m = torch.as_tensor(np.asarray(mask, dtype=np.float32))[:, None]  # (1, 1, H, W)
            scores[key] = cd.decompose(im_torch, m)
        return scores[key]

    if ref is not None:
        from acd.scores import score_funcs
        score_funcs.cd = our_cd
    print("\nACD on pretrained EfficientNet-Lite0 (ImageNet weights), percentile %g, %d iterations;"
          " reference = acd's agglomerate with our CD" % (percentile, num_iters), flush=True)
    print("| size / sweep_dim | image | target | levels | blobs before merging | evaluations "
          "| reference procedure (acd's code, counted) | ratio | same hierarchy | time (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size, sweep_dim in sizes:
        for image in images:
            x = lite0_preprocess(skimage_photo(image), size)
            with torch.no_grad():
                target = int(model(x).argmax())
            acd = ACD(model)
            scores.clear()
            decompose = acd.cd.decompose

            def recording(inputs, masks, **kw):  # keep our scores for the reference's run
                rel, irr = decompose(inputs, masks, **kw)
                for k in range(masks.shape[0]):
                    scores[_key(masks[k].cpu().numpy())] = (rel[k:k + 1], irr[k:k + 1])
                return rel, irr

            acd.cd.decompose = recording
            t0 = time.perf_counter()
            h = acd.hierarchy(x, target, sweep_dim=sweep_dim, percentile_include=percentile,
                              num_iters=num_iters)
            t = time.perf_counter() - t0
            n_ref, same = h.reference_cd_calls, "not run"
            if ref is not None:
                _RefCounter.calls = 0
                ref_lists = ref["agglomerate"](model, None, percentile, "cd", sweep_dim,
                                               np.zeros((size, size)), target, num_iters=num_iters,
                                               im_torch=x, model_type=None, device="cpu")
                n_ref = _RefCounter.calls
                cmp = compare_hierarchies(h.raw, ref_lists)
                same = "yes" if cmp["labelled_equal"] else "no (first difference at level %s)" % cmp["first_diff"]
                if n_ref != h.reference_cd_calls:
                    same += "; procedure count %d != acd's %d" % (h.reference_cd_calls, n_ref)
            blobs = len(h.levels[h.num_before_final - 1])
            print("| %d / %d | %s | %d | %d | %d | %d | %d | %.3f | %s | %.1f |" % (
                size, sweep_dim, image, target, len(h), blobs, h.cd_evaluations, n_ref,
                h.cd_evaluations / n_ref, same, t), flush=True)


# --------------------------------------------------------------------------------------
def _random_head(model):
    """Small random weights for zero-initialised linear layers (ViT's head): random-weight
    logits that are not all zero."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.Linear) and float(mod.weight.abs().max()) == 0:
                mod.weight.normal_(0, 0.05, generator=g)
                mod.bias.normal_(0, 0.05, generator=g)
    return model


def bench_modern(rows, quick=False, image="chelsea"):
    """ConvNeXt-T CD throughput and ACD on ViT-B/16 (see the module docstring, item 3)."""
    size, n = (64, 8) if quick else (224, 64)
    torch.manual_seed(0)
    model = torchvision.models.convnext_tiny(weights=None).eval()
    MODEL_NAME[0] = "ConvNeXt-T"
    print("\nCD throughput, ConvNeXt-T %d px" % size, flush=True)
    x = load_image(image, size)
    masks = _box_masks(n, size, np.random.default_rng(0))
    xb = x.expand(n, -1, -1, -1).contiguous()
    with torch.no_grad():
        t_fwd = _median_time(lambda: model(xb), 1)
    cd = CD(model)
    t0 = time.perf_counter()
    rel, irr = cd.decompose(x, masks)  # a fresh instance: the checks are included
    t_cd = time.perf_counter() - t0
    with torch.no_grad():
        cons = float((rel + irr - model(x)).abs().max())
    print("  forward of %d images: %.2f s; CD of %d masks: %.2f s (%.2fx); conservation %.1e; precision "
          "check: float32 off by %.1e (computation dtype %s)"
          % (n, t_fwd, n, t_cd, t_cd / t_fwd, cons, cd.precision_error,
             "float32" if cd.computation_dtype is None else "float64"), flush=True)
    rows.append(("CD throughput, ConvNeXt-T %d px, %d masks" % (size, n),
                 {"fwd": t_fwd, "cd": t_cd, "modern": True, "dtype": cd.computation_dtype,
                  "prec": cd.precision_error}))
    vsize, sweep = (64, 16) if quick else (224, 16)
    torch.manual_seed(0)
    vit = _random_head(torchvision.models.vit_b_16(weights=None, image_size=vsize)).eval()
    x = load_image(image, vsize)
    acd = ACD(vit)
    t0 = time.perf_counter()
    h = acd.hierarchy(x, sweep_dim=sweep, percentile_include=95, num_iters=5)
    t = time.perf_counter() - t0
    g = vsize // sweep
    print("  ACD ViT-B/16 %d px, %dx%d grid: %d CD evaluations in %d forwards (reference procedure: %d "
          "calls), %d levels, %.1f s (computation dtype %s)"
          % (vsize, g, g, h.cd_evaluations, acd.cd.num_forwards, h.reference_cd_calls, len(h.levels), t,
             "float32" if acd.cd.computation_dtype is None else "float64"), flush=True)
    rows.append(("ACD ViT-B/16 %d px / %d" % (vsize, sweep),
                 {"evals": h.cd_evaluations, "forwards": acd.cd.num_forwards, "ref_calls": h.reference_cd_calls,
                  "time": t, "levels": len(h.levels), "modern": True,
                  "dtype": acd.cd.computation_dtype}))


def print_table(rows, args):
    print("\n## CD / ACD benchmarks (%s, random weights, float32, %d torch threads)\n"
          % (MODEL_NAME[0], torch.get_num_threads()))
    print("| measurement | value |")
    print("|---|---|")
    for name, r in rows:
        if r.get("modern"):
            dt = "float32" if r["dtype"] is None else "float64 (precision check)"
            if "fwd" in r:
                print("| %s: plain forward of the batch | %.2f s |" % (name, r["fwd"]))
                print("| %s: `CD.decompose` (one call, checks included) | %.2f s = **%.2fx** the forward "
                      "(target <= 3); %s |" % (name, r["cd"], r["cd"] / r["fwd"], dt))
            else:
                print("| %s | %d CD evaluations in %d forwards (reference procedure: %d calls), %d levels, "
                      "**%.1f s**; %s |" % (name, r["evals"], r["forwards"], r["ref_calls"], r["levels"],
                                            r["time"], dt))
            continue
        if name.startswith("CD throughput"):
            n = int(name.split(",")[-1].split()[0])
            print("| %s: plain forward of the batch | %.3f s |" % (name, r["fwd"]))
            print("| %s: `CD.decompose` (one call) | %.3f s = **%.2fx** the forward |" % (name, r["cd"], r["cd"] / r["fwd"]))
            print("| %s: `CD(local=False).decompose` (dense) | %.3f s = %.2fx the forward |"
                  % (name, r["cd_dense"], r["cd_dense"] / r["fwd"]))
            if "ref1" in r:
                print("| %s: `acd.cd`, one mask | %.3f s (%.1fx our per-mask time) |"
                      % (name, r["ref1"], r["ref1"] / (r["cd"] / n)))
            if "refN" in r:
                print("| %s: `acd.cd`, masks looped | %.2f s (%.1fx ours) |" % (name, r["refN"], r["refN"] / r["cd"]))
        elif "acd package" in name:
            print("| %s | %d CD calls, %.1f s |" % (name, r["evals"], r["time"]))
        else:
            s = ("%d evaluations (%d unit blocks + full image) in %d forwards (reference procedure: %d), "
                 "%.1f s; + %d deferred evaluations (%.1f s) for the reference's other lists" % (
                     r["evals"], r["units"], r["forwards"], r["ref_calls"], r["time"], r["deferred"], r["time_raw"]))
            if "ratio_evals" in r:
                s += ("; **%.2fx** acd's evaluations, **%.1fx** faster; identical hierarchy: %s "
                      "(same groups at %d/%d levels)" % (r["ratio_evals"], r["speedup"],
                                                        "yes" if r["labelled_equal"] else "no",
                                                        r["groups_equal"], r["levels"][1] - 1))
            print("| %s | %s |" % (name, s))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny run: 64 px, 8 masks, 8x8 ACD grid")
    ap.add_argument("--full", action="store_true", help="also ACD at 224 px (sweep_dim 14)")
    ap.add_argument("--only-224", action="store_true", help="ACD at 224 px (sweep_dim 14) only")
    ap.add_argument("--no-reference", action="store_true", help="skip the acd package")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-acd", action="store_true")
    ap.add_argument("--variants", nargs="+", default=["refcompat-batched", "default"],
                    choices=["refcompat", "refcompat-batched", "default", "dense"])
    ap.add_argument("--model", choices=["vgg16", "small", "lite0"], default="vgg16",
                    help="vgg16 (default), a toy CNN at 32 px (fast complete comparison), or the "
                         "pretrained EfficientNet-Lite0 (ACD evaluation counts on a trained model "
                         "at 112/7 and 224/14, photos of --count-images or the four defaults)")
    ap.add_argument("--image", default="chelsea",
                    help="ACD / throughput input: a scikit-image photo name (default chelsea) or 'noise'")
    ap.add_argument("--count-images", nargs="+", default=None, metavar="IMAGE",
                    help="only: our evaluation counts against the reference procedure's on these "
                         "photos (ACD size / sweep_dim as set, default 112 / 7)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--acd-size", type=int, default=None, help="ACD input size (default 112; 64 with --quick)")
    ap.add_argument("--sweep-dim", type=int, default=None, help="ACD block size (default 7; 8 with --quick)")
    ap.add_argument("--save", default=None, help="pickle the hierarchies (reference and ours) to this folder")
    ap.add_argument("--realtime", action="store_true", help="SCHED_FIFO (root): for shared machines")
    ap.add_argument("--modern", action="store_true",
                    help="only: ConvNeXt-T CD throughput and ACD on ViT-B/16 (224 px; 64 px with --quick)")
    args = ap.parse_args()
    if args.realtime:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    MODEL_NAME[0] = {"vgg16": "VGG16", "small": "toy CNN", "lite0": "EfficientNet-Lite0"}[args.model]
    ref = None if args.no_reference else load_reference()
    if ref is None and not args.no_reference:
        print("acd package not found (pip install --no-deps acd==0.0.2): reference skipped", file=sys.stderr)
    print("torch %s, numpy %s, %d threads, %s cores" % (torch.__version__, np.__version__,
                                                      torch.get_num_threads(), os.cpu_count()), flush=True)
    if args.modern:
        rows = []
        bench_modern(rows, quick=args.quick, image=args.image)
        MODEL_NAME[0] = "ConvNeXt-T / ViT-B/16"
        print_table(rows, args)
        return
    if args.model == "lite0":
        sizes = [(args.acd_size, args.sweep_dim)] if args.acd_size else [(112, 7), (224, 14)]
        pretrained_sweep(sizes, args.count_images or ["chelsea", "coffee", "astronaut", "rocket"], ref)
        return
    model = (torchvision.models.vgg16(weights=None) if args.model == "vgg16" else small_cnn()).eval()
    rows = []
    all_variants = {"refcompat": ("reference_compatible, batch 1", {"reference_compatible": True}),
                    "refcompat-batched": ("reference_compatible, batch 32",
                                          {"reference_compatible": True, "batch_size": 32}),
                    "default": ("default mode", {}),
                    "dense": ("default mode, local=False", {"local": False})}
    variants = [all_variants[v] for v in args.variants]
    image = "noise" if args.model == "small" else args.image
    if args.count_images:
        count_sweep(model, args.acd_size or 112, args.sweep_dim or 7, args.count_images)
        return
    if not args.skip_throughput and not args.only_224:
        size, n = (64, 8) if args.quick else (224, 64)
        if args.model == "small":
            size = 32
        print("\nCD throughput, %s %d px" % (MODEL_NAME[0], size), flush=True)
        bench_throughput(model, size, n, ref, 1 if args.quick else 3, True, rows, image=image)
    if not args.skip_acd:
        kw = dict(save=args.save, image=image)
        if args.model == "small":
            bench_acd(model, args.acd_size or 32, args.sweep_dim or 2, ref, variants, rows, **kw)
        elif args.quick:
            bench_acd(model, args.acd_size or 64, args.sweep_dim or 8, ref, variants, rows, **kw)
        else:
            if not args.only_224:
                bench_acd(model, args.acd_size or 112, args.sweep_dim or 7, ref, variants, rows, **kw)
            if args.full or args.only_224:
                bench_acd(model, 224, 14, ref, variants, rows, **kw)
    print_table(rows, args)


if __name__ == "__main__":
    main()
