"""The driver-side checks of a run, before Ray starts (no Ray here).

`check_plan(config)` builds the model on the meta device, the optimiser, schedule and loss,
and checks the window against every split of the store and the global batch against every
world size the run may have; any problem is one ValueError naming the bad value and the
valid ones, in seconds, instead of a traceback from inside the Ray workers minutes later.
`check_frames` is the one check of a store against a model's frames (training, and a checkpoint
fetched for evaluation, prediction or pictures); `check_resume_config` guards a resume.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch

from simvp_ray.config import RunConfig, flatten, from_dict, override
from simvp_ray.data import open_dataset
from simvp_ray.data.schema import DatasetError
from simvp_ray.data.store import Dataset
from simvp_ray.data.windows import window_offsets, window_starts
from simvp_ray.models import build_model
from simvp_ray.runs import checkpoint_folders, read_json
from simvp_ray.train.checkpoint import CONFIG_FILE, STORE_FILE, FetchedCheckpoint
from simvp_ray.train.losses import build_loss
from simvp_ray.train.methods import check_method
from simvp_ray.train.optim import build_optimizer, build_scheduler
from simvp_ray.train.performance import PRECISIONS

REQUIRED_SPLITS = ("train", "val")
# integer knobs and their smallest valid value
LOWER_BOUNDS = {
    "train.epochs": 1, "train.checkpoint_every": 1, "train.keep_checkpoints": 1,
    "train.max_steps_per_epoch": 0, "data.batch_size": 1, "data.val_batch_size": 1,
    "data.windows_per_read": 1, "data.frame_step": 1, "data.window_stride": 1,
    "data.shuffle_buffer_bytes": 0, "data.resident_max_bytes": 0, "scaling.num_workers": 1,
    "scaling.min_workers": 0,
    "scaling.max_failures": -1, "optim.warmup_epochs": 0, "train.log_every_s": 0,
}


@dataclass(frozen=True)
class Plan:
    """What the check found: windows per split and the world sizes the run may have."""

    windows: dict[str, int]  # split -> valid windows
    world_sizes: tuple[int, ...]
    fingerprint: dict[str, Any]


def world_sizes(config: RunConfig) -> tuple[int, ...]:
    """Every world size of the run: num_workers, or min..max for an elastic run."""
    scaling = config.scaling
    low = scaling.min_workers if 0 < scaling.min_workers < scaling.num_workers \
        else scaling.num_workers
    return tuple(range(low, scaling.num_workers + 1))


def per_worker_batch_size(global_batch: int, world_size: int) -> int:
    """The global batch stays fixed when the world size changes (elastic), so the learning
    rate does too; each worker takes an equal share, so it must divide evenly."""
    if global_batch < 1:
        raise ValueError(f"data.batch_size={global_batch}: must be >= 1")
    if global_batch % world_size:
        raise ValueError(f"data.batch_size={global_batch} does not divide over {world_size} "
                         f"workers ({global_batch} / {world_size} is not a whole number): "
                         "choose a multiple of every world size the run may have")
    return global_batch // world_size


def store_fingerprint(dataset: Dataset) -> dict[str, Any]:
    """What a checkpoint must be resumed on: the store's URL, schema and training statistics
    (a store rebuilt with other statistics would silently change what the model sees)."""
    return {"url": dataset.url, "schema_version": dataset.attrs.get("schema_version"),
            "normalization": dataset.stats.to_attrs(), "n_steps": dataset.n_steps,
            "channels": dataset.channels}


# The frames mismatch said from the side of who brings the model: a run's config (set the model
# to match) or a trained checkpoint (use the store it was trained on).
FRAME_MISMATCH = {
    "run": "the store {url} holds frames of {found[0]} channels x {found[1]} x {found[2]} but "
           "the model expects {expected[0]} x {expected[1]} x {expected[2]}: set "
           "model.channels / model.height / model.width (or data.channels) to match",
    "checkpoint": "the checkpoint's model expects frames of {expected[0]} channels x "
                  "{expected[1]} x {expected[2]}, the store {url} holds {found[0]} channels "
                  "({names}) x {found[1]} x {found[2]}: use the store it was trained on",
}


def check_frames(config: RunConfig, dataset: Dataset, origin: str = "run") -> list[str]:
    """The channel names the model reads from `dataset`; a ValueError when a channel is
    missing or the (channels, height, width) of its frames differ from the model's. `origin`:
    "run" (a config about to train) or "checkpoint" (a trained model)."""
    dataset.select(config.data.channels)  # every named channel is in the store
    names = list(config.data.channels) or dataset.channels
    model = config.model
    found = (len(names), *dataset.frames.shape[2:])
    expected = (model.channels, model.height, model.width)
    if found != expected:
        raise ValueError(FRAME_MISMATCH[origin].format(
            url=dataset.url, found=found, expected=expected, names=", ".join(names)))
    return names


def config_for_data(fetched: FetchedCheckpoint, data_url: str | None) -> RunConfig:
    """The checkpoint's config, reading `data_url` instead of its own store when given."""
    config = fetched.payload.config
    if data_url:
        config = override(config, {"data.url": data_url})
    if not config.data.url:
        raise ValueError(f"checkpoint {fetched.url} names no data store (it trained on the "
                         "embedded synthetic data): pass --data <store URL>")
    return config


def open_checked(fetched: FetchedCheckpoint, data_url: str | None
                 ) -> tuple[RunConfig, Dataset, list[str]]:
    """(config reading the store, the opened store, channel names), checked against each other."""
    config = config_for_data(fetched, data_url)
    dataset = open_dataset(config.data.url)
    return config, dataset, check_frames(config, dataset, "checkpoint")


def check_resume_config(storage: str, name: str, config: RunConfig,
                        fingerprint: dict[str, Any] | None = None) -> None:
    """A run resumes only with the model it was started with, on the store it trained on."""
    folders = checkpoint_folders(storage, name)
    if not folders:
        return  # stopped before its first checkpoint: Ray starts it from scratch
    saved = read_json(f"{folders[-1]}/{CONFIG_FILE}")
    if saved is None:
        raise ValueError(f"cannot resume {name!r}: its latest checkpoint {folders[-1]} has no "
                         f"{CONFIG_FILE}")
    saved = from_dict(RunConfig, saved)
    if saved.model != config.model:
        raise ValueError(f"cannot resume {name!r}: its checkpoints hold a different model "
                         f"({saved.model}) than this run's ({config.model})")
    trained_on = read_json(f"{folders[-1]}/{STORE_FILE}")
    if fingerprint is None or trained_on is None:
        return
    now = json.loads(json.dumps(fingerprint))  # the same JSON types as the stored one
    changed = [key for key in sorted(set(trained_on) | set(now))
               if trained_on.get(key) != now.get(key)]
    if changed:
        stored = ", ".join(f"{key}={trained_on.get(key)}" for key in changed)
        raise ValueError(
            f"cannot resume {name!r}: its checkpoints were trained on the store "
            f"{trained_on.get('url')} and data.url {now.get('url')} differs in "
            f"{', '.join(changed)} (stored {stored}): resume on the same store, or start a new "
            "run under another --name")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def check_numbers(config: RunConfig) -> None:
    """Ranges of the plain numbers, each named with its valid range."""
    flat = flatten(config)
    for key, low in LOWER_BOUNDS.items():
        _require(flat[key] >= low, f"{key}={flat[key]}: must be >= {low}")
    train, optim, scaling = config.train, config.optim, config.scaling
    _require(scaling.min_workers <= scaling.num_workers,
             f"scaling.min_workers={scaling.min_workers} exceeds scaling.num_workers="
             f"{scaling.num_workers} (--num-workers MIN-MAX needs MIN <= MAX)")
    _require(scaling.cpus_per_worker > 0,
             f"scaling.cpus_per_worker={scaling.cpus_per_worker:g}: must be > 0")
    _require(optim.lr > 0, f"optim.lr={optim.lr:g}: must be > 0")
    _require(optim.weight_decay >= 0, f"optim.weight_decay={optim.weight_decay:g}: must be >= 0")
    _require(optim.grad_clip >= 0, f"optim.grad_clip={optim.grad_clip:g}: must be >= 0")
    _require(train.precision in PRECISIONS,
             f"train.precision={train.precision!r}; valid: {', '.join(PRECISIONS)}")


def check_plan(config: RunConfig, dataset: Dataset | None = None) -> Plan:
    """Raise one ValueError for anything that would fail inside the workers; `config` has its
    data.url resolved (the store is opened for its metadata only)."""
    check_numbers(config)
    # the model on the meta device: every shape and name checked, no memory, no init time
    with torch.device("meta"):
        model = build_model(config.model)
    build_loss(config.train.loss, config.train.tau_alpha)
    dataset = dataset or open_dataset(config.data.url)
    dataset.select(config.data.channels)  # every named channel is in the store
    offsets = list(config.data.frame_offsets) or None
    steps = window_offsets(config.model.in_frames, config.model.out_frames,
                           config.data.frame_step, offsets)
    windows = {}
    for split in dataset.splits:
        windows[split] = len(window_starts(dataset, split, config.model.in_frames,
                                           config.model.out_frames, config.data.frame_step,
                                           config.data.window_stride, offsets))
    for split in REQUIRED_SPLITS:
        if split not in windows:
            raise DatasetError(f"{dataset.url}: no {split} split; it has {sorted(windows)}")
    for split, count in windows.items():
        if count == 0:
            a, b = dataset.split_range(split)
            raise DatasetError(
                f"{dataset.url}: split {split!r} (steps [{a}, {b})) has no valid window of "
                f"{len(steps)} frames spanning {int(steps[-1]) + 1} steps (model.in_frames="
                f"{config.model.in_frames}, model.out_frames={config.model.out_frames}, "
                f"data.frame_step={config.data.frame_step})")
    sizes = world_sizes(config)
    steps_per_epoch = []
    for world in sizes:
        try:
            batch = per_worker_batch_size(config.data.batch_size, world)
        except ValueError as error:
            span = f"{sizes[0]}-{sizes[-1]} workers (elastic)" if len(sizes) > 1 \
                else f"{world} worker(s)"
            raise ValueError(f"{error}; this run may have {span}") from None
        # streaming_split(equal=True) gives each worker num_train // world windows
        steps = (windows["train"] // world) // batch
        if steps < 1:
            raise ValueError(
                f"the train split of {dataset.url} has {windows['train']} windows, fewer than "
                f"one global batch (data.batch_size={config.data.batch_size}) on {world} "
                "worker(s): lower data.batch_size or use a larger store")
        if config.train.max_steps_per_epoch:
            steps = min(steps, config.train.max_steps_per_epoch)
        steps_per_epoch.append(steps)
    # the method's batch constraints (MIM's carried state) need the windows and world sizes
    check_method(config.model, config.data, world_sizes=sizes, val_windows=windows["val"])
    optimizer = build_optimizer(model, config.optim)
    for steps in steps_per_epoch:
        build_scheduler(optimizer, config.optim, config.train.epochs, steps)
    return Plan(windows, sizes, store_fingerprint(dataset))
