"""Attribution methods offered by the Insights UI, each with a whitelist of arguments.

Every argument declares its type, default and allowed range or choices; requests are
validated against these specs before any computation (see :func:`validate_args`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from torch import Tensor

from captum_rap.composites import PRESETS, preset_keywords

__all__ = ["ArgSpec", "MethodSpec", "RequestError", "Limits", "method_specs", "validate_args",
           "applicable_args"]


class RequestError(Exception):
    """A request that cannot be served as asked (answered with a 4xx JSON error).

    Args:
        message (str): explanation for the user.
        status (int): HTTP status (400 bad request, 413 too large, 422 the method failed).
        field (str, optional): the offending request field.
    """

    def __init__(self, message: str, status: int = 400, field: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.field = field


@dataclass
class Limits:
    """Bounds on the work one request may ask for.

    Attributes:
        max_examples_per_request (int): examples per ``/api/attribute`` call.
        max_page_size (int): examples per ``/api/examples`` page.
        max_top_k (int): predictions listed per example.
        max_ig_evaluations (int): ``n_steps x examples`` for Integrated Gradients.
        max_occlusion_windows (int): occlusion windows x examples per request.
        max_cd_groups (int): CD blocks (or tokens) per example.
        max_acd_blocks (int): ACD grid blocks of an image.
        max_acd_tokens (int): tokens of a text explained by ACD.
        max_dataset_examples (int): examples read from the dataset at most.
        max_waiting_requests (int): computing requests that may wait for a busy model
            (one computes at a time); more are answered 503 at once.
        max_wait_seconds (float): how long a request waits for a busy model before a 503.
    """

    max_examples_per_request: int = 8
    max_page_size: int = 48
    max_top_k: int = 10
    max_ig_evaluations: int = 400
    max_occlusion_windows: int = 2048
    max_cd_groups: int = 1024
    max_acd_blocks: int = 256
    max_acd_tokens: int = 64
    max_dataset_examples: int = 500
    max_waiting_requests: int = 2
    max_wait_seconds: float = 30.0


@dataclass
class ArgSpec:
    """One argument of a method.

    Attributes:
        name (str): argument name.
        kind (str): ``"int"``, ``"float"``, ``"bool"`` or ``"choice"``.
        default: default value.
        help (str): one-line description.
        minimum / maximum (float, optional): inclusive range (int / float).
        choices (list, optional): allowed values (choice).
        only_with (tuple, optional): ``(other argument, allowed values)``: the argument
            applies only when the other argument has one of these values (e.g. ``gamma``
            only with the preset ``epsilon_gamma_box``); otherwise it is not used, not
            sent by the page and not echoed as applied.
    """

    name: str
    kind: str
    default: Any
    help: str = ""
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    choices: Optional[List[Any]] = None
    only_with: Optional[Tuple[str, List[Any]]] = None

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"name": self.name, "type": self.kind, "default": self.default,
                               "help": self.help}
        if self.only_with is not None:
            out["only_with"] = {"arg": self.only_with[0], "values": list(self.only_with[1])}
        if self.minimum is not None:
            out["min"] = self.minimum
        if self.maximum is not None:
            out["max"] = self.maximum
        if self.choices is not None:
            out["choices"] = list(self.choices)
        return out

    def check(self, value: Any, method: str) -> Any:
        where = f"argument {self.name!r} of {method}"
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise RequestError(f"{where} must be true or false, got {_show(value)}", field=self.name)
            return value
        if self.kind == "choice":
            assert self.choices is not None
            for c in self.choices:
                if type(c) is type(value) and c == value:
                    return value
            raise RequestError(f"{where} must be one of {self.choices}, got {_show(value)}", field=self.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RequestError(f"{where} must be a number, got {_show(value)}", field=self.name)
        if self.kind == "int":
            if not isinstance(value, int):
                raise RequestError(f"{where} must be an integer, got {_show(value)}", field=self.name)
        else:
            try:
                finite = math.isfinite(float(value))
            except OverflowError:  # an integer too large for a float
                finite = False
            if not finite:
                raise RequestError(f"{where} must be finite, got {_show(value)}", field=self.name)
        if (self.minimum is not None and value < self.minimum) or (self.maximum is not None and value > self.maximum):
            raise RequestError(f"{where} must lie in [{self.minimum}, {self.maximum}], got {value}",
                               field=self.name)
        return int(value) if self.kind == "int" else float(value)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass
class MethodSpec:
    """A method of the UI.

    Attributes:
        name (str): identifier used in requests (``"RAP"``, ``"LRP"``, ...).
        family (str): ``"propagation"``, ``"contrastive"``, ``"cd"``, ``"acd"``, ``"captum"``.
        description (str): one line for the UI.
        args (list of ArgSpec): the accepted arguments (nothing else is accepted).
        endpoint (str): ``"attribute"`` or ``"acd"`` (the API call that runs it).
    """

    name: str
    family: str
    description: str
    args: List[ArgSpec] = field(default_factory=list)
    endpoint: str = "attribute"

    def to_json(self) -> Dict[str, Any]:
        return {"name": self.name, "family": self.family, "description": self.description,
                "endpoint": self.endpoint, "args": [a.to_json() for a in self.args]}

    def defaults(self) -> Dict[str, Any]:
        return {a.name: a.default for a in self.args}


def validate_args(spec: MethodSpec, args: Any) -> Dict[str, Any]:
    """Check ``args`` (a JSON object) against the method's whitelist; fill in defaults.

    Raises:
        RequestError: not an object, an unknown argument, a wrong type or a value out of
            range.
    """
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise RequestError(f"'args' must be a JSON object, got {_show(args)}", field="args")
    known = {a.name: a for a in spec.args}
    for k in args:
        if k not in known:
            allowed = ", ".join(sorted(known)) or "none"
            raise RequestError(f"unknown argument {_show(k)} for {spec.name}; allowed: {allowed}", field="args")
    out = spec.defaults()
    for k, v in args.items():
        out[k] = known[k].check(v, spec.name)
    return out


def applicable_args(spec: MethodSpec, checked: Dict[str, Any], given: Any) -> Tuple[Dict[str, Any], List[str]]:
    """Split validated arguments into those the method uses with these settings and the
    names of those it ignores (an ``only_with`` condition fails) that the request gave."""
    given_names = set(given) if isinstance(given, dict) else set()
    used: Dict[str, Any] = {}
    ignored: List[str] = []
    for a in spec.args:
        if a.name not in checked:
            continue
        if a.only_with is not None and checked.get(a.only_with[0]) not in a.only_with[1]:
            if a.name in given_names:
                ignored.append(a.name)
            continue
        used[a.name] = checked[a.name]
    return used, ignored


def _presets_taking(keyword: str) -> List[str]:
    return [p for p in sorted(PRESETS) if keyword in preset_keywords(p)]


# --------------------------------------------------------------------------- the specs
def method_specs(input_kind: str, image_size: Tuple[int, int] = (224, 224), limits: Optional[Limits] = None,
                 float_inputs: bool = True, single_input: bool = True) -> List[MethodSpec]:
    """The methods offered for a view.

    Args:
        input_kind (str): ``"image"`` (one image feature), ``"text"`` (one token feature)
            or ``"other"``.
        image_size (tuple): (H, W) of the model input (sets the ranges of block sizes).
        limits (Limits, optional): request bounds.
        float_inputs (bool): all model inputs are floating point (gradient and propagation
            methods need that).
        single_input (bool): the model takes a single input tensor (CD / ACD need that).

    Returns:
        list of MethodSpec.
    """
    lim = limits or Limits()
    H, W = image_size
    side = max(H, W)
    presets = sorted(PRESETS)
    specs: List[MethodSpec] = []
    if float_inputs:
        specs += [
            MethodSpec("RAP", "propagation", "Relative Attributing Propagation: relevant (red) and irrelevant (blue) parts", [
                ArgSpec("stabilizer", "float", 0.0, "added to denominators", 0.0, 1.0),
                ArgSpec("operations", "choice", "cp_lrp", "products and softmax (attention, gates): CP-LRP's "
                        "constants or AttnLRP's rules", choices=["cp_lrp", "attnlrp"])]),
            MethodSpec("LRP", "propagation", "Layer-wise Relevance Propagation with a rule preset", [
                ArgSpec("preset", "choice", "epsilon_plus", "rule preset", choices=presets),
                ArgSpec("epsilon", "float", 1e-6, "epsilon of the epsilon rule", 0.0, 10.0,
                        only_with=("preset", _presets_taking("epsilon"))),
                ArgSpec("gamma", "float", 0.25, "gamma of epsilon_gamma_box", 0.0, 10.0,
                        only_with=("preset", _presets_taking("gamma"))),
                ArgSpec("relevance_filter", "float", 0.0, "keep this top fraction of relevance per layer (0 = off)",
                        0.0, 1.0),
                ArgSpec("merge_batchnorm", "bool", True, "fold batch norm into the preceding layer")]),
            MethodSpec("CLRP", "contrastive", "Contrastive LRP: target against 'not the target'", [
                ArgSpec("variant", "choice", 1, "1: all other classes, 2: negated target weights", choices=[1, 2]),
                ArgSpec("preset", "choice", "zplus_box", "base LRP preset", choices=presets),
                ArgSpec("normalize", "choice", "none", "'sum' as the official code", choices=["none", "sum"]),
                ArgSpec("seeds", "choice", "paper", "starting relevance", choices=["paper", "code"])]),
            MethodSpec("SGLRP", "contrastive", "Softmax-Gradient LRP", [
                ArgSpec("preset", "choice", "zplus_box", "base LRP preset", choices=presets),
                ArgSpec("scaling", "bool", True, "scale the dual map to the target map's total"),
                ArgSpec("relu", "bool", False, "keep only positive relevance")]),
        ]
    if single_input and input_kind == "image":
        min_cd = max(1, math.ceil(side / math.isqrt(lim.max_cd_groups)))
        min_acd = max(1, math.ceil(side / math.isqrt(lim.max_acd_blocks)))
        specs += [
            MethodSpec("CD", "cd", "Contextual Decomposition score of every square block", [
                ArgSpec("block", "int", max(min_cd, math.ceil(side / 16)), "block size in pixels", min_cd, side)]),
            MethodSpec("ACD", "acd", "Agglomerative CD: hierarchy of pixel groups (levels slider)", [
                ArgSpec("sweep_dim", "int", max(min_acd, math.ceil(side / 8)), "block size in pixels", min_acd,
                        max(min_acd, side - 1)),  # one block for the whole image: nothing to grow
                ArgSpec("percentile_include", "float", 95.0, "percentile of block scores grown per step", 15.0, 99.9),
                ArgSpec("num_iters", "int", 5, "growth steps before merging", 1, 10)], endpoint="acd"),
        ]
    elif single_input and input_kind == "text":
        specs += [
            MethodSpec("CD", "cd", "Contextual Decomposition score of every word", []),
            MethodSpec("ACD", "acd", "Agglomerative CD: hierarchy of phrases (levels x words)", [
                ArgSpec("percentile_include", "float", 99.5, "percentile of |phrase score| grown per step", 15.0, 99.9),
                ArgSpec("num_iters", "int", 25, "maximal growth steps", 1, 40)], endpoint="acd"),
        ]
    if float_inputs:
        min_win = max(1, math.ceil(side / 64))
        specs += [
            MethodSpec("IntegratedGradients", "captum", "Captum: Integrated Gradients from the feature baselines", [
                ArgSpec("n_steps", "int", 25, "integration steps", 2, lim.max_ig_evaluations),
                ArgSpec("method", "choice", "gausslegendre", "integration rule",
                        choices=["gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right",
                                 "riemann_middle"])]),
            MethodSpec("Saliency", "captum", "Captum: gradient of the target output", [
                ArgSpec("abs", "bool", True, "absolute value of the gradient")]),
            MethodSpec("InputXGradient", "captum", "Captum: input times gradient", []),
            MethodSpec("Occlusion", "captum", "Captum: output drop when a square window is replaced by the baseline", [
                ArgSpec("window", "int", max(min_win, math.ceil(side / 7)), "window size in pixels (images)",
                        1, side),
                ArgSpec("stride", "int", max(min_win, math.ceil(side / 14)), "window stride in pixels (images)",
                        1, side)]),
        ]
    return specs


# --------------------------------------------------------------------------- runners
def occlusion_windows(shape: Sequence[int], window: int, stride: int) -> int:
    """Number of window positions of Captum's Occlusion over ``shape`` (without batch axis),
    with windows ``(C, window, window)`` on images and ``(1,) * d`` elsewhere."""
    if len(shape) == 3:
        h, w = shape[1], shape[2]
        win_h, win_w = min(window, h), min(window, w)
        return ((h - win_h) // stride + 1) * ((w - win_w) // stride + 1)
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _occlusion_shapes(inputs: Tuple[Tensor, ...], window: int, stride: int):
    wins, strides = [], []
    for x in inputs:
        shape = tuple(x.shape[1:])
        if len(shape) == 3:
            wins.append((shape[0], min(window, shape[1]), min(window, shape[2])))
            strides.append((shape[0], stride, stride))
        else:
            wins.append((1,) * len(shape))
            strides.append((1,) * len(shape))
    return tuple(wins), tuple(strides)


def run_method(name: str, args: Dict[str, Any], model: Callable, inputs: Tuple[Tensor, ...],
               baselines: Tuple[Tensor, ...], target: int, additional_args: Any,
               cd_block: Optional[Callable[[Tensor, int], Tensor]] = None) -> Tuple[Tensor, ...]:
    """Run one validated method on one example; returns one attribution per input.

    ``cd_block(x, block)`` builds the block feature mask of an image input for CD.
    """
    from captum_rap import CD, CLRP, LRP, RAP, SGLRP

    afa = additional_args
    if name == "RAP":
        out = RAP(model, stabilizer=args["stabilizer"], operations=args["operations"]).attribute(
            inputs, target=target, additional_forward_args=afa)
    elif name == "LRP":
        # only the keywords the preset takes (see applicable_args)
        kw: Dict[str, Any] = {k: args[k] for k in ("epsilon", "gamma") if k in args}
        if args["relevance_filter"] > 0:
            kw["relevance_filter"] = args["relevance_filter"]
        lrp = LRP(model, args["preset"], merge_batchnorm=args["merge_batchnorm"], **kw)
        out = lrp.attribute(inputs, target=target, additional_forward_args=afa)
    elif name == "CLRP":
        out = CLRP(model, variant=args["variant"], composite=args["preset"], normalize=args["normalize"],
                   seeds=args["seeds"]).attribute(inputs, target=target, additional_forward_args=afa)
    elif name == "SGLRP":
        out = SGLRP(model, args["preset"], scaling=args["scaling"], relu=args["relu"]).attribute(
            inputs, target=target, additional_forward_args=afa)
    elif name == "CD":
        x = inputs[0]
        mask = cd_block(x, args["block"]) if "block" in args and cd_block is not None else None
        out = CD(model).attribute(x, target=target, feature_mask=mask, additional_forward_args=afa)
    elif name == "IntegratedGradients":
        from captum.attr import IntegratedGradients

        out = IntegratedGradients(model).attribute(inputs, baselines=baselines, target=target,
                                                   additional_forward_args=afa, n_steps=args["n_steps"],
                                                   method=args["method"], internal_batch_size=16)
    elif name == "Saliency":
        from captum.attr import Saliency

        inputs = tuple(x.detach().clone().requires_grad_() for x in inputs)
        out = Saliency(model).attribute(inputs, target=target, abs=args["abs"], additional_forward_args=afa)
    elif name == "InputXGradient":
        from captum.attr import InputXGradient

        inputs = tuple(x.detach().clone().requires_grad_() for x in inputs)
        out = InputXGradient(model).attribute(inputs, target=target, additional_forward_args=afa)
    elif name == "Occlusion":
        from captum.attr import Occlusion

        if args["stride"] > args["window"]:  # Captum asserts; windows would skip pixels
            raise RequestError(f"Occlusion: stride ({args['stride']}) must not exceed window ({args['window']}): "
                               "pixels between the windows would never be occluded", field="args")
        wins, strides = _occlusion_shapes(inputs, args["window"], args["stride"])
        out = Occlusion(model).attribute(inputs, sliding_window_shapes=wins, strides=strides,
                                         baselines=baselines, target=target, additional_forward_args=afa,
                                         perturbations_per_eval=16)
    else:  # pragma: no cover - names are validated before
        raise RequestError(f"unknown method {name!r}")
    if isinstance(out, Tensor):
        out = (out,)
    return tuple(out)
