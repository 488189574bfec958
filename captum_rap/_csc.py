r"""Cosine-similarity convergence (public through :mod:`captum_rap.metrics`): the
diagnostic of Sixt, Granz & Landgraf ("When explanations lie", ICML 2020) for relevance
started at the output: do random starting relevances (or random target classes) still give
different maps at the input and at hidden layers?
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ._randomization import _as_single, _forward

__all__ = ["cosine_similarity_convergence", "CSCResult"]


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
