"""The dataset layer: one Zarr schema, converters, the window index and numpy readers.

Imports numpy, zarr, xarray, fsspec and h5py only: never torch or ray (ray_data.py aside,
which is not imported here).
"""

from simvp_ray.data.batches import iter_numpy_batches, read_windows
from simvp_ray.data.mmnist import convert_mmnist, generate_moving_mnist, read_idx_images
from simvp_ray.data.normalization import Stats, denormalize, normalize
from simvp_ray.data.schema import SCHEMA_VERSION, DatasetError
from simvp_ray.data.store import Dataset, StoreLayout, create_store, open_dataset
from simvp_ray.data.synthetic import make_synthetic, write_synthetic
from simvp_ray.data.taxibj import convert_taxibj, convert_taxibj_npz
from simvp_ray.data.validate import validate_store
from simvp_ray.data.weatherbench import convert_weatherbench
from simvp_ray.data.windows import window_offsets, window_starts
from simvp_ray.data.xarray_source import convert_xarray

__all__ = [
    "SCHEMA_VERSION",
    "Dataset",
    "DatasetError",
    "Stats",
    "StoreLayout",
    "convert_mmnist",
    "convert_taxibj",
    "convert_taxibj_npz",
    "convert_weatherbench",
    "convert_xarray",
    "create_store",
    "denormalize",
    "generate_moving_mnist",
    "iter_numpy_batches",
    "make_synthetic",
    "normalize",
    "open_dataset",
    "read_idx_images",
    "read_windows",
    "validate_store",
    "window_offsets",
    "window_starts",
    "write_synthetic",
]
