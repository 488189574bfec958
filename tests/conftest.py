"""Test-session set-up.

* The tests mirror the package in sub-folders (``tests/attr/``, ``tests/cd/``, ...) while the
  shared helpers (``_models.py``, ``_lrp_utils.py``, the slow references ``_rap_reference.py``,
  ``_cd_slow.py``, ...) stay here in ``tests/``: this folder goes on ``sys.path`` so that every
  test module imports them as ``from _models import ...``, whatever its folder.
* Subprocesses (CLI, tutorials, benchmarks, LXT) import the checkout under test, also when the
  installed captum_rap is another checkout (a git worktree).
"""

import os
import sys
from pathlib import Path

TESTS = str(Path(__file__).resolve().parent)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

ROOT = str(Path(__file__).resolve().parents[1])
_paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
if ROOT not in _paths:
    os.environ["PYTHONPATH"] = os.pathsep.join([ROOT] + _paths)
