"""Pictures of a forecast: a PNG panel (inputs, targets, predictions, |error|) and an animated
GIF, from a forecast store (jobs/predict.py) or from a checkpoint (one window of a split).

    python jobs/visualize.py forecasts/demo.zarr --out pictures            # middle init time
    python jobs/visualize.py forecasts/demo.zarr --init 2000-01-21T06 --channel blobs_1
    python jobs/visualize.py runs/demo/checkpoint_... --split test --index 10 --out pictures
"""

from __future__ import annotations

import argparse
import sys

from simvp_ray.analysis.visualize import render_pictures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="forecast store or checkpoint folder (path or s3:// URL)")
    parser.add_argument("--out", default="pictures", help="local folder for the pictures")
    parser.add_argument("--init", default=None, help="forecast store: the init time to show")
    parser.add_argument("--split", default="val", help="checkpoint: the split of the window")
    parser.add_argument("--index", type=int, default=None, help="checkpoint: window number")
    parser.add_argument("--channel", default=None, help="variable to show (default: the first)")
    parser.add_argument("--data", default=None, help="store URL (default: the recorded one)")
    parser.add_argument("--no-gif", action="store_true", help="the panel only")
    args = parser.parse_args(argv)
    try:
        files = render_pictures(args.url, args.out, init=args.init, split=args.split,
                                index=args.index, channel=args.channel, data=args.data,
                                gif=not args.no_gif)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for kind, path in files.items():
        print(f"wrote {kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
