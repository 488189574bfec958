"""RAP figures built on Captum's visualization helpers."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from captum_rap import RAP  # noqa: E402
from captum_rap.visualization import positive_negative, to_hwc, visualize_rap, visualize_rap_grid  # noqa: E402


def _model():
    torch.manual_seed(0)
    # hidden convolutions: RAP's uniform shift creates the irrelevant (negative) part
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(6 * 8 * 8, 4)).eval()


def test_to_hwc_layouts():
    t = torch.arange(2 * 3 * 5, dtype=torch.float32).view(3, 2, 5)
    assert to_hwc(t).shape == (2, 5, 3)
    assert to_hwc(t[None]).shape == (2, 5, 3)
    assert np.array_equal(to_hwc(to_hwc(t)), to_hwc(t))
    assert to_hwc(torch.zeros(5, 6)).shape == (5, 6, 1)
    with pytest.raises(ValueError):
        to_hwc(torch.zeros(2, 3, 4, 4))


def test_positive_negative_split_sums_channels():
    a = torch.tensor([[[1.0, -2.0]], [[0.5, -0.5]], [[-3.0, 1.0]]])  # (3, 1, 2)
    pos, neg = positive_negative(a)
    # channel sums: [-1.5, -1.5]
    assert np.allclose(pos, [[0.0, 0.0]]) and np.allclose(neg, [[-1.5, -1.5]])
    b = torch.tensor([[[2.0, -1.0]]])
    pos, neg = positive_negative(b)
    assert np.allclose(pos, [[2.0, 0.0]]) and np.allclose(neg, [[0.0, -1.0]])


def test_visualize_rap_panels():
    model = _model()
    x = torch.randn(1, 3, 16, 16)
    attr = RAP(model).attribute(x, target=1)
    fig, axes = visualize_rap(attr[0], x[0])
    assert len(axes) == 4
    assert [a.get_title() for a in axes] == ["input", "relevant (positive)", "irrelevant (negative)", "signed"]
    fig2, axes2 = visualize_rap(attr[0])
    assert len(axes2) == 3
    fig3, axes3 = visualize_rap_grid([attr[0], -attr[0]], x[0], names=["RAP", "minus"])
    assert axes3.shape == (2, 4)
    # the relevant panel of the second row shows the first row's irrelevant part
    img_pos = axes3[1, 1].images[0].get_array()
    assert np.allclose(np.asarray(img_pos), -positive_negative(attr[0])[1])


def test_visualize_rap_empty_part_does_not_fail():
    attr = torch.ones(3, 8, 8)  # no irrelevant part
    fig, axes = visualize_rap(attr)
    assert axes[1].get_title().endswith("none")
