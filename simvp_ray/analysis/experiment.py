"""A Tune experiment of `jobs/tune.py` -> one DataFrame row per trial, the paper's table, plots.

Reads files only (fsspec: a local folder, a folder copied from a cluster, or s3://): the
experiment's `simvp_experiment.json`, Tune's `experiment_state-*.json` (trial statuses),
each trial's `runs/<trial>/result.json` (summary + model cost) and, for trials that did not
finish, Tune's per-trial `result.json` lines (epoch metrics) and `error.txt`.

    df = load_experiment("runs/variants-demo")          # in a notebook
    table = summary_table(df)                            # mean +- std over seeds per row
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import fsspec
import matplotlib

matplotlib.use("Agg")  # files only, no display needed (CI, cluster nodes)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from simvp_ray import runs  # noqa: E402
from simvp_ray.config import RunConfig, flatten, from_dict, override  # noqa: E402
from simvp_ray.metric_keys import (  # noqa: E402
    OPENSTL_SPATIAL_NORM,
    TABLE_COLUMNS,
    WEATHER_TABLE_COLUMNS,
    lower_is_better,
)
from simvp_ray.runs import (  # noqa: E402
    MANIFEST_FILE,
    RESULT_FILE,
    ExperimentManifest,
    RunSummary,
    storage_filesystem,
)

FINISHED, STOPPED, FAILED, UNFINISHED = "finished", "stopped early", "failed", "unfinished"


def _quality(keys: tuple[str, ...], suffix: str = "") -> list[tuple[str, str, bool]]:
    return [(key + suffix, key.upper(), lower_is_better(key)) for key in keys]


# (column, label in the table, lower is better); params/FLOPs/time/speed are not "best" cells
QUALITY = _quality(TABLE_COLUMNS)  # ours; the table's columns for runs without *_openstl keys
# The published tables' columns (OpenSTL's metric(), simvp_ray.train.metrics), chosen by the
# run's openstl_spatial_norm: 0 = Moving MNIST / TaxiBJ, 1 = weather (per-variable means)
PAPER_IMAGE = _quality(TABLE_COLUMNS, "_openstl")
PAPER_WEATHER = _quality(WEATHER_TABLE_COLUMNS, "_openstl")
PAPER_UNITS = {
    "image": "Quality columns in OpenSTL's published units (Moving MNIST / TaxiBJ tables): MSE and "
             "MAE summed over C x H x W per frame on the [0, 1] scale, SSIM (scikit-image, 7x7, "
             "clipped prediction) and PSNR (dB) as OpenSTL's metric().",
    "weather": "Quality columns in OpenSTL's published units (WeatherBench tables): MSE, MAE and "
               "RMSE per-pixel means in physical units, per variable then averaged over "
               "variables (the mv tables' \"sum\" columns).",
    "ours": "Quality columns: validation MSE / MAE per pixel (normalised), SSIM / PSNR "
            "(Gaussian 11x11, range 1); this run reported no OpenSTL-unit metrics.",
}
PAPER_KEYS = [OPENSTL_SPATIAL_NORM] + [c for c, _, _ in PAPER_IMAGE + PAPER_WEATHER[2:]]
COST = [("params_m", "Params (M)"), ("gflops", "FLOPs (G)"),
        ("epoch_time_s", "Train time / epoch (s)"),
        ("infer_samples_per_s", "Inference (samples/s)")]
FIXED = ("params_m", "gflops")
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours its error lines
ROW_LABEL = {"variants": "translator", "epoch-scaling": "budget", "search": "trial"}


def _read_json(fs: fsspec.AbstractFileSystem, path: str) -> Any:
    with fs.open(path, "r") as handle:
        return json.load(handle)


def read_manifest(url: str) -> ExperimentManifest:
    """The experiment's own manifest; a clear error for a folder that is not an experiment of
    jobs/tune.py, or a manifest of another version (the missing field named)."""
    fs, root = storage_filesystem(url)
    if not fs.isdir(root):
        raise ValueError(f"{url} is not a folder: give the experiment folder jobs/tune.py "
                         "printed (e.g. runs/variants-demo or s3://bucket/tune/variants-demo)")
    if not fs.glob(f"{root}/experiment_state-*.json"):
        raise ValueError(f"{url} is not a Tune experiment folder: it has no "
                         "experiment_state-*.json (give the folder jobs/tune.py printed, not "
                         "its parent or a trial folder)")
    if not fs.exists(f"{root}/{MANIFEST_FILE}"):
        raise ValueError(f"{url} is a Tune experiment but not one of jobs/tune.py: it has no "
                         f"{MANIFEST_FILE}")
    return runs.read_manifest(url)


def tune_trials(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, str]:
    """Trial name -> Tune status (TERMINATED, ERROR, PENDING, ...) from the newest state file."""
    newest = sorted(fs.glob(f"{root}/experiment_state-*.json"))[-1]
    statuses = {}
    for json_state, _ in _read_json(fs, newest).get("trial_data", []):
        state = json.loads(json_state)
        name = state.get("custom_trial_name") or state.get("trial_id")
        statuses[name] = state.get("status", "PENDING")
    return statuses


def _tune_history(fs: fsspec.AbstractFileSystem, trial_dir: str) -> list[dict[str, Any]]:
    """Epoch rows Tune recorded for a trial (its `result.json` lines), last report per epoch."""
    path = f"{trial_dir}/result.json"
    if not fs.exists(path):
        return []
    rows: dict[int, dict[str, Any]] = {}
    with fs.open(path, "r") as handle:
        for line in handle:
            if line.strip():
                row = json.loads(line)
                if "epoch" in row and "val/mse" in row:
                    rows[int(row["epoch"])] = row
    return [rows[epoch] for epoch in sorted(rows)]


def _error(fs: fsspec.AbstractFileSystem, trial_dir: str) -> str:
    path = f"{trial_dir}/error.txt"
    if not fs.exists(path):
        return ""
    lines = [line for line in fs.cat(path).decode(errors="replace").splitlines() if line.strip()]
    return ANSI.sub("", lines[-1]).strip() if lines else "error"


def _trial_config(manifest: ExperimentManifest, overrides: dict[str, Any]) -> dict[str, Any]:
    return flatten(override(from_dict(RunConfig, manifest.base), overrides))


def load_experiment(url: str) -> pd.DataFrame:
    """One row per trial: trial, group, seed, status, epochs (budget) and epochs_run, final
    metrics (mse, mae, ssim, psnr), cost (params_m, gflops, epoch_time_s,
    infer_samples_per_s), error, and the trial's config as `config.<dotted key>` columns."""
    return load_trials(url)[0]


def load_history(url: str) -> pd.DataFrame:
    """One row per (trial, epoch): every numeric metric reported that epoch (val/mse, ...)."""
    return load_trials(url)[1]


def load_trials(url: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both tables at once: (one row per trial, one row per trial epoch)."""
    manifest = read_manifest(url)
    fs, root = storage_filesystem(url)
    statuses = tune_trials(fs, root)
    planned = {t.name: t.to_dict() for t in manifest.trials}
    names = list(planned) + sorted(set(statuses) - set(planned))
    rows, history = [], []
    for name in names:
        summary_path = f"{root}/{manifest.runs}/{name}/{RESULT_FILE}"
        summary = (RunSummary.from_dict(_read_json(fs, summary_path), summary_path)
                   if fs.exists(summary_path) else None)
        trial_dir = f"{root}/{name}"
        spec = planned.get(name) or _searched_spec(fs, trial_dir, name)
        row: dict[str, Any] = {"trial": name, "group": spec["group"] or name,
                               "seed": spec["seed"], "error": ""}
        if summary is not None:
            epochs = summary.history
            row.update(status=FINISHED, **_final_metrics(epochs[-1]),
                       params_m=summary.cost_value("params", summary_path) / 1e6,
                       gflops=summary.cost_value("flops", summary_path) / 1e9,
                       infer_samples_per_s=summary.cost_value("forward_samples_per_s",
                                                              summary_path),
                       wall_time_s=summary.wall_time_s)
        else:
            epochs = _tune_history(fs, trial_dir)
            tune_status = statuses.get(name, "PENDING")
            row["error"] = _error(fs, trial_dir)
            row["status"] = (FAILED if tune_status == "ERROR" or row["error"] else
                             STOPPED if tune_status == "TERMINATED" and epochs else UNFINISHED)
            row.update(_final_metrics(epochs[-1]) if epochs else {})
        row["epochs_run"] = len(epochs)
        row["epoch_time_s"] = (float(np.mean([e["train/epoch_time_s"] for e in epochs]))
                               if epochs and "train/epoch_time_s" in epochs[0] else math.nan)
        config = _trial_config(manifest, spec["overrides"])
        row["epochs"] = config["train.epochs"]
        row.update({f"config.{key}": _cell(value) for key, value in config.items()})
        rows.append(row)
        history.extend({"trial": name, "group": row["group"], **{
            key: value for key, value in epoch.items() if isinstance(value, int | float)}}
            for epoch in epochs)
    frame = pd.DataFrame(rows)
    frame.attrs.update(kind=manifest.kind, url=url)
    epochs = pd.DataFrame(history, columns=None if history else ["trial", "group", "epoch",
                                                                 "val/mse"])
    return frame, epochs.astype({"epoch": int})


def _searched_spec(fs: fsspec.AbstractFileSystem, trial_dir: str, name: str) -> dict[str, Any]:
    """A search trial's spec from the config Tune saved for it (`params.json`)."""
    params = f"{trial_dir}/params.json"
    spec = _read_json(fs, params)["spec"] if fs.exists(params) else {}
    return {"group": name, "seed": spec.get("seed"), "overrides": spec.get("overrides", {})}


def _final_metrics(epoch: dict[str, Any]) -> dict[str, float]:
    keys = [key for key, _, _ in QUALITY] + PAPER_KEYS
    return {key: epoch.get(f"val/{key}", math.nan) for key in keys}


def paper_columns(frame: pd.DataFrame) -> tuple[str, list[tuple[str, str, bool]]]:
    """("image" | "weather" | "ours", the quality columns) of the finished trials: the published
    tables' units where the runs reported them (a ValueError when runs mix the two kinds)."""
    finished = frame[frame["status"] == FINISHED]
    norms = set(finished.get("openstl_spatial_norm", pd.Series(dtype=float)).dropna())
    if not norms:
        return "ours", QUALITY
    if len(norms) > 1:
        raise ValueError("the finished trials mix image (min-max) and weather (z-score) stores; "
                         "their OpenSTL columns have different units: analyse them apart")
    return ("weather", PAPER_WEATHER) if norms.pop() == 1.0 else ("image", PAPER_IMAGE)


def _cell(value: Any) -> Any:
    return ",".join(map(str, value)) if isinstance(value, list) else value


# ---------------------------------------------------------------------------------------
# The paper's table


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per group (translator / budget / trial): mean and std over the finished seeds
    of every cost and quality column, plus how many seeds finished / ran."""
    finished = frame[frame["status"] == FINISHED]
    if finished.empty:
        problems = "; ".join(f"{row.trial}: {row.status}" + (f" ({row.error})" if row.error
                                                                else "")
                             for row in frame.itertuples())
        raise ValueError(f"no trial of {frame.attrs.get('url', 'the experiment')} finished, "
                         f"so there is nothing to tabulate: {problems}")
    units, quality = paper_columns(frame)
    # our own columns stay in the table (and the CSV); the Markdown shows the paper's
    columns = [c for c, _ in COST] + list(dict.fromkeys(
        [c for c, _, _ in QUALITY] + [c for c, _, _ in quality]))
    groups = list(dict.fromkeys(frame["group"]))  # plan order: gsta, incepu / x1, x3, ...
    stats = finished.groupby("group", sort=False)[columns].agg(["mean", "std"])
    table = stats.reindex(groups)
    table[("epochs", "")] = frame.groupby("group", sort=False)["epochs"].first().reindex(groups)
    table[("seeds", "finished")] = finished.groupby("group").size().reindex(groups).fillna(0)
    table[("seeds", "total")] = frame.groupby("group").size().reindex(groups)
    table.attrs.update(units=units, quality=quality)
    return table


def _fmt(mean: float, std: float, digits: int) -> str:
    if pd.isna(mean):
        return "-"
    text = f"{mean:.{digits}f}"
    return text if pd.isna(std) else f"{text} ± {std:.{digits}f}"


def _digits(column: str) -> int:
    return {"params_m": 3, "gflops": 3, "epoch_time_s": 2, "infer_samples_per_s": 0,
            "psnr": 2, "psnr_openstl": 2}.get(column, 4)


def table_markdown(table: pd.DataFrame, kind: str = "variants") -> str:
    """Markdown: mean ± std over seeds; the best mean of each quality column in bold; a line
    under the table names the quality columns' units."""
    quality = table.attrs.get("quality", QUALITY)
    head = [ROW_LABEL.get(kind, "row"), "epochs"] + [label for _, label in COST] + [
        label for _, label, _ in quality] + ["seeds"]
    best = {}
    for column, _, lower in quality:
        means = table[(column, "mean")].dropna()
        if not means.empty:
            best[column] = means.idxmin() if lower else means.idxmax()
    lines = ["| " + " | ".join(head) + " |", "|---" * 2 + "|" + "---:|" * (len(head) - 2)]
    for group, row in table.iterrows():
        cells = [str(group), f"{row[('epochs', '')]:g}"]
        # params and FLOPs are fixed by the model: a spread over seeds would only be noise
        cells += [_fmt(row[(c, "mean")], math.nan if c in FIXED else row[(c, "std")],
                       _digits(c)) for c, _ in COST]
        for column, _, _ in quality:
            text = _fmt(row[(column, "mean")], row[(column, "std")], _digits(column))
            cells.append(f"**{text}**" if best.get(column) == group else text)
        cells.append(f"{row[('seeds', 'finished')]:g}/{row[('seeds', 'total')]:g}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", PAPER_UNITS[table.attrs.get("units", "ours")]]
    return "\n".join(lines) + "\n"


def table_csv(table: pd.DataFrame) -> str:
    flat = table.copy()
    flat.columns = [f"{a}_{b}" if b else a for a, b in flat.columns]
    return flat.to_csv(index_label="group")


def trials_markdown(frame: pd.DataFrame) -> str:
    """Every trial with its status: unfinished, stopped and failed ones are listed, not hidden."""
    lines = ["| trial | group | seed | status | epochs run | MSE | error |",
             "|---|---|---:|---|---:|---:|---|"]
    for row in frame.itertuples():
        mse = "-" if pd.isna(row.mse) else f"{row.mse:.4f}"
        error = row.error[:120].replace("|", "/")  # a bar would end the Markdown cell
        lines.append(f"| {row.trial} | {row.group} | {row.seed} | {row.status} | "
                     f"{row.epochs_run}/{row.epochs} | {mse} | {error} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------
# Plots


def plot_curves(history: pd.DataFrame, path: Path) -> Path:
    """Validation MSE vs epoch, one line per trial (coloured by group)."""
    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    colors = _colors(history["group"]) if not history.empty else {}
    styles = ["-", "--", ":", "-."]
    seen: dict[Any, int] = {}
    for trial, rows in (history.groupby("trial", sort=False) if not history.empty else []):
        group = rows["group"].iloc[0]
        seen[group] = seen.get(group, -1) + 1
        axis.plot(rows["epoch"] + 1, rows["val/mse"], marker="o", ms=3, color=colors[group],
                  linestyle=styles[seen[group] % len(styles)], label=trial)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set(xlabel="epoch", ylabel="validation MSE", title="Validation MSE per trial")
    if not history.empty:
        axis.legend(fontsize=7, ncol=2)
    return _save(figure, path)


def plot_metric_vs(frame: pd.DataFrame, x: str, xlabel: str, path: Path,
                   log_x: bool = False) -> Path:
    """Final MSE of finished trials vs a per-trial quantity, group means joined by error bars."""
    finished = frame[frame["status"] == FINISHED]
    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    colors = _colors(frame["group"])
    for group, rows in finished.groupby("group", sort=False):
        axis.scatter(rows[x], rows["mse"], color=colors[group], alpha=0.5, s=18)
        axis.errorbar(rows[x].mean(), rows["mse"].mean(), yerr=_std(rows["mse"]),
                      xerr=_std(rows[x]), fmt="o", ms=7, capsize=3,
                      color=colors[group], label=str(group))
    if log_x:
        axis.set_xscale("log")
    axis.set(xlabel=xlabel, ylabel="validation MSE (final)", title=f"MSE vs {xlabel}")
    axis.legend(fontsize=8)
    return _save(figure, path)


def plot_scaling(frame: pd.DataFrame, path: Path) -> Path:
    """Final MSE vs epoch budget (mean ± std over seeds) for an epoch-scaling experiment."""
    finished = frame[frame["status"] == FINISHED]
    stats = finished.groupby("epochs")["mse"].agg(["mean", "std"]).sort_index()
    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    axis.errorbar(stats.index, stats["mean"], yerr=stats["std"].fillna(0.0), fmt="-o",
                  capsize=3)
    axis.scatter(finished["epochs"], finished["mse"], alpha=0.4, s=14)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set(xlabel="epochs (budget)", ylabel="validation MSE (final)",
             title="Final MSE vs epoch budget")
    return _save(figure, path)


def _std(values: pd.Series) -> float:
    std = values.std()
    return 0.0 if pd.isna(std) else float(std)


def _colors(groups: pd.Series) -> dict[Any, Any]:
    cmap = plt.get_cmap("tab10")
    return {group: cmap(i % 10) for i, group in enumerate(dict.fromkeys(groups))}


def _save(figure: plt.Figure, path: Path) -> Path:
    axis = figure.axes[0]
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


# ---------------------------------------------------------------------------------------
# Everything at once (jobs/analyze.py)


def analyze_experiment(url: str, out: str | Path) -> dict[str, Path]:
    """Write table.md, table.csv, trials.md/.csv and the PNG plots into `out`; returns paths."""
    frame, history = load_trials(url)
    kind = frame.attrs["kind"]
    table = summary_table(frame)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {"table_md": out / "table.md", "table_csv": out / "table.csv",
               "trials_md": out / "trials.md", "trials_csv": out / "trials.csv"}
    written["table_md"].write_text(table_markdown(table, kind))
    written["table_csv"].write_text(table_csv(table))
    written["trials_md"].write_text(trials_markdown(frame))
    frame.to_csv(written["trials_csv"], index=False)
    written["curves"] = plot_curves(history, out / "val_mse_curves.png")
    if kind == "epoch-scaling":
        written["scaling"] = plot_scaling(frame, out / "mse_vs_budget.png")
    else:
        written["mse_vs_flops"] = plot_metric_vs(frame, "gflops", "GFLOPs per sample",
                                                 out / "mse_vs_flops.png")
        written["mse_vs_time"] = plot_metric_vs(frame, "epoch_time_s", "training time / epoch (s)",
                                                out / "mse_vs_time.png")
    return written
