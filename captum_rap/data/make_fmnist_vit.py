"""Train the small Fashion-MNIST Vision Transformer shipped with captum_rap.

Data: the Debian package ``dataset-fashion-mnist`` (``apt-get install -y dataset-fashion-mnist``;
the four official IDX files under ``/usr/share/datasets/fashion-mnist/``, Zalando SE, MIT
licence).  Run from the repository root (CPU, seeded, one thread; the shipped run, 25 epochs,
took 2 h 8 min on a heavily shared 2-core machine; its log is ``fmnist_vit_train.log``)::

    python captum_rap/data/make_fmnist_vit.py [--data /usr/share/datasets/fashion-mnist] \
        [--epochs 25] [--threads 1]

The model is torchvision's own ``VisionTransformer`` class, unchanged, with the arguments in
``CONFIG`` below; its patch embedding ``conv_proj`` is given one input channel (a grey-scale
image) instead of three, which ``VisionTransformer.forward`` does not depend on.  Inputs are
``(x / 255 - MEAN) / STD`` with the training-set mean and standard deviation below (see
``captum_rap.zoo.fmnist_preprocess``).  Training: AdamW, cosine schedule with a linear warm-up,
label smoothing 0.1, random 2-pixel shifts and horizontal flips; the model of the last epoch is
kept (the test set is only reported, never used to choose anything).

It writes

* ``captum_rap/data/fmnist_vit.pt``: ``config``, float16 ``state_dict`` (loaded back to
  float32), the preprocessing constants, the class names, the accuracy of the shipped
  (float16-rounded) weights on the full official test set and on the subset below, and the
  training time;
* ``captum_rap/data/fmnist_test500.npz``: 500 images of the official test set (50 per class,
  drawn with a seeded permutation), ``images`` uint8 ``(500, 28, 28)``, ``labels``, their
  ``indices`` in ``t10k-images-idx3-ubyte`` and the data set's licence notice.
"""

import argparse
import gzip
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

CONFIG = dict(image_size=28, patch_size=4, num_layers=6, num_heads=4, hidden_dim=64, mlp_dim=128,
              num_classes=10)
MEAN, STD = 0.2860, 0.3530  # training-set pixel mean / std of x / 255 (checked below)
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot"]
NOTICE = ("Fashion-MNIST, Copyright (c) 2017 Zalando SE, https://github.com/zalandoresearch/"
          "fashion-mnist, MIT licence (Expat): Permission is hereby granted, free of charge, to any "
          "person obtaining a copy of this software and associated documentation files (the "
          "\"Software\"), to deal in the Software without restriction, including without limitation "
          "the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell "
          "copies of the Software, and to permit persons to whom the Software is furnished to do so, "
          "subject to the following conditions: The above copyright notice and this permission "
          "notice shall be included in all copies or substantial portions of the Software. THE "
          "SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED.")


def build_model():
    model = VisionTransformer(**CONFIG)
    p = CONFIG["patch_size"]
    model.conv_proj = nn.Conv2d(1, CONFIG["hidden_dim"], kernel_size=p, stride=p)
    # torchvision's own initialisation of the patch embedding, for one input channel
    nn.init.trunc_normal_(model.conv_proj.weight, std=math.sqrt(1 / (p * p)))
    nn.init.zeros_(model.conv_proj.bias)
    return model


def read_idx(path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic = int.from_bytes(raw[:4], "big")
    ndim = magic & 0xFF
    assert magic >> 8 == 0x08, "not an unsigned-byte IDX file: %s" % path
    shape = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load(data, split):
    images = read_idx(Path(data) / ("%s-images-idx3-ubyte.gz" % split))
    labels = read_idx(Path(data) / ("%s-labels-idx1-ubyte.gz" % split))
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def preprocess(images):  # uint8 (N, 28, 28) -> float (N, 1, 28, 28)
    return ((images.float() / 255.0 - MEAN) / STD)[:, None]


def augment(images, g):  # uint8 (N, 28, 28): random shifts of up to 2 px, horizontal flips
    n = images.shape[0]
    padded = nn.functional.pad(images, (2, 2, 2, 2))
    dx = torch.randint(0, 5, (n,), generator=g)
    dy = torch.randint(0, 5, (n,), generator=g)
    out = torch.stack([padded[i, dy[i]:dy[i] + 28, dx[i]:dx[i] + 28] for i in range(n)])
    flip = torch.rand(n, generator=g) < 0.5
    return torch.where(flip[:, None, None], out.flip(-1), out)


@torch.no_grad()
def accuracy(model, images, labels, batch=1000):
    model.eval()
    correct = 0
    for i in range(0, len(images), batch):
        correct += int((model(preprocess(images[i:i + batch])).argmax(1) == labels[i:i + batch]).sum())
    return correct / len(images)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    x_train, y_train = load(args.data, "train")
    x_test, y_test = load(args.data, "t10k")
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    m, s = x_train.double().div(255).mean().item(), x_train.double().div(255).std().item()
    assert abs(m - MEAN) < 1e-4 and abs(s - STD) < 1e-4, (m, s)

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = build_model()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "pos_embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "pos_embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    steps_per_epoch = len(x_train) // args.batch
    total, warmup = args.epochs * steps_per_epoch, steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: (t + 1) / warmup if t < warmup else 0.5 * (1 + math.cos(math.pi * (t - warmup) / (total - warmup))))
    print("parameters: %d" % sum(p.numel() for p in model.parameters()), flush=True)

    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x_train), generator=g)
        loss_sum = 0.0
        for b in range(steps_per_epoch):
            idx = perm[b * args.batch:(b + 1) * args.batch]
            x = preprocess(augment(x_train[idx], g))
            loss = nn.functional.cross_entropy(model(x), y_train[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            loss_sum += loss.item()
        acc = accuracy(model, x_test, y_test)
        print("epoch %2d  loss %.4f  test acc %.4f  %.0fs" % (epoch, loss_sum / steps_per_epoch, acc,
                                                             time.time() - t0), flush=True)
    train_seconds = time.time() - t0

    # the shipped weights: float16, loaded back to float32; accuracies measured on those
    sd = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    shipped = build_model()
    shipped.load_state_dict({k: v.float() for k, v in sd.items()})
    test_acc = accuracy(shipped, x_test, y_test)

    perm = torch.randperm(len(x_test), generator=torch.Generator().manual_seed(1)).numpy()
    labels_np = y_test.numpy()
    indices = np.sort(np.concatenate([perm[labels_np[perm] == c][:50] for c in range(10)]))
    sub_acc = accuracy(shipped, x_test[indices], y_test[indices])

    out = Path(args.out)
    np.savez_compressed(out / "fmnist_test500.npz", images=x_test.numpy()[indices],
                        labels=labels_np[indices].astype(np.uint8), indices=indices.astype(np.int64),
                        notice=np.array(NOTICE))
    torch.save({"config": CONFIG, "in_channels": 1, "state_dict": sd, "mean": MEAN, "std": STD,
                "classes": CLASSES, "test_accuracy": test_acc, "subset_accuracy": sub_acc,
                "epochs": args.epochs, "train_seconds": train_seconds}, out / "fmnist_vit.pt")
    print("shipped weights: test acc %.4f (10000 images), subset acc %.4f (500 images)"
          % (test_acc, sub_acc))
    for name in ("fmnist_vit.pt", "fmnist_test500.npz"):
        print("wrote", out / name, (out / name).stat().st_size, "bytes")


if __name__ == "__main__":
    main()
