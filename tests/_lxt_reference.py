"""Run LXT (``lxt`` on PyPI, AttnLRP, Achtibat et al., ICML 2024) as an independent reference.

LXT patches classes of a model family globally (``lxt.efficient.monkey_patch``), so this
file runs as a script in a subprocess of the test: it loads a model's state dict and an
input saved by the test, patches the family with LXT's default map, computes gradient x
input for one target logit in float64 and saves it.

    python _lxt_reference.py vit  STATE INPUT TARGET OUT   # torchvision vit_b_16 (LXT: CP-LRP)
    python _lxt_reference.py bert CONFIG STATE INPUT TARGET OUT   # HF BERT (LXT: AttnLRP)

For BERT the input is token ids; the relevance of each token is gradient x input of its
word embedding, summed over the embedding axis.
"""

import sys

import torch


def vit(state: str, inp: str, target: str, out: str) -> None:
    import torchvision
    import torchvision.models.vision_transformer as vision_transformer
    from lxt.efficient import monkey_patch

    monkey_patch(vision_transformer)
    sd = torch.load(state)
    size = int(sd.pop("__image_size__"))
    model = torchvision.models.vit_b_16(image_size=size).double().eval()
    model.load_state_dict(sd)
    x = torch.load(inp).requires_grad_(True)
    y = model(x)
    y[0, int(target)].backward()
    torch.save({"relevance": (x.grad * x).detach(), "logit": y[0, int(target)].detach()}, out)


def bert(config: str, state: str, inp: str, target: str, out: str) -> None:
    import transformers.models.bert.modeling_bert as modeling_bert
    from lxt.efficient import monkey_patch

    monkey_patch(modeling_bert)
    from transformers import BertConfig, BertForSequenceClassification

    model = BertForSequenceClassification(BertConfig.from_json_file(config)).double().eval()
    model.load_state_dict(torch.load(state))
    ids = torch.load(inp)
    emb = model.bert.embeddings.word_embeddings(ids).detach().requires_grad_(True)
    y = model(inputs_embeds=emb).logits
    y[0, int(target)].backward()
    torch.save({"relevance": (emb.grad * emb).detach().sum(-1), "logit": y[0, int(target)].detach()}, out)


if __name__ == "__main__":
    {"vit": vit, "bert": bert}[sys.argv[1]](*sys.argv[2:])
