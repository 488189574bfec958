r"""Quantus interoperability: :func:`explain_func`, an explanation function that every
Quantus metric accepts (``explain_func=captum_rap.quantus.explain_func``).

`Quantus <https://github.com/understandable-machine-intelligence-lab/Quantus>`_ (``pip
install "captum-rap[quantus]"``) calls ``explain_func(model=..., inputs=..., targets=...,
**explain_func_kwargs)`` with numpy arrays and expects a numpy array back; the method is
chosen with ``explain_func_kwargs={"method": ...}`` using the names of the command line
(``captum-rap explain --method``), plus ``"cd"``:

===================  ======================================================================
``method``           what runs
===================  ======================================================================
``"rap"``            :class:`~captum_rap.RAP` (signed map)
``"lrp"``            :class:`~captum_rap.LRP` with the command line's default preset
``"lrp:PRESET"``     :class:`~captum_rap.LRP` with a preset (``"lrp:epsilon_plus"``, ...)
``"clrp1"``          :class:`~captum_rap.CLRP` ``variant=1``
``"clrp2"``          :class:`~captum_rap.CLRP` ``variant=2``
``"sglrp"``          :class:`~captum_rap.SGLRP`
``"cd"``             :class:`~captum_rap.CD` with a feature mask (``feature_mask=`` or
                     ``block=``: square blocks of that many pixels)
===================  ======================================================================

Any other keyword is passed to the method's constructor (``low``, ``high``, ``epsilon``,
``stabilizer``, ``composite``, ...) and checked against it: an unknown one raises
``TypeError``.  This module does not import Quantus.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Dict, Optional, Sequence, Set

import numpy as np
import torch
from torch import Tensor, nn

from .cli.common import DEFAULT_LRP_PRESET, METHODS, CLIError, parse_method

__all__ = ["explain_func", "METHOD_NAMES"]

#: the ``method`` names :func:`explain_func` accepts (``"lrp:PRESET"`` for any preset)
METHOD_NAMES = tuple(m for m in METHODS if m != "acd") + ("cd",)

_ADAPTER_KEYS = {"method", "device", "reduce_axes", "keepdims", "feature_mask", "block"}


def _init_params(fn: Any, skip: Sequence[str] = ("self", "model")) -> Set[str]:
    """Named parameters of a callable (no ``*args`` / ``**kwargs``)."""
    out = set()
    for name, p in inspect.signature(fn).parameters.items():
        if name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out.add(name)
    return out


def _allowed(method: str, preset: Optional[str], kwargs: Dict[str, Any]) -> Set[str]:
    from . import CD, CLRP, LRP, RAP, SGLRP
    from .composites import PRESETS

    if method == "rap":
        return _init_params(RAP.__init__)
    if method == "cd":
        return _init_params(CD.__init__)
    cls = {"lrp": LRP, "clrp1": CLRP, "clrp2": CLRP, "sglrp": SGLRP}[method]
    allowed = _init_params(cls.__init__) | {"relevance_filter"}
    allowed.discard("variant")
    if method == "lrp":
        allowed.discard("composite")
        base = preset
    else:
        base = kwargs.get("composite", "zplus_box")
    if isinstance(base, str):
        key = base.lower().replace("-", "_")
        if key not in PRESETS:
            raise ValueError(f"explain_func: unknown LRP preset {base!r}; choose one of {sorted(PRESETS)}")
        allowed |= _init_params(PRESETS[key], skip=())
    return allowed


def _block_mask(x: Tensor, block: Any) -> Tensor:
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"explain_func: block must be a positive integer (pixels), got {block!r}")
    if x.dim() != 4:
        raise ValueError(f"explain_func: block= needs image inputs (N, C, H, W), got shape {tuple(x.shape)}; "
                         "pass feature_mask= instead")
    h, w = x.shape[-2:]
    rows = torch.arange(h, device=x.device) // block
    cols = torch.arange(w, device=x.device) // block
    return (rows.view(-1, 1) * math.ceil(w / block) + cols.view(1, -1)).view(1, 1, h, w)


def explain_func(model: nn.Module, inputs: Any, targets: Any, **kwargs: Any) -> np.ndarray:
    r"""Explanations of ``model`` for ``inputs`` and ``targets`` in Quantus' format.

    Args:
        model (nn.Module): the model (Quantus passes the unwrapped torch model; in
            ``MPRT`` a randomised copy).
        inputs (np.ndarray or Tensor): (N, C, ...) inputs, channels first (as Quantus hands
            them to explanation functions).
        targets (np.ndarray, Tensor, int or sequence of int): the class per example.
        method (str): ``"rap"``, ``"lrp"``, ``"lrp:PRESET"``, ``"clrp1"``, ``"clrp2"``,
            ``"sglrp"`` or ``"cd"`` (see the module docstring).  Required.
        device (str or torch.device, optional): where the inputs go (Quantus adds its
            ``device`` argument here).  Default: the model's device.
        reduce_axes (sequence of int, optional): axes summed in the returned map, as
            Quantus' own ``explain`` for Captum methods.  Default: ``(1,)`` (channels) for
            inputs with at least 3 dims, none otherwise.
        keepdims (bool, optional): keep the summed axes (size 1).  Default: True.
        feature_mask (array or Tensor, ``"cd"`` only): integer group ids broadcastable to
            the inputs (first axis 1 or N).
        block (int, ``"cd"`` only): square blocks of ``block`` pixels as the groups of an
            image input.
        **kwargs: constructor arguments of the method, e.g. ``low=-1.0, high=1.0`` for
            the box presets, CLRP and SGLRP, ``stabilizer`` for RAP, ``epsilon`` for LRP.

    Returns:
        np.ndarray: the attributions (float, the inputs' dtype), reduced over
        ``reduce_axes``.

    Raises:
        TypeError: a keyword the method does not take.
        ValueError: unknown method or preset, no ``method``, ``"cd"`` without a mask,
            ``"acd"`` (not a per-feature attribution map), bad shapes.

    Examples::

        >>> import quantus
        >>> from captum_rap.quantus import explain_func
        >>> metric = quantus.RandomLogit(num_classes=10, disable_warnings=True)
        >>> scores = metric(model=model, x_batch=x, y_batch=y, explain_func=explain_func,
        ...                 explain_func_kwargs={"method": "lrp:epsilon_plus"})
    """
    from . import CD, CLRP, LRP, RAP, SGLRP

    if "method" not in kwargs:
        raise ValueError("explain_func: give the method, e.g. explain_func_kwargs={'method': 'rap'}; one of "
                         f"{', '.join(METHOD_NAMES)} or lrp:PRESET")
    spec = kwargs.pop("method")
    if not isinstance(spec, str):
        raise ValueError(f"explain_func: method must be a string, got {spec!r}")
    if spec.strip().lower() == "cd":
        method, preset = "cd", None
    elif spec.strip().lower() == "acd":
        raise ValueError("explain_func: 'acd' builds a hierarchy, not a per-feature map; use 'cd' with a "
                         "feature_mask or block")
    else:
        try:
            method, preset = parse_method(spec)
        except CLIError as exc:
            raise ValueError(f"explain_func: {exc}") from None
    device = kwargs.pop("device", None)
    reduce_axes = kwargs.pop("reduce_axes", None)
    keepdims = kwargs.pop("keepdims", True)
    feature_mask = kwargs.pop("feature_mask", None)
    block = kwargs.pop("block", None)
    if method != "cd" and (feature_mask is not None or block is not None):
        raise TypeError(f"explain_func: feature_mask / block apply to method 'cd' only, not {spec!r}")
    allowed = _allowed(method, preset, kwargs)
    unknown = sorted(k for k in kwargs if k not in allowed)
    if unknown:
        raise TypeError(f"explain_func: unexpected keyword(s) {unknown} for method {spec!r}; it takes "
                        f"{sorted(allowed | _ADAPTER_KEYS)}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"explain_func: model must be a torch nn.Module, got {type(model).__name__}")

    param = next(iter(model.parameters()), None)
    dev = torch.device(device) if device is not None else (param.device if param is not None else torch.device("cpu"))
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.get_default_dtype()
    if isinstance(inputs, Tensor):
        x = inputs.detach().to(device=dev)
        x = x.to(dtype) if x.is_floating_point() else x
    else:
        arr = np.asarray(inputs)
        x = torch.as_tensor(arr, device=dev)
        x = x.to(dtype) if x.is_floating_point() else x
    n = x.shape[0]
    if isinstance(targets, Tensor):
        t = targets.detach().to(device=dev, dtype=torch.long).reshape(-1)
    else:
        t = torch.as_tensor(np.asarray(targets), device=dev).to(torch.long).reshape(-1)
    if t.numel() == 1 and n != 1:
        t = t.expand(n)
    if t.numel() != n:
        raise ValueError(f"explain_func: {t.numel()} targets for {n} inputs")

    if method == "rap":
        attr = RAP(model, **kwargs).attribute(x, target=t)
    elif method == "lrp":
        attr = LRP(model, preset or DEFAULT_LRP_PRESET, **kwargs).attribute(x, target=t)
    elif method in ("clrp1", "clrp2"):
        attr = CLRP(model, variant=int(method[-1]), **kwargs).attribute(x, target=t)
    elif method == "sglrp":
        attr = SGLRP(model, **kwargs).attribute(x, target=t)
    else:
        if feature_mask is None and block is None:
            raise ValueError("explain_func: method 'cd' needs feature_mask= (integer group ids) or block= "
                             "(square blocks of that many pixels); CD of every single feature is one mask "
                             "per input value")
        if feature_mask is not None and block is not None:
            raise ValueError("explain_func: give feature_mask or block, not both")
        if feature_mask is not None:
            mask = torch.as_tensor(np.asarray(feature_mask) if not isinstance(feature_mask, Tensor)
                                   else feature_mask, device=dev)
            if mask.is_floating_point():
                if not bool((mask == mask.round()).all()):
                    raise ValueError("explain_func: feature_mask must hold integer group ids")
                mask = mask.to(torch.long)
        else:
            mask = _block_mask(x, block)
        attr = CD(model, **kwargs).attribute(x, target=t, feature_mask=mask)
    attr = attr[0] if isinstance(attr, (tuple, list)) else attr
    out = attr.detach()
    axes = tuple(reduce_axes) if reduce_axes is not None else ((1,) if out.dim() >= 3 else ())
    if 0 in axes or any(not -out.dim() < a < out.dim() for a in axes if a != 0):
        raise ValueError(f"explain_func: reduce_axes {axes} must not include the batch axis 0 and must lie "
                         f"within the {out.dim()} axes")
    if axes:
        out = out.sum(dim=axes, keepdim=bool(keepdims))
    return out.cpu().numpy()
