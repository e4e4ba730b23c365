"""Devices and contexts: ``aclrtSetDevice`` ... ``aclrtGetCurrentContext``, the device-wide
syncs, the run mode, the ACL version, the SoC name and the floating-point overflow mode
(``aclrtSetDeviceSatMode`` / ``aclrtGetDeviceSatMode``), forwarded to the runtime ``acl.rt``
uses.

Out-parameters are checked before the runtime is asked (a NULL one is 100000 and nothing
happens: no context is created for ``aclrtCreateContext(NULL, 0)``), and written only when the
call succeeded. Contexts are the runtime's int handles, passed to C as ``void *``.
"""

from __future__ import annotations

import logging
from typing import Any

from cabi.bridge import cdata
from cabi.bridge.registry import CallTable
from client import RUNTIME

__all__ = ["CALLS"]

logger = logging.getLogger(__name__)

CALLS = CallTable()


@CALLS.error
def aclrtSetDevice(device_id: int) -> int:
    """Bind this thread to the device (its default context); 107001 for a bad id."""
    return RUNTIME.set_device(device_id)


@CALLS.error
def aclrtResetDevice(device_id: int) -> int:
    """Drop one reference to the device; at zero its resources go."""
    return RUNTIME.reset_device(device_id)


@CALLS.error
def aclrtGetDevice(device_id: Any) -> int:
    """Write this thread's current device; 107002 without a context."""
    cdata.require(device_id, "deviceId")
    value, ret = RUNTIME.get_device()
    if ret == 0:
        cdata.store("int32_t", device_id, value)
    return ret


@CALLS.error
def aclrtGetDeviceCount(count: Any) -> int:
    """Write the number of devices this process sees (0 with the error when it sees none,
    as CANN writes it); works before aclInit (asks the farm; none: 0 and 207004)."""
    cdata.require(count, "count")
    value, ret = RUNTIME.get_device_count()
    cdata.store("uint32_t", count, value if ret == 0 else 0)
    return ret


@CALLS.error
def aclrtGetRunMode(run_mode: Any) -> int:
    """Write ACL_HOST (1): the farm runs on the host."""
    cdata.require(run_mode, "runMode")
    value, ret = RUNTIME.get_run_mode()
    if ret == 0:
        cdata.store("int", run_mode, value)
    return ret


@CALLS.error
def aclrtQueryDeviceStatus(device_id: int, status: Any) -> int:
    """Write 0 (normal) or 1 (abnormal: a lost card)."""
    cdata.require(status, "deviceStatus")
    value, ret = RUNTIME.query_device_status(device_id)
    if ret == 0:
        cdata.store("int", status, value)
    return ret


@CALLS.error
def aclrtGetVersion(major: Any, minor: Any, patch: Any) -> int:
    """Write the ACL interface version (1.17.0, the headers' ACL_*_VERSION); works before
    aclInit."""
    cdata.require(major, "majorVersion")
    cdata.require(minor, "minorVersion")
    cdata.require(patch, "patchVersion")
    (*version, ret) = RUNTIME.get_version()
    for pointer, value in zip((major, minor, patch), version, strict=True):
        cdata.store("int32_t", pointer, value)
    return ret


@CALLS.pointer
def aclrtGetSocName() -> Any:
    """The SoC name of the current (else the first) card, e.g. "Ascend910B"; before aclInit
    the farm's first card's; NULL when there is no farm."""
    name = RUNTIME.get_soc_name()
    return cdata.interned(name) if name else cdata.null()


@CALLS.error
def aclrtSetDeviceSatMode(mode: int) -> int:
    """Set the current device's overflow mode (0 saturation, 1 inf/nan; others → 100000)."""
    return RUNTIME.set_device_sat_mode(mode)


@CALLS.error
def aclrtGetDeviceSatMode(mode: Any) -> int:
    """Write the current device's overflow mode (1, inf/nan, unless set); 107002 without a
    context."""
    cdata.require(mode, "mode")
    value, ret = RUNTIME.get_device_sat_mode()
    if ret == 0:
        cdata.store("int", mode, value)
    return ret


@CALLS.error
def aclrtSynchronizeDevice() -> int:
    """Wait for every stream of the current device; the first task error."""
    return RUNTIME.synchronize_device()


@CALLS.error
def aclrtSynchronizeDeviceWithTimeout(timeout_ms: int) -> int:
    """As aclrtSynchronizeDevice, 507046 after ``timeout_ms`` (-1: forever)."""
    return RUNTIME.synchronize_device_with_timeout(timeout_ms)


# -- contexts --------------------------------------------------------------------------------
@CALLS.error
def aclrtCreateContext(context: Any, device_id: int) -> int:
    """Create a context on the device, make it current and write it."""
    cdata.require(context, "context")
    handle, ret = RUNTIME.create_context(device_id)
    if ret == 0:
        cdata.store("void *", context, cdata.pointer(handle))
    return ret


@CALLS.error
def aclrtDestroyContext(context: Any) -> int:
    """Destroy a context and its streams; unknown → 100000."""
    return RUNTIME.destroy_context(cdata.address(context))


@CALLS.error
def aclrtSetCurrentContext(context: Any) -> int:
    """Make a context current for this thread (its device becomes current too)."""
    return RUNTIME.set_context(cdata.address(context))


@CALLS.error
def aclrtGetCurrentContext(context: Any) -> int:
    """Write this thread's current context; 107002 when there is none."""
    cdata.require(context, "context")
    handle, ret = RUNTIME.get_context()
    if ret == 0:
        cdata.store("void *", context, cdata.pointer(handle))
    return ret
