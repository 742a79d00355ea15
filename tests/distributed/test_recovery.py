"""A run that goes bad keeps what it had: non-finite loss after good epochs, best-N retention,
and a resume onto a rebuilt store refused.

The store is changed under the running job, as a real fault would be: once a checkpoint
exists the validation frames are shifted (later epochs score worse: the latest checkpoint is
not the best), and once a worse checkpoint exists the training frames are blown up to 1e30
(the loss overflows). Everything is a real Ray run on a real Zarr store; nothing is mocked.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
import zarr
from helpers import load_job

from simvp_ray.data import open_dataset, write_synthetic

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SMALL = ["model.translator_channels=16", "model.spatial_channels=8",
         "model.num_translator_blocks=2", "data.batch_size=16", "data.val_batch_size=32",
         "train.max_steps_per_epoch=8", "train.epochs=8", "train.keep_checkpoints=1",
         "optim.schedule=constant",
         # streaming re-reads the store every epoch, so a fault that appears mid-run reaches
         # the workers; a resident run read its splits once, before the fault
         "data.mode=streaming"]


def checkpoints(run: Path) -> dict[int, Path]:
    """epoch -> checkpoint folder, of the complete checkpoints in storage."""
    found = {}
    for folder in run.glob("checkpoint_*"):
        history = folder / "history.json"
        if (folder / "checkpoint.pt").exists() and history.exists():
            try:
                found[json.loads(history.read_text())[-1]["epoch"]] = folder
            except (ValueError, IndexError):
                continue  # being written
    return found


def spoil_store_as_training_runs(store: str, run: Path, stop: threading.Event) -> dict:
    """Shift the val frames after the first checkpoint; blow up the train frames once a
    checkpoint scores worse than the best. Returns what it did, for the asserts."""
    dataset = open_dataset(store)
    frames = zarr.open_group(store, mode="r+")["frames"]
    done = {"val_shifted": False, "train_spoiled_after": None}
    while not stop.wait(0.2):
        found = checkpoints(run)
        if found and not done["val_shifted"]:
            a, b = dataset.splits["val"]
            frames[a:b] = frames[a:b] + 20.0  # finite, far off: val/mse jumps
            done["val_shifted"] = True
        if len(found) >= 2:
            history = json.loads((found[max(found)] / "history.json").read_text())
            if history[-1]["val/mse"] > min(row["val/mse"] for row in history):
                a, b = dataset.splits["train"]
                frames[a:b] = 1e30  # finite in the store, overflows the loss
                done["train_spoiled_after"] = max(found)
                return done
    return done


def train_with_fault(store: str, name: str, storage: Path, inject) -> tuple[int, object]:
    """Run the train job while `inject(stop)` spoils the store from a thread; returns the job's
    exit code and what `inject` returned."""
    stop = threading.Event()
    injected: list = []
    thread = threading.Thread(target=lambda: injected.append(inject(stop)))
    thread.start()
    try:
        code = load_job("train").main(["--set", f"data.url={store}", *SMALL, "--storage",
                                       str(storage), "--name", name])
    finally:
        stop.set()
        thread.join()
    return code, injected[0] if injected else None


def test_non_finite_loss_keeps_the_best_and_the_latest_checkpoint(local_ray, small_store,
                                                                  tmp_path, capsys):
    store = str(tmp_path / "store.zarr")
    shutil.copytree(small_store, store)
    run = tmp_path / "runs" / "spoiled"
    code, spoiled = train_with_fault(store, "spoiled", tmp_path / "runs",
                                     lambda stop: spoil_store_as_training_runs(store, run, stop))
    spoiled = spoiled or {}
    err = capsys.readouterr().err
    assert spoiled.get("train_spoiled_after") is not None, f"never spoiled: {spoiled} {err}"
    assert code == 3, err
    assert "training stopped: loss is" in err and "last good epoch" in err

    result = json.loads((run / "result.json").read_text())
    stopped = result["stopped"]
    last_good = stopped["last_good_epoch"]
    assert last_good >= spoiled["train_spoiled_after"] >= 1
    assert f"at epoch {last_good + 1} " in stopped["reason"]
    assert [row["epoch"] for row in result["history"]] == list(range(last_good + 1))
    best = result["best"]["epoch"]
    assert best < last_good, "the latest checkpoint should score worse than the best"
    # keep_checkpoints=1 keeps the best; the latest (last good) one is never deleted
    kept = checkpoints(run)
    assert sorted(kept) == [best, last_good], sorted(kept)
    assert result["latest_checkpoint"] == str(kept[last_good])
    assert result["best_checkpoint"] == str(kept[best])
    assert [(a["start_epoch"], a["world_size"], a["end_epoch"]) for a in result["attempts"]] \
        == [(0, 1, last_good + 1)]

    # the store rebuilt under the same URL (other statistics): the resume is refused
    shutil.rmtree(store)
    write_synthetic(store, n_frames=600, seed=4)
    code = load_job("train").main(["--set", f"data.url={store}", *SMALL, "--storage",
                                   str(tmp_path / "runs"), "--name", "spoiled", "--resume"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"its checkpoints were trained on the store {store}" in err
    assert "differs in normalization" in err


def corrupt_chunk_when_checkpointed(store: str, chunk: int, run: Path,
                                    stop: threading.Event) -> None:
    """Flip bytes inside one chunk of frames once the run has a checkpoint (atomically, as a
    bad disk or a broken upload would leave it: the file is whole, its checksum fails)."""
    path = Path(store) / "frames" / "c" / str(chunk) / "0" / "0" / "0"
    while not stop.wait(0.2):
        if checkpoints(run):
            data = bytearray(path.read_bytes())
            data[200:260] = bytes(b ^ 0xFF for b in data[200:260])
            partial = path.with_suffix(".partial")
            partial.write_bytes(bytes(data))
            partial.replace(path)
            return


def test_a_corrupt_chunk_stops_the_run_at_once_naming_it(local_ray, small_store, tmp_path,
                                                          capsys):
    store = str(tmp_path / "store.zarr")
    shutil.copytree(small_store, store)
    run = tmp_path / "runs" / "corrupt"
    code, _ = train_with_fault(store, "corrupt", tmp_path / "runs",
                               lambda stop: corrupt_chunk_when_checkpointed(store, 1, run, stop))
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert code == 3, err
    named = f"{store}: chunk 1 of frames (steps 128-255, "
    assert last.startswith(f"training stopped: {named}") and "checksum" in last, last
    assert "rewrite the store (or that chunk) from its source; last good epoch" in last, last
    result = json.loads((run / "result.json").read_text())
    last_good = result["stopped"]["last_good_epoch"]
    assert last_good < 7 and named in result["stopped"]["reason"]
    # stopped at once: one attempt, no restart by Ray into the same chunk
    assert [(a["start_epoch"], a["end_epoch"]) for a in result["attempts"]] == [(0, last_good + 1)]
    assert last_good in checkpoints(run)

    # evaluate and predict meet it too: a last line naming the chunk, exit 2 (Ray's own log
    # lines from its workers come before it)
    checkpoint = result["latest_checkpoint"]
    assert load_job("evaluate").main([checkpoint, "--split", "train", "--out",
                                      str(tmp_path / "eval"), "--no-cost"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: {named}") and last.endswith("from its source"), last
    assert load_job("predict").main([checkpoint, "--start", "2000-01-06T12", "--end",
                                     "2000-01-07T12", "--out", str(tmp_path / "f.zarr")]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: {named}") and last.endswith("from its source"), last
