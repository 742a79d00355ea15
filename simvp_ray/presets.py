"""Named run presets: OpenSTL's SimVP recipes per dataset and translator, plus `demo`.

`PRESETS["taxibj_gsta"]()` returns an RunConfig. Names are `<dataset>_<translator>`
for the datasets below and every translator, e.g. `mmnist_incepu`, `weather_t2m_swin`.
Hyper-parameters are OpenSTL's merged configs (spec/models.md section 3). The recurrent
baselines are `mmnist_<method>` (`mmnist_convlstm`, `mmnist_predrnn`, ...; spec/rnn.md 4).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from simvp_ray.config import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    RecurrentConfig,
    RunConfig,
    ScalingConfig,
    TrainConfig,
    override,
)


@dataclass(frozen=True)
class DatasetRecipe:
    """What every translator shares on one dataset in OpenSTL's configs."""

    model: ModelConfig
    optim: OptimConfig
    epochs: int  # from OpenSTL's docs (configs leave it to the command line)
    lrs: dict[str, float]  # per-translator peak learning rate
    overrides: dict[str, dict[str, object]]  # per-translator quirks, dotted keys
    data_url: str  # where `jobs/prepare_data.py` puts this dataset by default


# The translator registry's names (simvp_ray.models.TRANSLATORS), in its order. Written out
# because presets are plain data that import only `config` (no torch); tests/test_config.py
# fails when a translator is registered without presets, or a preset names no translator.
TRANSLATOR_NAMES = ("incepu", "gsta", "tau", "van", "moga", "convmixer", "convnext", "hornet",
                    "poolformer", "mlp", "swin", "uniformer", "vit")


def _lrs(default: float, **per_translator: float) -> dict[str, float]:
    unknown = sorted(set(per_translator) - set(TRANSLATOR_NAMES))
    if unknown:
        raise ValueError(f"learning rates for unknown translators {unknown}; valid: "
                         f"{', '.join(TRANSLATOR_NAMES)}")
    return {name: per_translator.get(name, default) for name in TRANSLATOR_NAMES}


RECIPES: dict[str, DatasetRecipe] = {
    # Moving MNIST 10 -> 10 frames of 64x64; onecycle, 200 epochs (2000 for the long runs).
    "mmnist": DatasetRecipe(
        model=ModelConfig(in_frames=10, out_frames=10, channels=1, height=64, width=64,
                          spatial_channels=64, translator_channels=512, num_spatial_layers=4,
                          num_translator_blocks=8, drop_path=0.0),
        optim=OptimConfig(schedule="onecycle"),
        epochs=200,
        lrs=_lrs(1e-3, convmixer=1e-2, convnext=1e-2, uniformer=5e-4, vit=5e-4),
        overrides={},
        data_url="data/mmnist.zarr",
    ),
    # TaxiBJ 4 -> 4 frames of 2x32x32 (in/out flow); cosine with 5 warm-up epochs, 50 epochs.
    "taxibj": DatasetRecipe(
        model=ModelConfig(in_frames=4, out_frames=4, channels=2, height=32, width=32,
                          spatial_channels=32, translator_channels=256, num_spatial_layers=2,
                          num_translator_blocks=8, drop_path=0.1),
        optim=OptimConfig(schedule="cosine", warmup_epochs=5),
        epochs=50,
        lrs=_lrs(1e-3, tau=5e-4, mlp=1e-2, poolformer=5e-4, swin=5e-4, uniformer=5e-4,
                 vit=5e-4, gsta=5e-4),
        overrides={},
        data_url="data/taxibj.zarr",
    ),
    # WeatherBench 2 m temperature at 5.625 deg, 12 -> 12 hourly frames of 32x64; cosine.
    "weather_t2m": DatasetRecipe(
        model=ModelConfig(in_frames=12, out_frames=12, channels=1, height=32, width=64,
                          spatial_channels=32, translator_channels=256, num_spatial_layers=2,
                          num_translator_blocks=8, drop_path=0.1),
        optim=OptimConfig(schedule="cosine", warmup_epochs=0),
        epochs=50,
        lrs=_lrs(1e-3, convmixer=1e-2, convnext=1e-2, incepu=1e-2, moga=5e-3, poolformer=5e-4,
                 uniformer=5e-3, van=5e-3, gsta=5e-3, tau=5e-3),
        # OpenSTL's t2m TAU config sets no schedule, so it trains with the default onecycle.
        overrides={"moga": {"model.drop_path": 0.2}, "tau": {"optim.schedule": "onecycle"}},
        data_url="data/weather_t2m.zarr",
    ),
    # WeatherBench multi-variable (4 variables x 3 levels = 12 channels), 4 -> 4 six-hourly.
    # OpenSTL's mv gSTA config says hid_T=512, but its published row (9.96M params, 5.25G)
    # was made with 256 like every other mv config: we use 256.
    "weather_mv": DatasetRecipe(
        model=ModelConfig(in_frames=4, out_frames=4, channels=12, height=32, width=64,
                          spatial_channels=32, translator_channels=256, num_spatial_layers=2,
                          num_translator_blocks=8, drop_path=0.1),
        optim=OptimConfig(schedule="cosine", warmup_epochs=5),
        epochs=50,
        lrs=_lrs(5e-3, gsta=1e-3, poolformer=1e-3, uniformer=1e-3, vit=1e-3),
        overrides={},
        data_url="data/weather_mv.zarr",
    ),
}


def recipe_preset(dataset: str, translator: str) -> RunConfig:
    recipe = RECIPES[dataset]
    config = RunConfig(
        name=f"{dataset}_{translator}",
        model=dataclasses.replace(recipe.model, translator=translator),
        data=DataConfig(url=recipe.data_url),
        optim=dataclasses.replace(recipe.optim, lr=recipe.lrs[translator]),
        # OpenSTL's TAU method adds the differential-divergence term to the MSE.
        train=TrainConfig(epochs=recipe.epochs, loss="tau" if translator == "tau" else "mse"),
    )
    return override(config, recipe.overrides.get(translator, {}))


# OpenSTL's configs/mmnist/<Method>.py (spec/rnn.md section 4): preset -> (method, peak lr,
# recurrent settings). All: Adam, no weight decay, onecycle per step, batch 16, 200 epochs.
RECURRENT_RECIPES: dict[str, tuple[str, float, RecurrentConfig]] = {
    "convlstm": ("convlstm", 5e-4, RecurrentConfig()),  # ConvLSTM-S
    "convlstm_l": ("convlstm", 5e-4, RecurrentConfig(num_hidden=(192, 192, 192, 192))),
    "predrnn": ("predrnn", 5e-4, RecurrentConfig()),
    "predrnnpp": ("predrnnpp", 1e-4, RecurrentConfig()),
    "predrnnv2": ("predrnnv2", 5e-4, RecurrentConfig(reverse_scheduled_sampling=True)),
    "mim": ("mim", 5e-4, RecurrentConfig()),
    "e3dlstm": ("e3dlstm", 1e-4, RecurrentConfig()),
    "mau": ("mau", 1e-3, RecurrentConfig(num_hidden=(64, 64, 64, 64), patch_size=1)),
    "phydnet": ("phydnet", 1e-3, RecurrentConfig()),
}


def recurrent_preset(name: str) -> RunConfig:
    method, lr, recurrent = RECURRENT_RECIPES[name]
    recipe = RECIPES["mmnist"]
    return RunConfig(
        name=f"mmnist_{name}",
        model=dataclasses.replace(recipe.model, method=method, recurrent=recurrent),
        data=DataConfig(url=recipe.data_url),
        optim=dataclasses.replace(recipe.optim, lr=lr),
        train=TrainConfig(epochs=recipe.epochs),
    )


def demo() -> RunConfig:
    """A small gSTA (SimVPv2) on the embedded synthetic data: minutes on 2 CPU cores."""
    return RunConfig(
        name="demo",
        model=ModelConfig(translator="gsta", in_frames=4, out_frames=4, channels=2, height=32,
                          width=32, spatial_channels=16, translator_channels=64,
                          num_spatial_layers=2, num_translator_blocks=2, mlp_ratio=4.0),
        data=DataConfig(url="", batch_size=16, val_batch_size=32),
        optim=OptimConfig(lr=3e-3, schedule="onecycle"),
        train=TrainConfig(epochs=6, seed=0),
        # Ray gives a worker floor(CPUs) torch threads: both cores of a 2-core laptop
        scaling=ScalingConfig(num_workers=1, cpus_per_worker=2.0),
    )


def _all_presets() -> dict[str, Callable[[], RunConfig]]:
    presets: dict[str, Callable[[], RunConfig]] = {"demo": demo}
    for dataset, recipe in RECIPES.items():
        for translator in recipe.lrs:
            presets[f"{dataset}_{translator}"] = (
                lambda d=dataset, t=translator: recipe_preset(d, t))
    for name in RECURRENT_RECIPES:
        presets[f"mmnist_{name}"] = lambda n=name: recurrent_preset(n)
    return presets


PRESETS: dict[str, Callable[[], RunConfig]] = _all_presets()


def get_preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    return PRESETS[name]()
