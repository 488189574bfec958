"""The result of ACD: :class:`ACDHierarchy` (levels of :class:`ACDGroup` feature groups with
parent / child links), its input-shaped maps and its JSON export / import.  The plots are
in :mod:`captum_rap._cd.hierarchy_plot`; the procedure that builds a hierarchy is
:class:`captum_rap.ACD` (``captum_rap/_core/acd.py``)."""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from captum_rap._cd.hierarchy_plot import plot_hierarchy

__all__ = ["ACDHierarchy", "ACDGroup"]


def _check_int(name: str, value: Any, minimum: int, maximum: Optional[int] = None) -> int:
    """``value`` as an int in ``[minimum, maximum]``: integers (Python, numpy, one-element
    integer tensors) and integral floats; TypeError for other types, ValueError outside
    the range or for a fractional value."""
    if isinstance(value, Tensor) and value.numel() == 1 and not value.is_floating_point() \
            and not value.is_complex() and value.dtype != torch.bool:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if not isinstance(value, numbers.Integral):
        if not (math.isfinite(float(value)) and float(value).is_integer()):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    v = int(value)
    if v < minimum or (maximum is not None and v > maximum):
        rng = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be an integer {rng}, got {value!r}")
    return v


def _json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, +-inf) replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _float_or_nan(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _json_safe_nan(obj: Any) -> Any:
    """Inverse of :func:`_json_safe` on nested lists of numbers: None -> NaN."""
    if isinstance(obj, (list, tuple)):
        return [_json_safe_nan(v) for v in obj]
    return _float_or_nan(obj)


def _nested_floats(a: np.ndarray) -> Any:
    return np.asarray(a, dtype=np.float64).tolist()


@dataclass
class ACDGroup:
    """One feature group of an ACD hierarchy.

    Attributes:
        level (int): level of the hierarchy (0 = finest).
        id (int): label of the group at that level (as in the reference's ``comps_list``;
            for text, level-0 ids below ``T`` are single words, id ``j`` = word ``j``, and
            ids ``>= T`` phrases the reference puts at level 0).
        mask (np.ndarray): boolean mask over the features: pixels ``(H, W)`` for images,
            token positions ``(T,)`` for text.
        score (float): CD score of the group (relevant logit of the target for images;
            ``rel[target] - rel[other]`` for text with ``subtract=True``).
        logits (np.ndarray or None): relevant part of all outputs (images).
        parent (tuple or None): ``(level, id)`` of the group of the lowest higher level
            that contains this one.
        children (list): ``(level, id)`` of the groups whose parent this is.
    """

    level: int
    id: int
    mask: np.ndarray
    score: float
    logits: Optional[np.ndarray] = None
    parent: Optional[Tuple[int, int]] = None
    children: List[Tuple[int, int]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return int(self.mask.sum())


class ACDHierarchy:
    """Result of :meth:`ACD.hierarchy` / :meth:`ACD.hierarchy_text`.

    ``levels[l]`` maps group ids to :class:`ACDGroup`; every group is in the level where
    the reference ``acd`` code puts it, and groups carry parent / child links (the parent
    of a group is the group of the lowest higher level that contains it), so the tree can
    be walked from any level.

    Images: level 0 is empty (the reference's all-zero ``comps_list[0]``), levels
    ``1 .. num_before_final - 1`` are the blobs of the growth steps, then one level per
    merge.  Text (the reference's ``collapse_tree``): level 0 holds the single words
    (id ``j`` = word ``j``) and the phrases the reference puts at level 0, i.e. runs made
    only of newly selected words, such as two adjacent words selected together (ids
    ``>= T``, replacing their words at level 0); higher levels hold the longer phrases.
    The unit score of every word (and block) is in ``unit_scores`` /
    ``attribution_map()``.

    ``raw`` holds the lists in the reference ``acd`` format (``comps_list``,
    ``comp_scores_raw_list``, ... for images; the ``collapse_tree`` output for text).  For
    images, the entries of ``raw`` that play no part in the hierarchy (the combined tile's
    scores of every step, ``comp_scores_raw_combined_list``, and the border gains of the
    last growth step, the last entries of ``scores_list`` / ``im_thresh_list``) are
    computed on the first access of ``raw`` or when the hierarchy is pickled or copied
    (``deferred_evaluations`` more CD evaluations, with the model as it is then).

    Attributes:
        kind (str): ``"image"`` or ``"text"``.
        target (int): explained output index.
        levels (list of dict): groups per level.
        num_before_final (int): (images) number of growth levels before the merge phase.
        cd_evaluations (int): masks actually decomposed for the hierarchy (each unique
            mask once).
        deferred_evaluations (int): masks decomposed later to complete ``raw`` (0 until
            ``raw`` is first read).
        reference_cd_calls (int): CD calls the reference procedure makes for the same tree.
        input_shape (tuple): shape of the explained input.
        unit_scores (np.ndarray): CD score of every unit alone (blocks, broadcast to the
            ``(H, W)`` pixels; words ``(T,)``).
        words (list of str or None): (text) tokens, for plots.
        sweep_dim (int): block size (images) / neighbour distance (text).
    """

    def __init__(self, kind: str, target: int, levels: List[Dict[int, ACDGroup]], raw: Optional[dict],
                 input_shape: Tuple[int, ...], unit_scores: np.ndarray, cd_evaluations: int,
                 reference_cd_calls: int, num_before_final: Optional[int] = None,
                 words: Optional[Sequence[str]] = None, feature_axes: Tuple[int, ...] = (),
                 sweep_dim: int = 1, finish: Optional[Callable[[], int]] = None) -> None:
        self.kind = kind
        self.target = int(target)
        self.levels = levels
        self._raw = raw
        self._finish = finish
        self.deferred_evaluations = 0
        self.input_shape = tuple(input_shape)
        self.unit_scores = unit_scores
        self.cd_evaluations = int(cd_evaluations)
        self.reference_cd_calls = int(reference_cd_calls)
        self.num_before_final = num_before_final
        self.words = list(words) if words is not None else None
        self.feature_axes = tuple(feature_axes)
        self.sweep_dim = sweep_dim
        self._link()

    @property
    def raw(self) -> Optional[dict]:
        """The lists in the reference ``acd`` format (completed on first access; None for
        a hierarchy restored by :meth:`from_dict`)."""
        if self._finish is not None:
            finish, self._finish = self._finish, None
            self.deferred_evaluations = int(finish())
        return self._raw

    def __getstate__(self) -> dict:
        # the deferred evaluations need the model (held by a closure, not picklable):
        # complete ``raw`` first, so that the pickled hierarchy is complete on its own
        _ = self.raw
        state = self.__dict__.copy()
        state["_finish"] = None
        return state

    @property
    def num_units(self) -> int:
        """Number of unit features: blocks of the grid (images) or words (text)."""
        if self.kind == "text":
            return int(np.asarray(self.unit_scores).shape[-1])
        H, W = np.asarray(self.unit_scores).shape[-2:]
        s = max(1, int(self.sweep_dim))
        return (-(-H // s)) * (-(-W // s))

    # ---- structure -----------------------------------------------------------------
    def _link(self) -> None:
        for lev, groups in enumerate(self.levels):
            for g in groups.values():
                g.parent = None
                g.children = []
        for lev, groups in enumerate(self.levels):
            for g in groups.values():
                first = tuple(np.argwhere(g.mask)[0]) if g.mask.any() else None
                if first is None:
                    continue
                for up in range(lev + 1, len(self.levels)):
                    hit = None
                    for h in self.levels[up].values():
                        if h.mask[first] and not (g.mask & ~h.mask).any():
                            hit = h
                            break
                    if hit is not None:
                        g.parent = (up, hit.id)
                        hit.children.append((lev, g.id))
                        break

    def __len__(self) -> int:
        return len(self.levels)

    def __repr__(self) -> str:
        top = self.groups(len(self.levels) - 1) if self.levels else []
        best = max(top, key=lambda g: g.score, default=None)
        head = (f"ACDHierarchy(kind={self.kind!r}, target={self.target}, levels={len(self.levels)}, "
                f"units={self.num_units}, top_groups={len(top)}")
        if best is not None:
            head += f", best_top_group=(size={best.size}, score={best.score:+.4g})"
        return head + f", cd_evaluations={self.cd_evaluations})"

    def __iter__(self) -> Iterator[Dict[int, ACDGroup]]:
        return iter(self.levels)

    def groups(self, level: int) -> List[ACDGroup]:
        """Groups of one level, by id."""
        return [self.levels[level][k] for k in sorted(self.levels[level])]

    def group(self, level: int, gid: int) -> ACDGroup:
        return self.levels[level][gid]

    def walk(self) -> Iterator[ACDGroup]:
        """All groups, level by level (finest first)."""
        for lev in range(len(self.levels)):
            yield from self.groups(lev)

    def roots(self) -> List[ACDGroup]:
        """Groups without a parent (the top of the tree)."""
        return [g for g in self.walk() if g.parent is None]

    # ---- export / import -----------------------------------------------------------
    def _unit_grid(self) -> np.ndarray:
        u = np.asarray(self.unit_scores, dtype=np.float64)
        if self.kind == "text":
            return u
        s = max(1, int(self.sweep_dim))
        return u[..., ::s, ::s]  # one value per block (its top-left pixel)

    def to_dict(self) -> dict:
        """Plain-python description (features as flat indices over pixels / tokens).

        Non-finite numbers stay Python floats (``nan``); :meth:`to_json` writes them as
        ``null``.  ``raw`` is not included.

        Returns:
            dict: ``kind``, ``target``, ``feature_shape``, ``input_shape``,
            ``num_before_final``, ``cd_evaluations``, ``deferred_evaluations``,
            ``reference_cd_calls``, ``words``, ``sweep_dim``, ``feature_axes``,
            ``unit_scores`` (per block for images, per word for text) and ``levels``: a
            list of ``{"level": l, "groups": [{"id", "features", "score", "logits",
            "parent"}, ...]}``.
        """
        levels = []
        for lev in range(len(self.levels)):
            gs = []
            for g in self.groups(lev):
                gs.append({
                    "id": int(g.id),
                    "features": [int(v) for v in np.flatnonzero(g.mask)],
                    "score": float(g.score),
                    "logits": None if g.logits is None else [float(v) for v in g.logits],
                    "parent": None if g.parent is None else [int(g.parent[0]), int(g.parent[1])],
                })
            levels.append({"level": lev, "groups": gs})
        return {
            "kind": self.kind, "target": self.target,
            "feature_shape": [int(v) for v in self._feature_shape()],
            "input_shape": [int(v) for v in self.input_shape], "num_before_final": self.num_before_final,
            "cd_evaluations": self.cd_evaluations, "deferred_evaluations": self.deferred_evaluations,
            "reference_cd_calls": self.reference_cd_calls,
            "words": self.words, "sweep_dim": int(self.sweep_dim),
            "feature_axes": [int(v) for v in self.feature_axes],
            "unit_scores": _nested_floats(self._unit_grid()), "levels": levels,
        }

    def to_json(self, **kwargs) -> str:
        """Strict JSON string of :meth:`to_dict`: NaN and +-inf are written as ``null``
        (read back as NaN by :meth:`from_json`).  ``kwargs`` go to ``json.dumps``.

        Examples::

            >>> s = h.to_json(indent=1)
            >>> h2 = ACDHierarchy.from_json(s)
        """
        kwargs.setdefault("allow_nan", False)
        return json.dumps(_json_safe(self.to_dict()), **kwargs)

    @classmethod
    def from_dict(cls, d: dict) -> "ACDHierarchy":
        """Rebuild a hierarchy from :meth:`to_dict` (or parsed :meth:`to_json`) output.

        Levels, groups (masks, scores, logits), parent / child links (recomputed from the
        masks, as for a new hierarchy), target, kind, words, shapes, unit scores and the
        evaluation counts are restored; ``raw`` is not (None).  ``null`` numbers become NaN.

        Args:
            d (dict): the exported description.

        Returns:
            ACDHierarchy: the restored hierarchy.
        """
        fshape = tuple(int(v) for v in d["feature_shape"])
        size = int(np.prod(fshape)) if fshape else 0
        levels: List[Dict[int, ACDGroup]] = []
        for lev, entry in enumerate(d["levels"]):
            groups: Dict[int, ACDGroup] = {}
            for g in entry["groups"]:
                mask = np.zeros(size, dtype=bool)
                mask[np.asarray(g["features"], dtype=np.int64)] = True
                logits = g.get("logits")
                if logits is not None:
                    logits = np.array([_float_or_nan(v) for v in logits], dtype=np.float64)
                gid = int(g["id"])
                groups[gid] = ACDGroup(int(entry.get("level", lev)), gid, mask.reshape(fshape),
                                       _float_or_nan(g["score"]), logits)
            levels.append(groups)
        kind = d["kind"]
        s = int(d.get("sweep_dim", 1))
        unit = d.get("unit_scores")
        if unit is None:
            unit_arr = np.full(fshape, np.nan)
        else:
            unit_arr = np.array(_json_safe_nan(unit), dtype=np.float64)
            if kind != "text":
                unit_arr = to_pixels_scores(unit_arr, s, fshape[-2], fshape[-1])
        axes = d.get("feature_axes")
        if axes is None:  # older exports: features on the last axes
            n = len(d["input_shape"])
            axes = list(range(n - len(fshape), n))
        h = cls(kind, int(d["target"]), levels, None, tuple(d["input_shape"]), unit_arr,
                int(d.get("cd_evaluations", 0)), int(d.get("reference_cd_calls", 0)),
                d.get("num_before_final"), d.get("words"), tuple(int(v) for v in axes), s)
        h.deferred_evaluations = int(d.get("deferred_evaluations", 0))
        return h

    @classmethod
    def from_json(cls, s: str) -> "ACDHierarchy":
        """Rebuild a hierarchy from :meth:`to_json` output (see :meth:`from_dict`).

        Examples::

            >>> h2 = ACDHierarchy.from_json(h.to_json())
            >>> [len(l) for l in h2.levels] == [len(l) for l in h.levels]
            True
        """
        return cls.from_dict(json.loads(s))

    def _feature_shape(self) -> Tuple[int, ...]:
        for groups in self.levels:
            for g in groups.values():
                return g.mask.shape
        return tuple(np.asarray(self.unit_scores).shape)

    # ---- attribution map -----------------------------------------------------------
    def attribution_map(self, level: Optional[int] = None) -> Tensor:
        """Input-shaped map of scores.

        Args:
            level (int, optional): each feature gets the score of its group at this level
                (0 outside groups).  None: the unit CD scores (each block / word alone).

        Returns:
            Tensor: float64 tensor of ``input_shape`` (image maps are broadcast over the
            channel axis; text maps have the shape of the token-id input).
        """
        if level is None:
            fmap = np.asarray(self.unit_scores, dtype=np.float64)
        else:
            fmap = np.zeros(self._feature_shape(), dtype=np.float64)
            for g in self.levels[level].values():
                fmap[g.mask] = g.score
        t = torch.from_numpy(fmap)
        view = [1] * len(self.input_shape)
        for ax, n in zip(self.feature_axes, fmap.shape):
            view[ax] = n
        return t.reshape(view).expand(self.input_shape).clone()

    # ---- plots ---------------------------------------------------------------------
    def plot(self, image: Optional[Any] = None, levels: Optional[Sequence[int]] = None, ax=None,
             cmap: str = "RdBu_r", **kwargs):
        """Plot the hierarchy with matplotlib.

        Images: one panel per level with the groups overlaid (discrete colours) on
        ``image`` (``(C, H, W)`` / ``(H, W, C)`` / ``(H, W)`` tensor or array, rescaled
        to [0, 1]); a level without groups (level 0, or the only level of a hierarchy
        built with ``num_iters=0``) shows the image, or the unit scores without one.
        Text: the heat map of levels x words coloured by group score with the words
        written in (the standard ACD figure).

        Args:
            image (Tensor or array, optional): (images) background image.
            levels (sequence of int, optional): levels to draw. Default: images every
                level from 1 (level 0 when it is the only one), text all levels.
            ax (matplotlib Axes or sequence of Axes, optional): images: one Axes per
                drawn level (a single Axes draws one level: the top level unless
                ``levels`` names one); text: one Axes.  Default: a new figure.
            cmap (str, optional): colour map of the text scores and of unit-score panels.

        Returns:
            the matplotlib figure (of ``ax`` when given).

        Examples::

            >>> fig = h.plot(image)
            >>> fig, axes = plt.subplots(1, 2); h.plot(image, levels=[1, 2], ax=axes)
        """
        return plot_hierarchy(self, image=image, levels=levels, ax=ax, cmap=cmap, **kwargs)

    def _plot_levels(self, levels: Sequence[int]) -> List[int]:
        out = [_check_int("levels entry", v, -len(self.levels), len(self.levels) - 1) for v in levels]
        if not out:
            raise ValueError("plot: levels is empty")
        return [v % len(self.levels) for v in out]


def to_pixels_scores(grid: np.ndarray, s: int, H: int, W: int) -> np.ndarray:
    """Block scores ``(ceil(H / s), ceil(W / s))`` -> pixel scores ``(H, W)`` (each block's
    score on its ``s x s`` pixels)."""
    return np.kron(grid, np.ones((s, s)))[:H, :W]
