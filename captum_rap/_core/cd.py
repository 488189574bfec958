"""Contextual decomposition (CD) as a Captum ``Attribution``.

Why one module of more than 600 lines: it is one method, as in Captum's ``_core`` (one
method per file); the ``CD`` class alone is about 560 lines of argument checks, batching of
the masks and the precision / batching checks that guard its numbers, which share the
instance's state.  The decomposition rules themselves are in :mod:`captum_rap._cd`.
"""

from __future__ import annotations

import hashlib
import logging
import numbers
import warnings
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from captum_rap._cd.local import box_area, local_input
from captum_rap._cd.tensor import (
    CDTensor,
    TokenCDTensor,
    UnsupportedOperationError,
    cd_context,
    split_output,
)
from captum_rap._compat import (
    Attribution,
    _format_additional_forward_args,
    _format_output,
    _format_tensor_into_tuples,
    _is_tuple,
    log_usage,
)

__all__ = ["CD", "UnsupportedOperationError", "spans_to_masks"]

_LOG = logging.getLogger("captum_rap")


def spans_to_masks(spans: Sequence[Tuple[int, int]], length: int, dtype=torch.float32,
                   device=None) -> Tensor:
    """Binary masks ``(K, length)`` for inclusive ``(start, stop)`` token spans.

    Args:
        spans (sequence of (int, int)): inclusive word index spans, as in the reference
            ``cd_text(start, stop)``.
        length (int): number of token positions.

    Returns:
        Tensor: ``masks[k, t] = 1`` for ``start_k <= t <= stop_k``.

    Examples::

        >>> spans_to_masks([(0, 0), (1, 3)], 5)
        tensor([[1., 0., 0., 0., 0.],
                [0., 1., 1., 1., 0.]])
    """
    m = torch.zeros(len(spans), length, dtype=dtype, device=device)
    for k, (a, b) in enumerate(spans):
        if not (0 <= a <= b < length):
            raise ValueError("span %r outside 0..%d" % ((a, b), length - 1))
        m[k, a:b + 1] = 1
    return m


class _ModelGuard:
    """Leave the user's model exactly as found (mode, buffers); warn in train mode."""

    def __init__(self, model: Callable, who: str = "CD", warn: bool = True) -> None:
        self.model = model
        self.who = who
        self.warn = warn
        self.snap = None

    def __enter__(self):
        m = self.model
        if isinstance(m, torch.nn.Module):
            training = [mod for mod in m.modules() if mod.training]
            if training and self.warn:
                warnings.warn(
                    "%s: the model (or some of its submodules) is in training mode; CD assumes "
                    "eval-mode layers (batch norm with running statistics, dropout off). Dropout "
                    "is treated as the identity and batch norm in training mode raises. The model "
                    "is not switched to eval mode for you." % self.who, stacklevel=4)
            if training:
                # BatchNorm increments num_batches_tracked before failing: restore buffers
                self.snap = [(b, b.detach().clone()) for b in m.buffers()]
        return self

    def __exit__(self, *exc):
        if self.snap is not None:
            with torch.no_grad():
                for b, v in self.snap:
                    if not torch.equal(b, v):
                        b.copy_(v)
        return False


def _auto_batch_size(feat_shape: Tuple[int, ...]) -> int:
    """Masks per forward: at most 32 and about 2**21 input values per forward."""
    numel = 1
    for d in feat_shape:
        numel *= int(d)
    return max(1, min(32, (1 << 21) // max(numel, 1)))


class CD(Attribution):
    r"""Contextual decomposition (Murdoch et al., ICLR 2018; Singh et al., ICLR 2019).

    For an input ``x`` and a mask ``m`` over its features, CD propagates two tensors
    through the network, ``rel`` (starting as ``m * x``) and ``irr`` (``(1 - m) * x``), with
    ``rel + irr`` equal to the true activation at every layer.  The relevant part of the
    output logits is the CD score of the masked feature group.

    The decomposition follows the **whole** forward pass of an unchanged model (the input
    is wrapped in a tensor subclass that intercepts every torch function: modules,
    functional calls, residual ``+``, ``cat``, reshapes, in-place activations).  Supported:
    convolutions and ``linear``, batch norm (eval), every element-wise activation, layer /
    group / instance / RMS norm, pooling, dropout, padding, concatenation, sums, products
    (``mul``, ``matmul``, ``einsum``, ...), softmax attention (``scaled_dot_product_attention``,
    ``nn.MultiheadAttention``), shape operations, ``embedding``, ``nn.LSTM`` and ``nn.GRU``:
    every torchvision classifier, ``nn.TransformerEncoder`` and Hugging Face BERT-style text
    models.  Anything else touching a decomposed tensor (``exp``, ``pow``, ...) raises
    :class:`UnsupportedOperationError` naming the function and the module.

    Rules (each module of ``captum_rap._cd`` documents its rule and source): biases split
    in proportion to ``|W rel|`` (reference ``acd``); activations ``rel' = f(rel)``,
    ``irr' = f(rel + irr) - f(rel)``; normalisation statistics and softmax attention
    weights of the total held as constants (CD-T); products of two decomposed tensors keep
    ``rel' = a_rel * b_rel`` and give every term with an irrelevant factor to ``irr``;
    constants added to a decomposed tensor go to ``irr``.

    Cost: ``rel`` and the total ``rel + irr`` (the model's own activation, computed once per
    forward) are propagated, so K masks cost about one forward of K + 1 images; for image
    inputs a small mask's relevant part is computed only inside the box it can influence
    (``local``).  Measured costs and precision are in ``benchmarks/RESULTS_cd.md``.

    Text models: pass integer token ids; the masks are over token positions and the
    decomposition starts at the embedding (``rel = m_t * E[x_t]``; position / segment
    embeddings belong to the token at their position).  Use ``batch_dim=1`` for
    sequence-first models such as::

        def forward(self, text):              # text: (T, B) token ids, sequence first
            out, _ = self.lstm(self.embed(text))
            return self.hidden_to_label(out[-1])

    Args:
        model (nn.Module or callable): the classifier, used unchanged (never switched to
            eval mode nor moved; a warning is given if it is in training mode).
        reference_compatible (bool, optional): reproduce the arithmetic of the reference
            ``acd`` package exactly: affine layers as ``M(x) - M(0)``, batch norm's
            irrelevant part as a residual, one mask per forward, float32 masks and (for
            token inputs, as ``cd_text``) the bias of the output layer (a ``linear`` whose
            result, reshaped or plus other terms, is the output) in neither part.  Only
            useful to compare with the reference; the default mode computes ``W x``
            directly, which is better conditioned for localized masks.
            Default: False
        batch_size (int, optional): number of masks per forward (each forward carries
            ``batch_size`` relevant parts and one total; in ``reference_compatible`` mode
            ``2 * batch_size`` rows, relevant and irrelevant). Default: automatic, up to
            32 masks and about 2**21 input values per forward, and 1 (one mask per
            forward, as the reference) in ``reference_compatible`` mode
        batch_dim (int, optional): batch axis of the model input (1 for sequence-first
            text models; negative values count from the end). Tensor
            ``additional_forward_args`` with size 1 on this axis are repeated along it
            for the masks of one forward. Default: 0
        local (bool, optional): for image inputs ``(1, C, H, W)`` (default mode), compute
            each mask's relevant part only inside the box it can influence (the mask's
            bounding box grown by the receptive field of every layer; outside it the
            relevant part is that of the empty mask, computed once per forward), through
            convolutions, batch norm, activations, pooling, sums and concatenations; any
            other operation, or a box covering more than half of a map, goes on densely.
            Same numbers up to rounding, faster for small masks (ACD's blocks and
            blobs).  Masks are sorted by box size into the forwards.  None
            (default): on whenever the input is such an image; False: always dense
        dtype (torch.dtype, optional): computation dtype, e.g. ``torch.float64`` for a
            float32 model: the input and every floating constant the decomposition meets
            (weights, biases, batch-norm statistics) are cast to it on the fly; the model
            itself is not changed.  Why it matters: CD's bias split ``|r| / (|r| + |i|)``
            is steep where both parts are small, so deep networks with large biases or
            batch-norm shifts amplify rounding (measurements in
            ``benchmarks/RESULTS_cd.md``).  None (default): automatic, the input's dtype while
            the precision check (below) passes, float64 from the first failed check on
            (the results are returned in the input's dtype); an explicit dtype is used as
            given (a failed check then warns), and so is the input's dtype in
            ``reference_compatible`` mode, which keeps the reference's arithmetic.
        check_precision (bool, optional): for float32 / half computations, compute the
            largest and the smallest mask per new input in that dtype and in float64
            first, and compare.  A difference of more than ``PRECISION_TOLERANCE`` (1e-3)
            of the largest output switches the automatic dtype to float64 (before the
            masks are computed) or, for an explicit dtype or in ``reference_compatible``
            mode, warns (``RuntimeWarning``, once).  ``precision_error`` keeps the last
            measured relative error.  Costs those two masks in float64 per new input (the
            ones computed in the dtype of the run are kept as results).  Default: True
        check_batching (bool, optional): before the first forward with several masks,
            compare the first of two distinct masks computed alone with the two computed
            in one forward (in the dtype of the run).  The masks share the batch axis of
            one forward, so a model that mixes its batch (``x - x.mean()``,
            ``torch.flatten(x)``, ``x.view(-1)``, ``roll`` without dims: code written for
            a batch of one) would give each mask the others' contributions; if they
            differ (more than 1e-6 of the output in float64, more than the rounding the
            precision check measured, at least 1e-4, in float32) or the batched forward
            fails, this instance computes one mask per forward from then on and warns.
            ``batching_error`` keeps the measured difference.  Once per instance (one
            mask).  When they differ, the first mask is also computed twice in one
            forward: if that agrees with the batched result, the model does not mix its
            batch and the difference is rounding amplified by an ill-conditioned
            decomposition (kept in ``conditioning_error``; a warning says so and the masks
            stay batched).  Default: True

    Examples::

        >>> model = torchvision.models.vgg16().eval()
        >>> cd = CD(model)
        >>> x = torch.randn(1, 3, 224, 224)
        >>> masks = torch.zeros(2, 1, 224, 224); masks[0, :, :112] = 1; masks[1, :, 112:] = 1
        >>> rel, irr = cd.decompose(x, masks)          # (2, 1000) each
        >>> torch.allclose(rel + irr, model(x).expand(2, -1), atol=1e-5)
        True
        >>> attr = cd.attribute(x, target=3, feature_mask=segments)   # input-shaped
    """

    #: relative error (of the largest output) above which the precision check warns
    PRECISION_TOLERANCE = 1e-3

    def __init__(self, model: Callable, reference_compatible: bool = False,
                 batch_size: Optional[int] = None, batch_dim: int = 0,
                 local: Optional[bool] = None, dtype: Optional[torch.dtype] = None,
                 check_precision: bool = True, check_batching: bool = True) -> None:
        from captum_rap._core._propagation import unwrap_model

        model = unwrap_model(model, "CD")  # compiled: its module; TorchScript: a clear error
        super().__init__(model)
        self.model = model
        self.reference_compatible = bool(reference_compatible)
        self.local = local
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError("dtype must be a floating torch dtype (e.g. torch.float64), got %r" % (dtype,))
        self.dtype: Optional[torch.dtype] = dtype
        self.check_precision = bool(check_precision)
        #: relative error of the last precision check (None: not checked yet)
        self.precision_error: Optional[float] = None
        self._precision_checked: set = set()
        self._precision_warned = False
        self._auto_dtype: Optional[torch.dtype] = None  # float64 once a check failed
        self.check_batching = bool(check_batching)
        #: relative difference between batched and one-mask forwards (None: not checked)
        self.batching_error: Optional[float] = None
        #: difference of one mask computed in forwards of different sizes when that is
        #: rounding, not mixing (None: not seen; see ``check_batching``)
        self.conditioning_error: Optional[float] = None
        self._unbatched = False  # True once the batching check failed: one mask per forward
        self._reusable: dict = {}
        #: None = automatic (see ``batch_size`` above)
        self.batch_size: Optional[int] = int(batch_size) if batch_size else (1 if reference_compatible else None)
        self.batch_dim = int(batch_dim)
        self.num_forwards = 0  #: number of decomposed forwards of the requested masks so far
        self.num_check_forwards = 0  #: decomposed forwards of the precision / batching checks
        self.num_masks = 0  #: number of masks evaluated so far

    # ------------------------------------------------------------------------------
    def decompose(
        self,
        inputs: Tensor,
        masks: Optional[Tensor] = None,
        *,
        spans: Optional[Sequence[Tuple[int, int]]] = None,
        additional_forward_args: Any = None,
        batch_size: Optional[int] = None,
    ) -> Tuple[Tensor, Tensor]:
        r"""Relevant and irrelevant output of ``K`` feature groups of one input.

        Args:
            inputs (Tensor): one input, with a batch axis of size 1 (at ``batch_dim``);
                float features or integer token ids.
            masks (Tensor, optional): ``(K, *S)`` with ``S`` the input shape without its
                batch axis, or broadcastable to it (e.g. ``(K, 1, H, W)`` for images,
                ``(K, T)`` over token positions).  Values in [0, 1], 1 = relevant.
            spans (sequence of (int, int), optional): for token inputs, inclusive
                ``(start, stop)`` token spans instead of ``masks``.
            additional_forward_args (Any, optional): extra arguments of the model's
                forward, passed unchanged (tensors are repeated along the batch axis).
            batch_size (int, optional): masks per forward (default: the constructor's).

        Returns:
            (Tensor, Tensor): ``relevant`` and ``irrelevant``, each ``(K, C)`` for a model
            with ``C`` outputs; ``relevant + irrelevant`` equals the model's output
            (CNN logits incl. bias) up to rounding.

        Examples::

            >>> rel, irr = CD(model).decompose(x, masks)
            >>> rel[:, target]          # CD score of every group
        """
        if not isinstance(inputs, Tensor):
            raise TypeError("decompose expects a tensor input, got %r" % type(inputs).__name__)
        if inputs.is_inference():  # made under torch.inference_mode(): an ordinary copy
            with torch.inference_mode(False):
                inputs = inputs.clone()
        bd = self._batch_axis(inputs)
        if inputs.shape[bd] != 1:
            raise ValueError("decompose expects one input (size 1 along batch_dim=%d), got %s"
                             % (bd, tuple(inputs.shape)))
        feat_shape = tuple(s for d, s in enumerate(inputs.shape) if d != bd)
        is_tokens = not (inputs.is_floating_point() or inputs.is_complex())
        if not is_tokens and not bool(torch.isfinite(inputs).all()):
            raise ValueError("CD: the input contains NaN or infinite values (%d of %d)"
                             % (int((~torch.isfinite(inputs)).sum()), inputs.numel()))
        if spans is not None:
            if masks is not None:
                raise ValueError("give masks or spans, not both")
            if len(feat_shape) != 1:
                raise ValueError("spans need a 1-D token sequence per example")
            masks = spans_to_masks(spans, feat_shape[0], device=inputs.device)
        if masks is None:
            raise ValueError("masks (or spans) are required")
        masks = torch.as_tensor(masks, device=inputs.device)
        if masks.dim() == len(feat_shape):  # a single mask
            masks = masks.unsqueeze(0)
        elif masks.dim() != len(feat_shape) + 1:
            raise ValueError(
                "masks must have shape (K, %s) or broadcast to it with the same number of axes "
                "(e.g. (K, 1, H, W) for images), or (%s) for a single mask; got %s"
                % (", ".join(map(str, feat_shape)), ", ".join(map(str, feat_shape)), tuple(masks.shape)))
        K = masks.shape[0]
        try:
            masks = masks.expand((K,) + feat_shape) if masks.shape[1:] != feat_shape else masks
        except RuntimeError:
            raise ValueError("masks of shape %s do not broadcast to (K, %s)"
                             % (tuple(masks.shape), ", ".join(map(str, feat_shape))))
        if masks.is_floating_point() and not bool(torch.isfinite(masks).all()):
            raise ValueError("CD: the masks contain NaN or infinite values")
        if masks.is_complex():
            raise TypeError("CD: masks must be real (0/1 or in [0, 1]), got %s" % masks.dtype)
        if masks.numel() and masks.dtype != torch.bool and bool(((masks < 0) | (masks > 1)).any()):
            raise ValueError("CD: mask values must lie in [0, 1] (1 = relevant; integer masks hold 0/1), got "
                             "values in [%g, %g]; group ids belong in attribute(feature_mask=...)"
                             % (float(masks.min()), float(masks.max())))
        afa = _format_additional_forward_args(additional_forward_args)
        if K == 0:  # no groups: empty scores with the output's width
            with _ModelGuard(self.model, "CD"), torch.no_grad():
                out = self.model(*((inputs,) + (tuple(afa) if afa else ())))
            r, _ = split_output(out)
            r = r.reshape(1, -1) if r.dim() != 2 else r
            empty = r.new_zeros((0, r.shape[1]))
            return empty, empty.clone()
        bs = int(batch_size or self.batch_size or _auto_batch_size(feat_shape))
        dtype = self.dtype if self.dtype is not None else self._auto_dtype
        if not self._checks(inputs, masks, afa, is_tokens, dtype, bs):
            if self.dtype is None and not self.reference_compatible:  # automatic: float64 from now on
                self._auto_dtype = dtype = torch.float64
                _LOG.info("CD: switching to float64 computation (float32 off by %.2g of the output)",
                          self.precision_error)
        if self._unbatched:
            bs = 1
        # the masks the checks computed in the dtype of this run are results already
        # (not in reference_compatible mode: it computes one mask per forward)
        done = None if self.reference_compatible else self._reusable.get(
            dtype if dtype is not None else _model_dtype(self.model, inputs))
        self._reusable = {}
        if done is None:
            rel, irr = self._run(inputs, masks, bs, afa, is_tokens, dtype)
        else:
            idx, d_rel, d_irr = done
            rest = [k for k in range(K) if k not in set(idx)]
            rel = d_rel.new_empty((K,) + tuple(d_rel.shape[1:]))
            irr = d_irr.new_empty(rel.shape)
            rel[idx], irr[idx] = d_rel, d_irr
            if rest:
                r_rel, r_irr = self._run(inputs, masks[rest], bs, afa, is_tokens, dtype)
                rel[rest], irr[rest] = r_rel.to(rel.dtype), r_irr.to(rel.dtype)
        self.num_masks += K
        if self.dtype is None and inputs.is_floating_point() and rel.dtype != inputs.dtype:
            rel, irr = rel.to(inputs.dtype), irr.to(inputs.dtype)
        return rel, irr

    @property
    def computation_dtype(self) -> Optional[torch.dtype]:
        """The dtype the decomposition runs in: the explicit ``dtype``, float64 once the
        automatic precision check failed, else None (the input's dtype)."""
        return self.dtype if self.dtype is not None else self._auto_dtype

    def _batch_axis(self, inputs: Tensor) -> int:
        """``batch_dim`` as a non-negative axis of ``inputs``."""
        bd = self.batch_dim + inputs.dim() if self.batch_dim < 0 else self.batch_dim
        if not 0 <= bd < inputs.dim():
            raise ValueError("batch_dim=%d is not an axis of an input of shape %s"
                             % (self.batch_dim, tuple(inputs.shape)))
        return bd

    def _run(self, inputs, masks, bs, afa, is_tokens, dtype, warn=True, check=False):
        """The decomposition of ``masks`` (``(K, *S)``, broadcast) in batched forwards."""
        bd = self._batch_axis(inputs)
        K = masks.shape[0]
        face = _model_dtype(self.model, inputs)
        if dtype is not None and inputs.is_floating_point():
            inputs = inputs.to(dtype)
        mdtype = torch.float32 if (self.reference_compatible or is_tokens) else inputs.dtype
        masks = masks.to(mdtype)
        use_local = (self.local is not False and not self.reference_compatible and not is_tokens
                     and bd == 0 and inputs.dim() == 4)
        order = None
        if use_local and K > bs:  # masks of similar box sizes share a forward
            order = torch.tensor(sorted(range(K), key=box_area(masks).__getitem__), device=masks.device)
            masks = masks[order]
        rels, irrs = [], []
        with _ModelGuard(self.model, "CD", warn), torch.no_grad(), cd_context(
            self.model, reference=self.reference_compatible,
            linear_bias_to_neither=self.reference_compatible and is_tokens, dtype=dtype,
            face_dtype=face,
        ):
            for s in range(0, K, bs):
                m = masks[s:s + bs]
                k = m.shape[0]
                m = m.movedim(0, bd)  # batch axis of the masks -> batch_dim
                x = inputs.expand(*[k if d == bd else -1 for d in range(inputs.dim())])
                if is_tokens:
                    cd_in = TokenCDTensor(x.contiguous(), m.contiguous())
                else:
                    if self.reference_compatible:
                        cd_in = CDTensor(m * x, (1 - m) * x)
                    else:  # relevant part and total (the input, expanded: computed once)
                        loc = local_input(m * x, m) if use_local else None
                        cd_in = CDTensor.local(loc, inputs) if loc is not None else CDTensor(m * x, tot=x)
                args = (cd_in,) + (tuple(_repeat_args(afa, k, bd)) if afa else ())
                try:
                    out = self.model(*args)
                except UnsupportedOperationError:
                    raise
                except RuntimeError as e:
                    if k > 1 and afa and any(isinstance(a, Tensor) for a in afa):
                        raise RuntimeError(
                            "%s\nCD: the model failed on a batch of %d masks. Tensor "
                            "additional_forward_args of size 1 along batch_dim=%d are repeated "
                            "along that axis; one whose batch axis is elsewhere (e.g. the initial "
                            "state h0 of a batch_first LSTM) breaks. Use batch_size=1, or "
                            "create it inside forward." % (e, k, bd)) from e
                    raise
                r, i = split_output(out)
                rels.append(r.reshape(k, -1) if r.dim() != 2 else r)
                irrs.append(i.reshape(k, -1) if i.dim() != 2 else i)
                if check:
                    self.num_check_forwards += 1
                else:
                    self.num_forwards += 1
        rel, irr = torch.cat(rels, 0), torch.cat(irrs, 0)
        if order is not None:
            back = torch.empty_like(order)
            back[order] = torch.arange(K, device=order.device)
            rel, irr = rel[back], irr[back]
        return rel, irr

    def _check_indices(self, masks: Tensor) -> list:
        """Up to two distinct masks: the largest and the smallest."""
        K = masks.shape[0]
        flat = masks.reshape(K, -1)
        cover = flat.float().sum(1) if flat.shape[1] else torch.zeros(K)
        picked: list = []
        for j in (int(cover.argmax()), int(cover.argmin())):
            if all(not torch.equal(flat[j], flat[q]) for q in picked):
                picked.append(j)
        return picked

    def _checks(self, inputs, masks, afa, is_tokens, dtype, bs) -> bool:
        """The precision check (once per input) and the batching check (once per
        instance).  Returns False when the precision check failed (warns when the dtype
        was given explicitly); sets ``_unbatched`` (and warns) when the batching check
        failed.  The masks they compute are kept in ``_reusable`` (results dtype ->
        (indices, rel, irr))."""
        K = masks.shape[0]
        self._reusable = {}
        low = dtype if dtype is not None else _model_dtype(self.model, inputs)
        need_prec = (self.check_precision and K > 0 and low in (torch.float32, torch.float16, torch.bfloat16))
        key = _content_key(inputs, afa, low) if need_prec else None
        need_prec = need_prec and key not in self._precision_checked
        need_batch = self.check_batching and not self._unbatched and self.batching_error is None and bs > 1 and K > 1
        if not (need_prec or need_batch):
            return True
        idx = self._check_indices(masks)
        if need_batch and len(idx) < 2:
            self.batching_error = 0.0  # one distinct mask: nothing to mix
            need_batch = False
        sub = masks[idx]

        def run(m, n, dt):
            return self._run(inputs, m, n, afa, is_tokens, dt, warn=False, check=True)

        batch_fail = None
        first = None  # the masks in the run's dtype, batched
        try:
            first = run(sub, len(idx), dtype)
        except UnsupportedOperationError:
            raise
        except RuntimeError as e:  # e.g. a model that only runs on a batch of one
            if not need_batch:
                raise
            batch_fail = e
        ok = True
        if need_prec:
            if len(self._precision_checked) >= 4096:
                self._precision_checked.clear()
            self._precision_checked.add(key)
            n = len(idx) if batch_fail is None else 1
            m = sub if batch_fail is None else sub[:1]
            r64, i64 = run(m, n, torch.float64)
            if batch_fail is None:
                self._reusable[first[0].dtype] = (idx, first[0], first[1])
                self._reusable[torch.float64] = (idx, r64, i64)
                low_rel = first[0]
            else:
                low_rel = run(m, 1, dtype)[0]
                self._reusable[torch.float64] = (idx[:1], r64, i64)
            scale = float((r64 + i64).abs().max())
            err = float((low_rel.double() - r64).abs().max())
            self.precision_error = err / max(scale, 1e-30)
            ok = self.precision_error <= self.PRECISION_TOLERANCE
            if not ok:
                self._warn_precision(low_rel.dtype, err, scale)
        elif batch_fail is None:
            self._reusable[first[0].dtype] = (idx, first[0], first[1])
        if need_batch:
            # the first mask alone, in the dtype of the run (float64 once the precision
            # check failed): differences of the batched result above the rounding of that
            # dtype mean that the masks of one forward mix
            run_dt = torch.float64 if (not ok and self.dtype is None and not self.reference_compatible) else dtype
            one = run(sub[:1], 1, run_dt)
            if batch_fail is not None:
                self.batching_error = float("inf")
            else:
                batched = self._reusable.get(one[0].dtype)
                ref = batched[1][:1] if batched is not None else run(sub, len(idx), run_dt)[0][:1]
                scale = float((one[0] + one[1]).abs().max())
                self.batching_error = float((ref - one[0]).abs().max()) / max(scale, 1e-30)
            tol = 1e-6 if one[0].dtype == torch.float64 else max(10 * (self.precision_error or 0.0), 1e-4)
            if self.batching_error > tol and batch_fail is None:
                # mixing, or rounding amplified? The first mask twice in one forward of the
                # same size: a model that mixes its batch gives it other contributions next
                # to another mask than next to itself; an ill-conditioned decomposition of a
                # per-example model gives the same result in forwards of the same size
                two = run(torch.cat([sub[:1], sub[:1]]), 2, run_dt)[0][:1]
                mixing = float((two - ref).abs().max()) / max(scale, 1e-30)
                if mixing <= tol:
                    self.conditioning_error = self.batching_error
                    self.batching_error = mixing
                    warnings.warn(
                        "CD: the decomposition is ill-conditioned for this model and input even in %s: "
                        "the same mask computed in forwards of different sizes (whose rounding differs "
                        "by one ulp) differs by %.3g of the output. CD's bias split |r| / (|r| + |i|) "
                        "amplifies rounding at units where both parts nearly vanish (e.g. a full or "
                        "empty mask through batch norm / gates); scores at that level are not "
                        "reliable. (The model does not mix its batch: masks stay batched.)"
                        % (str(one[0].dtype).replace("torch.", ""), self.conditioning_error),
                        RuntimeWarning, stacklevel=4)
            if self.batching_error > tol:
                self._unbatched = True
                self._reusable = {one[0].dtype: (idx[:1], one[0], one[1])}
                warnings.warn(
                    "CD: the model %s when several masks share a forward (difference %.3g of the "
                    "output): it mixes or reshapes the batch axis (e.g. x - x.mean(), "
                    "torch.flatten(x), x.view(-1)), or a tensor in additional_forward_args has "
                    "its batch axis elsewhere than batch_dim (e.g. h0 of a batch_first LSTM). "
                    "Computing one mask per forward from now on (slower, correct)."
                    % ("fails (%s: %s)" % (type(batch_fail).__name__, str(batch_fail).splitlines()[0])
                       if batch_fail is not None else "gives different results", self.batching_error),
                    RuntimeWarning, stacklevel=4)
        return ok

    def _warn_precision(self, low_dtype, err, scale) -> None:
        if (self.dtype is not None or self.reference_compatible) and not self._precision_warned:
            self._precision_warned = True
            name = str(low_dtype).replace("torch.", "")
            warnings.warn(
                "CD: the decomposition is ill-conditioned for this model and input in %s: "
                "computed in float64, the scores differ by %.3g (%.2g of the largest output, %.3g). "
                "CD's bias split |r| / (|r| + |i|) amplifies rounding through deep networks with "
                "large biases / batch-norm shifts; the %s scores are not reliable. Use "
                "dtype=torch.float64 (the model is not changed), or the default mode with "
                "dtype=None (automatic)."
                % (name, err, self.precision_error, scale, name), RuntimeWarning, stacklevel=5)

    # ------------------------------------------------------------------------------
    @log_usage()
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor]],
        target: Any = None,
        feature_mask: Union[None, Tensor, Tuple[Tensor]] = None,
        additional_forward_args: Any = None,
        batch_size: Optional[int] = None,
    ) -> Union[Tensor, Tuple[Tensor]]:
        r"""CD score of every feature group, spread over the group's features.

        Follows Captum's ``FeatureAblation`` convention: ``feature_mask`` holds integer
        group ids (broadcastable to the input, one mask per example or shared); each
        feature of the input receives the CD score (relevant logit of ``target``) of its
        whole group.  Inputs with a batch of N examples are decomposed one example at a
        time (all groups of one example in batched forwards).

        Args:
            inputs (Tensor or tuple of one Tensor): ``(N, ...)`` inputs (float features or
                integer token ids; the batch axis is ``batch_dim``).
            target (int, tuple, Tensor or list, optional): output index per example;
                None: the predicted class (arg-max of the model's output).
            feature_mask (Tensor or tuple of one Tensor, optional): integer group ids,
                shape broadcastable to the input (first axis 1 or N).  None: every scalar
                feature is its own group.
            additional_forward_args (Any, optional): extra forward arguments.
            batch_size (int, optional): masks per forward.

        Returns:
            Tensor or tuple of one Tensor: attributions with the shape of ``inputs``
            (floating point), in the same format as ``inputs``.

        Examples::

            >>> cd = CD(model)
            >>> attr = cd.attribute(images, target=labels, feature_mask=superpixels)
        """
        is_inputs_tuple = _is_tuple(inputs)
        inputs_t = _format_tensor_into_tuples(inputs)
        if len(inputs_t) != 1:
            raise NotImplementedError("CD.attribute supports a single input tensor")
        x = inputs_t[0]
        fm = None
        if feature_mask is not None:
            fms = _format_tensor_into_tuples(feature_mask)
            if len(fms) != 1 or not isinstance(fms[0], Tensor):
                raise TypeError("CD: feature_mask must be one integer tensor (or a tuple of one)")
            fm = fms[0]
            if fm.is_floating_point() or fm.is_complex():
                raise TypeError("CD: feature_mask must hold integer group ids (as Captum's FeatureAblation), "
                                "got a %s tensor" % fm.dtype)
        bd = self._batch_axis(x)
        N = x.shape[bd]
        if fm is not None and fm.dim() == x.dim() and fm.shape[bd] not in (1, N):
            raise ValueError("CD: feature_mask has %d masks along the batch axis for %d inputs (give 1 or %d)"
                             % (fm.shape[bd], N, N))
        if isinstance(target, list) and len(target) != N:
            raise ValueError("CD: target list has %d entries for %d inputs (one per input, as in Captum)"
                             % (len(target), N))
        afa = _format_additional_forward_args(additional_forward_args)
        out_dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
        attr = torch.zeros(x.shape, dtype=out_dtype, device=x.device)
        feat_shape = tuple(s for d, s in enumerate(x.shape) if d != bd)
        for n in range(N):
            xn = x.narrow(bd, n, 1)
            if fm is None:
                fmn = torch.arange(int(torch.tensor(feat_shape).prod().item()) if feat_shape else 1,
                                   device=x.device).reshape(feat_shape)
            else:
                f = fm.narrow(bd, n if fm.shape[bd] > 1 else 0, 1) if fm.dim() == x.dim() else fm
                fmn = f.squeeze(bd) if f.dim() == x.dim() else f
                fmn = fmn.expand(feat_shape) if fmn.shape != feat_shape else fmn
            groups = torch.unique(fmn)
            masks = (fmn.unsqueeze(0) == groups.view((-1,) + (1,) * fmn.dim()))
            afa_n = _slice_args(afa, n, bd) if afa else None
            rel, irr = self.decompose(xn, masks, additional_forward_args=afa_n, batch_size=batch_size)
            t = _target_for(target, n, rel[0] + irr[0], N)
            scores = rel[:, t].to(out_dtype)
            amap = (masks.to(out_dtype) * scores.view((-1,) + (1,) * fmn.dim())).sum(0)
            idx = [slice(None)] * x.dim()
            idx[bd] = n
            attr[tuple(idx)] = amap
        return _format_output(is_inputs_tuple, (attr,))

    def has_convergence_delta(self) -> bool:
        return False


def _content_key(inputs: Tensor, afa, dtype) -> str:
    """Identity of an input for the precision check: a hash of its values (bytes),
    shape, dtype and device, and of the tensors among ``additional_forward_args``, and the
    computation dtype.  (A key by address and version would let a new input written at a
    reused address -- a recycled buffer, ``torch.from_numpy`` of a reused array -- skip
    the check.)"""
    h = hashlib.blake2b(digest_size=16)
    h.update(str(dtype).encode())
    for t in [inputs] + [a for a in (afa or ()) if isinstance(a, Tensor)]:
        d = t.detach()
        h.update(repr((tuple(d.shape), str(d.dtype), str(d.device))).encode())
        h.update(d.contiguous().reshape(-1).view(torch.uint8).cpu().numpy().tobytes())
    return h.hexdigest()


def _model_dtype(model, inputs: Tensor) -> torch.dtype:
    """The floating dtype the model computes in: that of a float input, else of its first
    floating parameter (token models), else the default dtype."""
    if inputs.is_floating_point():
        return inputs.dtype
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            if p.is_floating_point():
                return p.dtype
    return torch.get_default_dtype()


def _target_for(target, n, logits, N: int = 1) -> int:
    """The output index explained for example ``n`` of ``N``, checked against the number
    of outputs (``logits`` of that example)."""
    C = int(logits.numel())
    if target is None:
        return int(torch.argmax(logits).item())
    if isinstance(target, np.ndarray):  # as the propagation methods: integer arrays are index tensors
        if target.dtype.kind not in "iu":
            raise TypeError("target must hold integers, got an array of dtype %s" % target.dtype)
        target = torch.as_tensor(target)
    if isinstance(target, tuple):
        raise NotImplementedError("tuple targets (multi-dimensional outputs) are not supported")
    if isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex():
            raise TypeError("target must hold integers, got a %s tensor" % target.dtype)
        flat = target.reshape(-1)
        if flat.numel() not in (1, N):
            raise ValueError("target has %d entries for %d examples" % (flat.numel(), N))
        t = flat[n if flat.numel() > 1 else 0].item()
    elif isinstance(target, list):
        if len(target) not in (1, N):
            raise ValueError("target has %d entries for %d examples" % (len(target), N))
        t = target[n if len(target) > 1 else 0]
        if isinstance(t, tuple):
            raise NotImplementedError("tuple targets (multi-dimensional outputs) are not supported")
    else:
        t = target
    if isinstance(t, Tensor) and t.numel() == 1:
        t = t.item()
    if isinstance(t, bool) or not isinstance(t, numbers.Integral):
        raise TypeError("target must be an integer output index, got %r" % (t,))
    if not -C <= int(t) < C:  # negative indices count from the end, as in Captum's indexing
        raise ValueError("target %d is not an output index of a model with %d outputs" % (int(t), C))
    return int(t) % C


def _repeat_args(afa, k, bd):
    for a in afa:
        if isinstance(a, Tensor) and a.dim() > bd and a.shape[bd] == 1:
            yield a.expand(*[k if d == bd else -1 for d in range(a.dim())])
        else:
            yield a


def _slice_args(afa, n, bd):
    out = []
    for a in afa:
        if isinstance(a, Tensor) and a.dim() > bd and a.shape[bd] > 1:
            out.append(a.narrow(bd, n, 1))
        else:
            out.append(a)
    return tuple(out)
