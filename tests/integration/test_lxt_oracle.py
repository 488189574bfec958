"""Agreement with LXT (AttnLRP's reference implementation) on unchanged models.

LXT computes AttnLRP / CP-LRP as gradient x input after monkey-patching a model family's
classes (``lxt.efficient``); we run the unchanged model.  LXT runs in a subprocess
(``_lxt_reference.py``: its patches are global).  Float64, seeded random weights with biases;
the maps must agree within 1e-6 of max|R| (measured: 2.5e-8 on ViT-B/16 — LXT's identity rule
divides by ``x + 1e-10``, ours by ``x`` — and 8e-10 on BERT).

* torchvision ``vit_b_16``: LXT's default map for it is CP-LRP (attention weights and the
  layer norm's standard deviation as constants, identity rule on GELU): our ``cp_lrp``.
* Hugging Face BERT (random config): LXT's AttnLRP map (uniform rule on the attention
  products, the softmax's plain gradient, layer norm as above): our ``attnlrp``, computed
  from token ids through the embedding (eager and SDPA attention implementations).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from captum_rap import LRP

from _lrp_utils import portable_init, rel_err

pytest.importorskip("lxt", reason="LXT is installed by .ci/run (pip install --no-deps lxt)")
torchvision = pytest.importorskip("torchvision")
REFERENCE = str(Path(__file__).resolve().parents[1] / "_lxt_reference.py")  # tests/_lxt_reference.py


def _run_reference(*args: str) -> None:
    res = subprocess.run([sys.executable, REFERENCE, *args], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]


def test_vit_b_16_cp_lrp_equals_lxt(tmp_path):
    torch.manual_seed(0)
    size = 64
    model = portable_init(torchvision.models.vit_b_16(image_size=size), seed=3).double().eval()
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    target = 5
    sd = dict(model.state_dict())
    sd["__image_size__"] = torch.tensor(size)
    torch.save(sd, tmp_path / "state.pt")
    torch.save(x, tmp_path / "x.pt")
    _run_reference("vit", str(tmp_path / "state.pt"), str(tmp_path / "x.pt"), str(target),
                   str(tmp_path / "out.pt"))
    ref = torch.load(tmp_path / "out.pt")
    attr = LRP(model, "cp_lrp").attribute(x, target=target)
    assert float(ref["relevance"].abs().max()) > 0
    assert rel_err(attr, ref["relevance"]) < 1e-6
    # the other preset differs from LXT's CP-LRP map (the comparison can fail)
    assert rel_err(LRP(model, "attnlrp").attribute(x, target=target), ref["relevance"]) > 1e-3


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_hf_bert_attnlrp_equals_lxt(tmp_path, attn_implementation):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=32, num_labels=3,
                                  attn_implementation=attn_implementation)
    model = transformers.BertForSequenceClassification(cfg).double().eval()
    ids = torch.randint(1, 100, (1, 12), generator=torch.Generator().manual_seed(5))
    target = 1
    cfg.to_json_file(tmp_path / "config.json")
    torch.save(model.state_dict(), tmp_path / "state.pt")
    torch.save(ids, tmp_path / "ids.pt")
    _run_reference("bert", str(tmp_path / "config.json"), str(tmp_path / "state.pt"), str(tmp_path / "ids.pt"),
                   str(target), str(tmp_path / "out.pt"))
    ref = torch.load(tmp_path / "out.pt")
    attr, delta = LRP(model, "attnlrp").attribute(ids, target=target, return_convergence_delta=True)
    assert attr.shape == ids.shape and attr.dtype == torch.float64
    assert rel_err(attr, ref["relevance"]) < 1e-6
    # the other attention treatment is measurably farther (the comparison can fail)
    assert rel_err(LRP(model, "cp_lrp").attribute(ids, target=target), ref["relevance"]) > 1e-5
