"""The driver -> worker contract: Ray Train's train_loop_config dict round-trips exactly."""

from __future__ import annotations

import json

import pytest

from simvp_ray.config import override
from simvp_ray.distributed.worker import WorkerPlan
from simvp_ray.presets import get_preset
from simvp_ray.train.metrics import MetricContext


def test_worker_plan_round_trips_exactly_and_names_a_missing_field():
    config = override(get_preset("taxibj_gsta"), {"data.url": "s3://bucket/taxibj.zarr"})
    plan = WorkerPlan(config, {"mode": "streaming", "why": "asked"},
                      MetricContext([0.0, 0.0], [1292.0, 1292.0], "minmax", ["inflow", "outflow"]),
                      fit_id="f" * 32, store={"url": "s3://bucket/taxibj.zarr", "steps": 100})
    data = plan.to_dict()
    assert WorkerPlan.from_dict(json.loads(json.dumps(data))) == plan
    assert WorkerPlan.from_dict(data).to_dict() == data
    assert list(data) == ["config", "data_plan", "metrics", "fit_id", "store"]
    with pytest.raises(ValueError, match="train_loop_config: missing field 'fit_id' of "
                                         "WorkerPlan"):
        WorkerPlan.from_dict({key: value for key, value in data.items() if key != "fit_id"})
