"""What the engine records during one propagation: layer infos, per-call nodes, the
call state, and the tags that mark which tensors carry relevance."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from torch import Tensor, nn

if TYPE_CHECKING:  # pragma: no cover
    from .affine import AffineOp

__all__ = ["UnsupportedOperationError", "LayerInfo", "NORM_KINDS"]


class UnsupportedOperationError(RuntimeError):
    """Raised when the relevance path goes through an operation that the engine cannot
    propagate faithfully.  The message names the operation and the module path."""


#: layer kinds whose affine map is element-wise (a normalisation's affine part)
NORM_KINDS = ("batchnorm", "layernorm", "groupnorm", "instancenorm", "rmsnorm")


@dataclass
class LayerInfo:
    """What a composite sees when choosing a rule for one layer call.

    Attributes:
        module (nn.Module or None): the module that owns the parameters.
        name (str): its qualified name in the model (``""`` for the model itself).
        kind (str): ``"conv1d" | "conv2d" | "conv3d" | "linear"`` or a normalisation's
            affine part: ``"batchnorm" | "layernorm" | "groupnorm" | "instancenorm" |
            "rmsnorm"`` (see :attr:`is_norm`).
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
        batch_axis (int or None): the axis of the layer input that holds the examples (0
            for batch-first layouts, 1 inside a sequence-first transformer), ``None`` where
            they cannot be told apart any more; rules with per-example steps (RAP's uniform
            shift, the relevance filter, per-example z^B bounds) use it.
        batch_inner (int): entries of ``batch_axis`` per example, in contiguous blocks (1,
            or e.g. the number of windows where a Swin transformer folds its windows into
            the batch axis).
        batch_size (int): the number of examples of the call.
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
    batch_axis: Optional[int] = 0
    batch_inner: int = 1
    batch_size: int = 1

    @property
    def is_norm(self) -> bool:
        """The layer is a normalisation's element-wise affine part (batch, layer, group,
        instance or RMS norm)."""
        return self.kind in NORM_KINDS

    def example_axis(self, what: str) -> Optional[Tuple[int, int]]:
        """``(batch_axis, batch_inner)`` for a per-example step of a rule (``None``: one
        example, reduce over everything).  Raises if the examples cannot be told apart at
        this layer."""
        if self.batch_size <= 1:
            return None
        if self.batch_axis is None:
            raise UnsupportedOperationError(
                f"{what} on module '{self.name}': the examples of this layer's input are mixed "
                "with another axis (e.g. a sequence axis merged in front of the batch axis), so its "
                "per-example step is undefined. Attribute one example at a time (batch of 1).")
        return self.batch_axis, self.batch_inner


@dataclass
class Node:
    """One call of an affine layer during a propagation."""

    info: LayerInfo
    op: "AffineOp"
    rule: Any
    state: "CallState"
    input_ref: Optional[Tensor] = None  # the layer's input tensor (kept for input layers)
    out: Optional[Tensor] = None  # the layer output (of ``op``)
    z: Optional[Tensor] = None  # output of a batch norm folded into this layer (``merged_op``)
    seed: Optional[Tensor] = None
    out_version: int = 0
    z_version: int = 0
    out_ref: Any = None  # weak reference to the output tensor the forward pass returned
    #: batch norm folding (merge_batchnorm): the layer with the batch norm that reads its
    #: output folded in, and that batch norm's own node (used when folding is not exact)
    merged_op: Optional["AffineOp"] = None
    bn: Optional["Node"] = None
    parent: Optional["Node"] = None  # for such a batch norm: the layer it is folded into
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
class CallState:
    token: int
    input_relevance: List[Tuple[Tensor, Tensor]] = field(default_factory=list)
    module_stack: List[str] = field(default_factory=list)
    relevance_hooks: Dict[int, Callable[[Node, Tensor], Tensor]] = field(default_factory=dict)
    bypass: bool = False
    leaves: List[Tensor] = field(default_factory=list)  # the floating model inputs (autograd leaves)
    #: weak references to every tensor tagged in this call; the tags are removed at its end
    tagged: List[Any] = field(default_factory=list)
    #: True while the relevance returned by input layers is mapped back to the model inputs
    #: (the gradients of that backward pass are relevances, not relevance densities)
    direct_pass: bool = False
    #: integer (token id) tensors derived from a model input: id(tensor) -> (input index,
    #: tensor of the flat positions in that input that each entry was read from)
    id_sources: Dict[int, Tuple[int, Tensor]] = field(default_factory=dict)
    #: embedding lookups of model token ids: (input index, positions, leaf) where ``leaf``
    #: is the autograd leaf that stands for the looked-up vectors
    embeddings: List[Tuple[int, Tensor, Tensor]] = field(default_factory=list)
    #: the number of examples (axis 0 of the model inputs)
    batch_size: int = 1
    #: element-wise modules being run as one function: (module, input, bypass before)
    elementwise: List[Tuple[Any, Tensor, bool]] = field(default_factory=list)


# ----------------------------------------------------------------------------------------
# Tags: which tensors of this call carry relevance, and of what kind
# ----------------------------------------------------------------------------------------

TAG = "_captum_rap_tag"
KIND_INPUT = 1  # the model input or a selection (pad, view, cat, slice) of it
KIND_ACT = 2  # any tensor downstream of an affine layer
KIND_PRE = 3  # derived from the input by parameter-free ops, before any affine layer
KIND_IDS = 4  # integer token ids read from a model input (carry no relevance themselves)
KIND_AFFINE = 5  # src * scale + shift: a constant affine transform of an input selection


def tag_of(t: Any, token: int) -> int:
    """The kind of ``t`` in the call ``token`` (0: a constant)."""
    if not isinstance(t, Tensor):
        return 0
    tag = getattr(t, TAG, None)
    if tag is None or tag[0] != token:
        return 0
    return tag[1]


def is_gate(t: Any, token: int) -> bool:
    """``t`` is the output of a gate (sigmoid, hard sigmoid, softmax) or a view of one."""
    tag = getattr(t, TAG, None) if isinstance(t, Tensor) else None
    return tag is not None and tag[0] == token and tag[3]


#: where the examples are in a tensor: ``(axis, inner)``, the examples in contiguous blocks
#: of ``inner`` entries along ``axis``; ``None`` where they cannot be told apart
Batch = Optional[Tuple[int, int]]


def batch_of(t: Any, token: int) -> Batch:
    """Where the examples of ``t`` are (``None``: unknown)."""
    tag = getattr(t, TAG, None) if isinstance(t, Tensor) else None
    if tag is None or tag[0] != token:
        return None
    return tag[4]


def set_tag(t: Tensor, state: CallState, kind: int, producer: Any = None,
            gate: bool = False, batch: Batch = (0, 1)) -> None:
    """Mark ``t`` as carrying relevance in this call: its kind, the node that produced it
    (or, for token ids, their source positions), whether it is a gate, and its batch axis."""
    try:
        setattr(t, TAG, (state.token, kind, producer, gate, batch))
    except (AttributeError, RuntimeError):  # pragma: no cover - exotic tensor types
        return
    state.tagged.append(weakref.ref(t))


def remove_tags(state: CallState) -> None:
    """Remove this call's tags from every tensor still alive (activations the model keeps,
    and any user tensor an operation returned), also after an error."""
    for ref in state.tagged:
        t = ref()
        if t is None:
            continue
        tag = t.__dict__.get(TAG) if hasattr(t, "__dict__") else None
        if tag is not None and tag[0] == state.token:
            try:
                delattr(t, TAG)
            except AttributeError:  # pragma: no cover
                pass
    state.tagged.clear()


def producer_of(t: Tensor, token: int) -> Optional[Node]:
    tag = getattr(t, TAG, None)
    if tag is None or tag[0] != token or not isinstance(tag[2], Node):
        return None
    return tag[2]
