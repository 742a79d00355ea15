"""S3 round trip against moto's S3 server on 127.0.0.1 (fixtures in tests/conftest.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from simvp_ray.data import (
    convert_xarray,
    iter_numpy_batches,
    open_dataset,
    read_windows,
    validate_store,
    window_starts,
    write_synthetic,
)

pytestmark = pytest.mark.s3


def test_synthetic_round_trip(s3_bucket, tmp_path):
    url = f"s3://{s3_bucket}/synthetic.zarr"
    write_synthetic(url, n_frames=128, size=8, chunk_frames=32)
    local = write_synthetic(tmp_path / "local.zarr", n_frames=128, size=8, chunk_frames=32)
    remote = open_dataset(url)
    assert remote.splits == local.splits and remote.stats.to_attrs() == local.stats.to_attrs()
    starts = window_starts(remote, "train", 4, 4)
    np.testing.assert_array_equal(read_windows(remote, starts, 4, 4)["y"],
                                  read_windows(local, starts, 4, 4)["y"])
    assert sum(len(b["x"]) for b in iter_numpy_batches(url, "val", 4, 4, 8)) == len(
        window_starts(local, "val", 4, 4))
    assert "all chunks read" in validate_store(url)
    with pytest.raises(ValueError, match="already exists"):
        write_synthetic(url, n_frames=128, size=8)
    write_synthetic(url, n_frames=64, size=8, overwrite=True)
    assert open_dataset(url).n_steps == 64


def test_cli_to_s3_and_validate(s3_bucket, capsys, prepare_data_main):
    main = prepare_data_main
    url = f"s3://{s3_bucket}/cli.zarr"
    assert main(["synthetic", "--dst", url, "--frames", "120", "--size", "8"]) == 0
    assert main(["validate", url]) == 0
    assert "(120, 2, 8, 8)" in capsys.readouterr().out


def test_missing_bucket(s3_endpoint, capsys, prepare_data_main):
    main = prepare_data_main
    url = "s3://no-such-bucket-here/x.zarr"
    with pytest.raises(ValueError, match="bucket 'no-such-bucket-here' does not exist"):
        open_dataset(url)
    with pytest.raises(ValueError, match="bucket 'no-such-bucket-here' does not exist"):
        write_synthetic(url, n_frames=64, size=8)
    assert main(["validate", url]) == 1
    assert "no-such-bucket-here" in capsys.readouterr().err


def test_xarray_zarr_source_on_s3(s3_bucket):
    times = pd.date_range("2021-06-01", periods=40, freq="6h")
    values = np.random.default_rng(0).random((40, 2, 3, 5)).astype(np.float32)
    src = xr.Dataset({"u": (("time", "level", "latitude", "longitude"), values)},
                     coords={"time": times, "level": [500, 850]})
    src.to_zarr(f"s3://{s3_bucket}/src.zarr", zarr_format=3, consolidated=False)
    ds = convert_xarray(f"s3://{s3_bucket}/src.zarr", f"s3://{s3_bucket}/out.zarr",
                        variables=["u"], levels=[850])
    assert ds.channels == ["u_850"] and ds.attrs["time_step"] == 6 * 3600
    np.testing.assert_array_equal(ds.frames[:, 0], values[:, 1])
