"""The data side of the Insights UI (:class:`VisualizerData`, the base of
:class:`~captum_rap.insights.AttributionVisualizer`): the examples of the dataset, the
model's predictions, the attributions and ACD hierarchies, each rendered as the JSON-ready
dict the API answers with.  It imports nothing of the server."""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from captum_rap._guard import ModelStateGuard
from captum_rap.insights import render
from captum_rap.insights.features import BaseFeature, GeneralFeature, ImageFeature, TextFeature
from captum_rap.insights.methods import (
    Limits,
    MethodSpec,
    RequestError,
    applicable_args,
    method_specs,
    occlusion_windows,
    run_method,
    validate_args,
)

__all__ = ["Batch", "VisualizerData"]

_LOG = logging.getLogger("captum_rap.insights")


class Batch:
    r"""A batch of examples for :class:`AttributionVisualizer`.

    Args:
        inputs (Tensor or tuple of Tensor): raw inputs, one tensor per feature, batch axis
            first (the feature's ``input_transforms`` turn them into model inputs).
        labels (Tensor, optional): true class index of every example, shape ``(N,)``.
        additional_args (Any, optional): extra forward arguments (tensors with a first axis
            of size N are split per example, anything else is passed as is).

    Examples::

        >>> batch = Batch(images, labels=torch.tensor([3, 5]))
    """

    def __init__(self, inputs: Union[Tensor, Tuple[Tensor, ...]], labels: Optional[Tensor],
                 additional_args: Any = None) -> None:
        self.inputs = inputs
        self.labels = labels
        self.additional_args = additional_args


@dataclass
class _Example:
    raw: Tuple[Tensor, ...]
    label: Optional[int]
    additional_args: Any


def _split_args(args: Any, i: int, n: int) -> Any:
    if args is None:
        return None
    seq = args if isinstance(args, tuple) else (args,)
    out = tuple(a[i:i + 1] if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == n else a for a in seq)
    return out if isinstance(args, tuple) else out[0]


class VisualizerData:
    r"""Examples, predictions, attributions and ACD of an Insights view, without the
    server (see :class:`~captum_rap.insights.AttributionVisualizer` for the arguments,
    which are its constructor's).  Requests run one at a time (``lock``)."""

    def __init__(
        self,
        models: Union[List[nn.Module], nn.Module],
        classes: List[str],
        features: Union[List[BaseFeature], BaseFeature],
        dataset: Iterable[Batch],
        score_func: Optional[Callable] = None,
        use_label_for_attr: bool = True,
        *,
        title: Optional[str] = None,
        limits: Optional[Limits] = None,
    ) -> None:
        self.models: List[Any] = list(models) if isinstance(models, (list, tuple)) else [models]
        if not self.models:
            raise ValueError("AttributionVisualizer needs at least one model")
        self.classes = [str(c) for c in classes]
        self.features: List[BaseFeature] = list(features) if isinstance(features, (list, tuple)) else [features]
        if not self.features:
            raise ValueError("AttributionVisualizer needs at least one feature")
        for f in self.features:
            if not isinstance(f, BaseFeature):
                raise TypeError(f"features must be BaseFeature objects, got {type(f).__name__}")
        self.dataset = dataset
        self.score_func = score_func
        self.use_label_for_attr = bool(use_label_for_attr)
        self.title = title or "Insights"
        self.limits = limits or Limits()
        self.lock = threading.RLock()  # one computation at a time (models are shared)
        self._examples: Optional[List[_Example]] = None
        self._predictions: Dict[int, List[np.ndarray]] = {}
        self._originals: Dict[int, List[Dict[str, Any]]] = {}
        self._specs: Optional[List[MethodSpec]] = None

    # ---- dataset ------------------------------------------------------------------
    @property
    def examples(self) -> List[_Example]:
        """The examples read from the dataset (read on first use, at most
        ``limits.max_dataset_examples``)."""
        if self._examples is None:
            with self.lock:
                if self._examples is None:
                    self._examples = self._load()
        return self._examples

    def _load(self) -> List[_Example]:
        out: List[_Example] = []
        cap = self.limits.max_dataset_examples
        for batch in self.dataset:
            inputs = batch.inputs if isinstance(batch.inputs, tuple) else (batch.inputs,)
            if len(inputs) != len(self.features):
                raise ValueError(f"a batch has {len(inputs)} input tensors but {len(self.features)} features "
                                 "were given")
            n = int(inputs[0].shape[0])
            labels = None if batch.labels is None else torch.as_tensor(batch.labels).reshape(-1)
            for i in range(n):
                if len(out) >= cap:
                    return out
                label = None if labels is None or labels.numel() == 0 else int(labels[i])
                if label is not None and not 0 <= label < len(self.classes):
                    raise ValueError(f"label {label} outside the {len(self.classes)} classes")
                out.append(_Example(tuple(t[i:i + 1].detach() for t in inputs), label,
                                    _split_args(batch.additional_args, i, n)))
        if not out:
            raise ValueError("the dataset yielded no examples")
        return out

    def model_inputs(self, index: int) -> Tuple[Tensor, ...]:
        ex = self.examples[index]
        return tuple(f.to_model_input(r) for f, r in zip(self.features, ex.raw))

    def baselines(self, inputs: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
        return tuple(f.baseline(x) for f, x in zip(self.features, inputs))

    # ---- kinds and methods ----------------------------------------------------------
    def input_kind(self) -> str:
        """``"image"``, ``"text"`` (a single feature of that type) or ``"other"``."""
        if len(self.features) == 1 and isinstance(self.features[0], ImageFeature):
            return "image"
        if len(self.features) == 1 and isinstance(self.features[0], TextFeature):
            return "text"
        return "other"

    def method_specs(self) -> List[MethodSpec]:
        """The methods this view offers, with their argument whitelists."""
        if self._specs is None:
            inputs = self.model_inputs(0)
            kind = self.input_kind()
            if kind == "text":
                x = inputs[0]
                if x.dim() != 2 or x.is_floating_point():
                    kind = "other"  # embeddings: gradient methods instead of token CD
            size = tuple(inputs[0].shape[-2:]) if kind == "image" else (1, 1)
            self._specs = method_specs(kind, size, self.limits,  # type: ignore[arg-type]
                                       float_inputs=all(x.is_floating_point() for x in inputs),
                                       single_input=len(inputs) == 1)
        return self._specs

    def method(self, name: Any) -> MethodSpec:
        for s in self.method_specs():
            if s.name == name:
                return s
        names = ", ".join(s.name for s in self.method_specs())
        raise RequestError(f"unknown method {_short(name)}; this view offers: {names}", field="method")

    # ---- predictions ------------------------------------------------------------------
    def _forward(self, model: Any, inputs: Tuple[Tensor, ...], additional_args: Any) -> Tensor:
        extra = () if additional_args is None else (
            additional_args if isinstance(additional_args, tuple) else (additional_args,))
        with torch.no_grad(), ModelStateGuard(model):  # a train-mode model keeps its BN statistics
            out = model(*inputs, *extra)
        if not isinstance(out, Tensor):
            raise RequestError("the model must return a tensor of class scores", status=422)
        return out

    def scores(self, model_index: int) -> List[np.ndarray]:
        """Class scores of every example for one model (``score_func`` of the outputs, else
        the softmax), computed once and cached."""
        if model_index not in self._predictions:
            with self.lock:
                if model_index not in self._predictions:
                    model = self.models[model_index]
                    res = []
                    for i in range(len(self.examples)):
                        out = self._forward(model, self.model_inputs(i), self.examples[i].additional_args)
                        out = out.reshape(1, -1).double()
                        if self.score_func is not None:
                            s = self.score_func(out)
                        else:
                            s = torch.softmax(out, dim=1) if out.shape[1] > 1 else torch.sigmoid(out)
                        res.append(torch.as_tensor(s).detach().reshape(-1).cpu().numpy())
                    self._predictions[model_index] = res
        return self._predictions[model_index]

    def prediction_info(self, model_index: int, index: int, top_k: int) -> Dict[str, Any]:
        s = self.scores(model_index)[index]
        ex = self.examples[index]
        order = np.argsort(-s, kind="stable")[:top_k]
        preds = [{"index": int(c), "name": self._class_name(int(c)), "score": float(s[c])} for c in order]
        predicted = int(order[0]) if len(order) else None
        return {"index": index, "label": ex.label,
                "label_name": None if ex.label is None else self._class_name(ex.label),
                "predicted": predicted, "predictions": preds,
                "correct": None if ex.label is None or predicted is None else predicted == ex.label}

    def _class_name(self, c: int) -> str:
        return self.classes[c] if 0 <= c < len(self.classes) else f"output {c}"

    # ---- originals ------------------------------------------------------------------
    def originals(self, index: int) -> List[Dict[str, Any]]:
        """Display data of one example, one entry per feature (cached)."""
        if index not in self._originals:
            ex = self.examples[index]
            out = []
            for f, raw in zip(self.features, ex.raw):
                item: Dict[str, Any] = {"name": f.name, "type": f.visualization_type()}
                if isinstance(f, ImageFeature):
                    item["png"] = render.png_base64(render.image_to_display(f.display_data(raw)))
                elif isinstance(f, TextFeature):
                    item["words"] = f.words(raw)
                elif isinstance(f, GeneralFeature):
                    vals = raw.reshape(-1).tolist()
                    item["values"] = [{"name": n, "value": float(v)} for n, v in zip(f.categories, vals)]
                else:
                    item["values"] = [float(v) for v in raw.reshape(-1).tolist()[:64]]
                out.append(item)
            self._originals[index] = out
        return self._originals[index]

    # ---- attribution ------------------------------------------------------------------
    def resolve_target(self, target: Any, model_index: int, index: int) -> int:
        ex = self.examples[index]
        if target is None:
            target = "label" if self.use_label_for_attr else "predicted"
        if target == "label":
            if ex.label is not None:
                return ex.label
            target = "predicted"
        if target == "predicted":
            return int(np.argmax(self.scores(model_index)[index]))
        if isinstance(target, bool) or not isinstance(target, int):
            raise RequestError(f"'target' must be null, \"label\", \"predicted\" or a class index, "
                               f"got {_short(target)}", field="target")
        n_out = len(self.scores(model_index)[index])
        if not 0 <= target < n_out:
            raise RequestError(f"'target' {target} outside the model's {n_out} outputs", field="target")
        return target

    def check_budget(self, spec: MethodSpec, args: Dict[str, Any], indices: Sequence[int]) -> None:
        """Refuse requests whose work exceeds :class:`Limits` (413)."""
        lim = self.limits
        n = len(indices)
        shape = tuple(self.model_inputs(indices[0])[0].shape[1:])
        if spec.name == "IntegratedGradients" and args["n_steps"] * n > lim.max_ig_evaluations:
            raise RequestError(f"IntegratedGradients: n_steps x examples = {args['n_steps'] * n} exceeds "
                               f"{lim.max_ig_evaluations}; use fewer steps or examples", status=413, field="args")
        if spec.name == "Occlusion":
            if args["stride"] > args["window"]:  # Captum asserts; windows would skip pixels
                raise RequestError(f"Occlusion: stride ({args['stride']}) must not exceed window "
                                   f"({args['window']}): pixels between the windows would never be occluded",
                                   field="args")
            total = n * sum(occlusion_windows(tuple(x.shape[1:]), args["window"], args["stride"])
                            for x in self.model_inputs(indices[0]))
            if total > lim.max_occlusion_windows:
                raise RequestError(f"Occlusion: {total} windows for {n} example(s) exceeds "
                                   f"{lim.max_occlusion_windows}; use a larger window / stride or fewer "
                                   "examples", status=413, field="args")
        if spec.name == "CD":
            groups = math.ceil(shape[-2] / args["block"]) * math.ceil(shape[-1] / args["block"]) \
                if "block" in args else int(np.prod(shape))
            if groups > lim.max_cd_groups:
                raise RequestError(f"CD: {groups} groups per example exceeds {lim.max_cd_groups}; use a larger "
                                   "block", status=413, field="args")

    def attribute(self, model_index: int, method: str, args: Any, indices: Sequence[int],
                  target: Any = None) -> Dict[str, Any]:
        """Run a method on examples and render the results (used by ``/api/attribute``).

        Raises:
            RequestError: invalid request (4xx) or a method error (422).
        """
        spec = self.method(method)
        if spec.endpoint != "attribute":
            raise RequestError(f"{spec.name} builds a hierarchy: use /api/acd", field="method")
        checked = validate_args(spec, args)
        used, ignored = applicable_args(spec, checked, args)
        self.check_budget(spec, checked, indices)
        model = self.models[model_index]
        results = []
        with self.lock:
            for index in indices:
                t = self.resolve_target(target, model_index, index)
                inputs = self.model_inputs(index)
                ex = self.examples[index]
                with _method_errors(spec.name), ModelStateGuard(model):  # train mode: BN statistics kept
                    attrs = run_method(spec.name, used, model, inputs, self.baselines(inputs), t,
                                       ex.additional_args, cd_block=_block_mask)
                results.append({"index": index, "target": t, "target_name": self._class_name(t),
                                "features": self._render_attrs(index, attrs)})
        # ``args``: the arguments the method used; ``ignored_args``: given ones that do not apply
        return {"method": spec.name, "args": used, "ignored_args": ignored, "model": model_index,
                "results": results}

    def _render_attrs(self, index: int, attrs: Tuple[Tensor, ...]) -> List[Dict[str, Any]]:
        out = []
        ex = self.examples[index]
        totals = [float(a.detach().double().sum()) for a in attrs]
        norm = sum(abs(t) for t in totals) or 1.0
        for f, a, raw, total in zip(self.features, attrs, ex.raw, totals):
            item: Dict[str, Any] = {"name": f.name, "type": f.visualization_type(), "sum": total,
                                    "contribution": total / norm}
            if isinstance(f, ImageFeature):
                heat = render.signed_map(a)
                png, lim = render.heatmap_png(heat)
                item.update(heatmap=png, limit=lim, shape=list(heat.shape),
                            positive=float(heat[heat > 0].sum()), negative=float(heat[heat < 0].sum()))
                shown = render.image_to_display(f.display_data(raw))
                if shown.shape[:2] == heat.shape:
                    item["overlay"] = render.overlay_png(heat, shown, lim)
            elif isinstance(f, TextFeature):
                item["words"] = f.words(raw)
                item["scores"] = render.token_scores(a)
            elif isinstance(f, GeneralFeature):
                item["values"] = render.general_values(a, raw, f.categories)
            else:
                item["values"] = render.general_values(a, raw, [])
            out.append(item)
        return out

    # ---- ACD --------------------------------------------------------------------------
    def acd(self, model_index: int, args: Any, index: int, target: Any = None) -> Dict[str, Any]:
        """ACD hierarchy of one example, rendered per level (used by ``/api/acd``)."""
        from captum_rap import ACD

        spec = self.method("ACD")
        checked = validate_args(spec, args)
        kind = self.input_kind()
        inputs = self.model_inputs(index)
        x = inputs[0]
        model = self.models[model_index]
        ex = self.examples[index]
        if kind == "image":
            H, W = x.shape[-2:]
            s = checked["sweep_dim"]
            blocks = math.ceil(H / s) * math.ceil(W / s)
            if blocks > self.limits.max_acd_blocks:
                raise RequestError(f"ACD: {blocks} blocks exceeds {self.limits.max_acd_blocks}; use a larger "
                                   "sweep_dim", status=413, field="args")
        else:
            if x.shape[-1] > self.limits.max_acd_tokens:
                raise RequestError(f"ACD: {x.shape[-1]} tokens exceeds {self.limits.max_acd_tokens}",
                                   status=413)
        with self.lock:
            t = self.resolve_target(target, model_index, index)
            with _method_errors("ACD"), ModelStateGuard(model):
                if kind == "image":
                    h = ACD(model).hierarchy(x, target=t, sweep_dim=checked["sweep_dim"],
                                             percentile_include=checked["percentile_include"],
                                             num_iters=checked["num_iters"], additional_forward_args=ex.additional_args)
                else:
                    words = self.features[0].words(ex.raw[0])  # type: ignore[attr-defined]
                    h = ACD(model).hierarchy_text(x, target=t, percentile_include=checked["percentile_include"],
                                                  num_iters=checked["num_iters"], words=words,
                                                  additional_forward_args=ex.additional_args)
        base = {"model": model_index, "index": index, "target": t, "target_name": self._class_name(t),
                "args": checked, "kind": h.kind, "cd_evaluations": h.cd_evaluations}
        if h.kind == "image":
            base.update(self._acd_image(h, ex))
        else:
            base.update(self._acd_text(h))
        return base

    def _acd_image(self, h: Any, ex: _Example) -> Dict[str, Any]:
        shown = render.image_to_display(self.features[0].display_data(ex.raw[0]))
        feat_shape = None
        levels = []
        top = max((abs(g.score) for g in h.walk()), default=1.0) or 1.0
        for lev in range(len(h)):
            groups = h.groups(lev)
            lim = max((abs(g.score) for g in groups), default=top) or top  # per-level colour scale
            if feat_shape is None and groups:
                feat_shape = groups[0].mask.shape
            image = shown if feat_shape is not None and shown.shape[:2] == tuple(feat_shape) else None
            png = render.groups_overlay_png([g.mask for g in groups], [g.score for g in groups], image, lim) \
                if groups else render.png_base64(shown)
            levels.append({"level": lev, "png": png, "limit": lim,
                           "groups": [{"id": int(g.id), "size": g.size, "score": float(g.score)} for g in groups]})
        unit = np.asarray(h.unit_scores, dtype=float)
        unit_png, unit_lim = render.heatmap_png(unit)
        return {"levels": levels, "limit": top, "num_before_final": h.num_before_final,
                "unit_heatmap": unit_png, "unit_limit": unit_lim}

    def _acd_text(self, h: Any) -> Dict[str, Any]:
        words = list(h.words or [str(i) for i in range(len(h.unit_scores))])
        T = len(words)
        rows: List[List[Optional[float]]] = []
        levels = []
        for lev in range(len(h)):
            row: List[Optional[float]] = [None] * T
            groups = []
            for g in h.groups(lev):
                idx = np.flatnonzero(g.mask)
                for i in idx:
                    row[int(i)] = float(g.score)
                groups.append({"id": int(g.id), "start": int(idx.min()), "end": int(idx.max()),
                               "score": float(g.score), "text": " ".join(words[int(i)] for i in idx)})
            rows.append(row)
            levels.append({"level": lev, "scores": row, "groups": groups})
        vals = [abs(v) for r in rows for v in r if v is not None]
        lim = max(vals, default=1.0) or 1.0
        return {"words": words, "levels": levels, "limit": lim,
                "png": render.text_levels_png(words, rows, lim)}


def _block_mask(x: Tensor, block: int) -> Tensor:
    """Integer ids of ``block x block`` squares over the last two axes of an image input."""
    H, W = x.shape[-2:]
    gw = math.ceil(W / block)
    rows = torch.arange(H) // block
    cols = torch.arange(W) // block
    ids = rows[:, None] * gw + cols[None, :]
    return ids.reshape((1,) * (x.dim() - 2) + (H, W))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _method_errors:
    """Turn errors raised by a method into 422 request errors with the method's message."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or isinstance(exc, RequestError):
            return False
        from captum_rap import UnsupportedOperationError

        if isinstance(exc, (UnsupportedOperationError, ValueError, NotImplementedError, TypeError,
                            RuntimeError, IndexError, AssertionError)):
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if len(msg) > 500:
                msg = msg[:497] + "..."
            _LOG.info("%s failed: %s", self.name, exc)
            raise RequestError(f"{self.name} failed on this model: {type(exc).__name__}: {msg}",
                               status=422) from exc
        return False
