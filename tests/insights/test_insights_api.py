"""captum_rap.insights: the JSON API through Flask's test client on small seeded models.

Happy paths are compared with direct calls of the methods (so the API must apply the
input transforms, baselines and targets correctly), error paths must give 4xx JSON with a
helpful message, and no request may change the model.
"""

import builtins
import inspect
import io
import json

import pytest
import torch
from torch import nn

pytest.importorskip("flask")

from captum_rap import CLRP, LRP, RAP, SGLRP, ACD  # noqa: E402
from captum_rap.insights import (  # noqa: E402
    AttributionVisualizer,
    Batch,
    GeneralFeature,
    ImageFeature,
    Limits,
    TextFeature,
    create_app,
)

CLASSES = ["cat", "dog", "car", "ship"]


def _cnn(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(32, len(CLASSES)))
    with torch.no_grad():  # non-trivial batch-norm statistics
        net[1].running_mean.uniform_(-0.2, 0.2)
        net[1].running_var.uniform_(0.5, 1.5)
    return net.eval()


def _normalize(t):
    return t * 2.0 - 1.0


class _TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc_img = nn.Linear(4, 8)
        self.fc_vec = nn.Linear(3, 8)
        self.head = nn.Linear(8, len(CLASSES))

    def forward(self, img, vec):
        a = self.fc_img(self.pool(torch.relu(self.conv(img))).flatten(1))
        return self.head(torch.relu(a + self.fc_vec(vec)))


class _WithGelu(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.LogSoftmax(dim=1)  # an operation without a propagation rule
        self.fc = nn.Linear(4 * 16 * 16, len(CLASSES))

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).flatten(1))


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(10, 3, 16, 16, generator=g)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    return x, labels


@pytest.fixture(scope="module")
def net():
    return _cnn()


@pytest.fixture(scope="module")
def text_model():
    from captum_rap import zoo

    return zoo.rotten_tomatoes_lstm()


@pytest.fixture(scope="module")
def client(net, data, text_model):
    from captum_rap.insights.demo import demo_text_visualizer

    x, labels = data
    feature = ImageFeature("Photo", baseline_transforms=[lambda t: t * 0], input_transforms=[_normalize])
    limits = Limits(max_occlusion_windows=300, max_cd_groups=100, max_acd_blocks=64)
    img = AttributionVisualizer([net], CLASSES, [feature], [Batch(x[:6], labels[:6]), Batch(x[6:], labels[6:])],
                                limits=limits)
    vec = torch.rand(10, 3, generator=torch.Generator().manual_seed(4))
    multi = AttributionVisualizer(
        _TwoInputs().eval(), CLASSES,
        [ImageFeature("Photo", None, None), GeneralFeature("Meta", ["age", "size", "weight"])],
        [Batch((x, vec), labels)])
    gelu = AttributionVisualizer(_WithGelu().eval(), CLASSES, ImageFeature("Photo", None, None), [Batch(x, labels)])
    text = demo_text_visualizer(text_model.examples[:3])
    app = create_app({"img": img, "multi": multi, "gelu": gelu, "text": text})
    return app.test_client()


def _post(client, path, payload):
    return client.post(path, data=json.dumps(payload), content_type="application/json")


def _png(b64):
    import base64

    from matplotlib import image as mpimg

    return mpimg.imread(io.BytesIO(base64.b64decode(b64)), format="png")


def _model_inputs(data):
    x, labels = data
    return _normalize(x), labels


# --------------------------------------------------------------------------- happy paths
def test_config_and_methods(client):
    cfg = client.get("/api/config").get_json()
    views = {v["name"]: v for v in cfg["views"]}
    assert set(views) == {"img", "multi", "gelu", "text"}
    assert views["img"]["classes"] == CLASSES and views["img"]["num_examples"] == 10
    for name in ["RAP", "LRP", "CLRP", "SGLRP", "CD", "ACD", "IntegratedGradients", "Saliency",
                 "InputXGradient", "Occlusion"]:
        assert name in views["img"]["methods"]
    assert views["text"]["methods"] == ["CD", "ACD"]  # token ids: no gradient methods
    assert "CD" not in views["multi"]["methods"]  # CD needs a single input
    methods = {m["name"]: m for m in client.get("/api/methods?view=img").get_json()["methods"]}
    lrp_args = {a["name"]: a for a in methods["LRP"]["args"]}
    assert "epsilon_gamma_box" in lrp_args["preset"]["choices"]
    assert {a["name"]: a for a in methods["CLRP"]["args"]}["variant"]["choices"] == [1, 2]
    ig = {a["name"]: a for a in methods["IntegratedGradients"]["args"]}["n_steps"]
    assert ig["type"] == "int" and ig["min"] <= ig["default"] <= ig["max"]
    assert methods["ACD"]["endpoint"] == "acd"


def test_predictions_and_filters(client, net, data):
    xin, labels = _model_inputs(data)
    with torch.no_grad():
        prob = torch.softmax(net(xin).double(), 1)
    pred = prob.argmax(1)
    page = client.get("/api/examples?view=img&top_k=2&limit=48").get_json()
    assert page["total"] == 10
    for ex in page["examples"]:
        i = ex["index"]
        assert ex["label"] == int(labels[i]) and ex["label_name"] == CLASSES[int(labels[i])]
        top = torch.topk(prob[i], 2)
        assert [p["index"] for p in ex["predictions"]] == top.indices.tolist()
        assert [p["score"] for p in ex["predictions"]] == pytest.approx(top.values.tolist(), abs=1e-6)
        assert ex["correct"] == bool(pred[i] == labels[i])
        assert ex["originals"][0]["type"] == "image"
        assert _png(ex["originals"][0]["png"]).shape[:2] == (16, 16)

    def indices(query):
        return sorted(e["index"] for e in client.get("/api/examples?view=img&limit=48&" + query).get_json()["examples"])

    assert indices("prediction=correct") == [i for i in range(10) if pred[i] == labels[i]]
    assert indices("prediction=incorrect") == [i for i in range(10) if pred[i] != labels[i]]
    assert indices("true_class=2") == [2, 6]
    c = int(pred[0])
    assert indices(f"predicted_class={c}") == [i for i in range(10) if pred[i] == c]
    assert indices(f"true_class=0&predicted_class={c}") == [i for i in range(10) if pred[i] == c and labels[i] == 0]
    paged = client.get("/api/predictions?view=img&offset=8&limit=5").get_json()
    assert [e["index"] for e in paged["examples"]] == [8, 9] and paged["total"] == 10


def _first(resp):
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()["results"]


@pytest.mark.parametrize("method,args,reference", [
    ("RAP", {}, lambda m: RAP(m)),
    ("LRP", {"preset": "epsilon_gamma_box", "gamma": 0.5}, lambda m: LRP(m, "epsilon_gamma_box", gamma=0.5)),
    ("CLRP", {"variant": 2}, lambda m: CLRP(m, variant=2)),
    ("SGLRP", {"scaling": False}, lambda m: SGLRP(m, scaling=False)),
])
def test_propagation_methods_match_direct_calls(client, net, data, method, args, reference):
    xin, labels = _model_inputs(data)
    res = _first(_post(client, "/api/attribute", {"view": "img", "method": method, "args": args, "examples": [1, 4]}))
    for r in res:
        i = r["index"]
        assert r["target"] == int(labels[i])  # use_label_for_attr=True
        expected = reference(net).attribute(xin[i:i + 1], target=int(labels[i])).sum(1)[0].double()
        f = r["features"][0]
        assert f["sum"] == pytest.approx(float(expected.sum()), rel=1e-5, abs=1e-8)
        assert f["positive"] == pytest.approx(float(expected.clamp(min=0).sum()), rel=1e-5, abs=1e-8)
        assert f["shape"] == [16, 16]
        heat = _png(f["heatmap"])
        assert heat.shape[:2] == (16, 16)
        # red = positive, blue = negative
        if expected.max() > 0.05 * f["limit"]:
            y, x = divmod(int(expected.argmax()), 16)
            assert heat[y, x, 0] > heat[y, x, 2]
        if expected.min() < -0.05 * f["limit"]:
            y, x = divmod(int(expected.argmin()), 16)
            assert heat[y, x, 2] > heat[y, x, 0]
        assert _png(f["overlay"]).shape[:2] == (16, 16)


def test_captum_methods_match_direct_calls(client, net, data):
    from captum.attr import InputXGradient, IntegratedGradients, Occlusion, Saliency

    xin, labels = _model_inputs(data)
    x0, t = xin[3:4], int(labels[3])
    cases = [
        ("IntegratedGradients", {"n_steps": 8, "method": "riemann_trapezoid"},
         IntegratedGradients(net).attribute(x0, baselines=x0 * 0, target=t, n_steps=8, method="riemann_trapezoid")),
        ("Saliency", {"abs": False}, Saliency(net).attribute(x0.clone().requires_grad_(), target=t, abs=False)),
        ("InputXGradient", {}, InputXGradient(net).attribute(x0.clone().requires_grad_(), target=t)),
        ("Occlusion", {"window": 4, "stride": 4},
         Occlusion(net).attribute(x0, sliding_window_shapes=(3, 4, 4), strides=(3, 4, 4), baselines=x0 * 0, target=t)),
    ]
    for method, args, expected in cases:
        res = _first(_post(client, "/api/attribute", {"view": "img", "method": method, "args": args, "examples": [3]}))
        assert res[0]["features"][0]["sum"] == pytest.approx(float(expected.detach().double().sum()), rel=1e-4, abs=1e-7), method


def test_cd_blocks_and_targets(client, net, data):
    from captum_rap import CD

    xin, labels = _model_inputs(data)
    # explicit class target; CD with 4 x 4 blocks: every pixel carries its block's score
    res = _first(_post(client, "/api/attribute", {"view": "img", "method": "CD", "args": {"block": 4},
                                                  "examples": [0], "target": 3}))
    assert res[0]["target"] == 3 and res[0]["target_name"] == "ship"
    rel, _ = CD(net).decompose(xin[:1], masks=_blocks(4))
    assert res[0]["features"][0]["sum"] == pytest.approx(3 * 16 * float(rel[:, 3].double().sum()), rel=1e-5)
    # "predicted": the arg-max class
    with torch.no_grad():
        pred = int(net(xin[5:6]).argmax())
    res = _first(_post(client, "/api/attribute", {"view": "img", "method": "RAP", "examples": [5], "target": "predicted"}))
    assert res[0]["target"] == pred


def _blocks(b):
    masks = torch.zeros(16 // b * 16 // b, 1, 16, 16)
    k = 0
    for r in range(0, 16, b):
        for c in range(0, 16, b):
            masks[k, :, r:r + b, c:c + b] = 1
            k += 1
    return masks


def test_acd_image(client, net, data):
    xin, labels = _model_inputs(data)
    resp = _post(client, "/api/acd", {"view": "img", "example": 2, "args": {"sweep_dim": 4, "num_iters": 3}})
    assert resp.status_code == 200, resp.get_json()
    out = resp.get_json()
    h = ACD(net).hierarchy(xin[2:3], target=int(labels[2]), sweep_dim=4, num_iters=3)
    assert out["kind"] == "image" and out["target"] == int(labels[2])
    assert len(out["levels"]) == len(h.levels) and out["num_before_final"] == h.num_before_final
    for lev, got in zip(h.levels, out["levels"]):
        assert sorted(g["score"] for g in got["groups"]) == pytest.approx(sorted(g.score for g in lev.values()))
        assert sorted(g["size"] for g in got["groups"]) == sorted(g.size for g in lev.values())
        assert _png(got["png"]).shape[:2] == (16, 16)
    assert len(out["levels"][-1]["groups"]) == 1  # merged into one group at the top


def test_acd_and_cd_on_text(client, text_model):
    ids, words = text_model.encode(text_model.examples[0])  # 9 tokens: fast
    resp = _post(client, "/api/acd", {"view": "text", "example": 0})
    assert resp.status_code == 200, resp.get_json()
    out = resp.get_json()
    h = ACD(text_model.model, batch_dim=1).hierarchy_text(ids, words=words)
    assert out["kind"] == "text" and out["words"] == words
    assert out["target"] == h.target  # the predicted class (use_label_for_attr=False, no labels)
    assert len(out["levels"]) == len(h.levels)
    assert out["levels"][0]["scores"] == pytest.approx([float(v) for v in h.unit_scores], abs=1e-6)
    assert _png(out["png"]).ndim == 3
    res = _first(_post(client, "/api/attribute", {"view": "text", "method": "CD", "examples": [0], "target": 1}))
    f = res[0]["features"][0]
    assert f["words"] == words and len(f["scores"]) == len(words)
    from captum_rap import CD

    rel, _ = CD(text_model.model, batch_dim=1).decompose(ids, masks=torch.eye(len(words)))
    assert f["scores"] == pytest.approx(rel[:, 1].tolist(), abs=1e-5)


def test_two_input_view_with_general_feature(client, data):
    res = _first(_post(client, "/api/attribute", {"view": "multi", "method": "RAP", "examples": [0]}))
    img, meta = res[0]["features"]
    assert img["type"] == "image" and meta["type"] == "general"
    assert [v["name"] for v in meta["values"]] == ["age", "size", "weight"]
    # the contributions are each input's share of the relevance, sum_i / (|sum_img| +
    # |sum_meta|): recompute them from RAP on the model directly (inputs of example 0, its
    # label as the target)
    x, labels = data
    vec = torch.rand(10, 3, generator=torch.Generator().manual_seed(4))  # as in the client fixture
    model = _TwoInputs().eval()
    inputs = (x[:1], vec[:1])
    assert res[0]["target"] == int(labels[0])
    a_img, a_vec = RAP(model).attribute(inputs, target=int(labels[0]))
    s_img, s_vec = float(a_img.double().sum()), float(a_vec.double().sum())
    norm = abs(s_img) + abs(s_vec)
    assert img["sum"] == pytest.approx(s_img, abs=1e-6) and meta["sum"] == pytest.approx(s_vec, abs=1e-6)
    assert img["contribution"] == pytest.approx(s_img / norm, abs=1e-6)
    assert meta["contribution"] == pytest.approx(s_vec / norm, abs=1e-6)
    assert 0.01 < abs(img["contribution"]) < 0.99  # both inputs matter: not a trivial split


# --------------------------------------------------------------------------- error paths
BAD_POSTS = [
    ({"view": "img", "method": "Magic", "examples": [0]}, 400, "unknown method 'Magic'"),
    ({"view": "img", "method": "../../etc/passwd", "examples": [0]}, 400, "unknown method"),
    ({"view": "/etc/passwd", "method": "RAP", "examples": [0]}, 400, "unknown view"),
    ({"view": "img", "model": "../../etc/passwd", "method": "RAP", "examples": [0]}, 400, "'model'"),
    ({"view": "img", "model": 3, "method": "RAP", "examples": [0]}, 400, "'model'"),
    ({"view": "img", "method": "RAP", "examples": ["/etc/passwd"]}, 400, "'examples'"),
    ({"view": "img", "method": "RAP", "examples": [0], "target": "/etc/passwd"}, 400, "'target'"),
    ({"view": "img", "method": "RAP", "examples": [0], "target": 4}, 400, "outside"),
    ({"view": "img", "method": "LRP", "examples": [0], "args": {"preset": "/etc/passwd"}}, 400, "must be one of"),
    ({"view": "img", "method": "RAP", "examples": [0], "args": {"gamma": 1.0}}, 400, "unknown argument 'gamma'"),
    ({"view": "img", "method": "RAP", "examples": [0], "args": {"stabilizer": "0.1"}}, 400, "must be a number"),
    ({"view": "img", "method": "RAP", "examples": [0], "args": {"stabilizer": -1}}, 400, "must lie in"),
    ({"view": "img", "method": "RAP", "examples": [0], "args": [1, 2]}, 400, "'args' must be a JSON object"),
    ({"view": "img", "method": "CLRP", "examples": [0], "args": {"variant": 3}}, 400, "must be one of [1, 2]"),
    ({"view": "img", "method": "CLRP", "examples": [0], "args": {"variant": "1"}}, 400, "must be one of"),
    ({"view": "img", "method": "SGLRP", "examples": [0], "args": {"relu": 1}}, 400, "true or false"),
    ({"view": "img", "method": "IntegratedGradients", "examples": [0], "args": {"n_steps": 2.5}}, 400, "integer"),
    ({"view": "img", "method": "IntegratedGradients", "examples": [0], "args": {"n_steps": True}}, 400, "number"),
    ({"view": "img", "method": "IntegratedGradients", "examples": [0], "args": {"n_steps": 10 ** 6}}, 400, "must lie in"),
    ({"view": "img", "method": "RAP", "examples": [0], "extra": 1}, 400, "unknown field 'extra'"),
    ({"view": "img", "method": "RAP"}, 400, "missing field 'examples'"),
    ({"view": "img", "method": "RAP", "examples": []}, 400, "non-empty"),
    ({"view": "img", "method": "RAP", "examples": [0, 0]}, 400, "twice"),
    ({"view": "img", "method": "RAP", "examples": [10]}, 400, "[0, 9]"),
    ({"view": "img", "method": "RAP", "examples": list(range(9))}, 413, "at most 8"),
    ({"view": "img", "method": "IntegratedGradients", "examples": [0, 1, 2, 3, 4], "args": {"n_steps": 100}}, 413,
     "n_steps x examples"),
    ({"view": "img", "method": "Occlusion", "examples": [0, 1], "args": {"window": 1, "stride": 1}}, 413, "windows"),
    ({"view": "img", "method": "CD", "examples": [0], "args": {"block": 1}}, 400, "must lie in [2, 16]"),
    ({"view": "img", "method": "ACD", "examples": [0]}, 400, "/api/acd"),
    ({"view": "text", "method": "RAP", "examples": [0]}, 400, "unknown method"),
    ({"view": "gelu", "method": "RAP", "examples": [0]}, 422, "log_softmax"),
]


@pytest.mark.parametrize("payload,status,fragment", BAD_POSTS)
def test_bad_attribute_requests(client, payload, status, fragment):
    resp = _post(client, "/api/attribute", payload)
    assert resp.status_code == status, resp.get_json()
    body = resp.get_json()
    assert body["status"] == status and fragment.lower() in body["error"].lower()


@pytest.mark.parametrize("payload,status,fragment", [
    ({"view": "img", "example": 0, "args": {"sweep_dim": 1}}, 400, "must lie in [2, 15]"),
    ({"view": "img", "example": 0, "args": {"percentile_include": 5}}, 400, "must lie in"),
    ({"view": "img", "example": 0, "args": {"levels": 3}}, 400, "unknown argument"),
    ({"view": "img", "example": "../x"}, 400, "'example'"),
    ({"view": "multi", "example": 0}, 400, "unknown method 'ACD'"),
    ({"view": "text", "example": 0, "args": {"sweep_dim": 2}}, 400, "unknown argument"),
])
def test_bad_acd_requests(client, payload, status, fragment):
    resp = _post(client, "/api/acd", payload)
    assert resp.status_code == status, resp.get_json()
    assert fragment.lower() in resp.get_json()["error"].lower()


@pytest.mark.parametrize("url,status,fragment", [
    ("/api/examples?view=img&limit=0", 400, "must lie in"),
    ("/api/examples?view=img&limit=1000", 400, "must lie in"),
    ("/api/examples?view=img&limit=abc", 400, "non-negative integer"),
    ("/api/examples?view=img&top_k=-1", 400, "non-negative integer"),
    ("/api/examples?view=img&true_class=4", 400, "must lie in"),
    ("/api/examples?view=img&prediction=maybe", 400, "all, correct or incorrect"),
    ("/api/examples?view=img&file=/etc/passwd", 400, "unknown query parameter 'file'"),
    ("/api/examples?view=../../etc/passwd", 400, "unknown view"),
    ("/api/examples?view=img&view=text", 400, "more than once"),
    ("/api/methods?view=%2Fetc%2Fpasswd", 400, "unknown view"),
    ("/api/config?debug=1", 400, "unknown query parameter"),
    ("/api/nothing", 404, "no such endpoint"),
    ("/../../etc/passwd", 404, "no such endpoint"),
    ("/static/../../../etc/passwd", 404, "no such endpoint"),
    ("/api/attribute", 405, "not allowed"),
])
def test_bad_get_requests(client, url, status, fragment):
    resp = client.get(url)
    assert resp.status_code == status
    body = resp.get_json()
    assert body is not None and fragment.lower() in body["error"].lower()


def test_malformed_bodies_and_methods(client):
    cases = [
        (client.post("/api/attribute", data="{not json", content_type="application/json"), 400, "malformed json"),
        (client.post("/api/attribute", data="[1, 2]", content_type="application/json"), 400, "must be an object"),
        (client.post("/api/attribute", data=b"\xff\xfe", content_type="application/json"), 400, "malformed json"),
        (client.post("/api/attribute", data='{"method": "RAP", "examples": [0], "args": {"stabilizer": NaN}}',
                     content_type="application/json"), 400, "finite"),
        (client.post("/api/attribute", data='{"method": "RAP", "examples": [0]}', content_type="text/plain"), 415,
         "application/json"),
        (client.post("/api/attribute", data="x" * (70 * 1024), content_type="application/json"), 413, "too large"),
        (client.post("/api/config"), 405, "not allowed"),
        (client.put("/api/attribute", json={}), 405, "not allowed"),
        (client.delete("/api/acd"), 405, "not allowed"),
        (client.get("/api/config", headers={"Host": "evil.example:80"}), 400, "loopback"),
    ]
    for resp, status, fragment in cases:
        assert resp.status_code == status, resp.get_json()
        assert fragment in resp.get_json()["error"].lower()


def test_no_file_is_opened_for_path_like_values(client, monkeypatch):
    opened = []
    real_open = builtins.open

    def spy(file, *a, **k):
        opened.append(str(file))
        return real_open(file, *a, **k)

    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(io, "open", spy)
    for payload in ({"view": "img", "method": "/etc/passwd", "examples": [0]},
                    {"view": "img", "method": "LRP", "examples": [0], "args": {"preset": "../../../etc/passwd"}},
                    {"view": "../../etc/passwd", "method": "RAP", "examples": [0]}):
        assert _post(client, "/api/attribute", payload).status_code == 400
    assert client.get("/api/examples?view=/etc/passwd").status_code == 400
    assert not [p for p in opened if "passwd" in p]


def _snapshot(model):
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                   len(getattr(m, "_backward_pre_hooks", {}))) for m in model.modules()],
        "grads": [p.grad is None for p in model.parameters()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "attrs": [sorted(vars(m)) for m in model.modules()],
    }


def test_requests_do_not_change_the_model(client, net):
    before = _snapshot(net)
    for method in ["RAP", "LRP", "CLRP", "SGLRP", "CD", "IntegratedGradients", "Saliency", "InputXGradient",
                   "Occlusion"]:
        assert _post(client, "/api/attribute", {"view": "img", "method": method, "examples": [7]}).status_code == 200
    assert _post(client, "/api/acd", {"view": "img", "example": 7, "args": {"sweep_dim": 4, "num_iters": 2}}).status_code == 200
    assert _post(client, "/api/attribute", {"view": "img", "method": "RAP", "examples": [7],
                                            "args": {"stabilizer": 5}}).status_code == 400
    after = _snapshot(net)
    assert before["training"] == after["training"] and not any(after["training"])
    assert before["hooks"] == after["hooks"]
    assert before["grads"] == after["grads"] and before["requires_grad"] == after["requires_grad"]
    assert before["attrs"] == after["attrs"]
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), k


# --------------------------------------------------------------------------- serving, API surface
def test_constructor_signatures_match_captum_insights():
    from captum_rap.insights.demo import serve_demo

    def names(fn):
        return [p.name for p in inspect.signature(fn).parameters.values() if p.kind != p.KEYWORD_ONLY][1:]

    assert names(AttributionVisualizer.__init__) == ["models", "classes", "features", "dataset", "score_func",
                                                     "use_label_for_attr"]
    assert names(Batch.__init__) == ["inputs", "labels", "additional_args"]
    assert names(ImageFeature.__init__) == ["name", "baseline_transforms", "input_transforms",
                                            "visualization_transform"]
    assert names(TextFeature.__init__) == ["name", "baseline_transforms", "input_transforms",
                                           "visualization_transform"]
    assert names(GeneralFeature.__init__) == ["name", "categories"]
    sig = inspect.signature(serve_demo).parameters
    assert [(p.name, p.default) for p in sig.values()] == [("host", "127.0.0.1"), ("port", 8080),
                                                           ("open_browser", False)]
    sig = inspect.signature(AttributionVisualizer.serve).parameters
    assert sig["host"].default == "127.0.0.1" and sig["port"].default == 0


def test_serve_in_background_and_snapshot(net, data):
    import urllib.request

    x, labels = data
    vis = AttributionVisualizer(net, CLASSES, ImageFeature("Photo", None, [_normalize]), [Batch(x[:3], labels[:3])],
                                score_func=lambda out: torch.softmax(out, 1))
    port = vis.serve(blocking=False)
    try:
        assert isinstance(port, int) and port > 0
        assert vis.serve(blocking=False) == port  # one server per visualizer
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/config", timeout=30) as r:
            assert json.loads(r.read())["views"][0]["num_examples"] == 3
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as r:
            assert b"captum_rap Insights" in r.read()
    finally:
        vis.stop()
    html = vis.snapshot_html()
    assert html.count("<img") == 3 and "data:image/png;base64," in html
    import importlib.util

    if importlib.util.find_spec("IPython") is None:
        assert vis.render() == html  # no IPython: a static snapshot, no server
        assert vis._server is None


def test_demo_visualizer_on_lite0():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("skimage")
    from captum_rap.insights.demo import demo_visualizer

    vis = demo_visualizer(photos=[("chelsea", 281), ("coffee", 967)])
    client = create_app({"images": vis}).test_client()
    page = client.get("/api/examples?top_k=5").get_json()
    chelsea, coffee = page["examples"]
    assert set(p["index"] for p in chelsea["predictions"]) & {281, 282, 283, 284, 285}  # a cat
    assert coffee["predictions"][0]["name"] in ("espresso", "cup", "coffee mug")
    # the listed top-5 are the softmax of Lite0's logits on the preprocessed photos,
    # computed here directly
    from captum_rap import zoo

    net = vis.models[0]
    for name, shown in (("chelsea", chelsea), ("coffee", coffee)):
        with torch.no_grad():
            probs = torch.softmax(net(zoo.lite0_preprocess(zoo.skimage_photo(name), size=224)), 1)[0]
        top = torch.topk(probs, 5)
        assert [p["index"] for p in shown["predictions"]] == top.indices.tolist()
        assert [p["score"] for p in shown["predictions"]] == pytest.approx(top.values.tolist(), abs=1e-5)
    assert chelsea["label_name"] == "tabby"
    methods = client.get("/api/methods").get_json()["methods"]
    acd = {a["name"]: a for a in [m for m in methods if m["name"] == "ACD"][0]["args"]}
    assert acd["sweep_dim"]["min"] >= 14  # at most 16 x 16 blocks on 224 px


def test_huge_numbers_and_deep_json_are_4xx(client):
    resp = _post(client, "/api/attribute", {"view": "img", "method": "RAP", "examples": [0],
                                             "args": {"stabilizer": 10 ** 400}})
    assert resp.status_code == 400 and "finite" in resp.get_json()["error"]
    body = '{"view": "img", "method": "RAP", "examples": [0], "args": ' + "[" * 2000 + "]" * 2000 + "}"
    resp = client.post("/api/attribute", data=body, content_type="application/json")
    assert resp.status_code == 400 and "malformed" in resp.get_json()["error"]
