"""``npufarm sdk``: the CANN-style toolkit tree, as tools and build scripts look at it.

Layout (CANN's paths and the older samples' ones), every header installed, each library
exporting exactly the functions of its header set (stubs too), SONAMEs that let a program
linked against a stub load the real library, ``set_env.sh`` sourced in bash, and a second call
that reuses the tree.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from cabi import symbols
from tests.system.cabi_fixtures import (
    build_sdk,
    dynamic_section,
    exported,
    run_sourced,
    session_tree,
)
from tests.system.conftest import REPO

pytestmark = [pytest.mark.system, pytest.mark.timeout(180)]

LIBRARIES = ("ascendcl", "acl_dvpp", "acl_cblas")
HEADERS = REPO / "cabi" / "include"


@pytest.fixture(scope="module")
def sdk_root(tmp_path_factory) -> Path:
    return session_tree(tmp_path_factory)


def test_the_tree_is_laid_out_as_cann_lays_it_out(sdk_root):
    include = sdk_root / "runtime" / "include" / "acl"
    for header in (
        "acl.h",
        "acl_base.h",
        "acl_rt.h",
        "acl_mdl.h",
        "acl_op.h",
        "error_codes/rt_error_codes.h",
        "error_codes/ge_error_codes.h",
        "ops/acl_dvpp.h",
        "ops/acl_cblas.h",
    ):
        assert (include / header).is_file(), header
    ours = {p.relative_to(HEADERS) for p in HEADERS.rglob("*.h")}
    installed = {p.relative_to(sdk_root / "runtime" / "include") for p in include.rglob("*.h")}
    assert installed == ours
    for header in ours:
        assert (sdk_root / "runtime" / "include" / header).read_bytes() == (
            HEADERS / header
        ).read_bytes()
    lib64 = sdk_root / "runtime" / "lib64"
    for name in LIBRARIES:
        assert (lib64 / f"lib{name}.so").is_file()
        assert (lib64 / "stub" / f"lib{name}.so").is_file()
    # the older samples' paths and the toolkit-level ones resolve to the same files
    assert (sdk_root / "acllib" / "include" / "acl" / "acl.h").is_file()
    assert (sdk_root / "acllib" / "lib64" / "stub" / "libascendcl.so").is_file()
    assert (sdk_root / "include" / "acl" / "acl.h").is_file()
    assert (sdk_root / "lib64" / "libascendcl.so").is_file()
    arch = sdk_root / f"{platform.machine()}-linux"
    info = (arch / "ascend_toolkit_install.info").read_text()
    assert "package_name=Ascend-cann-toolkit" in info
    assert f"path={arch}" in info
    assert (arch / "lib64" / "stub" / "libascendcl.so").is_file()
    assert os.access(sdk_root / "bin" / "atc", os.X_OK)
    assert (sdk_root / "opp").is_dir()


def test_every_library_exports_exactly_its_header_set_stubs_too(sdk_root):
    lib64 = sdk_root / "runtime" / "lib64"
    declared = {name: set() for name in LIBRARIES}
    for proto in symbols.prototypes():
        declared[proto.library].add(proto.name)
    assert sum(map(len, declared.values())) >= 740  # CANN's six public headers: 740 calls
    for name in LIBRARIES:
        stub = exported(lib64 / "stub" / f"lib{name}.so")
        real = exported(lib64 / f"lib{name}.so")
        assert stub == declared[name], name
        # libascendcl.so is also the Python extension module cffi's embedding makes of it
        assert {s for s in real if not s.startswith("PyInit_")} == declared[name], name


def test_sonames_let_a_stub_linked_program_load_the_real_libraries(sdk_root):
    lib64 = sdk_root / "runtime" / "lib64"
    for name in LIBRARIES:
        for path in (lib64 / f"lib{name}.so", lib64 / "stub" / f"lib{name}.so"):
            assert dynamic_section(path)["SONAME"] == [f"lib{name}.so"], path
    for name in LIBRARIES:  # stubs: no Python, no dependency but libc
        assert dynamic_section(lib64 / "stub" / f"lib{name}.so")["NEEDED"] == ["libc.so.6"]
    real = dynamic_section(lib64 / "libascendcl.so")
    assert sysconfig.get_config_var("INSTSONAME") in real["NEEDED"]
    assert real["RUNPATH"] == [sysconfig.get_config_var("LIBDIR")]  # libpython without env
    dvpp = dynamic_section(lib64 / "libacl_dvpp.so")
    assert "libascendcl.so" in dvpp["NEEDED"] and dvpp["RUNPATH"] == ["$ORIGIN"]


def test_set_env_sh_exports_cann_variables_for_this_tree(sdk_root, tmp_path):
    env = {"PATH": os.environ["PATH"], "LD_LIBRARY_PATH": "/opt/other/lib"}
    done = run_sourced(sdk_root, ["env"], env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    got = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    assert got["ASCEND_TOOLKIT_HOME"] == str(sdk_root)
    assert got["ASCEND_HOME_PATH"] == str(sdk_root)
    assert got["ASCEND_OPP_PATH"] == f"{sdk_root}/opp"
    assert got["ASCEND_AICPU_PATH"] == str(sdk_root)
    assert got["LD_LIBRARY_PATH"] == f"{sdk_root}/runtime/lib64:/opt/other/lib"
    assert got["PATH"].split(":")[0] == f"{sdk_root}/bin"
    assert "NPUFARM_ADDRESS" not in got  # the farm is found at aclInit, never baked in
    found = run_sourced(sdk_root, ["sh", "-c", "command -v atc"], env=env, cwd=tmp_path)
    assert found.stdout.strip() == f"{sdk_root}/bin/atc"


def test_atc_wrapper_runs_this_venvs_atc(sdk_root, tmp_path):
    done = subprocess.run(
        [str(sdk_root / "bin" / "atc"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "usage: npufarm atc" in done.stdout


def test_a_second_call_reuses_the_tree_at_once(sdk_root):
    library = sdk_root / "runtime" / "lib64" / "libascendcl.so"
    before = library.stat().st_mtime_ns
    started = time.monotonic()
    done = build_sdk(sdk_root)
    took_s = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(sdk_root)
    assert "building" not in done.stderr
    assert library.stat().st_mtime_ns == before
    assert took_s < 3.0, f"reuse took {took_s:.2f}s"  # ~0.5 s: the CLI, the imports, a hash


def test_prefix_never_replaces_a_directory_that_is_not_a_tree(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    done = build_sdk(foreign)
    assert done.returncode == 2
    assert "is not an npufarm toolkit tree" in done.stderr
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_default_location_is_per_user_with_a_latest_link(tmp_path):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-m", "npufarm", "sdk"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    root = Path(done.stdout.strip())
    assert root.parent == tmp_path / "cache" / "npufarm" / "sdk"
    assert len(root.name) == 16 and int(root.name, 16) >= 0  # the input hash
    assert (root.parent / "latest").resolve() == root
    assert (root / "runtime" / "lib64" / "libascendcl.so").is_file()
    assert [
        p.name for p in root.parent.iterdir() if p.name.startswith(".") and "build" in p.name
    ] == []
