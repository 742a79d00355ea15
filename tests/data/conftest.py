"""Fixtures of the data tests: small synthetic stores written once per module."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from simvp_ray.data import write_synthetic


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    """A 300-step, 2-channel 16x16 synthetic store with 32-frame chunks and 3 gaps."""
    path = tmp_path_factory.mktemp("synthetic") / "small.zarr"
    write_synthetic(path, n_frames=300, channels=2, size=16, chunk_frames=32)
    return path


@pytest.fixture(scope="session")
def prepare_data_main():
    """jobs/prepare_data.py's main(argv) (jobs/ is not a package, so load it by path)."""
    path = Path(__file__).resolve().parents[2] / "jobs" / "prepare_data.py"
    spec = importlib.util.spec_from_file_location("prepare_data_job", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main
