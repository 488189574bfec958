"""``evaluate_dataset``: region perturbation (MoRF / LeRF curves, AOPC) over the maps of an
:func:`attribute_dataset` run, resumable and split over ``torchrun`` ranks like the run."""

from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..metrics import region_perturbation
from . import _shards as S
from ._common import (PathLike, atomic_write, check_choice, check_flag, check_int, describe, digest,
                      model_fingerprint, my_shards, process_group, read_json, resolve_device, resolve_dtype,
                      write_json)
from .attribute import _progress, _unpack_source
from .images import Collate, Indexed
from .images import image_ids as _image_ids
from .store import AttributionStore

__all__ = ["evaluate_dataset", "DatasetEvaluation", "summary_table"]

WHO = "evaluate_dataset"
METRICS = ("region_perturbation",)
ORDERS = ("morf", "lerf")


@dataclass
class DatasetEvaluation:
    """What :func:`evaluate_dataset` returns (on every rank).

    Attributes:
        out (str): the run's folder; folder (str): where this evaluation is
            (``out/evaluation/NAME``).
        settings (dict): the metric's settings.
        summary (dict): per order (``"morf"``, ``"lerf"``): ``n``, ``aopc_mean``, ``aopc_std``,
            ``aopc_sem``, ``mean_drop_curve``; ``"morf_minus_lerf"`` (paired mean and sem) when
            both orders ran; ``label`` of the run.
        shards_computed (int), shards_reused (int), seconds (float): this rank, this call.
    """

    out: str
    folder: str
    settings: Dict[str, Any]
    summary: Dict[str, Any]
    shards_computed: int = 0
    shards_reused: int = 0
    seconds: float = 0.0
    rank: int = 0
    world_size: int = 1

    def per_image(self) -> List[Dict[str, Any]]:
        """One row per image: ``id``, ``index``, ``target`` and ``aopc_<order>``."""
        with open(os.path.join(self.folder, "results.csv"), newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        for r in rows:
            r["index"], r["target"] = int(r["index"]), int(r["target"])
            for o in self.settings["orders"]:
                r[f"aopc_{o}"] = float(r[f"aopc_{o}"])
        return rows

    def table(self) -> str:
        """This evaluation as a Markdown table (see :func:`summary_table`)."""
        return summary_table([self])


def _label(store: AttributionStore) -> str:
    meta = store.metadata if isinstance(store.metadata, dict) else {}
    if meta.get("label"):
        return str(meta["label"])
    label = store.identity["method"]["class"].rsplit(".", 1)[-1]
    comp = store.identity["method"]["arguments"].get("attributes", {}).get("composite")
    name = comp.get("attributes", {}).get("name") if isinstance(comp, dict) else None
    return f"{label}:{name}" if name else label


def evaluate_dataset(
    out: PathLike,
    model: nn.Module,
    dataset_or_loader: Any,
    *,
    metric: str = "region_perturbation",
    patch_size: Union[int, Sequence[int]] = 8,
    steps: Optional[int] = None,
    patches_per_step: int = 1,
    orders: Sequence[str] = ORDERS,
    replacement: Any = "mean",
    score: str = "logit",
    positive_only: bool = False,
    batch_size: Optional[int] = None,
    forward_batch_size: int = 256,
    num_workers: Optional[int] = None,
    device: Union[None, str, torch.device] = None,
    dtype: Optional[torch.dtype] = None,
    progress: bool = True,
    distributed: Optional[bool] = None,
) -> DatasetEvaluation:
    r"""Region perturbation (Samek et al. 2017, the RAP paper's evaluation) over every map of
    an :func:`attribute_dataset` run: MoRF / LeRF curves and AOPC per image
    (:func:`captum_rap.metrics.region_perturbation` with the stored target), their means
    and a summary.

    Work is split by shard as in ``attribute_dataset`` (rank ``k % N`` evaluates shard ``k``,
    no wait until the end); each shard's results are written all or nothing to
    ``out/evaluation/region_perturbation-<settings hash>/shard-K.npz``, so an interrupted
    evaluation resumes; rank 0 then writes ``results.csv`` (per image), ``summary.json`` and
    ``summary.md`` there.  Different settings go to different folders.

    Args:
        out (str or PathLike): a finished ``attribute_dataset`` folder.
        model (nn.Module): the model the maps were computed for (checked by its weights).
        dataset_or_loader (Dataset, DataLoader or str): the dataset of the run (checked by its
            length and image ids).
        metric (str, optional): ``"region_perturbation"``.
        patch_size, steps, patches_per_step, replacement, score: as in
            :func:`~captum_rap.metrics.region_perturbation`.  Defaults: 8, all patches, 1,
            ``"mean"``, ``"logit"``.
        orders (sequence of str, optional): ``"morf"`` and / or ``"lerf"``.  Default: both.
        positive_only (bool, optional): rank patches by the positive relevance only
            (``map.clamp(min=0)``).  Default: False.
        batch_size (int, optional): images per ``region_perturbation`` call.  Default: the
            loader's, else 32.
        forward_batch_size (int, optional): perturbed inputs per forward pass.  Default: 256.
        num_workers, device, dtype, progress, distributed: as in ``attribute_dataset``.

    Returns:
        :class:`DatasetEvaluation` with the ``summary``; ``per_image()`` reads ``results.csv``.

    Raises:
        TypeError: an unknown keyword.
        ValueError: a bad argument (named), an unfinished run, another model or dataset.

    Examples::

        >>> ev = evaluate_dataset("rap_val", model, dataset, patch_size=16, steps=49, patches_per_step=4)
        >>> ev.summary["morf"]["aopc_mean"], ev.summary["morf_minus_lerf"]["mean"]
        >>> print(summary_table(["rap_val", "lrp_val"]))
    """
    out = os.fspath(out) if isinstance(out, (str, os.PathLike)) else out
    if not isinstance(out, str):
        raise ValueError(f"{WHO}: out must be a folder, got {out!r}")
    check_choice(WHO, "metric", metric, METRICS)
    store = AttributionStore(out)
    if not isinstance(model, nn.Module):
        raise TypeError(f"{WHO}: model must be an nn.Module, got {type(model).__name__}")
    if any(m.training for m in model.modules()):
        raise ValueError(f"{WHO}: the model is in training mode; call model.eval() first")
    if model_fingerprint(model) != store.identity["model"]:
        raise ValueError(f"{WHO}: the model is not the one the maps in {out} were computed for (its weights "
                         "or structure differ)")
    orders = tuple(orders) if isinstance(orders, (list, tuple)) else (orders,)
    if not orders or len(set(orders)) != len(orders) or any(o not in ORDERS for o in orders):
        raise ValueError(f"{WHO}: orders must be a non-empty selection of 'morf', 'lerf', got {orders!r}")
    check_choice(WHO, "score", score, ("logit", "softmax"))
    positive_only = check_flag(WHO, "positive_only", positive_only)
    progress = check_flag(WHO, "progress", progress)
    patches_per_step = check_int(WHO, "patches_per_step", patches_per_step)
    forward_batch_size = check_int(WHO, "forward_batch_size", forward_batch_size)
    if steps is not None:
        steps = check_int(WHO, "steps", steps, minimum=0)
    if isinstance(patch_size, bool) or not (isinstance(patch_size, int) or (
            isinstance(patch_size, (tuple, list)) and all(isinstance(p, int) and not isinstance(p, bool)
                                                          for p in patch_size))):
        raise ValueError(f"{WHO}: patch_size must be an int or a tuple of ints, got {patch_size!r}")
    dataset, batch_size, num_workers, collate = _unpack_source(dataset_or_loader, batch_size, num_workers)
    n = len(dataset)
    want = store.identity["dataset"]
    if n != want["n"] or digest(_image_ids(WHO, dataset, None, n)) != want["ids"]:
        raise ValueError(f"{WHO}: the dataset is not the one of the run in {out} ({n} items vs {want['n']}, or "
                         "other image ids)")
    dev = resolve_device(WHO, device, model)
    dt = resolve_dtype(WHO, dtype, model)
    group = process_group(WHO, distributed, dev)

    settings = {"metric": metric, "patch_size": describe(patch_size), "steps": steps,
                "patches_per_step": patches_per_step, "orders": list(orders), "replacement": describe(replacement),
                "score": score, "positive_only": positive_only}
    folder = os.path.join(out, S.EVAL_DIR, f"{metric}-{digest(settings)[:8]}")
    os.makedirs(folder, exist_ok=True)
    if group.rank == 0 and not os.path.isfile(os.path.join(folder, "settings.json")):
        write_json(os.path.join(folder, "settings.json"), settings)

    shards = store.shards()
    mine = [k for k in my_shards(max(shards) + 1, group) if k in set(shards)]
    todo = [k for k in mine if not os.path.isfile(os.path.join(folder, f"shard-{k:06d}.npz"))]
    bar = _progress(progress and group.rank == 0, sum(sum(1 for r in store._records if r["shard"] == k) for k in todo),
                    f"{metric} (rank 0 of {group.world_size})" if group.active else metric)
    started = time.perf_counter()
    rp = dict(patch_size=patch_size, steps=steps, replacement=replacement, batch_size=forward_batch_size,
              patches_per_step=patches_per_step, score=score)
    try:
        for k in todo:
            maps, recs = store.shard(k)
            indices = [r["index"] for r in recs]
            batches = [indices[s:s + batch_size] for s in range(0, len(indices), batch_size)]
            loader = DataLoader(Indexed(dataset, skip=False), batch_sampler=batches, num_workers=num_workers,
                                collate_fn=Collate(collate))
            res: Dict[str, List[np.ndarray]] = {f"{o}_{w}": [] for o in orders for w in ("curves", "aopc")}
            pos = 0
            for batch in loader:
                if batch["error"] is not None or batch["x"] is None:
                    raise ValueError(f"{WHO}: cannot load images {batch['indices'][:3]} of shard {k} as in the "
                                     f"run ({batch['error'] or 'load error'})")
                x = batch["x"]
                x = x.to(device=dev, dtype=dt) if x.is_floating_point() else x.to(dev)
                m = len(batch["indices"])
                a = maps[pos:pos + m].to(device=dev, dtype=torch.float32)
                if positive_only:
                    a = a.clamp(min=0)
                t = torch.tensor([r["target"] for r in recs[pos:pos + m]], device=dev)
                for o in orders:
                    r = region_perturbation(model, x, a, target=t, order=o, **rp)
                    res[f"{o}_curves"].append(r.curves.cpu().numpy())
                    res[f"{o}_aopc"].append(r.aopc.cpu().numpy())
                pos += m
                if bar is not None:
                    bar.update(m)
            arrays = {key: np.concatenate(v) for key, v in res.items()}
            arrays["index"] = np.asarray(indices, dtype=np.int64)
            arrays["target"] = np.asarray([r["target"] for r in recs], dtype=np.int64)

            def write(tmp: str, arrays=arrays) -> None:
                with open(tmp, "wb") as fh:
                    np.savez(fh, **arrays)

            atomic_write(os.path.join(folder, f"shard-{k:06d}.npz"), write)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - started

    summary = S.merge_on_rank0(group, folder, lambda: _merge(store, folder, shards, orders, _label(store)),
                               "summary.json", errors=(RuntimeError, ValueError, OSError))
    return DatasetEvaluation(out=out, folder=folder, settings=settings, summary=summary,
                             shards_computed=len(todo), shards_reused=len(mine) - len(todo), seconds=seconds,
                             rank=group.rank, world_size=group.world_size)


def _merge(store: AttributionStore, folder: str, shards: List[int], orders: Tuple[str, ...], label: str
           ) -> Dict[str, Any]:
    """Rank 0: per-image results in dataset order and the summary (streamed over the shards)."""
    ids = {r["index"]: r["id"] for r in store._records}
    acc = {o: {"n": 0, "s": 0.0, "ss": 0.0, "curve": None} for o in orders}
    diff = {"n": 0, "s": 0.0, "ss": 0.0}
    rows_path = os.path.join(folder, "results.csv")

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "index", "target"] + [f"aopc_{o}" for o in orders])
            for k in shards:
                path = os.path.join(folder, f"shard-{k:06d}.npz")
                if not os.path.isfile(path):
                    raise RuntimeError(f"{WHO}: no results for shard {k} after all ranks returned")
                with np.load(path, allow_pickle=False) as d:
                    index, target = d["index"], d["target"]
                    aopcs = {o: d[f"{o}_aopc"] for o in orders}
                    for o in orders:
                        a, c = acc[o], d[f"{o}_curves"]
                        drops = c[:, :1] - c
                        a["n"] += len(index)
                        a["s"] += float(aopcs[o].sum())
                        a["ss"] += float((aopcs[o] ** 2).sum())
                        a["curve"] = drops.sum(0) if a["curve"] is None else a["curve"] + drops.sum(0)
                if len(orders) == 2:
                    dd = aopcs["morf"] - aopcs["lerf"]
                    diff["n"] += len(dd)
                    diff["s"] += float(dd.sum())
                    diff["ss"] += float((dd ** 2).sum())
                for j, i in enumerate(index.tolist()):
                    w.writerow([ids[i], i, int(target[j])] + [repr(float(aopcs[o][j])) for o in orders])

    atomic_write(rows_path, write)
    summary: Dict[str, Any] = {"label": label, "n_images": len(store), "n_skipped": store.summary.get("n_skipped", 0)}
    for o in orders:
        a = acc[o]
        summary[o] = dict(_stats(a["n"], a["s"], a["ss"]),
                          mean_drop_curve=[float(v) for v in a["curve"] / max(a["n"], 1)])
    if len(orders) == 2:
        summary["morf_minus_lerf"] = _stats(diff["n"], diff["s"], diff["ss"])
    write_json(os.path.join(folder, "summary.json"), summary)
    with open(os.path.join(folder, "summary.md"), "w", encoding="utf-8") as fh:
        fh.write(_table([(label, summary)]) + "\n")
    return summary


def _stats(n: int, s: float, ss: float) -> Dict[str, float]:
    mean = s / n if n else float("nan")
    var = max(ss / n - mean * mean, 0.0) * n / (n - 1) if n > 1 else 0.0
    std = math.sqrt(var)
    return {"n": n, "aopc_mean": mean, "aopc_std": std, "aopc_sem": std / math.sqrt(n) if n else float("nan")}


def _fmt(st: Optional[Dict[str, Any]]) -> str:
    if not st:
        return "-"
    return f"{st['aopc_mean']:.4f} ± {st['aopc_sem']:.4f}"


def _table(rows: List[Tuple[str, Dict[str, Any]]]) -> str:
    lines = ["| run | images | AOPC MoRF (↑) | AOPC LeRF (↓) | MoRF − LeRF (↑) |", "|---|---|---|---|---|"]
    for label, s in rows:
        n = (s.get("morf") or s.get("lerf") or {}).get("n", 0)
        lines.append(f"| {label} | {n} | {_fmt(s.get('morf'))} | {_fmt(s.get('lerf'))} | "
                     f"{_fmt(s.get('morf_minus_lerf'))} |")
    return "\n".join(lines)


def summary_table(evaluations: Sequence[Union[DatasetEvaluation, PathLike]], labels: Optional[Sequence[str]] = None
                  ) -> str:
    """A Markdown table comparing evaluations: one row per run with the number of images
    and the mean AOPC ± its standard error for MoRF, LeRF and their paired difference.

    Args:
        evaluations: :class:`DatasetEvaluation` objects, or evaluation folders
            (``out/evaluation/NAME``) holding a ``summary.json``.
        labels (sequence of str, optional): row names.  Default: each run's label (the CLI's
            method name, else the method class and LRP preset).
    """
    rows = []
    for j, ev in enumerate(evaluations):
        if isinstance(ev, DatasetEvaluation):
            s = ev.summary
        elif isinstance(ev, (str, os.PathLike)):
            path = os.path.join(os.fspath(ev), "summary.json")
            if not os.path.isfile(path):
                raise ValueError(f"summary_table: no summary.json in {os.fspath(ev)}")
            s = read_json(path)
        else:
            raise TypeError(f"summary_table: expected DatasetEvaluation objects or folders, got {type(ev).__name__}")
        rows.append((labels[j] if labels is not None else s.get("label", f"run {j}"), s))
    if labels is not None and len(labels) != len(rows):
        raise ValueError(f"summary_table: {len(labels)} labels for {len(rows)} evaluations")
    return _table(rows)
