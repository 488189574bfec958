"""One relevance propagation: the forward pass under the function mode, then the backward
pass from a seed at the output (:class:`Propagator`)."""

from __future__ import annotations

import itertools
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .functions import IdentityFromOutput
from .callargs import iter_tensors
from .mode import PropagationMode
from .numerics import safe_divide
from .optable import is_elementwise_module
from .records import (KIND_ACT, KIND_IDS, KIND_INPUT, KIND_PRE, CallState, LayerInfo, UnsupportedOperationError,
                      batch_of, producer_of, remove_tags, set_tag, tag_of)

__all__ = ["Propagator"]

_call_counter = itertools.count(1)

# modules whose computation the engine has no rule for (recurrent layers)
_OPAQUE_MODULES: Tuple[type, ...] = (nn.RNNBase, nn.EmbeddingBag)


class Propagator:
    """Runs one relevance propagation: forward under the function mode, backward with
    a seed at the output.

    Args:
        model (nn.Module): the unchanged user model.
        rule_for (callable): ``LayerInfo -> rule``; rules implement
            ``propagate(op, x, out, R_out, info) -> (factor, extra)`` with
            ``R_in = x * factor + extra`` (either may be ``None``).
        method_name (str): used in error messages.
        merge_batchnorm (bool): a batch norm applied right after a conv/linear layer is
            folded into that layer's rule (as zennit's canonizers do) instead of being
            passed through separately, where folding is exact: the batch norm reads the
            layer output itself along its output-feature axis, and no relevance reaches the
            layer output by another way (checked in the backward pass; otherwise the batch
            norm gets its own rule, as without merging).
        op_rule (callable, optional): ``kind -> rule`` for the operation rules: ``"product"``
            (an object with ``weights(gates) -> shares``, see
            :class:`captum_rap.rules.Uniform`) and ``"softmax"`` (an object with a boolean
            ``constant``).  Default: the uniform product rule and AttnLRP's softmax rule.
    """

    def __init__(self, model: nn.Module, rule_for: Callable[[LayerInfo], Any], method_name: str = "LRP",
                 merge_batchnorm: bool = False, op_rule: Optional[Callable[[str], Any]] = None):
        self.model = model
        self.merge_batchnorm = merge_batchnorm
        self.rule_for = rule_for
        self.method_name = method_name
        self.op_rule = op_rule
        self.param_owner: Dict[int, Tuple[str, nn.Module]] = {}

    # -- operation rules (asked by the function mode) -----------------------------------
    def product_weights(self, gates: Sequence[bool], where: str) -> List[float]:
        """Share of the relevance of a product that each relevance-carrying factor gets
        (``gates[i]``: factor ``i`` is the output of a gate)."""
        rule = self.op_rule("product") if self.op_rule is not None else None
        if rule is None:
            return [1.0 / len(gates)] * len(gates)
        weights = list(rule.weights(list(gates)))
        if len(weights) != len(gates):  # pragma: no cover - a rule error
            raise UnsupportedOperationError(f"product rule {rule!r} returned {len(weights)} shares "
                                            f"for {len(gates)} factors ({where})")
        return weights

    def softmax_is_constant(self, where: str) -> bool:
        rule = self.op_rule("softmax") if self.op_rule is not None else None
        return bool(getattr(rule, "constant", False))

    def _index_parameters(self) -> None:
        owner: Dict[int, Tuple[str, nn.Module]] = {}
        for name, module in self.model.named_modules(remove_duplicate=False):
            for t in itertools.chain(module.parameters(recurse=False), module.buffers(recurse=False)):
                owner.setdefault(id(t), (name, module))
        self.param_owner = owner

    def run(
        self,
        inputs: Tuple[Tensor, ...],
        additional_forward_args: Tuple[Any, ...],
        seed_fn: Callable[[Tensor], Tensor],
        layer_hooks: Optional[List[Tuple[nn.Module, Callable[[Tensor], None], bool]]] = None,
    ) -> Tuple[Tuple[Tensor, ...], Tensor, Tensor]:
        """Propagate.

        Args:
            inputs: the model inputs (floating tensors carry relevance; integer tensors
                are token ids whose relevance is that of the embedding vectors looked up
                with them, summed per token).
            additional_forward_args: passed after the inputs.
            seed_fn: ``outputs -> R_out`` the relevance at the output (same shape).
            layer_hooks: ``(module, callback, at_input)``: the callback receives the
                relevance at the module's output (or input) during the backward pass.

        Returns:
            ``(relevances, outputs, seed)``
        """
        self._index_parameters()
        state = CallState(token=next(_call_counter))
        first = next((t for t in inputs if isinstance(t, Tensor) and t.dim() > 0), None)
        state.batch_size = int(first.shape[0]) if first is not None else 1
        handles = []
        model = self.model
        snapshot = _BufferSnapshot(model)
        names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}

        def pre_hook(mod, args):
            name = names.get(id(mod), "")
            state.module_stack.append((name, mod))
            if not state.bypass and args and isinstance(args[0], Tensor) and tag_of(args[0], state.token) \
                    and is_elementwise_module(mod):
                # an element-wise function in several operations: run it untracked, then
                # give the output the identity rule (post_hook)
                state.elementwise.append((mod, args[0], state.bypass))
                state.bypass = True
            if isinstance(mod, _OPAQUE_MODULES):
                if any(tag_of(t, state.token) for t in iter_tensors(args)):
                    state.module_stack.pop()
                    raise UnsupportedOperationError(
                        f"{self.method_name} cannot propagate relevance through module '{name}' "
                        f"({type(mod).__name__}): recurrent modules have no rule in the propagation "
                        "engine. Use captum_rap.CD for LSTMs and GRUs.")

        def post_hook(mod, args, out):
            if state.module_stack:
                state.module_stack.pop()
            if state.elementwise and state.elementwise[-1][0] is mod:
                _, x, bypass = state.elementwise.pop()
                state.bypass = bypass
                if isinstance(out, Tensor) and out.shape == x.shape and out.is_floating_point():
                    state.bypass = True
                    try:
                        new = IdentityFromOutput.apply(x, out.detach())
                    finally:
                        state.bypass = bypass
                    kind = KIND_ACT if tag_of(x, state.token) == KIND_ACT else KIND_PRE
                    set_tag(new, state, kind, batch=batch_of(x, state.token))
                    return new
                raise UnsupportedOperationError(
                    f"{self.method_name}: module '{names.get(id(mod), '')}' ({type(mod).__name__}) is "
                    "declared element-wise but its output does not have its input's shape.")

        capture_handles = []
        try:
            for _, mod in model.named_modules():
                handles.append(mod.register_forward_pre_hook(pre_hook))
                handles.append(mod.register_forward_hook(post_hook, always_call=True))
            for module, callback, at_input in layer_hooks or []:
                capture_handles.append(_register_capture(module, callback, at_input, state))
            leaves: List[Optional[Tensor]] = []
            proxies: List[Any] = []
            with torch.enable_grad():
                for i, inp in enumerate(inputs):
                    if isinstance(inp, Tensor) and inp.is_floating_point():
                        leaf = inp.detach().requires_grad_(True)
                        proxy = leaf.clone()
                        set_tag(proxy, state, KIND_INPUT)
                        leaves.append(leaf)
                        proxies.append(proxy)
                        state.leaves.append(leaf)
                    elif isinstance(inp, Tensor) and not inp.is_complex() and inp.dtype != torch.bool:
                        proxy = inp.clone()  # token ids: followed to embedding lookups
                        positions = torch.arange(inp.numel(), device=inp.device).view(inp.shape)
                        set_tag(proxy, state, KIND_IDS, (i, positions))
                        leaves.append(None)
                        proxies.append(proxy)
                    else:
                        leaves.append(None)
                        proxies.append(inp)
                with PropagationMode(self, state):
                    outputs = model(*proxies, *additional_forward_args)
                outputs = _output_tensor(outputs, self.method_name)
                if not tag_of(outputs, state.token):
                    raise UnsupportedOperationError(
                        f"The model output does not depend on the input through operations that "
                        f"{self.method_name} can see; no relevance can reach the input.")
                if not bool(torch.isfinite(outputs.detach()).all()):
                    raise ValueError(f"{self.method_name}: the model output contains NaN or Inf for "
                                     "these inputs (check the model's weights and the input scale); "
                                     "no relevance can be propagated.")
                seed = seed_fn(outputs.detach())
                producer = producer_of(outputs, state.token)
                if producer is not None:
                    producer.info.is_output_layer = True
                    producer.seed = seed
                grad_seed = safe_divide(seed, outputs.detach())
                emb_leaves = [leaf for _, _, leaf in state.embeddings]
                grad_inputs = [lf for lf in leaves if lf is not None] + emb_leaves
                grads = torch.autograd.grad(outputs, grad_inputs, grad_outputs=grad_seed,
                                            allow_unused=True, retain_graph=True)
                rel = self._input_relevance(inputs, leaves, grads)
                self._add_direct_relevance(state, leaves, rel)
                self._add_token_relevance(state, inputs, rel, grads[len(grads) - len(emb_leaves):])
            return tuple(r.detach() if isinstance(r, Tensor) else r for r in rel), outputs.detach(), seed
        finally:
            for h in handles:
                h.remove()
            for h in capture_handles:
                h.remove()
            snapshot.restore()
            remove_tags(state)
            state.input_relevance.clear()
            state.embeddings.clear()

    @staticmethod
    def _input_relevance(inputs, leaves, grads) -> List[Any]:
        grads_it = iter(grads)
        rel: List[Any] = []
        for lf, inp in zip(leaves, inputs):
            if lf is None:
                rel.append(torch.zeros_like(inp, dtype=torch.float32) if isinstance(inp, Tensor) else inp)
                continue
            g = next(grads_it)
            rel.append(lf.detach() * g if g is not None else torch.zeros_like(lf))
        return rel

    @staticmethod
    def _add_direct_relevance(state: CallState, leaves, rel: List[Any]) -> None:
        """Relevance returned directly by input layers, mapped back through the selection
        ops between the model input and the layer."""
        if not state.input_relevance:
            return
        grad_inputs = [lf for lf in leaves if lf is not None]
        refs = [r for r, _ in state.input_relevance]
        rels = [v for _, v in state.input_relevance]
        state.direct_pass = True
        try:
            direct = torch.autograd.grad(refs, grad_inputs, grad_outputs=rels, allow_unused=True)
        finally:
            state.direct_pass = False
        j = 0
        for i, lf in enumerate(leaves):
            if lf is None:
                continue
            if direct[j] is not None:
                rel[i] = rel[i] + direct[j]
            j += 1

    @staticmethod
    def _add_token_relevance(state: CallState, inputs, rel: List[Any], grads) -> None:
        """The relevance of looked-up embedding vectors, summed per token and added at the
        token's position in its input."""
        for (index, positions, leaf), g in zip(state.embeddings, grads):
            if g is None:
                continue
            per_token = (leaf.detach() * g).reshape(positions.numel(), -1).sum(1)
            inp = inputs[index]
            r = rel[index]
            if r.dtype != per_token.dtype:
                r = r.to(per_token.dtype)
            flat = r.reshape(-1).index_add(0, positions.reshape(-1), per_token)
            rel[index] = flat.view(inp.shape)


def _output_tensor(outputs: Any, method_name: str) -> Tensor:
    """The model output as one tensor (a Hugging Face output's ``logits``)."""
    if isinstance(outputs, Tensor):
        return outputs
    logits = getattr(outputs, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    raise TypeError(f"{method_name} needs a model that returns one tensor (or an output object with "
                    f"a `logits` tensor), got {type(outputs).__name__}")


def _register_capture(module: nn.Module, callback: Callable[[Tensor], None], at_input: bool,
                      state: CallState):
    """Capture the relevance at a module's output (or input).

    * The output of a conv/linear layer: the relevance the layer's rule receives
      (``grad * activation``, or the seed at the output layer).  For a layer with a batch
      norm folded into it (``merge_batchnorm``) this is the relevance at the output of the
      folded layer, i.e. at the batch norm output.
    * A module returning a tuple (attention, recurrent layers): its first tensor.
    * Any other tensor: ``grad * activation`` from the backward pass, plus, for a selection
      of the model input (the input of an input layer), the relevance that input layers
      return directly, mapped back to it.
    """

    def fwd_hook(mod, args, out):
        t = args[0] if at_input else out
        if isinstance(t, (tuple, list)):
            # a module returning several values (nn.MultiheadAttention: (output, weights);
            # nn.LSTM: (output, (h, c))): its first tensor, the layer's output proper
            t = next((v for v in t if isinstance(v, Tensor)), None)
        if not isinstance(t, Tensor) or not t.requires_grad:
            return
        producer = producer_of(t, state.token)
        if producer is not None and producer.out_ref is not None and producer.out_ref() is t:
            producer.captures.append(callback)
            return
        state.bypass = True
        try:
            act = t.detach().clone()
        finally:
            state.bypass = False

        def tensor_hook(grad):
            if grad is None or state.bypass:
                return
            # in the pass of the input layers' relevance the gradients are relevances
            callback(grad if state.direct_pass else grad * act)

        t.register_hook(tensor_hook)

    return module.register_forward_hook(fwd_hook)


class _BufferSnapshot:
    """Restores buffers (e.g. BN running stats) should a forward pass change them."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.saved = None
        if any(m.training for m in model.modules()):
            self.saved = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()
                          if not isinstance(v, nn.Parameter)}

    def restore(self) -> None:
        if self.saved is None:
            return
        with torch.no_grad():
            for k, v in self.model.state_dict(keep_vars=True).items():
                if k in self.saved:
                    v.copy_(self.saved[k])
