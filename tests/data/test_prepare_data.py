"""jobs/prepare_data.py end to end through main(argv), plus one real subprocess run."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
from helpers import shared_file

from simvp_ray.data import open_dataset

REPO = Path(__file__).resolve().parents[2]


def test_synthetic_validate_and_overwrite(tmp_path, capsys, prepare_data_main):
    main, dst = prepare_data_main, str(tmp_path / "s.zarr")
    assert main(["synthetic", "--dst", dst, "--frames", "100", "--size", "8"]) == 0
    assert main(["synthetic", "--dst", dst, "--frames", "100", "--size", "8"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(["synthetic", "--dst", dst, "--frames", "90", "--size", "8", "--overwrite",
                 "--chunk-frames", "16"]) == 0
    assert open_dataset(dst).frames.chunks[0] == 16
    assert main(["validate", dst]) == 0
    assert "(90, 2, 8, 8)" in capsys.readouterr().out
    (tmp_path / "s.zarr" / "frames" / "c" / "2" / "0" / "0" / "0").write_bytes(b"junk")
    assert main(["validate", dst]) == 1
    assert "frames/c/2/0/0/0: unreadable chunk" in capsys.readouterr().err
    assert main(["validate", dst, "--quick"]) == 0


def test_converters_through_the_cli(tmp_path, prepare_data_main):
    main = prepare_data_main
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["xarray", "--src", str(shared_file("data/weatherbench/eraint_uvz.nc")),
                     "--dst", str(tmp_path / "x.zarr"), "--variables", "v", "--levels", "500",
                     "--time-dim", "month", "--licence", "ECMWF"]) == 0
    assert open_dataset(tmp_path / "x.zarr").attrs["licence"] == "ECMWF"
    assert main(["mmnist", "--src", str(shared_file("data/mnist/t10k-images-idx3-ubyte.gz")),
                 "--dst", str(tmp_path / "m.zarr"), "--train-sequences", "3",
                 "--test-sequences", "2", "--seed", "4"]) == 0
    assert open_dataset(tmp_path / "m.zarr").n_steps == 5 * 21
    arrays = {f"{k}_{s}": np.zeros((2, 4, 2, 32, 32)) for s in ("train", "test") for k in "XY"}
    np.savez(tmp_path / "dataset.npz", **arrays)
    assert main(["taxibj", "--src", str(tmp_path / "dataset.npz"),
                 "--dst", str(tmp_path / "t.zarr")]) == 0
    assert main(["weatherbench", "--src", str(tmp_path), "--dst", str(tmp_path / "w.zarr")]) == 1


def test_runs_as_a_script_from_the_repo_root(tmp_path):
    result = subprocess.run([sys.executable, "jobs/prepare_data.py", "synthetic", "--dst",
                             str(tmp_path / "s.zarr"), "--frames", "64", "--size", "8"],
                            cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout
