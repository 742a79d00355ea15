"""Self-describing checkpoint folders: `checkpoint.pt` (weights_only-loadable) + `config.json`.

`checkpoint.pt` holds a `CheckpointPayload`: the model (OpenSTL key names), optimiser,
scheduler, epoch, global step, RNG states, every epoch's metrics and the run config as JSON, so a
checkpoint alone rebuilds its model and its run's curves.
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from simvp_ray.config import RunConfig, from_dict, to_dict
from simvp_ray.records import check_fields
from simvp_ray.runs import fetched_checkpoint, sha256

FORMAT = "simvp_ray-checkpoint/1"
CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_FILE = "config.json"
HISTORY_FILE = "history.json"  # per-epoch metrics up to this checkpoint, for tools
# the run's record, beside the weights (so a resume carries it on): every attempt so far
# (start epoch, world size, why it started) and the fingerprint of the store it trained on
ATTEMPTS_FILE = "attempts.json"
STORE_FILE = "store.json"


# eq=False: the fields hold tensors, which have no truth value to compare with
@dataclass(frozen=True, eq=False)
class CheckpointPayload:
    """What `checkpoint.pt` holds, typed. `to_dict` is exactly what `torch.save` writes (the
    config as JSON text, beside FORMAT); `from_dict` reads it back, naming a missing field."""

    # in the order the file has always held them
    model: dict[str, torch.Tensor]  # OpenSTL key names
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    epoch: int  # the last finished epoch (0-based)
    global_step: int
    rng: dict[str, Any]  # `rng_state()`
    config: RunConfig  # written as JSON text
    history: list[dict[str, float]]  # every epoch's metrics up to this one
    # the training method's sampler state (simvp_ray.train.methods); format-1 checkpoints
    # written before training methods existed lack it, and their method starts fresh
    method: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = {"format": FORMAT}
        for name in _FIELDS:
            data[name] = getattr(self, name)
        data["config"] = json.dumps(to_dict(self.config))
        return data

    @classmethod
    def from_dict(cls, data: Any, source: str | Path = "checkpoint") -> CheckpointPayload:
        """Inverse of `to_dict`; ValueError naming `source` for a foreign, incomplete or
        newer payload."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"{source} is not a simvp_ray checkpoint (format {found!r}, "
                             f"expected {FORMAT!r})")
        values = {name: value for name, value in data.items() if name != "format"}
        check_fields(cls, values, str(source))  # `method` may be missing: it has a default
        try:
            values["config"] = from_dict(RunConfig, json.loads(data["config"]))
        except ValueError as error:  # JSON errors are ValueErrors too
            raise ValueError(f"{source}: its config does not parse: {error}") from error
        return cls(**values)


_FIELDS = tuple(f.name for f in dataclasses.fields(CheckpointPayload))


@dataclass(frozen=True, eq=False)
class ModelState:
    """What rebuilds a trained model (config and weights, no optimiser state): small to ship
    to model actors."""

    config: RunConfig
    model: dict[str, torch.Tensor]


@dataclass(frozen=True, eq=False)
class FetchedCheckpoint:
    """A checkpoint read from storage, with where it lies (the checkpoint folder's URL) and
    the sha256 of its checkpoint.pt, which evaluations and forecasts record."""

    payload: CheckpointPayload
    url: str
    sha256: str


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list | tuple) else value


def save_checkpoint(folder: str | Path, *, model_state: dict[str, torch.Tensor],
                    optimizer: torch.optim.Optimizer, scheduler: Any, epoch: int,
                    global_step: int, config: RunConfig,
                    history: list[dict[str, float]],
                    method_state: dict[str, Any] | None = None) -> Path:
    """Write the checkpoint folder; returns it. `method_state`: the training method's sampler
    state (simvp_ray.train.methods), so a resumed run draws the masks an uninterrupted one does."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    payload = CheckpointPayload(
        config=config, model=model_state, optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(), epoch=epoch, global_step=global_step, rng=rng_state(),
        history=[{k: float(v) for k, v in row.items()} for row in history],  # every epoch
        method=dict(method_state or {}))
    # write then rename, so a crash never leaves a truncated checkpoint under the real name
    partial = folder / (CHECKPOINT_FILE + ".partial")
    torch.save(payload.to_dict(), partial)
    partial.replace(folder / CHECKPOINT_FILE)
    (folder / CONFIG_FILE).write_text(json.dumps(to_dict(config), indent=2))
    (folder / HISTORY_FILE).write_text(json.dumps(payload.history))
    return folder


def save_run_record(folder: str | Path, attempts: list[dict[str, Any]],
                    store: dict[str, Any] | None) -> None:
    folder = Path(folder)
    (folder / ATTEMPTS_FILE).write_text(json.dumps(attempts, indent=2))
    if store is not None:
        (folder / STORE_FILE).write_text(json.dumps(store, indent=2))


def load_run_record(folder: str | Path) -> dict[str, Any]:
    """{"attempts": [...], "store": {...} or None} of a checkpoint folder (empty when the
    checkpoint predates these files)."""
    folder = Path(folder)
    attempts, store = folder / ATTEMPTS_FILE, folder / STORE_FILE
    return {"attempts": json.loads(attempts.read_text()) if attempts.exists() else [],
            "store": json.loads(store.read_text()) if store.exists() else None}


def load_checkpoint(folder: str | Path, map_location: str | torch.device = "cpu"
                    ) -> CheckpointPayload:
    """The payload of a checkpoint folder (or its checkpoint.pt); ValueError if bad."""
    path = Path(folder)
    path = path / CHECKPOINT_FILE if path.is_dir() else path
    if not path.exists():
        raise ValueError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for truncated / foreign files
        raise ValueError(f"{path} is not a readable checkpoint (truncated or not a torch "
                         f"file?): {error}") from error
    return CheckpointPayload.from_dict(payload, source=path)


def fetch_checkpoint(url: str) -> FetchedCheckpoint:
    """`load_checkpoint` of a checkpoint folder (or its checkpoint.pt, or a run folder: its best
    checkpoint) at a local path or a URL (s3://, gs://), with the checkpoint's URL and the
    sha256 of its checkpoint.pt."""
    with fetched_checkpoint(url, CHECKPOINT_FILE) as (path, url):
        return FetchedCheckpoint(load_checkpoint(path), url, sha256(path))
