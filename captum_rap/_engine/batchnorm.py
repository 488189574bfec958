"""Batch-norm folding (``merge_batchnorm``): a batch norm that reads the output of a
conv/linear layer is folded into that layer's rule where this is exact.

The forward pass folds tentatively (:func:`merge_bn`); whether the batch norm is the only
consumer of the layer output is known only in the backward pass, where
:class:`~.functions.RuleFunction` either applies the layer's rule to the folded map
``BN(W x + b)`` or, if relevance also reaches the layer output by another way
(``relu(bn(c) + c)``), gives the batch norm its own rule first."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from torch import Tensor

from .affine import AffineOp
from .functions import MergedBatchNorm
from .records import KIND_ACT, Node, batch_of, producer_of, set_tag

if TYPE_CHECKING:  # pragma: no cover
    from .mode import PropagationMode

__all__ = ["fold_target", "merge_bn"]


def fold_target(mode: "PropagationMode", x: Tensor, scale: Tensor) -> Optional[Node]:
    """The conv/linear node a batch norm on ``x`` can be folded into, or ``None``.

    Folding needs ``x`` to be that layer's own output (not a view or an in-place
    modified copy), the layer not to have a batch norm folded in already, and the
    batch norm's channel axis (dim 1) to be the layer's output-feature axis: always for
    convolutions, for ``nn.Linear`` only on ``(N, features)`` inputs (on ``(N, L, F)``
    a ``BatchNorm1d(L)`` normalises ``L``, not the features)."""
    producer = producer_of(x, mode.token)
    if producer is None or producer.op.is_elementwise or producer.merged_op is not None:
        return None
    if producer.out_ref is None or producer.out_ref() is not x:
        return None
    if x.dim() < 2 or x.shape[1] != scale.shape[0]:
        return None
    if producer.op.kind == "linear" and x.dim() != 2:
        return None
    return producer


def merge_bn(mode: "PropagationMode", x: Tensor, producer: Node, bn_node: Node) -> Tensor:
    """Batch norm right after a conv/linear: if it turns out to be the only consumer of
    the layer output, the rule of the producer sees the merged affine map
    ``scale * (W x + b) + shift`` and the BN passes relevance through; otherwise the
    BN keeps its own rule (``bn_node``), as with ``merge_batchnorm=False``."""
    bn = bn_node.op
    shape = (-1,) + (1,) * (producer.op.weight.dim() - 1)
    w = producer.op.weight * bn.weight.view(shape)
    if producer.op.bias is None:
        b = bn.bias
    elif producer.op.is_bias_map(producer.op.bias):  # a folded input normalisation
        b = producer.op.bias * bn.weight_like(bn.weight, producer.op.bias) + bn.weight_like(bn.bias, producer.op.bias)
    else:
        b = producer.op.bias * bn.weight + bn.bias
    merged = AffineOp(producer.op.kind, w, b, **producer.op.conv_kwargs)
    merged.pre_pad = producer.op.pre_pad
    producer.merged_op = merged
    producer.bn = bn_node
    bn_node.parent = producer
    out = MergedBatchNorm.apply(x, bn_node)
    producer.z = out.detach()
    producer.z_version = out._version
    set_tag(out, mode.state, KIND_ACT, bn_node, batch=batch_of(x, mode.token))
    return out
