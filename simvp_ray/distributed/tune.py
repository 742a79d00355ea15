"""Ray Tune experiments over Train V2: epoch scaling, translator variants, and a search.

`run_tune("variants", config, storage=..., name=...)` runs one Tune trial per (variant, seed);
each trial fits a distributed TorchTrainer (`trainer.build_trainer`, the same one `jobs/train.py`
runs) and writes `<experiment>/runs/<trial>/result.json`: the run summary plus the model cost
(params, FLOPs, inference samples/s), so `simvp_ray.analysis.experiment` never needs Ray.
Trial names are deterministic (`gsta-s0`, `x3-s1`, `trial-002`) and name the Train run, so a
restored experiment resumes each unfinished trial from its own latest checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from simvp_ray.config import RunConfig, from_dict, override, to_dict
from simvp_ray.distributed.cluster import check_resources, ensure_ray
from simvp_ray.distributed.cost import measure_cost
from simvp_ray.distributed.trainer import build_trainer, resolve_data, summarize
from simvp_ray.runs import (
    MANIFEST_FILE,
    RUNS_FOLDER,
    TrialSpec,
    check_resume,
    check_storage_writable,
    experiment_exists,
    read_manifest,
    read_result,
    storage_root,
    write_manifest,
    write_result,
)
from simvp_ray.sweeps import (
    DISTRIBUTION_KINDS,
    METRIC,
    ExperimentPlan,
    build_plan,
    check_trials,
    manifest_plan,
    plan_manifest,
    space_values,
)

# Every trial (a function trainable) holds this much CPU itself; its Train workers hold
# scaling.cpus_per_worker each. {"cpu": 0} is rejected by Tune (spec/ray.md 4).
TRIAL_CPUS = 0.1
# sweeps.DISTRIBUTION_KINDS -> Tune's samplers (the kinds are parsed without Ray)
DISTRIBUTIONS: dict[str, Callable[[list[Any]], Any]] = {
    "choice": tune.choice,
    "grid": tune.grid_search,
    "uniform": lambda v: tune.uniform(*v),
    "loguniform": lambda v: tune.loguniform(*v),
    "randint": lambda v: tune.randint(*v),
}
assert tuple(DISTRIBUTIONS) == DISTRIBUTION_KINDS


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
    finished = read_result(runs, name)
    if finished is not None:
        # finished before an interruption Tune's state did not record yet: report, do not re-run
        tune.report({**finished.history[-1], "reused": True})
        return
    start = time.time()
    trainer = build_trainer(config, storage=runs, name=name, callbacks=[TuneReportCallback()])
    result = trainer.fit()
    summary = summarize(result, config, runs, name, wall_time=time.time() - start)
    summary = replace(summary, cost=measure_cost(config), trial=TrialSpec(
        name=name, group=spec["group"] or name, seed=config.train.seed,
        overrides=spec["overrides"]))
    write_result(runs, name, summary)


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


def run_tune(kind: str, base: RunConfig, *, storage: str = "runs",
             name: str | None = None, max_concurrent: int = 0, resume: bool = False,
             **options: Any) -> dict[str, Any]:
    """Run (or with `resume`, continue) an experiment; returns its URL and trial counts.

    `options` go to the experiment's builder: num_seeds, budgets, translators, space,
    num_samples.
    """
    name = name or f"{kind}-{base.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    url = f"{storage_root(storage)}/{name}"
    check_resume("experiment", name, storage, experiment_exists(url), resume,
                 f" (no {MANIFEST_FILE} in {url})")
    if resume:
        # the stored plan wins: a restored experiment is the one that was started
        plan, base = manifest_plan(read_manifest(url))
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
        write_manifest(url, plan_manifest(plan, base, RUNS_FOLDER))
        param_space = {"base": to_dict(base), "runs": f"{url}/{RUNS_FOLDER}",
                       "spec": (tune.grid_search([t.to_dict() for t in plan.trials]) if plan.trials
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

