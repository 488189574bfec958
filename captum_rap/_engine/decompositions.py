"""Normalisations and attention written out in the operations of the table.

The function mode calls these with itself re-entered, so every step goes through the
operation table and gets its treatment: a layer norm becomes centering (linear), a
division by a standard deviation computed as a constant, and an element-wise affine layer
with the composite's rule; attention becomes projections (affine layers), two products
(the product rule) and a softmax (the softmax rule).  Only the forward arithmetic follows
the fused kernels; it equals them up to rounding (tested in float64).

References: the division by the standard deviation as a constant is AttnLRP's treatment
of normalisations (Achtibat et al., ICML 2024, sec. 3.3, after Ali et al., ICML 2022).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from .mode import PropagationMode

__all__ = ["layer_norm", "group_norm", "instance_norm", "rms_norm", "normalize",
           "scaled_dot_product_attention", "multi_head_attention_forward"]


def _stat_dtype(x: Tensor) -> torch.dtype:
    # statistics of half-precision inputs in float32, as torch's own kernels do
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def _inv_std(mode: "PropagationMode", x: Tensor, dims: Sequence[int], eps: float,
             center: bool = True) -> Tensor:
    """``1 / sqrt(var + eps)`` (``1 / sqrt(mean(x²) + eps)`` without centering) over
    ``dims``, as a constant."""
    with mode.constants():
        xs = x.detach().to(_stat_dtype(x))
        if center:
            var = xs.var(dim=tuple(dims), unbiased=False, keepdim=True)
        else:
            var = xs.pow(2).mean(dim=tuple(dims), keepdim=True)
        return torch.rsqrt(var + eps).to(x.dtype)


def layer_norm(mode: "PropagationMode", input: Tensor, normalized_shape: Sequence[int],
               weight: Optional[Tensor] = None, bias: Optional[Tensor] = None, eps: float = 1e-5) -> Tensor:
    dims = list(range(-len(tuple(normalized_shape)), 0))
    inv = _inv_std(mode, input, dims, eps)
    with mode:
        n = (input - input.mean(dim=dims, keepdim=True)) * inv
    return mode.norm_affine(n, weight, bias, "layernorm", feature_dims=len(dims))


def group_norm(mode: "PropagationMode", input: Tensor, num_groups: int, weight: Optional[Tensor] = None,
               bias: Optional[Tensor] = None, eps: float = 1e-5) -> Tensor:
    shape = input.shape
    with mode:
        xg = input.reshape(shape[0], num_groups, -1)
    inv = _inv_std(mode, xg, [-1], eps)
    with mode:
        n = ((xg - xg.mean(dim=-1, keepdim=True)) * inv).reshape(shape)
    return mode.norm_affine(n, weight, bias, "groupnorm")


def instance_norm(mode: "PropagationMode", input: Tensor, running_mean: Optional[Tensor] = None,
                  running_var: Optional[Tensor] = None, weight: Optional[Tensor] = None,
                  bias: Optional[Tensor] = None, use_input_stats: bool = True, momentum: float = 0.1,
                  eps: float = 1e-5) -> Tensor:
    if not use_input_stats:
        # running statistics: the per-channel affine map of an eval batch norm
        return mode.batch_norm_layer(input, running_mean, running_var, weight, bias, eps, "instancenorm")
    dims = list(range(2, input.dim()))
    inv = _inv_std(mode, input, dims, eps)
    with mode:
        n = (input - input.mean(dim=dims, keepdim=True)) * inv
    return mode.norm_affine(n, weight, bias, "instancenorm")


def rms_norm(mode: "PropagationMode", input: Tensor, normalized_shape: Sequence[int],
             weight: Optional[Tensor] = None, eps: Optional[float] = None) -> Tensor:
    dims = list(range(-len(tuple(normalized_shape)), 0))
    if eps is None:
        eps = torch.finfo(input.dtype).eps
    inv = _inv_std(mode, input, dims, eps, center=False)
    with mode:
        n = input * inv
    return mode.norm_affine(n, weight, None, "rmsnorm", feature_dims=len(dims))


def normalize(mode: "PropagationMode", input: Tensor, p: float = 2.0, dim: int = 1, eps: float = 1e-12,
              out: Any = None) -> Tensor:
    if out is not None:
        raise mode.unsupported("'normalize' with out=", "Use the returned tensor.")
    with mode.constants():
        norm = input.detach().norm(p, dim, keepdim=True).clamp_min(eps)
    with mode:
        return input / norm


# ----------------------------------------------------------------------------------------
# attention
# ----------------------------------------------------------------------------------------


def scaled_dot_product_attention(mode: "PropagationMode", query: Tensor, key: Tensor, value: Tensor,
                                 attn_mask: Optional[Tensor] = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: Optional[float] = None,
                                 enable_gqa: bool = False) -> Tensor:
    """``softmax(q kᵀ · scale + mask) v`` (masks: boolean = may attend, float = added)."""
    if is_causal and attn_mask is not None:
        raise ValueError("scaled_dot_product_attention: attn_mask must be None with is_causal=True")
    L, S = query.shape[-2], key.shape[-2]
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    with mode:
        if enable_gqa:
            rep = query.shape[-3] // key.shape[-3]
            key = key.repeat_interleave(rep, dim=-3)
            value = value.repeat_interleave(rep, dim=-3)
        scores = torch.matmul(query, key.transpose(-2, -1)) * scale
        if is_causal:
            allowed = torch.ones(L, S, dtype=torch.bool, device=query.device).tril()
            scores = scores.masked_fill(~allowed, float("-inf"))
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            else:
                scores = scores + attn_mask
        weights = torch.softmax(scores, dim=-1)
        if dropout_p > 0:
            weights = F.dropout(weights, dropout_p, training=True)
        return torch.matmul(weights, value)


def _float_mask(mask: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    """``nn.MultiheadAttention``'s mask convention: boolean True = may NOT attend."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    return mask.to(dtype)


def multi_head_attention_forward(
    mode: "PropagationMode", query: Tensor, key: Tensor, value: Tensor, embed_dim_to_check: int,
    num_heads: int, in_proj_weight: Optional[Tensor], in_proj_bias: Optional[Tensor],
    bias_k: Optional[Tensor], bias_v: Optional[Tensor], add_zero_attn: bool, dropout_p: float,
    out_proj_weight: Tensor, out_proj_bias: Optional[Tensor], training: bool = True,
    key_padding_mask: Optional[Tensor] = None, need_weights: bool = True,
    attn_mask: Optional[Tensor] = None, use_separate_proj_weight: bool = False,
    q_proj_weight: Optional[Tensor] = None, k_proj_weight: Optional[Tensor] = None,
    v_proj_weight: Optional[Tensor] = None, static_k: Optional[Tensor] = None,
    static_v: Optional[Tensor] = None, average_attn_weights: bool = True, is_causal: bool = False,
) -> Tuple[Tensor, Optional[Tensor]]:
    """``F.multi_head_attention_forward`` (sequence-first arguments, as ``nn.MultiheadAttention``
    calls it) in table operations.  Computed batch-first inside (the examples stay on axis 0
    of every tensor that reaches a layer rule)."""
    batched = query.dim() == 3
    with mode.constants():
        dtype = query.dtype
        kpm = _float_mask(key_padding_mask, dtype)
        am = _float_mask(attn_mask, dtype)
        if is_causal and am is None:
            raise RuntimeError("multi_head_attention_forward: is_causal needs attn_mask")
    with mode:
        same_kv = key is value
        same_qk = query is key
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if kpm is not None:
                kpm = kpm.unsqueeze(0)
        tgt_len, bsz, embed_dim = query.shape
        if embed_dim != embed_dim_to_check:
            raise ValueError(f"multi_head_attention_forward: embed_dim {embed_dim} != {embed_dim_to_check}")
        head_dim = embed_dim // num_heads
        query = query.transpose(0, 1)
        key = query if same_qk else key.transpose(0, 1)
        value = key if same_kv else value.transpose(0, 1)
        # input projections (affine layers; views of the packed weight keep their owner)
        bs = in_proj_bias.chunk(3) if in_proj_bias is not None else (None, None, None)
        if not use_separate_proj_weight:
            assert in_proj_weight is not None
            if same_qk and same_kv:
                q, k, v = F.linear(query, in_proj_weight, in_proj_bias).chunk(3, dim=-1)
            else:
                ws = in_proj_weight.chunk(3)
                q = F.linear(query, ws[0], bs[0])
                k = F.linear(key, ws[1], bs[1])
                v = F.linear(value, ws[2], bs[2])
        else:
            q = F.linear(query, q_proj_weight, bs[0])
            k = F.linear(key, k_proj_weight, bs[1])
            v = F.linear(value, v_proj_weight, bs[2])
        if bias_k is not None and bias_v is not None:
            k = torch.cat([k, bias_k.reshape(1, 1, -1).repeat(bsz, 1, 1)], dim=1)
            v = torch.cat([v, bias_v.reshape(1, 1, -1).repeat(bsz, 1, 1)], dim=1)
            am = F.pad(am, (0, 1)) if am is not None else None
            kpm = F.pad(kpm, (0, 1)) if kpm is not None else None
        # (N, heads, L, head_dim)
        q = q.reshape(bsz, tgt_len, num_heads, head_dim).transpose(1, 2)
        if static_k is None:
            k = k.reshape(bsz, k.shape[1], num_heads, head_dim).transpose(1, 2)
        else:
            k = static_k.reshape(bsz, num_heads, -1, head_dim)
        if static_v is None:
            v = v.reshape(bsz, v.shape[1], num_heads, head_dim).transpose(1, 2)
        else:
            v = static_v.reshape(bsz, num_heads, -1, head_dim)
        if add_zero_attn:
            zeros = torch.zeros((bsz, num_heads, 1, head_dim), dtype=k.dtype, device=k.device)
            k = torch.cat([k, zeros], dim=2)
            v = torch.cat([v, zeros], dim=2)
            am = F.pad(am, (0, 1)) if am is not None else None
            kpm = F.pad(kpm, (0, 1)) if kpm is not None else None
        src_len = k.shape[2]
        if not training:
            dropout_p = 0.0
        scores = torch.matmul(q * (1.0 / math.sqrt(head_dim)), k.transpose(-2, -1))
        if am is not None:  # (L, S), (1, L, S) or (N * heads, L, S)
            scores = scores + (am.reshape(bsz, num_heads, tgt_len, src_len) if am.dim() == 3 and am.shape[0] > 1
                               else am.reshape(1, 1, tgt_len, src_len))
        if kpm is not None:  # (N, S)
            scores = scores + kpm.reshape(bsz, 1, 1, src_len)
        weights = torch.softmax(scores, dim=-1)
        if dropout_p > 0:
            weights = F.dropout(weights, p=dropout_p)
        out = torch.matmul(weights, v).transpose(1, 2).reshape(bsz, tgt_len, embed_dim)
        out = F.linear(out, out_proj_weight, out_proj_bias).transpose(0, 1)
        attn = None
        if need_weights:
            attn = weights.mean(dim=1) if average_attn_weights else weights
            if not batched:
                attn = attn.squeeze(0)
        if not batched:
            out = out.squeeze(1)
    return out, attn
