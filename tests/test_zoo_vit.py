"""The shipped Fashion-MNIST Vision Transformer (captum_rap.zoo.fashion_mnist_vit): loads offline,
is torchvision's unchanged class, and is as accurate as claimed on the shipped test subset (and on
the full official test set where the Debian package ``dataset-fashion-mnist`` is installed)."""

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("torchvision")
from torchvision.models.vision_transformer import VisionTransformer

from captum_rap import zoo

DATA = Path(zoo.__file__).resolve().parent / "data"
DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def _accuracy(model, images, labels, batch=250):
    correct = 0
    with torch.no_grad():
        for i in range(0, len(images), batch):
            pred = model(zoo.fmnist_preprocess(images[i:i + batch])).argmax(1)
            correct += int((pred == labels[i:i + batch]).sum())
    return correct / len(images)


def _read_idx(path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


@pytest.fixture(scope="module")
def model():
    return zoo.fashion_mnist_vit()


@pytest.fixture(scope="module")
def subset():
    return zoo.fashion_mnist_test_subset()


def test_shipped_files_are_small():
    assert (DATA / "fmnist_vit.pt").stat().st_size <= 5 * 2 ** 20
    assert (DATA / "fmnist_test500.npz").stat().st_size <= 500 * 2 ** 10


def test_loads_offline_in_eval_mode_float32(model):
    assert not model.training and all(not m.training for m in model.modules())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # the shipped weights, not an initialisation: differ from a random model's
    rand = zoo.fashion_mnist_vit(pretrained=False)
    assert not torch.equal(model.heads.head.weight, rand.heads.head.weight)
    assert model.heads.head.weight.abs().sum() > 0  # torchvision initialises the head to zero
    with pytest.raises(TypeError, match="pretrained"):
        zoo.fashion_mnist_vit(pretrained="yes")


def test_is_torchvision_vision_transformer_unchanged(model):
    assert type(model) is VisionTransformer
    for k, v in dict(image_size=28, patch_size=4, hidden_dim=64, mlp_dim=128, num_classes=10).items():
        assert getattr(model, k) == v, k
    assert len(model.encoder.layers) == 6
    assert model.heads.head.out_features == 10 and model.encoder.layers[0].num_heads == 4
    # every module is a torch.nn / torchvision class with its class's own forward, no hooks
    kinds = set()
    for name, m in model.named_modules():
        mod = type(m).__module__
        assert mod.startswith(("torch.nn.", "torchvision.models.vision_transformer", "torchvision.ops.")), \
            (name, mod)
        assert "forward" not in vars(m), name
        assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks), name
        kinds.add(type(m))
    assert {nn.MultiheadAttention, nn.LayerNorm, nn.GELU, nn.Linear, nn.Conv2d} <= kinds
    # the one choice: a one-channel patch embedding (same kernel and stride as torchvision's)
    cp = model.conv_proj
    assert type(cp) is nn.Conv2d and cp.in_channels == 1 and cp.out_channels == 64
    assert cp.kernel_size == (4, 4) and cp.stride == (4, 4)
    # a fresh torchvision model with that patch embedding has exactly these parameter names/shapes
    ref = VisionTransformer(**zoo._FMNIST_VIT_CONFIG)
    ref.conv_proj = nn.Conv2d(1, 64, kernel_size=4, stride=4)
    assert {k: v.shape for k, v in ref.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}
    assert sum(p.numel() for p in model.parameters()) == 205962


def test_accuracy_on_shipped_subset(model, subset):
    images, labels = subset
    assert images.dtype == torch.uint8 and tuple(images.shape) == (500, 28, 28)
    assert labels.dtype == torch.int64 and torch.bincount(labels, minlength=10).tolist() == [50] * 10
    acc = _accuracy(model, images, labels)
    assert acc >= 0.85, acc
    # the value recorded at training time (on the float16-rounded weights), up to one or two
    # images whose top logits nearly tie on another torch build
    recorded = torch.load(DATA / "fmnist_vit.pt", weights_only=True)["subset_accuracy"]
    assert abs(acc - recorded) <= 2 / 500, (acc, recorded)


def test_predictions_use_the_image(model, subset):
    # per-class accuracy: no class is ignored; shuffling the pixels destroys the accuracy
    images, labels = subset
    with torch.no_grad():
        pred = model(zoo.fmnist_preprocess(images)).argmax(1)
        perm = torch.randperm(784, generator=torch.Generator().manual_seed(0))
        shuffled = model(zoo.fmnist_preprocess(images.reshape(500, -1)[:, perm].reshape(500, 28, 28)))
    per_class = [(pred[labels == c] == c).float().mean().item() for c in range(10)]
    assert min(per_class) >= 0.5, per_class
    assert (shuffled.argmax(1) == labels).float().mean() < 0.6


def test_input_gradients(model, subset):
    # what the quality benchmark's gradient baselines need: finite, non-zero input gradients
    # (with grad enabled nn.MultiheadAttention takes its composite path, not the fused one)
    x = zoo.fmnist_preprocess(subset[0][:4]).requires_grad_()
    model(x)[torch.arange(4), subset[1][:4]].sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad.flatten(1).abs().sum(1) > 0).all()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad(set_to_none=True)


def test_subset_provenance():
    with np.load(DATA / "fmnist_test500.npz", allow_pickle=False) as d:
        indices, images, labels = d["indices"], d["images"], d["labels"]
        notice = str(d["notice"])
    assert "Zalando" in notice and "MIT" in notice
    assert len(np.unique(indices)) == 500 and indices.min() >= 0 and indices.max() < 10000
    if not (DEBIAN / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("dataset-fashion-mnist (Debian) not installed")
    test_images = _read_idx(DEBIAN / "t10k-images-idx3-ubyte.gz")
    test_labels = _read_idx(DEBIAN / "t10k-labels-idx1-ubyte.gz")
    np.testing.assert_array_equal(images, test_images[indices])
    np.testing.assert_array_equal(labels, test_labels[indices])
    # none of the subset's images occurs in the training set
    train = _read_idx(DEBIAN / "train-images-idx3-ubyte.gz").reshape(60000, -1)
    seen = {row.tobytes() for row in train}
    assert not any(img.tobytes() in seen for img in images.reshape(500, -1))


@pytest.mark.slow
def test_accuracy_on_full_official_test_set(model):
    if not (DEBIAN / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("dataset-fashion-mnist (Debian) not installed")
    images = torch.from_numpy(_read_idx(DEBIAN / "t10k-images-idx3-ubyte.gz").copy())
    labels = torch.from_numpy(_read_idx(DEBIAN / "t10k-labels-idx1-ubyte.gz").astype(np.int64))
    acc = _accuracy(model, images, labels, batch=1000)
    assert acc >= 0.85, acc
    recorded = torch.load(DATA / "fmnist_vit.pt", weights_only=True)["test_accuracy"]
    assert abs(acc - recorded) <= 3 / 10000, (acc, recorded)


def test_preprocess():
    pix = np.array([[0, 255] * 14] * 28, dtype=np.uint8)
    x = zoo.fmnist_preprocess(pix)
    assert x.shape == (1, 1, 28, 28) and x.dtype == torch.float32
    assert torch.allclose(x[0, 0, 0, :2], torch.tensor([(0 - 0.2860) / 0.3530, (1 - 0.2860) / 0.3530]))
    assert x.min().item() == pytest.approx(zoo.FMNIST_LOW) and x.max().item() == pytest.approx(zoo.FMNIST_HIGH)
    batch = torch.from_numpy(np.stack([pix, 255 - pix]))
    assert torch.equal(zoo.fmnist_preprocess(batch), zoo.fmnist_preprocess(batch[:, None]))
    assert zoo.fmnist_preprocess(batch).shape == (2, 1, 28, 28)
    assert torch.allclose(zoo.fmnist_to_unit(x), torch.from_numpy(pix).float()[None, None] / 255, atol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        zoo.fmnist_preprocess(pix.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        zoo.fmnist_preprocess(np.zeros((2, 3, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        zoo.fmnist_preprocess(np.zeros((32, 32), np.uint8))


def test_training_script_matches_zoo():
    spec = importlib.util.spec_from_file_location("make_fmnist_vit", DATA / "make_fmnist_vit.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.CONFIG == zoo._FMNIST_VIT_CONFIG
    assert (mod.MEAN, mod.STD) == (zoo.FMNIST_MEAN, zoo.FMNIST_STD)
    assert mod.CLASSES == zoo.FMNIST_CLASSES
    d = torch.load(DATA / "fmnist_vit.pt", weights_only=True)
    assert d["config"] == mod.CONFIG and d["classes"] == zoo.FMNIST_CLASSES
    # the script's model is the zoo's architecture
    assert {k: v.shape for k, v in mod.build_model().state_dict().items()} == \
        {k: v.shape for k, v in zoo.fashion_mnist_vit(pretrained=False).state_dict().items()}
    x = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    assert torch.equal(mod.preprocess(x), zoo.fmnist_preprocess(x))
