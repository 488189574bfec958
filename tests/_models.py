"""Model builders shared by the architecture tests of LRP and RAP."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn


# ----------------------------------------------------------------------------------------
# small custom models covering the layer zoo
# ----------------------------------------------------------------------------------------


class ZooNet2d(nn.Module):
    """ZeroPad2d at the input, a reused nn.ReLU, an in-place ReLU, a functional residual,
    F.relu / F.hardtanh in forward, ReLU6, LeakyReLU, Hardtanh, depthwise + dilated convs,
    max / avg / adaptive avg / adaptive max pooling, Dropout, Identity, Flatten,
    BatchNorm2d and BatchNorm1d."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.pad = nn.ZeroPad2d((1, 2, 1, 0))
        self.conv1 = nn.Conv2d(3, 8, 3)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()  # reused: after bn1 and after fc1
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu6 = nn.ReLU6()
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1, groups=8)  # depthwise
        self.relu_inplace = nn.ReLU(inplace=True)
        self.leaky = nn.LeakyReLU(0.1)
        self.maxpool = nn.MaxPool2d(2)
        self.conv4 = nn.Conv2d(8, 12, 3, padding=2, dilation=2)
        self.hardtanh = nn.Hardtanh(-2.0, 2.0)
        self.avgpool = nn.AvgPool2d(2)
        self.dropout = nn.Dropout(0.3)
        self.identity = nn.Identity()
        self.adapt_avg = nn.AdaptiveAvgPool2d(2)
        self.adapt_max = nn.AdaptiveMaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(2 * 12 * 4, 32)
        self.bn1d = nn.BatchNorm1d(32)
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x):
        h = self.relu(self.bn1(self.conv1(self.pad(x))))
        y = h
        h = self.relu6(self.conv2(h))
        h = h + y  # functional residual
        h = self.relu_inplace(self.conv3(h))
        h = self.leaky(h)
        h = self.maxpool(h)
        h = self.hardtanh(self.conv4(h))
        h = F.hardtanh(h, -1.5, 1.5)
        h = self.identity(self.dropout(self.avgpool(h)))
        h = torch.cat([self.adapt_avg(h), self.adapt_max(h)], dim=1)
        h = self.flatten(h)
        h = self.relu(self.bn1d(self.fc1(h)))
        h = F.relu(h)
        return self.fc2(h)


class ZooNet13d(nn.Module):
    """Conv3d input layer, reshape to Conv1d, BatchNorm1d on (N, C, L), MaxPool1d,
    AvgPool1d, AdaptiveMaxPool1d, in-place F.relu_."""

    def __init__(self, num_classes=6):
        super().__init__()
        self.conv3d = nn.Conv3d(2, 4, 3, padding=1, stride=(1, 2, 2))
        self.relu = nn.ReLU()
        self.conv1d = nn.Conv1d(16, 8, 3, padding=1)
        self.bn = nn.BatchNorm1d(8)
        self.pool = nn.MaxPool1d(2)
        self.avg = nn.AvgPool1d(2)
        self.conv1d_b = nn.Conv1d(8, 8, 4, padding="same", groups=2)
        self.amax = nn.AdaptiveMaxPool1d(3)
        self.fc = nn.Linear(8 * 3, num_classes)

    def forward(self, x):
        h = self.relu(self.conv3d(x))  # (N, 4, 4, 4, 4)
        h = h.reshape(h.shape[0], 16, -1)  # (N, 16, 16)
        h = self.pool(F.relu_(self.bn(self.conv1d(h))))
        h = self.avg(self.relu(self.conv1d_b(h)))
        h = self.amax(h).flatten(1)
        return self.fc(h)


def efficientnet_lite0_random():
    pkg = pytest.importorskip("efficientnet_lite_pytorch")
    return pkg.EfficientNet.from_name("efficientnet-lite0")


# ----------------------------------------------------------------------------------------
# the CD / ACD reference code's models (the fixtures in ../shared/fixtures were made with them)
# ----------------------------------------------------------------------------------------


def small_cnn():
    """The ``acd`` package's MNIST CNN."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.AvgPool2d(1), nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Dropout(0.25),
        nn.Linear(32, 10))


class LSTMSentiment(nn.Module):
    """The reference's text model shape: embed -> LSTM (sequence first) -> last step -> linear."""

    def __init__(self, vocab, emb=16, hidden=32, classes=2, **lstm_kw):
        super().__init__()
        self.embed = nn.Embedding(vocab, emb)
        self.lstm = nn.LSTM(emb, hidden, **lstm_kw)
        d = 2 if lstm_kw.get("bidirectional") else 1
        self.hidden_to_label = nn.Linear(d * hidden, classes)

    def forward(self, text):
        out, _ = self.lstm(self.embed(text))
        return self.hidden_to_label(out[-1])
