"""Experiment analysis on hand-made Tune folders: partial, stopped and failed trials, bad folders.

The folders copy the layout `simvp_ray.distributed.tune` writes (checked against a real run):
simvp_experiment.json, Tune's experiment_state-*.json and <trial>/result.json lines, and our
runs/<trial>/result.json summaries.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import load_job

from simvp_ray.analysis.experiment import (
    FAILED,
    FINISHED,
    STOPPED,
    UNFINISHED,
    load_experiment,
    load_history,
    summary_table,
    table_markdown,
)
from simvp_ray.config import to_dict
from simvp_ray.presets import get_preset
from simvp_ray.runs import EpochMetrics, RunSummary

PNG = b"\x89PNG\r\n\x1a\n"


def epoch_rows(mses: list[float], paper=None) -> list[dict[str, float]]:
    """paper(mse) -> the val/*_openstl keys a run reports (None: an older run without them)."""
    return [{"epoch": i, "val/mse": m, "val/mae": m / 2, "val/ssim": 1 - m, "val/psnr": 10 - m,
             "train/epoch_time_s": 2.0 + i, **(paper(m) if paper else {})}
            for i, m in enumerate(mses)]


def run_summary(name: str, rows: list[dict], cost: dict) -> RunSummary:
    """A trial's result.json as tune.py writes it (the values the analysis reads are real)."""
    last = EpochMetrics(epoch=rows[-1]["epoch"], model={"mse": rows[-1]["val/mse"]},
                        persistence={"mse": 1.0})
    return RunSummary(name=name, run_url=f"runs/{name}", epochs_run=len(rows), wall_time_s=30.0,
                      train_samples_per_s=50.0, final=last, best=last,
                      best_checkpoint=f"runs/{name}/checkpoint_000001",
                      latest_checkpoint=f"runs/{name}/checkpoint_000001", history=rows,
                      attempts=[], config={}, cost=cost)


def make_experiment(root: Path, kind: str, trials: list[dict], paper=None) -> Path:
    """trials: name, group, seed, overrides, status (Tune's), mses, and finished / error."""
    root.mkdir(parents=True)
    base = get_preset("demo")
    (root / "simvp_experiment.json").write_text(json.dumps({
        "kind": kind, "metric": "val/mse", "base": to_dict(base), "space": {},
        "num_samples": 1, "runs": "runs",
        "trials": [{k: t[k] for k in ("name", "group", "seed", "overrides")} for t in trials]}))
    state = {"trial_data": [[json.dumps({"trial_id": f"abc_{i:05d}", "custom_trial_name": t["name"],
                                         "status": t["status"]}), "{}"]
                            for i, t in enumerate(trials)], "runner_data": {}}
    (root / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(state))
    for t in trials:
        tune_dir = root / t["name"]
        tune_dir.mkdir()
        rows = epoch_rows(t["mses"], paper)
        (tune_dir / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
        if t.get("error"):
            (tune_dir / "error.txt").write_text("Failure # 1\nTraceback ...\n"
                                                f"\x1b[36m{t['error']}\x1b[39m\n")
        if t.get("finished"):
            run = root / "runs" / t["name"]
            run.mkdir(parents=True)
            (run / "result.json").write_text(json.dumps(run_summary(t["name"], rows, {
                "params": 2_000_000 + t["seed"], "flops": 3_000_000_000,
                "forward_samples_per_s": 100.0 + t["seed"]}).to_dict()))
    return root


def trial(name, group, seed, mses, status="TERMINATED", finished=True, error="", **overrides):
    return {"name": name, "group": group, "seed": seed, "mses": mses, "status": status,
            "finished": finished, "error": error,
            "overrides": {"train.seed": seed, **overrides}}


@pytest.fixture
def variants(tmp_path) -> Path:
    return make_experiment(tmp_path / "variants-x", "variants", [
        trial("gsta-s0", "gsta", 0, [0.5, 0.30], **{"model.translator": "gsta"}),
        trial("gsta-s1", "gsta", 1, [0.5, 0.34], **{"model.translator": "gsta"}),
        trial("gsta-s2", "gsta", 2, [0.6], status="RUNNING", finished=False,
              **{"model.translator": "gsta"}),
        trial("incepu-s0", "incepu", 0, [0.6, 0.40], **{"model.translator": "incepu"}),
        trial("incepu-s1", "incepu", 1, [0.7], status="ERROR", finished=False,
              error="ValueError: boom", **{"model.translator": "incepu"}),
        trial("incepu-s2", "incepu", 2, [], status="PENDING", finished=False,
              **{"model.translator": "incepu"}),
    ])


def test_one_row_per_trial_with_status_metrics_and_flat_config(variants):
    df = load_experiment(str(variants))
    assert list(df["trial"]) == ["gsta-s0", "gsta-s1", "gsta-s2", "incepu-s0", "incepu-s1",
                                 "incepu-s2"]
    assert list(df["status"]) == [FINISHED, FINISHED, UNFINISHED, FINISHED, FAILED, UNFINISHED]
    assert df.loc[4, "error"] == "ValueError: boom"
    assert list(df["epochs_run"]) == [2, 2, 1, 2, 1, 0]
    assert df.loc[0, "mse"] == pytest.approx(0.30)
    assert df.loc[0, "epoch_time_s"] == pytest.approx(2.5)
    assert df.loc[0, "params_m"] == pytest.approx(2.0)
    assert list(df["config.model.translator"]) == ["gsta"] * 3 + ["incepu"] * 3
    assert df.loc[1, "config.train.seed"] == 1
    assert df.loc[0, "config.train.epochs"] == get_preset("demo").train.epochs
    history = load_history(str(variants))
    assert len(history) == 2 + 2 + 1 + 2 + 1
    assert list(history[history["trial"] == "gsta-s0"]["epoch"]) == [0, 1]


def test_table_is_mean_and_std_over_finished_seeds(variants):
    table = summary_table(load_experiment(str(variants)))
    assert list(table.index) == ["gsta", "incepu"]
    assert table.loc["gsta", ("mse", "mean")] == pytest.approx(0.32)
    assert table.loc["gsta", ("mse", "std")] == pytest.approx(np.std([0.30, 0.34], ddof=1))
    assert table.loc["incepu", ("mse", "mean")] == pytest.approx(0.40)
    assert np.isnan(table.loc["incepu", ("mse", "std")])  # one finished seed: no spread
    assert table.loc["gsta", ("seeds", "finished")] == 2
    assert table.loc["gsta", ("seeds", "total")] == 3
    markdown = table_markdown(table, "variants")
    assert markdown.splitlines()[0].startswith("| translator | epochs | Params (M) | FLOPs (G)")
    gsta_line = next(line for line in markdown.splitlines() if line.startswith("| gsta"))
    assert "**0.3200 ± 0.0283**" in gsta_line and "2/3" in gsta_line


def test_analyze_job_writes_tables_and_plots(variants, tmp_path, capsys):
    out = tmp_path / "report"
    assert load_job("analyze").main([str(variants), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| incepu-s1 | incepu | 1 | failed | 1/" in printed
    for name in ("val_mse_curves.png", "mse_vs_flops.png", "mse_vs_time.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG and len(data) > 5000
    csv = (out / "table.csv").read_text().splitlines()
    assert csv[0].startswith("group,params_m_mean,params_m_std") and len(csv) == 3
    assert (out / "trials.csv").read_text().count("\n") == 7


def mmnist_units(m: float) -> dict[str, float]:  # OpenSTL's Moving MNIST columns
    return {"val/mse_openstl": 4096 * m, "val/mae_openstl": 9000 * m, "val/ssim_openstl": 1 - m / 4,
            "val/psnr_openstl": 30 - m, "val/rmse_openstl": 64 * m ** 0.5,
            "val/openstl_spatial_norm": 0.0}


def weather_units(m: float) -> dict[str, float]:  # OpenSTL's WeatherBench columns (kelvin)
    return {"val/mse_openstl": 20 * m, "val/mae_openstl": 3 * m, "val/rmse_openstl": 4 * m,
            "val/ssim_openstl": 0.01, "val/psnr_openstl": -40.0, "val/openstl_spatial_norm": 1.0}


@pytest.mark.parametrize("paper, header, cells", [
    (mmnist_units, "| MSE | MAE | SSIM | PSNR | seeds |",
     ["**1310.7200 ± 115.8524**", "**2880.0000 ± 254.5584**", "**0.9200 ± 0.0071**",
      "**29.68 ± 0.03**"]),
    (weather_units, "| MSE | MAE | RMSE | seeds |",
     ["**6.4000 ± 0.5657**", "**0.9600 ± 0.0849**", "**1.2800 ± 0.1131**"]),
])
def test_analyze_prints_the_published_tables_columns(tmp_path, capsys, paper, header, cells):
    root = make_experiment(tmp_path / "variants-paper", "variants", [
        trial("gsta-s0", "gsta", 0, [0.5, 0.30], **{"model.translator": "gsta"}),
        trial("gsta-s1", "gsta", 1, [0.5, 0.34], **{"model.translator": "gsta"}),
        trial("incepu-s0", "incepu", 0, [0.6, 0.40], **{"model.translator": "incepu"}),
    ], paper=paper)
    assert load_job("analyze").main([str(root), "--out", str(tmp_path / "report")]) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert lines[0].endswith(header), lines[0]
    gsta = next(line for line in lines if line.startswith("| gsta |"))
    for cell in cells:  # mean ± std over the two seeds, in the published units, best in bold
        assert cell in gsta
    assert "OpenSTL's published units" in printed
    table = summary_table(load_experiment(str(root)))  # our own columns are kept beside them
    assert table.loc["gsta", ("mse", "mean")] == pytest.approx(0.32)
    assert ("summed over C x H x W per frame" in printed) == (paper is mmnist_units)
    assert ("physical units, per variable" in printed) == (paper is weather_units)


def test_older_runs_without_openstl_keys_keep_our_columns(variants):
    table = summary_table(load_experiment(str(variants)))
    markdown = table_markdown(table, "variants")
    assert "| MSE | MAE | SSIM | PSNR | seeds |" in markdown.splitlines()[0]
    assert "no OpenSTL-unit metrics" in markdown


def test_mixed_image_and_weather_runs_are_refused(tmp_path):
    root = make_experiment(tmp_path / "mixed", "variants", [
        trial("gsta-s0", "gsta", 0, [0.3], **{"model.translator": "gsta"})], paper=mmnist_units)
    runs = root / "runs" / "gsta-s0" / "result.json"
    summary = json.loads(runs.read_text())
    weather = make_experiment(tmp_path / "w", "variants", [
        trial("incepu-s0", "incepu", 0, [0.3], **{"model.translator": "incepu"})],
        paper=weather_units)
    manifest = json.loads((root / "simvp_experiment.json").read_text())
    manifest["trials"] += json.loads((weather / "simvp_experiment.json").read_text())["trials"]
    (root / "simvp_experiment.json").write_text(json.dumps(manifest))
    (root / "runs" / "incepu-s0").mkdir()
    (root / "runs" / "incepu-s0" / "result.json").write_text(
        (weather / "runs" / "incepu-s0" / "result.json").read_text())
    assert summary["history"][0]["val/openstl_spatial_norm"] == 0.0
    with pytest.raises(ValueError, match="mix image .min-max. and weather .z-score. stores"):
        summary_table(load_experiment(str(root)))


def test_default_output_is_inside_a_local_experiment(variants, capsys):
    assert load_job("analyze").main([str(variants)]) == 0
    assert (variants / "analysis" / "table.md").exists()


def test_epoch_scaling_rows_follow_the_budgets_and_asha_stopped_trials_are_marked(tmp_path):
    root = make_experiment(tmp_path / "scaling", "epoch-scaling", [
        trial("x1-s0", "x1", 0, [0.5], **{"train.epochs": 1}),
        trial("x1-s1", "x1", 1, [0.6], **{"train.epochs": 1}),
        trial("x2-s0", "x2", 0, [0.5, 0.4], **{"train.epochs": 2}),
        trial("x2-s1", "x2", 1, [0.6], finished=False, **{"train.epochs": 2}),
    ])
    df = load_experiment(str(root))
    assert list(df["status"]) == [FINISHED, FINISHED, FINISHED, STOPPED]
    table = summary_table(df)
    assert list(table.index) == ["x1", "x2"]
    assert list(table[("epochs", "")]) == [1, 2]
    assert table.loc["x1", ("mse", "std")] == pytest.approx(np.std([0.5, 0.6], ddof=1))
    out = tmp_path / "report"
    assert load_job("analyze").main([str(root), "--out", str(out)]) == 0
    assert (out / "mse_vs_budget.png").read_bytes()[:8] == PNG
    assert "| x2 | 2 |" in (out / "table.md").read_text()


def test_a_folder_that_is_not_a_tune_experiment_is_named(tmp_path, capsys):
    (tmp_path / "plain").mkdir()
    assert load_job("analyze").main([str(tmp_path / "plain"), "--out", str(tmp_path)]) == 2
    assert "is not a Tune experiment folder: it has no experiment_state" in (
        capsys.readouterr().err)
    assert load_job("analyze").main([str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    assert "missing is not a folder" in capsys.readouterr().err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "experiment_state-2026.json").write_text("{}")
    with pytest.raises(ValueError, match="not one of jobs/tune.py: it has no "
                                         "simvp_experiment.json"):
        load_experiment(str(foreign))


def test_all_trials_failed_is_a_clear_error(tmp_path, capsys):
    root = make_experiment(tmp_path / "failed", "variants", [
        trial("gsta-s0", "gsta", 0, [], status="ERROR", finished=False,
              error="RuntimeError: out of memory"),
        trial("vit-s0", "vit", 0, [0.9], status="ERROR", finished=False,
              error="ValueError: bad"),
    ])
    assert load_job("analyze").main([str(root), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "no trial of" in err and "finished" in err
    assert "gsta-s0: failed (RuntimeError: out of memory)" in err
    assert "vit-s0: failed (ValueError: bad)" in err


@pytest.mark.s3
def test_an_experiment_on_s3_reads_like_a_local_one(variants, s3_bucket, tmp_path):
    import fsspec

    fs = fsspec.filesystem("s3")
    fs.put(str(variants), f"{s3_bucket}/tune/variants-x", recursive=True)
    url = f"s3://{s3_bucket}/tune/variants-x"
    remote = load_experiment(url)
    local = load_experiment(str(variants))
    assert list(remote["status"]) == list(local["status"])
    assert remote["mse"].equals(local["mse"])
    out = tmp_path / "report"
    assert load_job("analyze").main([url, "--out", str(out)]) == 0
    assert (out / "table.md").read_text() == table_markdown(summary_table(local), "variants")


def test_a_result_without_cost_is_an_error_naming_the_field_and_file_never_nan(variants):
    path = variants / "runs" / "gsta-s0" / "result.json"
    summary = json.loads(path.read_text())
    del summary["cost"]["flops"]
    path.write_text(json.dumps(summary))
    with pytest.raises(ValueError, match=r"gsta-s0/result.json: missing field 'cost.flops'"):
        load_experiment(str(variants))
    del summary["cost"]
    path.write_text(json.dumps(summary))
    with pytest.raises(ValueError, match=r"gsta-s0/result.json: missing field 'cost.params'"):
        load_experiment(str(variants))


def test_an_older_manifest_is_an_error_naming_the_missing_field(variants):
    path = variants / "simvp_experiment.json"
    manifest = json.loads(path.read_text())
    del manifest["runs"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"simvp_experiment.json: missing field 'runs' of "
                                         "ExperimentManifest"):
        load_experiment(str(variants))
