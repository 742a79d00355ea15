"""Moving MNIST from the real MNIST test digits, and the mnist_test_seq.npy layout."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from helpers import shared_file

from simvp_ray.data import (
    convert_mmnist,
    generate_moving_mnist,
    read_idx_images,
    read_windows,
    window_starts,
)
from simvp_ray.data.mmnist import random_trajectory


@pytest.fixture(scope="module")
def digits_path():
    return shared_file("data/mnist/t10k-images-idx3-ubyte.gz")


def test_read_real_idx(digits_path):
    digits = read_idx_images(digits_path)
    assert digits.shape == (10000, 28, 28) and digits.dtype == np.uint8
    assert abs(digits.mean() - 33.79) < 0.01


def test_generator_pastes_digits_on_the_reference_trajectory(digits_path):
    digits = read_idx_images(digits_path)
    frames = generate_moving_mnist(digits, 1, frames=20, num_digits=1, seed=7)[0]
    rng = np.random.default_rng(7)
    path = random_trajectory(rng, 20, 36)
    digit = digits[rng.integers(0, len(digits))]
    assert path.min() >= 0 and path.max() <= 36
    assert np.abs(np.diff(path, axis=0)).max() <= 4  # 0.1 * 36 = 3.6 px a frame
    for i, (top, left) in enumerate(path):
        np.testing.assert_array_equal(frames[i, top : top + 28, left : left + 28], digit)
        assert frames[i].sum() == digit.sum()
    two = generate_moving_mnist(digits, 3, seed=1)
    np.testing.assert_array_equal(two, generate_moving_mnist(digits, 3, seed=1))
    assert not np.array_equal(two, generate_moving_mnist(digits, 3, seed=2))
    assert two.max() <= 255 and two.dtype == np.float32


def test_convert_generated(digits_path, tmp_path):
    ds = convert_mmnist(digits_path, tmp_path / "mm.zarr", train_sequences=12, test_sequences=4)
    assert ds.frames.shape == (16 * 21, 1, 64, 64)
    assert len(window_starts(ds, "train", 10, 10)) == 12
    assert len(window_starts(ds, "test", 10, 10)) == 4 == len(window_starts(ds, "val", 10, 10))
    digits = read_idx_images(digits_path)
    expected = generate_moving_mnist(digits, 12, seed=[0, 0])
    batch = read_windows(ds, window_starts(ds, "train", 10, 10), 10, 10)
    np.testing.assert_array_equal(batch["x"][:, :, 0] * 255, expected[:, :10])
    np.testing.assert_allclose(batch["y"][:, :, 0], expected[:, 10:] / 255, atol=1e-7)


def test_convert_with_test_sequence_file(digits_path, tmp_path):
    rng = np.random.default_rng(0)
    sequences = rng.integers(0, 256, (20, 3, 64, 64), dtype=np.uint8)  # (time, N, 64, 64)
    np.save(tmp_path / "mnist_test_seq.npy", sequences)
    ds = convert_mmnist(digits_path, tmp_path / "mm.zarr", train_sequences=2,
                        test_seq=tmp_path / "mnist_test_seq.npy")
    starts = window_starts(ds, "test", 10, 10)
    assert len(starts) == 3
    batch = read_windows(ds, starts, 10, 10)
    for i in range(3):  # sample i = arr[:, i]: frames 0-9 in, 10-19 out, scaled by 1/255
        np.testing.assert_allclose(batch["x"][i, :, 0], sequences[:10, i] / 255, atol=1e-7)
        np.testing.assert_allclose(batch["y"][i, :, 0], sequences[10:, i] / 255, atol=1e-7)


def test_bad_mnist_files(tmp_path):
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01" + bytes(12)))
    with pytest.raises(ValueError, match="bad.gz: not an IDX image file"):
        read_idx_images(tmp_path / "bad.gz")
    np.save(tmp_path / "seq.npy", np.zeros((20, 2, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="seq.npy: shape \\(20, 2, 32, 32\\)"):
        convert_mmnist(shared_file("data/mnist/t10k-images-idx3-ubyte.gz"), tmp_path / "x.zarr",
                       test_seq=tmp_path / "seq.npy")


def test_idx_written_here(tmp_path):
    """The IDX format itself (big-endian header, then uint8 pixels), without ../shared."""
    digits = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    header = np.array([0x803, 5, 28, 28], dtype=">u4").tobytes()
    (tmp_path / "digits-idx3-ubyte.gz").write_bytes(gzip.compress(header + digits.tobytes()))
    (tmp_path / "digits-idx3-ubyte").write_bytes(header + digits.tobytes())
    np.testing.assert_array_equal(read_idx_images(tmp_path / "digits-idx3-ubyte.gz"), digits)
    np.testing.assert_array_equal(read_idx_images(tmp_path / "digits-idx3-ubyte"), digits)
    ds = convert_mmnist(tmp_path / "digits-idx3-ubyte", tmp_path / "mm.zarr",
                        train_sequences=3, test_sequences=2, seed=9)
    assert len(window_starts(ds, "train", 10, 10)) == 3
    assert len(window_starts(ds, "test", 10, 10)) == 2
    assert ds.frames[:20].max() <= 255 and ds.stats.to_attrs()["max"] == [255.0]
