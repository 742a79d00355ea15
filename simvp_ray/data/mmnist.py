"""Moving MNIST: OpenSTL's bouncing-digits generator from MNIST IDX digits, and the standard
`mnist_test_seq.npy` (20, N, 64, 64) file, into a store.

Each sequence is 20 steps followed by one gap step, so a 10 -> 10 window is exactly a sequence.
Frames stay 0..255; the fixed min-max 0 / 255 normalises them to [0, 1] as OpenSTL does.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from simvp_ray.data.normalization import minmax_stats
from simvp_ray.data.schema import DatasetError
from simvp_ray.data.store import Dataset, StoreLayout, create_store

CONVERTER_VERSION = "1"
CANVAS = 64
STEP_LENGTH = 0.1  # per frame, in units of the free range (canvas - digit = 36 px)
IDX_IMAGES_MAGIC = 0x00000803
METADATA = {
    "converter": "mmnist", "converter_version": CONVERTER_VERSION,
    "licence": "MNIST: Y. LeCun and C. Cortes, commonly cited as CC BY-SA 3.0",
    "citation": "Srivastava, Mansimov, Salakhutdinov. Unsupervised Learning of Video "
                "Representations using LSTMs. ICML 2015",
}


def read_idx_images(path: str | os.PathLike) -> np.ndarray:
    """MNIST IDX image file (gzip or plain) -> (n, rows, cols) uint8."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    header = np.frombuffer(raw[:16], dtype=">u4") if len(raw) >= 16 else np.zeros(0)
    if len(header) < 4 or header[0] != IDX_IMAGES_MAGIC:
        raise DatasetError(f"{path}: not an IDX image file (magic {header[:1]}, expected 0x803)")
    n, rows, cols = (int(v) for v in header[1:])
    if len(raw) != 16 + n * rows * cols:
        raise DatasetError(f"{path}: {len(raw) - 16} pixel bytes, header says {n}x{rows}x{cols}")
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, rows, cols)


def random_trajectory(rng: np.random.Generator, frames: int, free: int) -> np.ndarray:
    """OpenSTL get_random_trajectory: (frames, 2) int top-left (y, x); moves before recording."""
    y, x = rng.random(), rng.random()
    theta = rng.random() * 2 * np.pi
    v_y, v_x = np.sin(theta), np.cos(theta)
    out = np.empty((frames, 2))
    for i in range(frames):
        y += v_y * STEP_LENGTH
        x += v_x * STEP_LENGTH
        if x <= 0:
            x, v_x = 0.0, -v_x
        if x >= 1.0:
            x, v_x = 1.0, -v_x
        if y <= 0:
            y, v_y = 0.0, -v_y
        if y >= 1.0:
            y, v_y = 1.0, -v_y
        out[i] = y, x
    return (free * out).astype(np.int32)  # truncation, as the reference


def generate_moving_mnist(digits: np.ndarray, n_sequences: int, frames: int = 20,
                          num_digits: int = 2, seed: int | list[int] = 0) -> np.ndarray:
    """(n_sequences, frames, 64, 64) float32 in 0..255: digits merged by pixel-wise max."""
    rng = np.random.default_rng(seed)
    size = digits.shape[1]
    free = CANVAS - size
    out = np.zeros((n_sequences, frames, CANVAS, CANVAS), dtype=np.float32)
    for n in range(n_sequences):
        for _ in range(num_digits):
            path = random_trajectory(rng, frames, free)
            digit = digits[rng.integers(0, len(digits))]
            for i, (top, left) in enumerate(path):
                window = out[n, i, top : top + size, left : left + size]
                np.maximum(window, digit, out=window)
    return out


def read_test_sequences(path: str | os.PathLike) -> np.ndarray:
    """mnist_test_seq.npy (frames, N, 64, 64) uint8, memory-mapped (the real one is 800 MB)."""
    array = np.load(path, mmap_mode="r")
    if array.ndim != 4 or array.shape[2:] != (CANVAS, CANVAS):
        raise DatasetError(f"{path}: shape {array.shape}, expected (frames, N, 64, 64)")
    return array


def convert_mmnist(src: str | os.PathLike, dst: str | os.PathLike, *,
                   test_seq: str | os.PathLike | None = None, train_sequences: int = 10000,
                   test_sequences: int = 10000, frames: int = 20, num_digits: int = 2,
                   seed: int = 0, overwrite: bool = False, chunk_frames: int | None = None,
                   storage_options: dict | None = None) -> Dataset:
    """Moving MNIST: bouncing digits from MNIST IDX images, plus mnist_test_seq.npy if given.

    Train split generated from the digits at src (seed); test split from test_seq, or
    generated with seed + 1 when none is given. Validation = test (OpenSTL)."""
    digits = read_idx_images(src)
    test = read_test_sequences(test_seq) if test_seq is not None else None
    n_test = test.shape[1] if test is not None else test_sequences
    if test is not None and test.shape[0] != frames:
        raise DatasetError(f"{test_seq}: {test.shape[0]} frames a sequence, expected {frames}")
    period = frames + 1  # one gap step after every sequence
    total = period * (train_sequences + n_test)
    train_end = period * train_sequences
    layout = StoreLayout(
        time=np.arange(total), channels=["intensity"], units=["0-255"], height=CANVAS,
        width=CANVAS, splits={"train": (0, train_end), "val": (train_end, total),
                              "test": (train_end, total)},
        metadata={**METADATA, "source": f"{Path(src).name} digits (seed {seed})"
                  + (f", test sequences {Path(test_seq).name}" if test_seq else "")},
        time_step=1, time_unit="step", chunk_frames=chunk_frames,
        extra_attrs={"val_is_test": True, "frames_per_sequence": frames,
                     "digits_per_sequence": num_digits},
    )
    writer = create_store(dst, layout, overwrite=overwrite, storage_options=storage_options)
    valid = np.arange(period) < frames
    step = 0
    batch = 500  # sequences generated and written at a time: 500 * 21 * 16 KiB = 170 MB
    for split, count in (("train", train_sequences), ("test", n_test)):
        for i in range(0, count, batch):
            n = min(batch, count - i)
            if split == "test" and test is not None:
                sequences = np.asarray(test[:, i : i + n], dtype=np.float32).transpose(1, 0, 2, 3)
            else:
                split_seed = seed if split == "train" else seed + 1
                sequences = generate_moving_mnist(digits, n, frames, num_digits,
                                                  seed=[split_seed, i])
            block = np.concatenate(
                [sequences, np.full((n, 1, CANVAS, CANVAS), np.nan, np.float32)], axis=1)
            writer.write(step, block.reshape(-1, 1, CANVAS, CANVAS), np.tile(valid, n),
                         f"{split} sequences {i}..{i + n - 1}")
            step += n * period
    return writer.finish(fixed=minmax_stats([0.0], [255.0], "fixed"))
