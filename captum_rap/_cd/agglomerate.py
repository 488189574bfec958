"""Agglomerative contextual decomposition (ACD): the reference *code's* procedure.

Images (``agg_2d.agglomerate`` of the ``acd`` package): per-block unit scores, percentile
thresholds (``-15`` once a third is selected, ``-4`` while nothing is selected), 8-connected
blobs with label correspondence across steps, gains ``CD(blob + cell) - CD(blob)`` of the
4-neighbour cells, 3-of-4-neighbour smoothing, then pairwise merging by
``CD(A u B) - max(CD(A), CD(B))``.

Text (``agg_1d.agglomerate`` + ``collapse_tree``): unit word scores, ``|score|``
percentile thresholds with the small-count overrides, contiguous runs grown by their left
and right neighbours, then re-levelling of the runs for display.

Differences from the reference, none of which changes a hierarchy it produces:
scores come from a caching scorer (a mask scored once is never re-scored) that evaluates
all new masks of one step in batched CD calls; the loops stop instead of raising when
everything is selected; non-square images work; a one-word text keeps its level 0 in
:func:`collapse_tree` (the reference's has no level then).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

try:  # scikit-image's labelling when available, else scipy's (same components)
    from skimage.measure import label as _sk_label
except ImportError:  # pragma: no cover
    _sk_label = None


def label_components(mask: np.ndarray, connectivity: int) -> np.ndarray:
    """Connected components (8-connected for ``connectivity=2`` in 2-D), labels 1..n in
    raster order of their first pixel, 0 = background."""
    if _sk_label is not None:
        return _sk_label(mask.astype(bool), connectivity=connectivity).astype(np.int64)
    from scipy import ndimage  # pragma: no cover

    st = ndimage.generate_binary_structure(mask.ndim, connectivity)  # pragma: no cover
    return ndimage.label(mask, structure=st)[0].astype(np.int64)  # pragma: no cover


class CachedScorer:
    """Scores binary masks (numpy bool arrays over the grid / tokens) with a batched CD
    function, never evaluating the same mask twice.

    ``fn(list_of_masks) -> (K, C) numpy array`` of relevant logits.
    """

    def __init__(self, fn: Callable[[List[np.ndarray]], np.ndarray], progress=None) -> None:
        self.fn = fn
        self.cache: Dict[bytes, np.ndarray] = {}
        self.evaluations = 0  # unique CD evaluations (masks actually decomposed)
        self.requests = 0  # CD evaluations the reference procedure performs
        self.progress = progress

    @staticmethod
    def _key(m: np.ndarray) -> bytes:
        return np.packbits(m.astype(bool).ravel()).tobytes() + bytes(str(m.shape), "ascii")

    def prefetch(self, masks: Sequence[np.ndarray]) -> None:
        todo, keys = [], set()
        for m in masks:
            k = self._key(m)
            if k not in self.cache and k not in keys:
                keys.add(k)
                todo.append(m)
        if todo:
            out = np.asarray(self.fn(todo))
            for m, v in zip(todo, out):
                self.cache[self._key(m)] = v
            self.evaluations += len(todo)
            if self.progress is not None:
                self.progress.update(len(todo))

    def __call__(self, m: np.ndarray) -> np.ndarray:
        """CD vector of one mask (counted as one reference evaluation)."""
        self.requests += 1
        k = self._key(m)
        if k not in self.cache:
            self.prefetch([m])
        return self.cache[k]


# ======================================================================================
# images
# ======================================================================================
def threshold_scores_2d(scores: np.ndarray, percentile_include: float) -> np.ndarray:
    """Cells with score >= the ``percentile_include`` percentile of the unselected cells
    (NaN = already selected); ``-15`` once more than a third is selected, ``-4`` while
    nothing passes.  Returns an all-False mask when no cell is left."""
    p = percentile_include
    n_nan = int(np.sum(np.isnan(scores)))
    if n_nan == scores.size:
        return np.zeros(scores.shape, dtype=bool)
    if n_nan > scores.size / 3:
        p -= 15
    while True:
        if p < 0:
            return np.zeros(scores.shape, dtype=bool)
        thr = np.nanpercentile(scores, p)
        with np.errstate(invalid="ignore"):
            sel = scores >= thr
        if sel.any():
            return sel
        p -= 4


def smooth_im_thresh(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """``old | new`` plus unselected cells with at least 3 of their 4 neighbours selected."""
    im = old | new
    f = im.astype(np.int64)
    pad = np.pad(f, 1)
    nb = pad[:-2, 1:-1] + pad[2:, 1:-1] + pad[1:-1, :-2] + pad[1:-1, 2:]
    return im | (nb >= 3)


def establish_correspondence(prev: np.ndarray, comps: np.ndarray, max_label: int = 11) -> np.ndarray:
    """Relabel ``comps`` so that blobs keep the label of the previous blob they overlap
    (the smallest one when they overlap several); new blobs, taken in reverse raster order,
    get the smallest label in ``1..max_label`` not used by the relabelled blobs.  Raw
    labels (``comps`` unchanged) when that runs out or when a kept label is above
    ``max_label`` (the reference's ``remaining.remove`` / ``min(remaining)`` raise and its
    caller falls back to the raw labels; once labels went raw they stay raw while a blob
    keeps a label above ``max_label``)."""
    out = np.zeros_like(comps)
    new_ids = [int(c) for c in np.unique(comps) if c != 0]
    fresh = []
    for c in new_ids:
        region = comps == c
        olds = [int(o) for o in np.unique(prev[region]) if o != 0]
        if olds:
            if min(olds) > max_label:
                return comps.copy()
            out[region] = min(olds)
        else:
            fresh.append(c)
    taken = set(int(v) for v in np.unique(out) if v != 0)
    for c in reversed(fresh):
        cand = [v for v in range(1, max_label + 1) if v not in taken]
        if not cand:
            return comps.copy()
        out[comps == c] = cand[0]
        taken.add(cand[0])
    return out


def _neighbour_cells(blob: np.ndarray) -> List[tuple]:
    """Grid cells outside ``blob`` with a 4-neighbour inside it (raster order)."""
    pad = np.pad(blob, 1)
    nb = pad[:-2, 1:-1] | pad[2:, 1:-1] | pad[1:-1, :-2] | pad[1:-1, 2:]
    cand = nb & ~blob
    return [tuple(int(v) for v in ij) for ij in np.argwhere(cand)]


def agglomerate_2d(scorer: CachedScorer, grid_shape, label: int, percentile_include: float,
                   num_iters: int, defer: bool = False):
    """ACD for a 2-D grid of blocks.  Returns the reference's ``lists`` dictionary.

    With ``defer=True`` the CD evaluations that cannot change the hierarchy (its groups,
    their scores and the unit scores) are not made: the combined tile of every step
    (``comp_scores_raw_combined_list``) and the border-cell gains of the last growth step
    (they only enter ``scores_list`` / ``im_thresh_list`` after the last blob labelling).
    Returns ``(lists, finish)`` then: ``finish()`` makes those evaluations and fills the
    entries in place (they are None until then).
    """
    gh, gw = grid_shape
    G = gh * gw
    full = np.ones((gh, gw), dtype=bool)
    units = []
    for c in range(G):
        u = np.zeros((gh, gw), dtype=bool)
        u.flat[c] = True
        units.append(u)
    scorer.prefetch([full] + units)
    ref_calls = 1 + G
    full_vec = scorer(full)
    scores_orig_raw = np.stack([scorer(u) for u in units])
    scores_track = scores_orig_raw[:, label].reshape(gh, gw).astype(np.float64).copy()

    def s(m):
        return float(scorer(m)[label])

    def gains_and_threshold(scores_track, selected, owner, blobs, comp_scores):
        for cell, k in owner.items():
            m = blobs[k].copy()
            m[cell] = True
            scores_track[cell] = s(m) - float(comp_scores[k][label])
        scores_track[selected] = np.nan
        new = threshold_scores_2d(scores_track, percentile_include)
        return smooth_im_thresh(selected, new)

    selected = threshold_scores_2d(scores_track, percentile_include)
    scores_list = [scores_track.copy()]
    im_thresh_list = [selected.copy()]
    comps_list: List[np.ndarray] = []
    comp_scores_raw_list: List[dict] = [{0: full_vec}]
    combined_list: List[Optional[np.ndarray]] = []
    combined_masks: List[np.ndarray] = []
    last_step = None  # deferred gains of the last growth step
    prev = None
    for step in range(num_iters):
        if selected.all():
            break
        comps = label_components(selected, 2)
        if step > 0:
            comps = establish_correspondence(prev, comps)
        ids = [int(c) for c in np.unique(comps) if c != 0]
        blobs = {k: comps == k for k in ids}
        combined = comps > 0
        cands = {k: _neighbour_cells(blobs[k]) for k in ids}
        # the reference scores [blob, combined tile, blob + each border cell] per blob
        ref_calls += 2 * len(ids) + sum(len(c) for c in cands.values())
        # the reference scores every (blob, neighbour cell) pair; only the last blob's gain
        # survives for a cell, and the gains of already selected cells are discarded (NaN):
        # score just the pairs that can change the outcome
        owner = {}
        for k in ids:
            for cell in cands[k]:
                if not selected[cell]:
                    owner[cell] = k
        final = defer and step == num_iters - 1
        todo = [blobs[k] for k in ids]
        if not defer:
            todo.append(combined)
        if not final:
            for cell, k in owner.items():
                m = blobs[k].copy()
                m[cell] = True
                todo.append(m)
        scorer.prefetch(todo)
        comp_scores = {k: scorer(blobs[k]) for k in ids}
        combined_masks.append(combined)
        combined_list.append(None if defer else scorer(combined))
        if final:
            last_step = (scores_track.copy(), selected.copy(), owner, blobs, comp_scores)
            scores_list.append(None)
            im_thresh_list.append(None)
        else:
            selected = gains_and_threshold(scores_track, selected, owner, blobs, comp_scores)
            scores_list.append(scores_track.copy())
            im_thresh_list.append(selected.copy())
        comps_list.append(comps.copy())
        comp_scores_raw_list.append(comp_scores)
        prev = comps
    comps_list = [np.zeros((gh, gw), dtype=np.int64)] + comps_list
    num_before_final = len(im_thresh_list)
    # ---- final pairwise merging ------------------------------------------------------
    comps = comps_list[-1].copy()
    while True:
        ids = [int(c) for c in np.unique(comps) if c != 0]
        if len(ids) <= 1:
            break
        pairs = [(a, b) for ai, a in enumerate(ids) for b in ids[ai + 1:]]
        ref_calls += len(pairs)
        masks = {k: comps == k for k in ids}
        scorer.prefetch([masks[a] | masks[b] for a, b in pairs] + list(masks.values()))
        best, best_pair = -np.inf, None
        for a, b in pairs:
            d = s(masks[a] | masks[b]) - max(s(masks[a]), s(masks[b]))
            if best_pair is None or d > best:
                best, best_pair = d, (a, b)
        a, b = best_pair
        comps = comps.copy()
        comps[comps == b] = a
        d = dict(comp_scores_raw_list[-1])
        d.pop(b, None)
        d[a] = scorer(comps == a)
        comps_list.append(comps.copy())
        comp_scores_raw_list.append(d)
        # the reference repeats the last entries of these lists at every merge
        scores_list.append(None if scores_list[-1] is None else scores_list[-1].copy())
        im_thresh_list.append(None if im_thresh_list[-1] is None else im_thresh_list[-1].copy())
        combined_list.append(combined_list[-1] if combined_list else full_vec)
    n_merges = len(comps_list) - num_before_final
    lists = {
        "scores_list": scores_list,
        "im_thresh_list": im_thresh_list,
        "comps_list": comps_list,
        "comp_scores_raw_list": comp_scores_raw_list,
        "comp_scores_raw_combined_list": combined_list,
        "scores_orig_raw": scores_orig_raw,
        "num_before_final": num_before_final,
        "reference_cd_calls": ref_calls,
    }
    if not defer:
        return lists

    def finish() -> None:
        """Make the deferred evaluations and fill the ``None`` entries of ``lists``."""
        todo = list(combined_masks)
        if last_step is not None:
            _, _, owner, blobs, _ = last_step
            for cell, k in owner.items():
                m = blobs[k].copy()
                m[cell] = True
                todo.append(m)
        scorer.prefetch(todo)
        n_steps = len(combined_masks)
        for j in range(n_steps):
            combined_list[j] = scorer(combined_masks[j])
        for j in range(n_steps, len(combined_list)):  # merge levels repeat the last one
            combined_list[j] = combined_list[n_steps - 1] if n_steps else full_vec
        if last_step is not None:
            track, sel, owner, blobs, comp_scores = last_step
            sel = gains_and_threshold(track, sel, owner, blobs, comp_scores)
            first = num_before_final - 1
            for j in range(first, first + 1 + n_merges):
                scores_list[j] = track.copy()
                im_thresh_list[j] = sel.copy()

    return lists, finish


# ======================================================================================
# text
# ======================================================================================
_SMALL_OVERRIDE = {5: 59, 4: 49, 3: 59, 2: 49, 1: 0}


def threshold_scores_1d(scores: np.ndarray, percentile_include: float, absolute: bool = True) -> np.ndarray:
    """``|s| >= percentile`` of the unselected words; fixed percentiles when at most five
    words are left; nothing when none is left."""
    s = np.abs(scores) if absolute else scores
    n = int(np.sum(~np.isnan(s)))
    if n == 0:
        return np.zeros(s.shape, dtype=bool)
    p = _SMALL_OVERRIDE.get(n, percentile_include) if n <= 5 else percentile_include
    thr = np.nanpercentile(s, p)
    with np.errstate(invalid="ignore"):
        return s >= thr


def agglomerate_1d(score_fn: Callable[[np.ndarray], float], prefetch: Callable[[List[np.ndarray]], None],
                   T: int, percentile_include: float, num_iters: int, sweep_dim: int = 1,
                   absolute: bool = True) -> dict:
    """ACD over ``T`` token positions (runs of contiguous words).  ``score_fn(mask)`` is
    the phrase score.  Returns the reference's (pre-collapse) lists."""
    full = np.ones(T, dtype=bool)
    units = []
    for j in range(T):
        u = np.zeros(T, dtype=bool)
        u[j] = True
        units.append(u)
    prefetch([full] + units)
    ref_calls = 1 + T
    score_orig = score_fn(full)
    scores = np.array([score_fn(u) for u in units], dtype=np.float64)
    mask = threshold_scores_1d(scores, percentile_include, absolute)
    scores_list = [scores.copy()]
    mask_list = [mask.copy()]
    comps_list: List[np.ndarray] = []
    comp_scores_list: List[dict] = [{0: score_orig}]
    for _ in range(num_iters):
        comps = label_components(mask, 1)
        ids = [int(c) for c in np.unique(comps) if c != 0]
        plan = []
        for r in ids:
            run = comps == r
            pos = np.nonzero(run)[0]
            nbrs = []
            for x in (pos[0] - sweep_dim, pos[-1] + sweep_dim):
                x = int(min(max(x, 0), T - 1))
                m = run.copy()
                m[x] = True
                nbrs.append((x, m))
            plan.append((r, run, nbrs))
        prefetch([p[1] for p in plan] + [m for p in plan for _, m in p[2]])
        ref_calls += 3 * len(plan)
        cs = {}
        for r, run, nbrs in plan:
            sr = score_fn(run)
            cs[r] = sr
            for x, m in nbrs:
                scores[x] = score_fn(m) - sr
        scores[mask] = np.nan
        new = threshold_scores_1d(scores, percentile_include, absolute)
        mask_new = mask | new
        comps_list.append(comps.copy())
        comp_scores_list.append(cs)
        scores_list.append(scores.copy())
        mask_list.append(mask_new.copy())
        if np.array_equal(mask_new, mask):
            break
        mask = mask_new
    return {"scores_list": scores_list, "mask_list": mask_list, "comps_list": comps_list,
            "comp_scores_list": comp_scores_list, "score_orig": score_orig,
            "reference_cd_calls": ref_calls}


def collapse_tree(lists: dict) -> dict:
    """Re-level the runs of :func:`agglomerate_1d` for display: the reference
    ``agg_1d.collapse_tree`` (applied to the reference lists, whose ``comps_list`` starts
    with an all-zero array, which ``lists["comps_list"]`` lacks).

    Runs are processed step by step.  A size-1 run has level 0 and is not written.  A
    longer run takes the level of its unique predecessor label in the previous step (label
    0, the not yet selected words, is a predecessor of level 0; at the first step every
    word is label 0), or one more than the highest level of its predecessors when it has
    several.  It is written into ``comps_list[level]`` with the next id of that level
    (``max(comps_list[level]) + 1``), over whatever was there, and its score goes to
    ``comp_scores_list[level]``.  Level 0 starts as ``arange(T)`` (word ``j`` has id
    ``j``), so a phrase put at level 0 (a run made only of newly selected words, e.g. two
    adjacent words selected at the first step) gets an id ``>= T`` and replaces its words
    there.  Trailing levels without a non-zero id are dropped; ids overwritten later may
    stay in the dictionaries (as in the reference).

    The one difference: a one-word input keeps its level 0 (the reference returns no
    level at all, since ``arange(1)`` has no non-zero id).

    Args:
        lists (dict): output of :func:`agglomerate_1d`.

    Returns:
        dict: ``comps_list`` (int arrays over the words, one per level),
        ``comp_scores_list`` (dicts id -> score per level; level 0 holds the level-0
        phrases only, the words' scores are ``scores_list[0]``), and ``scores_list``,
        ``mask_list``, ``score_orig`` unchanged.
    """
    T = len(lists["scores_list"][0])
    steps = [np.zeros(T, dtype=np.int64)] + [np.asarray(c) for c in lists["comps_list"]]
    scores_in = lists["comp_scores_list"]
    n = len(steps)
    out_comps = [np.zeros(T, dtype=np.int64) for _ in range(n)]
    out_comps[0] = np.arange(T, dtype=np.int64)
    out_scores: List[dict] = [{0: 0} for _ in range(n)]
    prev_level: Dict[int, int] = {j: 0 for j in range(T)}
    prev_level[0] = 0
    for i in range(1, n):
        comps, old = steps[i], steps[i - 1]
        level_of: Dict[int, int] = {0: 0}
        for r in range(1, int(comps.max(initial=0)) + 1):
            run = comps == r
            size = int(run.sum())
            if size == 0:  # not produced by the run labelling
                continue
            if size == 1:
                level_of[r] = 0
                continue
            preds = [int(v) for v in np.unique(old[run])]
            if len(preds) == 1:
                lev = prev_level[preds[0]]
            else:
                lev = max(prev_level[v] for v in preds) + 1
            level_of[r] = lev
            new_id = int(out_comps[lev].max()) + 1
            out_comps[lev][run] = new_id
            out_scores[lev][new_id] = scores_in[i][r]
        prev_level = level_of
    keep = 1  # level 0 always (see above)
    while keep < n and (out_comps[keep] > 0).any():
        keep += 1
    return {
        "comps_list": out_comps[:keep],
        "comp_scores_list": out_scores[:keep],
        "scores_list": lists["scores_list"],
        "mask_list": lists["mask_list"],
        "score_orig": lists["score_orig"],
    }
