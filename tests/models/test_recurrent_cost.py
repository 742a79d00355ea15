"""The recurrent presets: OpenSTL's mmnist recipes, and params / FLOPs equal to what OpenSTL's
own models measure (spec/parity/rnn/mmnist_measure.json: fvcore on OpenSTL's dummy input)."""

from __future__ import annotations

import json

import pytest
from helpers import shared_file

from simvp_ray.models import profile
from simvp_ray.models.recurrent import RECURRENT_MODELS
from simvp_ray.presets import PRESETS, RECURRENT_RECIPES

MEASURE = "spec/parity/rnn/mmnist_measure.json"


def measured() -> dict[str, dict]:
    results = json.loads(shared_file(MEASURE).read_text())["results"]
    return {entry["key"]: entry for entry in results}


def entry_or_skip(key: str) -> dict:
    entry = measured()[key]
    if entry["method"].lower() not in RECURRENT_MODELS:
        pytest.skip(f"method {entry['method']} is not registered in RECURRENT_MODELS")
    return entry


@pytest.mark.parametrize("key", list(RECURRENT_RECIPES))
def test_params_and_fvcore_flops_equal_openstl(key):
    entry = entry_or_skip(key)
    cost = profile(PRESETS[f"mmnist_{key}"]().model, measure=False)
    assert cost["params"] == entry["params"]
    assert cost["flops"] == entry["fvcore_flops"]


@pytest.mark.parametrize("key", list(RECURRENT_RECIPES))
def test_preset_follows_openstl_config(key):
    entry = measured()[key]
    config = PRESETS[f"mmnist_{key}"]()
    model, rnn, hp = config.model, config.model.recurrent, entry["hparams"]
    assert model.method == entry["method"].lower()
    assert [model.in_frames, model.channels, model.height, model.width] == hp["in_shape"]
    assert (model.in_frames, model.out_frames) == (hp["pre_seq_length"], hp["aft_seq_length"])
    assert ",".join(map(str, rnn.num_hidden)) == hp.get("num_hidden", "128,128,128,128")
    assert rnn.patch_size == hp["patch_size"]
    for field in ("filter_size", "stride", "layer_norm", "decouple_beta", "sr_size", "tau",
                  "cell_mode", "model_mode"):
        if field in hp:
            assert getattr(rnn, field) == hp[field], field
    sampling = entry["scheduled_sampling"]
    assert rnn.reverse_scheduled_sampling == bool(sampling.get("reverse_scheduled_sampling", 0))
    for field in ("sampling_stop_iter", "sampling_changing_rate", "r_sampling_step_1",
                  "r_sampling_step_2", "r_exp_alpha"):
        if field in sampling:
            assert getattr(rnn, field) == sampling[field], field
    recipe = entry["recipe"]
    assert config.optim.lr == recipe["lr"] and config.optim.optimizer == recipe["opt"]
    assert config.optim.weight_decay == recipe["weight_decay"]
    assert config.optim.schedule == recipe["sched"]
    assert config.optim.final_div_factor == recipe["final_div_factor"]
    assert config.data.batch_size == recipe["batch_size"]
    assert config.data.val_batch_size == recipe["val_batch_size"]
    assert config.train.epochs == recipe["epoch"] and config.optim.grad_clip == 0
