"""Store schema, window index, window reads and the numpy iterator on a synthetic store."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from zarr.storage import LocalStore, WrapperStore

from simvp_ray.data import (
    denormalize,
    iter_numpy_batches,
    make_synthetic,
    normalize,
    open_dataset,
    read_windows,
    window_starts,
    write_synthetic,
)
from simvp_ray.data.schema import SCHEMA_NAME, SCHEMA_VERSION


def brute_force_starts(valid, split, offsets, stride=1):
    a, b = split
    return [s for s in range(a, b, stride) if s + offsets[-1] < b and all(valid[s + offsets])]


def test_layout_and_attributes(small_store):
    ds = open_dataset(small_store)
    assert ds.frames.shape == (300, 2, 16, 16) and ds.frames.dtype == np.float32
    assert ds.frames.chunks == (32, 2, 16, 16)
    assert ds.time.dtype == np.dtype("datetime64[s]") and np.all(np.diff(ds.time) > 0)
    assert ds.splits == {"train": (0, 210), "val": (210, 255), "test": (255, 300)}
    assert ds.valid.sum() == 300 - 6 and ds.channels == ["blobs_0", "blobs_1"]
    for key in ("source", "licence", "citation", "converter_version"):
        assert ds.attrs[key]
    assert ds.attrs["schema"] == SCHEMA_NAME and ds.attrs["schema_version"] == SCHEMA_VERSION
    # statistics come from the valid training steps only
    raw = make_synthetic(300, 2, 16)["frames"][:210]
    train = raw[np.isfinite(raw).reshape(210, -1).all(axis=1)]
    np.testing.assert_allclose(ds.stats.offset, train.mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(ds.stats.scale, train.std(axis=(0, 2, 3)), rtol=1e-4)


def test_select_maps_channel_names_to_indices_and_statistics(small_store):
    ds = open_dataset(small_store)
    for every in (None, []):
        picked, stats = ds.select(every)
        assert picked == [0, 1] and stats is ds.stats
    picked, stats = ds.select(["blobs_1", "blobs_0", "blobs_1"])  # any order, repeats allowed
    assert picked == [1, 0, 1] and stats.kind == ds.stats.kind
    np.testing.assert_array_equal(stats.offset, ds.stats.offset[[1, 0, 1]])
    np.testing.assert_array_equal(stats.scale, ds.stats.scale[[1, 0, 1]])
    with pytest.raises(ValueError, match=r"no channel \['t2m'\]; valid: \['blobs_0', 'blobs_1'\]"):
        ds.select(["blobs_0", "t2m"])


def test_frames_match_generator(small_store):
    ds = open_dataset(small_store)
    np.testing.assert_array_equal(ds.frames[:], make_synthetic(300, 2, 16)["frames"])
    assert np.isnan(ds.frames[:][~ds.valid]).all()


@pytest.mark.parametrize("split", ["train", "val", "test"])
@pytest.mark.parametrize(("step", "stride"), [(1, 1), (3, 1), (2, 5)])
def test_window_starts_match_brute_force(small_store, split, step, stride):
    ds = open_dataset(small_store)
    starts = window_starts(ds, split, 4, 4, frame_step=step, stride=stride)
    offsets = step * np.arange(8)
    assert starts.tolist() == brute_force_starts(ds.valid, ds.splits[split], offsets, stride)


def test_windows_never_cross_a_gap_or_a_split(small_store):
    ds = open_dataset(small_store)
    for split, (a, b) in ds.splits.items():
        starts = window_starts(ds, split, 6, 6)
        assert starts.min() >= a and starts.max() + 11 < b
        assert all(ds.valid[s : s + 12].all() for s in starts)
    # a split shorter than the window has none
    assert len(window_starts(ds, "val", 30, 30)) == 0


def test_explicit_offsets_like_openstl_mv(small_store):
    ds = open_dataset(small_store)
    offsets = [0, 6, 12, 17, 18, 24, 30, 36]  # idx_in [-17,-11,-5,0], idx_out [1,7,13,19]
    starts = window_starts(ds, "train", 4, 4, offsets=offsets)
    assert starts.tolist() == brute_force_starts(ds.valid, (0, 210), np.array(offsets))
    batch = read_windows(ds, starts[:3], 4, 4, offsets=offsets, normalized=False)
    frames = ds.frames[:]
    np.testing.assert_array_equal(batch["x"][1], frames[starts[1] + np.array(offsets[:4])])
    np.testing.assert_array_equal(batch["y"][2], frames[starts[2] + np.array(offsets[4:])])


def test_read_windows_values_and_order(small_store):
    ds = open_dataset(small_store)
    frames = ds.frames[:]
    starts = np.random.default_rng(0).permutation(window_starts(ds, "train", 3, 2, 2))[:17]
    batch = read_windows(ds, starts, 3, 2, frame_step=2)
    assert batch["x"].shape == (17, 3, 2, 16, 16) and batch["y"].shape == (17, 2, 2, 16, 16)
    assert batch["x"].dtype == np.float32
    for i, s in enumerate(starts):
        np.testing.assert_allclose(batch["x"][i], normalize(frames[s : s + 6 : 2], ds.stats))
        np.testing.assert_allclose(batch["y"][i], normalize(frames[s + 6 : s + 10 : 2], ds.stats))
    np.testing.assert_allclose(denormalize(batch["x"], ds.stats),
                               np.stack([frames[s : s + 6 : 2] for s in starts]), atol=1e-6)
    one = read_windows(ds, starts, 3, 2, 2, channels=["blobs_1"])
    np.testing.assert_allclose(one["y"], batch["y"][:, :, 1:], rtol=1e-6)
    with pytest.raises(ValueError, match="blobs_0"):
        read_windows(ds, starts, 3, 2, 2, channels=["rain"])


class CountingStore(WrapperStore):
    """Records the key of every read."""

    def __init__(self, store):
        super().__init__(store)
        self.keys = []

    async def get(self, key, prototype, byte_range=None):
        self.keys.append(key)
        return await self._store.get(key, prototype, byte_range)

    async def get_partial_values(self, prototype, key_ranges):
        self.keys += [key for key, _ in key_ranges]
        return await self._store.get_partial_values(prototype, key_ranges)


def test_one_read_per_touched_chunk(small_store):
    store = CountingStore(LocalStore(small_store, read_only=True))
    ds = open_dataset(store)
    rng = np.random.default_rng(1)
    starts = window_starts(ds, "train", 4, 4)
    for start in rng.choice(starts, 8, replace=False):
        store.keys.clear()
        read_windows(ds, [start], 4, 4)
        chunk_keys = [k for k in store.keys if k.startswith("frames/c/")]
        touched = {f"frames/c/{c}/0/0/0" for c in range(start // 32, (start + 7) // 32 + 1)}
        assert sorted(chunk_keys) == sorted(touched)
    # a batch of windows reads each chunk it touches once, not once per window
    store.keys.clear()
    read_windows(ds, starts[:100], 4, 4)
    chunk_keys = [k for k in store.keys if k.startswith("frames/c/")]
    assert len(chunk_keys) == len(set(chunk_keys)) == (starts[99] + 7) // 32 + 1


def test_iterator_reads_each_chunk_about_once(tmp_path):
    path = tmp_path / "long.zarr"
    write_synthetic(path, n_frames=4096, channels=1, size=8, chunk_frames=64)
    store = CountingStore(LocalStore(path, read_only=True))
    ds = open_dataset(store)
    chunks = -(-210 * 4096 // 300 // 64)  # chunks under the training split (70 %)
    for shuffle in (False, True):
        store.keys.clear()
        n = sum(len(b["x"]) for b in iter_numpy_batches(ds, "train", 4, 4, 32, shuffle=shuffle,
                                                        buffer_windows=1024))
        reads = [k for k in store.keys if k.startswith("frames/c/")]
        assert n == len(window_starts(ds, "train", 4, 4))
        # 1024-window buffers: 2-chunk blocks, so at most 1 + 1/2 reads per chunk
        assert len(reads) <= 1.5 * chunks + 1


def _rows(batches):
    return np.concatenate([b["x"][:, 0, 0, 0, 0] for b in batches])


def test_iter_numpy_batches_complete_and_reproducible(small_store):
    ds = open_dataset(small_store)
    starts = window_starts(ds, "train", 4, 4)
    expected = read_windows(ds, starts, 4, 4)
    plain = list(iter_numpy_batches(small_store, "train", 4, 4, 16, buffer_windows=40))
    assert [len(b["x"]) for b in plain[:-1]] == [16] * (len(plain) - 1)
    np.testing.assert_array_equal(np.concatenate([b["y"] for b in plain]), expected["y"])
    shuffled = list(iter_numpy_batches(ds, "train", 4, 4, 16, shuffle=True, seed=3, epoch=1,
                                       buffer_windows=40))
    again = list(iter_numpy_batches(ds, "train", 4, 4, 16, shuffle=True, seed=3, epoch=1,
                                    buffer_windows=40))
    other = list(iter_numpy_batches(ds, "train", 4, 4, 16, shuffle=True, seed=3, epoch=2,
                                    buffer_windows=40))
    np.testing.assert_array_equal(_rows(shuffled), _rows(again))
    assert not np.array_equal(_rows(shuffled), _rows(other))
    assert not np.array_equal(_rows(shuffled), _rows(plain))
    # the same multiset of whole windows, each once
    def windows(batches):
        flat = [np.concatenate([b["x"], b["y"]], axis=1).reshape(len(b["x"]), -1)
                for b in batches]
        return np.unique(np.concatenate(flat), axis=0, return_counts=True)

    (a, a_counts), (b, b_counts) = windows(shuffled), windows(plain)
    np.testing.assert_array_equal(a, b)
    assert a_counts.max() == b_counts.max() == 1 and len(a) == len(starts)
    dropped = list(iter_numpy_batches(ds, "train", 4, 4, 16, drop_last=True))
    assert sum(len(b["x"]) for b in dropped) == len(starts) // 16 * 16


def test_synthetic_beats_persistence():
    data = make_synthetic(600, 1, 32, seed=5)
    frames = data["frames"][data["valid"]][:, 0].reshape(-1, 32 * 32)
    persistence = np.mean((frames[2:] - frames[1:-1]) ** 2)
    # linear extrapolation from the last two frames already does far better
    extrapolation = np.mean((frames[2:] - (2 * frames[1:-1] - frames[:-2])) ** 2)
    assert extrapolation < 0.5 * persistence


def test_overwrite_protection_and_incomplete_rerun(tmp_path):
    path = tmp_path / "s.zarr"
    write_synthetic(path, n_frames=64, size=8)
    with pytest.raises(ValueError, match="overwrite"):
        write_synthetic(path, n_frames=64, size=8)
    write_synthetic(path, n_frames=80, size=8, overwrite=True)
    assert open_dataset(path).n_steps == 80
    # an interrupted conversion (complete=False) is reported and then replaced by a re-run
    zarr.open_group(path, mode="r+").attrs["complete"] = False
    with pytest.raises(ValueError, match="incomplete"):
        open_dataset(path)
    write_synthetic(path, n_frames=64, size=8)
    assert open_dataset(path).n_steps == 64
    occupied = tmp_path / "other"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty"):
        write_synthetic(occupied, n_frames=64, size=8)


def test_file_url(small_store):
    ds = open_dataset(f"file://{small_store}")
    assert ds.n_steps == 300 and ds.url.startswith("file://")


def test_bad_requests(small_store):
    ds = open_dataset(small_store)
    with pytest.raises(ValueError, match="valid: \\['test', 'train', 'val'\\]"):
        window_starts(ds, "holdout", 4, 4)
    with pytest.raises(ValueError, match="frame_step"):
        window_starts(ds, "train", 4, 4, frame_step=0)
    with pytest.raises(ValueError, match="window starts"):
        read_windows(ds, [296], 4, 4)
    with pytest.raises(ValueError, match="no Zarr store"):
        open_dataset(small_store.parent / "absent.zarr")


def test_iterating_a_split_without_windows_is_an_error(small_store):
    with pytest.raises(ValueError, match="split 'val' .* has no valid window of 60 frames"):
        next(iter_numpy_batches(small_store, "val", 30, 30, 4))


def test_prefetched_keeps_order_reraises_and_stops_when_the_consumer_does():
    import threading

    from simvp_ray.data.batches import prefetched
    from simvp_ray.data.schema import DatasetError

    batches = [{"x": np.full(2, i)} for i in range(7)]
    assert [b["x"][0] for b in prefetched(iter(batches), depth=2)] == list(range(7))

    def failing():
        yield batches[0]
        raise DatasetError("chunk 3 is unreadable")

    got = prefetched(failing())
    assert next(got)["x"][0] == 0
    with pytest.raises(DatasetError, match="chunk 3"):
        next(got)

    produced = []

    def endless():
        while True:
            produced.append(len(produced))
            yield {"x": np.zeros(1)}

    stream = prefetched(endless(), depth=2)
    next(stream)
    stream.close()  # a fixed number of steps taken: the producer must end, not run on
    for _ in range(50):
        if not any(t.name == "batch-prefetch" and t.is_alive() for t in threading.enumerate()):
            break
        threading.Event().wait(0.05)
    assert not any(t.name == "batch-prefetch" and t.is_alive() for t in threading.enumerate())
    assert len(produced) <= 5  # the one taken, `depth` queued, one waiting for a slot
