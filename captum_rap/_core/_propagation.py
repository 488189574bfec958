"""Shared plumbing of the propagation-based attributions (LRP, RAP, CLRP, SGLRP)."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from .._compat import (
    GradientAttribution,
    TargetType,
    _format_additional_forward_args,
    _format_output,
    _format_tensor_into_tuples,
    _is_tuple,
    _select_targets,
)
from .._engine import LayerInfo, Propagator

SeedType = Union[None, Tensor, Callable[[Tensor], Tensor]]


def check_inputs(inputs: Tuple[Tensor, ...], method: str) -> None:
    """Reject NaN / Inf inputs with a message that names the input."""
    for i, inp in enumerate(inputs):
        if not isinstance(inp, Tensor):
            raise TypeError(f"{method}: input {i} is a {type(inp).__name__}, expected a torch.Tensor")
        if inp.is_floating_point() and not torch.isfinite(inp).all():
            bad = "NaN" if torch.isnan(inp).any() else "Inf"
            raise ValueError(f"{method}: input {i} contains {bad} values; relevance would be undefined")


def target_mask(outputs: Tensor, target: TargetType, method: str) -> Tensor:
    """A 0/1 tensor of the outputs' shape marking the entries that ``target`` selects,
    following Captum's target conventions.  ``target=None`` selects the single output of
    each example, or the predicted class (arg-max) of a (N, C) output."""
    n = outputs.shape[0]
    if target is None:
        if outputs.dim() == 1 or outputs[0].numel() == 1:
            return torch.ones_like(outputs)
        if outputs.dim() != 2:
            raise ValueError(f"{method}: target=None needs outputs of shape (N,) or (N, C), got "
                             f"{tuple(outputs.shape)}; pass a target")
        target = outputs.argmax(dim=1)
    if isinstance(target, Tensor) and target.dim() == 1 and target.numel() != n and target.numel() != 1:
        raise ValueError(f"{method}: target tensor has {target.numel()} entries for a batch of {n}")
    if isinstance(target, list) and len(target) != n:
        raise ValueError(f"{method}: target list has {len(target)} entries for a batch of {n}")
    _check_target_range(outputs, target, method)
    probe = outputs.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        try:
            selected = _select_targets(probe, target)
        except (AssertionError, IndexError, RuntimeError) as exc:
            raise ValueError(f"{method}: invalid target {target!r} for outputs of shape "
                             f"{tuple(outputs.shape)}: {exc}") from None
        if selected.dim() == 0 or selected.shape[0] != n or selected[0].numel() != 1:
            raise ValueError(f"{method}: target {target!r} does not select one output per example "
                             f"from outputs of shape {tuple(outputs.shape)}")
        (mask,) = torch.autograd.grad(selected.sum(), probe)
    return mask


def _check_target_range(outputs: Tensor, target: Any, method: str) -> None:
    if outputs.dim() < 2:
        return
    ncls = outputs.shape[-1]

    def bad(v: int) -> bool:
        return v >= ncls or v < -ncls

    if isinstance(target, int) and bad(target):
        raise ValueError(f"{method}: target {target} is out of range for {ncls} output classes")
    if isinstance(target, Tensor) and target.numel() > 0 and not target.is_floating_point():
        if bool((target >= ncls).any() or (target < -ncls).any()):
            raise ValueError(f"{method}: target {target.tolist()} is out of range for {ncls} output classes")
    if isinstance(target, list) and target and isinstance(target[0], int) and any(bad(t) for t in target):
        raise ValueError(f"{method}: target {target} is out of range for {ncls} output classes")


class PropagationAttribution(GradientAttribution):
    """Base class: runs the engine with a rule chooser and a seed."""

    method_name = "propagation"
    merge_batchnorm = False

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"{type(self).__name__} needs an nn.Module, got {type(model).__name__}")
        super().__init__(model)
        self.model = model

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    def has_convergence_delta(self) -> bool:
        return True

    # -- to be provided by subclasses ----------------------------------------------------
    def _rule_for(self, info: LayerInfo) -> Any:
        raise NotImplementedError

    def _op_rule(self, kind: str) -> Any:
        """The rule for a parameter-free operation (``"product"``, ``"softmax"``); ``None``:
        the engine's default (uniform products, AttnLRP's softmax rule)."""
        return None

    def _seed(self, outputs: Tensor, target: TargetType) -> Tensor:
        return outputs * target_mask(outputs, target, self.method_name)

    # -- core -----------------------------------------------------------------------------
    def _propagate(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        target: TargetType,
        additional_forward_args: Any,
        output_relevance: SeedType = None,
        layer_hooks: Optional[List[Tuple[nn.Module, Callable[[Tensor], None], bool]]] = None,
        rule_for: Optional[Callable[[LayerInfo], Any]] = None,
    ) -> Tuple[Tuple[Tensor, ...], Tensor, Tensor, bool]:
        is_inputs_tuple = _is_tuple(inputs)
        inputs_t = _format_tensor_into_tuples(inputs)
        check_inputs(inputs_t, self.method_name)
        extra = _format_additional_forward_args(additional_forward_args)
        extra = tuple(extra) if extra is not None else ()

        def seed_fn(outputs: Tensor) -> Tensor:
            if output_relevance is None:
                seed = self._seed(outputs, target)
            elif callable(output_relevance):
                seed = output_relevance(outputs)
            else:
                seed = output_relevance
            if not isinstance(seed, Tensor) or seed.shape != outputs.shape:
                raise ValueError(f"{self.method_name}: output relevance must be a tensor of the output "
                                 f"shape {tuple(outputs.shape)}, got "
                                 f"{tuple(seed.shape) if isinstance(seed, Tensor) else type(seed).__name__}")
            return seed.to(dtype=outputs.dtype, device=outputs.device)

        prop = Propagator(self.model, rule_for or self._rule_for, method_name=self.method_name,
                          merge_batchnorm=self.merge_batchnorm, op_rule=self._op_rule)
        rel, outputs, seed = prop.run(inputs_t, extra, seed_fn, layer_hooks=layer_hooks)
        return rel, outputs, seed, is_inputs_tuple

    @staticmethod
    def _delta(rel: Tuple[Tensor, ...], seed: Tensor) -> Tensor:
        n = seed.shape[0]
        total = sum(r.reshape(n, -1).sum(1) for r in rel if isinstance(r, Tensor) and r.is_floating_point())
        return total - seed.reshape(n, -1).sum(1)

    def compute_convergence_delta(self, attributions, output: Tensor) -> Tensor:  # type: ignore[override]
        """``Σ attributions − output`` per example (Captum's LRP convention)."""
        attributions = _format_tensor_into_tuples(attributions)
        n = output.shape[0]
        total = sum(a.reshape(n, -1).sum(1) for a in attributions)
        return total - output.reshape(n, -1).sum(1)

    def _format(self, rel, outputs, seed, is_inputs_tuple, return_convergence_delta):
        out = _format_output(is_inputs_tuple, rel)
        if return_convergence_delta:
            return out, self._delta(rel, seed)
        return out
