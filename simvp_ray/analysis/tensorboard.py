"""TensorBoard event files from a run's per-epoch metrics history."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from tensorboardX import SummaryWriter


def write_tensorboard(history: Iterable[Mapping[str, float]], folder: str | Path) -> Path:
    """One scalar series per metric key (`val/mse`, `train/loss`, ...), step = epoch."""
    folder = Path(folder)
    with SummaryWriter(logdir=str(folder)) as writer:
        for row in history:
            epoch = int(row["epoch"])
            for key, value in row.items():
                if key != "epoch":
                    writer.add_scalar(key, float(value), global_step=epoch)
    return folder
