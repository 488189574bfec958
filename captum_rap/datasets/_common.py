"""Shared pieces of :mod:`captum_rap.datasets`: the process group, atomic file writes,
JSON lines, argument checks and the fingerprints that make up a run's identity."""

from __future__ import annotations

import atexit
import datetime
import enum
import hashlib
import json
import math
import os
import types
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

PathLike = Union[str, "os.PathLike[str]"]

#: attributes of captum_rap's and Captum's method objects that are run-time state (counters,
#: caches, the last run's diagnostics) or the model itself, not arguments
_STATE_ATTRIBUTES = frozenset({
    "forward_func", "model", "gradient_func", "_runs", "_result_dtype", "num_forwards",
    "num_check_forwards", "num_masks", "precision_error", "batching_error", "conditioning_error",
    "_precision_checked", "_precision_warned", "_auto_dtype", "_unbatched", "_reusable",
    "relevance_input", "relevance_output", "_handle_input_hooks", "_handle_output_hook",
})


# ----------------------------------------------------------------------------- arguments
def check_int(who: str, name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum`` (bools and floats refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{who}: {name} must be an integer >= {minimum}, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{who}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_choice(who: str, name: str, value: Any, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{who}: {name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_flag(who: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{who}: {name} must be True or False, got {value!r}")
    return value


SAVE_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def check_save_dtype(who: str, value: Any) -> str:
    """``"float32"`` / ``"float16"`` (or the torch dtypes) -> the name."""
    for name, dt in SAVE_DTYPES.items():
        if value == name or value is dt:
            return name
    raise ValueError(f"{who}: save_dtype must be 'float32' or 'float16', got {value!r}")


def check_out(who: str, out: Any) -> str:
    if not isinstance(out, (str, os.PathLike)) or not str(out).strip():
        raise ValueError(f"{who}: out must name a folder, got {out!r}")
    out = os.fspath(out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"{who}: out names a file, not a folder: {out}")
    return out


def model_device(model: Any) -> Optional[torch.device]:
    if isinstance(model, nn.Module):
        for p in model.parameters():
            return p.device
        for b in model.buffers():
            return b.device
    return None


def model_dtype(model: Any) -> torch.dtype:
    if isinstance(model, nn.Module):
        for p in model.parameters():
            if p.is_floating_point():
                return p.dtype
    return torch.float32


def resolve_device(who: str, device: Any, model: Any) -> torch.device:
    """The device of the inputs: ``device`` if given (it must be the model's), else the
    model's (never moves the model)."""
    have = model_device(model)
    if device is None:
        return have if have is not None else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{who}: device {device!r} is not a torch device") from None
    if have is not None and (have.type != dev.type or (dev.index is not None and have.index != dev.index)):
        raise ValueError(f"{who}: device={str(dev)!r} but the model is on {have}; move the model "
                         f"(model.to({str(dev)!r})) or leave device=None")
    if dev.type == "cuda" and dev.index is None and have is not None:
        dev = have
    return dev


def resolve_dtype(who: str, dtype: Any, model: Any) -> torch.dtype:
    if dtype is None:
        return model_dtype(model)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"{who}: dtype must be a floating torch dtype (or None: the model's), got {dtype!r}")
    return dtype


# ----------------------------------------------------------------------------- files
def atomic_write(path: str, write: Callable[[str], None]) -> int:
    """Write ``path`` all or nothing: ``write(tmp)`` fills a temporary file in the same
    folder, which is flushed to disk and renamed over ``path``.  Returns the size."""
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        size = os.path.getsize(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return size


def write_json(path: str, obj: Any) -> None:
    data = json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n"

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(data)

    atomic_write(path, write)


def write_jsonl(path: str, rows: Sequence[Dict[str, Any]]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, allow_nan=False) + "\n")

    atomic_write(path, write)


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def read_jsonl(path: str, strict: bool = True) -> Iterator[Any]:
    """Rows of a JSON-lines file.  ``strict=False`` skips lines that do not parse (a line
    torn by a killed process) instead of raising."""
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                if strict:
                    raise ValueError(f"{path}: line {n} is not JSON") from None


def append_line(path: str, row: Dict[str, Any]) -> None:
    """Append one JSON line and flush it to disk.  A file whose last line was torn (no
    final newline) gets a newline first, so that the torn line stays alone."""
    data = json.dumps(row, allow_nan=False) + "\n"
    with open(path, "ab+") as fh:
        if fh.tell() > 0:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                data = "\n" + data
        fh.write(data.encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())


def json_float(value: float) -> Optional[float]:
    """A float for JSON (None for NaN / infinity)."""
    value = float(value)
    return value if math.isfinite(value) else None


# ----------------------------------------------------------------------------- identity
def _tensor_digest(t: Tensor) -> str:
    t = t.detach().to("cpu").contiguous().reshape(-1)
    h = hashlib.sha256(f"{t.dtype}".encode())
    if t.numel():
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def model_fingerprint(model: Any) -> Dict[str, Any]:
    """The class, module structure and a hash of every parameter and buffer of ``model``
    (an ``nn.Module``), or the qualified name of a plain callable."""
    if not isinstance(model, nn.Module):
        return {"callable": _qualname(model)}
    h = hashlib.sha256()
    for name, mod in model.named_modules():
        h.update(f"{name}:{type(mod).__module__}.{type(mod).__qualname__};".encode())
    n = 0
    for name, t in model.state_dict().items():
        h.update(f"{name}:{tuple(t.shape)}:{_tensor_digest(t)};".encode())
        n += t.numel()
    return {"class": _qualname(type(model)), "sha256": h.hexdigest()[:32], "numel": n}


def _qualname(obj: Any) -> str:
    mod = getattr(obj, "__module__", None) or type(obj).__module__
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{mod}.{name}"


def describe(obj: Any, model: Optional[nn.Module] = None, depth: int = 0) -> Any:
    """A JSON description of a value that stays the same across processes: numbers and
    strings as they are, tensors by shape, dtype and a hash of their values, functions by
    qualified name, modules by their name inside ``model``, other objects by class and
    (recursively) their attributes, leaving out run-time state (counters, caches)."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else repr(obj)
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return describe(obj.item())
    if isinstance(obj, (torch.dtype, torch.device, enum.Enum)):
        return str(obj)
    if isinstance(obj, Tensor):
        return {"tensor": list(obj.shape), "dtype": str(obj.dtype), "sha256": _tensor_digest(obj)}
    if isinstance(obj, np.ndarray):
        return describe(torch.from_numpy(np.ascontiguousarray(obj)))
    if isinstance(obj, nn.Module):
        name = None
        if model is not None:
            name = next((n for n, m in model.named_modules() if m is obj), None)
        return {"module": _qualname(type(obj)), "name": name}
    if isinstance(obj, (list, tuple)):
        return [describe(v, model, depth + 1) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((describe(v, model, depth + 1) for v in obj), key=repr)
    if isinstance(obj, dict):
        return {str(k): describe(v, model, depth + 1) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, types.MethodType, type)):
        return {"function": _qualname(obj)}
    attrs = getattr(obj, "__dict__", None)
    if isinstance(attrs, dict) and depth < 4:
        return {"class": _qualname(type(obj)),
                "attributes": {k: describe(v, model, depth + 1) for k, v in sorted(attrs.items())
                               if k not in _STATE_ATTRIBUTES and not k.startswith("__")}}
    return {"class": _qualname(type(obj))}


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- processes
@dataclass
class ProcessGroup:
    """This process's place in a ``torch.distributed`` job (rank 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1
    active: bool = False

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            if dist.get_backend() == "nccl" and torch.cuda.is_available():
                dist.barrier(device_ids=[torch.cuda.current_device()])
            else:
                dist.barrier()

    def broadcast_error(self, message: Optional[str]) -> Optional[str]:
        """Rank 0's ``message`` on every rank (a collective: all ranks must call it)."""
        if not self.active:
            return message
        import torch.distributed as dist

        box = [message]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def process_group(who: str, distributed: Optional[bool], device: torch.device) -> ProcessGroup:
    """The process group to split the work over.

    ``distributed=None``: an initialised ``torch.distributed`` group, else the environment
    ``torchrun`` sets (``WORLD_SIZE`` > 1, ``RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), for which
    a group is initialised here (gloo on CPU, NCCL on CUDA) and destroyed at exit; else one
    process.  ``False``: one process whatever the environment.  ``True``: a group is required.
    """
    if distributed is not None and not isinstance(distributed, bool):
        raise ValueError(f"{who}: distributed must be None, True or False, got {distributed!r}")
    if distributed is False:
        return ProcessGroup()
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return ProcessGroup(dist.get_rank(), dist.get_world_size(), True)
    env = os.environ
    world = int(env.get("WORLD_SIZE", "1") or 1)
    if world > 1 and all(k in env for k in ("RANK", "MASTER_ADDR", "MASTER_PORT")):
        if not dist.is_available():
            raise RuntimeError(f"{who}: WORLD_SIZE={world} but this torch build has no torch.distributed")
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)          # NCCL's collectives use the current device
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=24))
        atexit.register(_destroy_group)
        return ProcessGroup(dist.get_rank(), dist.get_world_size(), True)
    if distributed:
        raise ValueError(f"{who}: distributed=True but torch.distributed is not initialised and the "
                         "torchrun environment (WORLD_SIZE, RANK, MASTER_ADDR, MASTER_PORT) is not set")
    return ProcessGroup()


def _destroy_group() -> None:  # pragma: no cover - runs at interpreter exit
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def my_shards(n_shards: int, group: ProcessGroup, done: Sequence[int] = ()) -> List[int]:
    """The shards of this rank: ``DistributedSampler``'s interleaving over whole shards
    (shard ``k`` belongs to rank ``k % world_size``), no padding, finished ones left out.

    Each rank decides from the shard id alone, so ranks need not agree on which shards were
    finished before (no collective at the start)."""
    skip = set(done)
    return [k for k in range(group.rank, n_shards, group.world_size) if k not in skip]
