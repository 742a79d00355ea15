"""The progress helper of long jobs: lines in a log, a bar on a terminal; a conversion shows it."""

from __future__ import annotations

import io
import re

from simvp_ray.data import write_synthetic
from simvp_ray.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_lines_with_counts_rate_and_eta():
    log = io.StringIO()
    with Progress("predicting", 3, "chunks", stream=log, every_s=0) as progress:
        for _ in range(3):
            progress.add()
    lines = log.getvalue().splitlines()
    assert len(lines) == 4  # one per add (every_s=0) and the closing one
    pattern = r"predicting: (\d)/3 chunks \(\d+%\)  [\d.]+ chunks/s  eta \d+s"
    assert [int(re.fullmatch(pattern, line).group(1)) for line in lines] == [1, 2, 3, 3]


def test_a_log_is_not_flooded():
    log = io.StringIO()
    with Progress("evaluating", 10_000, "windows", stream=log, every_s=3600) as progress:
        for _ in range(10_000):
            progress.add()
    assert log.getvalue().splitlines() == [log.getvalue().strip()]  # the closing line only
    assert "10000/10000 windows (100%)" in log.getvalue()


def test_a_terminal_gets_a_bar_redrawn_in_place():
    terminal = Terminal()
    progress = Progress("writing", 4, "frames", stream=terminal)
    progress.add(2)
    progress.close()
    assert terminal.getvalue().startswith("\rwriting: [")
    assert terminal.getvalue().endswith("\n") and terminal.getvalue().count("\n") == 1
    assert f"[{'#' * 12}{' ' * 12}] 2/4 frames (50%)" in terminal.getvalue()


def test_a_conversion_reports_the_frames_written(tmp_path, capsys):
    write_synthetic(tmp_path / "s.zarr", n_frames=300, seed=1)
    err = capsys.readouterr().err
    assert f"writing {tmp_path / 's.zarr'}: 300/300 frames (100%)" in err
