"""What a process sees before ``acl.init``: the device count and the SoC name, asked of the farm
in one short-lived request, as real CANN asks the driver.

::

    acl.rt.get_device_count()       DEALER (new, LINGER 0)   STATUS    farm broker
    acl.get_soc_name()        ───▶  connect NPUFARM_ADDRESS ───────────▶ (answers its cards)
    aclrtGetDeviceCount (C)         or the state file's     ◀───────────
    aclrtGetSocName (C)             endpoint; closed at once  ≤ 1 s in all

Ray's NPU accelerator manager counts a node's NPUs this way (``acl.rt.get_device_count()`` in
the process that runs ``ray start``, with no ``acl.init``) and reads the accelerator type with
``acl.get_soc_name()``; pyACL programs and tools do the same to pick a device or a
``--soc_version``.

What CANN does, and what npufarm does:

- ``aclrtGetDeviceCount`` works without ``aclInit``: the runtime asks the driver each call. With
  no driver, or no device behind it, it writes 0 and returns 207004 (ACL_ERROR_RT_NO_DEVICE,
  "driver error:no valid device"): hicann/runtime's unit test ``CloudV2ApiImplTest.
  GetDeviceCount_test`` pins ``RT_ERROR_DRV_NO_DEVICE`` and count 0 for a failing driver query
  (``RT_GET_DRIVER_ERROR``), and ``error_message_manage.cc`` maps ``RT_ERROR_DRV_NO_DEVICE`` to
  ``ACL_ERROR_RT_NO_DEVICE``; torch_npu users without a usable device report "aclrtGetDeviceCount
  ... error code is 207004" (gpustack/gpustack#3352). npufarm: the farm is the driver; no farm
  configured, a dead address or a farm that does not answer within
  :data:`DISCOVERY_TIMEOUT_S` give 0 and 207004, and the reason is logged (a warning when
  ``NPUFARM_ADDRESS`` names a farm that does not answer, debug when no farm is configured).
  The count is not cached: each call asks again, as the driver is asked again (an address that
  did not answer is not asked again for :data:`DEAD_MEMORY_S`, so a dead farm costs one wait).
- ``ASCEND_RT_VISIBLE_DEVICES`` / ``ASCEND_VISIBLE_DEVICES`` restrict and renumber the devices
  exactly as after ``acl.init`` (:func:`client.visible.device_view`, one implementation): an
  empty or rejected value leaves no device (207004).
- ``aclrtGetSocName`` works without ``aclInit`` and returns NULL when the SoC cannot be read
  (hicann/runtime ``src/acl/aclrt_impl/acl_rt_impl_base.cpp``: ``aclrtGetSocNameImpl`` returns
  ``nullptr`` when ``rtGetSocVersion`` fails); pyACL turns NULL into ``None`` (callers test
  ``if soc is None``). The first name read is kept for the life of the process (the static
  ``aclSocVersion`` there); the runtime's fallback reads the first device the driver lists,
  whatever ``ASCEND_RT_VISIBLE_DEVICES`` says. npufarm: the ``soc_name`` of the first card the
  container mount (``ASCEND_VISIBLE_DEVICES``) leaves, kept per farm address for the process
  (one process may meet several farms in tests); ``None`` with no farm.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from client.visible import (
    CONTAINER_VISIBLE_DEVICES,
    DeviceView,
    VisibleDevicesError,
    container_visible_cards,
    device_view,
)
from core import protocol as proto
from core import statefile
from core.errors import ACL_ERROR_RT_NO_DEVICE, AclError, NpuFarmError
from core.protocol import Cmd

__all__ = [
    "DISCOVERY_TIMEOUT_S",
    "DEAD_MEMORY_S",
    "farm_cards",
    "device_view_before_init",
    "soc_name",
]

logger = logging.getLogger(__name__)

DISCOVERY_TIMEOUT_S = 1.0
"""How long a call before ``acl.init`` waits for the farm in all (Ray's node start waits on it)."""

DEAD_MEMORY_S = 2.0
"""How long an address that did not answer is not asked again (so Ray's count-then-type
sequence waits :data:`DISCOVERY_TIMEOUT_S` once, not once per call)."""

_soc_names: dict[str, str] = {}  # farm address -> the SoC name first read from it
_dead: dict[str, float] = {}  # farm address -> when it last failed to answer (monotonic)


def _ask_status(address: str, timeout_s: float) -> dict[str, Any]:
    """One STATUS request on a short-lived DEALER; ``NpuFarmError`` if nobody answers."""
    ipc = address[len("ipc://") :] if address.startswith("ipc://") else None
    if ipc is not None and not Path(ipc).exists():
        raise NpuFarmError(f"no farm socket at {ipc}")
    return proto.ask_broker(address, Cmd.STATUS, {}, timeout_s)


def farm_cards(
    environ: Mapping[str, str] | None = None, timeout_s: float = DISCOVERY_TIMEOUT_S
) -> tuple[str, list[dict[str, Any]]] | None:
    """``(address, cards)`` of the farm this process would use (``NPUFARM_ADDRESS``, else the
    default farm's state file), asked now; None (the reason logged) when there is none or it
    does not answer within ``timeout_s``."""
    env = os.environ if environ is None else environ
    explicit = bool(env.get(statefile.ADDRESS_ENV, "").strip())
    address = statefile.resolve_address(env)
    if address is None:
        logger.debug("no farm before acl.init: %s unset and no default farm", statefile.ADDRESS_ENV)
        return None
    failed_s = _dead.get(address)
    if failed_s is not None and time.monotonic() - failed_s < DEAD_MEMORY_S:
        logger.debug("no device before acl.init: %s did not answer just now", address)
        return None
    try:
        farm = _ask_status(address, timeout_s)
        cards = farm["cards"]
        if not isinstance(cards, list):
            raise NpuFarmError(f"the farm at {address} described its cards as {cards!r}")
    except (NpuFarmError, KeyError, TypeError) as exc:
        _dead[address] = time.monotonic()
        level = logging.WARNING if explicit else logging.DEBUG
        logger.log(level, "no device before acl.init: %s", exc)
        return None
    _dead.pop(address, None)
    return address, [card for card in cards if isinstance(card, dict)]


def device_view_before_init(environ: Mapping[str, str] | None = None) -> DeviceView:
    """The devices this process sees before ``acl.init`` (visible-devices variables applied);
    ``AclError`` 207004 when there is no farm to ask."""
    found = farm_cards(environ)
    if found is None:
        raise AclError(
            "no device: no farm answered (the driver has no device)", ACL_ERROR_RT_NO_DEVICE
        )
    ids = [card["device_id"] for card in found[1] if isinstance(card.get("device_id"), int)]
    return device_view(ids, environ)


def soc_name(environ: Mapping[str, str] | None = None) -> str | None:
    """The SoC name before ``acl.init``: the first mounted card's, kept per farm address once
    read; None when no farm answers or it has no named card."""
    env = os.environ if environ is None else environ
    address = statefile.resolve_address(env)
    if address is not None and address in _soc_names:
        return _soc_names[address]
    found = farm_cards(env)
    if found is None:
        return None
    address, cards = found
    by_id = {c["device_id"]: c for c in cards if isinstance(c.get("device_id"), int)}
    mount = env.get(CONTAINER_VISIBLE_DEVICES)
    try:
        ids = sorted(by_id) if mount is None else container_visible_cards(mount, by_id)
    except VisibleDevicesError as exc:
        logger.debug("no SoC name before acl.init: %s", exc)
        return None
    for device_id in ids:
        name = by_id[device_id].get("soc_name")
        if isinstance(name, str) and name:
            _soc_names[address] = name
            return name
    return None
