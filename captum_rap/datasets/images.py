"""Image folders as datasets, and the loading machinery of :func:`attribute_dataset`:
items that fail to load become skip records (never silent gaps), batches never cross a
shard, and mixed input shapes are reported by image id."""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

__all__ = ["ImageFiles"]


class ImageFiles(Dataset):
    r"""The image files of a folder, as a map-style dataset.

    A folder with sub-folders is read like torchvision's ``ImageFolder``: every sub-folder
    is a class (label = its position among the sorted sub-folder names) and files at the top
    level are not part of the dataset.  A folder without sub-folders is a flat list of
    unlabelled images.  Every regular file is an entry (sorted by path; names starting with
    ``.`` are left out), so a file that is not an image, or is broken, fails when it is read
    and :func:`~captum_rap.datasets.attribute_dataset` lists it in ``skipped.jsonl``.

    Args:
        root (str or PathLike): the folder.
        transform (Callable, optional): HWC uint8 RGB array -> input tensor.  Default: a
            ``(3, H, W)`` float32 tensor in [0, 1] (after the resize, if ``size`` is given).
        size (int or (int, int), optional): resize every image to ``size x size`` (or
            ``(H, W)``) pixels (bilinear, antialiased) before ``transform``.  Without it,
            images of different sizes are an error in ``attribute_dataset``.

    Items: ``(input, label)`` for a class-folder tree, ``input`` for a flat folder.
    Attributes: ``ids`` (the paths relative to ``root``, with ``/``), ``classes`` (the
    sub-folder names, or ``[]``), ``labels``.

    Examples::

        >>> ds = ImageFiles("photos/", size=224)
        >>> x = ds[0]                                    # (3, 224, 224) in [0, 1]
    """

    def __init__(self, root: Union[str, "os.PathLike[str]"], transform: Optional[Callable[[np.ndarray], Any]] = None,
                 size: Union[None, int, Tuple[int, int]] = None) -> None:
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise ValueError(f"ImageFiles: root is not a folder: {root}")
        if transform is not None and not callable(transform):
            raise ValueError(f"ImageFiles: transform must be callable, got {type(transform).__name__}")
        if size is not None:
            sizes = (size, size) if isinstance(size, int) and not isinstance(size, bool) else size
            if (not isinstance(sizes, (tuple, list)) or len(sizes) != 2
                    or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes)):
                raise ValueError(f"ImageFiles: size must be a positive int or (H, W), got {size!r}")
            size = (int(sizes[0]), int(sizes[1]))
        self.root, self.transform, self.size = root, transform, size
        subdirs = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
        self.classes: List[str] = subdirs
        files: List[Tuple[str, int]] = []
        if subdirs:
            for label, d in enumerate(subdirs):
                for dirpath, dirnames, names in os.walk(os.path.join(root, d)):
                    dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
                    files += [(os.path.join(dirpath, n), label) for n in sorted(names) if not n.startswith(".")]
        else:
            files = [(os.path.join(root, n), -1) for n in sorted(os.listdir(root))
                     if not n.startswith(".") and os.path.isfile(os.path.join(root, n))]
        self.paths = [p for p, _ in files]
        self.labels = [lab for _, lab in files]
        self.ids = [os.path.relpath(p, root).replace(os.sep, "/") for p in self.paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:  # part of a run's identity: no addresses
        return f"ImageFiles(size={self.size}, classes={len(self.classes)})"

    def read(self, i: int) -> np.ndarray:
        """The ``i``-th image as an HWC uint8 RGB array (resized if ``size`` is set).

        Raises:
            ValueError: the file is not an image or cannot be decoded.
        """
        from PIL import Image, UnidentifiedImageError

        path = self.paths[i]
        try:
            with Image.open(path) as im:
                im.load()
                img = np.asarray(im.convert("RGB"))
        except UnidentifiedImageError:
            raise ValueError(f"not an image file: {self.ids[i]}") from None
        except (OSError, SyntaxError, ValueError) as exc:  # truncated / corrupt files
            raise ValueError(f"cannot read image {self.ids[i]}: {exc}") from None
        if self.size is not None and img.shape[:2] != self.size:
            x = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float()
            x = torch.nn.functional.interpolate(x, size=self.size, mode="bilinear", align_corners=False,
                                                antialias=True)
            img = x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
        return img

    def __getitem__(self, i: int) -> Any:
        img = self.read(i)
        if self.transform is not None:
            x = self.transform(img)
        else:
            x = torch.from_numpy(img.copy()).permute(2, 0, 1).float() / 255.0
        return (x, self.labels[i]) if self.classes else x


# ----------------------------------------------------------------------------- loading
class Indexed(Dataset):
    """``dataset[i]`` -> ``(i, item, None)``, or ``(i, None, reason)`` when it raises an
    ``Exception`` and ``skip`` is set (other ``BaseException``\\ s propagate)."""

    def __init__(self, dataset: Any, skip: bool) -> None:
        self.dataset, self.skip = dataset, skip

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Tuple[int, Any, Optional[str]]:
        try:
            return i, self.dataset[i], None
        except Exception as exc:
            if not self.skip:
                raise
            return i, None, f"{type(exc).__name__}: {exc}"


def split_item(item: Any) -> Tuple[Any, Optional[int]]:
    """A dataset item -> ``(input, label or None)``: a tensor / array, or a tuple / list
    whose first element is the input and second the label."""
    if isinstance(item, (tuple, list)):
        if not item:
            raise TypeError("a dataset item is an empty tuple")
        x = item[0]
        label = item[1] if len(item) > 1 else None
    else:
        x, label = item, None
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, Tensor):
        raise TypeError(f"dataset items must be tensors (or (tensor, label) tuples), got {type(x).__name__}; "
                        "give the dataset a transform that makes tensors (e.g. torchvision's ToTensor)")
    if label is not None:
        if isinstance(label, Tensor):
            if label.numel() != 1:
                raise TypeError(f"a label must be one integer, got a tensor of shape {tuple(label.shape)}")
            label = label.item()
        if isinstance(label, (bool, float)) or not isinstance(label, (int, np.integer)):
            raise TypeError(f"a label must be an integer, got {label!r}")
        label = int(label)
    return x, label


class Collate:
    """Collate ``Indexed`` items into a dict: ``indices``, ``x`` (stacked inputs or None),
    ``labels`` (list, None entries allowed), ``skipped`` ([(index, reason)]) and, instead
    of raising inside a loader worker, ``error`` (a message) for items of the wrong type
    or of mixed shapes."""

    def __init__(self, collate_fn: Optional[Callable] = None) -> None:
        self.collate_fn = collate_fn

    def __call__(self, batch: Sequence[Tuple[int, Any, Optional[str]]]) -> Dict[str, Any]:
        skipped = [(i, r) for i, _, r in batch if r is not None]
        good = [(i, it) for i, it, r in batch if r is None]
        res: Dict[str, Any] = {"indices": [i for i, _ in good], "x": None, "labels": [], "skipped": skipped,
                               "error": None, "shapes": None}
        if not good:
            return res
        try:
            if self.collate_fn is not None:
                x, labels = collate_with_labels(self.collate_fn, [it for _, it in good])
                if x.shape[0] != len(good) or len(labels) != len(good):
                    raise TypeError(f"collate_fn returned {x.shape[0]} inputs and {len(labels)} labels "
                                    f"for {len(good)} items")
            else:
                parts = [split_item(it) for _, it in good]
                shapes = [tuple(p[0].shape) for p in parts]
                if len(set(shapes)) > 1:
                    res["shapes"] = list(zip(res["indices"], shapes))
                    res["error"] = "mixed shapes"
                    return res
                x = torch.stack([p[0] for p in parts])
                labels = [p[1] for p in parts]
        except TypeError as exc:
            res["error"] = str(exc)
            return res
        res["x"], res["labels"] = x, labels
        return res


def collate_with_labels(collate_fn: Callable, items: List[Any]) -> Tuple[Tensor, List[Optional[int]]]:
    """A user's collate_fn output -> (inputs, labels)."""
    out = collate_fn(items)
    if isinstance(out, (tuple, list)) and len(out) >= 2:
        x, y = out[0], out[1]
        labels = [int(v) for v in torch.as_tensor(y).reshape(-1).tolist()]
    else:
        x, labels = out[0] if isinstance(out, (tuple, list)) else out, [None] * len(items)
    if not isinstance(x, Tensor):
        raise TypeError(f"collate_fn must return a tensor of inputs, got {type(x).__name__}")
    return x, labels


class ShardBatches(Sampler):
    """Batches of dataset indices, shard by shard: shard ``k`` is the indices
    ``[k * shard_size, min((k + 1) * shard_size, n))`` in order, cut into batches of
    ``batch_size`` that never cross a shard.  The batches of a shard are therefore the
    same whichever process computes it."""

    def __init__(self, shards: Sequence[int], shard_size: int, batch_size: int, n: int) -> None:
        self.shards, self.shard_size, self.batch_size, self.n = list(shards), shard_size, batch_size, n

    def shard_range(self, k: int) -> range:
        return range(k * self.shard_size, min((k + 1) * self.shard_size, self.n))

    def __iter__(self) -> Iterator[List[int]]:
        for k in self.shards:
            r = self.shard_range(k)
            for s in range(r.start, r.stop, self.batch_size):
                yield list(range(s, min(s + self.batch_size, r.stop)))

    def __len__(self) -> int:
        return sum(-(-len(self.shard_range(k)) // self.batch_size) for k in self.shards)


def image_ids(who: str, dataset: Any, ids: Any, n: int) -> List[str]:
    """The id of every item: ``ids`` (a sequence or ``callable(index)``), else the dataset's
    ``ids`` attribute, the file paths of a torchvision ``ImageFolder`` (relative to its
    root), else the index as a string.  Ids must be unique strings."""
    if ids is None:
        if isinstance(getattr(dataset, "ids", None), (list, tuple)) and len(dataset.ids) == n:
            out = [str(v) for v in dataset.ids]
        elif isinstance(getattr(dataset, "samples", None), list) and len(dataset.samples) == n \
                and isinstance(getattr(dataset, "root", None), (str, os.PathLike)):
            root = os.fspath(dataset.root)
            out = [os.path.relpath(str(s[0]), root).replace(os.sep, "/") for s in dataset.samples]
        else:
            out = [str(i) for i in range(n)]
    elif callable(ids):
        out = [ids(i) for i in range(n)]
    elif isinstance(ids, (list, tuple)):
        if len(ids) != n:
            raise ValueError(f"{who}: image_ids has {len(ids)} entries for a dataset of {n} items")
        out = list(ids)
    else:
        raise ValueError(f"{who}: image_ids must be None, a sequence of strings or a callable, got "
                         f"{type(ids).__name__}")
    if not all(isinstance(v, str) and v for v in out):
        bad = next(v for v in out if not (isinstance(v, str) and v))
        raise ValueError(f"{who}: image ids must be non-empty strings, got {bad!r}")
    if len(set(out)) != len(out):
        seen = set()
        dup = next(v for v in out if v in seen or seen.add(v))
        raise ValueError(f"{who}: image id {dup!r} occurs more than once")
    return out
