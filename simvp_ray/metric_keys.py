"""The headline metric names, once, and the views every layer shows of them (the definitions are
in simvp_ray/train/metrics.py's docstring). Stdlib only: the reporting and analysis layers read
these names without importing torch, so they cannot live in the torch module that computes them.
"""

from __future__ import annotations

# The headline metrics, in the order every summary and table shows them. Each is computed in
# normalised units; `<key>_phys` is the same in physical units, `<key>_openstl` in OpenSTL's
# published-table units (its metric()).
HEADLINE = ("mse", "mae", "rmse", "ssim", "psnr")
HIGHER_IS_BETTER = ("ssim", "psnr")  # the rest are errors
ERRORS = tuple(key for key in HEADLINE if key not in HIGHER_IS_BETTER)  # mse, mae, rmse
# A results table's quality columns: OpenSTL's published Moving MNIST / TaxiBJ tables (no RMSE),
# also our run summary's and experiment table's; its WeatherBench tables show the errors only.
TABLE_COLUMNS = tuple(key for key in HEADLINE if key != "rmse")  # mse, mae, ssim, psnr
WEATHER_TABLE_COLUMNS = ERRORS
# the unit of the *_openstl MSE / MAE: 1.0 per-pixel means (zscore), 0.0 per-frame sums (minmax)
OPENSTL_SPATIAL_NORM = "openstl_spatial_norm"


def physical(keys: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{key}_phys" for key in keys)


def openstl(keys: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{key}_openstl" for key in keys)


def lower_is_better(key: str) -> bool:
    """Whether a smaller value of this metric (any unit: `mse_phys`, `ssim_openstl`) is better."""
    return key.split("_")[0] not in HIGHER_IS_BETTER


# MetricAccumulator.compute(): the keys of every scope (overall, per lead, per channel), in order
SCOPE_KEYS = HEADLINE + physical(HEADLINE) + openstl(("ssim", "psnr"))
# result.json's `final` / `best` values of the model and of persistence
SUMMARY_KEYS = HEADLINE + physical(ERRORS)
# the keys the training loop reports each epoch, overall and per lead time / channel
EPOCH_KEYS = (SUMMARY_KEYS + ("mse_frame_sum", "mae_frame_sum", "wrmse", "wrmse_phys")
              + openstl(HEADLINE) + (OPENSTL_SPATIAL_NORM,))
