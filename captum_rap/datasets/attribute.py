"""``attribute_dataset``: every image of a dataset through one attribution method, written in
shards with a manifest, resumable, split over the ranks of a ``torchrun`` job."""

from __future__ import annotations

import inspect
import json
import logging
import os
import platform
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, SequentialSampler

from .._compat import Attribution
from . import _shards as S
from ._common import (PathLike, ProcessGroup, check_choice, check_flag, check_int, check_out, check_save_dtype,
                      describe, digest, json_float, model_fingerprint, my_shards, process_group, resolve_device,
                      resolve_dtype, SAVE_DTYPES, write_json, _tensor_digest)
from .images import Collate, ImageFiles, Indexed, ShardBatches, split_item
from .images import image_ids as _image_ids

__all__ = ["attribute_dataset", "DatasetRun"]

logger = logging.getLogger("captum_rap.datasets")
WHO = "attribute_dataset"
TARGETS = ("predicted", "label")
FLOAT16_MAX = 65504.0


@dataclass
class DatasetRun:
    """What :func:`attribute_dataset` returns (on every rank).

    Attributes:
        out (str): the output folder.
        rank (int), world_size (int): this process in the job.
        n_images (int): items in the dataset.
        n_shards (int): shards of the whole run.
        shards_computed (int): shards this rank computed in this call.
        shards_reused (int): shards of this rank that an earlier call had finished.
        images_computed (int): images (attributed or skipped) this rank handled in this call.
        seconds (float): wall time of this rank's work in this call (loading included).
        summary (dict): ``summary.json``: ``n_attributed``, ``n_skipped``, ``map_shape``, ...
    """

    out: str
    rank: int
    world_size: int
    n_images: int
    n_shards: int
    shards_computed: int
    shards_reused: int
    images_computed: int
    seconds: float
    summary: Dict[str, Any] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        """Images per second of this rank in this call (0 when it computed nothing)."""
        return self.images_computed / self.seconds if self.seconds > 0 and self.images_computed else 0.0

    @property
    def n_skipped(self) -> int:
        return int(self.summary.get("n_skipped", 0))

    def store(self):
        """The finished run as an :class:`~captum_rap.datasets.AttributionStore`."""
        from .store import AttributionStore

        return AttributionStore(self.out)


# ----------------------------------------------------------------------------- arguments
def _unpack_source(dataset: Any, batch_size: Optional[int], num_workers: Optional[int]
                   ) -> Tuple[Any, int, int, Optional[Callable]]:
    """``(dataset, batch_size, num_workers, collate_fn)`` from a dataset, a DataLoader or a folder."""
    collate = None
    if isinstance(dataset, (str, os.PathLike)):
        dataset = ImageFiles(dataset)
    elif isinstance(dataset, DataLoader):
        loader = dataset
        if not isinstance(loader.sampler, SequentialSampler) or loader.batch_size is None:
            raise ValueError(f"{WHO}: a DataLoader must read its dataset in order in batches (no sampler, "
                             "shuffle or batch_sampler): the order defines the shards; pass the dataset instead")
        if batch_size is not None and batch_size != loader.batch_size:
            raise ValueError(f"{WHO}: batch_size={batch_size!r} but the DataLoader has batch_size="
                             f"{loader.batch_size}")
        if num_workers is not None and num_workers != loader.num_workers:
            raise ValueError(f"{WHO}: num_workers={num_workers!r} but the DataLoader has num_workers="
                             f"{loader.num_workers}")
        batch_size, num_workers = loader.batch_size, loader.num_workers
        if loader.collate_fn is not torch.utils.data.default_collate:
            collate = loader.collate_fn
        dataset = loader.dataset
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise TypeError(f"{WHO}: dataset_or_loader must be a map-style dataset (__getitem__, __len__), a "
                        f"DataLoader over one, or a folder, got {type(dataset).__name__}")
    batch_size = check_int(WHO, "batch_size", 32 if batch_size is None else batch_size)
    num_workers = check_int(WHO, "num_workers", 0 if num_workers is None else num_workers, minimum=0)
    return dataset, batch_size, num_workers, collate


def _check_target(target: Any) -> Any:
    if isinstance(target, str):
        return check_choice(WHO, "target", target, TARGETS)
    if isinstance(target, bool):
        raise ValueError(f"{WHO}: target must be 'predicted', 'label', a class index or a callable, got {target!r}")
    if isinstance(target, int):
        if target < 0:
            raise ValueError(f"{WHO}: target must be a class index >= 0, got {target}")
        return target
    if callable(target):
        return target
    raise ValueError(f"{WHO}: target must be 'predicted', 'label', a class index or a callable, got {target!r}")


def _check_attribute_kwargs(method: Attribution, kwargs: Any) -> Dict[str, Any]:
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise ValueError(f"{WHO}: attribute_kwargs must be a dict of keyword arguments, got {type(kwargs).__name__}")
    reserved = sorted(set(kwargs) & {"inputs", "target", "return_convergence_delta"})
    if reserved:
        raise ValueError(f"{WHO}: attribute_kwargs may not set {', '.join(reserved)} (attribute_dataset does)")
    params = inspect.signature(method.attribute).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise TypeError(f"{WHO}: {type(method).__name__}.attribute() has no argument(s) {', '.join(unknown)} "
                            "(in attribute_kwargs)")
    return dict(kwargs)


def _first_item(dataset: Any, n: int, skip: bool) -> Tuple[int, Tensor]:
    """The first item that loads: ``(index, input)``."""
    reasons = []
    for i in range(n):
        try:
            x, _ = split_item(dataset[i])
            return i, x
        except TypeError:
            raise
        except Exception as exc:
            if not skip:
                raise
            reasons.append(f"{type(exc).__name__}: {exc}")
    raise ValueError(f"{WHO}: none of the {n} items of the dataset can be read (first error: "
                     f"{reasons[0] if reasons else '-'})")


def _diff(a: Any, b: Any, path: str = "") -> List[str]:
    """Paths where two JSON values differ (at most 4)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: List[str] = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{path}.{k}" if path else k)
            if len(out) >= 4:
                break
        return out[:4]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = []
        for i, (u, v) in enumerate(zip(a, b)):
            out += _diff(u, v, f"{path}[{i}]")
        return out[:4]
    if a != b:
        sa, sb = repr(a), repr(b)
        return [f"{path}: {sa[:60]} (folder) vs {sb[:60]} (this call)"]
    return []


def _claim_folder(out: str, identity: Dict[str, Any], metadata: Any, overwrite: bool, group: ProcessGroup) -> None:
    """Check that ``out`` is empty, new or a run with the same identity; rank 0 writes
    ``run.json``.  ``overwrite`` deletes an earlier run's files (and waits for rank 0)."""
    run_file = os.path.join(out, S.RUN_FILE)
    if overwrite:
        if group.rank == 0 and os.path.isdir(out):
            S.remove_run(out)
        group.barrier()
    existing = S.load_json_or_none(run_file)
    if existing is None:
        foreign = S.foreign_entries(out)
        if foreign:
            raise ValueError(f"{WHO}: the output folder {out} is not empty and holds no attribute_dataset run "
                             f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); choose a new or "
                             "empty folder")
    elif existing.get("identity") != identity:
        diffs = _diff(existing.get("identity"), identity)
        raise ValueError(f"{WHO}: the output folder {out} belongs to another run (different "
                         f"{', '.join(sorted({d.split('.')[0].split(':')[0] for d in diffs}))}: "
                         f"{'; '.join(diffs)}); use another folder, or overwrite=True to replace it")
    os.makedirs(os.path.join(out, S.SHARD_DIR), exist_ok=True)
    os.makedirs(os.path.join(out, S.JOURNAL_DIR), exist_ok=True)
    if existing is None and group.rank == 0:
        from .. import __version__

        write_json(run_file, {"identity": identity, "metadata": metadata, "versions": {
            "captum_rap": __version__, "torch": torch.__version__, "python": platform.python_version()}})


# ----------------------------------------------------------------------------- one batch
def _targets(target: Any, logits: Tensor, labels: List[Optional[int]], ids: List[str]) -> Tensor:
    n, c = logits.shape
    if target == "predicted":
        return logits.argmax(1)
    if target == "label":
        for lab, i in zip(labels, ids):
            if lab is None:
                raise ValueError(f"{WHO}: target='label' but image {i!r} has no label (items must be "
                                 "(input, label) pairs)")
        t = torch.tensor(labels, dtype=torch.long, device=logits.device)
    elif isinstance(target, int):
        t = torch.full((n,), target, dtype=torch.long, device=logits.device)
    else:
        lab = None if any(v is None for v in labels) else torch.tensor(labels, dtype=torch.long)
        t = target(logits.detach(), lab)
        if not isinstance(t, Tensor) or t.dtype not in (torch.int64, torch.int32) or tuple(t.shape) != (n,):
            raise ValueError(f"{WHO}: the target callable must return an integer tensor of shape ({n},), got "
                             f"{t.dtype if isinstance(t, Tensor) else type(t).__name__} "
                             f"{tuple(t.shape) if isinstance(t, Tensor) else ''}")
        t = t.to(device=logits.device, dtype=torch.long)
    bad = ((t < 0) | (t >= c)).nonzero().flatten()
    if bad.numel():
        j = int(bad[0])
        raise ValueError(f"{WHO}: target {int(t[j])} of image {ids[j]!r} is out of range for {c} outputs")
    return t


def _attribute_batch(method: Attribution, x: Tensor, target: Any, labels: List[Optional[int]], ids: List[str],
                     kwargs: Dict[str, Any], has_delta: bool) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """``(maps, targets, logits of the targets, deltas or None)`` of one batch."""
    forward = method.forward_func
    afa = kwargs.get("additional_forward_args")
    with torch.no_grad():
        out = forward(x, *afa) if isinstance(afa, tuple) else forward(x) if afa is None else forward(x, afa)
    if not isinstance(out, Tensor) or out.dim() != 2:
        raise ValueError(f"{WHO}: the model must return (N, C) scores, got "
                         f"{tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}")
    t = _targets(target, out, labels, ids)
    logit = out.gather(1, t[:, None])[:, 0]
    res = method.attribute(x, target=t, **kwargs, **({"return_convergence_delta": True} if has_delta else {}))
    maps, delta = res if has_delta else (res, None)
    if isinstance(maps, (tuple, list)):
        if len(maps) != 1:
            raise ValueError(f"{WHO}: the method returned {len(maps)} attributions; one input tensor is supported")
        maps = maps[0]
    if not isinstance(maps, Tensor) or maps.shape[0] != x.shape[0]:
        raise ValueError(f"{WHO}: the method must return one map per image (a tensor of {x.shape[0]} rows)")
    if delta is not None:
        delta = torch.as_tensor(delta).reshape(-1)
    return maps.detach(), t, logit, delta


# ----------------------------------------------------------------------------- main
def attribute_dataset(
    method: Attribution,
    dataset_or_loader: Any,
    out: PathLike,
    *,
    target: Union[str, int, Callable[[Tensor, Optional[Tensor]], Tensor]] = "predicted",
    batch_size: Optional[int] = None,
    num_workers: Optional[int] = None,
    device: Union[None, str, torch.device] = None,
    dtype: Optional[torch.dtype] = None,
    shard_size: int = 256,
    save_dtype: Union[str, torch.dtype] = "float32",
    format: str = "auto",
    attribute_kwargs: Optional[Dict[str, Any]] = None,
    image_ids: Union[None, List[str], Callable[[int], str]] = None,
    model: Optional[nn.Module] = None,
    on_error: str = "skip",
    overwrite: bool = False,
    progress: bool = True,
    distributed: Optional[bool] = None,
    metadata: Optional[Dict[str, Any]] = None,
) -> DatasetRun:
    r"""Attribute every image of a dataset with ``method``; write the maps in shards and a
    manifest that :class:`~captum_rap.datasets.AttributionStore` reads.

    The dataset is cut into shards of ``shard_size`` consecutive items (shard ``k`` = items
    ``k * shard_size ...``), each computed in batches of ``batch_size`` that never cross a
    shard and written all or nothing (temporary file, then rename) to
    ``out/shards/shard-K.{safetensors,npz}``; a line in ``out/journal/`` then records it.  A
    second call with the same arguments (after a crash, a kill, Ctrl-C) recomputes only the
    shards without a record; a folder that holds another run (another method, its arguments,
    model weights, dataset, target or settings) is an error.

    Under ``torchrun --nproc_per_node=N`` (or any initialised ``torch.distributed`` group)
    shard ``k`` is computed by rank ``k % N`` (``DistributedSampler``'s interleaving, no
    padding: every image once); ranks do not wait on each other until the end, where rank 0
    checks that every image is in exactly one shard and writes ``manifest.jsonl`` (one line
    per image: ``id``, ``index``, ``label``, ``target``, ``logit``, ``delta``, ``shard``,
    ``offset``), ``skipped.jsonl`` and ``summary.json``.  A shard's numbers do not depend on
    which rank computed it: a 2-process run gives the same maps, bit for bit, as one process
    with the same thread count (``OMP_NUM_THREADS``; torchrun sets 1 per process).

    Items that raise when loaded (a broken or non-image file) are listed with the reason in
    ``skipped.jsonl`` and logged (logger ``captum_rap.datasets``), and a warning gives their
    number; so are maps with NaN or infinite values.  ``on_error="raise"`` stops instead.

    Memory: one batch of work plus one shard of maps (``shard_size`` maps in ``save_dtype``);
    nothing grows with the dataset.

    Args:
        method (Attribution): any Captum attribution over one input tensor: ``RAP``, ``LRP``,
            ``CLRP``, ``SGLRP``, ``CD`` (pass ``feature_mask`` in ``attribute_kwargs``),
            Captum's ``Saliency``, ``IntegratedGradients``, ...  Its ``forward_func`` gives the
            logits; the convergence delta is stored when ``method.has_convergence_delta()``.
        dataset_or_loader (Dataset, DataLoader or str): a map-style dataset whose items are
            input tensors or ``(input, label)`` pairs, a ``DataLoader`` over one read in order
            (its batch size, workers and collate function are used), or a folder
            (:class:`ImageFiles`, no resize).
        out (str or PathLike): the output folder (created; new, empty or this run's).
        target (str, int or Callable, optional): ``"predicted"`` (arg-max of the logits),
            ``"label"`` (the item's label), a class index, or ``callable(logits, labels) ->``
            an integer tensor (N,) (``labels`` is None when items have none).
            Default: ``"predicted"``.
        batch_size (int, optional): images per attribute call.  Default: the loader's, else 32.
        num_workers (int, optional): DataLoader worker processes.  Default: the loader's, else 0.
        device (str or torch.device, optional): where inputs go; must be the model's device
            (the model is never moved).  Default: the model's.
        dtype (torch.dtype, optional): floating inputs are cast to it.  Default: the dtype of
            the model's parameters.
        shard_size (int, optional): images per shard (the unit of resumption and of the split
            over ranks).  Default: 256.
        save_dtype (str, optional): ``"float32"`` or ``"float16"`` (half the size, about 3
            significant digits: for display and ranking; sums of large cancelling entries
            lose their meaning.  A map with an entry beyond float16's range (65504) is an
            error, which RAP on EfficientNet-Lite0 reaches).  Default: ``"float32"``.
        format (str, optional): ``"safetensors"``, ``"npz"`` or ``"auto"`` (safetensors when
            installed).  Default: ``"auto"``.
        attribute_kwargs (dict, optional): more arguments of ``method.attribute`` (e.g.
            ``feature_mask``, ``baselines``, ``n_steps``), the same for every batch.
        image_ids (list or Callable, optional): a unique string per item (or
            ``callable(index)``).  Default: the dataset's ``ids`` (``ImageFiles``: paths), a
            torchvision ``ImageFolder``'s file paths, else the index.
        model (nn.Module, optional): the model whose weights identify the run.  Default:
            ``method.forward_func``.
        on_error (str, optional): ``"skip"`` or ``"raise"`` for items that fail to load.
            Default: ``"skip"``.
        overwrite (bool, optional): delete an earlier run in ``out`` first (only the files
            ``attribute_dataset`` writes; under torchrun rank 0 deletes and the other ranks
            wait for it, the one wait at the start).  Default: False.
        progress (bool, optional): a progress bar with images/s on rank 0 (tqdm).  Default: True.
        distributed (bool, optional): None: split over the ranks of an initialised
            ``torch.distributed`` group or of a ``torchrun`` environment (gloo on CPU, NCCL on
            CUDA); False: one process; True: require a group.  Default: None.
        metadata (dict, optional): JSON-serialisable notes kept in ``run.json`` (not part of
            the run's identity).

    Returns:
        :class:`DatasetRun`: counts of this call (shards computed and reused, images/s) and
        the run's ``summary``.

    Raises:
        TypeError: an unknown keyword, an ``attribute_kwargs`` key ``method.attribute`` does
            not take, items that are not tensors.
        ValueError: a bad argument (named), a foreign output folder, inputs of different
            shapes (resize them: ``ImageFiles(size=...)``), a model in training mode, targets
            out of range, no readable image at all.

    Examples::

        >>> from captum_rap import RAP
        >>> from captum_rap.datasets import attribute_dataset, AttributionStore, ImageFiles
        >>> run = attribute_dataset(RAP(model), ImageFiles("val/", transform=preprocess), "rap_val",
        ...                         batch_size=16, save_dtype="float16")
        >>> store = AttributionStore("rap_val")
        >>> attr, record = store[store.ids()[0]]     # record: target, logit, delta, ...

    Under ``torchrun --nproc_per_node=2 script.py`` the same call splits the work.
    """
    if not isinstance(method, Attribution):
        raise TypeError(f"{WHO}: method must be a Captum Attribution (RAP(model), LRP(model), Saliency(model), "
                        f"...), got {type(method).__name__}")
    forward = getattr(method, "forward_func", None)
    if not callable(forward):
        raise TypeError(f"{WHO}: {type(method).__name__} has no forward_func")
    if model is None:
        model = forward if isinstance(forward, nn.Module) else getattr(forward, "__self__", None)
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"{WHO}: model must be an nn.Module, got {type(model).__name__}")
    if model is None:
        warnings.warn(f"{WHO}: the forward function is not an nn.Module, so the model weights are not part of "
                      "the run's identity; pass model= to include them", UserWarning, stacklevel=2)
    if model is not None and any(m.training for m in model.modules()):
        raise ValueError(f"{WHO}: the model is in training mode (batch norm would use each batch's statistics, "
                         "dropout is random); call model.eval() first")
    out = check_out(WHO, out)
    target = _check_target(target)
    dataset, batch_size, num_workers, collate = _unpack_source(dataset_or_loader, batch_size, num_workers)
    shard_size = check_int(WHO, "shard_size", shard_size)
    save_name = check_save_dtype(WHO, save_dtype)
    fmt = S.resolve_format(WHO, format)
    kwargs = _check_attribute_kwargs(method, attribute_kwargs)
    skip = check_choice(WHO, "on_error", on_error, ("skip", "raise")) == "skip"
    overwrite = check_flag(WHO, "overwrite", overwrite)
    progress = check_flag(WHO, "progress", progress)
    dev = resolve_device(WHO, device, model)
    dt = resolve_dtype(WHO, dtype, model)
    if metadata is not None:
        try:
            ok = isinstance(metadata, dict) and bool(json.dumps(metadata, allow_nan=False))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"{WHO}: metadata must be a JSON-serialisable dict")
    n = len(dataset)
    if n == 0:
        raise ValueError(f"{WHO}: the dataset is empty")
    ids = _image_ids(WHO, dataset, image_ids, n)
    first_index, first = _first_item(dataset, n, skip)
    group = process_group(WHO, distributed, dev)

    identity = {
        "method": {"class": f"{type(method).__module__}.{type(method).__qualname__}",
                   "arguments": describe(method, model)},
        "attribute_kwargs": describe(kwargs, model),
        "model": model_fingerprint(model if model is not None else forward),
        "dataset": {"class": f"{type(dataset).__module__}.{type(dataset).__qualname__}", "n": n,
                    "ids": digest(ids), "transform": describe(getattr(dataset, "transform", None)),
                    "size": describe(getattr(dataset, "size", None)),
                    "first": {"index": first_index, "shape": list(first.shape), "dtype": str(first.dtype),
                              "sha256": _tensor_digest(first)}},
        "target": target if isinstance(target, (str, int)) else describe(target),
        "settings": {"batch_size": batch_size, "shard_size": shard_size, "save_dtype": save_name,
                     "format": fmt, "dtype": str(dt)},
    }
    _claim_folder(out, identity, metadata, overwrite, group)

    n_shards = -(-n // shard_size)
    done = S.finished_shards(out, n_shards)
    mine_all = my_shards(n_shards, group)
    todo = [k for k in mine_all if k not in done]
    sampler = ShardBatches(todo, shard_size, batch_size, n)
    loader = DataLoader(Indexed(dataset, skip), batch_sampler=sampler, num_workers=num_workers,
                        collate_fn=Collate(collate))
    has_delta = bool(method.has_convergence_delta())
    ref_shape = tuple(first.shape)
    storage = SAVE_DTYPES[save_name]
    desc = type(method).__name__ + (f" (rank 0 of {group.world_size})" if group.active else "")
    bar = _progress(progress and group.rank == 0, sum(len(sampler.shard_range(k)) for k in todo), desc)
    started = time.perf_counter()
    handled = computed = skipped = 0
    buf: Optional[_ShardBuffer] = None
    try:
        for batch in loader:
            indices = batch["indices"] + [i for i, _ in batch["skipped"]]
            k = min(indices) // shard_size
            if buf is None or buf.k != k:
                buf = _ShardBuffer(k, len(sampler.shard_range(k)))
            for i, reason in batch["skipped"]:
                logger.warning("skipped %s: %s", ids[i], reason)
                buf.skipped.append({"index": i, "id": ids[i], "reason": reason})
            if batch["error"] is not None:
                raise _batch_error(batch, ids, ref_shape, first_index)
            n_skip = len(buf.skipped)
            if batch["x"] is not None:
                x = batch["x"]
                if tuple(x.shape[1:]) != ref_shape:
                    j = batch["indices"][0]
                    raise ValueError(_mixed(ids[first_index], ref_shape, ids[j], tuple(x.shape[1:])))
                x = x.to(device=dev, dtype=dt) if x.is_floating_point() else x.to(dev)
                bids = [ids[i] for i in batch["indices"]]
                maps, t, logit, delta = _attribute_batch(method, x, target, batch["labels"], bids, kwargs, has_delta)
                buf.add(batch["indices"], bids, batch["labels"], maps, t, logit, delta, storage)
            buf.handled += len(indices)
            handled += len(indices)
            skipped += len(batch["skipped"]) + len(buf.skipped) - n_skip
            if bar is not None:
                bar.update(len(indices))
                if skipped:
                    bar.set_postfix(skipped=skipped, refresh=False)
            if buf.handled == buf.expected:
                buf.flush(out, fmt, group)
                computed += 1
                buf = None
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - started

    # the only wait: every rank has finished its shards; rank 0 merges the manifests
    summary = S.merge_on_rank0(group, out, lambda: S.merge_manifest(out, n, n_shards, {"world_size": group.world_size}),
                               S.SUMMARY_FILE)
    if summary["n_attributed"] == 0:
        raise ValueError(f"{WHO}: no image of the dataset could be attributed ({summary['n_skipped']} skipped; "
                         f"see {os.path.join(out, S.SKIPPED_FILE)})")
    if summary["n_skipped"] and group.rank == 0:
        warnings.warn(f"{WHO}: {summary['n_skipped']} of {n} images were skipped (unreadable, not images or "
                      f"non-finite maps); they are listed in {os.path.join(out, S.SKIPPED_FILE)}",
                      UserWarning, stacklevel=2)
    return DatasetRun(out=out, rank=group.rank, world_size=group.world_size, n_images=n, n_shards=n_shards,
                      shards_computed=computed, shards_reused=len(mine_all) - len(todo), images_computed=handled,
                      seconds=seconds, summary=summary)


def _progress(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True)


def _mixed(id_a: str, shape_a: Tuple[int, ...], id_b: str, shape_b: Tuple[int, ...]) -> str:
    return (f"{WHO}: the inputs have different shapes: {id_a!r} is {tuple(shape_a)}, {id_b!r} is "
            f"{tuple(shape_b)}; resize them to one size (ImageFiles(size=...), a Resize transform, or "
            "--size on the command line)")


def _batch_error(batch: Dict[str, Any], ids: List[str], ref_shape: Tuple[int, ...], first_index: int) -> Exception:
    if batch["shapes"] is not None:
        (i, s), (j, t) = batch["shapes"][0], next(p for p in batch["shapes"] if p[1] != batch["shapes"][0][1])
        if s != ref_shape:
            j, t = i, s
        return ValueError(_mixed(ids[first_index], ref_shape, ids[j], t))
    return TypeError(f"{WHO}: {batch['error']}")


class _ShardBuffer:
    """The maps and records of one shard until it is complete."""

    def __init__(self, k: int, expected: int) -> None:
        self.k, self.expected, self.handled = k, expected, 0
        self.maps: List[Tensor] = []
        self.indices: List[int] = []
        self.records: List[Dict[str, Any]] = []
        self.skipped: List[Dict[str, Any]] = []
        self.started = time.perf_counter()

    def add(self, indices, ids, labels, maps, t, logit, delta, storage) -> None:
        maps = maps.to("cpu")
        flat = maps.reshape(maps.shape[0], -1)
        finite = torch.isfinite(flat).all(1) if flat.is_floating_point() else torch.ones(len(indices), dtype=torch.bool)
        if storage is torch.float16:
            big = flat.abs().amax(1) > FLOAT16_MAX if flat.numel() else torch.zeros(len(indices), dtype=torch.bool)
            over = (big & finite).nonzero().flatten()
            if over.numel():
                j = int(over[0])
                raise ValueError(f"{WHO}: the map of {ids[j]!r} has entries up to {float(flat[j].abs().max()):.4g}, "
                                 "beyond float16's range (65504; its positive and negative parts cancel); use "
                                 "save_dtype='float32'")
        t, logit = t.tolist(), logit.detach().to("cpu", torch.float64).tolist()
        dl = delta.detach().to("cpu", torch.float64).tolist() if delta is not None else None
        for j, i in enumerate(indices):
            if not bool(finite[j]):
                logger.warning("skipped %s: the attribution has NaN or infinite values", ids[j])
                self.skipped.append({"index": i, "id": ids[j], "reason": "the attribution has NaN or infinite values"})
                continue
            self.maps.append(maps[j].to(storage))
            self.indices.append(i)
            self.records.append({"index": i, "id": ids[j], "label": labels[j], "target": int(t[j]),
                                 "logit": json_float(logit[j]), "delta": None if dl is None else json_float(dl[j])})

    def flush(self, out: str, fmt: str, group: ProcessGroup) -> None:
        name, size, shape = None, None, None
        order = sorted(range(len(self.indices)), key=lambda j: self.indices[j])
        if self.maps:
            name = S.shard_name(self.k, fmt)
            maps = torch.stack([self.maps[j] for j in order])
            shape = list(maps.shape[1:])
            size = S.write_shard(os.path.join(out, name), maps, [self.indices[j] for j in order], fmt)
        S.record_shard(out, group.rank, group.world_size, {
            "shard": self.k, "file": name, "bytes": size, "rank": group.rank, "world_size": group.world_size,
            "images": [self.records[j] for j in order], "skipped": sorted(self.skipped, key=lambda r: r["index"]),
            "shape": shape, "seconds": round(time.perf_counter() - self.started, 3)})
