"""The propagation engine shared by LRP, RAP, CLRP and SGLRP.

Relevance travels through autograd as a *modified gradient*: at every activation tensor
``a`` the backward pass carries the relevance density ``R / a``.  Parametrized layers
(convolutions, linear layers, batch norm) and saturating activations are replaced during
the forward pass by an autograd ``Function`` whose backward applies a propagation rule:
it forms ``R_out = grad_out * a_out``, computes ``R_in`` with the rule and hands back
``R_in / a_in``.  Every parameter-free linear operation in between (residual ``+``,
``torch.cat``, reshapes, padding, average pooling, slicing) is left to autograd, which
splits relevance in proportion to the contributions (the z-rule).  ReLU and max pooling
need no rule either: their plain gradient is exactly relevance pass-through and
winner-take-all.

The forward pass runs under a :class:`torch.overrides.TorchFunctionMode`, so functional
operations inside ``forward`` (``F.relu``, ``x + y``, ``torch.flatten``) are seen as well as
modules, reused modules get one record per call, and any operation on the relevance path
that the engine cannot propagate faithfully raises :class:`UnsupportedOperationError`
naming the operation and the module it was called from.
"""

from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

__all__ = [
    "UnsupportedOperationError",
    "AffineOp",
    "LayerInfo",
    "Propagator",
    "safe_divide",
    "stabilize",
]

_call_counter = itertools.count(1)


class UnsupportedOperationError(RuntimeError):
    """Raised when the relevance path goes through an operation that the engine cannot
    propagate faithfully.  The message names the operation and the module path."""


def stabilize(z: Tensor, epsilon: float) -> Tensor:
    """Sign-preserving stabilizer: ``z + epsilon * sign(z)``, with ``sign(+0.0) = +1``
    (and ``sign(-0.0) = -1``).  Returns a new tensor."""
    if epsilon == 0:
        return z.clone()
    # |z| + eps with the sign bit of z: one allocation, no boolean masks (slow on CPU)
    return torch.abs(z).add_(epsilon).copysign_(z)


def safe_divide(a: Tensor, b: Tensor) -> Tensor:
    """``a / b`` where ``b != 0`` and exactly ``0`` where ``b == 0``.

    Implemented as ``a / b`` with non-finite quotients set to 0 (boolean masks are several
    times slower than arithmetic on CPU).  This differs from the definition only where
    ``a`` is itself non-finite or the quotient overflows; the attribution methods reject
    non-finite inputs and model outputs before propagating, so neither occurs there."""
    return torch.div(a, b).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)


# ----------------------------------------------------------------------------------------
# Affine operations seen by rules
# ----------------------------------------------------------------------------------------


class AffineOp:
    """One call of an affine layer (convolution, linear, eval batch norm).

    Rules see the layer through this object and never through the module, so the same
    rule works for every convolution dimensionality, for ``nn.Linear`` and for a batch
    norm treated as a per-channel affine map.

    Attributes:
        kind (str): ``"conv1d"``, ``"conv2d"``, ``"conv3d"``, ``"linear"`` or ``"batchnorm"``.
        weight (Tensor): weight of the layer (for batch norm: the effective per-channel
            scale ``gamma / sqrt(var + eps)``).
        bias (Tensor or None): bias (for batch norm: ``beta - mean * scale``).
    """

    def __init__(self, kind: str, weight: Tensor, bias: Optional[Tensor], **conv_kwargs: Any):
        self.kind = kind
        self.weight = weight.detach()
        self.bias = None if bias is None else bias.detach()
        self.conv_kwargs = conv_kwargs
        self.pre_pad: Optional[Tuple[int, ...]] = None
        if kind.startswith("conv"):
            self._normalize_padding()

    # -- convolution padding given as a string ('same' / 'valid')
    def _normalize_padding(self) -> None:
        padding = self.conv_kwargs.get("padding", 0)
        nd = int(self.kind[4])
        if isinstance(padding, str):
            if padding == "valid":
                self.conv_kwargs["padding"] = 0
                return
            if padding != "same":
                raise UnsupportedOperationError(f"unknown convolution padding {padding!r}")
            dilation = _ntuple(self.conv_kwargs.get("dilation", 1), nd)
            ksize = self.weight.shape[2:]
            pads: List[int] = []
            sym: List[int] = []
            for d, k in zip(dilation, ksize):
                total = d * (k - 1)
                left = total // 2
                pads.append((left, total - left))
                sym.append(left if left == total - left else -1)
            if all(s >= 0 for s in sym):
                self.conv_kwargs["padding"] = tuple(sym)
            else:
                flat: List[int] = []
                for left, right in reversed(pads):
                    flat.extend([left, right])
                self.pre_pad = tuple(flat)
                self.conv_kwargs["padding"] = 0

    @property
    def is_conv(self) -> bool:
        return self.kind.startswith("conv")

    def forward(self, x: Tensor, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None) -> Tensor:
        """Apply the operation to ``x`` with (possibly modified) ``weight`` and ``bias``."""
        w = self.weight if weight is None else weight
        if self.kind == "linear":
            return F.linear(x, w, bias)
        if self.kind == "batchnorm":
            shape = (1, -1) + (1,) * (x.dim() - 2)
            out = x * w.view(shape)
            if bias is not None:
                out = out + bias.view(shape)
            return out
        if self.pre_pad is not None:
            x = F.pad(x, self.pre_pad)
        conv = {"conv1d": F.conv1d, "conv2d": F.conv2d, "conv3d": F.conv3d}[self.kind]
        return conv(x, w, bias, **self.conv_kwargs)

    def bias_like(self, bias: Tensor, out: Tensor) -> Tensor:
        """``bias`` shaped to broadcast against an output ``out`` of this operation."""
        if self.kind == "linear":
            return bias
        return bias.view((1, -1) + (1,) * (out.dim() - 2))

    def backward(self, grad_out: Tensor, weight: Optional[Tensor], input_shape: torch.Size) -> Tensor:
        """Vector-Jacobian product: the transpose of :meth:`forward` (bias-free) applied to
        ``grad_out``, with the given weight.  Returns a tensor of ``input_shape``."""
        w = self.weight if weight is None else weight
        if self.kind == "linear":
            return grad_out.matmul(w)
        if self.kind == "batchnorm":
            shape = (1, -1) + (1,) * (grad_out.dim() - 2)
            return grad_out * w.view(shape)
        nd = int(self.kind[4])
        shape = list(input_shape)
        if self.pre_pad is not None:
            for i in range(nd):
                shape[2 + i] += self.pre_pad[2 * (nd - 1 - i)] + self.pre_pad[2 * (nd - 1 - i) + 1]
        dummy = grad_out.new_empty(1).expand(shape)
        grad = torch.ops.aten.convolution_backward(
            grad_out,
            dummy,
            w,
            None,
            _ntuple(self.conv_kwargs.get("stride", 1), nd),
            _ntuple(self.conv_kwargs.get("padding", 0), nd),
            _ntuple(self.conv_kwargs.get("dilation", 1), nd),
            False,
            [0] * nd,
            self.conv_kwargs.get("groups", 1),
            (True, False, False),
        )[0]
        if self.pre_pad is not None:
            slices = [slice(None), slice(None)]
            for i in range(nd):
                left = self.pre_pad[2 * (nd - 1 - i)]
                slices.append(slice(left, left + input_shape[2 + i]))
            grad = grad[tuple(slices)]
        return grad


def _ntuple(v: Any, n: int) -> Tuple[int, ...]:
    if isinstance(v, (tuple, list)):
        if len(v) == 1:
            return tuple(v) * n
        return tuple(v)
    return (v,) * n


# ----------------------------------------------------------------------------------------
# Per-call records
# ----------------------------------------------------------------------------------------


@dataclass
class LayerInfo:
    """What a composite sees when choosing a rule for one layer call.

    Attributes:
        module (nn.Module or None): the module that owns the parameters.
        name (str): its qualified name in the model (``""`` for the model itself).
        kind (str): ``"conv1d" | "conv2d" | "conv3d" | "linear" | "batchnorm"``.
        is_input_layer (bool): the layer reads the model input directly (or through
            parameter-free selection ops such as padding, slicing or reshapes only); its
            input relevance is returned exactly, also where the input is 0.
        is_first_layer (bool): no other affine layer lies between the model input and this
            layer (true for input layers, and also after parameter-free ops such as an
            in-model scaling or a ReLU).
        index (int): position of this call among the affine layer calls of the forward pass
            (a batch norm folded into the preceding layer by ``merge_batchnorm`` shares
            that layer's index).
        is_output_layer (bool): the layer's output is the model output (known only after
            the forward pass; rules read it during the backward pass).
    """

    module: Optional[nn.Module]
    name: str
    kind: str
    is_input_layer: bool
    is_first_layer: bool
    index: int
    is_output_layer: bool = False
    #: for input layers with a rule that needs the input layer (ZBox, Flat, WSquare): 1
    #: where the layer input holds a model input value, 0 at zero padding added between
    #: the model input and the layer (ZeroPad2d, F.pad); None when there is no padding.
    input_mask: Optional[Tensor] = None


@dataclass
class _Node:
    info: LayerInfo
    op: AffineOp
    rule: Any
    state: "_CallState"
    input_ref: Optional[Tensor] = None  # the layer's input tensor (kept for input layers)
    out: Optional[Tensor] = None  # the layer output (of ``op``)
    z: Optional[Tensor] = None  # output of a batch norm folded into this layer (``merged_op``)
    is_output_layer: bool = False
    seed: Optional[Tensor] = None
    out_version: int = 0
    z_version: int = 0
    out_ref: Any = None  # weak reference to the output tensor the forward pass returned
    #: batch norm folding (merge_batchnorm): the layer with the batch norm that reads its
    #: output folded in, and that batch norm's own node (used when folding is not exact)
    merged_op: Optional[AffineOp] = None
    bn: Optional["_Node"] = None
    parent: Optional["_Node"] = None  # for such a batch norm: the layer it is folded into
    bn_grad: Optional[Tensor] = None  # gradient at the output of the folded batch norm
    problem: Optional[Exception] = None  # for a folded batch norm: why it has no usable rule
    #: callbacks receiving the relevance at the layer output (LayerLRP / LayerRAP captures)
    captures: List[Callable[[Tensor], None]] = field(default_factory=list)

    def rule_output(self, x: Tensor) -> Tensor:
        """The layer output (of ``op``).  It is kept without a copy; should an in-place
        operation the function mode did not see have overwritten it (version counter
        changed), it is recomputed from the input ``x``."""
        assert self.out is not None
        if self.out._version != self.out_version:
            self.out = self.op.forward(x, self.op.weight, self.op.bias).detach()
            self.out_version = self.out._version
        return self.out

    def folded_output(self, x: Tensor) -> Tensor:
        """The output of the folded layer ``merged_op`` (the batch norm output), kept and
        checked as in :meth:`rule_output`."""
        assert self.z is not None and self.merged_op is not None
        if self.z._version != self.z_version:
            self.z = self.merged_op.forward(x, self.merged_op.weight, self.merged_op.bias).detach()
            self.z_version = self.z._version
        return self.z

    def protect(self, t: Tensor) -> None:
        """Copy the saved output(s) that share memory with ``t`` before ``t`` is written to."""
        if self.parent is not None:  # a folded batch norm: its output is kept by the layer
            self.parent.protect(t)
            return
        ptr = t.untyped_storage().data_ptr()
        if self.out is not None and self.out.untyped_storage().data_ptr() == ptr:
            self.out = self.out.clone()
            self.out_version = self.out._version
        if self.z is not None and self.z.untyped_storage().data_ptr() == ptr:
            self.z = self.z.clone()
            self.z_version = self.z._version


@dataclass
class _CallState:
    token: int
    input_relevance: List[Tuple[Tensor, Tensor]] = field(default_factory=list)
    nodes: List[_Node] = field(default_factory=list)
    module_stack: List[str] = field(default_factory=list)
    relevance_hooks: Dict[int, Callable[[_Node, Tensor], Tensor]] = field(default_factory=dict)
    bypass: bool = False
    leaves: List[Tensor] = field(default_factory=list)  # the floating model inputs (autograd leaves)
    #: weak references to every tensor tagged in this call; the tags are removed at its end
    tagged: List[Any] = field(default_factory=list)
    #: True while the relevance returned by input layers is mapped back to the model inputs
    #: (the gradients of that backward pass are relevances, not relevance densities)
    direct_pass: bool = False


_TAG = "_captum_rap_tag"
_KIND_INPUT = 1  # the model input or a selection (pad, view, cat, slice) of it
_KIND_ACT = 2  # any tensor downstream of an affine layer
_KIND_PRE = 3  # derived from the input by parameter-free ops, before any affine layer


def _tag_of(t: Any, token: int) -> int:
    if not isinstance(t, Tensor):
        return 0
    tag = getattr(t, _TAG, None)
    if tag is None or tag[0] != token:
        return 0
    return tag[1]


def _set_tag(t: Tensor, state: _CallState, kind: int, producer: Optional[_Node] = None) -> None:
    try:
        setattr(t, _TAG, (state.token, kind, producer))
    except (AttributeError, RuntimeError):  # pragma: no cover - exotic tensor types
        return
    state.tagged.append(weakref.ref(t))


def _remove_tags(state: _CallState) -> None:
    """Remove this call's tags from every tensor still alive (activations the model keeps,
    and any user tensor an operation returned), also after an error."""
    for ref in state.tagged:
        t = ref()
        if t is None:
            continue
        tag = t.__dict__.get(_TAG) if hasattr(t, "__dict__") else None
        if tag is not None and tag[0] == state.token:
            try:
                delattr(t, _TAG)
            except AttributeError:  # pragma: no cover
                pass
    state.tagged.clear()


def _producer(t: Tensor, token: int) -> Optional[_Node]:
    tag = getattr(t, _TAG, None)
    if tag is None or tag[0] != token:
        return None
    return tag[2]


# ----------------------------------------------------------------------------------------
# Autograd functions
# ----------------------------------------------------------------------------------------


class _RuleFunction(torch.autograd.Function):
    """Forward: the affine op unchanged.  Backward: the node's propagation rule."""

    @staticmethod
    def forward(ctx, x: Tensor, node: _Node) -> Tensor:  # type: ignore[override]
        out = node.op.forward(x, node.op.weight, node.op.bias)
        ctx.node = node
        ctx.save_for_backward(x)
        ctx.set_materialize_grads(False)  # folded batch norms send no (zero) gradient
        # no copy: the function mode copies it before an in-place op writes to it
        # (copy-on-write); the version counter catches any write it did not see
        node.out = out.detach()
        node.out_version = out._version
        return out

    @staticmethod
    def backward(ctx, grad_out: Optional[Tensor]):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        node: _Node = ctx.node
        bn = node.bn
        bn_grad, node.bn_grad = node.bn_grad, None
        op = node.op
        if bn is not None and bn_grad is not None and grad_out is None and node.seed is None:
            # the folded batch norm is the only way relevance leaves this layer: the rule
            # sees the folded affine map BN(W x + b) and the relevance at the BN output
            op = node.merged_op
            z = node.folded_output(x)
            r_out = bn.seed if bn.seed is not None else bn_grad * z
            if bn.info.is_output_layer:
                node.is_output_layer = node.info.is_output_layer = True
        else:
            # no batch norm folded, or the layer output also reaches the model output by
            # another way (e.g. y = relu(bn(c) + c)): folding would be wrong, so the batch
            # norm gets its own rule, exactly as with merge_batchnorm=False
            z = node.rule_output(x)
            if node.seed is not None:
                r_out = node.seed
            else:
                if bn is not None and bn_grad is not None:
                    if bn.problem is not None:
                        raise bn.problem
                    zb = node.folded_output(x)
                    r_bn = bn.seed if bn.seed is not None else bn_grad * zb
                    dens = _apply_rule(bn, bn.op, z, zb, r_bn)
                    grad_out = dens if grad_out is None else grad_out + dens
                r_out = torch.zeros_like(z) if grad_out is None else grad_out * z
        for capture in node.captures:
            capture(r_out)
        return _apply_rule(node, op, x, z, r_out), None


def _apply_rule(node: _Node, op: AffineOp, x: Tensor, z: Tensor, r_out: Tensor) -> Tensor:
    """Apply ``node``'s rule to the relevance ``r_out`` at the output ``z`` of ``op`` and
    return the relevance density at the input ``x`` (input layers store their relevance
    for the model inputs and return 0)."""
    hook = node.state.relevance_hooks.get(id(node))
    if hook is not None:
        r_out = hook(node, r_out)
    factor, extra = node.rule.propagate(op, x, z, r_out, node.info)
    if node.info.is_input_layer:
        relevance = _combine(x, factor, extra)
        node.state.input_relevance.append((node.input_ref, relevance))
        return torch.zeros_like(x)
    if factor is None:
        return safe_divide(extra, x) if extra is not None else torch.zeros_like(x)
    if extra is not None:
        factor = factor + safe_divide(extra, x)
    return factor


def _combine(x: Tensor, factor: Optional[Tensor], extra: Optional[Tensor]) -> Tensor:
    rel = x * factor if factor is not None else torch.zeros_like(x)
    if extra is not None:
        rel = rel + extra
    return rel


class _MergedBatchNorm(torch.autograd.Function):
    """A batch norm that reads the output of a conv/linear layer directly, with
    ``merge_batchnorm``.  The backward pass hands the gradient at the BN output straight
    to that layer (``node.bn_grad``) and sends no gradient of its own; the layer's backward
    then folds the BN into its rule if no other relevance reaches the layer output, and
    otherwise applies the BN's own rule first (see :class:`_RuleFunction`).  Folding keeps
    relevance where the layer output is exactly 0 but the BN output is not."""

    @staticmethod
    def forward(ctx, x: Tensor, bn_node: "_Node") -> Tensor:  # type: ignore[override]
        ctx.node = bn_node
        return bn_node.op.forward(x, bn_node.op.weight, bn_node.op.bias)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        parent = ctx.node.parent
        parent.bn_grad = grad if parent.bn_grad is None else parent.bn_grad + grad
        return None, None


class _PassThroughActivation(torch.autograd.Function):
    """Elementwise activation ``f`` with ``f(0) = 0`` whose relevance passes unchanged:
    backward returns ``grad * f(a) / a`` (so ``R_in = R_out``), also where the plain
    gradient is 0 (saturated ReLU6 / Hardtanh)."""

    @staticmethod
    def forward(ctx, x: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:  # type: ignore[override]
        ctx.fn = fn
        ctx.save_for_backward(x)
        return fn(x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return safe_divide(grad * ctx.fn(x), x), None


# ----------------------------------------------------------------------------------------
# The function mode
# ----------------------------------------------------------------------------------------


def _fname(func: Any) -> str:
    return getattr(func, "__name__", str(func))


_INPLACE_DUNDERS = {"__iadd__", "__isub__", "__imul__", "__itruediv__", "__idiv__", "__ifloordiv__",
                    "__imod__", "__ipow__", "__iand__", "__ior__", "__ixor__", "__ilshift__",
                    "__irshift__", "__setitem__"}


def _writes_in_place(name: str, kwargs: Dict[str, Any]) -> bool:
    """In-place operation (``relu_``, ``add_``, ``+=``, ``x[i] = v``) or ``out=`` call."""
    return (name.endswith("_") and not name.endswith("__")) or name in _INPLACE_DUNDERS \
        or "out" in kwargs or kwargs.get("inplace", False) is True


# parameter-free operations that autograd can propagate as the z-rule (linear maps)
_LINEAR_OPS = {
    "add", "__add__", "__radd__", "__iadd__", "add_", "sub", "__sub__", "__rsub__",
    "__isub__", "sub_", "neg", "__neg__", "negative", "cat", "concat", "concatenate",
    "stack", "hstack", "vstack", "dstack", "reshape", "view", "view_as", "reshape_as",
    "flatten", "unflatten", "squeeze", "unsqueeze", "permute", "transpose", "t", "swapaxes",
    "swapdims", "movedim", "moveaxis", "contiguous", "clone", "__getitem__", "narrow", "select",
    "index_select", "chunk", "split", "tensor_split", "unbind", "expand", "expand_as", "repeat",
    "tile", "flip", "roll", "pad", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "mean", "sum",
    "dropout", "dropout1d", "dropout2d", "dropout3d", "feature_dropout", "alpha_dropout",
    "feature_alpha_dropout", "interpolate", "upsample", "upsample_nearest", "upsample_bilinear",
    "pixel_shuffle", "pixel_unshuffle", "channel_shuffle", "native_channel_shuffle",
    "to", "type", "float", "double", "half", "bfloat16", "cpu", "cuda", "type_as",
    "__mul__", "__rmul__", "mul", "__imul__", "mul_", "__truediv__", "div", "__itruediv__",
    "div_", "__div__", "zero_pad2d", "constant_pad_nd", "gather", "take_along_dim",
    "max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices",
    "max_pool2d_with_indices", "max_pool3d_with_indices", "_max_pool1d", "_max_pool2d",
    "_max_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
    "adaptive_max_pool1d_with_indices", "adaptive_max_pool2d_with_indices",
    "adaptive_max_pool3d_with_indices", "_adaptive_max_pool1d", "_adaptive_max_pool2d",
    "_adaptive_max_pool3d", "relu", "relu_", "leaky_relu", "leaky_relu_", "identity",
}
# of those, the ones that copy elements without mixing them (keep the "input" kind)
_SELECTION_OPS = {
    "cat", "concat", "concatenate", "stack", "hstack", "vstack", "dstack", "reshape", "view",
    "view_as", "reshape_as", "flatten", "unflatten", "squeeze", "unsqueeze", "permute",
    "transpose", "t", "swapaxes", "swapdims", "movedim", "moveaxis", "contiguous", "clone",
    "__getitem__", "narrow", "select", "index_select", "chunk", "split", "tensor_split",
    "unbind", "flip", "roll", "pad", "zero_pad2d", "constant_pad_nd", "to", "type", "float",
    "double", "half", "cpu", "cuda", "type_as", "identity",
}
# ops whose second tensor operand must be a constant for the op to be linear
_BILINEAR_OPS = {"__mul__", "__rmul__", "mul", "__imul__", "mul_", "__truediv__", "div",
                 "__itruediv__", "div_", "__div__"}
_DIVISION_OPS = {"__truediv__", "div", "__itruediv__", "div_", "__div__"}
# tensors built from an activation's shape, dtype and device only: constants
_CONSTANT_OPS = {"zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like",
                 "randint_like", "new_zeros", "new_ones", "new_empty", "new_full", "new_tensor", "new"}
# ops whose tensor arguments other than the first give only a shape, dtype or device
_SHAPE_ONLY_OTHER = {"type_as", "view_as", "reshape_as", "expand_as", "to"}
_INPLACE_ACT = {"relu_", "leaky_relu_", "hardtanh_", "relu6_", "clamp_", "clamp_min_",
                "clamp_max_", "clip_"}


def _iter_tensors(obj: Any):
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _iter_tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _iter_tensors(o)


def _get_arg(args: Sequence[Any], kwargs: Dict[str, Any], index: int, name: str, default: Any) -> Any:
    if name in kwargs:
        return kwargs[name]
    if len(args) > index:
        return args[index]
    return default


class _PropagationMode(TorchFunctionMode):
    def __init__(self, propagator: "Propagator", state: _CallState):
        super().__init__()
        self.p = propagator
        self.state = state
        self.token = state.token
        self.layer_index = 0

    # -- helpers -----------------------------------------------------------------------
    def _where(self) -> str:
        path = self.state.module_stack[-1] if self.state.module_stack else ""
        return f"module '{path}'" if path else "the model's own forward"

    def _unsupported(self, what: str, advice: str) -> UnsupportedOperationError:
        return UnsupportedOperationError(f"{self.p.method_name} cannot propagate relevance through {what} "
                                         f"(called in {self._where()}). {advice}")

    def _tag_outputs(self, out: Any, kind: int, producer: Optional[_Node] = None, name: str = "") -> None:
        for t in _iter_tensors(out):
            if t.is_floating_point() or t.is_complex():
                owner = self.p.param_owner.get(id(t))
                if owner is not None:
                    what = f"'{name}'" if name else "an operation"
                    raise self._unsupported(
                        f"{what} that writes an activation into the parameter or buffer of module "
                        f"'{owner[0]}'", "Do not store activations in model parameters or buffers.")
                _set_tag(t, self.state, kind, producer)

    def _derived_kind(self, kinds: List[int], selection: bool) -> int:
        tainted = [k for k in kinds if k]
        if selection and all(k == _KIND_INPUT for k in tainted):
            return _KIND_INPUT
        if all(k in (_KIND_INPUT, _KIND_PRE) for k in tainted):
            return _KIND_PRE
        return _KIND_ACT

    # -- dispatch ----------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.state.bypass:
            return func(*args, **kwargs)
        tensors = list(_iter_tensors(args)) + list(_iter_tensors(kwargs))
        kinds = [_tag_of(t, self.token) for t in tensors]
        if not any(kinds):
            return func(*args, **kwargs)
        name = _fname(func)
        if name in _CONSTANT_OPS or name in _SHAPE_ONLY_OTHER:
            # zeros_like(h), h.new_zeros(...): only h's shape / dtype / device are used;
            # p.type_as(h), p.expand_as(h): the result depends on p only
            if args:
                first, rest = args[0], (args[1:], kwargs)
            else:
                first = kwargs.get("input", kwargs.get("self"))
                rest = ({k: v for k, v in kwargs.items() if k not in ("input", "self")},)
            others = [t for t in _iter_tensors(rest) if _tag_of(t, self.token)]
            first_kind = _tag_of(first, self.token)
            if name in _CONSTANT_OPS and not others:
                return func(*args, **kwargs)
            if name in _SHAPE_ONLY_OTHER:
                if not first_kind:
                    return func(*args, **kwargs)
                kinds = [first_kind]
        if _writes_in_place(name, kwargs):
            written = kwargs.get("out", args[0] if args else None)
            for t in _iter_tensors(written):
                owner = self.p.param_owner.get(id(t))
                if owner is not None:
                    raise self._unsupported(
                        f"'{name}' that writes an activation into the parameter or buffer of module "
                        f"'{owner[0]}'", "Do not store activations in model parameters or buffers.")
                producer = _producer(t, self.token)
                if producer is not None:
                    producer.protect(t)

        # affine layers with parameters
        if name in ("conv1d", "conv2d", "conv3d", "linear", "batch_norm"):
            return self._affine(func, name, args, kwargs)

        if name in ("hardtanh", "hardtanh_", "relu6", "relu6_", "clamp", "clamp_", "clip",
                    "clip_", "clamp_min", "clamp_min_", "clamp_max", "clamp_max_"):
            return self._saturating(func, name, args, kwargs)

        if name in ("relu", "relu_", "leaky_relu", "leaky_relu_") or (
                name == "threshold" and _get_arg(args, kwargs, 1, "threshold", None) == 0
                and _get_arg(args, kwargs, 2, "value", None) == 0):
            out = func(*args, **kwargs)
            self._tag_outputs(out, self._derived_kind(kinds, False), name=name)
            return out

        if name in ("maximum", "minimum"):
            return self._max_with_zero(func, name, args, kwargs)

        if name == "__setitem__":
            # t[idx] = v is linear in (t, v): autograd sends the gradient of the written
            # entries to v and that of the others to t (z-rule, as for a selection)
            dest = args[0]
            value = args[2] if len(args) > 2 else None
            value_kind = _tag_of(value, self.token)
            out = func(*args, **kwargs)
            # the written tensor is no longer any layer's output (producer cleared)
            self._tag_outputs(dest, self._derived_kind(kinds, False) if value_kind
                              else _tag_of(dest, self.token), name=name)
            return out

        if name in _LINEAR_OPS:
            if name in _BILINEAR_OPS:
                tainted = sum(1 for k in kinds if k)
                if tainted > 1:
                    raise self._unsupported(
                        f"'{name}' of two tensors that both depend on the input (a gating or "
                        "attention-like product)",
                        "Products of activations have no LRP rule here; attribute a model without "
                        "the gate or treat the gate as a constant in your forward (detach it).")
                if name in _DIVISION_OPS and len(args) > 1 and _tag_of(args[1], self.token):
                    raise self._unsupported(f"'{name}' with a divisor that depends on the input",
                                            "Division by an activation is not linear.")
            if name == "pad":
                mode = _get_arg(args, kwargs, 2, "mode", "constant")
                value = _get_arg(args, kwargs, 3, "value", None)
                if mode != "constant" or (value not in (None, 0, 0.0)):
                    raise self._unsupported(f"'pad' with mode={mode!r}, value={value!r}",
                                            "Only zero padding is supported on the relevance path.")
            if name in ("interpolate", "upsample", "upsample_bilinear") and \
                    _get_arg(args, kwargs, 4, "mode", "nearest") not in (
                        "nearest", "linear", "bilinear", "trilinear", "area", "nearest-exact"):
                raise self._unsupported(f"'{name}' with a non-linear mode", "Use a linear mode.")
            out = func(*args, **kwargs)
            self._tag_outputs(out, self._derived_kind(kinds, name in _SELECTION_OPS), name=name)
            return out

        out = func(*args, **kwargs)
        if not any(isinstance(t, Tensor) and (t.is_floating_point() or t.is_complex())
                   for t in _iter_tensors(out)):
            return out  # sizes, shapes, booleans, indices: not on the relevance path
        if name in ("detach", "detach_", "requires_grad_"):
            raise self._unsupported(f"'{name}'", "A detached activation cuts the relevance path; "
                                    "remove the detach from the forward pass.")
        raise self._unsupported(
            f"the operation '{name}'",
            "It is neither an affine layer (Conv/Linear/BatchNorm), a ReLU-family activation, "
            "max pooling, nor a parameter-free linear operation. Supported non-linearities are "
            "ReLU, LeakyReLU, ReLU6 and Hardtanh; sigmoid/tanh/GELU/softmax and similar have no "
            "rule. Attribute the logits (remove a final softmax) or replace the operation.")

    # -- affine layers -----------------------------------------------------------------
    def _affine(self, func, name, args, kwargs):
        x = args[0] if args else kwargs["input"]
        if not _tag_of(x, self.token):
            raise self._unsupported(f"'{name}' whose weight depends on the input",
                                    "Only the layer input may carry relevance.")
        fold_into: Optional[_Node] = None
        if name == "linear":
            weight = _get_arg(args, kwargs, 1, "weight", None)
            bias = _get_arg(args, kwargs, 2, "bias", None)
            op = AffineOp("linear", weight, bias)
        elif name == "batch_norm":
            running_mean = _get_arg(args, kwargs, 1, "running_mean", None)
            running_var = _get_arg(args, kwargs, 2, "running_var", None)
            weight = _get_arg(args, kwargs, 3, "weight", None)
            bias = _get_arg(args, kwargs, 4, "bias", None)
            training = _get_arg(args, kwargs, 5, "training", False)
            eps = _get_arg(args, kwargs, 7, "eps", 1e-5)
            if training or running_mean is None or running_var is None:
                raise self._unsupported(
                    "a batch norm that uses batch statistics (training mode or no running stats)",
                    "Call model.eval() before attributing: relevance rules are defined for the "
                    "inference-time affine map of batch norm.")
            scale = torch.rsqrt(running_var.detach() + eps)
            if weight is not None:
                scale = scale * weight.detach()
            shift = -running_mean.detach() * scale
            if bias is not None:
                shift = shift + bias.detach()
            op = AffineOp("batchnorm", scale, shift)
            weight = weight if weight is not None else running_var
            if self.p.merge_batchnorm:
                fold_into = self._fold_target(x, scale)
        else:
            weight = _get_arg(args, kwargs, 1, "weight", None)
            bias = _get_arg(args, kwargs, 2, "bias", None)
            conv_kwargs = {
                "stride": _get_arg(args, kwargs, 3, "stride", 1),
                "padding": _get_arg(args, kwargs, 4, "padding", 0),
                "dilation": _get_arg(args, kwargs, 5, "dilation", 1),
                "groups": _get_arg(args, kwargs, 6, "groups", 1),
            }
            op = AffineOp(name, weight, bias, **conv_kwargs)
        if isinstance(weight, Tensor) and _tag_of(weight, self.token):
            raise self._unsupported(f"'{name}' whose weight depends on the input",
                                    "Only the layer input may carry relevance.")
        owner = self.p.param_owner.get(id(weight))
        if owner is None:
            raise self._unsupported(
                f"'{name}' with a weight that is not a parameter or buffer of the model",
                "Wrap the computation in a module that owns its weight.")
        mod_name, module = owner
        xkind = _tag_of(x, self.token)
        is_input = xkind == _KIND_INPUT
        index = fold_into.info.index if fold_into is not None else self.layer_index
        info = LayerInfo(module=module, name=mod_name, kind=op.kind, is_input_layer=is_input,
                         is_first_layer=xkind in (_KIND_INPUT, _KIND_PRE), index=index)
        if fold_into is None:
            self.layer_index += 1
        rule = self.p.rule_for(info)
        problem: Optional[Exception] = None
        if rule is None:
            problem = self._unsupported(f"'{name}'", "The composite returned no rule for this layer.")
        else:
            check = getattr(rule, "check_layer", None)
            if check is not None:
                msg = check(info)
                if msg:
                    problem = UnsupportedOperationError(f"Rule {rule!r} on module '{mod_name}': {msg}")
        node = _Node(info=info, op=op, rule=rule, state=self.state)
        if fold_into is not None:
            # the batch norm's rule is needed only if folding turns out not to be exact
            node.problem = problem
            return self._merge_bn(x, fold_into, node)
        if problem is not None:
            raise problem
        if is_input and getattr(rule, "needs_input_layer", False):
            info.input_mask = self._real_input_mask(x)
        if is_input:
            node.input_ref = x
        self.state.nodes.append(node)
        out = _RuleFunction.apply(x, node)
        node.out_ref = weakref.ref(out)
        _set_tag(out, self.state, _KIND_ACT, node)
        return out

    def _fold_target(self, x: Tensor, scale: Tensor) -> Optional[_Node]:
        """The conv/linear node a batch norm on ``x`` can be folded into, or ``None``.

        Folding needs ``x`` to be that layer's own output (not a view or an in-place
        modified copy), the layer not to have a batch norm folded in already, and the
        batch norm's channel axis (dim 1) to be the layer's output-feature axis: always for
        convolutions, for ``nn.Linear`` only on ``(N, features)`` inputs (on ``(N, L, F)``
        a ``BatchNorm1d(L)`` normalises ``L``, not the features).  Whether the batch norm
        is the only consumer of the layer output is known only after the forward pass; the
        backward pass checks it (see :class:`_RuleFunction`)."""
        producer = _producer(x, self.token)
        if producer is None or producer.op.kind == "batchnorm" or producer.merged_op is not None:
            return None
        if producer.out_ref is None or producer.out_ref() is not x:
            return None
        if x.dim() < 2 or x.shape[1] != scale.shape[0]:
            return None
        if producer.op.kind == "linear" and x.dim() != 2:
            return None
        return producer

    def _real_input_mask(self, x: Tensor) -> Optional[Tensor]:
        """Which entries of an input layer's input are model input values (1) and which are
        zero padding added by selection ops on the way (0); ``None`` if none is padding.

        ``x`` is a selection (pad, slice, reshape, cat) of the model inputs, i.e. ``x = J u``
        with a 0/1 matrix ``J``; ``J 1`` is the mask, obtained as the gradient with respect
        to ``v`` of ``<J^T v, 1>`` (double backward through the selection ops only).
        Without it, rules that put relevance on inputs that are 0 (ZBox, Flat, WSquare)
        would give relevance to padding positions, where it is silently lost."""
        leaves = self.state.leaves
        self.state.bypass = True
        try:
            with torch.enable_grad():
                v = torch.zeros_like(x, requires_grad=True)
                grads = torch.autograd.grad(x, leaves, grad_outputs=v, create_graph=True,
                                            retain_graph=True, allow_unused=True)
                pairs = [(g, lf) for g, lf in zip(grads, leaves) if g is not None and g.requires_grad]
                if not pairs:
                    return None
                (mask,) = torch.autograd.grad([g for g, _ in pairs], v,
                                              grad_outputs=[torch.ones_like(lf) for _, lf in pairs],
                                              allow_unused=True)
        finally:
            self.state.bypass = False
        if mask is None or bool((mask != 0).all()):
            return None
        return (mask != 0).to(x.dtype)

    def _merge_bn(self, x: Tensor, producer: _Node, bn_node: _Node) -> Tensor:
        """Batch norm right after a conv/linear: if it turns out to be the only consumer of
        the layer output, the rule of the producer sees the merged affine map
        ``scale * (W x + b) + shift`` and the BN passes relevance through; otherwise the
        BN keeps its own rule (``bn_node``), as with ``merge_batchnorm=False``."""
        bn = bn_node.op
        shape = (-1,) + (1,) * (producer.op.weight.dim() - 1)
        w = producer.op.weight * bn.weight.view(shape)
        b = bn.bias if producer.op.bias is None else producer.op.bias * bn.weight + bn.bias
        merged = AffineOp(producer.op.kind, w, b, **producer.op.conv_kwargs)
        merged.pre_pad = producer.op.pre_pad
        producer.merged_op = merged
        producer.bn = bn_node
        bn_node.parent = producer
        out = _MergedBatchNorm.apply(x, bn_node)
        producer.z = out.detach()
        producer.z_version = out._version
        _set_tag(out, self.state, _KIND_ACT, bn_node)
        return out

    def _max_with_zero(self, func, name, args, kwargs):
        """``torch.maximum(h, 0)`` / ``torch.minimum(h, 0)`` with a constant all-zero
        operand: a ReLU-like gate (``f(0) = 0``, piecewise linear and positively
        homogeneous), so its plain gradient passes relevance exactly.  Anything else
        (two activations, a non-zero constant) raises."""
        a = args[0] if args else kwargs.get("input")
        b = args[1] if len(args) > 1 else kwargs.get("other")
        ta, tb = _tag_of(a, self.token), _tag_of(b, self.token)
        const = b if ta else a
        if "out" not in kwargs and bool(ta) != bool(tb) and isinstance(const, Tensor) \
                and not bool(const.detach().any()):
            out = func(*args, **kwargs)
            self._tag_outputs(out, self._derived_kind([ta or tb], False), name=name)
            return out
        if ta and tb:
            what = "two tensors that both depend on the input"
        elif "out" in kwargs:
            what = "an out= tensor"
        else:
            what = "an activation and a constant that is not all zero"
        raise self._unsupported(
            f"'{name}' of {what}",
            "Only torch.maximum / torch.minimum with an all-zero constant (a ReLU) has an exact "
            "rule; use torch.relu or torch.clamp.")

    # -- saturating activations (ReLU6, Hardtanh, clamp) --------------------------------
    def _saturating(self, func, name, args, kwargs):
        x = args[0] if args else kwargs["input"]
        if name.startswith("hardtanh"):
            lo = _get_arg(args, kwargs, 1, "min_val", -1.0)
            hi = _get_arg(args, kwargs, 2, "max_val", 1.0)
        elif name.startswith("relu6"):
            lo, hi = 0.0, 6.0
        elif name.startswith("clamp_min"):
            lo, hi = _get_arg(args, kwargs, 1, "min", None), None
        elif name.startswith("clamp_max"):
            lo, hi = None, _get_arg(args, kwargs, 1, "max", None)
        else:
            lo = _get_arg(args, kwargs, 1, "min", None)
            hi = _get_arg(args, kwargs, 2, "max", None)
        if isinstance(lo, Tensor) or isinstance(hi, Tensor):
            raise self._unsupported(f"'{name}' with tensor bounds", "Use scalar bounds.")
        if (lo is not None and lo > 0) or (hi is not None and hi < 0):
            raise self._unsupported(
                f"'{name}' with bounds [{lo}, {hi}] that exclude 0",
                "Relevance pass-through needs f(0) = 0.")
        out = _PassThroughActivation.apply(x, lambda t: torch.clamp(t, lo, hi))
        _set_tag(out, self.state, self._derived_kind([_tag_of(x, self.token)], False))
        return out


# ----------------------------------------------------------------------------------------
# Modules that are opaque to the function mode
# ----------------------------------------------------------------------------------------

_OPAQUE_MODULES: Tuple[type, ...] = (
    nn.RNNBase, nn.MultiheadAttention, nn.Embedding, nn.EmbeddingBag,
)


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
    """

    def __init__(self, model: nn.Module, rule_for: Callable[[LayerInfo], Any], method_name: str = "LRP",
                 merge_batchnorm: bool = False):
        self.model = model
        self.merge_batchnorm = merge_batchnorm
        self.rule_for = rule_for
        self.method_name = method_name
        self.param_owner: Dict[int, Tuple[str, nn.Module]] = {}

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
            inputs: the model inputs (floating tensors carry relevance).
            additional_forward_args: passed after the inputs.
            seed_fn: ``outputs -> R_out`` the relevance at the output (same shape).
            layer_hooks: ``(module, callback, at_input)``: the callback receives the
                relevance at the module's output (or input) during the backward pass.

        Returns:
            ``(relevances, outputs, seed)``
        """
        self._index_parameters()
        state = _CallState(token=next(_call_counter))
        handles = []
        model = self.model
        snapshot = _BufferSnapshot(model)

        def pre_hook(mod, args, _name_map={}):
            name = names.get(id(mod), "")
            state.module_stack.append(name)
            if isinstance(mod, _OPAQUE_MODULES):
                if any(_tag_of(t, state.token) for t in _iter_tensors(args)):
                    state.module_stack.pop()
                    raise UnsupportedOperationError(
                        f"{self.method_name} cannot propagate relevance through module '{name}' "
                        f"({type(mod).__name__}): recurrent, attention and embedding modules have no "
                        "rule in the propagation engine. Use captum_rap.CD for LSTMs.")

        def post_hook(mod, args, out):
            if state.module_stack:
                state.module_stack.pop()

        names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
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
                for inp in inputs:
                    if isinstance(inp, Tensor) and inp.is_floating_point():
                        leaf = inp.detach().requires_grad_(True)
                        proxy = leaf.clone()
                        _set_tag(proxy, state, _KIND_INPUT)
                        leaves.append(leaf)
                        proxies.append(proxy)
                        state.leaves.append(leaf)
                    else:
                        leaves.append(None)
                        proxies.append(inp)
                with _PropagationMode(self, state):
                    outputs = model(*proxies, *additional_forward_args)
                if not isinstance(outputs, Tensor):
                    raise TypeError(f"{self.method_name} needs a model that returns one tensor, got "
                                    f"{type(outputs).__name__}")
                if not _tag_of(outputs, state.token):
                    raise UnsupportedOperationError(
                        f"The model output does not depend on the input through operations that "
                        f"{self.method_name} can see; no relevance can reach the input.")
                if not bool(torch.isfinite(outputs.detach()).all()):
                    raise ValueError(f"{self.method_name}: the model output contains NaN or Inf for "
                                     "these inputs (check the model's weights and the input scale); "
                                     "no relevance can be propagated.")
                seed = seed_fn(outputs.detach())
                producer = _producer(outputs, state.token)
                if producer is not None:
                    producer.is_output_layer = True
                    producer.info.is_output_layer = True
                    producer.seed = seed
                grad_seed = safe_divide(seed, outputs.detach())
                grad_inputs = [lf for lf in leaves if lf is not None]
                grads = torch.autograd.grad(outputs, grad_inputs, grad_outputs=grad_seed,
                                            allow_unused=True, retain_graph=True)
                grads_it = iter(grads)
                rel: List[Tensor] = []
                for lf, inp in zip(leaves, inputs):
                    if lf is None:
                        rel.append(torch.zeros_like(inp, dtype=torch.float32)
                                   if isinstance(inp, Tensor) else inp)
                        continue
                    g = next(grads_it)
                    rel.append(lf.detach() * g if g is not None else torch.zeros_like(lf))
                # relevance returned directly by input layers, mapped back through the
                # selection ops between the model input and the layer
                if state.input_relevance:
                    refs = [r for r, _ in state.input_relevance]
                    rels = [v for _, v in state.input_relevance]
                    state.direct_pass = True
                    try:
                        direct = torch.autograd.grad(refs, grad_inputs, grad_outputs=rels,
                                                     allow_unused=True)
                    finally:
                        state.direct_pass = False
                    j = 0
                    for i, lf in enumerate(leaves):
                        if lf is None:
                            continue
                        if direct[j] is not None:
                            rel[i] = rel[i] + direct[j]
                        j += 1
            return tuple(r.detach() if isinstance(r, Tensor) else r for r in rel), outputs.detach(), seed
        finally:
            for h in handles:
                h.remove()
            for h in capture_handles:
                h.remove()
            snapshot.restore()
            _remove_tags(state)
            state.input_relevance.clear()
            state.nodes.clear()


def _register_capture(module: nn.Module, callback: Callable[[Tensor], None], at_input: bool,
                      state: _CallState):
    """Capture the relevance at a module's output (or input).

    * The output of a conv/linear layer: the relevance the layer's rule receives
      (``grad * activation``, or the seed at the output layer).  For a layer with a batch
      norm folded into it (``merge_batchnorm``) this is the relevance at the output of the
      folded layer, i.e. at the batch norm output.
    * Any other tensor: ``grad * activation`` from the backward pass, plus, for a selection
      of the model input (the input of an input layer), the relevance that input layers
      return directly, mapped back to it.
    """

    def fwd_hook(mod, args, out):
        t = args[0] if at_input else out
        if not isinstance(t, Tensor) or not t.requires_grad:
            return
        producer = _producer(t, state.token)
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
