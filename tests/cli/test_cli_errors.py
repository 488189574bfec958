"""``captum-rap`` user errors (issue 16): each one exits 2 with one line on stderr, found
before anything is computed; images are read in their own bit depth; ``insights`` checks
its host and port before loading the models."""

from __future__ import annotations

import os
import socket
import sys
import types

import numpy as np
import pytest

import captum_rap.cli.common as cli
from captum_rap.cli import demo as cli_demo
from captum_rap.cli import explain as cli_explain
from captum_rap.cli.loading import load_image
from captum_rap.cli.main import main


def _one_line_exit_2(capsys, argv, fragment):
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("warning: ")]
    assert len(lines) == 1 and fragment in lines[0], err
    assert "Traceback" not in err


@pytest.fixture()
def nothing_computed(monkeypatch):
    """Fail the test if the command loads an image or a model (checks come first)."""
    def boom(*args, **kwargs):
        raise AssertionError("computed before the arguments were checked")

    # where the commands look them up (captum_rap.cli.explain / .demo)
    monkeypatch.setattr(cli_explain, "load_image", boom)
    monkeypatch.setattr(cli_explain, "load_model", boom)
    monkeypatch.setattr(cli_demo, "_demo_model", boom)


def test_demo_out_must_be_a_writable_folder(tmp_path, capsys, nothing_computed):
    afile = tmp_path / "a.txt"
    afile.write_text("x")
    _one_line_exit_2(capsys, ["demo", "--toy", "--out", str(afile)], "names a file")
    _one_line_exit_2(capsys, ["demo", "--toy", "--out", ""], "must name a folder")
    if os.path.isdir("/proc"):
        _one_line_exit_2(capsys, ["demo", "--toy", "--out", "/proc/captum_rap_demo"], "cannot write")


@pytest.mark.parametrize("args, fragment", [
    (["--method", "acd", "--acd-iters", "0"], "--acd-iters"),
    (["--method", "acd", "--acd-iters", "-2"], "--acd-iters"),
    (["--method", "acd", "--acd-sweep", "-1"], "--acd-sweep"),
    (["--method", "acd", "--acd-sweep", "224"], "--acd-sweep"),
    (["--method", "acd", "--acd-percentile", "101"], "--acd-percentile"),
    (["--method", "acd", "--acd-percentile", "nan"], "--acd-percentile"),
    (["--method", "acd", "--acd-percentile", "5"], "--acd-percentile"),
    (["--out", "{tmp}/folder.png"], "names a folder"),
    (["--out", ""], "--out"),
    (["--out", "/proc/x.png"], "cannot write"),
])
def test_explain_arguments_checked_before_computing(tmp_path, capsys, nothing_computed, args, fragment):
    if "/proc/x.png" in args and not os.path.isdir("/proc"):
        pytest.skip("needs /proc")
    (tmp_path / "folder.png").mkdir()
    argv = ["explain", "skimage:chelsea"] + [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "x.png")]
    _one_line_exit_2(capsys, argv, fragment)


@pytest.mark.parametrize("model", ["torchvision:squeezenet1_0", "torchvision:inception_v3"])
def test_model_that_cannot_run_at_this_size(tmp_path, capsys, model):
    pytest.importorskip("torchvision")
    _one_line_exit_2(capsys, ["explain", "skimage:chelsea", "--model", model, "--size", "16", "--out",
                              str(tmp_path / "x.png")], "cannot run on a 16x16 input")
    assert not (tmp_path / "x.png").exists()


def test_non_ascii_digit_target_and_multi_image_photo(tmp_path, capsys):
    pytest.importorskip("torchvision")
    pytest.importorskip("skimage")
    common = ["--model", "torchvision:resnet18", "--size", "32", "--out", str(tmp_path / "x.png")]
    assert main(["explain", "skimage:chelsea", "--target", "²"] + common) == 2
    err = capsys.readouterr().err
    assert "no class is named '²'" in err and "Traceback" not in err
    _one_line_exit_2(capsys, ["explain", "skimage:stereo_motorcycle"] + common, "not a single image")


def test_images_are_read_in_their_own_bit_depth(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    img8 = (rng.random((24, 20)) * 255).astype(np.uint8)
    img8[0, 0], img8[0, 1] = 0, 255
    Image.fromarray(img8).save(tmp_path / "g8.png")
    Image.fromarray(img8.astype(np.uint16) * 257).save(tmp_path / "g16.png")  # the same picture, 16 bit
    Image.fromarray(img8.astype(np.float32) / 255.0).save(tmp_path / "f.tiff")  # float in [0, 1]
    a8, _ = load_image(str(tmp_path / "g8.png"))
    a16, _ = load_image(str(tmp_path / "g16.png"))
    af, _ = load_image(str(tmp_path / "f.tiff"))
    assert a8.dtype == a16.dtype == af.dtype == np.uint8
    assert np.array_equal(a8, a16) and np.array_equal(a8, af)
    assert np.array_equal(a8[..., 0], img8)
    # a 16-bit picture that uses its whole range is not clipped to white
    dark = (np.linspace(0, 65535, 24 * 20).reshape(24, 20)).astype(np.uint16)
    Image.fromarray(dark).save(tmp_path / "ramp16.png")
    ramp, _ = load_image(str(tmp_path / "ramp16.png"))
    assert ramp.min() == 0 and ramp.max() == 255 and 100 < ramp.mean() < 155
    Image.fromarray((img8.astype(np.float32) - 300.0)).save(tmp_path / "neg.tiff")
    with pytest.raises(cli.CLIError, match="float image"):
        load_image(str(tmp_path / "neg.tiff"))


def _stub_serve(monkeypatch):
    pytest.importorskip("flask")
    calls = []
    mod = types.ModuleType("captum_rap.insights.demo")

    def serve_demo(host="127.0.0.1", port=8080):
        calls.append((host, port))

    mod.serve_demo = serve_demo
    monkeypatch.setitem(sys.modules, "captum_rap.insights.demo", mod)
    return calls


def test_insights_busy_port_bad_host_and_port_zero(monkeypatch, capsys):
    calls = _stub_serve(monkeypatch)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        _one_line_exit_2(capsys, ["insights", "--port", str(port)], "in use")
    _one_line_exit_2(capsys, ["insights", "--host", "no-such-host.invalid"], "cannot serve on host")
    assert calls == []  # nothing was started
    assert main(["insights", "--port", "0"]) == 0
    (host, chosen), = calls
    assert host == "127.0.0.1" and chosen > 0
    assert f"http://127.0.0.1:{chosen}/" in capsys.readouterr().out
