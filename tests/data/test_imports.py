"""The data layer never imports torch or ray (ray_data.py is the one Ray Data module)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

DATA_DIR = Path(__file__).resolve().parents[2] / "simvp_ray" / "data"
FORBIDDEN = {"torch", "ray"}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


MODULES = sorted(p for p in DATA_DIR.glob("*.py") if p.name != "ray_data.py")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_torch_or_ray(path):
    assert not imported_roots(path) & FORBIDDEN
