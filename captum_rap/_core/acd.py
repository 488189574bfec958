"""Agglomerative contextual decomposition (ACD): hierarchies of feature groups."""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from captum_rap._cd.agglomerate import (
    CachedScorer,
    agglomerate_1d,
    agglomerate_2d,
    collapse_tree,
)
from captum_rap._compat import Attribution, _format_output, _format_tensor_into_tuples, _is_tuple, log_usage
from captum_rap._core.cd import CD

__all__ = ["ACD", "ACDHierarchy", "ACDGroup"]


def _progress_bar(enabled: bool, desc: str):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # silent without tqdm
        return None
    return tqdm(desc=desc, unit="mask")


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


def _check_percentile(value: Any, low: float, why: str = "") -> float:
    """``percentile_include`` as a float in ``[low, 100]`` (not NaN)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"percentile_include must be a number in [{low:g}, 100], got {value!r}")
    v = float(value)
    if not (low <= v <= 100):  # False for NaN
        raise ValueError(f"percentile_include must be in [{low:g}, 100]{why}, got {value!r}")
    return v


def _check_target(target: Any, num_outputs: int) -> int:
    """An output index in ``[-C, C - 1]`` (negative: counted from the end, as in Captum)."""
    if isinstance(target, Tensor) and (target.is_floating_point() or target.is_complex()):
        raise TypeError(f"target must be an integer output index, got {target!r}")
    if isinstance(target, numbers.Real) and not isinstance(target, numbers.Integral):
        raise TypeError(f"target must be an integer output index, got {target!r}")
    return _check_int("target", target, -num_outputs, num_outputs - 1) % num_outputs


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
        import matplotlib.pyplot as plt

        if self.kind == "text":
            return self._plot_text(levels=levels, ax=ax, cmap=cmap, **kwargs)
        if ax is not None:
            axs = [ax] if hasattr(ax, "imshow") else list(np.ravel(np.asarray(ax, dtype=object)))
            if levels is None and len(axs) == 1:
                levels = [len(self.levels) - 1]
        if levels is None:
            levels = list(range(1, len(self.levels))) if len(self.levels) > 1 else [0]
        levels = self._plot_levels(levels)
        n = len(levels)
        if ax is None:
            cols = min(n, 6)
            rows = (n + cols - 1) // cols
            fig, grid = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows), squeeze=False)
            axs = list(grid.ravel())
            for a in axs:
                a.axis("off")
        else:
            if len(axs) != n:
                raise ValueError(f"plot: ax has {len(axs)} Axes for {n} levels {levels}; give one Axes per "
                                 "level (or a single Axes and at most one level)")
            fig = axs[0].figure
        img = None
        if image is not None:
            img = image.detach().cpu().double().numpy() if isinstance(image, Tensor) else np.asarray(image, dtype=float)
            img = np.squeeze(img)
            if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
                img = np.moveaxis(img, 0, -1)
            img = (img - img.min()) / (img.max() - img.min() + 1e-12)
        cm = plt.get_cmap("tab20")
        for a, lev in zip(axs, levels):
            a.axis("off")
            groups = self.levels[lev]
            if img is not None:
                a.imshow(img, cmap="gray" if img.ndim == 2 else None)
            elif not groups:
                u = np.asarray(self.unit_scores, dtype=float)
                lim = float(np.nanmax(np.abs(u))) if np.isfinite(u).any() else 1.0
                a.imshow(u, cmap=cmap, vmin=-lim, vmax=lim, interpolation="nearest")
            if groups:
                lab = np.zeros(self._feature_shape(), dtype=float)
                for g in groups.values():
                    lab[g.mask] = g.id
                over = np.ma.masked_where(lab == 0, lab % 20)
                a.imshow(over, cmap=cm, vmin=0, vmax=19, alpha=0.6 if img is not None else 1.0,
                         interpolation="nearest")
                a.set_title("level %d" % lev, fontsize=8)
            else:
                a.set_title("level %d (no groups)" % lev, fontsize=8)
        if ax is None:
            fig.tight_layout()
        return fig

    def _plot_levels(self, levels: Sequence[int]) -> List[int]:
        out = [_check_int("levels entry", v, -len(self.levels), len(self.levels) - 1) for v in levels]
        if not out:
            raise ValueError("plot: levels is empty")
        return [v % len(self.levels) for v in out]

    def _plot_text(self, levels: Optional[Sequence[int]] = None, ax=None, cmap="RdBu_r", **kwargs):
        import matplotlib.pyplot as plt

        T = len(self.unit_scores)
        rows = self._plot_levels(range(len(self.levels)) if levels is None else levels)
        L = len(rows)
        data = np.full((L, T), np.nan)
        for r, lev in enumerate(rows):
            for g in self.levels[lev].values():
                data[r, g.mask] = g.score
        if ax is None:
            fig, ax = plt.subplots(figsize=(max(4, 0.7 * T), 0.45 * L + 1))
        else:
            if not hasattr(ax, "pcolormesh"):
                axs = list(np.ravel(np.asarray(ax, dtype=object)))
                if len(axs) != 1:
                    raise ValueError("plot: a text hierarchy is drawn on one Axes, got %d" % len(axs))
                ax = axs[0]
            fig = ax.figure
        vmax = np.nanmax(np.abs(data)) if np.isfinite(data).any() else 1.0
        ax.pcolormesh(np.ma.masked_invalid(data[::-1]), cmap=cmap, vmin=-vmax, vmax=vmax,
                      edgecolors="w", linewidth=0.5)
        words = self.words or [str(i) for i in range(T)]
        for r in range(L):
            for t in range(T):
                if np.isfinite(data[r, t]):
                    ax.text(t + 0.5, L - r - 0.5, words[t], ha="center", va="center", fontsize=8)
        ax.set_yticks(np.arange(L) + 0.5)
        ax.set_yticklabels(["level %d" % lev for lev in rows][::-1], fontsize=8)
        ax.set_xticks([])
        return fig


class ACD(Attribution):
    r"""Agglomerative contextual decomposition (Singh, Murdoch & Yu, ICLR 2019).

    Builds a hierarchy of feature groups by growing the groups with the highest CD scores
    (images: blocks of ``sweep_dim x sweep_dim`` pixels, 8-connected blobs, then pairwise
    merging; text: contiguous runs of words), following the procedure of the reference
    ``acd`` code (not the paper's pseudo-code): percentile thresholds with its
    adjustments, 3-of-4-neighbour smoothing, blob label correspondence, gains
    ``CD(group + feature) - CD(group)`` and merge gains ``CD(A u B) - max(CD(A), CD(B))``.
    All candidate groups of one step are scored in batched CD calls and no mask is
    scored twice (the reference re-scores unchanged blobs and pairs at every step).

    The model is used unchanged (never switched to eval mode nor moved; a warning is
    given if it is in training mode).

    ``ACD`` is a Captum ``Attribution``: :meth:`attribute` returns an input-shaped map
    (each feature gets the CD score of the first, smallest group it joins in the
    hierarchy, see there) for Captum's metrics; :meth:`hierarchy` /
    :meth:`hierarchy_text` return the hierarchy itself.

    Args:
        model (nn.Module or callable): the classifier (see :class:`CD` for what it may
            contain).
        reference_compatible (bool, optional): use the reference CD arithmetic (see
            :class:`CD`); with it the hierarchies are identical to the reference ones.
            Default: False
        batch_size (int, optional): masks per CD forward. Default: automatic (see
            :class:`CD`; up to 32), 1 in ``reference_compatible`` mode
        batch_dim (int, optional): batch axis of the model input (1 for sequence-first
            text models). Default: 0
        dtype (torch.dtype, optional): CD computation dtype (see :class:`CD`). Default:
            None, automatic: float64 once CD's precision check finds the input's dtype too
            imprecise for this model (the hierarchy of an ill-conditioned float32 CD
            depends on rounding)
        check_precision (bool, optional): see :class:`CD`. Default: True

    Examples::

        >>> acd = ACD(model)
        >>> h = acd.hierarchy(image, target=281, sweep_dim=14, percentile_include=95)
        >>> for g in h.groups(3): print(g.id, g.size, g.score, g.parent)
        >>> h.plot(image); h.to_json(); h.attribution_map(level=3)
        >>> t = ACD(lstm_model, batch_dim=1).hierarchy_text(ids, words=tokens)
        >>> t.plot()
    """

    def __init__(self, model: Callable, reference_compatible: bool = False,
                 batch_size: Optional[int] = None, batch_dim: int = 0,
                 dtype: Optional[torch.dtype] = None, check_precision: bool = True) -> None:
        self.cd = CD(model, reference_compatible=reference_compatible, batch_size=batch_size,
                     batch_dim=batch_dim, dtype=dtype, check_precision=check_precision)
        super().__init__(self.cd.model)
        self.model = self.cd.model

    def has_convergence_delta(self) -> bool:
        return False

    # ------------------------------------------------------------------------------
    @log_usage()
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor]],
        target: Any = None,
        additional_forward_args: Any = None,
        sweep_dim: Optional[int] = None,
        percentile_include: Optional[float] = None,
        num_iters: Optional[int] = None,
        progress: bool = False,
    ) -> Union[Tensor, Tuple[Tensor]]:
        r"""Input-shaped ACD map of every example (Captum's ``Attribution`` interface).

        One hierarchy is built per example (:meth:`hierarchy` for floating inputs such
        as images, :meth:`hierarchy_text` for integer token ids); every feature then gets
        the CD score of the group it joins first, i.e. at the lowest level where it belongs
        to a group (for images a blob of blocks, for text a word or a phrase); features
        that never join a group keep their own (block or word) CD score.  Use
        :meth:`hierarchy` for the levels themselves.

        Args:
            inputs (Tensor or tuple of one Tensor): ``(N, C, H, W)`` images or token ids
                with the batch axis at ``batch_dim``.
            target (int, Tensor or list, optional): class per example (Captum
                conventions; negative indices count from the end); None: the class with the
                largest full-input CD score.
            additional_forward_args (Any, optional): extra forward arguments (tensors with
                N entries along the batch axis are split per example).
            sweep_dim, percentile_include, num_iters (optional): as for :meth:`hierarchy`
                / :meth:`hierarchy_text`; None: their defaults.
            progress (bool, optional): progress bar.

        Returns:
            Tensor or tuple of one Tensor: the map, with the inputs' shape (floating:
            the inputs' dtype, else the default dtype), in the format of ``inputs``.

        Examples::

            >>> attr = ACD(model).attribute(images, target=labels, sweep_dim=8)
        """
        from captum_rap._core.cd import _slice_args
        from captum_rap._compat import _format_additional_forward_args

        is_tuple = _is_tuple(inputs)
        inputs_t = _format_tensor_into_tuples(inputs)
        if len(inputs_t) != 1 or not isinstance(inputs_t[0], Tensor):
            raise NotImplementedError("ACD.attribute supports a single input tensor")
        x = inputs_t[0]
        bd = self.cd.batch_dim
        if x.dim() <= bd:
            raise ValueError(f"ACD.attribute: inputs of shape {tuple(x.shape)} have no batch axis {bd}")
        N = int(x.shape[bd])
        is_text = not (x.is_floating_point() or x.is_complex())
        afa = _format_additional_forward_args(additional_forward_args)
        kw: Dict[str, Any] = {}
        for name, v in (("sweep_dim", sweep_dim), ("percentile_include", percentile_include),
                        ("num_iters", num_iters)):
            if v is not None:
                kw[name] = v
        out_dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
        attr = torch.zeros(x.shape, dtype=out_dtype, device=x.device)
        for n in range(N):
            xn = x.narrow(bd, n, 1)
            t = _example_target(target, n, N)
            afa_n = _slice_args(afa, n, bd) if afa else None
            if is_text:
                h = self.hierarchy_text(xn, target=t, additional_forward_args=afa_n, progress=progress, **kw)
            else:
                h = self.hierarchy(xn, target=t, additional_forward_args=afa_n, progress=progress, **kw)
            attr.narrow(bd, n, 1).copy_(_joining_map(h).reshape(xn.shape).to(out_dtype))
        return _format_output(is_tuple, (attr,))

    # ------------------------------------------------------------------------------
    def hierarchy(
        self,
        inputs: Tensor,
        target: Optional[int] = None,
        sweep_dim: int = 14,
        percentile_include: float = 95,
        num_iters: int = 5,
        additional_forward_args: Any = None,
        progress: bool = False,
    ) -> ACDHierarchy:
        r"""ACD hierarchy of an image.

        Args:
            inputs (Tensor): one image ``(1, C, H, W)`` (any input whose last two axes are
                spatial).
            target (int, optional): explained class, in ``[0, C - 1]`` for a model with
                ``C`` outputs; None: the class with the largest full-image CD score.
            sweep_dim (int, optional): block size in pixels, a positive integer (the grid
                has ``ceil(H / s) x ceil(W / s)`` blocks, at least 2). Default: 14 (the
                paper's ImageNet setting at 224 px; the reference uses 1 for MNIST)
            percentile_include (float, optional): percentile of the block scores selected
                at each step, in [15, 100] (the reference's threshold lowers it by 15 once a
                third of the blocks is selected and fails below 0). Default: 95
            num_iters (int, optional): growth steps before the merge phase (>= 0; 0 gives
                the reference's single, empty level 0). Default: 5
            additional_forward_args (Any, optional): extra forward arguments.
            progress (bool, optional): show a progress bar (tqdm, if installed).

        Returns:
            ACDHierarchy: levels ``0 .. num_before_final - 1`` are growth steps (level 0
            empty, as in the reference), then one level per merge, down to one group
            (for ``num_iters >= 1``).

        Raises:
            TypeError / ValueError: for an argument of the wrong type or out of range,
                for a grid of a single block (``sweep_dim`` >= the image's height and
                width: the reference fails then), or when the first threshold selects
                every block (tied unit scores: nothing to agglomerate).
        """
        if not isinstance(inputs, Tensor):
            raise TypeError("hierarchy expects a tensor, got %s" % type(inputs).__name__)
        if inputs.dim() < 3 or inputs.shape[self.cd.batch_dim] != 1:
            raise ValueError("hierarchy expects one image (1, C, H, W), got shape %s" % (tuple(inputs.shape),))
        s = _check_int("sweep_dim", sweep_dim, 1)
        percentile_include = _check_percentile(
            percentile_include, 15, " for images (the reference's threshold lowers it by 15 once a third of "
            "the blocks is selected)")
        num_iters = _check_int("num_iters", num_iters, 0)
        H, W = inputs.shape[-2], inputs.shape[-1]
        gh, gw = -(-H // s), -(-W // s)
        if gh * gw < 2:
            raise ValueError(f"sweep_dim={s} makes a single block of the {H}x{W} image; ACD needs at least 2 "
                             f"blocks (sweep_dim < {max(H, W)})")
        lead = [1] * (inputs.dim() - 3)
        dtype = inputs.dtype

        def to_pixels(grid: np.ndarray) -> np.ndarray:
            return np.kron(grid, np.ones((s, s), dtype=bool))[:H, :W].astype(bool)

        def fn(grids: List[np.ndarray]) -> np.ndarray:
            m = torch.from_numpy(np.stack([to_pixels(g) for g in grids])).to(dtype=dtype, device=inputs.device)
            m = m.reshape([len(grids)] + lead + [H, W])
            rel, _ = self.cd.decompose(inputs, m, additional_forward_args=additional_forward_args)
            return rel.detach().double().cpu().numpy()

        bar = _progress_bar(progress, "ACD (CD evaluations)")
        scorer = CachedScorer(fn, bar)
        try:
            full_vec = scorer(np.ones((gh, gw), dtype=bool))
            if target is None:
                target = int(np.argmax(full_vec))
            target = _check_target(target, int(full_vec.shape[0]))
            lists, finish_lists = agglomerate_2d(scorer, (gh, gw), target, percentile_include,
                                                 num_iters, defer=True)
        finally:
            if bar is not None:
                bar.close()
        if num_iters > 0 and lists["im_thresh_list"][0].all():
            raise ValueError(f"the first threshold (percentile_include={percentile_include:g}) selected all "
                             f"{gh * gw} blocks (tied unit scores): nothing to agglomerate")
        n_eval = scorer.evaluations

        def finish() -> int:
            scorer.progress = None  # the bar is closed
            with torch.no_grad():
                finish_lists()
            return scorer.evaluations - n_eval

        levels: List[Dict[int, ACDGroup]] = []
        for lev, (comps, scores) in enumerate(zip(lists["comps_list"], lists["comp_scores_raw_list"])):
            groups = {}
            for k in [int(c) for c in np.unique(comps) if c != 0]:
                vec = np.asarray(scores[k]) if k in scores else scorer(comps == k)
                groups[k] = ACDGroup(lev, k, to_pixels(comps == k), float(vec[target]), vec)
            levels.append(groups)
        unit = to_pixels_scores(lists["scores_orig_raw"][:, target].reshape(gh, gw), s, H, W)
        nd = inputs.dim()
        return ACDHierarchy("image", target, levels, lists, tuple(inputs.shape), unit,
                            n_eval, lists["reference_cd_calls"],
                            lists["num_before_final"], feature_axes=(nd - 2, nd - 1), sweep_dim=s,
                            finish=finish)

    # ------------------------------------------------------------------------------
    def hierarchy_text(
        self,
        inputs: Tensor,
        target: Optional[int] = None,
        percentile_include: float = 99.5,
        num_iters: int = 25,
        sweep_dim: int = 1,
        subtract: bool = True,
        absolute: bool = True,
        words: Optional[Sequence[str]] = None,
        additional_forward_args: Any = None,
        progress: bool = False,
    ) -> ACDHierarchy:
        r"""ACD hierarchy of a token sequence (contiguous phrases).

        Args:
            inputs (Tensor): token ids of one sequence, batch axis of size 1 at
                ``batch_dim`` (e.g. ``(T, 1)`` for a sequence-first model, ``(1, T)`` for
                a batch-first one); a 1-D ``(T,)`` tensor is taken as that sequence (the
                batch axis is added at ``batch_dim``, which must be 0 or 1).
            target (int, optional): explained class, in ``[0, C - 1]`` for a model with
                ``C`` outputs; None: the class with the largest full-sequence CD score.
            percentile_include (float, optional): percentile of ``|score|`` selected per
                step, in [0, 100]. Default: 99.5
            num_iters (int, optional): maximal number of growth steps (>= 0). Default: 25
            sweep_dim (int, optional): neighbour distance, a positive integer (the
                reference supports 1). Default: 1
            subtract (bool, optional): phrase score ``rel[target] - rel[other]`` (other =
                ``1 - target`` for two classes, the mean of the other logits otherwise;
                needs at least 2 outputs); False: ``rel[target]``. Default: True
            absolute (bool, optional): threshold ``|score|``. Default: True
            words (sequence of str, optional): the ``T`` tokens, kept for plots.
            additional_forward_args (Any, optional): extra forward arguments.
            progress (bool, optional): progress bar (tqdm, if installed).

        Returns:
            ACDHierarchy: the runs re-levelled as by the reference's ``collapse_tree``:
            level 0 = the single words and the phrases the reference puts at level 0
            (runs of newly selected words only), higher levels = the longer phrases.

        Raises:
            TypeError / ValueError: for an argument of the wrong type, shape or range, or
                ``subtract=True`` with a single-output model.
        """
        if not isinstance(inputs, Tensor):
            raise TypeError("hierarchy_text expects a tensor of token ids, got %s" % type(inputs).__name__)
        bd = self.cd.batch_dim
        given_shape = tuple(inputs.shape)
        if inputs.dim() == 1 and bd in (0, 1):
            x = inputs.unsqueeze(bd)
            feature_axes: Tuple[int, ...] = (0,)
        else:
            feat = [n for d, n in enumerate(inputs.shape) if d != bd]
            if inputs.dim() <= bd or len(feat) != 1 or inputs.shape[bd] != 1:
                expected = "(T, 1)" if bd == 1 else "(1, T)" if bd == 0 else "a batch axis of size 1 at %d" % bd
                raise ValueError(f"hierarchy_text expects the token ids of one sequence, shape {expected} "
                                 f"(batch_dim={bd}) or (T,), got {given_shape}")
            x = inputs
            feature_axes = tuple(d for d in range(inputs.dim()) if d != bd)
        T = int(x.numel())  # one sequence: batch axis of size 1
        if T < 1:
            raise ValueError("hierarchy_text: empty token sequence")
        percentile_include = _check_percentile(percentile_include, 0)
        num_iters = _check_int("num_iters", num_iters, 0)
        sweep_dim = _check_int("sweep_dim", sweep_dim, 1)
        if words is not None:
            words = list(words)
            if len(words) != T:
                raise ValueError(f"words has {len(words)} entries for {T} tokens")

        def fn(masks: List[np.ndarray]) -> np.ndarray:
            m = torch.from_numpy(np.stack(masks).astype(np.float32)).to(x.device)
            rel, _ = self.cd.decompose(x, m, additional_forward_args=additional_forward_args)
            return rel.detach().double().cpu().numpy()

        bar = _progress_bar(progress, "ACD text (CD evaluations)")
        scorer = CachedScorer(fn, bar)
        try:
            full = np.ones(T, dtype=bool)
            n_out = int(scorer(full).shape[0])
            if subtract and n_out < 2:
                raise ValueError("hierarchy_text: subtract=True scores rel[target] - rel[other] and needs a model "
                                 "with at least 2 outputs (this one has 1); use subtract=False")
            if target is None:
                target = int(np.argmax(scorer(full)))
            target = _check_target(target, n_out)

            def score(m: np.ndarray) -> float:
                v = scorer(m)
                if not subtract:
                    return float(v[target])
                if v.shape[0] == 2:
                    return float(v[target] - v[1 - target])
                return float(v[target] - (v.sum() - v[target]) / (v.shape[0] - 1))

            lists = agglomerate_1d(score, scorer.prefetch, T, percentile_include, num_iters,
                                   sweep_dim, absolute)
            tree = collapse_tree(lists)
        finally:
            if bar is not None:
                bar.close()
        unit = np.asarray(lists["scores_list"][0], dtype=np.float64)
        levels: List[Dict[int, ACDGroup]] = []
        for lev, (comps, scores) in enumerate(zip(tree["comps_list"], tree["comp_scores_list"])):
            groups = {}
            for k in [int(c) for c in np.unique(comps)]:
                if lev == 0 and k < T:  # word k (id 0 is word 0 at level 0)
                    groups[k] = ACDGroup(0, k, comps == k, float(unit[k]))
                elif k != 0:  # a phrase (ids >= T at level 0)
                    groups[k] = ACDGroup(lev, k, comps == k, float(scores[k]))
            levels.append(groups)
        tree["reference_cd_calls"] = lists["reference_cd_calls"]
        return ACDHierarchy("text", target, levels, tree, given_shape, unit,
                            scorer.evaluations, lists["reference_cd_calls"], None, words,
                            feature_axes=feature_axes, sweep_dim=sweep_dim)


def _example_target(target: Any, n: int, N: int) -> Any:
    """The target of example ``n`` of ``N`` (Captum's forms: one index for all, or a list /
    1-D tensor / integer array with one index per example)."""
    if target is None:
        return None
    if isinstance(target, np.ndarray):
        target = torch.as_tensor(target)
    if isinstance(target, Tensor):
        if target.numel() == 1:
            return target.reshape(())
        if target.dim() != 1 or target.numel() != N:
            raise ValueError(f"target tensor of shape {tuple(target.shape)} for {N} inputs (give one index or {N})")
        return target[n]
    if isinstance(target, (list, tuple)):
        if len(target) != N:
            raise ValueError(f"target list has {len(target)} entries for {N} inputs (one per input, as in Captum)")
        return target[n]
    return target


def _joining_map(h: "ACDHierarchy") -> Tensor:
    """Each feature's score in the first (lowest-level) group that contains it; features in
    no group keep their unit score.  Shape: the hierarchy's ``input_shape`` (float64)."""
    fmap = np.array(np.asarray(h.unit_scores, dtype=np.float64), copy=True)
    done = np.zeros(fmap.shape, dtype=bool)
    for groups in h.levels:
        for g in groups.values():
            mask = np.asarray(g.mask, dtype=bool).reshape(fmap.shape)
            fmap[mask & ~done] = g.score
            done |= mask
    t = torch.from_numpy(fmap)
    view = [1] * len(h.input_shape)
    for ax, size in zip(h.feature_axes, fmap.shape):
        view[ax] = size
    return t.reshape(view).expand(h.input_shape).clone()


def to_pixels_scores(grid: np.ndarray, s: int, H: int, W: int) -> np.ndarray:
    return np.kron(grid, np.ones((s, s)))[:H, :W]
