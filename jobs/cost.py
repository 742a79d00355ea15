"""Print the cost table of presets: params, GFLOPs (multiply-adds) and CPU samples/s.

    python jobs/cost.py                                # demo + the gSTA / IncepU presets
    python jobs/cost.py --preset taxibj_gsta mmnist_incepu --no-speed
    python jobs/cost.py --preset taxibj_gsta --set model.translator=swin
    python jobs/cost.py --all --no-speed               # every preset, params and FLOPs only
"""

from __future__ import annotations

import argparse
import sys

import torch

from simvp_ray.config import override
from simvp_ray.models.cost_table import cost_rows, format_cost_table
from simvp_ray.presets import PRESETS, get_preset

DEFAULT_PRESETS = ["demo", "taxibj_gsta", "taxibj_incepu", "mmnist_gsta", "mmnist_incepu",
                   "weather_t2m_gsta"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", nargs="+", default=DEFAULT_PRESETS, help="preset names")
    parser.add_argument("--all", action="store_true", help="every preset")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="dotted overrides applied to each preset (e.g. model.translator=swin)")
    parser.add_argument("--no-speed", action="store_true", help="params and FLOPs only")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = list(PRESETS) if args.all else args.preset
    try:
        configs = [override(get_preset(name), args.set) for name in names]
    except ValueError as error:
        parser.error(str(error))
    rows = cost_rows(configs, measure=not args.no_speed, batch_size=args.batch_size,
                     iters=args.iters)
    print(format_cost_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
