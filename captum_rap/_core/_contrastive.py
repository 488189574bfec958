"""Shared machinery of the contrastive propagation methods (CLRP, SGLRP).

A contrastive map is ``R_target - R_dual`` where both maps are LRP maps of the same forward
pass with different starting relevances ("seeds") or, for CLRP2, a different output layer.
All LRP rules are linear in the relevance for a fixed forward pass, so

* when only the difference is needed, one backward pass with the signed seed
  ``seed_target - seed_dual`` gives it exactly (CLRP1, SGLRP without scaling);
* when the two maps are needed separately (normalised or scaled maps, ``return_dual``, or a
  non-linear base such as the relevance filter), the input is repeated along the batch axis
  and the two seeds are stacked: one forward and one backward pass of batch ``2N``;
* CLRP2 (the target neuron with negated weights) is handled by a top-layer rule wrapper:
  at the output layer it applies the base rule with the original and with the negated
  weights and hands on their difference (or, stacked, the two halves) to the layers below.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, List, Optional, Tuple, Union

import torch
from torch import Tensor

from .._compat import (
    TargetType,
    _expand_additional_forward_args,
    _format_additional_forward_args,
    _format_output,
    _format_tensor_into_tuples,
    _is_tuple,
)
from .._engine import AffineOp, LayerInfo, safe_divide
from ._propagation import CompositeAttribution, convergence_delta, per_example_sum, target_mask

__all__ = ["ContrastiveAttribution", "NegatedOutputLayer"]


def _sub(a: Optional[Tensor], b: Optional[Tensor]) -> Optional[Tensor]:
    if a is None and b is None:
        return None
    if a is None:
        return -b
    if b is None:
        return a
    return a - b


def _cat(a: Optional[Tensor], b: Optional[Tensor], like_a: Tensor, like_b: Tensor) -> Optional[Tensor]:
    if a is None and b is None:
        return None
    a = torch.zeros_like(like_a) if a is None else a
    b = torch.zeros_like(like_b) if b is None else b
    return torch.cat([a, b])


def negated_op(op: AffineOp) -> AffineOp:
    """The same affine layer with weight and bias negated (every output neuron ``-z_k``)."""
    neg = AffineOp.__new__(AffineOp)
    neg.kind = op.kind
    neg.weight = -op.weight
    neg.bias = None if op.bias is None else -op.bias
    neg.conv_kwargs = dict(op.conv_kwargs)
    neg.pre_pad = op.pre_pad
    return neg


class NegatedOutputLayer:
    """Rule wrapper used by CLRP2: on every layer except the output layer it is the wrapped
    rule; at the output layer it also applies the wrapped rule to the layer with negated
    weights and bias (the dual concept "not O" of Gu et al.: ``W^L_t -> -W^L_t``) to the
    same relevance, and returns

    * ``mode="diff"``: ``R_in(W) - R_in(-W)``, the signed contrast, which everything below
      propagates in one pass (valid because the lower rules are linear);
    * ``mode="stack"``: for a batch ``[x; x]`` of ``2N`` examples, the first half propagated
      with ``W`` and the second half with ``-W``.

    Negating the whole layer instead of row ``t`` only is exact for rules in which each
    output neuron's redistribution depends on its own weights only (all LRP rules here),
    because only row ``t`` carries relevance.
    """

    def __init__(self, rule: Any, mode: str, record: List[bool]) -> None:
        self.rule = rule
        self.mode = mode
        self.record = record
        self.STABILITY_FACTOR = getattr(rule, "STABILITY_FACTOR", 1e-9)

    @property
    def input_layer_only(self) -> bool:
        return bool(getattr(self.rule, "input_layer_only", False))

    @property
    def needs_input_mask(self) -> bool:
        return bool(getattr(self.rule, "needs_input_mask", False))

    @property
    def linear_in_relevance(self) -> bool:
        return bool(getattr(self.rule, "linear_in_relevance", True))

    def check_layer(self, info: LayerInfo) -> Optional[str]:
        check = getattr(self.rule, "check_layer", None)
        return check(info) if check is not None else None

    def propagate(self, op: AffineOp, x: Tensor, z: Tensor, relevance: Tensor, info: LayerInfo):
        if not info.is_output_layer:
            return self.rule.propagate(op, x, z, relevance, info)
        self.record.append(True)
        neg = negated_op(op)
        if self.mode == "diff":
            ft, et = self.rule.propagate(op, x, z, relevance, info)
            fd, ed = self.rule.propagate(neg, x, -z, relevance, info)
            return _sub(ft, fd), _sub(et, ed)
        n = x.shape[0] // 2
        info_t, info_d = info, info
        if info.input_mask is not None:
            info_t = dataclasses.replace(info, input_mask=info.input_mask[:n])
            info_d = dataclasses.replace(info, input_mask=info.input_mask[n:])
        ft, et = self.rule.propagate(op, x[:n], z[:n], relevance[:n], info_t)
        fd, ed = self.rule.propagate(neg, x[n:], -z[n:], relevance[n:], info_d)
        return _cat(ft, fd, x[:n], x[n:]), _cat(et, ed, x[:n], x[n:])

    def __repr__(self) -> str:
        return f"NegatedOutputLayer({self.rule!r}, mode={self.mode!r})"


def logit_target_mask(outputs: Tensor, target: TargetType, method: str) -> Tensor:
    """One-hot (N, C) mask of the target class (``None``: the predicted class)."""
    if outputs.dim() != 2 or outputs.shape[1] < 2:
        raise ValueError(f"{method} contrasts one class against the others and needs model outputs of "
                         f"shape (N, C) with C >= 2, got {tuple(outputs.shape)}")
    return target_mask(outputs, target, method)


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    return v.view((-1,) + (1,) * (like.dim() - 1))


class ContrastiveAttribution(CompositeAttribution):
    """Base of CLRP and SGLRP: the one-pass / stacked propagation of a target and a dual
    seed and the ``attribute`` body.  A method provides :meth:`seeds_for`,
    :meth:`_needs_both_maps`, :meth:`_contrast` and :meth:`_finish` (and ``_top_layer``).
    The constructor is :class:`~captum_rap.LRP`'s (composite, ``merge_batchnorm``,
    ``dtype``); the methods pass their own default composite."""

    method_name = "contrastive"
    _attribute_options = {"return_dual": False}
    #: ``None`` or ``"negate"`` (CLRP2: the dual uses the negated output layer)
    _top_layer: Optional[str] = None

    # -- to be provided by the methods ----------------------------------------------------
    def seeds_for(self, outputs: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor]:
        """The target and dual seeds ``(N, C)`` for logits ``outputs`` and a one-hot
        ``mask`` of the target class."""
        raise NotImplementedError

    def _needs_both_maps(self) -> bool:
        """Whether the combination needs ``R_target`` and ``R_dual`` separately (else only
        their difference, one pass with the signed seed)."""
        raise NotImplementedError

    def _contrast(self, maps: Tuple[Tensor, ...], dual: Tuple[Tensor, ...], diff: Tuple[Tensor, ...],
                  n: int) -> Tuple[Tensor, ...]:
        """The contrast from the two maps (stacked runs only); ``diff`` is ``maps - dual``."""
        return diff

    def _finish(self, contrast: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
        """Post-processing of the contrast (clipping)."""
        return contrast

    # -------------------------------------------------------------------------------------
    def _attribute(self, inputs: Any, target: TargetType, additional_forward_args: Any,
                   return_convergence_delta: bool, return_dual: bool = False) -> Any:
        stacked = return_dual or self._needs_both_maps() or not self.base_is_linear()
        with torch.enable_grad():
            (maps, dual), outputs, st, sd, is_tuple = self._run(
                inputs, target, additional_forward_args, self.seeds_for, stacked, top_layer=self._top_layer)
        n = st.shape[0]
        if stacked:
            diff = tuple(a - b for a, b in zip(maps, dual))
            contrast = self._contrast(maps, dual, diff, n)
        else:
            diff = contrast = maps
        attr = self._finish(contrast)
        # conservation error of the signed contrast (before clipping / normalising)
        delta = convergence_delta(st - sd, diff) if return_convergence_delta else None
        return self._pack(is_tuple, attr, dual, delta, return_dual, return_convergence_delta)

    def base_is_linear(self) -> bool:
        """Whether every rule that can be used is linear in the relevance (then the
        contrast of two seeds is one backward pass of their difference)."""
        if not getattr(self.composite, "linear_in_relevance", True):
            return False
        for m in self.model.modules():
            r = getattr(m, "rule", None)
            if r is not None and not getattr(r, "linear_in_relevance", True):
                return False
        return True

    # -------------------------------------------------------------------------------------
    def _run(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        target: TargetType,
        additional_forward_args: Any,
        make_seeds: Callable[[Tensor, Tensor], Tuple[Tensor, Tensor]],
        stacked: bool,
        top_layer: Optional[str] = None,
    ):
        """Propagate the target and dual seeds.

        Args:
            make_seeds: ``(outputs, one_hot_mask) -> (seed_target, seed_dual)``, each (N, C).
            stacked: two maps from a batch ``[x; x]`` (else one pass with the difference).
            top_layer: ``None`` or ``"negate"`` (CLRP2: the dual uses the negated output layer).

        Returns:
            ``(maps, outputs, seed_target, seed_dual, is_tuple)`` where ``maps`` is
            ``(R_target, R_dual)`` (tuples of tensors) when stacked, else
            ``(R_target - R_dual, None)``.
        """
        is_tuple = _is_tuple(inputs)
        inputs_t = _format_tensor_into_tuples(inputs)
        n = inputs_t[0].shape[0]
        seeds: List[Tensor] = []

        rule_for = self._rule_for
        record: List[bool] = []
        if top_layer == "negate":
            mode = "stack" if stacked else "diff"

            def rule_for(info: LayerInfo, _base=self._rule_for) -> Any:  # noqa: F811
                rule = _base(info)
                if rule is None or info.is_norm:
                    return rule
                return NegatedOutputLayer(rule, mode, record)

        if stacked:
            prop_inputs: Any = tuple(torch.cat([x, x]) for x in inputs_t)
            afa = _format_additional_forward_args(additional_forward_args)
            prop_afa = _expand_additional_forward_args(afa, 2) if afa is not None else None

            def seed_fn(outputs: Tensor) -> Tensor:
                out = outputs[:n]
                st, sd = make_seeds(out, logit_target_mask(out, target, self.method_name))
                seeds.extend([st, sd])
                # CLRP2: the dual half starts from the same score at the negated output layer
                return torch.cat([st, sd])
        else:
            prop_inputs = inputs_t
            prop_afa = additional_forward_args

            def seed_fn(outputs: Tensor) -> Tensor:
                st, sd = make_seeds(outputs, logit_target_mask(outputs, target, self.method_name))
                seeds.extend([st, sd])
                if top_layer == "negate":  # same seed, the top-layer rule forms the contrast
                    return st
                return st - sd

        rel, outputs, _, _ = self._propagate(prop_inputs, None, prop_afa, output_relevance=seed_fn,
                                             rule_for=rule_for)
        if top_layer == "negate" and not record:
            raise ValueError(f"{self.method_name}: variant 2 negates the weights of the layer that "
                             "produces the model output, but the model output is not produced "
                             "directly by a Linear/Conv layer")
        if stacked:
            outputs = outputs[:n]
            maps = (tuple(r[:n] for r in rel), tuple(r[n:] for r in rel))
        else:
            maps = (tuple(rel), None)
        # the last run's seeds (a run redone in float64 calls seed_fn again)
        return maps, outputs, seeds[-2], seeds[-1], is_tuple

    def _pack(self, is_tuple: bool, attr: Tuple[Tensor, ...], dual: Optional[Tuple[Tensor, ...]],
              delta: Optional[Tensor], return_dual: bool, return_convergence_delta: bool):
        out: List[Any] = [_format_output(is_tuple, self._to_result(tuple(attr)))]
        if return_dual:
            out.append(_format_output(is_tuple, self._to_result(tuple(dual)) if dual is not None else dual))
        if return_convergence_delta:
            out.append(self._to_result(delta))
        return out[0] if len(out) == 1 else tuple(out)


def normalized(rel: Tuple[Tensor, ...], n: int) -> Tuple[Tensor, ...]:
    """Each example's map divided by its total (0 where the total is 0)."""
    total = per_example_sum(rel, n)
    return tuple(safe_divide(r, _bcast(total, r).expand_as(r)) for r in rel)
