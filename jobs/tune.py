"""Run an experiment (a Ray Tune sweep) whose trials are each one training run on Ray Train.

    python jobs/tune.py --experiment variants --translators gsta,incepu --seeds 3 \\
        --storage runs --name variants-demo               # translators x seeds, one recipe
    python jobs/tune.py --experiment epoch-scaling --budgets 1,3,5,10 --seeds 3 \\
        --preset taxibj_gsta --storage s3://bucket/tune --name taxibj-scaling
    python jobs/tune.py --experiment search --space optim.lr=loguniform:1e-4:1e-2 \\
        model.drop_path=uniform:0:0.2 --samples 16         # ASHA early stopping on val/mse
    python jobs/tune.py --storage runs --name variants-demo --resume   # continue a stopped one
    python jobs/analyze.py runs/variants-demo               # the table and plots
"""

from __future__ import annotations

import argparse
import sys

from simvp_ray.config import override
from simvp_ray.distributed.tune import run_tune
from simvp_ray.models import TRANSLATORS
from simvp_ray.presets import get_preset
from simvp_ray.reporting import one_line
from simvp_ray.sweeps import DEFAULT_BUDGETS, DEFAULT_SPACE, EXPERIMENTS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", choices=list(EXPERIMENTS), default="variants",
                        help="the kind of experiment; each trial is one training run")
    parser.add_argument("--preset", default="demo", help="a name from simvp_ray.presets.PRESETS")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="dotted overrides of the recipe every trial's run shares")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per variant / budget")
    parser.add_argument("--translators", default=",".join(TRANSLATORS),
                        help="variants: comma-separated translators and/or recurrent "
                        "methods, e.g. gsta,convlstm,predrnn (default: all translators)")
    parser.add_argument("--budgets", default=",".join(map(str, DEFAULT_BUDGETS)),
                        help="epoch-scaling: multiples of train.epochs")
    parser.add_argument("--space", nargs="*", default=list(DEFAULT_SPACE),
                        metavar="KEY=DIST:ARGS", help="search: choice:a,b grid:a,b "
                        "uniform:lo:hi loguniform:lo:hi randint:lo:hi over dotted keys")
    parser.add_argument("--samples", type=int, default=8, help="search: trials to draw")
    parser.add_argument("--storage", default="runs",
                        help="local folder or s3:// URL the experiment folder goes in")
    parser.add_argument("--name", default=None, help="experiment name (default: kind+time)")
    parser.add_argument("--max-concurrent", type=int, default=0,
                        help="trials at once (default: as many as the cluster's CPUs hold)")
    parser.add_argument("--resume", action="store_true",
                        help="continue experiment --name: only unfinished trials run")
    args = parser.parse_args(argv)
    try:
        base = override(get_preset(args.preset), args.set)
        summary = run_tune(args.experiment, base, storage=args.storage, name=args.name,
                           max_concurrent=args.max_concurrent, resume=args.resume,
                           num_seeds=args.seeds, budgets=args.budgets,
                           translators=[t.strip() for t in args.translators.split(",")],
                           space=args.space, num_samples=args.samples)
    except ValueError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    print(f"{summary['kind']} experiment: {summary['trials']} trials, {summary['errors']} "
          f"failed\nresults: {summary['url']}\nanalyse: python jobs/analyze.py {summary['url']}")
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
