"""A variants experiment mixing OpenSTL's recurrent baselines with a SimVP translator: the
trials train through the one loop on Ray, and jobs/analyze.py puts them in the same table."""

from __future__ import annotations

import json

import pytest
from helpers import load_job

from simvp_ray.analysis.experiment import FINISHED, load_experiment, summary_table

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TINY = ["model.translator_channels=16", "model.spatial_channels=8",
        "model.num_translator_blocks=2", "model.recurrent.num_hidden=8,8",
        "model.recurrent.filter_size=3", "data.batch_size=16", "data.val_batch_size=32",
        "train.max_steps_per_epoch=3", "train.epochs=1", "scaling.cpus_per_worker=1"]


def test_variants_with_recurrent_methods_and_gsta_share_one_table(local_ray, small_store,
                                                                   tmp_path, capsys):
    args = ["--experiment", "variants", "--translators", "convlstm,predrnn,gsta",
            "--set", f"data.url={small_store}", *TINY, "--storage", str(tmp_path),
            "--name", "mixed"]
    assert load_job("tune").main(args) == 0
    frame = load_experiment(str(tmp_path / "mixed"))
    assert list(frame["trial"]) == ["convlstm-s0", "predrnn-s0", "gsta-s0"]
    assert list(frame["status"]) == [FINISHED] * 3
    runs = tmp_path / "mixed" / "runs"
    for name, method in (("convlstm-s0", "convlstm"), ("predrnn-s0", "predrnn"),
                         ("gsta-s0", "simvp")):
        result = json.loads((runs / name / "result.json").read_text())
        assert result["config"]["model"]["method"] == method
        assert result["cost"]["params"] > 0 and result["cost"]["flops"] > 0
        assert result["cost"]["forward_samples_per_s"] > 0
    table = summary_table(frame)
    assert list(table.index) == ["convlstm", "predrnn", "gsta"]
    assert table[("mse", "mean")].notna().all() and table[("ssim", "mean")].notna().all()
    capsys.readouterr()
    out = tmp_path / "report"
    assert load_job("analyze").main([str(tmp_path / "mixed"), "--out", str(out)]) == 0
    markdown = (out / "table.md").read_text()
    for row in ("| convlstm | 1 |", "| predrnn | 1 |", "| gsta | 1 |"):
        assert row in markdown
