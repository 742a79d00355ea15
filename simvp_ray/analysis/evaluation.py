"""Markdown tables of an evaluation (`jobs/evaluate.py`'s metrics.json dict): overall, per lead
time, per variable (latitude-weighted RMSE and ACC where the store has latitudes) and cost."""

from __future__ import annotations

from typing import Any

from simvp_ray.metric_keys import HEADLINE, TABLE_COLUMNS, WEATHER_TABLE_COLUMNS, physical

FORECASTS = ("model", "persistence", "climatology")
# each table's columns: overall, per lead time, OpenSTL's image / weather tables (*_openstl)
OVERALL = HEADLINE + physical(("rmse", "mae"))
PER_LEAD = ("mse", "rmse_phys", "ssim")
OPENSTL_IMAGE = TABLE_COLUMNS
OPENSTL_WEATHER = WEATHER_TABLE_COLUMNS


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1),
            *["| " + " | ".join(row) + " |" for row in rows]]


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.4e}"


def format_evaluation(results: dict[str, Any]) -> str:
    """The evaluation as Markdown: one table per view, baselines next to the model."""
    units = ", ".join(f"{c} [{u}]" for c, u in zip(results["channels"], results["units"]))
    lines = [f"## {results['split']} split of {results['data']}",
             "",
             f"checkpoint `{results['checkpoint']}` (epoch {results['epoch'] + 1}), "
             f"{results['windows']} windows, {results['out_frames']} lead times; channels "
             f"{units}. `*_phys` are in physical units, the rest normalised; climatology = "
             f"{results['climatology_definition']}"
             + (f" ({results['climatology_reason']})" if results.get("climatology_reason")
                else "")
             + (f"; protocol {results['protocol']}: {results['protocol_definition']}"
                if results.get("protocol", "default") != "default" else "") + ".", ""]
    lines += _table(["forecast", *OVERALL],
                    [[name, *(_number(results[name].get(key)) for key in OVERALL)]
                     for name in FORECASTS])
    # the published tables' columns: Moving MNIST / TaxiBJ (per-frame sums), or weather
    weather = results["model"].get("openstl_spatial_norm") == 1.0
    columns = OPENSTL_WEATHER if weather else OPENSTL_IMAGE
    lines += ["", "OpenSTL's published-table metrics (`*_openstl`; "
              + ("per-pixel means in physical units, per variable then averaged" if weather else
                 "MSE / MAE summed over C x H x W per frame on OpenSTL's [0, 1] scale") + "):", ""]
    lines += _table(["forecast", *columns],
                    [[name, *(_number(results[name].get(f"{key}_openstl")) for key in columns)]
                     for name in FORECASTS])
    lines += ["", "Per lead time:", ""]
    header = ["lead"] + [f"{key} {name}" for key in PER_LEAD for name in FORECASTS]
    rows = [[f"t+{t}"] + [_number(results[name].get(f"{key}/t{t}")) for key in PER_LEAD
                          for name in FORECASTS]
            for t in range(1, results["out_frames"] + 1)]
    lines += _table(header, rows)
    if results.get("latitude_weighted"):
        lines += ["", "Latitude-weighted RMSE (physical units; WeatherBench 2's RMSE, the root "
                  "after the mean over forecasts) and ACC per variable:", ""]
        header = ["variable", "lead"] + [f"wrmse {n}" for n in FORECASTS] + [
            f"acc {n}" for n in FORECASTS[:2]]
        rows = []
        for channel in results["channels"]:
            for lead in ["", *(f"/t{t}" for t in range(1, results["out_frames"] + 1))]:
                rows.append([channel, lead.strip("/") or "all"]
                            + [_number(results[n].get(f"wrmse_phys/{channel}{lead}"))
                               for n in FORECASTS]
                            + [_number(results[n].get(f"acc/{channel}{lead}"))
                               for n in FORECASTS[:2]])
        lines += _table(header, rows)
    if "cost" in results:
        cost = results["cost"]
        speed = cost.get("forward_samples_per_s")
        lines += ["", "Model cost (simvp_ray.models.profile):", ""]
        lines += _table(["params (M)", "GFLOPs / sample", "inference samples/s", "device"],
                        [[f"{cost['params'] / 1e6:.3f}", f"{cost['flops'] / 1e9:.3f}",
                          "-" if speed is None else f"{speed:.1f}",
                          str(cost.get("device", "-"))]])
    return "\n".join(lines)
