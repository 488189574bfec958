"""The operation table: every torch function the engine propagates relevance through,
declared once, with its treatment.

The function mode (:mod:`.mode`) looks up the name of each torch function that touches a
relevance-carrying tensor here and calls the handler of its treatment.  A name that is
not in the table raises :class:`~captum_rap._engine.UnsupportedOperationError` naming it
(unless its result carries no floating values: sizes, shapes, indices, booleans).

Treatments (how relevance passes; densities ``g = R / a`` travel through autograd):

``linear``       parameter-free linear maps (sums, concatenation, reshapes, padding, average
                 pooling, ...): plain autograd = the z-rule, relevance split in proportion
                 to the contributions.  ``selection`` ops copy elements without mixing them.
``scale``        ``*`` and ``/``: linear when one operand is a constant; a product of two
                 relevance-carrying tensors goes to the product rule; division by one raises.
``affine``       conv / linear / eval batch norm: the layer's rule (``module.rule`` or the
                 composite's), see :mod:`captum_rap.rules`.
``product``      ``matmul``, ``bmm``, ``einsum``, ...: with a parameter of the model as the
                 other factor, an affine layer (``mm``/``matmul``/``addmm``); with a
                 constant, linear; with several relevance-carrying factors, the product rule
                 (uniform by default, AttnLRP eq. 7; or signal-take-all for gates).
``relu``         ReLU-like (positively homogeneous) activations: the plain gradient passes
                 relevance exactly.
``saturating``   ReLU6, Hardtanh, clamp: the identity rule (their plain gradient would drop
                 relevance where they saturate).
``elementwise``  other element-wise non-linearities (SiLU, GELU, tanh, ...): the identity rule
                 ``R_in = R_out`` (AttnLRP eq. 9).
``gate``         sigmoid and hard sigmoid: the identity rule; the output is marked as a gate
                 for the signal-take-all product rule.
``softmax``      the AttnLRP softmax rule (plain gradient) or, with CP-LRP, a constant.
``norm``         layer / group / instance / RMS norm and ``F.normalize``: the division by the
                 standard deviation (norm) is a constant, centering is linear, the affine
                 part is an element-wise affine layer with the composite's norm rule.
``attention``    ``scaled_dot_product_attention`` and ``multi_head_attention_forward``:
                 decomposed into the operations above (projections, products, softmax).
``winner``       max pooling and max / min reductions: winner takes all (plain gradient).
``embedding``    ``F.embedding`` of token ids read from a model input: the looked-up vectors
                 stand for the tokens; their relevance is summed per token.
``constant``     ``zeros_like(h)`` and other factories: only shape, dtype, device are used.
``shape_of``     ``p.type_as(h)``, ``p.expand_as(h)``: the result depends on ``p`` only.
``max_zero``     ``torch.maximum`` / ``minimum`` with an all-zero constant: a ReLU.
``setitem``      ``t[idx] = v``: linear in ``t`` and ``v``.
``cut``          ``detach`` and friends: raise (the relevance path would be cut).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Optional, Set

__all__ = ["Op", "OP_TABLE", "supported_operations", "ELEMENTWISE_MODULES", "register_elementwise_module",
           "is_elementwise_module"]


@dataclass(frozen=True)
class Op:
    """How one torch function is treated.

    Attributes:
        treatment (str): one of the treatments in this module's docstring.
        selection (bool): the op copies elements without mixing or scaling them
            (reshapes, slicing, padding, concatenation): the model input stays "the input"
            through it (for input-layer rules) and a gate stays a gate.
        check (callable or None): ``(args, kwargs) -> message or None``; a message means
            the call cannot be propagated faithfully (e.g. reflection padding).
    """

    treatment: str
    selection: bool = False
    check: Optional[Callable[[tuple, dict], Optional[str]]] = None


OP_TABLE: Dict[str, Op] = {}


def _add(names: Iterable[str], treatment: str, selection: bool = False,
         check: Optional[Callable[[tuple, dict], Optional[str]]] = None) -> None:
    for name in names:
        if name in OP_TABLE:  # pragma: no cover - a table error
            raise AssertionError(f"operation {name!r} declared twice")
        OP_TABLE[name] = Op(treatment, selection, check)


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


def _check_pad(args: tuple, kwargs: dict) -> Optional[str]:
    mode = _arg(args, kwargs, 2, "mode", "constant")
    value = _arg(args, kwargs, 3, "value", None)
    if mode != "constant" or value not in (None, 0, 0.0):
        return (f"'pad' with mode={mode!r}, value={value!r}: only zero padding is supported on "
                "the relevance path")
    return None


_LINEAR_MODES = ("nearest", "linear", "bilinear", "trilinear", "area", "nearest-exact")


def _check_interpolate(args: tuple, kwargs: dict) -> Optional[str]:
    mode = _arg(args, kwargs, 4, "mode", "nearest")
    if mode not in _LINEAR_MODES:
        return f"interpolation with mode={mode!r} (not linear in its input); use one of {_LINEAR_MODES}"
    return None


# -- selections: elements copied, not mixed ---------------------------------------------
_add(["cat", "concat", "concatenate", "stack", "hstack", "vstack", "dstack", "reshape", "view",
      "flatten", "unflatten", "squeeze", "unsqueeze", "permute", "transpose", "t", "swapaxes",
      "swapdims", "movedim", "moveaxis", "contiguous", "clone", "__getitem__", "narrow", "select",
      "index_select", "chunk", "split", "tensor_split", "unbind", "flip", "roll", "zero_pad2d",
      "constant_pad_nd", "float", "double", "half", "bfloat16", "cpu", "cuda", "type", "identity",
      "expand", "repeat", "tile", "repeat_interleave", "gather", "take_along_dim", "where",
      "masked_fill", "masked_fill_", "unfold", "diagonal", "tril", "triu", "as_strided",
      "dropout", "dropout1d", "dropout2d", "dropout3d", "feature_dropout", "alpha_dropout",
      "feature_alpha_dropout", "pixel_shuffle", "pixel_unshuffle", "channel_shuffle",
      "native_channel_shuffle"], "linear", selection=True)
_add(["pad"], "linear", selection=True, check=_check_pad)
# -- linear maps that mix elements ----------------------------------------------------------
_add(["add", "__add__", "__radd__", "__iadd__", "add_", "sub", "__sub__", "__rsub__", "__isub__",
      "sub_", "rsub", "neg", "__neg__", "negative", "mean", "sum", "nansum", "cumsum",
      "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
      "adaptive_avg_pool3d", "trace", "fold"], "linear")
_add(["interpolate", "upsample", "upsample_nearest", "upsample_bilinear"], "linear",
     check=_check_interpolate)
# -- multiplication and division ---------------------------------------------------------
_add(["mul", "__mul__", "__rmul__", "__imul__", "mul_", "multiply", "div", "__truediv__",
      "__itruediv__", "div_", "__div__", "divide", "true_divide"], "scale")
# -- layers with parameters ----------------------------------------------------------------
_add(["conv1d", "conv2d", "conv3d", "linear", "batch_norm"], "affine")
# -- products of tensors ------------------------------------------------------------------
_add(["matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "mv", "dot", "vdot", "inner", "outer",
      "ger", "einsum", "baddbmm", "addbmm", "addmm", "addmv", "addr", "chain_matmul",
      "multi_dot", "kron", "tensordot"], "product")
# -- activations ----------------------------------------------------------------------------
_add(["relu", "relu_", "leaky_relu", "leaky_relu_", "prelu", "rrelu", "rrelu_", "threshold",
      "threshold_", "_threshold", "abs", "absolute"], "relu")
_add(["hardtanh", "hardtanh_", "relu6", "relu6_", "clamp", "clamp_", "clip", "clip_",
      "clamp_min", "clamp_min_", "clamp_max", "clamp_max_"], "saturating")
_add(["silu", "silu_", "gelu", "gelu_", "hardswish", "hardswish_", "mish", "mish_", "elu",
      "elu_", "selu", "selu_", "celu", "celu_", "softplus", "tanh", "tanh_", "logsigmoid", "log_sigmoid",
      "softsign", "tanhshrink", "hardshrink", "softshrink", "erf", "erf_", "exp", "exp_",
      "pow", "pow_", "__pow__", "square", "square_", "sqrt", "sqrt_", "sin", "cos", "log1p",
      "expm1", "sinh", "arcsinh", "asinh", "atan", "arctan"], "elementwise")
_add(["sigmoid", "sigmoid_", "hardsigmoid", "hardsigmoid_"], "gate")
_add(["softmax"], "softmax")
# -- normalisations and attention -----------------------------------------------------------
_add(["layer_norm", "group_norm", "instance_norm", "rms_norm", "normalize"], "norm")
_add(["scaled_dot_product_attention", "multi_head_attention_forward"], "attention")
# -- winner takes all -------------------------------------------------------------------------
_add(["max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices",
      "max_pool2d_with_indices", "max_pool3d_with_indices", "_max_pool1d", "_max_pool2d",
      "_max_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
      "adaptive_max_pool1d_with_indices", "adaptive_max_pool2d_with_indices",
      "adaptive_max_pool3d_with_indices", "_adaptive_max_pool1d", "_adaptive_max_pool2d",
      "_adaptive_max_pool3d", "amax", "amin", "max", "min", "topk", "sort", "cummax",
      "cummin", "kthvalue", "median", "nanmedian"], "winner")
_add(["maximum", "minimum", "fmax", "fmin"], "max_zero")
# -- the rest ---------------------------------------------------------------------------------
_add(["embedding"], "embedding")
_add(["zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like",
      "randint_like", "new_zeros", "new_ones", "new_empty", "new_full", "new_tensor", "new"],
     "constant")
_add(["type_as", "view_as", "reshape_as", "expand_as", "to"], "shape_of", selection=True)
_add(["__setitem__"], "setitem")
_add(["detach", "detach_", "requires_grad_"], "cut")


# -- modules that compute an element-wise function in several operations ---------------------
#: Module classes whose forward is an element-wise function of their one input, written in
#: several torch operations (e.g. Hugging Face's ``NewGELUActivation``:
#: ``0.5 x (1 + tanh(c (x + 0.044715 x³)))``).  Taken op by op, the constants inside
#: (``1 + ...``) would absorb relevance; as one element-wise function they get the identity
#: rule.  Hugging Face's own activation classes (those of ``transformers.activations.ACT2CLS``
#: defined by transformers, not torch's ``nn.ReLU`` etc. it also lists) are included when
#: transformers is imported.
ELEMENTWISE_MODULES: Set[type] = set()


def register_elementwise_module(cls: type) -> type:
    """Declare that modules of class ``cls`` compute an element-wise function of their one
    input (the identity rule then applies to the module as a whole).  Usable as a class
    decorator."""
    ELEMENTWISE_MODULES.add(cls)
    return cls


def _hf_activation_classes() -> Set[type]:
    acts = sys.modules.get("transformers.activations")
    table = getattr(acts, "ACT2CLS", None) if acts is not None else None
    if not table:
        return set()
    # ACT2CLS also maps names to torch's own modules (nn.ReLU, nn.ReLU6, nn.Sigmoid, ...):
    # those are one torch function each and keep their own treatment (ReLU-family rules,
    # gates), so only Hugging Face's own classes are taken
    classes = {v[0] if isinstance(v, tuple) else v for v in table.values() if isinstance(v, (type, tuple))}
    return {c for c in classes if isinstance(c, type) and c.__module__.startswith("transformers.")}


def is_elementwise_module(module: Any) -> bool:
    cls = type(module)
    return cls in ELEMENTWISE_MODULES or cls in _hf_activation_classes()


def supported_operations() -> Dict[str, list]:
    """``treatment -> sorted names``: the operations the engine propagates through."""
    out: Dict[str, list] = {}
    for name, op in OP_TABLE.items():
        out.setdefault(op.treatment, []).append(name)
    return {k: sorted(v) for k, v in sorted(out.items())}
