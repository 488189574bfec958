"""Text and vision transformers, unchanged: a plain ``nn.TransformerEncoder`` classifier over
token ids and Hugging Face BERT, GPT-2 and ViT classifiers built from random configs.

Every LRP preset, RAP, CLRP1 and SGLRP give finite maps of the input's shape (token ids in,
one relevance per token out) and leave the model unchanged.  On bias-free float64 copies
(biases and the constants added to activations zeroed: position / token-type embeddings,
class tokens), ``cp_lrp`` and RAP conserve relevance (attention weights as constants);
AttnLRP's softmax rule does not, which the last test shows on each model.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from captum_rap import CLRP, LRP, RAP, SGLRP

from _integrity import assert_unchanged, snapshot

transformers = pytest.importorskip("transformers")

PRESETS = ["epsilon", "epsilon_plus", "epsilon_gamma_box", "zplus_box", "attnlrp", "cp_lrp"]


class TextEncoder(nn.Module):
    """Token ids -> embedding -> 2-layer nn.TransformerEncoder (batch first) -> mean -> head."""

    def __init__(self, vocab=30, dim=16, classes=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=0)
        layer = nn.TransformerEncoderLayer(dim, 2, dim_feedforward=32, dropout=0.1, batch_first=True,
                                           activation="gelu")
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, ids):
        h = self.enc(self.emb(ids), src_key_padding_mask=ids == 0)
        keep = (ids != 0).unsqueeze(-1).to(h.dtype)
        return self.head((h * keep).sum(1) / keep.sum(1))


def _text_encoder():
    torch.manual_seed(0)
    return TextEncoder().eval()


def _bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16, num_labels=3)
    return transformers.BertForSequenceClassification(cfg).eval()


def _gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=40, n_embd=16, n_layer=2, n_head=2, n_positions=16, num_labels=3,
                                  pad_token_id=0)
    return transformers.GPT2ForSequenceClassification(cfg).eval()


def _hf_vit():
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=32, num_labels=3)
    return transformers.ViTForImageClassification(cfg).eval()


MODELS = {"text_encoder": _text_encoder, "bert": _bert, "gpt2": _gpt2, "hf_vit": _hf_vit}
# constants added to the activations besides biases
ADDENDS = ("position_embeddings", "token_type_embeddings", "wpe", "cls_token")


def _input(name, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    if name == "hf_vit":
        return torch.randn(2, 3, 16, 16, generator=g, dtype=dtype)
    ids = torch.randint(1, 30, (2, 7), generator=g)
    if name == "text_encoder":
        ids[1, 5:] = 0  # padding
    return ids


@pytest.mark.parametrize("name", list(MODELS))
def test_methods_finite_and_model_unchanged(name):
    model = MODELS[name]()
    x = _input(name)
    before = snapshot(model)
    methods = [(p, LRP(model, p)) for p in PRESETS]
    methods += [("rap", RAP(model)), ("clrp1", CLRP(model)), ("sglrp", SGLRP(model))]
    for key, method in methods:
        attr = method.attribute(x, target=[0, 2])
        assert attr.shape == x.shape and attr.is_floating_point(), key
        assert torch.isfinite(attr).all(), key
        if key not in ("clrp1", "sglrp"):
            assert float(attr.abs().max()) > 0, key
        assert_unchanged(model, before)
    if name == "text_encoder":  # padding tokens get no relevance
        assert float(LRP(model, "attnlrp").attribute(x, target=[0, 2])[1, 5:].abs().max()) == 0.0


def _bias_free(model):
    model = model.double()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("bias") or any(a in pname for a in ADDENDS):
                p.zero_()
    return model


@pytest.mark.parametrize("name", list(MODELS))
def test_cp_lrp_and_rap_conserve_on_bias_free_copies(name):
    model = _bias_free(MODELS[name]())
    x = _input(name, torch.float64)
    with torch.no_grad():
        out = model(x)
        logits = out if isinstance(out, torch.Tensor) else out.logits
    targets = [0, 2]
    want = logits[torch.arange(2), targets]
    for key, method in (("cp_lrp", LRP(model, "cp_lrp", epsilon=0)), ("rap", RAP(model))):
        attr, delta = method.attribute(x, target=targets, return_convergence_delta=True)
        total = attr.reshape(2, -1).sum(1)
        mass = attr.abs().reshape(2, -1).sum(1)
        tol = torch.maximum(1e-6 * want.abs(), 1e-11 * mass)
        assert bool(((total - want).abs() <= tol).all()), (key, total.tolist(), want.tolist())
    # AttnLRP's softmax rule keeps a bias term: it does not conserve
    _, d_attn = LRP(model, "attnlrp", epsilon=0).attribute(x, target=targets, return_convergence_delta=True)
    assert float((d_attn.abs() / want.abs()).max()) > 1e-6


def test_importing_transformers_leaves_torch_activations_alone():
    """Regression: ``transformers.activations.ACT2CLS`` also lists torch's own ``nn.ReLU``,
    ``nn.ReLU6``, ``nn.Sigmoid``, ...; taking every class in it as a Hugging Face activation
    (one element-wise function, identity rule) made ReLUs pass negative pre-activations'
    relevance and lost sigmoid gates as soon as transformers was imported (RAP on
    MobileNetV2 off by 1e3 of the logit, order-dependent test failures)."""
    from transformers.activations import ACT2CLS, GELUActivation, NewGELUActivation

    from captum_rap._engine.optable import is_elementwise_module

    torch_classes = {v[0] if isinstance(v, tuple) else v for v in ACT2CLS.values()}
    torch_classes = {c for c in torch_classes if c.__module__.startswith("torch.")}
    assert nn.ReLU in torch_classes and nn.Sigmoid in torch_classes  # the premise of the test
    assert not any(is_elementwise_module(c()) for c in torch_classes)
    assert is_elementwise_module(GELUActivation()) and is_elementwise_module(NewGELUActivation())
    # a ReLU net after the import: RAP and LRP-0 conserve on a bias-free float64 copy and
    # zero the relevance of the ReLU's dead units' inputs (identity would pass it)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8, bias=False), nn.ReLU(), nn.Linear(8, 3, bias=False)).double()
    x = torch.randn(4, 6, dtype=torch.float64)
    with torch.no_grad():
        want = net(x)[:, 1]
    for method in (RAP(net), LRP(net, "epsilon", epsilon=1e-12)):
        attr = method.attribute(x, target=1)
        assert torch.allclose(attr.sum(1), want, rtol=1e-9, atol=1e-12)
    # explicit LRP-0: R_x = x * W1^T ((W2[1] * relu'(h)))  (ReLU is linear where open)
    h = x @ net[0].weight.T
    grad = (net[2].weight[1] * (h > 0)) @ net[0].weight
    assert torch.allclose(LRP(net, "epsilon", epsilon=1e-12).attribute(x, target=1), x * grad, rtol=1e-8, atol=1e-12)
