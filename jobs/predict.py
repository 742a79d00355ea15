"""Forecast every init time of a period with a checkpoint (Ray Data), into a Zarr forecast
store: the dataset schema with a lead-time axis, denormalised (datasets/README.md).

    python jobs/predict.py runs/demo/checkpoint_... --start 2000-01-20 --end 2000-01-23T12 \\
        --out forecasts/demo.zarr
    python jobs/predict.py s3://bucket/runs/t2m/checkpoint_... --start 2017-01-01 \\
        --end 2018-12-31T23 --every 6 --out s3://bucket/forecasts/t2m.zarr --num-actors 4 --gpu

Re-running the same command skips finished chunks (an interrupted run resumes); a store
holding other forecasts is replaced only with --overwrite.
"""

from __future__ import annotations

import argparse
import sys

from simvp_ray.distributed.predict import run_prediction
from simvp_ray.reporting import one_line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="checkpoint folder: local path or s3:// URL")
    parser.add_argument("--start", required=True, help="first init time (ISO time or step)")
    parser.add_argument("--end", required=True, help="last init time, included")
    parser.add_argument("--out", required=True, help="forecast store: local path or s3:// URL")
    parser.add_argument("--data", default=None, help="store URL (default: the checkpoint's)")
    parser.add_argument("--every", type=int, default=1, help="steps between init times")
    parser.add_argument("--overwrite", action="store_true", help="replace other forecasts")
    parser.add_argument("--num-actors", type=int, default=1, help="model actors (Ray Data)")
    parser.add_argument("--gpu", action="store_true", help="one GPU per model actor")
    parser.add_argument("--batch-size", type=int, default=32, help="windows per forward pass")
    args = parser.parse_args(argv)
    try:
        summary = run_prediction(args.checkpoint, start=args.start, end=args.end, out=args.out,
                                 data=args.data, every=args.every, overwrite=args.overwrite,
                                 num_actors=args.num_actors, use_gpu=args.gpu,
                                 batch_size=args.batch_size)
    except ValueError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    missing = summary["init_times"] - summary["valid"]
    print(f"wrote {summary['url']}: {summary['init_times']} init times {summary['first']} .. "
          f"{summary['last']}" + (f" ({missing} without valid inputs: NaN)" if missing else "")
          + f", leads {summary['leads']} {summary['lead_unit']}; chunks: "
          f"{summary['chunks_written']} written, {summary['chunks_skipped']} already done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
