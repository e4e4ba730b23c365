"""libascendcl.so inside a process that runs Python already (an extension module linking it, as
ais_bench's backend does), and calls that come when Python is gone.

* a host of our Python version shares its interpreter with the library (one ``sys.modules``);
* a host venv without cffi works: the library puts our venv's site-packages on its path;
* another Python version is refused: one line on stderr, every call 100001, no crash;
* a C "static destructor" (``atexit`` in the extension) calling ACL after the host's
  ``Py_Finalize``: no crash, release calls return 0, others 100001;
* in a C program, a destructor that runs after the library's exit hook closed the client, and a
  Python half that cannot start: codes, never cffi's default 0.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.system.cabi_fixtures import run_sourced, session_tree
from tests.system.conftest import start_farm, stop_and_check

pytestmark = [pytest.mark.system, pytest.mark.timeout(180)]

OURS = f"{sys.version_info.major}.{sys.version_info.minor}"

PROBE_EXTENSION = r"""
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdio.h>
#include <stdlib.h>
#include "acl/acl.h"

static aclrtContext kept;

/* what a C++ static destructor does: it runs after the host interpreter finalized */
static void release_after_python(void)
{
    void *dev = NULL;
    aclError destroyed = aclrtDestroyContext(kept);
    aclError malloced = aclrtMalloc(&dev, 64, ACL_MEM_MALLOC_HUGE_FIRST);
    aclError reset = aclrtResetDevice(0);
    aclError finalized = aclFinalize();
    fprintf(stderr, "late: python=%d destroy=%d malloc=%d reset=%d finalize=%d\n",
            Py_IsInitialized(), destroyed, malloced, reset, finalized);
}

static PyObject *probe_init(PyObject *self, PyObject *args)
{
    uint32_t count = 0;
    aclError init = aclInit(NULL);
    aclError got = aclrtGetDeviceCount(&count);
    return Py_BuildValue("iiI", init, got, count);
}

static PyObject *probe_keep_context(PyObject *self, PyObject *args)
{
    aclError set = aclrtSetDevice(0);
    aclError created = aclrtCreateContext(&kept, 0);
    atexit(release_after_python);
    return Py_BuildValue("ii", set, created);
}

static PyMethodDef methods[] = {
    {"init", probe_init, METH_NOARGS, NULL},
    {"keep_context", probe_keep_context, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "hostprobe", NULL, -1, methods};
PyMODINIT_FUNC PyInit_hostprobe(void) { return PyModule_Create(&module); }
"""

HOST_SCRIPT = """\
import sys
sys.path.insert(0, sys.argv[1])
import hostprobe
print("init", *hostprobe.init())
print("shared", "_npufarm_ascendcl" in sys.modules, "cabi.bridge" in sys.modules)
if "keep" in sys.argv:
    print("kept", *hostprobe.keep_context())
"""

# a C program whose "static destructor" is registered before the library is loaded (dlopen):
# it runs after the library's exit hook ran Python's exit handlers and closed the client
LATE_PROGRAM = r"""
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

typedef int (*call0)(void);
typedef int (*call1)(void *);
typedef int (*call2)(void *, int);
typedef int (*call3)(void *, size_t, int);
static void *lib, *context;

static void late(void)
{
    void *dev = NULL;
    int destroyed = ((call1)dlsym(lib, "aclrtDestroyContext"))(context);
    int malloced = ((call3)dlsym(lib, "aclrtMalloc"))(&dev, 64, 0);
    int finalized = ((call0)dlsym(lib, "aclFinalize"))();
    fprintf(stderr, "late: destroy=%d malloc=%d finalize=%d\n", destroyed, malloced, finalized);
}

int main(void)
{
    atexit(late);
    lib = dlopen("libascendcl.so", RTLD_NOW);
    if (lib == NULL) { fprintf(stderr, "%s\n", dlerror()); return 2; }
    printf("init %d\n", ((call1)dlsym(lib, "aclInit"))(NULL));
    printf("set %d\n", ((call1)dlsym(lib, "aclrtSetDevice"))((void *)0));
    printf("create %d\n", ((call2)dlsym(lib, "aclrtCreateContext"))(&context, 0));
    return 0;
}
"""


@pytest.fixture(scope="module")
def sdk_root(tmp_path_factory) -> Path:
    return session_tree(tmp_path_factory)


@pytest.fixture(scope="module")
def farm_env():
    farm = start_farm(cards=1)
    yield {**os.environ, "NPUFARM_ADDRESS": farm.address}
    stop_and_check(farm)


@pytest.fixture(scope="module")
def probe_dir(sdk_root, tmp_path_factory) -> Path:
    """The ``hostprobe`` extension, linked against the tree's stub libascendcl."""
    work = tmp_path_factory.mktemp("hostprobe")
    source = work / "hostprobe.c"
    source.write_text(PROBE_EXTENSION)
    target = work / f"hostprobe{sysconfig.get_config_var('EXT_SUFFIX')}"
    _compile(
        sdk_root,
        ["-shared", "-fPIC", f"-I{sysconfig.get_paths()['include']}", str(source)],
        target,
    )
    return work


def _compile(sdk_root: Path, args: list[str], target: Path, libs: tuple = ("-lascendcl",)):
    cmd = [
        "cc",
        "-Wall",
        "-Werror",
        f"-I{sdk_root / 'runtime' / 'include'}",
        *args,
        "-o",
        str(target),
        f"-L{sdk_root / 'runtime' / 'lib64' / 'stub'}",
        *libs,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def _host(sdk_root, python: str, probe_dir: Path, env, tmp_path, *flags: str):
    script = tmp_path / "host.py"
    script.write_text(HOST_SCRIPT)
    done = run_sourced(sdk_root, [python, script, probe_dir, *flags], env=env, cwd=tmp_path)
    return done, dict(line.split(" ", 1) for line in done.stdout.splitlines())


def _npufarm_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("npufarm")]


def test_a_host_of_our_version_shares_its_interpreter(sdk_root, probe_dir, farm_env, tmp_path):
    done, out = _host(sdk_root, sys.executable, probe_dir, farm_env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert out["init"] == "0 0 1"
    assert out["shared"] == "True True"  # the bridge runs in the host's own interpreter
    assert _npufarm_lines(done.stderr) == []


def _same_version_pythons() -> list[str]:
    """Interpreters of our version outside our venv: the one it was made from, the system's."""
    found = [os.path.realpath(sys._base_executable)]
    system = shutil.which(f"python{OURS}", path="/usr/bin:/usr/local/bin")
    if system and os.path.realpath(system) not in found:
        found.append(os.path.realpath(system))
    return found


@pytest.mark.parametrize("base", _same_version_pythons())
def test_a_host_venv_without_cffi_uses_our_site_packages(
    sdk_root, probe_dir, farm_env, tmp_path, base
):
    venv = tmp_path / "hostvenv"
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = str(venv / "bin" / "python")
    bare = subprocess.run([python, "-c", "import cffi"], capture_output=True, timeout=30)
    assert bare.returncode != 0  # the host venv lacks cffi (and npufarm)
    done, out = _host(sdk_root, python, probe_dir, farm_env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert out["init"] == "0 0 1", done.stderr
    assert out["shared"] == "True True"
    assert _npufarm_lines(done.stderr) == []


def _other_version_python() -> str | None:
    candidates = [shutil.which(f"python3.{minor}") for minor in range(8, 16)]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin/python3")))
    for candidate in filter(None, candidates):
        version = subprocess.run(
            [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
        if version and version != OURS and version >= "3.8":
            return candidate
    return None


def test_another_python_version_is_refused_with_codes(sdk_root, farm_env, tmp_path):
    python = _other_version_python()
    if python is None:
        pytest.skip("no Python of another version on this host")
    script = (
        "import ctypes\n"
        "lib = ctypes.CDLL('libascendcl.so')\n"
        "count = ctypes.c_uint32(7)\n"
        "print(lib.aclInit(None), lib.aclrtGetDeviceCount(ctypes.byref(count)), count.value,"
        " lib.aclrtDestroyContext(None))\n"
    )
    done = run_sourced(sdk_root, [python, "-c", script], env=farm_env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["100001", "100001", "7", "0"]
    (line,) = _npufarm_lines(done.stderr)
    assert line.startswith(f"npufarm: libascendcl was built for Python {OURS}; this process")
    assert line.endswith("; ACL calls return 100001")


def test_calls_after_the_host_finalized_do_not_crash(sdk_root, probe_dir, farm_env, tmp_path):
    done, out = _host(sdk_root, sys.executable, probe_dir, farm_env, tmp_path, "keep")
    assert done.returncode == 0, done.stderr
    assert out["init"] == "0 0 1" and out["kept"] == "0 0"
    assert "late: python=0 destroy=0 malloc=100001 reset=0 finalize=0" in done.stderr


def test_a_c_destructor_after_the_exit_hook_gets_codes(sdk_root, farm_env, tmp_path):
    source = tmp_path / "late.c"
    source.write_text(LATE_PROGRAM)
    program = tmp_path / "late"
    _compile(sdk_root, [str(source)], program, libs=("-ldl",))
    done = run_sourced(sdk_root, [program], env=farm_env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["init", "0", "set", "0", "create", "0"]
    assert "late: destroy=0 malloc=100001 finalize=0" in done.stderr
    assert "507901" not in done.stderr


def test_a_python_half_that_cannot_start_answers_100001(sdk_root, farm_env, tmp_path):
    source = tmp_path / "late.c"
    source.write_text(LATE_PROGRAM)
    program = tmp_path / "late"
    _compile(sdk_root, [str(source)], program, libs=("-ldl",))
    # our Python's own installation: no npufarm there, so the bridge cannot be imported
    env = {**farm_env, "NPUFARM_PYTHON": os.path.realpath(sys._base_executable)}
    done = run_sourced(sdk_root, [program], env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["init", "100001", "set", "100001", "create", "100001"]
    (line,) = [s for s in _npufarm_lines(done.stderr) if "Python half" in s]
    assert line.endswith("ACL calls return 100001")
    assert "late: destroy=0 malloc=100001 finalize=0" in done.stderr
