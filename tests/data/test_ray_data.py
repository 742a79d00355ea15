"""Ray Data windows (simvp_ray.data.ray_data) against the plain numpy iterator, on a local Ray.

One Ray instance serves the module (started after the moto server, so S3 reaches the workers);
a 2-worker TorchTrainer checks Train's shards and the rank-strided validation stream.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import numpy as np
import pytest

from simvp_ray.config import DataConfig, ModelConfig
from simvp_ray.data import (
    denormalize,
    iter_numpy_batches,
    open_dataset,
    read_windows,
    window_starts,
    write_synthetic,
)
from simvp_ray.data.ray_data import build_ray_datasets, count_split_windows, iter_rank_batches

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


def record_shards(config: dict) -> None:
    """Train loop of the 2-worker run: writes the window keys each rank saw to a file."""
    import ray.train

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    train = ray.train.get_dataset_shard("train")
    val = ray.train.get_dataset_shard("val")

    def train_keys(epoch: int) -> list[str]:
        keys = []
        for batch in train.iter_batches(batch_size=8, batch_format="numpy",
                                        local_shuffle_buffer_size=32,
                                        local_shuffle_seed=config["seed"] + epoch):
            keys += window_keys(batch)
        return keys

    seen = {"epoch0": train_keys(0), "epoch0_again": train_keys(0), "epoch1": train_keys(1),
            "val": [key for batch in iter_rank_batches(
                val.iter_batches(batch_size=8, batch_format="numpy"), rank, world)
                for key in window_keys(batch)]}
    with open(f"{config['out']}/rank{rank}.json", "w") as file:
        json.dump(seen, file)


@pytest.mark.ray
@pytest.mark.slow
def test_two_workers_get_disjoint_train_shards_and_every_val_window_once(
        local_ray, data, tmp_path):
    import ray.train
    from ray.data import ExecutionOptions
    from ray.train.torch import TorchTrainer

    seed = 5
    datasets = build_ray_datasets(data, MODEL, seed=seed)
    TorchTrainer(
        record_shards, train_loop_config={"seed": seed, "out": str(tmp_path)},
        scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        datasets={"train": datasets["train"], "val": datasets["val"]},
        # as simvp_ray/distributed/trainer.py configures it
        dataset_config=ray.train.DataConfig(
            datasets_to_split=["train"], execution_options=ExecutionOptions(preserve_order=True)),
        run_config=ray.train.RunConfig(name="shards", storage_path=str(tmp_path / "runs")),
    ).fit()
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    all_train = Counter(window_keys(collect(iter_numpy_batches(data.url, "train", 4, 4, 64))))
    num_train = count_split_windows(data, MODEL, "train")
    assert sum(all_train.values()) == num_train
    for epoch in ("epoch0", "epoch1"):
        shards = [Counter(rank[epoch]) for rank in ranks]
        assert [sum(s.values()) for s in shards] == [num_train // 2] * 2
        assert not set(shards[0]) & set(shards[1])  # disjoint
        assert max((shards[0] + shards[1]).values()) == 1  # no window twice in an epoch
        assert not (shards[0] + shards[1]) - all_train  # only real training windows
    # the same seed and epoch give the same order; the next epoch another one
    for rank in ranks:
        assert rank["epoch0_again"] == rank["epoch0"]
        assert rank["epoch1"] != rank["epoch0"]

    all_val = Counter(window_keys(collect(iter_numpy_batches(data.url, "val", 4, 4, 64))))
    assert Counter(ranks[0]["val"]) + Counter(ranks[1]["val"]) == all_val
    assert ranks[0]["val"] and ranks[1]["val"]  # both ranks evaluated a share


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
