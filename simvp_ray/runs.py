"""Runs and experiments on storage (a local folder or an s3:// URL), without Ray or torch.

A run is one training run: `<storage>/<name>/` holds Ray Train's checkpoint folders and our
`result.json` (a `RunSummary`). An experiment is a Tune sweep: `<storage>/<name>/` holds Tune's
state, `simvp_experiment.json` (an `ExperimentManifest`) and one run per trial under `runs/`.
Files go through fsspec, the library the data layer and the analysis already read with.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from simvp_ray.records import record_from_dict, record_to_dict

RESULT_FILE = "result.json"  # a run's RunSummary
MANIFEST_FILE = "simvp_experiment.json"  # an experiment's ExperimentManifest
RUNS_FOLDER = "runs"  # <experiment>/runs/<trial>: the Train run (checkpoints) + result.json
CHECKPOINT_FOLDER_PREFIX = "checkpoint_"  # Ray Train's checkpoint folders inside a run
READ_BYTES = 8 << 20


# ---------------------------------------------------------------------------------------
# Storage: URLs and filesystems


def storage_filesystem(storage: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, root path on it) of a local folder or a URL (s3://, gs://, file://)."""
    if "://" in storage:
        # no listing cache: Ray's workers write into the same folders behind our back
        fs, root = fsspec.core.url_to_fs(storage, use_listings_cache=False)
        return fs, root.rstrip("/")
    return LocalFileSystem(), str(Path(storage).resolve())


def storage_root(storage: str) -> str:
    """An absolute local folder or a URL, as Ray Train's and Tune's storage_path take it."""
    return storage.rstrip("/") if "://" in storage else str(Path(storage).resolve())


def storage_url(storage: str, path: str) -> str:
    """A path on `storage`'s filesystem (as Ray reports it: no scheme) as a URL."""
    scheme = storage.split("://", 1)[0] + "://" if "://" in storage else ""
    return scheme + path


def run_exists(storage: str, name: str) -> bool:
    fs, root = storage_filesystem(storage)
    return fs.exists(f"{root}/{name}")


def check_resume(what: str, name: str, storage: str, exists: bool, resume: bool,
                 missing: str = "") -> None:
    """The one guard of runs and experiments: never overwrite one, never resume a missing one.
    `what` is "run" or "experiment"; `missing` says what was looked for."""
    if exists and not resume:
        raise ValueError(f"{what} {name!r} already exists under {storage}: pass --resume to "
                         "continue it, or choose another --name (nothing was overwritten)")
    if resume and not exists:
        raise ValueError(f"cannot resume: no {what} {name!r} under {storage}{missing}")


def check_storage_writable(storage: str) -> None:
    """Fail before any work when the run could not save its checkpoints."""
    try:
        fs, root = storage_filesystem(storage)
        fs.makedirs(root, exist_ok=True)
        probe = f"{root}/.simvp_write_probe_{uuid.uuid4().hex}"
        with fs.open(probe, "wb") as stream:
            stream.write(b"ok")
        fs.rm(probe)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot write to storage {storage!r}: {error}") from error


def checkpoint_folders(storage: str, name: str) -> list[str]:
    """The URLs (local paths for a local storage) of the run's checkpoint folders, oldest
    first."""
    fs, root = storage_filesystem(storage)
    if not fs.isdir(f"{root}/{name}"):
        return []
    paths = sorted(info["name"].rstrip("/") for info in fs.ls(f"{root}/{name}", detail=True)
                   if info["type"] == "directory")
    return [storage_url(storage, path) for path in paths
            if path.rsplit("/", 1)[-1].startswith(CHECKPOINT_FOLDER_PREFIX)]


def read_json(url: str) -> Any | None:
    """The JSON file at a local path or URL; None when there is no file."""
    fs, path = storage_filesystem(url)
    if not fs.isfile(path):
        return None
    with fs.open(path, "rb") as stream:
        return json.loads(stream.read())


def write_json(url: str, data: Any) -> None:
    """`data` as indented JSON at a local path or URL, its folder made when missing."""
    fs, path = storage_filesystem(url)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as stream:
        stream.write(json.dumps(data, indent=2).encode())


def upload_folder(local: str | Path, storage: str, name: str) -> None:
    """Every file under the local folder into `<storage>/<name>/`, keeping relative paths."""
    fs, root = storage_filesystem(storage)
    for path in sorted(Path(local).rglob("*")):
        if path.is_file():
            target = f"{root}/{name}/{path.relative_to(local).as_posix()}"
            fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            fs.put_file(str(path), target)


# ---------------------------------------------------------------------------------------
# Typed records with exact dict round trips


@dataclass(frozen=True)
class TrialSpec:
    """One planned trial of an experiment (in the manifest) or the trial a run was (in its
    summary): its name, the table row it belongs to, and its config changes."""

    name: str  # deterministic Tune trial name, Train run name and folder name
    group: str  # the table row: a translator, an epoch budget ("x3"), or the trial itself
    seed: int
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted keys on the base config

    def to_dict(self) -> dict[str, Any]:
        return record_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "trial") -> TrialSpec:
        return record_from_dict(cls, data, source)


@dataclass(frozen=True)
class EpochMetrics:
    """The headline validation metrics of one epoch: the model's and persistence's."""

    epoch: int
    model: dict[str, float]  # "mse", "mae", ... (the val/ keys without their prefix)
    persistence: dict[str, float]


@dataclass(frozen=True)
class RunSummary:
    """`result.json` of a run: what `jobs/train.py` prints and the experiment analysis reads."""

    RECORDS = {"final": EpochMetrics, "best": EpochMetrics, "trial": TrialSpec}

    name: str
    run_url: str  # the run folder (checkpoints, result.json)
    epochs_run: int
    wall_time_s: float
    train_samples_per_s: float
    final: EpochMetrics
    best: EpochMetrics
    best_checkpoint: str  # URL of the checkpoint folder with the lowest val/mse
    latest_checkpoint: str
    history: list[dict[str, float]]  # every epoch's reported metrics
    attempts: list[dict[str, Any]]  # each (re)start of the run and the epochs it ran
    config: dict[str, Any]  # the RunConfig as to_dict wrote it
    stopped: dict[str, Any] | None = None  # reason, last_good_epoch: a non-finite loss
    artifacts: dict[str, str] | None = None  # tensorboard, panel URLs
    cost: dict[str, Any] | None = None  # a Tune trial's model cost (models.profile's keys)
    trial: TrialSpec | None = None  # a Tune trial: the trial it was (group: its table row)

    def to_dict(self) -> dict[str, Any]:
        return record_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = RESULT_FILE) -> RunSummary:
        return record_from_dict(cls, data, source)

    def cost_value(self, key: str, source: str = RESULT_FILE) -> Any:
        """One entry of the model cost; a ValueError when the run recorded none / not this one."""
        if self.cost is None or key not in self.cost:
            raise ValueError(f"{source}: missing field 'cost.{key}' (a Tune trial's "
                             "result.json records its model cost)")
        return self.cost[key]


@dataclass(frozen=True)
class ExperimentManifest:
    """`simvp_experiment.json`: the experiment as planned, so a resume or an analysis needs
    nothing else."""

    RECORDS = {"trials": TrialSpec}

    kind: str  # "variants", "epoch-scaling", "search"
    metric: str  # what Tune ranks trials by
    base: dict[str, Any]  # the RunConfig every trial starts from (to_dict)
    trials: list[TrialSpec]  # empty for a search: Tune draws them from `space`
    space: dict[str, str]  # search: dotted key -> "dist:args"
    num_samples: int
    runs: str  # the folder of the trials' runs, relative to the experiment

    def to_dict(self) -> dict[str, Any]:
        return record_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = MANIFEST_FILE
                  ) -> ExperimentManifest:
        return record_from_dict(cls, data, source)


def write_result(storage: str, name: str, summary: RunSummary) -> str:
    """`<storage>/<name>/result.json`; returns its URL (its path for a local folder)."""
    url = f"{storage_root(storage)}/{name}/{RESULT_FILE}"
    write_json(url, summary.to_dict())
    return url


def read_result(storage: str, name: str) -> RunSummary | None:
    """The run's summary, None while it has none (unfinished); strict about its fields."""
    url = f"{storage_root(storage)}/{name}/{RESULT_FILE}"
    data = read_json(url)
    return None if data is None else RunSummary.from_dict(data, url)


def write_manifest(url: str, manifest: ExperimentManifest) -> None:
    write_json(f"{url.rstrip('/')}/{MANIFEST_FILE}", manifest.to_dict())


def experiment_exists(url: str) -> bool:
    """An experiment folder is ours once its manifest is written (before Tune starts)."""
    fs, root = storage_filesystem(url)
    return fs.isfile(f"{root}/{MANIFEST_FILE}")


def read_manifest(url: str) -> ExperimentManifest | None:
    """The experiment's manifest, None when the folder has none; strict about its fields."""
    path = f"{url.rstrip('/')}/{MANIFEST_FILE}"
    data = read_json(path)
    return None if data is None else ExperimentManifest.from_dict(data, path)


def with_end_epochs(attempts: list[dict[str, Any]], epochs_done: int) -> list[dict[str, Any]]:
    """Each attempt record with the epoch it ended at: [start_epoch, end_epoch)."""
    ends = [a["start_epoch"] for a in attempts[1:]] + [epochs_done]
    return [{**attempt, "end_epoch": end} for attempt, end in zip(attempts, ends, strict=True)]


# ---------------------------------------------------------------------------------------
# Checkpoints by URL (evaluation, prediction, pictures)


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(READ_BYTES):
            digest.update(block)
    return digest.hexdigest()


def resolve_run(url: str, checkpoint_file: str) -> str:
    """A training run folder (holding result.json) stands for its best checkpoint."""
    fs, path = storage_filesystem(url)
    if fs.exists(f"{path.rstrip('/')}/{checkpoint_file}"):
        return url
    summary = read_json(f"{url.rstrip('/')}/{RESULT_FILE}")
    return url if summary is None else summary["best_checkpoint"]


@contextmanager
def fetched_checkpoint(url: str, checkpoint_file: str) -> Iterator[tuple[Path, str]]:
    """(a local copy of the checkpoint file, the checkpoint's URL) of a checkpoint folder, its
    `checkpoint_file`, or a run folder (its best checkpoint), at a local path or a URL. A remote
    file is downloaded to a temporary folder that lives as long as the context."""
    try:
        url = resolve_run(str(url), checkpoint_file)
    except OSError as error:  # e.g. a missing bucket or no credentials
        raise ValueError(f"cannot read {url}: {error}") from error
    fs, path = storage_filesystem(url)
    if fs.isdir(path):
        path = f"{path.rstrip('/')}/{checkpoint_file}"
    if isinstance(fs, LocalFileSystem):
        yield Path(path), url  # a missing local file: the loader's own error names it
        return
    if not fs.isfile(path):
        raise ValueError(f"no checkpoint at {url} (expected a checkpoint folder holding "
                         f"{checkpoint_file}, or that file)")
    with tempfile.TemporaryDirectory(prefix="simvp_fetch_") as tmp:
        local = Path(tmp) / checkpoint_file
        with fs.open(path, "rb") as source, open(local, "wb") as target:
            while block := source.read(READ_BYTES):
                target.write(block)
        yield local, url
