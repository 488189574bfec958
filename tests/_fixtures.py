"""Shared helpers for tests that use the reference fixtures in ../shared/fixtures/."""

from __future__ import annotations

from pathlib import Path

import pytest

from _lrp_utils import portable_init  # noqa: F401  (re-exported for fixture tests)

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"


def fixture_path(name: str) -> Path:
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"reference fixture {name} not found in {FIXTURES} (shared/ is not checked out)")
    return path
