"""Config dataclasses: dotted overrides, type checks, exact dict / JSON round trip."""

from __future__ import annotations

import dataclasses
import json

import pytest

from simvp_ray.config import (
    RunConfig,
    flatten,
    from_dict,
    from_json,
    override,
    to_dict,
    to_json,
    valid_keys,
)
from simvp_ray.models import TRANSLATORS
from simvp_ray.models.recurrent import RECURRENT_MODELS
from simvp_ray.presets import (
    PRESETS,
    RECIPES,
    RECURRENT_RECIPES,
    TRANSLATOR_NAMES,
    _lrs,
    get_preset,
)


def test_override_with_cli_strings():
    config = override(RunConfig(), ["model.translator=swin", "optim.lr=3e-4",
                                           "train.compile=true", "scaling.num_workers=2"])
    assert config.model.translator == "swin"
    assert config.optim.lr == 3e-4
    assert config.train.compile is True
    assert config.scaling.num_workers == 2


def test_override_with_python_values_as_tune_passes_them():
    config = override(RunConfig(), {"optim.lr": 1, "model.drop_path": 0.2,
                                           "train.epochs": 3.0})
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)
    assert config.train.epochs == 3 and isinstance(config.train.epochs, int)


def test_override_leaves_the_original_untouched():
    base = RunConfig()
    override(base, {"optim.lr": 0.5})
    assert base.optim.lr == RunConfig().optim.lr


@pytest.mark.parametrize("item, message", [
    ("optim.learning_rate=1", "unknown config key 'optim.learning_rate'; valid keys: "
                              "optim.optimizer, optim.lr"),
    ("nothing=1", "unknown config key 'nothing'; valid keys: name, model.translator"),
    ("optim=1", "'optim' is a section, not a value"),
    ("optim.lr.x=1", "unknown config key 'optim.lr.x'"),
    ("optim.lr=fast", "optim.lr: expected float, got 'fast'"),
    ("train.epochs=2.5", "train.epochs: expected int, got '2.5'"),
    ("train.compile=maybe", "expected a boolean"),
    ("optim.lr", "not of the form key=value"),
])
def test_bad_overrides_are_value_errors(item, message):
    with pytest.raises(ValueError, match=message.replace("(", "\\(").replace(")", "\\)")):
        override(RunConfig(), [item])


def test_wrong_python_types_are_value_errors():
    with pytest.raises(ValueError, match="train.epochs: expected int"):
        override(RunConfig(), {"train.epochs": 2.5})
    with pytest.raises(ValueError, match="model.translator: expected str"):
        override(RunConfig(), {"model.translator": 3})
    with pytest.raises(ValueError, match="train.compile: expected bool"):
        override(RunConfig(), {"train.compile": 1})


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_round_trips_exactly(name):
    config = get_preset(name)
    assert from_dict(RunConfig, to_dict(config)) == config
    assert from_json(RunConfig, to_json(config)) == config
    assert json.loads(to_json(config)) == to_dict(config)


def test_from_dict_rejects_unknown_keys_and_lists_valid_ones():
    data = to_dict(RunConfig())
    data["model"]["hid_S"] = 16
    with pytest.raises(ValueError, match="ModelConfig: unknown keys \\['hid_S'\\]; valid keys: "
                                         "translator, in_frames"):
        from_dict(RunConfig, data)


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        RunConfig().model.translator = "swin"


def test_flatten_matches_valid_keys():
    config = RunConfig()
    assert list(flatten(config)) == valid_keys(config)
    assert flatten(config)["model.translator"] == "gsta"


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown preset 'taxibj_lstm'; valid: demo, mmnist_"):
        get_preset("taxibj_lstm")


def test_presets_follow_openstl_recipes():
    taxibj = get_preset("taxibj_gsta")
    assert (taxibj.optim.lr, taxibj.optim.schedule, taxibj.optim.warmup_epochs) == (5e-4,
                                                                                     "cosine", 5)
    assert taxibj.model.drop_path == 0.1 and taxibj.train.epochs == 50
    mmnist = get_preset("mmnist_incepu")
    assert (mmnist.model.spatial_channels, mmnist.model.translator_channels) == (64, 512)
    assert mmnist.optim.schedule == "onecycle" and mmnist.train.epochs == 200
    assert get_preset("weather_t2m_tau").optim.schedule == "onecycle"  # OpenSTL quirk kept
    assert get_preset("weather_t2m_moga").model.drop_path == 0.2
    assert get_preset("mmnist_tau").train.loss == "tau"


def test_presets_cover_the_translator_registry_exactly():
    """Presets are plain data (no torch), so they spell out the registry's names: every
    registered translator gets a preset on every dataset, and no preset names another."""
    assert TRANSLATOR_NAMES == TRANSLATORS
    for dataset, recipe in RECIPES.items():
        assert tuple(recipe.lrs) == TRANSLATORS, dataset
        assert set(recipe.overrides) <= set(TRANSLATORS), dataset
        for translator in TRANSLATORS:
            assert get_preset(f"{dataset}_{translator}").model.translator == translator


def test_presets_cover_the_recurrent_registry_exactly():
    methods = {method for method, _, _ in RECURRENT_RECIPES.values()}
    assert methods == set(RECURRENT_MODELS)
    for method in RECURRENT_MODELS:  # each method's base recipe is named after it
        assert get_preset(f"mmnist_{method}").model.method == method


def test_a_learning_rate_for_an_unknown_translator_is_refused():
    with pytest.raises(ValueError, match="unknown translators \\['gstaa'\\]; valid: incepu, gsta"):
        _lrs(1e-3, gstaa=1e-2)
