"""Dependencies point one way and Ray stays at the edge (spec/style.md, principle 2).

Reads every module's imports (top level and inside functions) with `ast`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "simvp_ray"

# (path glob relative to the repo root, forbidden import prefixes, allowed exceptions)
RULES = [
    ("simvp_ray/models/**/*.py",
     ("ray", "numpy", "zarr", "simvp_ray.data", "simvp_ray.train", "simvp_ray.distributed",
      "simvp_ray.analysis")),
    ("simvp_ray/data/**/*.py",
     ("torch", "ray.train", "ray.tune", "simvp_ray.models", "simvp_ray.train",
      "simvp_ray.distributed")),
    ("simvp_ray/train/**/*.py", ("ray", "simvp_ray.distributed")),
    # results, tables and pictures are read from files: no Ray at all
    ("simvp_ray/analysis/**/*.py", ("ray", "torch", "simvp_ray.distributed")),
    ("simvp_ray/config.py", ("torch", "ray", "numpy", "simvp_ray.")),
    ("simvp_ray/plan.py", ("ray", "simvp_ray.distributed")),  # the check before Ray starts
    ("simvp_ray/presets.py", ("torch", "ray", "numpy", "simvp_ray.models", "simvp_ray.data")),
    ("jobs/*.py", ("ray",)),  # jobs call the library; the library talks to Ray
    # the driver's plan check runs before Ray starts; progress and reporting serve every job
    ("simvp_ray/plan.py", ("ray", "simvp_ray.distributed", "simvp_ray.data.ray_data")),
    ("simvp_ray/progress.py", ("ray", "torch", "simvp_ray.")),
    ("simvp_ray/reporting.py", ("ray", "torch", "simvp_ray.distributed", "simvp_ray.train")),
    # the metric names: read by reporting and analysis, which must not pull torch
    ("simvp_ray/metric_keys.py", ("torch", "ray", "numpy", "simvp_ray.")),
    # runs and experiments on storage: read by the analysis, so no Ray and no torch either
    ("simvp_ray/runs.py", ("ray", "torch", "pyarrow", "simvp_ray.config", "simvp_ray.data",
                           "simvp_ray.models", "simvp_ray.train", "simvp_ray.distributed",
                           "simvp_ray.analysis")),
    # the record checks every layer's typed contracts share: the standard library only
    ("simvp_ray/records.py", ("torch", "ray", "numpy", "fsspec", "simvp_ray.")),
    # the experiment plans are data checked on the driver; tune.py maps them onto ray.tune
    ("simvp_ray/sweeps.py", ("ray", "simvp_ray.distributed")),
]
# Ray Data lives in one module of the data layer; ray.train / ray.tune in one subpackage.
RAY_DATA_MODULE = "simvp_ray/data/ray_data.py"
# Everything that imports Ray in the package: the Ray edge (spec/style.md, principle 2).
RAY_EDGE = ("simvp_ray/distributed/", RAY_DATA_MODULE)


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def matches(name: str, prefix: str) -> bool:
    return name == prefix.rstrip(".") or name.startswith(prefix.rstrip(".") + ".")


def violations(pattern: str, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in sorted(ROOT.glob(pattern)):
        relative = path.relative_to(ROOT).as_posix()
        for name in sorted(imported_modules(path)):
            for prefix in forbidden:
                if relative == RAY_DATA_MODULE and matches(name, "ray") and not (
                        matches(name, "ray.train") or matches(name, "ray.tune")):
                    continue
                if matches(name, prefix):
                    found.append(f"{relative} imports {name}")
    return found


@pytest.mark.parametrize("pattern, forbidden", RULES, ids=[rule[0] for rule in RULES])
def test_layer_imports_only_what_it_may(pattern, forbidden):
    assert violations(pattern, forbidden) == []


def test_only_the_ray_data_module_of_the_data_layer_imports_ray():
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((PACKAGE / "data").rglob("*.py"))
        if path.relative_to(ROOT).as_posix() != RAY_DATA_MODULE
        for name in imported_modules(path) if matches(name, "ray")
    ]
    assert offenders == []


def test_only_the_distributed_subpackage_imports_ray_train_and_tune():
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if "distributed" not in path.relative_to(PACKAGE).parts
        for name in imported_modules(path)
        if matches(name, "ray.train") or matches(name, "ray.tune")
    ]
    assert offenders == []


def test_only_the_ray_edge_imports_ray_at_all():
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if not path.relative_to(ROOT).as_posix().startswith(RAY_EDGE)
        for name in imported_modules(path) if matches(name, "ray")
    ]
    assert offenders == []


def test_the_checker_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    import ray.train\n    from torch import nn\n")
    assert {"ray.train", "torch", "torch.nn"} <= imported_modules(module)
