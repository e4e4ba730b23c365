"""The toolkit tree of the C ABI tests (``npufarm sdk --prefix``), built once per session, and
the samples' build and run recipe.

A test module wraps :func:`session_tree` in a fixture of its own; the first module to ask builds
the tree (a few seconds) and the others reuse it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.system.conftest import REPO

EXAMPLES = REPO / "examples" / "c"
_BUILT: dict[str, Path] = {}


def build_sdk(root: Path, *args: str, env: dict[str, str] | None = None):
    """``python -m npufarm sdk --prefix ROOT ARGS...`` (the completed process)."""
    return subprocess.run(
        [sys.executable, "-m", "npufarm", "sdk", "--prefix", str(root), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )


def session_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The root of the toolkit tree of this test session (built by the first caller)."""
    if "root" not in _BUILT:
        root = tmp_path_factory.mktemp("cabi") / "toolkit"
        done = build_sdk(root)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.strip() == str(root)
        _BUILT["root"] = root
    return _BUILT["root"]


def sample_env(root: Path) -> dict[str, str]:
    """The environment the samples' recipe builds in: DDK_PATH and NPU_HOST_LIB."""
    return {
        **os.environ,
        "DDK_PATH": str(root),
        "NPU_HOST_LIB": str(root / "runtime" / "lib64" / "stub"),
    }


def build_sample(root: Path, name: str, build_dir: Path) -> Path:
    """The Ascend samples' recipe, unchanged: ``cmake <sample>/src -DCMAKE_CXX_COMPILER=g++
    -DCMAKE_SKIP_RPATH=TRUE; make``; returns the built ``main``."""
    build_dir.mkdir(parents=True, exist_ok=True)
    for cmd in (
        [
            "cmake",
            str(EXAMPLES / name / "src"),
            "-DCMAKE_CXX_COMPILER=g++",
            "-DCMAKE_SKIP_RPATH=TRUE",
        ],
        ["make"],
    ):
        done = subprocess.run(
            cmd, cwd=build_dir, env=sample_env(root), capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"{' '.join(cmd)}:\n{done.stdout}\n{done.stderr}"
    return build_dir / "main"


@dataclass
class SourcedRun:
    pid: int
    returncode: int
    stdout: str
    stderr: str


def run_sourced(
    root: Path, argv: list, env: dict[str, str], cwd: Path, timeout_s: float = 60.0
) -> SourcedRun:
    """Run ``argv`` in bash after ``source <root>/set_env.sh`` (``exec``: the program keeps the
    pid returned)."""
    script = 'source "$1/set_env.sh" && shift && exec "$@"'
    with subprocess.Popen(
        ["bash", "-c", script, "bash", str(root), *map(str, argv)],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            out, err = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
            raise AssertionError(f"{argv} did not end in {timeout_s}s:\n{out}\n{err}") from None
    return SourcedRun(process.pid, process.returncode, out, err)


def exported(library: Path) -> set[str]:
    """Function names a shared library defines (``nm -D --defined-only``, text symbols)."""
    out = subprocess.run(
        ["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True, check=True
    ).stdout
    return {line.split()[2] for line in out.splitlines() if line.split()[1] == "T"}


def dynamic_section(library: Path) -> dict[str, list[str]]:
    """readelf -d as tag -> values, e.g. {"NEEDED": ["libc.so.6"], "SONAME": [...]}."""
    out = subprocess.run(
        ["readelf", "-d", str(library)], capture_output=True, text=True, check=True
    ).stdout
    tags: dict[str, list[str]] = {}
    for line in out.splitlines():
        if "(" in line and "[" in line:
            tag = line.split("(", 1)[1].split(")", 1)[0]
            tags.setdefault(tag, []).append(line.rsplit("[", 1)[1].rstrip("]"))
    return tags
