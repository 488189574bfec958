"""Run the mutation check: plant each one-line bug of ``mutations.py`` in a fresh copy of
the package and run the tests named for it.  Not part of the test suite (pytest does not
collect this directory's files: none is named ``test_*.py``).

    python tests/mutation/run.py                 # all mutations, writes tests/mutation/RESULTS.md
    python tests/mutation/run.py cd-relu-rel-identity rap-signed-branch-dropped

First the named tests run on an unchanged copy (they must pass, else the check means
nothing); then each mutation on its own copy.  A mutation is killed when pytest reports a
failure (exit code 1); a mutation whose ``find`` text is no longer in the file (the code
changed) is reported as ``stale``, not counted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

from mutations import MUTATIONS  # noqa: E402


def _copy(dst: Path) -> None:
    for name in ("captum_rap", "tests", "tutorials"):
        if (ROOT / name).exists():
            shutil.copytree(ROOT / name, dst / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")
    # the tests find ../shared (fixtures) next to the checkout: link it next to the copy
    shared = ROOT.parent / "shared"
    if shared.exists() and not (dst.parent / "shared").exists():
        os.symlink(shared, dst.parent / "shared")


def _pytest(workdir: Path, tests, timeout: int = 1800):
    env = dict(os.environ, PYTHONPATH=str(workdir), PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired:
        rc, out = -1, "timeout"
    failed = [ln.split(" ")[1] for ln in out.splitlines() if ln.startswith("FAILED ")]
    return rc, failed, time.time() - t0, out


def main(argv) -> int:
    chosen = [m for m in MUTATIONS if not argv or m[0] in argv]
    base = Path(tempfile.mkdtemp(prefix="captum_rap_mut_"))
    rows = []
    try:
        # 1. the named tests pass on the unchanged copy
        clean = base / "clean" / "repo"
        clean.mkdir(parents=True)
        _copy(clean)
        all_tests = sorted({t for m in chosen for t in m[4]})
        rc, failed, dt, out = _pytest(clean, all_tests, timeout=3600)
        print("baseline (%d test files / ids): rc=%d in %.0f s" % (len(all_tests), rc, dt), flush=True)
        if rc != 0:
            print(out[-3000:])
            print("the named tests fail without any mutation: fix that first")
            return 2
        # 2. each mutation on its own copy
        for k, (mid, file, find, replace, tests, what) in enumerate(chosen):
            work = base / ("m%02d" % k) / "repo"
            work.mkdir(parents=True)
            _copy(work)
            path = work / file
            text = path.read_text()
            n = text.count(find)
            if n != 1:
                rows.append((mid, file, what, tests, "stale (found %d times)" % n, "", 0.0))
                print("%-40s stale" % mid, flush=True)
                continue
            path.write_text(text.replace(find, replace))
            rc, failed, dt, out = _pytest(work, tests)
            if rc == 1:
                status = "killed"
            elif rc == 0:
                status = "SURVIVED"
            else:
                status = "killed (rc=%d: error)" % rc if rc > 1 else "timeout"
            rows.append((mid, file, what, tests, status, failed[0] if failed else "", dt))
            print("%-40s %-10s %5.0f s  %s" % (mid, status, dt, failed[0] if failed else ""), flush=True)
            shutil.rmtree(work.parent, ignore_errors=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    counted = [r for r in rows if not r[4].startswith("stale")]
    killed = [r for r in counted if r[4].startswith("killed")]
    rate = 100.0 * len(killed) / max(len(counted), 1)
    print("kill rate: %d / %d = %.0f%%" % (len(killed), len(counted), rate))
    if not argv:
        _write(rows, len(killed), len(counted), rate)
    return 0 if len(killed) == len(counted) else 1


def _write(rows, killed, counted, rate) -> None:
    import platform

    import torch

    lines = [
        "# Mutation check: last result",
        "",
        "`python tests/mutation/run.py` (not run in CI; about %d min on 2 busy cores)."
        % max(1, round(sum(r[6] for r in rows) / 60)),
        "Each row: a one-line bug from `mutations.py` planted in a copy of the package, and the",
        "tests named for it run on that copy.  *killed* = at least one of them failed.",
        "",
        "Run: %s, torch %s, Python %s." % (time.strftime("%Y-%m-%d"), torch.__version__, platform.python_version()),
        "",
        "**Kill rate: %d / %d = %.0f%%**" % (killed, counted, rate),
        "",
        "| mutation | file | bug | tests run | result | first failing test |",
        "|---|---|---|---|---|---|",
    ]
    for mid, file, what, tests, status, first, dt in rows:
        lines.append("| `%s` | `%s` | %s | %s | %s | %s |" % (
            mid, file.replace("captum_rap/", ""), what, ", ".join("`%s`" % t.replace("tests/", "") for t in tests),
            status, "`%s`" % first.replace("tests/", "") if first else ""))
    (HERE / "RESULTS.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
