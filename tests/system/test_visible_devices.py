"""ASCEND_RT_VISIBLE_DEVICES (and the container variable ASCEND_VISIBLE_DEVICES) on a real
4-card farm, from Python and from a C program: the process sees and numbers only the cards the
value names, with CANN's codes for the values CANN rejects, and its work lands on the farm cards
the values map to (checked by the farm: the card a pointer belongs to, each card's HBM in use
and tasks run).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import acl as facade
from client import RUNTIME
from client.visible import CONTAINER_VISIBLE_DEVICES, RT_VISIBLE_DEVICES
from device.memory import decode_ptr
from farm.admin import query_status
from tests.conftest import poll_for
from tests.system.cabi_fixtures import run_sourced, session_tree
from tests.system.conftest import REPO, start_farm, stop_and_check
from tests.system.test_faults import Model, fault_farm

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]

MiB = 1 << 20
NO_DEVICE, INVALID_DEVICE = 207004, 107001


@pytest.fixture(scope="module")
def farm4():
    running = start_farm(cards=4)
    yield running
    stop_and_check(running)


@pytest.fixture
def visible(monkeypatch):
    """``visible(rt=..., container=...)`` sets the variables for this test (unset by default)."""
    monkeypatch.delenv(RT_VISIBLE_DEVICES, raising=False)
    monkeypatch.delenv(CONTAINER_VISIBLE_DEVICES, raising=False)

    def choose(rt: str | None = None, container: str | None = None) -> None:
        for name, value in ((RT_VISIBLE_DEVICES, rt), (CONTAINER_VISIBLE_DEVICES, container)):
            if value is not None:
                monkeypatch.setenv(name, value)

    return choose


def card_stats(farm) -> list[dict]:
    return [card["stats"] for card in query_status(farm.address)["cards"]]


def card_of(ptr: int) -> int:
    """The farm card a device pointer belongs to (the pointer encodes it)."""
    return decode_ptr(ptr)[0]


def malloc_on(acl, device: int) -> int:
    """A 1 MiB allocation on the process's device ``device`` (made current)."""
    assert acl.rt.set_device(device) == 0, acl.get_recent_err_msg()
    ptr, ret = acl.rt.malloc(MiB, 0)
    assert ret == 0, acl.get_recent_err_msg()
    return ptr


# --------------------------------------------------------------------------------------------
# Python


def test_renumbers_and_lands_on_the_named_cards(farm4, visible, acl_on):
    visible(rt="2,3")
    with acl_on(farm4) as acl:
        assert acl.rt.get_device_count() == (2, 0)
        assert RUNTIME.state.view.cards == (2, 3)
        ptr = malloc_on(acl, 0)
        assert acl.rt.get_device() == (0, 0)  # the process's id, not the card's
        assert card_of(ptr) == 2
        poll_for(lambda: card_stats(farm4)[2].get("hbm_used", 0) >= MiB, 10.0)  # the farm agrees
        # a context on device 1 is card 3
        context, ret = acl.rt.create_context(1)
        assert ret == 0
        other, ret = acl.rt.malloc(MiB, 0)
        assert ret == 0 and card_of(other) == 3
        assert acl.rt.get_device() == (1, 0)
        assert acl.rt.query_device_status(1) == (0, 0)
        # ids past the visible ones: CANN's 107001, the message says why
        assert acl.rt.set_device(2) == INVALID_DEVICE
        text = acl.get_recent_err_msg()
        assert "no device 2" in text and "ASCEND_RT_VISIBLE_DEVICES='2,3'" in text
        assert acl.rt.create_context(2) == (0, INVALID_DEVICE)
        assert acl.rt.query_device_status(3) == (0, INVALID_DEVICE)
        assert acl.rt.reset_device(2) == INVALID_DEVICE
        assert acl.rt.free(other) == 0
        assert acl.rt.destroy_context(context) == 0
        assert acl.rt.set_device(0) == 0
        assert acl.rt.get_device() == (0, 0)
        assert acl.rt.free(ptr) == 0
        assert acl.rt.reset_device(0) == 0
        assert acl.rt.reset_device(0) == 0


@pytest.mark.parametrize(
    ("value", "cards"),
    [
        ("1,3,8", (1, 3)),  # CANN's doc: an id that is no device ends the list
        ("0,3,9,1", (0, 3)),  # ... before the order is checked
        ("1, 2", (1,)),  # CANN's doc: reading stops at the space
        ("3", (3,)),
    ],
)
def test_partly_valid_values_keep_what_came_before(farm4, visible, acl_on, value, cards):
    visible(rt=value)
    with acl_on(farm4) as acl:
        assert acl.rt.get_device_count() == (len(cards), 0)
        for device, card in enumerate(cards):
            ptr = malloc_on(acl, device)
            assert card_of(ptr) == card
            assert acl.rt.free(ptr) == 0
            assert acl.rt.reset_device(device) == 0
        assert acl.rt.set_device(len(cards)) == INVALID_DEVICE


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("2,0", "ascending order"),  # CANN: "it must be configured in ascending order"
        ("1,1", "repeated"),  # CANN: "cannot be duplicated"
        ("", "names none"),  # empty: nothing selected
        ("4,7", "names none"),  # unknown ids only (the farm has cards 0..3)
        (" 1", "names none"),  # must begin with a digit
    ],
)
def test_rejected_values_leave_no_device(farm4, visible, acl_on, value, why):
    visible(rt=value)
    with acl_on(farm4) as acl:  # acl.init itself succeeds, as aclInit does
        assert acl.rt.get_device_count() == (0, NO_DEVICE)
        text = acl.get_recent_err_msg()
        assert "no device is visible" in text and why in text
        for device in (0, 1):
            assert acl.rt.set_device(device) == INVALID_DEVICE
        assert "none is visible" in acl.get_recent_err_msg()
        assert acl.rt.create_context(0) == (0, INVALID_DEVICE)


def test_container_variable_mounts_cards_and_rt_picks_among_them(farm4, visible, acl_on):
    visible(container="1-3")  # Docker's syntax; alone it restricts and renumbers too
    with acl_on(farm4) as acl:
        assert acl.rt.get_device_count() == (3, 0)
        ptr = malloc_on(acl, 0)
        assert card_of(ptr) == 1
        assert acl.rt.free(ptr) == 0
        assert acl.rt.reset_device(0) == 0
    visible(container="1-3", rt="2")  # device 2 of the container: card 3
    with acl_on(farm4) as acl:
        assert acl.rt.get_device_count() == (1, 0)
        ptr = malloc_on(acl, 0)
        assert card_of(ptr) == 3
        assert acl.rt.free(ptr) == 0
        assert acl.rt.reset_device(0) == 0
    visible(container="1-3", rt="3")  # the container has devices 0..2 only
    with acl_on(farm4) as acl:
        assert acl.rt.get_device_count() == (0, NO_DEVICE)


def test_unset_again_sees_every_card(farm4, visible, acl_on):
    """Read at each acl.init: a later session without the variable sees the whole farm."""
    visible()
    with acl_on(farm4) as acl:
        assert acl.rt.get_device_count() == (4, 0)
        ptr = malloc_on(acl, 2)
        assert card_of(ptr) == 2 and acl.rt.get_device() == (2, 0)
        assert acl.rt.free(ptr) == 0
        assert acl.rt.reset_device(2) == 0


def test_exception_info_names_the_process_device(tmp_path, visible, acl_on):
    rule = {"kind": "error", "card": 2, "api": "execute", "count": 1, "code": 507015}
    visible(rt="2,3")
    seen: list[int] = []
    assert (
        facade.rt.set_exception_info_callback(
            lambda info: seen.append(facade.rt.get_device_id_from_exception_info(info))
        )
        == 0
    )
    try:
        with fault_farm(tmp_path, rule, cards=4) as farm, acl_on(farm) as acl:
            assert acl.rt.set_device(0) == 0
            stream, _ = acl.rt.create_stream()
            model = Model(acl, tmp_path)
            assert model.submit(stream) == 0  # fails on card 2
            assert acl.rt.synchronize_stream(stream) == 507015
            poll_for(lambda: seen, 5.0)
            RUNTIME.exception_reporter.drain(5.0)
            assert seen == [0]  # card 2 is device 0 of this process
            # the farm's own record names the card
            poll_for(lambda: farm_failed(farm) == {2: 1}, 10.0)
            assert acl.rt.destroy_stream(stream) == 0
            assert acl.rt.reset_device(0) == 0
    finally:
        assert facade.rt.set_exception_info_callback(None) == 0


def farm_failed(farm) -> dict[int, int]:
    """Failed tasks per card, as the farm's status reports them."""
    return {i: s.get("failed", 0) for i, s in enumerate(card_stats(farm)) if s.get("failed")}


# --------------------------------------------------------------------------------------------
# C, and `npufarm run`

C_PROGRAM = textwrap.dedent(
    """\
    #include <stdio.h>
    #include <stdint.h>
    #include "acl/acl.h"

    int main(void) {
        uint32_t count = 99;
        int32_t device = -1;
        void *ptr = NULL;
        aclrtStream stream = NULL;
        if (aclInit(NULL) != ACL_SUCCESS) return 2;
        aclError ret = aclrtGetDeviceCount(&count);
        printf("count %u %d\\n", count, (int)ret);
        if (ret != ACL_SUCCESS) { aclFinalize(); return 0; }
        if (aclrtSetDevice(0) != ACL_SUCCESS) return 3;
        aclrtGetDevice(&device);
        printf("device %d\\n", (int)device);
        if (aclrtMalloc(&ptr, 4096, ACL_MEM_MALLOC_HUGE_FIRST) != ACL_SUCCESS) return 4;
        printf("ptr %llu\\n", (unsigned long long)(uintptr_t)ptr);
        if (aclrtCreateStream(&stream) != ACL_SUCCESS) return 5;
        if (aclrtMemsetAsync(ptr, 4096, 7, 4096, stream) != ACL_SUCCESS) return 6;
        if (aclrtSynchronizeStreamWithTimeout(stream, 30000) != ACL_SUCCESS) return 7;
        printf("next %d\\n", (int)aclrtSetDevice((int32_t)count));
        aclrtDestroyStream(stream);
        aclrtFree(ptr);
        aclrtResetDevice(0);
        return aclFinalize() == ACL_SUCCESS ? 0 : 8;
    }
    """
)


@pytest.fixture(scope="module")
def c_program(tmp_path_factory):
    """(toolkit root, the program built with the system compiler against the stub library)."""
    root = session_tree(tmp_path_factory)
    work = tmp_path_factory.mktemp("visible_c")
    (work / "visible.c").write_text(C_PROGRAM)
    built = subprocess.run(
        [
            "gcc",
            "-std=c99",
            "-Wall",
            "-Werror",
            "visible.c",
            f"-I{root / 'runtime' / 'include'}",
            f"-L{root / 'runtime' / 'lib64' / 'stub'}",
            "-lascendcl",
            "-o",
            "visible",
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    return root, work / "visible"


def ran_since(farm, before: list[dict]) -> list[int]:
    """Tasks each card was given since ``before`` (a :func:`card_stats`)."""
    now = card_stats(farm)
    return [a.get("submitted", 0) - b.get("submitted", 0) for a, b in zip(now, before, strict=True)]


def _lines(stdout: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split()[1:] for line in stdout.splitlines() if line.strip()}


def _env(farm, **values: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in (RT_VISIBLE_DEVICES, CONTAINER_VISIBLE_DEVICES)
    }
    return {**env, "NPUFARM_ADDRESS": farm.address, **values}


def test_c_program_sees_one_device_on_card_1(farm4, c_program):
    root, program = c_program
    before = card_stats(farm4)
    done = run_sourced(root, [program], _env(farm4, ASCEND_RT_VISIBLE_DEVICES="1"), program.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    out = _lines(done.stdout)
    assert out["count"] == ["1", "0"]
    assert out["device"] == ["0"]
    assert card_of(int(out["ptr"][0])) == 1
    assert out["next"] == [str(INVALID_DEVICE)]  # device 1 does not exist for it
    # the memset ran on card 1 (cards report their counts with their heartbeats)
    poll_for(lambda: ran_since(farm4, before)[1] >= 1, 10.0)
    ran = ran_since(farm4, before)
    assert ran[0] == ran[2] == ran[3] == 0, ran


def test_c_program_with_a_rejected_value(farm4, c_program):
    root, program = c_program
    done = run_sourced(
        root, [program], _env(farm4, ASCEND_RT_VISIBLE_DEVICES="3,1"), program.parent
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert _lines(done.stdout)["count"][1] == str(NO_DEVICE)


def test_npufarm_run_passes_the_variable_through(farm4, c_program):
    root, program = c_program
    run = [sys.executable, "-m", "npufarm", "run", "--address", farm4.address, "--", program]
    done = run_sourced(root, run, _env(farm4, ASCEND_RT_VISIBLE_DEVICES="2"), REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    out = _lines(done.stdout)
    assert out["count"] == ["1", "0"]
    assert card_of(int(out["ptr"][0])) == 2
