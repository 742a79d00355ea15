"""Turn a jobs/tune.py experiment into the paper's table (Markdown + CSV) and PNG plots.

    python jobs/analyze.py runs/variants-demo       # writes runs/variants-demo/analysis/
    python jobs/analyze.py s3://bucket/tune/taxibj-scaling --out reports/taxibj-scaling
    python jobs/analyze.py ~/Downloads/variants-demo --out /tmp/report   # a copied folder

Works on a partly finished experiment: unfinished, stopped and failed trials are listed in
trials.md and left out of the means. No Ray needed.
"""

from __future__ import annotations

import argparse
import sys

from simvp_ray.analysis.experiment import analyze_experiment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", help="the experiment folder jobs/tune.py printed "
                        "(local path or s3:// URL)")
    parser.add_argument("--out", default=None,
                        help="output folder (default: <experiment>/analysis for a local one)")
    args = parser.parse_args(argv)
    out = args.out
    if out is None:
        if "://" in args.experiment:
            parser.error("--out is needed for a remote experiment")
        out = f"{args.experiment.rstrip('/')}/analysis"
    try:
        written = analyze_experiment(args.experiment, out)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(written["table_md"].read_text())
    print(written["trials_md"].read_text())
    for key, path in written.items():
        print(f"{key:>13}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
