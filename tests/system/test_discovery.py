"""Discovery before ``acl.init`` on a real 3-card farm, as Ray and deployment tools do it: the
device count, the SoC name, the version and the run mode, from Python (each in a fresh process
with a clean environment), through Ray's own NPU accelerator manager, and from C.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from tests.system.cabi_fixtures import TESTS_C, build_c_program, run_sourced, session_tree
from tests.system.conftest import REPO, start_farm, stop_and_check

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]

CARDS = 3
SOC = "Ascend910B"
NO_DEVICE, UNINITIALIZE, INVALID_PARAM = 207004, 100001, 100000

PROBE = textwrap.dedent(
    """\
    import json, os, threading, time
    import acl
    from client import RUNTIME

    fds = len(os.listdir("/proc/self/fd"))
    started = time.monotonic()
    answers = {
        "count": acl.rt.get_device_count(),
        "soc": acl.get_soc_name(),
        "rt_soc": acl.rt.get_soc_name(),
        "count_again": acl.rt.get_device_count(),
        "soc_again": acl.get_soc_name(),
    }
    answers["elapsed_s"] = time.monotonic() - started
    answers["version"] = acl.get_version()
    answers["run_mode"] = acl.rt.get_run_mode()
    answers["set_device"] = acl.rt.set_device(0)
    answers["session"] = RUNTIME.state.session is not None
    answers["threads"] = sorted(t.name for t in threading.enumerate())
    answers["fds_added"] = len(os.listdir("/proc/self/fd")) - fds
    if os.environ.get("PROBE_INIT"):
        answers["init"] = acl.init()
        answers["count_after_init"] = acl.rt.get_device_count()
        answers["soc_after_init"] = acl.get_soc_name()
        answers["finalize"] = acl.finalize()
    print(json.dumps(answers))
    """
)


@pytest.fixture(scope="module")
def farm3():
    running = start_farm(cards=CARDS)
    yield running
    stop_and_check(running)


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any ASCEND_* / NPUFARM_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASCEND_", "NPUFARM_"))}
    env.update(extra)
    return env


def probe(env: dict[str, str], code: str = PROBE) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout.splitlines()[-1])
    answers["stderr"] = done.stderr
    return answers


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_count_soc_version_and_run_mode_before_init(farm3):
    found = probe(clean_env(NPUFARM_ADDRESS=farm3.address, PROBE_INIT="1"))
    assert found["count"] == found["count_again"] == [CARDS, 0]
    assert found["soc"] == found["rt_soc"] == found["soc_again"] == SOC
    assert found["version"] == [1, 17, 0, 0]
    assert found["run_mode"] == [1, 0]
    assert found["set_device"] == UNINITIALIZE  # everything else still needs acl.init
    # a short-lived query each: no session, no I/O thread, no socket or fd left open
    assert found["session"] is False
    assert not [t for t in found["threads"] if t.startswith("npufarm")]
    assert found["fds_added"] <= 0
    assert (found["init"], found["finalize"]) == (0, 0)
    assert found["count_after_init"] == [CARDS, 0] and found["soc_after_init"] == SOC


def test_the_default_farm_is_found_through_its_state_file(farm3, tmp_path):
    """Without NPUFARM_ADDRESS the default farm's state file names the farm (a copy of this
    farm's state file under the name "default" in another runtime directory)."""
    state = json.loads((farm3.runtime_dir / f"{farm3.name}.json").read_text())
    (tmp_path / "default.json").write_text(json.dumps({**state, "name": "default"}))
    found = probe(clean_env(NPUFARM_RUNTIME_DIR=str(tmp_path)))
    assert found["count"] == [CARDS, 0] and found["soc"] == SOC


@pytest.mark.parametrize(
    ("variables", "count", "soc"),
    [
        ({"ASCEND_RT_VISIBLE_DEVICES": "1,2"}, [2, 0], SOC),
        ({"ASCEND_RT_VISIBLE_DEVICES": "2"}, [1, 0], SOC),
        ({"ASCEND_RT_VISIBLE_DEVICES": "1,7"}, [1, 0], SOC),  # parsing stops at a non-device
        ({"ASCEND_RT_VISIBLE_DEVICES": ""}, [0, NO_DEVICE], SOC),  # empty: none
        ({"ASCEND_RT_VISIBLE_DEVICES": "7"}, [0, NO_DEVICE], SOC),  # unknown id: none
        ({"ASCEND_RT_VISIBLE_DEVICES": "2,1"}, [0, NO_DEVICE], SOC),  # not ascending
        ({"ASCEND_VISIBLE_DEVICES": "0-1"}, [2, 0], SOC),
        ({"ASCEND_VISIBLE_DEVICES": "0,2", "ASCEND_RT_VISIBLE_DEVICES": "1"}, [1, 0], SOC),
        ({"ASCEND_VISIBLE_DEVICES": "void"}, [0, NO_DEVICE], None),  # nothing mounted
        ({"ASCEND_VISIBLE_DEVICES": "5"}, [0, NO_DEVICE], None),
    ],
)
def test_visible_devices_before_init(farm3, variables, count, soc):
    found = probe(clean_env(NPUFARM_ADDRESS=farm3.address, **variables))
    assert found["count"] == count and found["soc"] == soc


def test_no_farm_is_no_driver(tmp_path):
    """Nothing configured (no address, no default farm): 0 devices with 207004, no SoC name
    (None, as pyACL gives for CANN's NULL), at once."""
    found = probe(clean_env(NPUFARM_RUNTIME_DIR=str(tmp_path)))
    assert found["count"] == [0, NO_DEVICE] and found["soc"] is None and found["rt_soc"] is None
    assert found["version"] == [1, 17, 0, 0]
    assert found["elapsed_s"] < 0.5


@pytest.mark.parametrize("kind", ["tcp", "ipc"])
def test_a_dead_address_answers_as_no_driver_within_a_second(kind, tmp_path):
    """A farm address nobody answers on: one bounded wait for the whole sequence of calls, the
    no-driver answers, and one warning saying why."""
    address = f"tcp://127.0.0.1:{closed_port()}" if kind == "tcp" else f"ipc://{tmp_path}/gone.sock"
    found = probe(clean_env(NPUFARM_ADDRESS=address))
    assert found["count"] == found["count_again"] == [0, NO_DEVICE]
    assert found["soc"] is None and found["soc_again"] is None
    assert found["elapsed_s"] < 1.5
    assert found["stderr"].count("no device before acl.init") == 1, found["stderr"]


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs npufarm[ray]")
def test_rays_npu_accelerator_manager_sees_the_farm(farm3, tmp_path):
    """Ray's own detection code (what ``ray start`` runs on a node) finds the farm's cards and
    SoC name; with no farm, 0 NPUs."""
    code = textwrap.dedent(
        """\
        import json
        from ray._private.accelerators.npu import NPUAcceleratorManager as npu
        print(json.dumps({"answer": [npu.get_current_node_num_accelerators(),
                                     npu.get_current_node_accelerator_type()]}))
        """
    )
    found = probe(clean_env(NPUFARM_ADDRESS=farm3.address), code)
    assert found["answer"] == [CARDS, SOC], found["stderr"]
    found = probe(clean_env(NPUFARM_RUNTIME_DIR=str(tmp_path)), code)
    assert found["answer"][0] == 0, found["stderr"]


@pytest.fixture(scope="module")
def discovery_program(tmp_path_factory):
    root = session_tree(tmp_path_factory)
    out = tmp_path_factory.mktemp("discovery") / "discovery"
    return root, build_c_program(root, TESTS_C / "discovery.c", out)


def c_answers(program, env: dict[str, str], *args: str) -> dict[str, str]:
    root, executable = program
    done = run_sourced(root, [executable, *args], env, executable.parent)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def test_c_discovery_before_aclinit(farm3, discovery_program):
    found = c_answers(discovery_program, clean_env(NPUFARM_ADDRESS=farm3.address))
    assert (found["before_count"], found["before_ret"], found["before_soc"]) == ("3", "0", SOC)
    assert (found["version"], found["version_ret"]) == ("1.17.0", "0")
    assert found["null_count_ret"] == str(INVALID_PARAM)
    assert found["init_ret"] == "0" and found["finalize_ret"] == "0"
    assert (found["after_count"], found["after_ret"], found["after_soc"]) == ("3", "0", SOC)


def test_c_discovery_applies_visible_devices(farm3, discovery_program):
    env = clean_env(NPUFARM_ADDRESS=farm3.address, ASCEND_RT_VISIBLE_DEVICES="0,2")
    found = c_answers(discovery_program, env, "--no-init")
    assert (found["before_count"], found["before_ret"]) == ("2", "0")
    env = clean_env(NPUFARM_ADDRESS=farm3.address, ASCEND_RT_VISIBLE_DEVICES="9")
    found = c_answers(discovery_program, env, "--no-init")
    assert (found["before_count"], found["before_ret"]) == ("0", str(NO_DEVICE))


def test_c_discovery_without_a_farm(discovery_program, tmp_path):
    found = c_answers(discovery_program, clean_env(NPUFARM_RUNTIME_DIR=str(tmp_path)), "--no-init")
    assert (found["before_count"], found["before_ret"]) == ("0", str(NO_DEVICE))
    assert found["before_soc"] == "(null)"
    assert (found["version"], found["version_ret"]) == ("1.17.0", "0")
