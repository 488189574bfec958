"""Local relevant parts: CD of localized masks on images, computed inside boxes.

For a mask whose ones lie in a box, the relevant part at a position outside the box's
receptive field does not depend on the mask: it equals that of the *empty* mask (the
background ``bg``; not zero, because the bias split gives ``(|r| + 1e-20) / (|r| + |i| +
2e-20)`` of the bias to ``rel`` even where ``r = 0``, half of it where both parts vanish).
So an image activation ``(K, C, H, W)`` is kept as

* ``bg``: the background relevant part ``(1, C, H, W)`` (propagated by the ordinary rules
  as one extra row);
* ``crop``: each mask's relevant part inside its box ``(K, C, h, w)`` (one box size per
  forward, so the K boxes are computed as one batch), at origins ``ys``, ``xs``.

Convolutions, batch norm, activations, max / average pooling and sums compute only the
boxes (grown by the receptive field of the layer: each output box is computed from the
window of the input it depends on, taken from the box and the background).  Any other
operation materializes the dense relevant part (``bg`` everywhere, the box pasted in) and
the ordinary rules go on; so do layers whose box would cover more than ``MAX_FRACTION`` of
the map.  The numbers are those of the dense computation (up to rounding).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

#: a layer whose boxes cover more than this fraction of its output map is computed densely
MAX_FRACTION = 0.5


def pair(v) -> Tuple[int, int]:
    if isinstance(v, (list, tuple)):
        if len(v) == 1:
            return int(v[0]), int(v[0])
        return int(v[0]), int(v[1])
    return int(v), int(v)


class LocalRel:
    """Relevant part of K masks: background plus one box per mask (see module docstring)."""

    __slots__ = ("bg", "crop", "ys", "xs")

    def __init__(self, bg: torch.Tensor, crop: torch.Tensor, ys: Sequence[int], xs: Sequence[int]) -> None:
        self.bg = bg
        self.crop = crop
        self.ys = [int(v) for v in ys]
        self.xs = [int(v) for v in xs]

    @property
    def box(self) -> Tuple[int, int]:
        return int(self.crop.shape[-2]), int(self.crop.shape[-1])

    def materialize(self) -> torch.Tensor:
        """Dense ``(K, C, H, W)`` relevant part."""
        K = self.crop.shape[0]
        out = self.bg.expand((K,) + tuple(self.bg.shape[1:])).clone()
        h, w = self.box
        for k, (y, x) in enumerate(zip(self.ys, self.xs)):
            out[k, :, y:y + h, x:x + w] = self.crop[k]
        return out

    def windows(self, y0s: Sequence[int], x0s: Sequence[int], ph: int, pw: int) -> torch.Tensor:
        """``(K, C, ph, pw)`` windows of every mask's dense relevant part with origins
        ``(y0s[k], x0s[k])`` in image coordinates; outside the image: zeros (the padding
        of a convolution)."""
        K, C = self.crop.shape[:2]
        H, W = self.bg.shape[-2:]
        h, w = self.box
        P = self.bg.new_zeros((K, C, ph, pw))
        for k in range(K):
            y0, x0 = int(y0s[k]), int(x0s[k])
            iy0, iy1 = max(y0, 0), min(y0 + ph, H)
            ix0, ix1 = max(x0, 0), min(x0 + pw, W)
            if iy0 < iy1 and ix0 < ix1:
                P[k, :, iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] = self.bg[0, :, iy0:iy1, ix0:ix1]
            cy, cx = self.ys[k], self.xs[k]
            jy0, jy1 = max(cy, y0), min(cy + h, y0 + ph)
            jx0, jx1 = max(cx, x0), min(cx + w, x0 + pw)
            if jy0 < jy1 and jx0 < jx1:
                P[k, :, jy0 - y0:jy1 - y0, jx0 - x0:jx1 - x0] = self.crop[k, :, jy0 - cy:jy1 - cy, jx0 - cx:jx1 - cx]
        return P


def boxes(t: torch.Tensor, ys: Sequence[int], xs: Sequence[int], h: int, w: int) -> torch.Tensor:
    """``(K, C, h, w)`` boxes of a map ``t``: of its one row (1, C, H, W) for every mask,
    or of row k for mask k."""
    one = t.shape[0] == 1
    return torch.stack([t[0 if one else k, :, y:y + h, x:x + w] for k, (y, x) in enumerate(zip(ys, xs))])


def out_ranges(starts: Sequence[int], n: int, k: int, s: int, p: int, d: int,
               size_out: int) -> Tuple[List[int], int]:
    """Output rows of a sliding window (kernel ``k``, stride ``s``, padding ``p``,
    dilation ``d``) that see input rows ``[start, start + n)``, as one common length and
    per-box starts (inside ``[0, size_out)``)."""
    lo, ln = [], []
    for a in starts:
        o0 = max(-(-(a + p - (k - 1) * d) // s), 0)
        o1 = min((a + n - 1 + p) // s, size_out - 1)
        if o1 < o0:  # sees no output (stride gaps): any one row will do
            o0 = o1 = min(o0, size_out - 1)
        lo.append(o0)
        ln.append(o1 - o0 + 1)
    m = max(ln)
    return [min(o, size_out - m) for o in lo], m


class Windows:
    """Output boxes of a sliding-window layer and the input windows they depend on."""

    __slots__ = ("ys", "xs", "h", "w", "y0s", "x0s", "ph", "pw")

    def __init__(self, ys, xs, h, w, y0s, x0s, ph, pw):
        self.ys, self.xs, self.h, self.w = ys, xs, h, w
        self.y0s, self.x0s, self.ph, self.pw = y0s, x0s, ph, pw


def plan_windows(loc: LocalRel, kernel, stride, padding, dilation, out_hw,
                 max_fraction: float = MAX_FRACTION) -> Optional[Windows]:
    """Boxes of the output map ``out_hw`` of a window layer (2-D kernel, stride, padding,
    dilation pairs) that see each mask's box, with the input windows (origins in image
    coordinates, size) to compute them from; None when they would cover more than
    ``max_fraction`` of the output map (the layer is computed densely then)."""
    h, w = loc.box
    ys, nh = out_ranges(loc.ys, h, kernel[0], stride[0], padding[0], dilation[0], out_hw[0])
    xs, nw = out_ranges(loc.xs, w, kernel[1], stride[1], padding[1], dilation[1], out_hw[1])
    if nh * nw > max_fraction * out_hw[0] * out_hw[1]:
        return None
    return Windows(ys, xs, nh, nw,
                   [y * stride[0] - padding[0] for y in ys], [x * stride[1] - padding[1] for x in xs],
                   (nh - 1) * stride[0] + (kernel[0] - 1) * dilation[0] + 1,
                   (nw - 1) * stride[1] + (kernel[1] - 1) * dilation[1] + 1)


def common_boxes(locs: Sequence[LocalRel], hw, max_fraction: float = MAX_FRACTION):
    """``(ys, xs, h, w, crops)``: boxes containing every operand's box of each mask and
    each operand's crop on them (sums and concatenations), or None when they would cover
    more than ``max_fraction`` of the map."""
    ys, nh = union_ranges([l.ys for l in locs], [l.box[0] for l in locs], hw[0])
    xs, nw = union_ranges([l.xs for l in locs], [l.box[1] for l in locs], hw[1])
    if nh * nw > max_fraction * hw[0] * hw[1]:
        return None
    crops = [l.crop if (l.ys == ys and l.xs == xs and l.box == (nh, nw)) else l.windows(ys, xs, nh, nw)
             for l in locs]
    return ys, xs, nh, nw, crops


def union_ranges(starts: Sequence[Sequence[int]], lengths: Sequence[int], size: int) -> Tuple[List[int], int]:
    """Common boxes (one length) containing, for every mask, the boxes of all operands
    (``starts[j][k]``, ``lengths[j]``: start of operand j's box of mask k, its length)."""
    K = len(starts[0])
    lo = [min(st[k] for st in starts) for k in range(K)]
    hi = [max(st[k] + n for st, n in zip(starts, lengths)) for k in range(K)]
    m = max(h - l for l, h in zip(lo, hi))
    return [min(l, size - m) for l in lo], m


def mask_boxes(masks: torch.Tensor) -> Tuple[List[int], List[int], List[int], List[int]]:
    """Bounding boxes ``(y0, y1, x0, x1)`` (exclusive ends) of ``(K, ..., H, W)`` masks
    over the last two axes (an empty mask gets a 1x1 box at the origin)."""
    K = masks.shape[0]
    H, W = masks.shape[-2:]
    nz = masks.reshape(K, -1, H, W).ne(0).any(1)
    rows, cols = nz.any(2), nz.any(1)
    y0s, y1s, x0s, x1s = [], [], [], []
    for k in range(K):
        r = torch.nonzero(rows[k]).flatten()
        c = torch.nonzero(cols[k]).flatten()
        if r.numel() == 0:
            y0s.append(0), y1s.append(1), x0s.append(0), x1s.append(1)
        else:
            y0s.append(int(r[0])), y1s.append(int(r[-1]) + 1)
            x0s.append(int(c[0])), x1s.append(int(c[-1]) + 1)
    return y0s, y1s, x0s, x1s


def local_input(rel0: torch.Tensor, masks: torch.Tensor, max_fraction: float = MAX_FRACTION) -> Optional[LocalRel]:
    """The input's relevant part ``rel0 = m * x`` (K, C, H, W) as boxes, or None when the
    common box would cover more than ``max_fraction`` of the image."""
    H, W = rel0.shape[-2:]
    y0s, y1s, x0s, x1s = mask_boxes(masks)
    h = max(b - a for a, b in zip(y0s, y1s))
    w = max(b - a for a, b in zip(x0s, x1s))
    if h * w > max_fraction * H * W:
        return None
    ys = [min(a, H - h) for a in y0s]
    xs = [min(a, W - w) for a in x0s]
    bg = rel0.new_zeros((1,) + tuple(rel0.shape[1:]))
    return LocalRel(bg, boxes(rel0, ys, xs, h, w), ys, xs)


def box_area(masks: torch.Tensor) -> List[int]:
    y0s, y1s, x0s, x1s = mask_boxes(masks)
    return [(b - a) * (d - c) for a, b, c, d in zip(y0s, y1s, x0s, x1s)]
