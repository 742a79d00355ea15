"""One training run of a SimVP model on Ray Train; with no arguments, the demo on synthetic data.

    python jobs/train.py                                   # demo: gSTA, synthetic data, local Ray
    python jobs/train.py --preset taxibj_gsta --set data.url=s3://bucket/taxibj.zarr \\
        --num-workers 4 --gpu --storage s3://bucket/runs --name taxibj-gsta
    python jobs/train.py --preset taxibj_gsta --storage s3://bucket/runs --name taxibj-gsta \\
        --resume                                           # continue a stopped run
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/train.py
"""

from __future__ import annotations

import argparse
import sys

from simvp_ray.config import override
from simvp_ray.distributed.trainer import TrainingStopped, launch_run
from simvp_ray.presets import get_preset
from simvp_ray.reporting import format_summary, one_line


def parse_workers(text: str) -> dict[str, int]:
    """"4" -> 4 workers; "2-4" -> elastic, at least 2 and at most 4."""
    low, _, high = text.partition("-")
    try:
        return ({"scaling.min_workers": int(low), "scaling.num_workers": int(high)} if high
                else {"scaling.num_workers": int(low), "scaling.min_workers": 0})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--num-workers {text!r}: expected N or MIN-MAX") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo", help="a name from simvp_ray.presets.PRESETS")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="dotted config overrides, e.g. optim.lr=3e-4 train.epochs=10")
    parser.add_argument("--num-workers", type=parse_workers, default={},
                        help="N, or MIN-MAX for an elastic run")
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker")
    parser.add_argument("--storage", default="runs",
                        help="local folder or s3:// URL the run folder goes in")
    parser.add_argument("--name", default=None, help="run name (default: preset + time)")
    parser.add_argument("--resume", action="store_true", help="continue run --name")
    args = parser.parse_args(argv)
    try:
        config = override(get_preset(args.preset), args.set)
        config = override(config, {**args.num_workers, **({"scaling.use_gpu": True}
                                                          if args.gpu else {})})
        summary = launch_run(config, storage=args.storage, name=args.name, resume=args.resume)
    except ValueError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    except TrainingStopped as error:
        print(f"training stopped: {one_line(error)}", file=sys.stderr)
        return 3
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
