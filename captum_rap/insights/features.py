"""Feature descriptions for :class:`~captum_rap.insights.AttributionVisualizer`.

The constructors take the same arguments as the ones of Captum Insights (Captum <= 0.8),
so code written for ``captum.insights.attr_vis.features`` ports by changing the import.
Each feature describes one input tensor of the model: how a raw example becomes a model
input (``input_transforms``), what the baseline is (``baseline_transforms``, used by
Integrated Gradients and Occlusion) and how the raw example is shown
(``visualization_transform``).
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Union

import torch
from torch import Tensor

__all__ = ["BaseFeature", "ImageFeature", "TextFeature", "GeneralFeature"]

TransformArg = Optional[Union[Callable, Sequence[Callable]]]


def _as_transform_list(transforms: TransformArg) -> List[Callable]:
    if transforms is None:
        return []
    if callable(transforms):
        return [transforms]
    out = list(transforms)
    for t in out:
        if not callable(t):
            raise TypeError(f"transforms must be callables, got {type(t).__name__}")
    return out


class BaseFeature:
    r"""One input of the model, as shown in the Insights UI.

    Args:
        name (str): label of the feature in the UI, e.g. ``"Photo"``.
        baseline_transforms (callable or list of callables, optional): applied to the
            model input of one example (without its batch axis) to build the baseline of
            Integrated Gradients and Occlusion.  Only the first one is used; without any,
            the baseline is all zeros.
        input_transforms (callable or list of callables, optional): applied in order to
            the raw example (without its batch axis) to obtain the model input.
        visualization_transform (callable, optional): applied to the raw example (with its
            batch axis of size 1) to obtain what is displayed.
    """

    def __init__(
        self,
        name: str,
        baseline_transforms: TransformArg,
        input_transforms: TransformArg,
        visualization_transform: Optional[Callable],
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("a feature needs a non-empty name")
        self.name = name
        self.baseline_transforms = _as_transform_list(baseline_transforms)
        self.input_transforms = _as_transform_list(input_transforms)
        self.visualization_transform = visualization_transform

    @staticmethod
    def visualization_type() -> str:
        """Kind of display: ``"image"``, ``"text"`` or ``"general"``."""
        raise NotImplementedError

    # ---- helpers used by the visualizer --------------------------------------------
    def to_model_input(self, raw: Tensor) -> Tensor:
        """Raw example ``(1, ...)`` -> model input ``(1, ...)`` (transforms see one example
        without its batch axis, as in Captum Insights)."""
        x = raw[0]
        for t in self.input_transforms:
            x = t(x)
        if not isinstance(x, Tensor):
            raise TypeError(f"the input transforms of feature {self.name!r} must return a tensor")
        return x.unsqueeze(0)

    def baseline(self, model_input: Tensor) -> Tensor:
        """Baseline for one model input ``(1, ...)`` (zeros without baseline transforms)."""
        if not self.baseline_transforms:
            return torch.zeros_like(model_input)
        b = self.baseline_transforms[0](model_input[0])
        if not isinstance(b, Tensor):
            b = torch.as_tensor(b, dtype=model_input.dtype)
        return b.to(model_input.dtype).expand_as(model_input[0]).unsqueeze(0)

    def display_data(self, raw: Tensor) -> Any:
        """What is shown for the raw example ``(1, ...)``."""
        if self.visualization_transform is not None:
            return self.visualization_transform(raw)
        return raw


class ImageFeature(BaseFeature):
    r"""An image input, ``(N, C, H, W)`` with C = 1 (grey) or 3 (RGB).

    Args:
        name (str): label in the UI, e.g. ``"Photo"``.
        baseline_transforms (callable or list of callables): builds the baseline from the
            model input of one example (``(C, H, W)``), e.g. ``lambda x: x * 0``.
        input_transforms (callable or list of callables): raw ``(C, H, W)`` example ->
            model input, e.g. a normalisation.
        visualization_transform (callable, optional): raw ``(1, C, H, W)`` example -> the
            image to display (tensor or array, CHW or HWC); without it the raw example is
            displayed, rescaled to [0, 1] when it lies outside.

    Examples::

        >>> normalize = lambda x: (x - 0.5) / 0.25
        >>> feature = ImageFeature("Photo", baseline_transforms=[lambda x: x * 0],
        ...                        input_transforms=[normalize])
    """

    def __init__(
        self,
        name: str,
        baseline_transforms: TransformArg,
        input_transforms: TransformArg,
        visualization_transform: Optional[Callable] = None,
    ) -> None:
        super().__init__(name, baseline_transforms, input_transforms, visualization_transform)

    @staticmethod
    def visualization_type() -> str:
        return "image"


class TextFeature(BaseFeature):
    r"""A token sequence, ``(N, T)`` integer ids (or embeddings after ``input_transforms``).

    Args:
        name (str): label in the UI, e.g. ``"Review"``.
        baseline_transforms (callable or list of callables): builds the baseline from the
            model input of one example (e.g. all padding tokens).
        input_transforms (callable or list of callables): raw example -> model input.
        visualization_transform (callable): raw ``(1, T)`` example -> its tokens, as a list
            of strings (or one string, split on whitespace).

    Examples::

        >>> feature = TextFeature("Review", baseline_transforms=None, input_transforms=None,
        ...                       visualization_transform=lambda ids: [vocab[i] for i in ids[0]])
    """

    @staticmethod
    def visualization_type() -> str:
        return "text"

    def words(self, raw: Tensor) -> List[str]:
        """Tokens of the raw example ``(1, T)`` as strings."""
        shown = self.display_data(raw)
        if isinstance(shown, str):
            return shown.split()
        if isinstance(shown, Tensor):
            return [str(v) for v in shown.reshape(-1).tolist()]
        return [str(w) for w in shown]


class GeneralFeature(BaseFeature):
    r"""A dense vector input ``(N, K)`` whose K entries have names (``categories``).

    Args:
        name (str): label in the UI.
        categories (list of str): names of the K entries, in order.

    Examples::

        >>> feature = GeneralFeature("Metadata", categories=["age", "weight", "height"])
    """

    def __init__(self, name: str, categories: List[str]) -> None:
        super().__init__(name, None, None, None)
        self.categories = [str(c) for c in categories]

    @staticmethod
    def visualization_type() -> str:
        return "general"
