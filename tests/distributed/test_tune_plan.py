"""Tune experiment plans and bad input: checked before Ray starts, so no cluster is needed."""

from __future__ import annotations

import pytest
from helpers import load_job

from simvp_ray.config import override
from simvp_ray.models import TRANSLATORS
from simvp_ray.presets import get_preset
from simvp_ray.sweeps import build_plan, parse_space


def test_variants_are_every_translator_times_seeds_with_deterministic_names():
    plan = build_plan("variants", get_preset("demo"), num_seeds=2)
    assert len(plan.trials) == 2 * len(TRANSLATORS)
    assert [t.name for t in plan.trials[:3]] == ["incepu-s0", "incepu-s1", "gsta-s0"]
    assert plan.trials[2].overrides == {"model.translator": "gsta", "train.seed": 0}
    assert build_plan("variants", get_preset("demo"), num_seeds=2) == plan


def test_epoch_scaling_multiplies_the_preset_epochs():
    base = override(get_preset("demo"), {"train.epochs": 5})
    plan = build_plan("epoch-scaling", base, budgets="1,3", num_seeds=1)
    assert [(t.name, t.group, t.overrides["train.epochs"]) for t in plan.trials] == [
        ("x1-s0", "x1", 5), ("x3-s0", "x3", 15)]


def test_search_space_entries_are_typed_by_the_config():
    space = parse_space(["optim.lr=loguniform:1e-4:1e-2", "model.translator=choice:gsta,vit",
                         "train.epochs=grid:2,4"], get_preset("demo"))
    assert space == {"optim.lr": "loguniform:1e-4:1e-2", "model.translator": "choice:gsta,vit",
                     "train.epochs": "grid:2,4"}


@pytest.mark.parametrize("args, message", [
    (["--translators", "gsta,lstm"], "unknown translator(s) ['lstm']; valid: incepu, gsta"),
    (["--experiment", "search", "--space", "optim.learnrate=loguniform:1e-4:1e-2"],
     "search space: unknown config key 'optim.learnrate'; valid keys: "),
    (["--experiment", "search", "--space", "model.translator=choice:gsta,lstm"],
     "search space: unknown translator 'lstm'; valid: incepu, gsta"),
    (["--experiment", "search", "--space", "optim.lr=normal:0:1"],
     "is not KEY=DIST:ARGS with DIST one of choice, grid"),
    (["--experiment", "search", "--space", "optim.lr=uniform:0.1:0.01"],
     "uniform needs LOW:HIGH with LOW < HIGH"),
    (["--experiment", "search", "--space", "train.epochs=choice:2,many"],
     "search space: train.epochs: expected int, got 'many'"),
    (["--experiment", "search", "--seeds", "3"], "a search draws one configuration per trial"),
    (["--experiment", "epoch-scaling", "--budgets", "1,0"], "epoch budget '0' is not a positive "
                                                            "integer"),
    (["--experiment", "epoch-scaling", "--budgets", "1.5"], "epoch budget '1.5' is not a "
                                                            "positive integer"),
    (["--experiment", "epoch-scaling", "--seeds", "0"], "--seeds 0: need at least 1 seed"),
    (["--name", "nothing", "--resume"], "cannot resume: no experiment 'nothing'"),
    (["--preset", "taxibj_lstm"], "unknown preset 'taxibj_lstm'"),
])
def test_bad_input_is_a_clear_error_before_ray_starts(tmp_path, capsys, args, message):
    assert load_job("tune").main([*args, "--storage", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing was written


def test_an_existing_experiment_is_not_overwritten(tmp_path, capsys):
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "simvp_experiment.json").write_text("{}")
    assert load_job("tune").main(["--storage", str(tmp_path), "--name", "exp"]) == 2
    assert "experiment 'exp' already exists" in capsys.readouterr().err


def test_variants_mix_translators_and_recurrent_methods():
    plan = build_plan("variants", get_preset("demo"), translators=["convlstm", "gsta"])
    assert [(t.name, t.group, t.overrides) for t in plan.trials] == [
        ("convlstm-s0", "convlstm", {"model.method": "convlstm", "train.seed": 0}),
        ("gsta-s0", "gsta", {"model.translator": "gsta", "train.seed": 0})]
    recurrent_base = get_preset("mmnist_predrnn")
    plan = build_plan("variants", recurrent_base, translators=["gsta"])
    assert plan.trials[0].overrides == {"model.method": "simvp", "model.translator": "gsta",
                                        "train.seed": recurrent_base.train.seed}


def test_a_recurrent_variant_the_recipe_cannot_run_fails_before_ray(tmp_path, capsys):
    args = ["--translators", "gsta,predrnnpp", "--set", "model.recurrent.num_hidden=8",
            "--storage", str(tmp_path)]
    assert load_job("tune").main(args) == 2
    assert "predrnnpp needs >= 2 layers" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
