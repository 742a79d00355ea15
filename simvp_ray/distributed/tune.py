"""Ray Tune experiments over Train V2: epoch scaling, translator variants, and a search.

`run_tune("variants", config, storage=..., name=...)` runs one Tune trial per (variant, seed);
each trial fits a distributed TorchTrainer (`trainer.build_trainer`, the same one `jobs/train.py`
runs) and writes `<experiment>/runs/<trial>/result.json`: the run summary plus the model cost
(params, FLOPs, inference samples/s), so `simvp_ray.analysis.experiment` never needs Ray.
Trial names are deterministic (`gsta-s0`, `x3-s1`, `trial-002`) and name the Train run, so a
restored experiment resumes each unfinished trial from its own latest checkpoint.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.fs
import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from simvp_ray.analysis.experiment import MANIFEST_FILE
from simvp_ray.config import RunConfig, from_dict, override, to_dict
from simvp_ray.data import open_dataset
from simvp_ray.distributed.cost import measure_cost
from simvp_ray.distributed.trainer import (
    RESULT_FILE,
    build_trainer,
    check_resources,
    check_storage_writable,
    ensure_ray,
    resolve_data,
    storage_filesystem,
    summarize,
    write_result,
)
from simvp_ray.models import TRANSLATORS
from simvp_ray.models.recurrent import RECURRENT_MODELS
from simvp_ray.plan import check_plan
from simvp_ray.train.methods import check_method

RUNS_FOLDER = "runs"  # <experiment>/runs/<trial>: the Train run (checkpoints) + result.json
METRIC = "val/mse"
DEFAULT_BUDGETS = (1, 3, 5, 10)  # epoch multipliers of SimVPv2's epoch-scaling table
# Every trial (a function trainable) holds this much CPU itself; its Train workers hold
# scaling.cpus_per_worker each. {"cpu": 0} is rejected by Tune (spec/ray.md 4).
TRIAL_CPUS = 0.1
# An OK search space over optimiser and model knobs when none is given (dotted config keys).
DEFAULT_SPACE = ("optim.lr=loguniform:1e-4:1e-2", "optim.weight_decay=choice:0,0.01,0.05",
                 "model.drop_path=uniform:0:0.2")
DISTRIBUTIONS: dict[str, Callable[[list[Any]], Any]] = {
    "choice": tune.choice,  # choice:a,b,c   one value drawn per trial
    "grid": tune.grid_search,  # grid:a,b     every value, each its own trial (x num samples)
    "uniform": lambda v: tune.uniform(*v),  # uniform:low:high
    "loguniform": lambda v: tune.loguniform(*v),  # loguniform:low:high
    "randint": lambda v: tune.randint(*v),  # randint:low:high (high excluded)
}
RANGE_DISTRIBUTIONS = ("uniform", "loguniform", "randint")


@dataclass(frozen=True)
class TrialSpec:
    """One planned trial: its name, the table row it belongs to, and its config changes."""

    name: str  # deterministic Tune trial name, Train run name and folder name
    group: str  # the table row: a translator, an epoch budget ("x3"), or the trial itself
    seed: int
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted keys on the base config


@dataclass(frozen=True)
class ExperimentPlan:
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
        if not sep or kind not in DISTRIBUTIONS or not args:
            raise ValueError(f"search space entry {item!r} is not KEY=DIST:ARGS with DIST one of "
                             f"{', '.join(DISTRIBUTIONS)} (e.g. optim.lr=loguniform:1e-4:1e-2)")
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


def tune_space(space: dict[str, str], base: RunConfig) -> dict[str, Any]:
    return {key: DISTRIBUTIONS[spec.partition(":")[0]](space_values(key, spec, base))
            for key, spec in space.items()}


# ---------------------------------------------------------------------------------------
# The trial: one TorchTrainer fit, its summary and its model cost


def trial_name(trial: Any) -> str:
    """Planned trials keep their plan name; search trials are numbered in creation order."""
    return trial.config["spec"]["name"] or f"trial-{int(trial.trial_id.rsplit('_', 1)[-1]):03d}"


def run_trial(trial_config: dict[str, Any]) -> None:
    """Tune function trainable: fit one Train run named after the trial, then summarise it."""
    spec = trial_config["spec"]
    name = tune.get_context().get_trial_name()
    config = override(from_dict(RunConfig, trial_config["base"]), spec["overrides"])
    runs = trial_config["runs"]
    finished = read_json(runs, f"{name}/{RESULT_FILE}")
    if finished is not None:
        # finished before an interruption Tune's state did not record yet: report, do not re-run
        tune.report({**finished["history"][-1], "reused": True})
        return
    start = time.time()
    trainer = build_trainer(config, storage=runs, name=name, callbacks=[TuneReportCallback()])
    result = trainer.fit()
    summary = summarize(result, config, runs, name, wall_time=time.time() - start)
    summary["cost"] = measure_cost(config)
    summary["trial"] = {"name": name, "group": spec["group"] or name, "seed": config.train.seed,
                        "overrides": spec["overrides"]}
    write_result(runs, name, summary)


def read_json(storage: str, relative: str) -> dict[str, Any] | None:
    fs, root = storage_filesystem(storage)
    path = f"{root}/{relative}"
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        return json.loads(stream.read())


# ---------------------------------------------------------------------------------------
# The driver


def trial_cpus(config: RunConfig) -> float:
    return TRIAL_CPUS + config.scaling.num_workers * config.scaling.cpus_per_worker


def trainable() -> Any:
    return tune.with_resources(run_trial, {"cpu": TRIAL_CPUS})


def tune_config(plan: ExperimentPlan, base: RunConfig,
                max_concurrent: int) -> tune.TuneConfig:
    scheduler = None
    if plan.kind == "search":
        # time_attr "epoch" (reported by the loop) stays monotonic across a restore, unlike
        # training_iteration (spec/ray.md 4). Rungs at epoch 1, 2, 4, ... (0-based): a trial
        # is first compared with the others after its second epoch
        scheduler = ASHAScheduler(time_attr="epoch", max_t=base.train.epochs, grace_period=1,
                                  reduction_factor=2)
    return tune.TuneConfig(metric=METRIC, mode="min", scheduler=scheduler,
                           num_samples=plan.num_samples, max_concurrent_trials=max_concurrent,
                           trial_name_creator=trial_name, trial_dirname_creator=trial_name)


def storage_root(storage: str) -> str:
    """An absolute local folder or an s3:// URL, as Tune's storage_path takes it."""
    return storage.rstrip("/") if "://" in storage else str(Path(storage).resolve())


def run_tune(kind: str, base: RunConfig, *, storage: str = "runs",
             name: str | None = None, max_concurrent: int = 0, resume: bool = False,
             **options: Any) -> dict[str, Any]:
    """Run (or with `resume`, continue) an experiment; returns its URL and trial counts.

    `options` go to the experiment's builder: num_seeds, budgets, translators, space,
    num_samples.
    """
    name = name or f"{kind}-{base.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    url = f"{storage_root(storage)}/{name}"
    manifest = read_json(url, MANIFEST_FILE)
    if manifest is not None and not resume:
        raise ValueError(f"experiment {name!r} already exists under {storage}: pass --resume "
                         "to continue it, or choose another --name (nothing was overwritten)")
    if resume and manifest is None:
        raise ValueError(f"cannot resume: no experiment {name!r} under {storage} "
                         f"(no {MANIFEST_FILE} in {url})")
    if resume:
        # the stored plan wins: a restored experiment is the one that was started
        base = from_dict(RunConfig, manifest["base"])
        plan = ExperimentPlan(manifest["kind"], [TrialSpec(**t) for t in manifest["trials"]],
                              manifest["space"], manifest["num_samples"])
    else:
        plan = build_plan(kind, base, **options)
        check_storage_writable(storage)
        base = resolve_data(base)
        check_trials(plan, base)
    ensure_ray(2 * trial_cpus(base))  # a local Ray holds two trials side by side
    check_resources(base)
    if not max_concurrent:
        # as many trials as the cluster holds, less one CPU for Ray Data's read tasks: with
        # every CPU in Train workers the reads never run and the trials hang (spec/ray.md 3.4)
        cpus = ray.cluster_resources().get("CPU", 1.0)
        max_concurrent = max(1, int((cpus - 1) // trial_cpus(base)))
    if resume:
        if not tune.Tuner.can_restore(url):
            raise ValueError(f"cannot resume {name!r}: it stopped before Tune saved its state "
                             f"in {url}; start it again under a new --name")
        # errored trials run again too, from their latest checkpoint (a lost node, say)
        tuner = tune.Tuner.restore(url, trainable(), resume_unfinished=True,
                                   resume_errored=True)
    else:
        write_manifest(url, plan, base)
        param_space = {"base": to_dict(base), "runs": f"{url}/{RUNS_FOLDER}",
                       "spec": (tune.grid_search([asdict(t) for t in plan.trials]) if plan.trials
                                else {"name": None, "group": None, "seed": base.train.seed,
                                      "overrides": tune_space(plan.space, base)})}
        tuner = tune.Tuner(trainable(), param_space=param_space,
                           tune_config=tune_config(plan, base, max_concurrent),
                           run_config=tune.RunConfig(
                               name=name, storage_path=storage_root(storage),
                               failure_config=tune.FailureConfig(max_failures=0),
                               verbose=1))  # status tables, not every trial's whole config
    grid = tuner.fit()
    statuses = [result.error is None for result in grid]
    return {"url": url, "kind": plan.kind, "trials": len(statuses),
            "errors": statuses.count(False)}


def write_manifest(url: str, plan: ExperimentPlan, base: RunConfig) -> None:
    fs, root = storage_filesystem(url)
    fs.create_dir(root, recursive=True)
    manifest = {"kind": plan.kind, "metric": METRIC, "base": to_dict(base),
                "trials": [asdict(t) for t in plan.trials], "space": plan.space,
                "num_samples": plan.num_samples, "runs": RUNS_FOLDER}
    with fs.open_output_stream(f"{root}/{MANIFEST_FILE}") as stream:
        stream.write(json.dumps(manifest, indent=2).encode())
