"""captum_rap.insights with a Vision Transformer: the demo's Fashion-MNIST ViT view
(``demo_vit_visualizer``: torchvision's unchanged ``VisionTransformer``, one-channel images)
offers and runs every method, its maps equal direct calls, RAP's ``operations`` argument
reaches RAP, and no request changes the model."""

import json

import pytest
import torch

pytest.importorskip("torchvision")

from captum_rap import LRP, RAP, zoo  # noqa: E402
from captum_rap.insights import AttributionVisualizer  # noqa: E402
from captum_rap.insights.demo import demo_vit_visualizer  # noqa: E402
from captum_rap.insights.methods import RequestError  # noqa: E402

ALL_METHODS = ["RAP", "LRP", "CLRP", "SGLRP", "CD", "ACD", "IntegratedGradients", "Saliency", "InputXGradient",
               "Occlusion"]


@pytest.fixture(scope="module")
def vis():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield demo_vit_visualizer(6)
    torch.set_num_threads(before)


def _model_input(i):
    images, labels = zoo.fashion_mnist_test_subset()
    return zoo.fmnist_preprocess(images[i:i + 1]), int(labels[i])


def _state(model):
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            [(n, m.training, dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks))
             for n, m in model.named_modules()],
            [p.requires_grad for p in model.parameters()])


def test_view_shows_the_vit_with_labels(vis):
    assert isinstance(vis, AttributionVisualizer)
    assert type(vis.models[0]).__name__ == "VisionTransformer" and vis.classes == zoo.FMNIST_CLASSES
    assert len(vis.examples) == 6 and vis.input_kind() == "image"
    assert [s.name for s in vis.method_specs()] == ALL_METHODS
    x0, label0 = _model_input(0)
    assert torch.allclose(vis.model_inputs(0)[0], x0, atol=1e-6) and vis.examples[0].label == label0
    info = vis.prediction_info(0, 0, 3)
    with torch.no_grad():
        assert info["predicted"] == int(vis.models[0](x0).argmax())
    assert vis.originals(0)[0]["type"] == "image" and vis.originals(0)[0]["png"]
    with pytest.raises(ValueError, match="count"):
        demo_vit_visualizer(0)
    with pytest.raises(TypeError, match="count"):
        demo_vit_visualizer(2.0)


@pytest.mark.parametrize("args, reference", [
    ({"preset": "attnlrp"}, lambda m: LRP(m, "attnlrp")),
    ({"preset": "cp_lrp"}, lambda m: LRP(m, "cp_lrp")),
    ("RAP", lambda m: RAP(m)),
    ({"operations": "attnlrp"}, lambda m: RAP(m, operations="attnlrp")),
])
def test_propagation_maps_equal_direct_calls(vis, args, reference):
    method = "RAP" if args == "RAP" or "operations" in args else "LRP"
    res = vis.attribute(0, method, {} if args == "RAP" else args, [1, 2])
    if method == "LRP":  # the view's epsilon (one default for every preset) is echoed and used
        eps, preset = res["args"]["epsilon"], args["preset"]

        def reference(m):
            return LRP(m, preset, epsilon=eps)
    for r in res["results"]:
        x, label = _model_input(r["index"])
        assert r["target"] == label  # use_label_for_attr
        want = reference(vis.models[0]).attribute(x, target=label).detach().double()
        f = r["features"][0]
        assert f["shape"] == [28, 28]
        scale = float(want.abs().sum())
        assert f["sum"] == pytest.approx(float(want.sum()), rel=1e-5, abs=1e-6 * scale)
        assert f["positive"] == pytest.approx(float(want.clamp(min=0).sum()), rel=1e-5, abs=1e-6 * scale)
    if method == "RAP":
        assert res["args"]["operations"] == ("cp_lrp" if args == "RAP" else args["operations"])


def test_every_method_runs_and_the_model_is_unchanged(vis):
    from captum.attr import IntegratedGradients

    model = vis.models[0]
    before = _state(model)
    sums = {}
    for spec in vis.method_specs():
        if spec.endpoint == "acd":
            tree = vis.acd(0, {"sweep_dim": 7, "num_iters": 1}, 3)
            assert tree["target"] == vis.examples[3].label
            continue
        res = vis.attribute(0, spec.name, {}, [3])
        f = res["results"][0]["features"][0]
        assert f["shape"] == [28, 28] and f["heatmap"], spec.name
        sums[spec.name] = f["sum"]
    assert all(v == v and abs(v) < float("inf") for v in sums.values()), sums
    # Integrated Gradients from the black baseline, as a direct call
    x, label = _model_input(3)
    black = torch.full_like(x, (0.0 - zoo.FMNIST_MEAN) / zoo.FMNIST_STD)
    want = IntegratedGradients(model).attribute(x, baselines=black, target=label, n_steps=25, internal_batch_size=16)
    assert sums["IntegratedGradients"] == pytest.approx(float(want.double().sum()), rel=1e-4, abs=1e-6)
    after = _state(model)
    assert before[0].keys() == after[0].keys() and all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert before[1] == after[1] and before[2] == after[2]


def test_bad_operations_value_is_a_request_error(vis):
    with pytest.raises(RequestError, match="operations"):
        vis.attribute(0, "RAP", {"operations": "lrp"}, [0])


def test_json_api_serves_the_vit_view(vis):
    pytest.importorskip("flask")
    from captum_rap.insights import create_app

    client = create_app({"vit": vis}).test_client()
    cfg = client.get("/api/config").get_json()
    assert cfg["views"][0]["name"] == "vit" and cfg["views"][0]["classes"] == zoo.FMNIST_CLASSES
    resp = client.post("/api/attribute", data=json.dumps({"view": "vit", "method": "LRP", "args": {"preset": "attnlrp"},
                                                         "examples": [0]}), content_type="application/json")
    assert resp.status_code == 200, resp.get_json()
    x, label = _model_input(0)
    eps = resp.get_json()["args"]["epsilon"]
    want = LRP(vis.models[0], "attnlrp", epsilon=eps).attribute(x, target=label).detach().double()
    assert resp.get_json()["results"][0]["features"][0]["sum"] == pytest.approx(float(want.sum()), rel=1e-5,
                                                                                 abs=1e-6)


def test_demo_views_include_the_vit(monkeypatch):
    import captum_rap.insights.demo as demo

    monkeypatch.setattr(demo, "demo_visualizer", lambda: "images")
    monkeypatch.setattr(demo, "demo_text_visualizer", lambda: "text")
    monkeypatch.setattr(demo, "demo_vit_visualizer", lambda: "vit")
    assert demo.demo_views() == {"images": "images", "vit": "vit", "text": "text"}
