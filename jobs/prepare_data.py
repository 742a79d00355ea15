"""Convert raw datasets into simvp_ray Zarr stores (datasets/README.md) and validate stores.

    python jobs/prepare_data.py synthetic --dst data/synthetic.zarr
    python jobs/prepare_data.py taxibj --src raw/TaxiBJ --dst s3://bucket/taxibj.zarr
    python jobs/prepare_data.py taxibj --src raw/taxibj/dataset.npz --dst data/taxibj_npz.zarr
    python jobs/prepare_data.py weatherbench --src raw/weatherbench --preset t2m --dst data/t2m.zarr
    python jobs/prepare_data.py weatherbench --src raw/weatherbench --preset mv --dst data/mv.zarr
    python jobs/prepare_data.py xarray --src ../shared/data/weatherbench/era5-2mt-2019-03-uk.grib \
        --variables t2m --val-start 2019-03-22 --test-start 2019-03-27 --dst data/era5.zarr
    python jobs/prepare_data.py xarray --src raw/irregular.grib --variables t2m --time-step 1h \
        --lat 50:56 --lon=-6:2 --dst data/era5_box.zarr      # or --ordinal instead of --time-step
    python jobs/prepare_data.py mmnist --src raw/train-images-idx3-ubyte.gz \
        --test-seq raw/mnist_test_seq.npy --dst data/mmnist.zarr
    python jobs/prepare_data.py validate data/t2m.zarr
"""

from __future__ import annotations

import argparse
import sys

from simvp_ray import data
from simvp_ray.data.weatherbench import parse_years

CONVERTERS = {"taxibj": data.convert_taxibj, "weatherbench": data.convert_weatherbench,
              "xarray": data.convert_xarray, "mmnist": data.convert_mmnist,
              "synthetic": data.write_synthetic}
FLOATS, NAMES = (lambda s: [float(v) for v in s.split(",")]), (lambda s: s.split(","))
OPTIONS = {  # flag -> argparse keywords; dest = the converter's keyword argument
    "taxibj": {"--test-slots": {"type": int}},
    "weatherbench": {"--preset": {"help": "t2m | r | uv10 | tcc | mv | mv5"},
                     "--variables": {"dest": "keys", "type": NAMES, "help": "keys: r,t,u,v"},
                     "--levels": {"type": FLOATS, "help": "hPa, e.g. 150,500,850"},
                     "--train-years": {"type": parse_years, "help": "e.g. 2010-2015"},
                     "--val-years": {"type": parse_years}, "--test-years": {"type": parse_years},
                     "--every": {"type": int, "help": "keep every k-th hour (mv: 6)"},
                     "--lat": {"help": "latitude range LOW:HIGH in degrees, e.g. 30:70"},
                     "--lon": {"help": "longitude range, e.g. --lon=-30:40 (wraps across 0)"}},
    "xarray": {"--variables": {"type": NAMES, "required": True}, "--levels": {"type": FLOATS},
               "--time-dim": {}, "--level-dim": {}, "--every": {"type": int},
               "--time-step": {"help": "irregular stamps on this grid (1h, 30min, 6h, 1d); "
                                       "missing steps become gaps"},
               "--ordinal": {"action": "store_true", "default": None,
                             "help": "irregular stamps: their order is the frame sequence"},
               "--lat": {"help": "latitude range LOW:HIGH in degrees, e.g. 50:60"},
               "--lon": {"help": "longitude range, e.g. --lon=-10:2 (wraps across 0 / 360)"},
               "--val-start": {"help": "first time (date or number) of the val split"},
               "--test-start": {"help": "first time of the test split"},
               "--nan-as-gap": {"action": "store_true", "default": None},
               "--licence": {}, "--citation": {}},
    "mmnist": {"--test-seq": {"help": "mnist_test_seq.npy (20, N, 64, 64)"},
               "--train-sequences": {"type": int}, "--test-sequences": {"type": int},
               "--seed": {"type": int}},
    "synthetic": {"--frames": {"dest": "n_frames", "type": int}, "--channels": {"type": int},
                  "--size": {"type": int}, "--seed": {"type": int}},
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    for kind, options in OPTIONS.items():
        p = sub.add_parser(kind, help=CONVERTERS[kind].__doc__.splitlines()[0])
        if kind != "synthetic":
            p.add_argument("--src", required=True, help="raw file, folder or store")
        p.add_argument("--dst", required=True, help="store URL: path, file:// or s3://")
        p.add_argument("--overwrite", action="store_true", help="replace a complete store")
        p.add_argument("--chunk-frames", type=int, help="frames per chunk (default: ~1 MiB)")
        for flag, keywords in options.items():
            p.add_argument(flag, **keywords)
    validate = sub.add_parser("validate", help="check a store against the schema")
    validate.add_argument("url")
    validate.add_argument("--quick", action="store_true", help="metadata only, no chunk scan")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    kind = args.pop("kind")
    try:
        if kind == "validate":
            print(data.validate_store(args["url"], check_data=not args["quick"]))
            return 0
        kwargs = {key: value for key, value in args.items() if value is not None}
        sources = [kwargs.pop("src")] if "src" in kwargs else []
        ds = CONVERTERS[kind](*sources, kwargs.pop("dst"), **kwargs)
    except data.DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {ds.url}: frames {ds.frames.shape}, splits {ds.splits}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
