r"""The model-parameter randomisation test (public through :mod:`captum_rap.metrics`).

* :func:`parameter_randomization`: the test of Adebayo, Gilmer, Muelly, Goodfellow, Hardt &
  Kim ("Sanity checks for saliency maps", NeurIPS 2018), cascading (top layer first, then
  successively down) or independent (one layer at a time), with per-example similarities
  (:func:`~captum_rap._similarity.map_similarities`) between the maps of the original and
  of the randomised model.  The model is randomised in place and restored exactly.
* :func:`plot_parameter_randomization`: the familiar "sanity check" figure.

Why one module of slightly more than 600 lines: the snapshot / restore of the model, the
grouping of its layers, the randomisation and the test loop are one procedure whose parts
share private state (the snapshot guarantees the model is restored, also on errors); the
figure (about 80 lines) is kept next to the result type it draws.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ._compat import TargetType
from ._similarity import _as_single, _check_similarities, _prepare, map_similarities

__all__ = ["parameter_randomization", "ParameterRandomizationResult", "plot_parameter_randomization"]

InitType = Union[str, Callable[[nn.Module, torch.Generator], None]]
LayerSpec = Union[str, nn.Module, Sequence[Union[str, nn.Module]]]


class _ModelSnapshot:
    """Everything a call may change on a model, restored exactly by :meth:`restore`:
    parameter and buffer objects and values, ``requires_grad``, ``.grad``, and every
    module's attributes (``training``, ``inplace``, user ``rule`` objects, ...) and hook
    dictionaries."""

    def __init__(self, model: nn.Module) -> None:
        self.modules = list(model.modules())
        self.attrs: List[Dict[str, Any]] = []
        self.dict_contents: List[Dict[str, Dict[Any, Any]]] = []
        self.tensors: List[Tuple[Tensor, Tensor, bool, Optional[Tensor], Optional[Tensor]]] = []
        seen = set()
        for m in self.modules:
            d = dict(m.__dict__)
            self.attrs.append(d)
            self.dict_contents.append({k: dict(v) for k, v in d.items() if isinstance(v, dict)})
            for t in list(m._parameters.values()) + list(m._buffers.values()):
                if t is None or id(t) in seen:
                    continue
                seen.add(id(t))
                grad = t.grad if isinstance(t, nn.Parameter) else None
                self.tensors.append((t, t.detach().clone(), t.requires_grad, grad,
                                     grad.detach().clone() if grad is not None else None))

    def restore_values(self) -> None:
        """Parameter and buffer objects and values only (between independent steps)."""
        for m, contents in zip(self.modules, self.dict_contents):
            for key in ("_parameters", "_buffers"):
                cur = m.__dict__[key]
                if not _same_dict(cur, contents[key]):
                    cur.clear()
                    cur.update(contents[key])
        with torch.no_grad():
            for t, value, _, _, _ in self.tensors:
                if t.shape != value.shape or t.dtype != value.dtype:
                    t.data = value.clone()
                else:
                    t.copy_(value)

    def restore(self) -> None:
        for m, attrs, contents in zip(self.modules, self.attrs, self.dict_contents):
            cur = m.__dict__
            for k in [k for k in cur if k not in attrs]:
                del cur[k]
            for k, v in attrs.items():
                if cur.get(k, _MISSING) is not v:
                    cur[k] = v
            for k, content in contents.items():
                d = cur[k]
                if not _same_dict(d, content):
                    d.clear()
                    d.update(content)
        self.restore_values()
        for t, _, req, grad, grad_value in self.tensors:
            if t.requires_grad != req and t.is_leaf:
                t.requires_grad_(req)
            if isinstance(t, nn.Parameter):
                if grad is not None:
                    with torch.no_grad():
                        grad.copy_(grad_value)
                t.grad = grad

    def differences(self) -> List[str]:
        """What differs from the snapshot (empty after :meth:`restore`)."""
        out = []
        for i, (m, attrs, contents) in enumerate(zip(self.modules, self.attrs, self.dict_contents)):
            cur = m.__dict__
            if set(cur) != set(attrs) or any(cur[k] is not v for k, v in attrs.items()):
                out.append(f"module {i} ({type(m).__name__}): attributes")
            for k, content in contents.items():
                if not isinstance(cur.get(k), dict) or not _same_dict(cur[k], content):
                    out.append(f"module {i} ({type(m).__name__}): {k}")
        for t, value, req, grad, grad_value in self.tensors:
            if t.shape != value.shape or not _same_values(t.detach(), value) or t.requires_grad != req:
                out.append(f"tensor of shape {tuple(value.shape)}: value or requires_grad")
            if isinstance(t, nn.Parameter) and (t.grad is not grad or (
                    grad is not None and not _same_values(grad, grad_value))):
                out.append(f"tensor of shape {tuple(value.shape)}: grad")
        return out


_MISSING = object()


def _same_values(a: Tensor, b: Tensor) -> bool:
    """Equal values (NaN equal to NaN)."""
    if torch.equal(a, b):
        return True
    return a.is_floating_point() and a.dtype == b.dtype and bool(torch.isclose(a, b, rtol=0, atol=0,
                                                                              equal_nan=True).all())


def _same_dict(a: Dict[Any, Any], b: Dict[Any, Any]) -> bool:
    """Same keys in the same order with identical (``is``) values."""
    return len(a) == len(b) and all(ka == kb and va is vb for (ka, va), (kb, vb) in zip(a.items(), b.items()))


def _owns_parameters(m: nn.Module) -> bool:
    return any(p is not None for p in m._parameters.values())


def _call_order(model: nn.Module, run: Callable[[], Tensor]) -> Tuple[Dict[nn.Module, int], Tensor]:
    """First-call index of every module during one forward pass, and the output."""
    order: Dict[nn.Module, int] = {}

    def hook(module, args):
        if module not in order:
            order[module] = len(order)

    handles = [m.register_forward_pre_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            out = run()
    finally:
        for h in handles:
            h.remove()
    return order, out


def _resolve_groups(model: nn.Module, layers: Optional[Sequence[LayerSpec]], order: Dict[nn.Module, int],
                    labels: Optional[Sequence[str]]) -> Tuple[List[List[nn.Module]], List[str]]:
    names = {m: n for n, m in model.named_modules()}
    if layers is None:
        owners = [m for m in order if _owns_parameters(m)]
        owners.sort(key=lambda m: -order[m])                         # top (last called) first
        groups = [[m] for m in owners]
        auto_labels = [names[m] or "(model)" for m in owners]
        unused = [names[m] for m in model.modules() if _owns_parameters(m) and m not in order]
        if unused:
            warnings.warn("parameter_randomization: modules with parameters that the forward pass does not "
                          f"call are not randomised: {unused[:8]}{' ...' if len(unused) > 8 else ''}",
                          RuntimeWarning, stacklevel=3)
        if not groups:
            raise ValueError("parameter_randomization: the model has no module with parameters")
    else:
        if isinstance(layers, (str, nn.Module)):
            raise TypeError("parameter_randomization: layers must be a list of steps (module names, modules "
                            "or lists of them), e.g. ['fc', 'layer4']")
        groups, auto_labels = [], []
        for step in layers:
            items = [step] if isinstance(step, (str, nn.Module)) else list(step)
            if not items:
                raise ValueError("parameter_randomization: an entry of layers is empty")
            mods: List[nn.Module] = []
            for it in items:
                if isinstance(it, str):
                    try:
                        root = model.get_submodule(it)
                    except AttributeError:
                        raise ValueError(f"parameter_randomization: the model has no submodule {it!r}") from None
                elif isinstance(it, nn.Module):
                    if it not in names:
                        raise ValueError(f"parameter_randomization: {type(it).__name__} module is not a "
                                         "submodule of the model")
                    root = it
                else:
                    raise TypeError(f"parameter_randomization: layers entries must be module names or modules, "
                                    f"got {type(it).__name__}")
                found = [m for m in root.modules() if _owns_parameters(m)]
                if not found:
                    raise ValueError(f"parameter_randomization: {names[root] or '(model)'!r} has no parameters "
                                     "to randomise")
                mods += [m for m in found if m not in mods]
            groups.append(mods)
            auto_labels.append("+".join(names[it] if isinstance(it, nn.Module) else it for it in items))
    if labels is not None:
        labels = list(labels)
        if len(labels) != len(groups):
            raise ValueError(f"parameter_randomization: {len(labels)} labels for {len(groups)} steps")
        return groups, [str(x) for x in labels]
    return groups, auto_labels


def _randomize(module: nn.Module, init: InitType, seed: int) -> None:
    """Randomise the parameters (and, for ``"reset"``, whatever ``reset_parameters``
    resets) of one module in place, reproducibly from ``seed``."""
    params = [p for p in module._parameters.values() if p is not None]
    with torch.no_grad():
        if callable(init):
            gen = torch.Generator(device=params[0].device).manual_seed(seed)
            init(module, gen)
            return
        if init == "reset" and hasattr(module, "reset_parameters"):
            torch.manual_seed(seed)                                 # inside fork_rng (caller)
            module.reset_parameters()
            return
        # "normal" (or a module without reset_parameters): the tensor's own mean and std
        for p in params:
            gen = torch.Generator(device=p.device).manual_seed(seed)
            seed += 1
            if not p.is_floating_point():
                continue
            mean = p.double().mean()
            std = p.double().std() if p.numel() > 1 else torch.zeros((), dtype=torch.float64)
            scale = std if std > 0 else torch.clamp(mean.abs(), min=1e-2)
            noise = torch.randn(p.shape, generator=gen, device=p.device, dtype=torch.float64)
            p.copy_((mean + scale * noise).to(p.dtype))


# -- the randomisation test ---------------------------------------------------------------


@dataclass
class ParameterRandomizationResult:
    r"""What :func:`parameter_randomization` returns.

    Attributes:
        labels (list of str): one label per step (column), in the order randomised.
        modules (list of list of str): the names of the modules randomised at each step
            (in the cascading mode a step also keeps all earlier steps randomised).
        similarity (dict of str -> Tensor): ``(steps, N)`` float64 per measure (see
            :func:`map_similarities`), original map against the map after each step.
        output_change (Tensor): ``(steps,)``, the relative L2 distance between the
            randomised and the original model outputs (mean over examples): 0 means the
            randomised parameters did not change what the model computes.
        target (Tensor or Any): the targets used at every step (``target=None``: the
            original model's predicted classes).
        original (Tensor or None): the original model's maps (``return_maps=True``).
        randomized (list of Tensor or None): the maps after each step (``return_maps``).
        mode (str), init (str), seed (int): the settings.
    """

    labels: List[str]
    modules: List[List[str]]
    similarity: Dict[str, Tensor]
    output_change: Tensor
    target: Any
    mode: str
    init: str
    seed: int
    original: Optional[Tensor] = None
    randomized: Optional[List[Tensor]] = field(default=None)

    def mean(self, name: str = "spearman_abs") -> Tensor:
        """``(steps,)`` mean of one measure over the examples (NaN entries ignored)."""
        return torch.nanmean(self.similarity[name], dim=1)


def _forward(model: Callable, x: Tensor, args: Any) -> Tensor:
    """``model(x, *args)`` (``args``: None, a tuple or one argument); the first element of
    a tuple / list output.  Shared by the sanity checks, CSC and the perturbation metrics."""
    if args is None:
        out = model(x)
    elif isinstance(args, tuple):
        out = model(x, *args)
    else:
        out = model(x, args)
    return out[0] if isinstance(out, (tuple, list)) else out


def _fixed_target(target: TargetType, out: Tensor, n: int, who: str) -> Any:
    """``None`` -> the predicted classes; lists -> a tensor; anything else as given."""
    if target is None:
        if out.dim() == 2 and out.shape[1] > 1:
            return out.argmax(1)
        return None
    if isinstance(target, list):
        if len(target) != n:
            raise ValueError(f"{who}: target list has {len(target)} entries for {n} examples")
        if all(isinstance(t, int) for t in target):
            return torch.tensor(target, device=out.device)
    if isinstance(target, Tensor) and target.numel() not in (1, n):
        raise ValueError(f"{who}: target tensor of {target.numel()} entries for {n} examples")
    return target


def _chunk(value: Any, sl: slice, n: int) -> Any:
    if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == n:
        return value[sl]
    if isinstance(value, list) and len(value) == n:
        return value[sl]
    if isinstance(value, tuple) and any(isinstance(v, Tensor) for v in value):
        return tuple(_chunk(v, sl, n) for v in value)
    return value


def _explain(method_factory: Callable[[nn.Module], Any], model: nn.Module, x: Tensor, target: Any,
             args: Any, batch_size: Optional[int], who: str) -> Tensor:
    method = method_factory(model)
    if hasattr(method, "attribute"):
        def run(xb, tb, ab):
            if ab is None:
                return method.attribute(xb, target=tb)
            return method.attribute(xb, target=tb, additional_forward_args=ab)
    elif callable(method):
        def run(xb, tb, ab):
            return method(xb, tb) if ab is None else method(xb, tb, ab)
    else:
        raise TypeError(f"{who}: method_factory(model) must return a Captum Attribution (with .attribute) "
                        f"or a callable (inputs, target) -> Tensor, got {type(method).__name__}")
    n = x.shape[0]
    step = batch_size or n
    maps = []
    for s0 in range(0, n, step):
        sl = slice(s0, min(n, s0 + step))
        out = run(x[sl], _chunk(target, sl, n), _chunk(args, sl, n))
        if isinstance(out, (tuple, list)):
            if len(out) != 1:
                raise TypeError(f"{who}: the method returned {len(out)} tensors; use a method_factory that "
                                "returns one map")
            out = out[0]
        if not isinstance(out, Tensor) or out.shape[0] != sl.stop - sl.start:
            raise ValueError(f"{who}: the method must return one map per example (a Tensor with the batch "
                             "axis first)")
        maps.append(out.detach())
    return torch.cat(maps)


def parameter_randomization(
    model: nn.Module,
    method_factory: Callable[[nn.Module], Any],
    inputs: Union[Tensor, Tuple[Tensor]],
    target: TargetType = None,
    layers: Optional[Sequence[LayerSpec]] = None,
    mode: str = "cascading",
    similarities: Optional[Sequence[str]] = None,
    init: InitType = "reset",
    seed: int = 0,
    top_k: float = 0.1,
    sum_channels: bool = True,
    additional_forward_args: Any = None,
    batch_size: Optional[int] = None,
    labels: Optional[Sequence[str]] = None,
    return_maps: bool = False,
) -> ParameterRandomizationResult:
    r"""Model-parameter randomisation test (Adebayo et al., "Sanity checks for saliency
    maps", NeurIPS 2018): how similar are a method's maps for the trained model and for the
    model with randomised weights?  A method whose maps barely change when the weights that
    produce the prediction are destroyed does not explain the model.

    * ``mode="cascading"``: the steps of ``layers`` are randomised one after the other and
      stay randomised (give the layers top first: classifier head, then successively down,
      as in the paper); the maps after step ``i`` use a model whose steps ``0..i`` are
      random.
    * ``mode="independent"``: only step ``i`` is randomised for the maps of step ``i``.

    The randomisation happens **in place** on ``model`` (so a ``method_factory`` that
    ignores its argument and holds the model in a closure still sees the randomised
    weights) and everything is restored exactly afterwards, also when an error is raised:
    parameter and buffer objects and values, ``requires_grad``, ``.grad``, train/eval mode
    and every other module attribute, and the hooks.  The global random number generators
    are left as they were.

    Layers: a step is a module name (``"fc"``, ``"layer4.1"``), a module, or a list of them
    randomised together; every submodule that directly owns parameters is randomised.
    ``layers=None``: every module with parameters that the forward pass calls, one step
    each, in reverse order of their first call (top first).  Each module gets its own seed
    derived from ``seed`` and its position in the model, so a module is randomised
    identically in both modes.

    Randomisation (``init``):

    * ``"reset"`` (default, as Quantus' ``MPRT``): the module's ``reset_parameters()``
      (PyTorch's default initialisation; batch norm layers become ``weight 1, bias 0`` with
      reset running statistics).  Modules without ``reset_parameters`` use ``"normal"``.
    * ``"normal"``: each parameter tensor is replaced by Gaussian noise with the tensor's
      own mean and standard deviation (the scale of the trained weights is kept; a
      constant tensor ``c`` gets ``N(c, max(|c|, 0.01))``); buffers are kept.
    * a callable ``init(module, generator)`` that randomises ``module``'s own parameters in
      place (called under ``torch.no_grad()``).

    The targets are fixed before randomising (``target=None``: the original model's
    predicted classes), so every step explains the same output.  The maps of each step are
    compared with the original maps by :func:`map_similarities`.

    Args:
        model (nn.Module): the model.
        method_factory (callable): ``method_factory(model)`` returns a Captum attribution
            (its ``attribute(inputs, target=..., additional_forward_args=...)`` is called) or
            a callable ``f(inputs, target)`` (``f(inputs, target, additional_forward_args)``
            when those are given) returning the maps; e.g. ``lambda m: RAP(m)``.  Called
            once per step, after the randomisation.
        inputs (Tensor or 1-tuple): (N, ...) inputs.
        target (int, tuple, Tensor or list, optional): output index per Captum's
            conventions.  Default: the predicted class of each example.
        layers (list, optional): the steps (see above).
        mode (str, optional): ``"cascading"`` or ``"independent"``.  Default: cascading.
        similarities (sequence of str, optional): measures of :func:`map_similarities`.
            Default: all that apply.
        init (str or callable, optional): ``"reset"``, ``"normal"`` or a callable.
        seed (int, optional): seed of the randomisation.  Default: 0.
        top_k (float, optional): fraction for the ``"topk"`` measure.  Default: 0.1.
        sum_channels (bool, optional): compare channel-summed maps.  Default: True.
        additional_forward_args (Any, optional): extra model arguments.
        batch_size (int, optional): examples per attribution call.  Default: all.
        labels (sequence of str, optional): a label per step (default: module names).
        return_maps (bool, optional): keep the maps (for :func:`plot_parameter_randomization`).

    Returns:
        :class:`ParameterRandomizationResult`.

    Raises:
        ValueError: unknown module names, modules without parameters, bad ``mode``,
            ``init``, ``similarities``, ``top_k`` or shapes.
    Warns:
        RuntimeWarning: a step whose randomisation changes none of its parameters (e.g.
            ``"reset"`` of an untrained batch norm) or does not change the model output;
            maps with NaN / Inf values.

    Examples::

        >>> from captum_rap import RAP
        >>> from captum_rap.metrics import parameter_randomization
        >>> res = parameter_randomization(model, lambda m: RAP(m), x,
        ...                               layers=["fc", "layer4", "layer3", "layer2", "layer1"])
        >>> res.mean("spearman_abs")            # one value per step, near 1 = insensitive
    """
    who = "parameter_randomization"
    if not isinstance(model, nn.Module):
        raise TypeError(f"{who}: model must be an nn.Module, got {type(model).__name__}")
    if not callable(method_factory):
        raise TypeError(f"{who}: method_factory must be callable (model -> attribution method)")
    if mode not in ("cascading", "independent"):
        raise ValueError(f"{who}: mode must be 'cascading' or 'independent', got {mode!r}")
    if not (callable(init) or init in ("reset", "normal")):
        raise ValueError(f"{who}: init must be 'reset', 'normal' or a callable, got {init!r}")
    if not 0 < top_k <= 1:
        raise ValueError(f"{who}: top_k must be in (0, 1], got {top_k}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"{who}: batch_size must be >= 1, got {batch_size}")
    x = _as_single(inputs, who).detach()
    n = x.shape[0]
    devices = sorted({p.device.index for p in model.parameters() if p.device.type == "cuda"})

    snapshot = _ModelSnapshot(model)
    try:
        with torch.random.fork_rng(devices=devices):
            order, out0 = _call_order(model, lambda: _forward(model, x, additional_forward_args))
            out0 = out0.detach().to(torch.float64)
            tgt = _fixed_target(target, out0, n, who)
            groups, step_labels = _resolve_groups(model, layers, order, labels)
            all_names = {m: name for name, m in model.named_modules()}
            position = {m: i for i, m in enumerate(model.modules())}
            seeds = torch.randint(0, 2 ** 62, (len(position),),
                                  generator=torch.Generator().manual_seed(int(seed))).tolist()

            original = _explain(method_factory, model, x, tgt, additional_forward_args, batch_size, who)
            if original.shape[0] != n:
                raise ValueError(f"{who}: the method returned {original.shape[0]} maps for {n} examples")
            if not torch.isfinite(original).all():
                warnings.warn(f"{who}: the original maps contain NaN or Inf values; the similarities of those "
                              "examples are NaN", RuntimeWarning, stacklevel=2)
            names = _check_similarities(similarities, tuple(_prepare(original, sum_channels, who).shape), who)
            sims: Dict[str, List[Tensor]] = {s: [] for s in names}
            changes, maps, step_modules = [], [], []
            done: set = set()
            for i, group in enumerate(groups):
                if mode == "independent" and i > 0:
                    snapshot.restore_values()
                    done = set()
                todo = [m for m in group if m not in done]
                state = [t for m in todo for t in list(m._parameters.values()) + list(m._buffers.values())
                         if t is not None]
                before = [t.detach().clone() for t in state]
                for m in todo:
                    _randomize(m, init, int(seeds[position[m]]))
                    done.add(m)
                unchanged = bool(todo) and all(torch.equal(b, a) for b, a in zip(before, state))
                if unchanged:
                    warnings.warn(f"{who}: randomising step {step_labels[i]!r} changed none of its parameters (the "
                                  "init gives the values they have)", RuntimeWarning, stacklevel=2)
                step_modules.append([all_names[m] for m in group])
                with torch.no_grad():
                    out = _forward(model, x, additional_forward_args).detach().to(torch.float64)
                dist = ((out - out0).flatten(1).norm(dim=1) /
                        out0.flatten(1).norm(dim=1).clamp_min(1e-300)).mean()
                if float(dist) == 0.0 and not unchanged:
                    warnings.warn(f"{who}: randomising step {step_labels[i]!r} did not change the model output; "
                                  "the similarity of this step says nothing about the method", RuntimeWarning,
                                  stacklevel=2)
                changes.append(dist)
                rand = _explain(method_factory, model, x, tgt, additional_forward_args, batch_size, who)
                if rand.shape != original.shape:
                    raise ValueError(f"{who}: maps of step {step_labels[i]!r} have shape {tuple(rand.shape)}, the "
                                     f"original maps {tuple(original.shape)}")
                s = map_similarities(original, rand, names, top_k, sum_channels)
                if not torch.isfinite(rand).all():
                    warnings.warn(f"{who}: the maps of step {step_labels[i]!r} contain NaN or Inf values; their "
                                  "similarities are NaN", RuntimeWarning, stacklevel=2)
                for k in names:
                    sims[k].append(s[k])
                if return_maps:
                    maps.append(rand.cpu())
    finally:
        snapshot.restore()
    leftover = snapshot.differences()
    if leftover:  # pragma: no cover - restore() covers everything differences() checks
        raise RuntimeError(f"{who}: the model could not be restored exactly: {leftover[:5]}")
    return ParameterRandomizationResult(
        labels=step_labels,
        modules=step_modules,
        similarity={k: torch.stack(v) for k, v in sims.items()},
        output_change=torch.stack(changes).cpu(),
        target=tgt,
        mode=mode,
        init=init if isinstance(init, str) else getattr(init, "__name__", "callable"),
        seed=int(seed),
        original=original.cpu() if return_maps else None,
        randomized=maps if return_maps else None,
    )


# -- the figure ---------------------------------------------------------------------------


def plot_parameter_randomization(
    results: Dict[str, ParameterRandomizationResult],
    example: int = 0,
    image: Optional[Tensor] = None,
    similarity: str = "spearman_abs",
    cell_size: float = 1.3,
    clip: float = 0.99,
):
    r"""The sanity-check figure: one row per method, the original map then the map after
    each randomisation step (columns), each channel-summed absolute map scaled to its own
    ``clip`` quantile (white; larger values are clipped, as Adebayo et al. show the maps),
    with the step's similarity to the original map written under it.

    Args:
        results (dict of str -> ParameterRandomizationResult): per method, computed with
            ``return_maps=True`` and the same steps.
        example (int, optional): which example.  Default: 0.
        image (Tensor, optional): the example's input (C, H, W), shown in an extra first
            column (rescaled to [0, 1]).
        similarity (str, optional): the measure written under each map.
            Default: ``"spearman_abs"``.
        cell_size (float, optional): inches per map.
        clip (float, optional): the quantile of each absolute map shown as white, in
            (0, 1].  Default: 0.99.

    Returns:
        matplotlib ``Figure`` (not attached to pyplot; ``fig.savefig(...)``).
    """
    from matplotlib.figure import Figure

    if not results:
        raise ValueError("plot_parameter_randomization: results is empty")
    if not 0 < clip <= 1:
        raise ValueError(f"plot_parameter_randomization: clip must be in (0, 1], got {clip}")
    first = next(iter(results.values()))
    for name, r in results.items():
        if r.original is None or r.randomized is None:
            raise ValueError(f"plot_parameter_randomization: {name!r} was computed without return_maps=True")
        if r.labels != first.labels:
            raise ValueError(f"plot_parameter_randomization: {name!r} has other steps than the first method")
        if similarity not in r.similarity:
            raise ValueError(f"plot_parameter_randomization: {name!r} has no {similarity!r} similarity")
    rows, steps = len(results), len(first.labels)
    off = 1 if image is not None else 0
    cols = off + 1 + steps
    fig = Figure(figsize=(cell_size * cols + 1.6, cell_size * rows + 0.9))
    axes = fig.subplots(rows, cols, squeeze=False)
    prefix = "randomised to\n" if first.mode == "cascading" else "only\n"
    for r_i, (name, res) in enumerate(results.items()):
        maps = [res.original] + list(res.randomized or [])
        for c_i, m in enumerate(maps):
            ax = axes[r_i, off + c_i]
            heat = m[example].detach().double()
            heat = heat.sum(0) if heat.dim() == 3 else heat
            heat = heat.abs()
            top = float(torch.quantile(heat.flatten(), clip)) if heat.numel() > 1 else float(heat.max())
            top = top if top > 0 else float(heat.max())
            ax.imshow((heat / top).clamp(max=1).numpy() if top > 0 else heat.numpy(), cmap="gray", vmin=0, vmax=1)
            if c_i > 0:
                val = float(res.similarity[similarity][c_i - 1, example])
                ax.set_xlabel(f"{val:.2f}", fontsize=7, labelpad=1)
            if r_i == 0:
                ax.set_title("original" if c_i == 0 else prefix + res.labels[c_i - 1], fontsize=7)
        axes[r_i, 0].set_ylabel(name, fontsize=7, rotation=0, ha="right", va="center")
        if image is not None:
            img = image.detach().double()
            img = (img - img.min()) / (img.max() - img.min()).clamp_min(1e-12)
            axes[r_i, 0].imshow(img.permute(1, 2, 0).numpy() if img.dim() == 3 else img.numpy())
            if r_i == 0:
                axes[r_i, 0].set_title("input", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"Model-parameter randomisation ({first.mode}); under each map: {similarity} with the "
                 "original map", fontsize=8)
    fig.tight_layout()
    return fig
