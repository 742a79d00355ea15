"""Ray Data windows (simvp_ray.data.ray_data) against the plain numpy iterator, on a local Ray.

One Ray instance serves the module (started after the moto server, so S3 reaches the workers);
a 2-worker TorchTrainer checks each worker's share of the training and validation windows in
resident and streaming mode; the order and mode rules are checked without Ray.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter

import numpy as np
import pytest

from simvp_ray.config import DataConfig, ModelConfig
from simvp_ray.data import (
    denormalize,
    iter_numpy_batches,
    normalize,
    open_dataset,
    read_windows,
    window_starts,
    write_synthetic,
)
from simvp_ray.data.batches import shard_positions
from simvp_ray.data.ray_data import (
    WindowFeed,
    build_ray_datasets,
    choose_data_mode,
    count_split_windows,
    load_resident,
    plan_data,
    stream_share,
)

MODEL = ModelConfig(in_frames=4, out_frames=4, channels=2, height=16, width=16)


def window_keys(batch: dict[str, np.ndarray]) -> list[str]:
    """One content hash per window of a batch: a window's identity for multiset comparisons."""
    return [hashlib.sha1(np.ascontiguousarray(x).tobytes() + np.ascontiguousarray(y).tobytes()
                         ).hexdigest() for x, y in zip(batch["x"], batch["y"])]


def collect(batches) -> dict[str, np.ndarray]:
    batches = list(batches)
    return {key: np.concatenate([np.asarray(b[key]) for b in batches]) for key in ("x", "y")}


def sorted_by_key(windows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    order = np.argsort(window_keys(windows))
    return {key: value[order] for key, value in windows.items()}


def ray_windows(ds, **kwargs) -> dict[str, np.ndarray]:
    return collect(ds.iter_batches(batch_size=64, batch_format="numpy", **kwargs))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """300 steps of 2 x 16 x 16 in 8-frame chunks (read tasks of 8 chunks: 4 in train), 3 gaps."""
    url = str(tmp_path_factory.mktemp("ray_data") / "small.zarr")
    write_synthetic(url, n_frames=300, channels=2, size=16, chunk_frames=8, seed=1)
    return url


@pytest.fixture(scope="module")
def data(store) -> DataConfig:
    # 64 windows per read: a handful of blocks per split, so block order matters but stays cheap
    return DataConfig(url=store, windows_per_read=32, batch_size=8, val_batch_size=8)


@pytest.fixture(scope="module")
def local_ray(s3_endpoint):
    """One Ray for this module, started after moto so its env (AWS_ENDPOINT_URL) reaches the
    workers. Module-scoped: tests/distributed starts its own Ray later in the same session."""
    import os

    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=4, dashboard_host="127.0.0.1")
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    # the driver-side comparisons below are in order, as Train's DataConfig executes them
    context.execution_options.preserve_order = True
    yield ray
    ray.shutdown()


@pytest.mark.ray
def test_rows_are_normalised_windows_and_denormalise_to_physical_units(local_ray, data, store):
    datasets = build_ray_datasets(data, MODEL)
    assert set(datasets) == {"train", "val", "test"}
    row = datasets["val"].take(1)[0]
    assert row["x"].shape == (4, 2, 16, 16) and row["y"].shape == (4, 2, 16, 16)
    assert row["x"].dtype == np.float32 and row["y"].dtype == np.float32

    dataset = open_dataset(store)
    starts = window_starts(dataset, "val", 4, 4)
    got = ray_windows(datasets["val"])
    assert got["x"].shape == (len(starts), 4, 2, 16, 16)
    # by hand: (frame - train mean) / train std, per channel, from the raw array
    mean = np.asarray(dataset.attrs["normalization"]["mean"], np.float32)[:, None, None]
    std = np.asarray(dataset.attrs["normalization"]["std"], np.float32)[:, None, None]
    raw = dataset.frames[:]
    expected_x = (raw[starts[:, None] + np.arange(4)] - mean) / std
    expected_y = (raw[starts[:, None] + 4 + np.arange(4)] - mean) / std
    np.testing.assert_allclose(got["x"], expected_x, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got["y"], expected_y, rtol=1e-6, atol=1e-6)
    t0 = np.concatenate([b["t0"] for b in datasets["val"].iter_batches(batch_format="numpy")])
    np.testing.assert_array_equal(t0, starts + 4)  # the first target frame's step
    # denormalisation gives the stored physical values back
    physical = read_windows(dataset, starts, 4, 4, normalized=False)
    np.testing.assert_allclose(denormalize(got["y"], dataset.stats), physical["y"],
                               rtol=1e-5, atol=1e-5)
    # the training-split statistics make the training frames about zero-mean, unit-variance
    train = ray_windows(datasets["train"])["x"]
    assert abs(float(train.mean())) < 0.1 and abs(float(train.std()) - 1) < 0.1


@pytest.mark.ray
@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_each_split_holds_the_same_windows_as_the_numpy_iterator(local_ray, data, split):
    got = ray_windows(build_ray_datasets(data, MODEL, seed=3)[split],
                      local_shuffle_buffer_size=32 if split == "train" else None,
                      local_shuffle_seed=3)
    plain = collect(iter_numpy_batches(data.url, split, 4, 4, batch_size=16,
                                       shuffle=split == "train", seed=3))
    assert len(got["x"]) == len(plain["x"]) == count_split_windows(data, MODEL, split)
    assert Counter(window_keys(got)) == Counter(window_keys(plain))
    a, b = sorted_by_key(got), sorted_by_key(plain)
    np.testing.assert_array_equal(a["x"], b["x"])
    np.testing.assert_array_equal(a["y"], b["y"])


@pytest.mark.ray
def test_shuffled_training_order_is_reproducible_from_seed_and_epoch(local_ray, data):
    def order(seed: int, epoch: int) -> list[str]:
        ds = build_ray_datasets(data, MODEL, seed=seed)["train"]
        return window_keys(ray_windows(ds, local_shuffle_buffer_size=32,
                                       local_shuffle_seed=seed + epoch))

    first = order(7, 0)
    assert order(7, 0) == first  # a fresh execution, as after a restart
    other_epoch = order(7, 1)
    assert other_epoch != first and sorted(other_epoch) == sorted(first)
    assert order(8, 0) != first
    unshuffled = window_keys(ray_windows(build_ray_datasets(
        DataConfig(**{**data.__dict__, "shuffle": False}), MODEL)["train"]))
    assert first != unshuffled and sorted(first) == sorted(unshuffled)


@pytest.mark.ray
def test_frame_step_stride_offsets_and_channels_go_through_ray_data(local_ray, data):
    cases = [
        ({"frame_step": 2, "window_stride": 3, "channels": ("blobs_1",)},
         {"frame_step": 2, "stride": 3, "channels": ["blobs_1"]}),
        ({"frame_offsets": (0, 1, 2, 3, 5, 7, 9, 11), "channels": ("blobs_1", "blobs_0")},
         {"offsets": [0, 1, 2, 3, 5, 7, 9, 11], "channels": ["blobs_1", "blobs_0"]}),
    ]
    for config_fields, numpy_kwargs in cases:
        config = DataConfig(**{**data.__dict__, **config_fields, "shuffle": False})
        channels = len(numpy_kwargs["channels"])
        model = ModelConfig(**{**MODEL.__dict__, "channels": channels})
        for split in ("train", "val"):
            got = ray_windows(build_ray_datasets(config, model)[split])
            plain = collect(iter_numpy_batches(data.url, split, 4, 4, batch_size=16,
                                               **numpy_kwargs))
            assert got["x"].shape[1:] == (4, channels, 16, 16), config_fields
            # unshuffled, order-preserving: the very same windows in the very same order
            np.testing.assert_array_equal(got["x"], plain["x"])
            np.testing.assert_array_equal(got["y"], plain["y"])


@pytest.mark.ray
@pytest.mark.s3
def test_an_s3_store_yields_the_same_windows_as_its_local_copy(local_ray, s3_bucket, data):
    url = f"s3://{s3_bucket}/small.zarr"
    write_synthetic(url, n_frames=300, channels=2, size=16, chunk_frames=8, seed=1)
    remote = DataConfig(**{**data.__dict__, "url": url, "shuffle": False})
    local = DataConfig(**{**data.__dict__, "shuffle": False})
    for split in ("train", "val"):
        got = ray_windows(build_ray_datasets(remote, MODEL)[split])
        expected = ray_windows(build_ray_datasets(local, MODEL)[split])
        np.testing.assert_array_equal(got["x"], expected["x"])
        np.testing.assert_array_equal(got["y"], expected["y"])
    # resident: read tasks load each split from S3 once, normalised, into the object store
    resident = load_resident(DataConfig(**{**remote.__dict__, "mode": "resident"}), MODEL)
    dataset = open_dataset(data.url)
    for split in ("train", "val"):
        a, b = dataset.split_range(split)
        frames = local_ray.get(resident[split].frames)
        assert resident[split].first == a and frames.shape == (b - a, 2, 16, 16)
        np.testing.assert_array_equal(frames, normalize(dataset.frames[a:b], dataset.stats))


def record_feeds(config: dict) -> None:
    """Train loop of the 2-worker run: the t0 of every window each rank gets from its
    WindowFeed, per mode, epoch and split, into a file."""
    import ray.train

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    data, model, seed = config["data"], config["model"], config["seed"]
    seen = {}
    for mode, plan in config["plans"].items():
        train = WindowFeed(plan, "train", data, model, rank, world, seed)
        val = WindowFeed(plan, "val", data, model, rank, world, seed)

        def t0s(batches) -> list[int]:
            return [int(t) for batch in batches for t in batch["t0"]]

        seen[mode] = {
            "epoch0": t0s(train.train_batches(0, 8, shuffle=True)),
            "epoch0_again": t0s(train.train_batches(0, 8, shuffle=True)),
            "epoch1": t0s(train.train_batches(1, 8, shuffle=True)),
            "val": t0s(val.eval_batches(8)),
            "resident_read_only": None if train.resident is None else
            not train.windows.spans[0][1].flags.writeable,
        }
    with open(f"{config['out']}/rank{rank}.json", "w") as file:
        json.dump(seen, file)


@pytest.mark.ray
@pytest.mark.slow
def test_two_workers_take_disjoint_equal_shares_and_score_every_val_window_once(
        local_ray, data, store, tmp_path):
    """Resident and streaming, in one 2-worker TorchTrainer: each training window at most once
    per epoch across the workers, equal shares, a new order each epoch and the same order for
    the same (seed, epoch); every validation window scored exactly once."""
    import ray.train
    from ray.train.torch import TorchTrainer

    seed = 5
    plans = {mode: plan_data(DataConfig(**{**data.__dict__, "mode": mode}), MODEL)
             for mode in ("resident", "streaming")}
    assert [plan["mode"] for plan in plans.values()] == ["resident", "streaming"]
    TorchTrainer(
        record_feeds, train_loop_config={"seed": seed, "out": str(tmp_path), "plans": plans,
                                         "data": data, "model": MODEL},
        scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        run_config=ray.train.RunConfig(name="feeds", storage_path=str(tmp_path / "runs")),
    ).fit()
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    dataset = open_dataset(store)
    train_t0 = set((window_starts(dataset, "train", 4, 4) + 4).tolist())
    val_t0 = sorted((window_starts(dataset, "val", 4, 4) + 4).tolist())
    share = (len(train_t0) // 2) // 8 * 8  # each rank: its n // 2 windows, in full batches
    for mode in plans:
        seen = [rank[mode] for rank in ranks]
        for epoch in ("epoch0", "epoch1"):
            shares = [rank[epoch] for rank in seen]
            assert [len(s) for s in shares] == [share, share], mode
            both = shares[0] + shares[1]
            assert len(set(both)) == len(both), mode  # no window twice in an epoch
            assert set(both) <= train_t0, mode
        for rank in seen:
            assert rank["epoch0_again"] == rank["epoch0"], mode  # (seed, epoch) fixes the order
            assert rank["epoch1"] != rank["epoch0"], mode
        assert sorted(seen[0]["val"] + seen[1]["val"]) == val_t0, mode  # each scored once
    assert [rank["resident"]["resident_read_only"] for rank in ranks] == [True, True]
    # resident: both ranks' shares of one global permutation cover all but n % 2 windows
    resident = ranks[0]["resident"]["epoch0"] + ranks[1]["resident"]["epoch0"]
    assert len(resident) >= len(train_t0) - 2 * 8


def test_shard_positions_follow_distributed_sampler_semantics():
    n, seed = 103, 9
    for world in (1, 2, 3):
        shares = [shard_positions(n, rank, world, seed=seed, epoch=0) for rank in range(world)]
        assert [len(share) for share in shares] == [n // world] * world
        union = np.concatenate(shares)
        assert len(np.unique(union)) == len(union)  # disjoint
        # the ranks' shares interleave one global permutation drawn from (seed, epoch)
        permutation = np.random.default_rng([seed, 0]).permutation(n)
        np.testing.assert_array_equal(np.stack(shares, 1).ravel(),
                                      permutation[: n - n % world])
    again = shard_positions(n, 1, 2, seed=seed, epoch=4)
    np.testing.assert_array_equal(again, shard_positions(n, 1, 2, seed=seed, epoch=4))
    assert not np.array_equal(again, shard_positions(n, 1, 2, seed=seed, epoch=5))
    np.testing.assert_array_equal(shard_positions(n, 0, 1, seed=seed, epoch=0, shuffle=False),
                                  np.arange(n))


def test_stream_shares_are_equal_disjoint_and_drawn_anew_each_epoch():
    runs = [np.arange(a, a + size) for a, size in ((0, 40), (50, 40), (100, 35), (140, 40))]
    everything = np.concatenate(runs)

    def shares(epoch: int) -> list[np.ndarray]:
        return [np.concatenate(stream_share(runs, rank, 2, seed=1, epoch=epoch, shuffle=True))
                for rank in range(2)]

    for epoch in range(3):
        a, b = shares(epoch)
        assert len(a) == len(b) == len(everything) // 2
        assert not set(a.tolist()) & set(b.tolist()) and set(a.tolist()) | set(b.tolist()) <= set(
            everything.tolist())
    orders = {tuple(shares(epoch)[0][:3]) for epoch in range(6)}
    assert len(orders) > 1  # the run order changes with the epoch


@pytest.mark.parametrize("mode, budget, store_bytes, expected", [
    ("auto", 0, 10_000, ("resident", "within the default budget 4e-06 GB")),
    ("auto", 500, 10_000, ("streaming", "data.mode=auto: the train and val splits take")),
    ("auto", 2_000, 1_500, ("streaming", "object store holds")),
    ("streaming", 0, 10_000, ("streaming", "data.mode=streaming")),
])
def test_auto_mode_picks_resident_when_it_fits_and_says_why(mode, budget, store_bytes,
                                                             expected):
    data = DataConfig(mode=mode, resident_max_bytes=budget)
    chosen, why = choose_data_mode(data, 1_000, store_bytes)
    assert chosen == expected[0] and expected[1] in why


@pytest.mark.parametrize("budget, store_bytes, message", [
    (500, 10_000, "data.mode=resident: the train and val splits take 1e-06 GB as normalised "
                  "float32 frames, over data.resident_max_bytes=5e-07 GB"),
    (0, 2_000, "over the default budget 8e-07 GB (0.4 x the smallest node's object store"),
    (10_000, 1_500, "the smallest node's object store holds 1.5e-06 GB"),
])
def test_forced_resident_that_does_not_fit_is_a_clear_error(budget, store_bytes, message):
    data = DataConfig(mode="resident", resident_max_bytes=budget)
    with pytest.raises(ValueError, match=re.escape(message)):
        choose_data_mode(data, 1_000, store_bytes)
    with pytest.raises(ValueError, match="data.mode='fast': valid modes are auto, resident"):
        choose_data_mode(DataConfig(mode="fast"), 1_000, store_bytes)


def test_batches_carry_the_time_step_of_their_first_target_frame(store):
    dataset = open_dataset(store)
    starts = window_starts(dataset, "val", 4, 4, frame_step=2)
    got = read_windows(dataset, starts[::-1], 4, 4, frame_step=2)
    np.testing.assert_array_equal(got["t0"], starts[::-1] + 8)
    assert got["t0"].dtype == np.int64
    raw = read_windows(dataset, got["t0"], 1, 0)["x"][:, 0]  # the frame at each t0
    np.testing.assert_array_equal(got["y"][:, 0], raw)
    for batch in iter_numpy_batches(store, "train", 4, 4, 16, shuffle=True, seed=2):
        first_targets = read_windows(dataset, batch["t0"], 1, 0)["x"][:, 0]
        np.testing.assert_array_equal(batch["y"][:, 0], first_targets)


@pytest.mark.parametrize("model_fields, data_fields, message", [
    ({"in_frames": 100, "out_frames": 100}, {}, "split 'train'"),
    ({}, {"frame_step": 40}, "no valid window"),
    ({}, {"channels": ("blobs_0", "rain")}, "rain"),
    ({}, {"frame_offsets": (0, 1, 2)}, "offsets"),
])
def test_bad_configs_fail_before_anything_runs(data, model_fields, data_fields, message):
    model = ModelConfig(**{**MODEL.__dict__, **model_fields})
    config = DataConfig(**{**data.__dict__, **data_fields})
    with pytest.raises(ValueError, match=message) as error:
        build_ray_datasets(config, model)
    assert data.url in str(error.value) or "offsets" in message


def test_read_tasks_cover_every_window_once_in_runs_of_chunks_and_a_seeded_order(data, store):
    from simvp_ray.data.ray_data import READ_CHUNKS, ZarrWindowDatasource

    dataset = open_dataset(store)
    starts = window_starts(dataset, "train", 4, 4)

    def groups(seed):
        source = ZarrWindowDatasource(store, "train", data, MODEL, shuffle_seed=seed)
        return [group.tolist() for group in source.groups]

    ordered = groups(None)
    assert len(ordered) >= 3
    assert sorted(s for group in ordered for s in group) == starts.tolist()
    # every task but the last starts windows in READ_CHUNKS chunks, so its halo adds <= 1/8
    for group in ordered[:-1]:
        assert len(np.unique(np.asarray(group) // dataset.chunk_frames)) >= READ_CHUNKS
    orders = [groups(seed) for seed in range(5)]
    assert all(sorted(order) == ordered for order in orders)
    assert groups(3) == orders[3]  # reproducible from the seed
    assert len({str(order) for order in orders}) > 2  # and the seed matters


@pytest.mark.s3
def test_a_missing_bucket_fails_before_anything_runs(s3_endpoint, data):
    config = DataConfig(**{**data.__dict__, "url": "s3://no-such-bucket/x.zarr"})
    with pytest.raises(ValueError, match="bucket 'no-such-bucket' does not exist"):
        build_ray_datasets(config, MODEL)
