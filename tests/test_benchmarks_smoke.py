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
