"""Score a checkpoint on a split: metrics per lead time and overall, next to persistence and
climatology, in normalised and physical units (lat-weighted RMSE and ACC where the store has
latitudes), plus the model's cost. Writes metrics.json and metrics.md.

    python jobs/evaluate.py runs/demo/checkpoint_2026-01-01_00-00-00.000000 --out eval/demo
    python jobs/evaluate.py s3://bucket/runs/t2m/checkpoint_... --split val --num-actors 4 --gpu
    python jobs/evaluate.py runs/demo/checkpoint_... --data s3://bucket/other.zarr --split test
    python jobs/evaluate.py runs/t2m/checkpoint_... --protocol openstl --climatology day_of_year
"""

from __future__ import annotations

import argparse
import sys

from simvp_ray.analysis.evaluation import format_evaluation
from simvp_ray.data.climatology import CLIMATOLOGIES
from simvp_ray.distributed.evaluate import PROTOCOLS, run_evaluation
from simvp_ray.reporting import one_line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="checkpoint folder: local path or s3:// URL")
    parser.add_argument("--split", default="test", help="train, val or test (default test)")
    parser.add_argument("--data", default=None, help="store URL (default: the checkpoint's)")
    parser.add_argument("--out", default="evaluation", help="folder or URL for the results")
    parser.add_argument("--num-actors", type=int, default=1, help="model actors (Ray Data)")
    parser.add_argument("--gpu", action="store_true", help="one GPU per model actor")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="windows per batch (default: the run's data.val_batch_size)")
    parser.add_argument("--no-cost", action="store_true", help="skip the model cost profile")
    parser.add_argument("--protocol", default="default", choices=PROTOCOLS,
                        help="default: training statistics everywhere (leak-free); openstl: "
                        "inputs and targets normalised with the split's own statistics, as "
                        "OpenSTL's weather loader (datasets/weatherbench.md)")
    parser.add_argument("--climatology", default="auto", choices=CLIMATOLOGIES,
                        help="baseline and ACC reference: day_of_year (WeatherBench 2, needs a "
                        "year of training data), train_mean, or auto (the first that fits)")
    args = parser.parse_args(argv)
    try:
        results = run_evaluation(args.checkpoint, split=args.split, data=args.data,
                                 out=args.out, num_actors=args.num_actors, use_gpu=args.gpu,
                                 batch_size=args.batch_size, cost=not args.no_cost,
                                 protocol=args.protocol, climatology=args.climatology)
    except ValueError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    print(format_evaluation(results))
    print(f"\nwrote {results['files']['metrics']} and {results['files']['table']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
