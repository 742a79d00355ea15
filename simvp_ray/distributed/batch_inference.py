"""Shared pieces of evaluation, prediction and pictures: fetch a checkpoint from a URL, check it
fits a store, and the map_batches options that place model actors on CPUs or GPUs.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.fs
import ray.data
import torch

from simvp_ray.config import RunConfig, override
from simvp_ray.data import open_dataset
from simvp_ray.data.store import Dataset
from simvp_ray.distributed.trainer import RESULT_FILE, storage_filesystem
from simvp_ray.train.checkpoint import (
    CHECKPOINT_FILE,
    CheckpointPayload,
    FetchedCheckpoint,
    ModelState,
    load_checkpoint,
)
from simvp_ray.train.inference import model_from_checkpoint

READ_BYTES = 8 << 20


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(READ_BYTES):
            digest.update(block)
    return digest.hexdigest()


def resolve_run(url: str) -> str:
    """A training run folder (holding result.json) stands for its best checkpoint."""
    fs, path = storage_filesystem(url)
    result = f"{path.rstrip('/')}/{RESULT_FILE}"
    if (fs.get_file_info(f"{path.rstrip('/')}/{CHECKPOINT_FILE}").type
            == pyarrow.fs.FileType.NotFound
            and fs.get_file_info(result).type == pyarrow.fs.FileType.File):
        with fs.open_input_stream(result) as stream:
            return json.loads(stream.read())["best_checkpoint"]
    return url


def fetch_checkpoint(url: str) -> FetchedCheckpoint:
    """`load_checkpoint` of a checkpoint folder (or its checkpoint.pt, or a run folder: its best
    checkpoint) at a local path or a pyarrow-readable URL (s3://, gs://), with the `sha256` of
    checkpoint.pt and the checkpoint's `url`."""
    try:
        url = resolve_run(str(url))
    except OSError as error:  # e.g. a missing bucket or no credentials
        raise ValueError(f"cannot read {url}: {error}") from error
    fs, path = storage_filesystem(url)
    if fs.get_file_info(path).type == pyarrow.fs.FileType.Directory:
        path = f"{path.rstrip('/')}/{CHECKPOINT_FILE}"
    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        payload, sha256 = load_checkpoint(path), _sha256(Path(path))
    else:
        if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
            raise ValueError(f"no checkpoint at {url} (expected a checkpoint folder holding "
                             f"{CHECKPOINT_FILE}, or that file)")
        with tempfile.TemporaryDirectory(prefix="simvp_fetch_") as tmp:
            local = Path(tmp) / CHECKPOINT_FILE
            with fs.open_input_stream(path) as source, open(local, "wb") as target:
                while block := source.read(READ_BYTES):
                    target.write(block)
            payload, sha256 = load_checkpoint(local), _sha256(local)
    return FetchedCheckpoint(payload, url, sha256)


def config_for_data(fetched: FetchedCheckpoint, data_url: str | None) -> RunConfig:
    """The checkpoint's config, reading `data_url` instead of its own store when given."""
    config = fetched.payload.config
    if data_url:
        config = override(config, {"data.url": data_url})
    if not config.data.url:
        raise ValueError(f"checkpoint {fetched.url} names no data store (it trained on the "
                         "embedded synthetic data): pass --data <store URL>")
    return config


def check_data_fits(config: RunConfig, dataset: Dataset) -> list[str]:
    """The channel names the model reads from `dataset`; ValueError when channels or grid do
    not match what the checkpoint's model expects."""
    names = list(config.data.channels) or dataset.channels
    unknown = [name for name in names if name not in dataset.channels]
    if unknown:
        raise ValueError(f"the checkpoint reads channels {unknown} that the store {dataset.url} "
                         f"lacks; valid: {dataset.channels}")
    model = config.model
    found = (len(names), *dataset.frames.shape[2:])
    if found != (model.channels, model.height, model.width):
        raise ValueError(
            f"the checkpoint's model expects frames of {model.channels} channels x "
            f"{model.height} x {model.width}, the store {dataset.url} holds {found[0]} channels "
            f"({', '.join(names)}) x {found[1]} x {found[2]}: use the store it was trained on")
    return names


def open_checked(fetched: FetchedCheckpoint, data_url: str | None
                 ) -> tuple[RunConfig, Dataset, list[str]]:
    """(config reading the store, the opened store, channel names), checked against each other."""
    config = config_for_data(fetched, data_url)
    dataset = open_dataset(config.data.url)
    return config, dataset, check_data_fits(config, dataset)


def model_state(payload: CheckpointPayload) -> ModelState:
    """What a model actor needs from a checkpoint (no optimiser state): small to ship."""
    return ModelState(payload.config, payload.model)


def actor_device(use_gpu: bool) -> torch.device:
    return torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")


def load_model(state: ModelState, use_gpu: bool) -> torch.nn.Module:
    return model_from_checkpoint(state, actor_device(use_gpu))


def actor_options(num_actors: int, use_gpu: bool) -> dict[str, Any]:
    """map_batches keyword arguments for a fixed pool of model actors."""
    if num_actors < 1:
        raise ValueError(f"num_actors={num_actors}: must be >= 1")
    return {"compute": ray.data.ActorPoolStrategy(size=num_actors),
            **({"num_gpus": 1} if use_gpu else {"num_cpus": 1})}
