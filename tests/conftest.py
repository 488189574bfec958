"""Test-session set-up: subprocesses (CLI, tutorials, benchmarks, LXT) import the checkout
under test, also when the installed captum_rap is another checkout (a git worktree)."""

import os
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
_paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
if ROOT not in _paths:
    os.environ["PYTHONPATH"] = os.pathsep.join([ROOT] + _paths)
