"""validate: a good store passes; each kind of damage is an error naming what is at fault."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr

from simvp_ray.data import validate_store


@pytest.fixture
def store(small_store, tmp_path):
    """A private copy of the small synthetic store to damage."""
    path = tmp_path / "copy.zarr"
    shutil.copytree(small_store, path)
    return path


def test_good_store_summary(store):
    summary = validate_store(store)
    for text in ("(300, 2, 16, 16)", "chunks (32, 2, 16, 16)", "train [0, 210)", "6 invalid steps",
                 "all chunks read"):
        assert text in summary


def test_unknown_schema_version(store):
    zarr.open_group(store, mode="r+").attrs["schema_version"] = 99
    with pytest.raises(ValueError, match="unknown schema_version 99"):
        validate_store(store)


def test_missing_array(store):
    shutil.rmtree(store / "valid")
    with pytest.raises(ValueError, match="missing array 'valid'"):
        validate_store(store)


def test_wrong_shape(store):
    group = zarr.open_group(store, mode="r+")
    del group["time"]
    group.create_array("time", shape=(299,), dtype="int64")[:] = np.arange(299)
    with pytest.raises(ValueError, match="time: shape \\(299,\\), expected \\(300,\\)"):
        validate_store(store)


def test_nan_in_valid_step(store):
    zarr.open_array(store / "frames", mode="r+")[70, 1, 3, 3] = np.inf
    with pytest.raises(ValueError, match="frames/c/2/0/0/0: NaN or inf .* time index 70"):
        validate_store(store)


def test_missing_chunk(store):
    (store / "frames" / "c" / "4" / "0" / "0" / "0").unlink()
    with pytest.raises(ValueError, match="frames/c/4/0/0/0: .*missing chunk.* 128"):
        validate_store(store)


def test_truncated_chunk(store):
    chunk = store / "frames" / "c" / "1" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-40])
    with pytest.raises(ValueError, match="frames/c/1/0/0/0: unreadable chunk \\(steps 32..63\\)"):
        validate_store(store)


def test_corrupt_chunk(store):
    chunk = store / "frames" / "c" / "3" / "0" / "0" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="frames/c/3/0/0/0: unreadable chunk"):
        validate_store(store)


def test_quick_mode_skips_the_scan(store):
    (store / "frames" / "c" / "4" / "0" / "0" / "0").unlink()
    assert "not scanned" in validate_store(store, check_data=False)
