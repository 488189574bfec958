"""Agglomerative contextual decomposition (ACD): hierarchies of feature groups."""

from __future__ import annotations

import numbers
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from captum_rap._cd.agglomerate import (
    CachedScorer,
    agglomerate_1d,
    agglomerate_2d,
    collapse_tree,
)
from captum_rap._cd.hierarchy import ACDGroup, ACDHierarchy, _check_int, to_pixels_scores
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
