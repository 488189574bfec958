"""Agglomerative contextual decomposition (ACD): hierarchies of feature groups."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from captum_rap._cd.agglomerate import (
    CachedScorer,
    agglomerate_1d,
    agglomerate_2d,
    collapse_tree,
)
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


@dataclass
class ACDGroup:
    """One feature group of an ACD hierarchy.

    Attributes:
        level (int): level of the hierarchy (0 = finest).
        id (int): label of the group at that level (as in the reference's ``comps_list``).
        mask (np.ndarray): boolean mask over the features: pixels ``(H, W)`` for images,
            token positions ``(T,)`` for text.
        score (float): CD score of the group (relevant logit of the target for images;
            ``rel[target] - rel[other]`` for text with ``subtract=True``).
        logits (np.ndarray or None): relevant part of all outputs (images).
        parent (tuple or None): ``(level, id)`` of the smallest group of a higher level
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

    ``levels[l]`` maps group ids to :class:`ACDGroup`; groups carry parent / child links,
    so the tree can be walked from any level.  ``raw`` holds the lists in the reference
    ``acd`` format (``comps_list``, ``comp_scores_raw_list``, ... for images; the
    ``collapse_tree`` output for text).  For images, the entries of ``raw`` that play no
    part in the hierarchy (the combined tile's scores of every step,
    ``comp_scores_raw_combined_list``, and the border gains of the last growth step, the
    last entries of ``scores_list`` / ``im_thresh_list``) are computed on the first access
    of ``raw`` (``deferred_evaluations`` more CD evaluations, with the model as it is then).

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
        words (list of str or None): (text) tokens, for plots.
    """

    def __init__(self, kind: str, target: int, levels: List[Dict[int, ACDGroup]], raw: dict,
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
        self.feature_axes = feature_axes
        self.sweep_dim = sweep_dim
        self._link()

    @property
    def raw(self) -> dict:
        """The lists in the reference ``acd`` format (completed on first access)."""
        if self._finish is not None:
            finish, self._finish = self._finish, None
            self.deferred_evaluations = int(finish())
        return self._raw

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
                f"units={len(self.levels[0]) if self.levels else 0}, top_groups={len(top)}")
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

    # ---- export --------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain-python description (features as flat indices over pixels / tokens)."""
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
            "feature_shape": list(self._feature_shape()),
            "input_shape": list(self.input_shape), "num_before_final": self.num_before_final,
            "cd_evaluations": self.cd_evaluations, "reference_cd_calls": self.reference_cd_calls,
            "words": self.words, "levels": levels,
        }

    def to_json(self, **kwargs) -> str:
        """JSON string of :meth:`to_dict` (``kwargs`` go to ``json.dumps``)."""
        return json.dumps(self.to_dict(), **kwargs)

    def _feature_shape(self) -> Tuple[int, ...]:
        for groups in self.levels:
            for g in groups.values():
                return g.mask.shape
        return tuple(self.unit_scores.shape)

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
        to [0, 1]).  Text: the heat map of levels x words coloured by group score with the
        words written in (the standard ACD figure).

        Returns:
            the matplotlib figure.
        """
        import matplotlib.pyplot as plt

        if self.kind == "text":
            return self._plot_text(ax=ax, cmap=cmap, **kwargs)
        levels = list(range(1, len(self.levels))) if levels is None else list(levels)
        n = len(levels)
        cols = min(n, 6)
        rows = (n + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows), squeeze=False)
        img = None
        if image is not None:
            img = image.detach().cpu().double().numpy() if isinstance(image, Tensor) else np.asarray(image, dtype=float)
            img = np.squeeze(img)
            if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
                img = np.moveaxis(img, 0, -1)
            img = (img - img.min()) / (img.max() - img.min() + 1e-12)
        cm = plt.get_cmap("tab20")
        for a in axes.ravel():
            a.axis("off")
        for a, lev in zip(axes.ravel(), levels):
            if img is not None:
                a.imshow(img, cmap="gray" if img.ndim == 2 else None)
            lab = np.zeros(self._feature_shape(), dtype=float)
            for g in self.levels[lev].values():
                lab[g.mask] = g.id
            over = np.ma.masked_where(lab == 0, lab % 20)
            a.imshow(over, cmap=cm, vmin=0, vmax=19, alpha=0.6 if img is not None else 1.0,
                     interpolation="nearest")
            a.set_title("level %d" % lev, fontsize=8)
        fig.tight_layout()
        return fig

    def _plot_text(self, ax=None, cmap="RdBu_r", **kwargs):
        import matplotlib.pyplot as plt

        T = len(self.unit_scores)
        L = len(self.levels)
        data = np.full((L, T), np.nan)
        for lev, groups in enumerate(self.levels):
            for g in groups.values():
                data[lev, g.mask] = g.score
        if ax is None:
            fig, ax = plt.subplots(figsize=(max(4, 0.7 * T), 0.45 * L + 1))
        else:
            fig = ax.figure
        vmax = np.nanmax(np.abs(data)) if np.isfinite(data).any() else 1.0
        ax.pcolormesh(np.ma.masked_invalid(data[::-1]), cmap=cmap, vmin=-vmax, vmax=vmax,
                      edgecolors="w", linewidth=0.5)
        words = self.words or [str(i) for i in range(T)]
        for lev in range(L):
            for t in range(T):
                if np.isfinite(data[lev, t]):
                    ax.text(t + 0.5, L - lev - 0.5, words[t], ha="center", va="center", fontsize=8)
        ax.set_yticks(np.arange(L) + 0.5)
        ax.set_yticklabels(["level %d" % lev for lev in range(L)][::-1], fontsize=8)
        ax.set_xticks([])
        return fig


class ACD:
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
        self.model = model
        self.cd = CD(model, reference_compatible=reference_compatible, batch_size=batch_size,
                     batch_dim=batch_dim, dtype=dtype, check_precision=check_precision)

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
            target (int, optional): explained class; None: the predicted one.
            sweep_dim (int, optional): block size in pixels (the grid has
                ``ceil(H / s) x ceil(W / s)`` blocks). Default: 14 (the paper's ImageNet
                setting at 224 px; the reference uses 1 for MNIST)
            percentile_include (float, optional): percentile of the block scores selected
                at each step (>= 15). Default: 95
            num_iters (int, optional): growth steps before the merge phase. Default: 5
            additional_forward_args (Any, optional): extra forward arguments.
            progress (bool, optional): show a progress bar (tqdm, if installed).

        Returns:
            ACDHierarchy: levels ``0 .. num_before_final - 1`` are growth steps (level 0
            empty, as in the reference), then one level per merge, down to one group.
        """
        if inputs.dim() < 3 or inputs.shape[self.cd.batch_dim] != 1:
            raise ValueError("hierarchy expects one image (1, C, H, W)")
        H, W = inputs.shape[-2], inputs.shape[-1]
        s = int(sweep_dim)
        gh, gw = -(-H // s), -(-W // s)
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
            if target is None:
                target = int(np.argmax(scorer(np.ones((gh, gw), dtype=bool))))
            lists, finish_lists = agglomerate_2d(scorer, (gh, gw), int(target), percentile_include,
                                                 num_iters, defer=True)
        finally:
            if bar is not None:
                bar.close()
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
                groups[k] = ACDGroup(lev, k, to_pixels(comps == k), float(vec[int(target)]), vec)
            levels.append(groups)
        unit = to_pixels_scores(lists["scores_orig_raw"][:, int(target)].reshape(gh, gw), s, H, W)
        nd = inputs.dim()
        return ACDHierarchy("image", int(target), levels, lists, tuple(inputs.shape), unit,
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
                ``batch_dim`` (e.g. ``(T, 1)`` for a sequence-first model).
            target (int, optional): explained class; None: the predicted one.
            percentile_include (float, optional): percentile of ``|score|`` selected per
                step. Default: 99.5
            num_iters (int, optional): maximal number of growth steps. Default: 25
            sweep_dim (int, optional): neighbour distance (the reference supports 1).
            subtract (bool, optional): phrase score ``rel[target] - rel[other]`` (other =
                ``1 - target`` for two classes, the mean of the other logits otherwise);
                False: ``rel[target]``. Default: True
            absolute (bool, optional): threshold ``|score|``. Default: True
            words (sequence of str, optional): tokens, kept for plots.
            additional_forward_args (Any, optional): extra forward arguments.
            progress (bool, optional): progress bar (tqdm, if installed).

        Returns:
            ACDHierarchy: level 0 = single words, higher levels = the re-levelled runs
            (the reference's ``collapse_tree``).
        """
        bd = self.cd.batch_dim
        feat = [n for d, n in enumerate(inputs.shape) if d != bd]
        if len(feat) != 1 or inputs.shape[bd] != 1:
            raise ValueError("hierarchy_text expects one token sequence (batch axis of size 1)")
        T = feat[0]

        def fn(masks: List[np.ndarray]) -> np.ndarray:
            m = torch.from_numpy(np.stack(masks).astype(np.float32)).to(inputs.device)
            rel, _ = self.cd.decompose(inputs, m, additional_forward_args=additional_forward_args)
            return rel.detach().double().cpu().numpy()

        bar = _progress_bar(progress, "ACD text (CD evaluations)")
        scorer = CachedScorer(fn, bar)
        try:
            full = np.ones(T, dtype=bool)
            if target is None:
                target = int(np.argmax(scorer(full)))
            target = int(target)

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
            if lev == 0:
                for j in range(T):
                    groups[j] = ACDGroup(0, j, np.arange(T) == j, float(unit[j]))
            else:
                for k in [int(c) for c in np.unique(comps) if c != 0]:
                    groups[k] = ACDGroup(lev, k, comps == k, float(scores[k]))
            levels.append(groups)
        tree["reference_cd_calls"] = lists["reference_cd_calls"]
        return ACDHierarchy("text", target, levels, tree, tuple(inputs.shape), unit,
                            scorer.evaluations, lists["reference_cd_calls"], None, words,
                            feature_axes=tuple(d for d in range(inputs.dim()) if d != bd),
                            sweep_dim=sweep_dim)


def to_pixels_scores(grid: np.ndarray, s: int, H: int, W: int) -> np.ndarray:
    return np.kron(grid, np.ones((s, s)))[:H, :W]
