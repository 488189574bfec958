"""Shard files (the maps of up to ``shard_size`` consecutive images) in safetensors or npz,
written atomically and read one row at a time; the journals that record finished shards;
and the manifest that rank 0 merges from them."""

from __future__ import annotations

import glob
import json
import os
import zipfile
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from ._common import append_line, atomic_write, read_json, read_jsonl, write_json, write_jsonl

FORMATS = ("safetensors", "npz")
SHARD_DIR = "shards"
JOURNAL_DIR = "journal"
RUN_FILE = "run.json"
MANIFEST_FILE = "manifest.jsonl"
SKIPPED_FILE = "skipped.jsonl"
SUMMARY_FILE = "summary.json"
EVAL_DIR = "evaluation"
#: everything attribute_dataset may create in its output folder
OWN_NAMES = frozenset({SHARD_DIR, JOURNAL_DIR, RUN_FILE, MANIFEST_FILE, SKIPPED_FILE, SUMMARY_FILE, EVAL_DIR})


def have_safetensors() -> bool:
    try:
        import safetensors.torch  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_format(who: str, fmt: Any) -> str:
    if fmt == "auto":
        return "safetensors" if have_safetensors() else "npz"
    if fmt not in FORMATS:
        raise ValueError(f"{who}: format must be 'auto', 'safetensors' or 'npz', got {fmt!r}")
    if fmt == "safetensors" and not have_safetensors():
        raise ValueError(f"{who}: format='safetensors' needs `pip install safetensors` (or use format='npz')")
    return fmt


def shard_name(k: int, fmt: str) -> str:
    return f"{SHARD_DIR}/shard-{k:06d}.{fmt}"


# ----------------------------------------------------------------------------- shard files
def write_shard(path: str, maps: Tensor, indices: List[int], fmt: str) -> int:
    """Write ``maps`` (n, ...) and their dataset ``indices`` atomically; returns the size."""
    maps = maps.detach().to("cpu").contiguous()
    index = torch.tensor(indices, dtype=torch.int64)

    def write(tmp: str) -> None:
        if fmt == "safetensors":
            from safetensors.torch import save_file

            save_file({"maps": maps, "index": index}, tmp, metadata={"format": "captum_rap.datasets/1"})
        else:
            with open(tmp, "wb") as fh:  # uncompressed: rows can be read without the rest
                np.savez(fh, maps=maps.numpy(), index=index.numpy())

    return atomic_write(path, write)


def read_shard(path: str, fmt: str) -> Tuple[Tensor, Tensor]:
    """``(maps, index)`` of a whole shard."""
    if fmt == "safetensors":
        from safetensors.torch import load_file

        d = load_file(path)
        return d["maps"], d["index"]
    with np.load(path, allow_pickle=False) as d:
        return torch.from_numpy(d["maps"].copy()), torch.from_numpy(d["index"].copy())


def read_row(path: str, fmt: str, offset: int) -> Tensor:
    """Row ``offset`` of a shard's maps, without reading the other rows."""
    if fmt == "safetensors":
        from safetensors import safe_open

        with safe_open(path, framework="pt") as fh:
            return fh.get_slice("maps")[offset:offset + 1][0].clone()
    with zipfile.ZipFile(path) as zf, zf.open("maps.npy") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        if fortran or not 0 <= offset < shape[0]:
            raise ValueError(f"{path}: row {offset} of a {'Fortran-ordered ' if fortran else ''}array {shape}")
        row = int(np.prod(shape[1:], dtype=np.int64))
        fh.seek(fh.tell() + offset * row * dtype.itemsize)
        buf = fh.read(row * dtype.itemsize)
        return torch.from_numpy(np.frombuffer(buf, dtype=dtype).reshape(shape[1:]).copy())


# ----------------------------------------------------------------------------- journals
def journal_path(out: str, rank: int, world: int) -> str:
    return os.path.join(out, JOURNAL_DIR, f"rank{rank:05d}-of{world:05d}.jsonl")


def record_shard(out: str, rank: int, world: int, entry: Dict[str, Any]) -> None:
    """Append a finished shard (its file is already in place) to this rank's journal."""
    append_line(journal_path(out, rank, world), entry)


def finished_shards(out: str, n_shards: int) -> Dict[int, Dict[str, Any]]:
    """Shard id -> journal entry, for the shards whose entry parses and whose file is in
    place with the recorded size (a torn line or a missing file: the shard is not finished)."""
    done: Dict[int, Dict[str, Any]] = {}
    for path in sorted(glob.glob(os.path.join(out, JOURNAL_DIR, "*.jsonl"))):
        for entry in read_jsonl(path, strict=False):
            if not isinstance(entry, dict) or not isinstance(entry.get("shard"), int):
                continue
            k = entry["shard"]
            if not 0 <= k < n_shards:
                continue
            f = entry.get("file")
            if f is not None:
                full = os.path.join(out, f)
                if not os.path.isfile(full) or os.path.getsize(full) != entry.get("bytes"):
                    continue
            done[k] = entry
    return done


# ----------------------------------------------------------------------------- manifest
def merge_manifest(out: str, n_images: int, n_shards: int, summary: Dict[str, Any]) -> Dict[str, Any]:
    """Rank 0, after every rank finished: check that every image is in exactly one finished
    shard (attributed or skipped), then write ``skipped.jsonl``, ``manifest.jsonl`` (one line
    per attributed image, in dataset order) and, last, ``summary.json``."""
    done = finished_shards(out, n_shards)
    missing = [k for k in range(n_shards) if k not in done]
    if missing:
        raise RuntimeError(f"attribute_dataset: {len(missing)} shard(s) have no finished record after all "
                           f"ranks returned (first: {missing[:5]}); run the same call again to finish them")
    rows: List[Dict[str, Any]] = []
    skipped: List[Dict[str, Any]] = []
    seen = np.zeros(n_images, dtype=np.int64)
    for k in range(n_shards):
        entry = done[k]
        for off, rec in enumerate(entry["images"]):
            row = dict(rec)
            row.update(shard=k, offset=off)
            rows.append(row)
            seen[rec["index"]] += 1
        for rec in entry.get("skipped", []):
            skipped.append(dict(rec, shard=k))
            seen[rec["index"]] += 1
    if not (seen == 1).all():
        bad = np.nonzero(seen != 1)[0][:5].tolist()
        raise RuntimeError(f"attribute_dataset: images {bad} are recorded {seen[bad].tolist()} times "
                           "(each must be exactly once)")
    rows.sort(key=lambda r: r["index"])
    skipped.sort(key=lambda r: r["index"])
    shapes = {tuple(done[k]["shape"]) for k in range(n_shards) if done[k].get("shape") is not None}
    if len(shapes) > 1:
        raise RuntimeError(f"attribute_dataset: the shards hold maps of different shapes {sorted(shapes)}")
    write_jsonl(os.path.join(out, SKIPPED_FILE), skipped)
    write_jsonl(os.path.join(out, MANIFEST_FILE), rows)
    summary = dict(summary, n_images=n_images, n_attributed=len(rows), n_skipped=len(skipped),
                   n_shards=n_shards, map_shape=list(next(iter(shapes))) if shapes else None,
                   ranks=sorted({int(done[k].get("rank", 0)) for k in range(n_shards)}),
                   computed_seconds=round(sum(float(done[k].get("seconds", 0.0)) for k in range(n_shards)), 3))
    write_json(os.path.join(out, SUMMARY_FILE), summary)
    return summary


def remove_temporaries(folder: str) -> None:
    """Delete temporary files left by killed writers (call when no writer runs)."""
    for path in glob.glob(os.path.join(glob.escape(folder), "**", ".*.tmp-*"), recursive=True):
        try:
            os.remove(path)
        except OSError:
            pass


def merge_on_rank0(group: Any, folder: str, merge: Callable[[], Dict[str, Any]], summary_file: str,
                   errors: Tuple[type, ...] = (RuntimeError, ValueError)) -> Dict[str, Any]:
    """The end of a sharded run on every rank: wait until every rank has finished its
    shards; rank 0 removes the temporaries and runs ``merge`` (its error, one of
    ``errors``, is raised as ``RuntimeError`` on every rank); then every rank returns the
    summary (rank 0 the one ``merge`` returned, the others read ``summary_file``)."""
    group.barrier()
    summary: Dict[str, Any] = {}
    error = None
    if group.rank == 0:
        remove_temporaries(folder)
        try:
            summary = merge()
        except errors as exc:
            error = str(exc)
    error = group.broadcast_error(error)
    if error is not None:
        raise RuntimeError(error)
    group.barrier()
    if group.rank != 0:
        summary = read_json(os.path.join(folder, summary_file))
    return summary


def remove_run(out: str) -> None:
    """Delete what attribute_dataset wrote in ``out`` (and nothing else)."""
    import shutil

    for name in OWN_NAMES:
        p = os.path.join(out, name)
        if os.path.isdir(p):
            shutil.rmtree(p)
        elif os.path.exists(p):
            os.remove(p)
    remove_temporaries(out)


def foreign_entries(out: str) -> List[str]:
    """Entries of ``out`` that attribute_dataset does not write."""
    if not os.path.isdir(out):
        return []
    return sorted(n for n in os.listdir(out) if n not in OWN_NAMES and not (n.startswith(".") and ".tmp-" in n))


def load_json_or_none(path: str) -> Optional[Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None


__all__ = ["FORMATS", "write_shard", "read_shard", "read_row", "record_shard", "finished_shards",
           "merge_manifest", "remove_run", "remove_temporaries", "foreign_entries", "write_json"]
