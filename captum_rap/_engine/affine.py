"""Affine operations as the rules see them (:class:`AffineOp`)."""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .records import UnsupportedOperationError

__all__ = ["AffineOp"]


class AffineOp:
    """One call of an affine layer (convolution, linear, eval batch norm, or the
    element-wise affine part of a normalisation).

    Rules see the layer through this object and never through the module, so the same
    rule works for every convolution dimensionality, for ``nn.Linear``, for a batch norm
    treated as a per-channel affine map and for the affine part ``w * n + b`` of a
    layer/group/instance/RMS norm.

    Attributes:
        kind (str): ``"conv1d"``, ``"conv2d"``, ``"conv3d"``, ``"linear"``, ``"batchnorm"``
            (per-channel scale on axis 1) or ``"elementwise"`` (a scale that broadcasts
            against the input as stored, e.g. ``(C,)`` on the last axis for a layer norm).
        weight (Tensor): weight of the layer (for batch norm: the effective per-channel
            scale ``gamma / sqrt(var + eps)``).
        bias (Tensor or None): bias (for batch norm: ``beta - mean * scale``), or a map of
            the output's shape (batch axis of size 1 or N): the bias of an input layer with an
            in-model input normalisation folded in (see :mod:`.input_affine`).
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

    @property
    def is_elementwise(self) -> bool:
        """Each output depends on one input only (batch norm, a normalisation's affine part)."""
        return self.kind in ("batchnorm", "elementwise")

    def weight_like(self, weight: Tensor, x: Tensor) -> Tensor:
        """An element-wise op's ``weight`` (or a tensor shaped like it) shaped to broadcast
        against ``x``."""
        if self.kind == "batchnorm":
            return weight.view((1, -1) + (1,) * (x.dim() - 2))
        return weight

    def is_bias_map(self, bias: Optional[Tensor]) -> bool:
        """``bias`` is a map of the output's shape rather than one value per output channel."""
        return bias is not None and bias.dim() > (1 if self.kind != "elementwise" else self.weight.dim())

    def forward(self, x: Tensor, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None) -> Tensor:
        """Apply the operation to ``x`` with (possibly modified) ``weight`` and ``bias``."""
        w = self.weight if weight is None else weight
        if self.kind != "elementwise" and self.is_bias_map(bias):
            return self.forward(x, w, None) + bias
        if self.kind == "linear":
            return F.linear(x, w, bias)
        if self.is_elementwise:
            out = x * self.weight_like(w, x)
            if bias is not None:
                out = out + self.weight_like(bias, x)
            return out
        if self.pre_pad is not None:
            x = F.pad(x, self.pre_pad)
        conv = {"conv1d": F.conv1d, "conv2d": F.conv2d, "conv3d": F.conv3d}[self.kind]
        return conv(x, w, bias, **self.conv_kwargs)

    def bias_like(self, bias: Tensor, out: Tensor) -> Tensor:
        """``bias`` shaped to broadcast against an output ``out`` of this operation."""
        if self.kind in ("linear", "elementwise") or self.is_bias_map(bias):
            return bias
        return bias.view((1, -1) + (1,) * (out.dim() - 2))

    def backward(self, grad_out: Tensor, weight: Optional[Tensor], input_shape: torch.Size) -> Tensor:
        """Vector-Jacobian product: the transpose of :meth:`forward` (bias-free) applied to
        ``grad_out``, with the given weight.  Returns a tensor of ``input_shape``."""
        w = self.weight if weight is None else weight
        if self.kind == "linear":
            return grad_out.matmul(w)
        if self.is_elementwise:
            return grad_out * self.weight_like(w, grad_out)
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
