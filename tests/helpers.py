"""Plain helpers for tests (importable as `helpers`: pytest's pythonpath includes tests/)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("SIMVP_SHARED_DIR", REPO_ROOT.parent / "shared"))


def shared_file(relative: str) -> Path:
    """A file from ../shared, or skip the test with the reason when it is absent."""
    path = SHARED_DIR / relative
    if not path.exists():
        pytest.skip(f"reference file {path} not present (CI has ../shared; set SIMVP_SHARED_DIR)")
    return path


def load_job(name: str):
    """Import jobs/<name>.py as a module (jobs are scripts, not a package) to call its main."""
    import importlib.util

    path = REPO_ROOT / "jobs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"jobs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
