"""Which of the farm's cards a process sees, and how it numbers them: ``ASCEND_RT_VISIBLE_DEVICES``
(and the container variable ``ASCEND_VISIBLE_DEVICES``) read as CANN reads them. Pure: no
client state, no farm; :func:`device_view` maps the farm's card ids and an environment to a
:class:`DeviceView`, so the runtime (at ``acl.init``) and the calls that answer before
``acl.init`` share one mapping.

What CANN does. Sources: the runtime's code (hicann/runtime ``src/runtime/core/src/runtime.cc``:
``Runtime::GetVisibleDevices``, ``SplitString``, ``ChgUserDevIdToDeviceId``,
``GetUserDevIdByDeviceId``) and unit tests (``tests/ut/runtime``: ``ApiImplTest.
GetDeviceCount_test``, ``RuntimeTest910B.ut_GetVisibleDevicesByChipCloudTest1``); the
``ASCEND_RT_VISIBLE_DEVICES`` page of CANN's environment-variable reference (envref_07_0028);
user logs quoting the runtime's messages (gpustack/gpustack#2527 and #3352, vLLM-Ascend worker
logs); Ascend Docker Runtime's user guide for ``ASCEND_VISIBLE_DEVICES``.

- The runtime reads ``ASCEND_RT_VISIBLE_DEVICES`` once, when it starts in the process (the log
  line ``GetVisibleDevices: set ASCEND_RT_VISIBLE_DEVICES:[4] error`` comes right after
  ``CreateRuntimeImpl``). Unset: every device, numbered as the driver numbers them.
- The value lists the ids of the devices the process would otherwise see (the driver's
  logical ids; in a container, the container's devices); entry ``i`` becomes device ``i``:
  ``"1,3"`` gives a count of 2, device 0 = device 1 of the host, device 1 = device 3.
- Parsing stops at the first character that is neither a digit nor a comma, at a second comma
  in a row, and at the first id that is not a device (``id >= count``); what came before
  stands: ``"1, 2,3"`` is ``[1]``, ``"1,3,8"`` on 8 devices is ``[1, 3]``, ``"1,-1"`` is
  ``[1]`` (the doc's examples and the runtime's own unit test). A value that does not begin
  with a digit (``""``, ``" 1"``) selects nothing.
- The ids must ascend: an id below the one before it rejects the whole value ("it must be
  configured in ascending order"), and so does a repeated id ("cannot be duplicated"); so
  does a value that selects nothing. Such a process sees no device at all:
  ``aclrtGetDeviceCount`` returns 207004 (ACL_ERROR_RT_NO_DEVICE, "driver error: no valid
  device"; the runtime's ``ApiImplTest.GetDeviceCount_test`` pins it for a repeated id and for
  a value that selects nothing, and user logs show it for "0,2,4,6,1,3,5,7" and for "4,7" on
  4 devices), and ``aclrtSetDevice(n)`` returns 107001
  (ACL_ERROR_RT_INVALID_DEVICEID, "Set visible device failed, invalid device=0, input visible
  devices:4,7"). ``aclInit`` itself succeeds.
- Every id the user passes (set/reset device, contexts, device status) is a logical one; an id
  ``>= count`` is 107001. What the runtime reports back is logical too: ``aclrtGetDevice``
  (``ContextGetDevice`` converts with ``GetUserDevIdByDeviceId``) and the device id of an
  exception info (``TaskFailCallBackNotify`` converts it before notifying).
- ``ASCEND_VISIBLE_DEVICES`` is not read by the runtime (it is not among the variables CANN's
  OS layer knows, ``mmSysGetEnv``'s list); it is Ascend Docker Runtime's variable: the
  physical cards (``"0-2,4"``, ``"Ascend910-1"``; empty or ``void``: none) mounted into a
  container, where they become devices 0..n-1. Ray used it for NPU tasks until it switched to
  ``ASCEND_RT_VISIBLE_DEVICES`` (ray-project/ray#42030, because CANN honours the latter), and
  ``RAY_EXPERIMENTAL_NOSET_ASCEND_RT_VISIBLE_DEVICES`` stops Ray from setting it.

What npufarm does: the same, with the farm's cards as the host's devices. Our choices where
CANN has nothing to say: ``ASCEND_VISIBLE_DEVICES``, when set, is applied first as the
container's mount (its physical cards, ascending, become devices 0..n-1; an id that is no card
or a value that is no list leaves no device, where Docker would refuse to start the
container), then ``ASCEND_RT_VISIBLE_DEVICES`` picks among those, as in a container; both are
read at every ``acl.init`` (CANN: once per process), and no visible device at all gives
207004 from the device count whatever the cause.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "RT_VISIBLE_DEVICES",
    "CONTAINER_VISIBLE_DEVICES",
    "DeviceView",
    "VisibleDevicesError",
    "split_ids",
    "rt_visible_devices",
    "container_visible_cards",
    "device_view",
]

RT_VISIBLE_DEVICES = "ASCEND_RT_VISIBLE_DEVICES"
CONTAINER_VISIBLE_DEVICES = "ASCEND_VISIBLE_DEVICES"

_CONTAINER_NONE = ("", "void")
_CONTAINER_ID = re.compile(r"(?:Ascend\w*-)?(\d+)(?:-(\d+))?")


class VisibleDevicesError(ValueError):
    """A visible-devices value that leaves the process no device (CANN: 207004 / 107001)."""


@dataclass(frozen=True)
class DeviceView:
    """The devices of one process: device ``i`` (what ACL calls take and report) is farm card
    ``cards[i]`` (what the farm's routes, ledger and status name)."""

    cards: tuple[int, ...]
    restricted: bool = False  # a variable chose the cards (ids and cards may differ)
    problem: str = ""  # why no device is visible, when a value was rejected
    setting: str = ""  # the variables as given (for messages)

    @property
    def count(self) -> int:
        return len(self.cards)

    def card(self, device_id: int) -> int | None:
        """The farm card of device ``device_id``; None when there is no such device."""
        return self.cards[device_id] if 0 <= device_id < len(self.cards) else None

    def device(self, card: int) -> int | None:
        """The device id this process knows farm card ``card`` by; None if it does not see it."""
        try:
            return self.cards.index(card)
        except ValueError:
            return None

    def why_none(self) -> str:
        """Why this process sees no device (for 207004 / 107001 messages)."""
        if self.problem:
            return self.problem
        return f"{self.setting} leaves no device" if self.setting else "the farm has no card"


def split_ids(value: str) -> list[str]:
    """The id tokens of an ``ASCEND_RT_VISIBLE_DEVICES`` value, split as CANN's ``SplitString``
    splits it: nothing unless it begins with a digit; digits run into a token; a comma ends
    one; any other character, or a second comma in a row, ends the list."""
    tokens: list[str] = []
    if not _is_digit(value[:1]):
        return tokens
    current = ""
    commas = 0
    for char in value:
        if _is_digit(char):
            current += char
            commas = 0
            continue
        if current:
            tokens.append(current)
            current = ""
        commas += 1
        if char != "," or commas > 1:
            break
    if current:
        tokens.append(current)
    return tokens


def _is_digit(char: str) -> bool:
    """C's ``isdigit`` in the C locale: ASCII 0-9 only (not Python's Unicode digits)."""
    return len(char) == 1 and "0" <= char <= "9"


def rt_visible_devices(value: str, device_count: int) -> list[int]:
    """The devices (of ``device_count``) that ``ASCEND_RT_VISIBLE_DEVICES=value`` selects, in
    order: entry ``i`` becomes device ``i``. Raises :class:`VisibleDevicesError` where CANN
    rejects the value (not ascending, a repeated id, nothing selected)."""
    selected: list[int] = []
    for token in split_ids(value):
        device = int(token)
        if device >= device_count:
            break  # an id that is no device ends the list; what came before stands
        if selected and device < selected[-1]:
            raise VisibleDevicesError(
                f"{RT_VISIBLE_DEVICES}={value!r}: the ids must be in ascending order"
            )
        if device in selected:
            raise VisibleDevicesError(f"{RT_VISIBLE_DEVICES}={value!r}: an id is repeated")
        selected.append(device)
        if len(selected) >= device_count:
            break
    if not selected:
        last = f"0..{device_count - 1}" if device_count else "none"
        raise VisibleDevicesError(
            f"{RT_VISIBLE_DEVICES}={value!r} names none of the {device_count} devices "
            f"of this process (ids {last})"
        )
    return selected


def container_visible_cards(value: str, cards: Iterable[int]) -> list[int]:
    """The farm cards ``ASCEND_VISIBLE_DEVICES=value`` mounts, ascending (Ascend Docker
    Runtime's syntax: ``"0"``, ``"1,3"``, ``"0-2,4"``, ``"Ascend910-1"``; empty or ``void``:
    none). Raises :class:`VisibleDevicesError` for a value that is no list or names no card."""
    known = set(cards)
    if value.strip() in _CONTAINER_NONE:
        return []
    mounted: set[int] = set()
    for item in value.split(","):
        found = _CONTAINER_ID.fullmatch(item.strip())
        if found is None:
            raise VisibleDevicesError(f"{CONTAINER_VISIBLE_DEVICES}={value!r} is not a card list")
        first = int(found.group(1))
        last = int(found.group(2)) if found.group(2) is not None else first
        mounted.update(range(first, last + 1))
    unknown = sorted(mounted - known)
    if unknown:
        raise VisibleDevicesError(
            f"{CONTAINER_VISIBLE_DEVICES}={value!r}: no card {unknown[0]} in this farm "
            f"(cards {sorted(known)})"
        )
    return sorted(mounted)


def device_view(cards: Iterable[int], environ: Mapping[str, str] | None = None) -> DeviceView:
    """The devices a process with ``environ`` (default: this process's) sees on a farm with
    ``cards``: ``ASCEND_VISIBLE_DEVICES`` as the container's mount, then
    ``ASCEND_RT_VISIBLE_DEVICES`` among those; unset, every card in id order."""
    env = os.environ if environ is None else environ
    base = sorted(cards)
    container = env.get(CONTAINER_VISIBLE_DEVICES)
    chosen = env.get(RT_VISIBLE_DEVICES)
    setting = " ".join(
        f"{name}={value!r}"
        for name, value in ((CONTAINER_VISIBLE_DEVICES, container), (RT_VISIBLE_DEVICES, chosen))
        if value is not None
    )
    if not setting:
        return DeviceView(tuple(base))
    try:
        if container is not None:
            base = container_visible_cards(container, base)
        if chosen is not None and base:
            base = [base[i] for i in rt_visible_devices(chosen, len(base))]
    except VisibleDevicesError as exc:
        return DeviceView((), restricted=True, problem=str(exc), setting=setting)
    return DeviceView(tuple(base), restricted=True, setting=setting)
