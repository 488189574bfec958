"""``AttributionStore``: lazy read access to the output of :func:`attribute_dataset`."""

from __future__ import annotations

import os
from typing import Any, Dict, Iterator, List, Tuple

from torch import Tensor

from . import _shards as S
from ._common import PathLike, read_json, read_jsonl

__all__ = ["AttributionStore"]


class AttributionStore:
    r"""The maps and records of a finished :func:`attribute_dataset` run, read lazily.

    Opening a store reads ``run.json``, ``summary.json`` and the manifest (one small record
    per image); a map is read from its shard file only when asked for, one row at a time
    (safetensors and npz alike), so a store of any size opens in memory proportional to the
    number of images, not to the maps.

    Args:
        out (str or PathLike): the output folder of :func:`attribute_dataset`.

    Raises:
        ValueError: ``out`` holds no finished run (a run that was interrupted: call
            ``attribute_dataset`` again with the same arguments to finish it).

    Examples::

        >>> store = AttributionStore("rap_val")
        >>> len(store), store.ids()[:3]
        >>> attr, record = store["n01440764/ILSVRC2012_val_00000293.JPEG"]
        >>> record["target"], record["logit"], record["delta"]
    """

    def __init__(self, out: PathLike) -> None:
        out = os.fspath(out)
        if not os.path.isfile(os.path.join(out, S.RUN_FILE)):
            raise ValueError(f"AttributionStore: {out} holds no attribute_dataset run (no {S.RUN_FILE})")
        if not os.path.isfile(os.path.join(out, S.SUMMARY_FILE)):
            raise ValueError(f"AttributionStore: the run in {out} is not finished (no {S.SUMMARY_FILE}); call "
                             "attribute_dataset again with the same arguments to finish it")
        self.out = out
        run = read_json(os.path.join(out, S.RUN_FILE))
        self.identity: Dict[str, Any] = run["identity"]
        self.metadata: Any = run.get("metadata")
        self.summary: Dict[str, Any] = read_json(os.path.join(out, S.SUMMARY_FILE))
        self.format: str = self.identity["settings"]["format"]
        self._records: List[Dict[str, Any]] = list(read_jsonl(os.path.join(out, S.MANIFEST_FILE)))
        self._by_id = {r["id"]: j for j, r in enumerate(self._records)}
        self.shard_reads = 0  # shard files opened (rows or whole shards) by this object

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._by_id

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids())

    def __repr__(self) -> str:
        shape = tuple(self.summary.get("map_shape") or ())
        return (f"AttributionStore({self.out!r}: {len(self)} maps of shape {shape}, "
                f"{self.summary.get('n_skipped', 0)} skipped, method {self.identity['method']['class']})")

    def ids(self) -> List[str]:
        """The ids of the attributed images, in dataset order."""
        return [r["id"] for r in self._records]

    def record(self, image_id: str) -> Dict[str, Any]:
        """The manifest record of an image: ``id``, ``index``, ``label``, ``target``,
        ``logit``, ``delta`` (None for methods without one), ``shard``, ``offset``."""
        try:
            return dict(self._records[self._by_id[image_id]])
        except KeyError:
            raise KeyError(f"no image {image_id!r} in {self.out}") from None

    def __getitem__(self, image_id: str) -> Tuple[Tensor, Dict[str, Any]]:
        """``(map, record)``: the map in the stored dtype, read from its shard alone."""
        if not isinstance(image_id, str):
            raise TypeError(f"AttributionStore keys are image ids (str), got {type(image_id).__name__}")
        rec = self.record(image_id)
        self.shard_reads += 1
        return S.read_row(os.path.join(self.out, S.shard_name(rec["shard"], self.format)), self.format,
                          rec["offset"]), rec

    @property
    def skipped(self) -> List[Dict[str, Any]]:
        """The images that were not attributed: ``index``, ``id``, ``reason``, ``shard``."""
        return list(read_jsonl(os.path.join(self.out, S.SKIPPED_FILE)))

    def shards(self) -> List[int]:
        """The shard ids that hold maps, in order."""
        return sorted({r["shard"] for r in self._records})

    def shard(self, k: int) -> Tuple[Tensor, List[Dict[str, Any]]]:
        """All maps of shard ``k`` ``(n, ...)`` and their records (in the same order)."""
        recs = [r for r in self._records if r["shard"] == k]
        if not recs:
            raise KeyError(f"shard {k} holds no maps")
        self.shard_reads += 1
        maps, index = S.read_shard(os.path.join(self.out, S.shard_name(k, self.format)), self.format)
        if index.tolist() != [r["index"] for r in recs]:
            raise ValueError(f"{self.out}: shard {k} does not hold the images its manifest lists")
        return maps, [dict(r) for r in recs]
