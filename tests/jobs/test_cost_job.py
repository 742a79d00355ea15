"""jobs/cost.py prints the presets' params and FLOPs (matching spec/models.md)."""

from __future__ import annotations

import pytest
from helpers import load_job


def test_cost_job_prints_params_and_flops(capsys):
    assert load_job("cost").main(["--preset", "taxibj_gsta", "mmnist_incepu", "--no-speed"]) == 0
    out = capsys.readouterr().out
    # GFLOPs as fvcore counts them, GroupNorm included (published: 2.62 and 19.4)
    assert "| taxibj_gsta | gsta | 4x2x32x32 | 9.961 | 2.611 | - | - |" in out
    assert "| mmnist_incepu | incepu | 10x1x64x64 | 57.946 | 19.431 | - | - |" in out


def test_cost_job_applies_overrides_and_measures(capsys):
    job = load_job("cost")
    assert job.main(["--preset", "demo", "--set", "model.translator=incepu", "--iters", "1",
                     "--batch-size", "2"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "| demo |" in line)
    assert "| incepu |" in row and "| - |" not in row


def test_cost_job_rejects_unknown_keys(capsys):
    with pytest.raises(SystemExit):
        load_job("cost").main(["--preset", "demo", "--set", "model.hid_S=3"])
    assert "unknown config key 'model.hid_S'" in capsys.readouterr().err
