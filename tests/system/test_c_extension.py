"""A Python extension module linked with libascendcl (tests/c/acl_cext.c, plain C) imported by a
Python program that also uses ``import acl``: one interpreter, one runtime, one farm client.

The module is built with gcc against this interpreter's headers and the toolkit tree's
``runtime/lib64/libascendcl.so``; the program runs in this venv's Python with ``set_env.sh``
sourced (its ``LD_LIBRARY_PATH`` finds the library). libascendcl then runs in the program's own
interpreter: device memory allocated from C is read by ``acl.rt.memcpy`` and the other way
round, ``aclInit`` from C says 100002 after ``acl.init()``, and the farm reclaims exactly one
client when the program is killed holding memory from both.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from farm.admin import query_status
from tests.conftest import poll_for
from tests.system.cabi_fixtures import (
    TESTS_C,
    arrows,
    build_python_extension,
    read_until,
    session_tree,
    start_sourced,
)
from tests.system.conftest import start_farm, stop_and_check

pytestmark = [pytest.mark.system, pytest.mark.timeout(90)]

C_BYTES, PY_BYTES = 4096, 8192  # what the program holds from C and from Python when killed
PROGRAM = """
import sys

import numpy as np

import acl
import acl_cext

H2D, D2H = 1, 2


def say(name, value):
    print(f"{name} -> {value}", flush=True)


say("acl.init", acl.init())
say("aclInit from C", acl_cext.init())
say("acl.rt.set_device", acl.rt.set_device(0))
say("aclrtGetDevice from C", acl_cext.current_device())  # this thread's context, set in Python

payload = bytes(range(256)) * 16
c_ptr, code = acl_cext.upload(payload)  # aclrtMalloc + aclrtMemcpy in C
say("upload from C", code)
host = np.zeros(len(payload), np.uint8)
code = acl.rt.memcpy(acl.util.numpy_to_ptr(host), host.nbytes, c_ptr, len(payload), D2H)
say("acl.rt.memcpy of C's memory", code)
say("C's bytes read in Python", host.tobytes() == payload)

other = np.frombuffer(bytes(reversed(payload)), np.uint8).copy()
py_ptr, code = acl.rt.malloc(other.nbytes, 0)
say("acl.rt.malloc", code)
code = acl.rt.memcpy(py_ptr, other.nbytes, acl.util.numpy_to_ptr(other), other.nbytes, H2D)
say("acl.rt.memcpy to Python's memory", code)
data, code = acl_cext.download(py_ptr, other.nbytes)
say("download from C", code)
say("Python's bytes read in C", data == other.tobytes())
say("aclrtFree from C of Python's memory", acl_cext.free(py_ptr))
say("acl.rt.free of C's memory", acl.rt.free(c_ptr))
say("aclrtFree from C again", acl_cext.free(c_ptr))
say("acl.rt.reset_device", acl.rt.reset_device(0))
say("aclFinalize from C", acl_cext.finalize())
say("acl.finalize after it", acl.finalize())

# a second session, held from both sides when the test kills the program
say("acl.init again", acl.init())
say("acl.rt.set_device again", acl.rt.set_device(0))
say("hold from C", acl_cext.upload(bytes(C_BYTES))[1])
say("hold from Python", acl.rt.malloc(PY_BYTES, 0)[1])
print("HOLDING", flush=True)
sys.stdin.readline()
"""


@pytest.fixture(scope="module")
def extension(tmp_path_factory) -> tuple[Path, Path]:
    """(the toolkit root, the directory holding the built ``acl_cext`` module)."""
    root = session_tree(tmp_path_factory)
    out = tmp_path_factory.mktemp("cext")
    build_python_extension(root, TESTS_C / "acl_cext.c", "acl_cext", out)
    return root, out


@pytest.fixture(scope="module")
def ext_farm():
    farm = start_farm(cards=1)
    yield farm
    stop_and_check(farm)


def _hbm_used(farm) -> int:
    return query_status(farm.address)["cards"][0]["stats"]["hbm_used"]


def test_extension_module_and_import_acl_share_one_runtime_and_one_client(extension, ext_farm):
    root, module_dir = extension
    program_path = module_dir / "uses_both.py"
    text = PROGRAM.replace("C_BYTES", str(C_BYTES)).replace("PY_BYTES", str(PY_BYTES))
    program_path.write_text(text)
    env = {**os.environ, "NPUFARM_ADDRESS": ext_farm.address}
    program = start_sourced(root, [sys.executable, program_path], env, module_dir)
    try:
        said = arrows("\n".join(read_until(program, "HOLDING")))
        poll_for(lambda: _hbm_used(ext_farm) >= C_BYTES + PY_BYTES, 10.0)  # (heartbeat stats)
        program.send_signal(signal.SIGKILL)
        program.communicate(timeout=30)
    finally:
        if program.poll() is None:
            program.kill()
            program.communicate()
    assert said == {
        "acl.init": "0",
        "aclInit from C": "100002",  # the session import acl started
        "acl.rt.set_device": "0",
        "aclrtGetDevice from C": "(0, 0)",
        "upload from C": "0",
        "acl.rt.memcpy of C's memory": "0",
        "C's bytes read in Python": "True",
        "acl.rt.malloc": "0",
        "acl.rt.memcpy to Python's memory": "0",
        "download from C": "0",
        "Python's bytes read in C": "True",
        "aclrtFree from C of Python's memory": "0",
        "acl.rt.free of C's memory": "0",
        "aclrtFree from C again": "107000",  # one allocation table: already freed
        "acl.rt.reset_device": "0",
        "aclFinalize from C": "0",
        "acl.finalize after it": "100037",  # one session: C ended it
        "acl.init again": "0",
        "acl.rt.set_device again": "0",
        "hold from C": "0",
        "hold from Python": "0",
    }
    # the farm saw one client: killed, it is reclaimed once, with what both sides held
    # (the broker counts the client at once, the card its memory when it has released it)
    poll_for(lambda: query_status(ext_farm.address)["reclaimed"]["cards"]["0"]["clients"], 10.0)
    reclaimed = query_status(ext_farm.address)["reclaimed"]
    assert reclaimed["clients"] == 1 and reclaimed["cards"]["0"]["clients"] == 1, reclaimed
    assert reclaimed["hbm_bytes"] >= C_BYTES + PY_BYTES
    poll_for(lambda: _hbm_used(ext_farm) == 0, 10.0)
