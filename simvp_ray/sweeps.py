"""Experiments (Tune sweeps) as data, before any Ray: epoch scaling, translator variants, and a
search space, each a plan of named trials checked against the store (`check_trials`) on the
driver. `simvp_ray.distributed.tune` runs a plan; the manifest (`simvp_ray.runs`) records it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from simvp_ray.config import RunConfig, from_dict, override, to_dict
from simvp_ray.data import open_dataset
from simvp_ray.models import TRANSLATORS
from simvp_ray.models.recurrent import RECURRENT_MODELS
from simvp_ray.plan import check_plan
from simvp_ray.runs import ExperimentManifest, TrialSpec
from simvp_ray.train.methods import check_method

METRIC = "val/mse"
DEFAULT_BUDGETS = (1, 3, 5, 10)  # epoch multipliers of SimVPv2's epoch-scaling table
# An OK search space over optimiser and model knobs when none is given (dotted config keys).
DEFAULT_SPACE = ("optim.lr=loguniform:1e-4:1e-2", "optim.weight_decay=choice:0,0.01,0.05",
                 "model.drop_path=uniform:0:0.2")
# The distributions of a search space entry KEY=DIST:ARGS (simvp_ray.distributed.tune maps each
# to its tune.* sampler)
DISTRIBUTION_KINDS = (
    "choice",  # choice:a,b,c   one value drawn per trial
    "grid",  # grid:a,b     every value, each its own trial (x num samples)
    "uniform",  # uniform:low:high
    "loguniform",  # loguniform:low:high
    "randint",  # randint:low:high (high excluded)
)
RANGE_DISTRIBUTIONS = ("uniform", "loguniform", "randint")


@dataclass(frozen=True)
class ExperimentPlan:
    """An experiment as data: its planned trials, or the space a search draws them from."""

    kind: str
    trials: list[TrialSpec]  # empty for a search: Tune draws them from `space`
    space: dict[str, str] = field(default_factory=dict)  # search: dotted key -> "dist:args"
    num_samples: int = 1


# ---------------------------------------------------------------------------------------
# Experiments as data: name -> builder of the plan


def parse_budgets(text: str | Sequence[Any]) -> tuple[int, ...]:
    """"1,3,5,10" -> (1, 3, 5, 10); every budget is a positive integer multiple of epochs."""
    items = text.split(",") if isinstance(text, str) else list(text)
    budgets = []
    for item in items:
        value = str(item).strip()
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"epoch budget {value!r} is not a positive integer (budgets "
                             f"multiply train.epochs, e.g. {','.join(map(str, DEFAULT_BUDGETS))})")
        budgets.append(int(value))
    if not budgets:
        raise ValueError("no epoch budgets given, e.g. 1,3,5,10")
    return tuple(budgets)


def check_translators(names: Sequence[str]) -> tuple[str, ...]:
    """Variants: SimVP translators and / or OpenSTL's recurrent methods, by name."""
    unknown = [name for name in names if name not in TRANSLATORS and name not in RECURRENT_MODELS]
    if unknown or not names:
        raise ValueError(f"unknown translator(s) {unknown or list(names)}; valid: "
                         f"{', '.join([*TRANSLATORS, *RECURRENT_MODELS])} (translators, then "
                         "recurrent methods)")
    return tuple(names)


def variant_overrides(name: str, base: RunConfig) -> dict[str, Any]:
    """The config changes of one variant: a recurrent method, or a SimVP translator."""
    if name in RECURRENT_MODELS:
        return {"model.method": name}
    method = {} if base.model.method == "simvp" else {"model.method": "simvp"}
    return {**method, "model.translator": name}


def seeds_of(base: RunConfig, num_seeds: int) -> list[int]:
    if num_seeds < 1:
        raise ValueError(f"--seeds {num_seeds}: need at least 1 seed")
    return [base.train.seed + i for i in range(num_seeds)]


def epoch_scaling_plan(base: RunConfig, *, num_seeds: int = 1,
                       budgets: Sequence[int] = DEFAULT_BUDGETS, **_: Any) -> ExperimentPlan:
    """The preset's epochs x each budget; onecycle / cosine are built from train.epochs, so the
    learning-rate schedule stretches to each budget."""
    budgets = parse_budgets(budgets)
    trials = [TrialSpec(f"x{budget}-s{seed}", f"x{budget}", seed,
                        {"train.epochs": base.train.epochs * budget, "train.seed": seed})
              for budget in budgets for seed in seeds_of(base, num_seeds)]
    return ExperimentPlan("epoch-scaling", trials)


def variants_plan(base: RunConfig, *, num_seeds: int = 1,
                  translators: Sequence[str] = TRANSLATORS, **_: Any) -> ExperimentPlan:
    """Every translator (or recurrent method) under the same recipe (the base config's
    optimiser and epochs; a recurrent method's settings from model.recurrent)."""
    trials = [TrialSpec(f"{name}-s{seed}", name, seed,
                        {**variant_overrides(name, base), "train.seed": seed})
              for name in check_translators(translators) for seed in seeds_of(base, num_seeds)]
    return ExperimentPlan("variants", trials)


def search_plan(base: RunConfig, *, num_seeds: int = 1,
                space: Sequence[str] = DEFAULT_SPACE, num_samples: int = 8,
                **_: Any) -> ExperimentPlan:
    """`num_samples` draws from `space` (dotted keys, the --set mechanism), ASHA on val/mse."""
    if num_seeds != 1:
        raise ValueError(f"--seeds {num_seeds}: a search draws one configuration per trial "
                         "with the base seed; repeat a chosen setting with --experiment variants")
    if num_samples < 1:
        raise ValueError(f"--samples {num_samples}: need at least 1")
    return ExperimentPlan("search", [], parse_space(space, base), num_samples)


EXPERIMENTS: dict[str, Callable[..., ExperimentPlan]] = {
    "epoch-scaling": epoch_scaling_plan,
    "variants": variants_plan,
    "search": search_plan,
}


def build_plan(kind: str, base: RunConfig, **options: Any) -> ExperimentPlan:
    if kind not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {kind!r}; valid: {', '.join(EXPERIMENTS)}")
    plan = EXPERIMENTS[kind](base, **options)
    for trial in plan.trials:  # every planned config must be valid before anything runs
        check_method(override(base, trial.overrides).model)
    return plan


def space_bounds(key: str, spec: str, base: RunConfig) -> list[Any]:
    """The values of one search-space entry a trial may get at the extremes: both ends of a
    range (randint's high is excluded), every value of a choice or grid."""
    kind = spec.partition(":")[0]
    values = space_values(key, spec, base)
    if kind == "randint":
        return [values[0], values[1] - 1]
    return values


def check_trials(plan: ExperimentPlan, base: RunConfig) -> None:
    """`check_plan` on every planned trial, and on each bound of a search space, before the
    first trial starts (`base` resolved): a bad trial is an error now, not hours later."""
    dataset = open_dataset(base.data.url)
    configs = [(trial.name, override(base, trial.overrides)) for trial in plan.trials]
    if not plan.trials:
        configs.append(("the base config", base))
    for key, spec in plan.space.items():
        configs += [(f"search space {key}={value!r}", override(base, {key: value}))
                    for value in space_bounds(key, spec, base)]
    for label, config in configs:
        try:
            check_plan(config, dataset)
        except ValueError as error:
            raise ValueError(f"{label}: {error}") from None


def parse_space(items: Sequence[str], base: RunConfig) -> dict[str, str]:
    """["optim.lr=loguniform:1e-4:1e-2", ...] -> {"optim.lr": "loguniform:1e-4:1e-2"}, checked:
    every key is a config key, every value fits its field, every translator is registered."""
    space = {}
    for item in items:
        key, sep, spec = item.partition("=")
        kind, _, args = spec.partition(":")
        if not sep or kind not in DISTRIBUTION_KINDS or not args:
            raise ValueError(f"search space entry {item!r} is not KEY=DIST:ARGS with DIST one of "
                             f"{', '.join(DISTRIBUTION_KINDS)} "
                             "(e.g. optim.lr=loguniform:1e-4:1e-2)")
        values = space_values(key, spec, base)
        if kind in RANGE_DISTRIBUTIONS and (len(values) != 2 or not values[0] < values[1]):
            raise ValueError(f"search space {key}: {kind} needs LOW:HIGH with LOW < HIGH, "
                             f"got {args!r}")
        space[key.strip()] = spec
    if not space:
        raise ValueError("the search space is empty: give KEY=DIST:ARGS entries")
    return space


def space_values(key: str, spec: str, base: RunConfig) -> list[Any]:
    """The typed values of one "dist:args" entry, each checked against the config."""
    kind, _, args = spec.partition(":")
    parts = args.split(":" if kind in RANGE_DISTRIBUTIONS else ",")
    values = []
    for part in parts:
        try:
            changed = override(base, {key.strip(): part.strip()})
        except ValueError as error:
            raise ValueError(f"search space: {error}") from None
        section, _, leaf = key.strip().rpartition(".")
        value = getattr(getattr(changed, section) if section else changed, leaf)
        if key.strip() == "model.translator" and value not in TRANSLATORS:
            raise ValueError(f"search space: unknown translator {value!r}; valid: "
                             f"{', '.join(TRANSLATORS)}")
        values.append(value)
    return values


def plan_manifest(plan: ExperimentPlan, base: RunConfig, runs: str) -> ExperimentManifest:
    """What `simvp_experiment.json` records of a plan (`base` resolved)."""
    return ExperimentManifest(kind=plan.kind, metric=METRIC, base=to_dict(base),
                              trials=list(plan.trials), space=plan.space,
                              num_samples=plan.num_samples, runs=runs)


def manifest_plan(manifest: ExperimentManifest) -> tuple[ExperimentPlan, RunConfig]:
    """The plan and base config a manifest recorded: a restored experiment is the one started."""
    return (ExperimentPlan(manifest.kind, list(manifest.trials), manifest.space,
                           manifest.num_samples), from_dict(RunConfig, manifest.base))
