"""The import-linter contract covers every top-level package: ``root_packages`` is the
installed packages plus ``benchmarks``, so a new package cannot escape the layers (a stand-in for
import-linter's ``exhaustive``, which needs a container)."""

from __future__ import annotations

import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_every_package_is_in_the_layers_contract():
    config = tomllib.loads(PYPROJECT.read_text())
    installed = {p.rstrip("*") for p in config["tool"]["setuptools"]["packages"]["find"]["include"]}
    linter = config["tool"]["importlinter"]
    assert set(linter["root_packages"]) == installed | {"benchmarks"}
    layered = {
        name.strip()
        for contract in linter["contracts"]
        if contract["type"] == "layers"
        for layer in contract["layers"]
        for name in layer.split("|")
    }
    assert layered == set(linter["root_packages"])
