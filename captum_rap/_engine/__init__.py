"""The propagation engine shared by LRP, RAP, CLRP and SGLRP.

Relevance travels through autograd as a *modified gradient*: at every activation tensor
``a`` the backward pass carries the relevance density ``R / a``.  Parametrized layers
(convolutions, linear layers, batch norm, the affine part of normalisations) are replaced
during the forward pass by an autograd ``Function`` whose backward applies a propagation
rule: it forms ``R_out = grad_out * a_out``, computes ``R_in`` with the rule and hands back
``R_in / a_in``.  Every parameter-free linear operation in between (residual ``+``,
``torch.cat``, reshapes, padding, average pooling, slicing) is left to autograd, which
splits relevance in proportion to the contributions (the z-rule).  ReLU and max pooling
need no rule either: their plain gradient is exactly relevance pass-through and
winner-take-all.  Other non-linearities, products of activations, softmax, normalisations
and attention get the rules of the operation table.

The forward pass runs under a :class:`torch.overrides.TorchFunctionMode`, so functional
operations inside ``forward`` (``F.relu``, ``x + y``, ``torch.flatten``) are seen as well as
modules, reused modules get one record per call, and any operation on the relevance path
that the engine cannot propagate faithfully raises :class:`UnsupportedOperationError`
naming the operation and the module it was called from.

Modules:

* :mod:`.optable`: the operation table (torch function name -> treatment);
* :mod:`.mode`: the function mode that applies the treatments (its affine-layer half in
  :mod:`.layers`, its reading of call arguments in :mod:`.callargs`);
* :mod:`.decompositions`: normalisations and attention written out in table operations;
* :mod:`.affine`: :class:`AffineOp`, the affine layer as rules see it;
* :mod:`.functions`: the autograd functions that carry the rules;
* :mod:`.batchnorm`: batch-norm folding;
* :mod:`.propagator`: :class:`Propagator`, one forward + backward;
* :mod:`.records`: :class:`LayerInfo`, per-call nodes and tags;
* :mod:`.numerics`: every division / stabiliser helper (one sign convention).
"""

from .affine import AffineOp
from .numerics import divide, divide_keep_zero, floored_epsilon, per_example, safe_divide, stabilize
from .optable import OP_TABLE, supported_operations
from .propagator import Propagator
from .records import NORM_KINDS, LayerInfo, UnsupportedOperationError

__all__ = [
    "UnsupportedOperationError",
    "AffineOp",
    "LayerInfo",
    "NORM_KINDS",
    "Propagator",
    "OP_TABLE",
    "supported_operations",
    "per_example",
    "divide",
    "divide_keep_zero",
    "floored_epsilon",
    "safe_divide",
    "stabilize",
]
