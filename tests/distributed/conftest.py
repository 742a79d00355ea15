"""A local Ray instance shared by the tests of this folder, and a small synthetic store."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def local_ray(s3_endpoint):
    """ray.init on this machine (4 logical CPUs on 2 cores leave room for Ray Data tasks).

    Started after the local S3 server so that Ray's workers inherit its AWS_* variables.
    """
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=4, dashboard_host="127.0.0.1", log_to_driver=True)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def small_store(tmp_path_factory) -> str:
    from simvp_ray.data import write_synthetic

    url = str(tmp_path_factory.mktemp("data") / "synthetic-small.zarr")
    write_synthetic(url, n_frames=600, seed=3)
    return url
