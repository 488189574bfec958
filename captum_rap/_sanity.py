r"""Sanity checks of attribution methods (re-exported by :mod:`captum_rap.metrics`).

* :func:`parameter_randomization`: the model-parameter randomisation test of Adebayo,
  Gilmer, Muelly, Goodfellow, Hardt & Kim ("Sanity checks for saliency maps", NeurIPS
  2018), cascading (top layer first, then successively down) or independent (one layer at
  a time), with per-example similarities between the maps of the original and of the
  randomised model.  The model is randomised in place and restored exactly afterwards.
* :func:`map_similarities`: the similarity measures it uses (Spearman rank correlation,
  signed and of the absolute values; SSIM of the normalised absolute maps; top-k
  intersection), batched.
* :func:`cosine_similarity_convergence`: the cosine-similarity-convergence (CSC) diagnostic
  of Sixt, Granz & Landgraf ("When explanations lie", ICML 2020) for relevance injected at
  the output: do random starting relevances (or random target classes) still give
  different maps at the input?
* :func:`plot_parameter_randomization`: the familiar "sanity check" figure.
"""

from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ._compat import TargetType

__all__ = ["parameter_randomization", "ParameterRandomizationResult", "map_similarities",
           "SIMILARITIES", "cosine_similarity_convergence", "CSCResult",
           "plot_parameter_randomization"]

#: the similarity measures of :func:`map_similarities`
SIMILARITIES = ("spearman", "spearman_abs", "ssim", "topk")

InitType = Union[str, Callable[[nn.Module, torch.Generator], None]]
LayerSpec = Union[str, nn.Module, Sequence[Union[str, nn.Module]]]


# -- similarity measures ------------------------------------------------------------------


def _ranks(a: Tensor) -> Tensor:
    """Row-wise ranks 1..n of a (N, n) tensor, ties get the average of their ranks (the
    convention of ``scipy.stats.rankdata`` / ``spearmanr``)."""
    n = a.shape[1]
    srt, idx = torch.sort(a, dim=1, stable=True)
    pos = torch.arange(1, n + 1, dtype=torch.float64, device=a.device).expand_as(srt)
    # start of each run of equal values, propagated along the row
    new_run = torch.ones_like(srt, dtype=torch.bool)
    new_run[:, 1:] = srt[:, 1:] != srt[:, :-1]
    run_id = new_run.to(torch.long).cumsum(1) - 1                           # 0-based run index
    first = torch.zeros_like(pos).scatter_reduce(1, run_id, pos, "amin", include_self=False)
    last = torch.zeros_like(pos).scatter_reduce(1, run_id, pos, "amax", include_self=False)
    avg = ((first + last) / 2).gather(1, run_id)
    return torch.empty_like(avg).scatter_(1, idx, avg)


def _pearson(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise Pearson correlation (N,), NaN where a row is constant."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    num = (a * b).sum(1)
    den = torch.sqrt((a * a).sum(1) * (b * b).sum(1))
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, float("nan")))


def _gaussian_window(sigma: float, truncate: float, device) -> Tensor:
    radius = int(truncate * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _ssim(a: Tensor, b: Tensor, sigma: float = 1.5, truncate: float = 3.5) -> Tensor:
    """SSIM (Wang, Bovik, Sheikh & Simoncelli 2004) of (N, H, W) maps with values in [0, 1]
    (data range 1), Gaussian window (``sigma`` 1.5, truncated at 3.5 sigma: 11 x 11), mean
    over the positions whose window lies inside the map: the numbers of
    ``skimage.metrics.structural_similarity(a, b, data_range=1, gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False)``."""
    k = _gaussian_window(sigma, truncate, a.device)
    w = k.numel()
    if a.shape[-1] < w or a.shape[-2] < w:
        raise ValueError(f"ssim needs maps of at least {w} x {w} positions, got {tuple(a.shape[-2:])}")
    c1, c2 = 0.01 ** 2, 0.03 ** 2

    def filt(x: Tensor) -> Tensor:
        x = x.unsqueeze(1)
        x = torch.nn.functional.conv2d(x, k.view(1, 1, 1, -1))
        x = torch.nn.functional.conv2d(x, k.view(1, 1, -1, 1))
        return x.squeeze(1)

    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a * mu_a
    var_b = filt(b * b) - mu_b * mu_b
    cov = filt(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


def _prepare(maps: Union[Tensor, Tuple[Tensor, ...]], sum_channels: bool, who: str) -> Tensor:
    if isinstance(maps, (tuple, list)):
        if len(maps) != 1:
            raise TypeError(f"{who}: maps must be one tensor (or a 1-tuple), got {len(maps)} tensors")
        maps = maps[0]
    if not isinstance(maps, Tensor):
        raise TypeError(f"{who}: maps must be a Tensor, got {type(maps).__name__}")
    m = maps.detach().to(torch.float64)
    if m.dim() < 2:
        raise ValueError(f"{who}: maps must be batch first with at least one feature axis, got shape "
                         f"{tuple(m.shape)}")
    if sum_channels and m.dim() > 2:
        m = m.sum(1)
    return m


def map_similarities(
    original: Union[Tensor, Tuple[Tensor]],
    other: Union[Tensor, Tuple[Tensor]],
    similarities: Optional[Sequence[str]] = None,
    top_k: float = 0.1,
    sum_channels: bool = True,
) -> Dict[str, Tensor]:
    r"""Per-example similarity of two batches of attribution maps (as used by the
    randomisation test of Adebayo et al. 2018).

    The maps are summed over dim 1 (channels) first when ``sum_channels`` and they have more
    than two dims; then, per example, over all remaining entries:

    * ``"spearman"``: Spearman rank correlation of the signed maps (ties get their average
      rank, as ``scipy.stats.spearmanr``); NaN if a map is constant.
    * ``"spearman_abs"``: Spearman rank correlation of the absolute values (Adebayo et al.'s
      main measure; a sign flip does not count as a change).
    * ``"ssim"``: SSIM of the absolute maps, each divided by its largest value (range
      [0, 1]; an all-zero map stays 0), Gaussian 11 x 11 window (sigma 1.5), data range 1
      (``skimage.metrics.structural_similarity`` with ``gaussian_weights=True,
      use_sample_covariance=False``).  Needs 2-D maps (after the channel sum) of at least
      11 x 11.
    * ``"topk"``: the fraction of the ``ceil(top_k * n)`` largest absolute entries of
      ``original`` that are also among the ``ceil(top_k * n)`` largest of ``other`` (exact
      ties at the cut are broken by position).

    An example whose maps contain NaN or Inf gets NaN in every measure.

    Args:
        original (Tensor or 1-tuple): (N, ...) maps.
        other (Tensor or 1-tuple): maps of the same shape.
        similarities (sequence of str, optional): which measures.  Default: all of
            :data:`SIMILARITIES` (``"ssim"`` only for 2-D maps of at least 11 x 11).
        top_k (float, optional): the fraction for ``"topk"``, in (0, 1].  Default: 0.1.
        sum_channels (bool, optional): sum over dim 1 first.  Default: True.

    Returns:
        dict of str -> Tensor (N,) float64.

    Examples::

        >>> from captum_rap.metrics import map_similarities
        >>> sims = map_similarities(attr_original, attr_randomized)
        >>> sims["spearman_abs"].mean()
    """
    a = _prepare(original, sum_channels, "map_similarities")
    b = _prepare(other, sum_channels, "map_similarities")
    if a.shape != b.shape:
        raise ValueError(f"map_similarities: maps of shapes {tuple(a.shape)} and {tuple(b.shape)} differ")
    names = _check_similarities(similarities, tuple(a.shape), "map_similarities")
    if not 0 < top_k <= 1:
        raise ValueError(f"map_similarities: top_k must be in (0, 1], got {top_k}")
    bad = ~(torch.isfinite(a).flatten(1).all(1) & torch.isfinite(b).flatten(1).all(1))
    if bad.any():
        a = torch.where(torch.isfinite(a), a, torch.zeros_like(a))
        b = torch.where(torch.isfinite(b), b, torch.zeros_like(b))
    out: Dict[str, Tensor] = {}
    fa, fb = a.flatten(1), b.flatten(1)
    for name in names:
        if name == "spearman":
            out[name] = _pearson(_ranks(fa), _ranks(fb))
        elif name == "spearman_abs":
            out[name] = _pearson(_ranks(fa.abs()), _ranks(fb.abs()))
        elif name == "ssim":
            na, nb = a.abs(), b.abs()
            ma = na.flatten(1).amax(1).view(-1, 1, 1)
            mb = nb.flatten(1).amax(1).view(-1, 1, 1)
            na = torch.where(ma > 0, na / ma.clamp_min(1e-300), torch.zeros_like(na))
            nb = torch.where(mb > 0, nb / mb.clamp_min(1e-300), torch.zeros_like(nb))
            out[name] = _ssim(na, nb)
        else:
            n = fa.shape[1]
            k = max(1, int(math.ceil(top_k * n - 1e-9)))
            ta = torch.sort(fa.abs(), dim=1, descending=True, stable=True).indices[:, :k]
            tb = torch.sort(fb.abs(), dim=1, descending=True, stable=True).indices[:, :k]
            in_b = torch.zeros_like(fa, dtype=torch.bool).scatter_(1, tb, True)
            out[name] = in_b.gather(1, ta).to(torch.float64).mean(1)
    if bad.any():
        out = {k: torch.where(bad, torch.full_like(v, float("nan")), v) for k, v in out.items()}
    return out


def _check_similarities(similarities: Optional[Sequence[str]], shape: Sequence[int], who: str) -> List[str]:
    """The measures to compute for prepared maps of ``shape`` (default: all that apply)."""
    two_d = len(shape) == 3
    ssim_ok = two_d and min(shape[1:]) >= _gaussian_window(1.5, 3.5, "cpu").numel()
    if similarities is None:
        return [s for s in SIMILARITIES if ssim_ok or s != "ssim"]
    if isinstance(similarities, str):
        similarities = [similarities]
    names = list(similarities)
    for s in names:
        if s not in SIMILARITIES:
            raise ValueError(f"{who}: unknown similarity {s!r}; choose from {list(SIMILARITIES)}")
    if "ssim" in names and not two_d:
        raise ValueError(f"{who}: 'ssim' needs 2-D maps (N, H, W) after the channel sum")
    if not names:
        raise ValueError(f"{who}: similarities is empty")
    return names


# -- the model, restored exactly --------------------------------------------------------


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
            if t.shape != value.shape or not torch.equal(t.detach(), value) or t.requires_grad != req:
                out.append(f"tensor of shape {tuple(value.shape)}: value or requires_grad")
            if isinstance(t, nn.Parameter) and (t.grad is not grad or (
                    grad is not None and not torch.equal(grad, grad_value))):
                out.append(f"tensor of shape {tuple(value.shape)}: grad")
        return out


_MISSING = object()


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


def _as_single(inputs: Any, who: str) -> Tensor:
    if isinstance(inputs, (tuple, list)):
        if len(inputs) != 1:
            raise TypeError(f"{who}: inputs must be one tensor (or a 1-tuple), got {len(inputs)} tensors")
        inputs = inputs[0]
    if not isinstance(inputs, Tensor):
        raise TypeError(f"{who}: inputs must be a Tensor, got {type(inputs).__name__}")
    return inputs


def _forward(model: Callable, x: Tensor, args: Any) -> Tensor:
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


# -- cosine similarity convergence --------------------------------------------------------


@dataclass
class CSCResult:
    r"""What :func:`cosine_similarity_convergence` returns.

    Attributes:
        locations (list of str): ``"input"`` and the names of the requested layers (top
            first).
        cosine (dict of str -> Tensor): per location ``(N, P)``: the absolute cosine
            similarity of the relevance vectors of the ``P = n(n-1)/2`` pairs of the
            ``n_vectors`` starting relevances, per example (NaN where a vector is 0).
        seeds (str): ``"normal"`` or ``"classes"``.
        n_vectors (int): starting relevances per example.
    """

    locations: List[str]
    cosine: Dict[str, Tensor]
    seeds: str
    n_vectors: int

    def median(self, location: str = "input") -> float:
        """Median over examples and pairs (NaN entries ignored), Sixt et al.'s summary."""
        return float(torch.nanmedian(self.cosine[location].flatten()))


def _pair_cosines(r: Tensor, n: int, k: int) -> Tensor:
    """(n*k, ...) relevances, ``k`` per example (example-major) -> (n, k(k-1)/2) |cos|."""
    v = r.detach().to(torch.float64).reshape(n, k, -1)
    norm = v.norm(dim=2)
    out = []
    for i, j in combinations(range(k), 2):
        den = norm[:, i] * norm[:, j]
        c = (v[:, i] * v[:, j]).sum(1)
        out.append(torch.where(den > 0, c.abs() / den.clamp_min(1e-300), torch.full_like(c, float("nan"))))
    return torch.stack(out, dim=1)


def cosine_similarity_convergence(
    method: Any,
    inputs: Union[Tensor, Tuple[Tensor]],
    layers: Optional[Sequence[Union[str, nn.Module]]] = None,
    n_vectors: int = 5,
    seeds: str = "normal",
    seed: int = 0,
    additional_forward_args: Any = None,
) -> CSCResult:
    r"""Cosine-similarity convergence (CSC, Sixt, Granz & Landgraf, "When explanations
    lie", ICML 2020) for relevance started at the model output.

    ``n_vectors`` different starting relevances are propagated for each example, and the
    absolute cosine similarity of the resulting relevance vectors is measured for every
    pair, at the input (the whole attribution tensor, channels included) and at the outputs
    of ``layers``.  For rules based on z+ (LRP z+, alpha-beta; the rules RAP and CLRP build
    on) Sixt et al. show that these vectors converge to one direction as relevance moves
    down the network: a median close to 1 at the input means the map hardly depends on
    what happens above (the class, the classifier), i.e. the top layers are ignored.

    * ``seeds="normal"`` (Sixt et al.'s test with the output layer as the injection
      layer): standard normal random vectors over the outputs, passed as
      ``output_relevance``; needs a method that takes it (:class:`~captum_rap.LRP`).
      Sixt et al. also inject at hidden layers; the public API starts relevance at the
      output only, so this is the first row of their test.
    * ``seeds="classes"`` (the equivalent for any method, e.g. RAP, CLRP, SGLRP or Captum's
      gradient methods): ``n_vectors`` different random target classes per example.

    Hidden ``layers`` are supported for :class:`~captum_rap.LRP` and
    :class:`~captum_rap.RAP` instances (measured with ``LayerLRP`` / ``LayerRAP`` and the
    same rules).

    Args:
        method: a Captum attribution with ``attribute(inputs, target=..., ...)`` (for
            ``seeds="normal"`` also ``output_relevance``).
        inputs (Tensor or 1-tuple): (N, ...) inputs.
        layers (list of str or nn.Module, optional): hidden layers, top first.
        n_vectors (int, optional): starting relevances per example, >= 2.  Default: 5.
        seeds (str, optional): ``"normal"`` or ``"classes"``.  Default: ``"normal"``.
        seed (int, optional): seed of the random vectors / classes.  Default: 0.
        additional_forward_args (Any, optional): extra model arguments.

    Returns:
        :class:`CSCResult` (``result.median("input")``).

    Examples::

        >>> from captum_rap import LRP
        >>> from captum_rap.metrics import cosine_similarity_convergence
        >>> csc = cosine_similarity_convergence(LRP(model, "zplus"), x, layers=["layer4"])
        >>> csc.median("input"), csc.median("layer4")
    """
    from ._core.lrp import LRP, LayerLRP
    from ._core.rap import RAP, LayerRAP

    who = "cosine_similarity_convergence"
    if seeds not in ("normal", "classes"):
        raise ValueError(f"{who}: seeds must be 'normal' or 'classes', got {seeds!r}")
    if not isinstance(n_vectors, int) or n_vectors < 2:
        raise ValueError(f"{who}: n_vectors must be an integer >= 2, got {n_vectors!r}")
    if not hasattr(method, "attribute"):
        raise TypeError(f"{who}: method must be a Captum attribution (with .attribute), got {type(method).__name__}")
    takes_seed = "output_relevance" in inspect.signature(method.attribute).parameters
    if seeds == "normal" and not takes_seed:
        raise ValueError(f"{who}: seeds='normal' needs a method whose attribute() takes output_relevance "
                         f"(LRP); {type(method).__name__} does not: use seeds='classes'")
    model = getattr(method, "forward_func", None)
    x = _as_single(inputs, who).detach()
    n = x.shape[0]
    layer_mods: List[Tuple[str, nn.Module]] = []
    for lay in layers or []:
        if not isinstance(model, nn.Module):
            raise ValueError(f"{who}: hidden layers need a method built on an nn.Module")
        if isinstance(lay, str):
            try:
                layer_mods.append((lay, model.get_submodule(lay)))
            except AttributeError:
                raise ValueError(f"{who}: the model has no submodule {lay!r}") from None
        elif isinstance(lay, nn.Module):
            name = next((k for k, m in model.named_modules() if m is lay), None)
            if name is None:
                raise ValueError(f"{who}: {type(lay).__name__} module is not a submodule of the model")
            layer_mods.append((name, lay))
        else:
            raise TypeError(f"{who}: layers entries must be module names or modules, got {type(lay).__name__}")
    if layer_mods and not isinstance(method, (LRP, RAP)):
        raise ValueError(f"{who}: hidden layers are supported for LRP and RAP only, not {type(method).__name__}")

    xr = x.repeat_interleave(n_vectors, dim=0)
    args = additional_forward_args
    if args is not None:
        items = args if isinstance(args, tuple) else (args,)
        items = tuple(a.repeat_interleave(n_vectors, dim=0) if isinstance(a, Tensor) and a.dim() > 0
                      and a.shape[0] == n else a for a in items)
        args = items if isinstance(args, tuple) else items[0]
    with torch.no_grad():
        out = _forward(method.forward_func, x, additional_forward_args)
    if out.dim() != 2 or out.shape[1] < 2:
        raise ValueError(f"{who}: needs (N, C) outputs with C >= 2, got {tuple(out.shape)}")
    c = out.shape[1]
    gen = torch.Generator().manual_seed(int(seed))
    kw: Dict[str, Any] = {}
    if seeds == "normal":
        kw["output_relevance"] = torch.randn((n * n_vectors, c), generator=gen, dtype=torch.float64).to(
            device=out.device, dtype=out.dtype)
        kw["target"] = None
    else:
        if c < n_vectors:
            raise ValueError(f"{who}: n_vectors={n_vectors} distinct classes from {c} outputs")
        kw["target"] = torch.stack([torch.randperm(c, generator=gen)[:n_vectors] for _ in range(n)]).reshape(-1).to(
            out.device)
    if args is not None:
        kw["additional_forward_args"] = args
    result: Dict[str, Tensor] = {}
    attr = method.attribute(xr, **kw)
    attr = attr[0] if isinstance(attr, (tuple, list)) else attr
    result["input"] = _pair_cosines(attr, n, n_vectors)
    for name, mod in layer_mods:
        if isinstance(method, LRP):
            lm = LayerLRP(model, mod, method.composite, merge_batchnorm=method.merge_batchnorm)
        else:
            lm = LayerRAP(model, mod, stabilizer=method.stabilizer)
        lkw = dict(kw)
        if isinstance(method, RAP):
            lkw.pop("output_relevance", None)
        r = lm.attribute(xr, **lkw)
        result[name] = _pair_cosines(r, n, n_vectors)
    return CSCResult(locations=["input"] + [nm for nm, _ in layer_mods], cosine=result, seeds=seeds,
                     n_vectors=n_vectors)


# -- the figure ---------------------------------------------------------------------------


def plot_parameter_randomization(
    results: Dict[str, ParameterRandomizationResult],
    example: int = 0,
    image: Optional[Tensor] = None,
    similarity: str = "spearman_abs",
    cell_size: float = 1.3,
):
    r"""The sanity-check figure: one row per method, the original map then the map after
    each randomisation step (columns), each channel-summed absolute map scaled to its own
    maximum (as Adebayo et al. show them), with the step's similarity to the original map
    written under it.

    Args:
        results (dict of str -> ParameterRandomizationResult): per method, computed with
            ``return_maps=True`` and the same steps.
        example (int, optional): which example.  Default: 0.
        image (Tensor, optional): the example's input (C, H, W), shown in an extra first
            column (rescaled to [0, 1]).
        similarity (str, optional): the measure written under each map.
            Default: ``"spearman_abs"``.
        cell_size (float, optional): inches per map.

    Returns:
        matplotlib ``Figure`` (not attached to pyplot; ``fig.savefig(...)``).
    """
    from matplotlib.figure import Figure

    if not results:
        raise ValueError("plot_parameter_randomization: results is empty")
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
            top = float(heat.max())
            ax.imshow((heat / top if top > 0 else heat).numpy(), cmap="gray", vmin=0, vmax=1)
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
