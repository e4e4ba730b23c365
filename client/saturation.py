"""``acl.rt.set_device_sat_mode`` / ``get_device_sat_mode``: the floating-point overflow mode
of the current device (aclrtFloatOverflowMode). A part of the process-wide runtime (see
:mod:`client.runtime`).

npufarm's kernels do not change with the mode: it is stored and read back, per device of this
process, as CANN's runtime keeps it on its device object. The mode lasts until the device is
reset (its default context goes) or the session ends; a device starts in
``ACL_RT_OVERFLOW_MODE_INFNAN``, the default of the 910B-class products npufarm models (CANN's
aclrtFloatOverflowMode documentation).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from client.conventions import api, int_arg
from client.state import RuntimeState
from core.errors import ACL_ERROR_INVALID_PARAM, AclError

__all__ = [
    "OVERFLOW_MODE_SATURATION",
    "OVERFLOW_MODE_INFNAN",
    "DEFAULT_OVERFLOW_MODE",
    "SaturationApi",
]

logger = logging.getLogger(__name__)

OVERFLOW_MODE_SATURATION = 0
"""ACL_RT_OVERFLOW_MODE_SATURATION."""
OVERFLOW_MODE_INFNAN = 1
"""ACL_RT_OVERFLOW_MODE_INFNAN."""
DEFAULT_OVERFLOW_MODE = OVERFLOW_MODE_INFNAN
"""The mode of a device nobody set one on."""

_MODES = frozenset({OVERFLOW_MODE_SATURATION, OVERFLOW_MODE_INFNAN})  # UNDEF (2) is no mode


class SaturationApi:
    """The overflow-mode calls on the shared :class:`RuntimeState`."""

    def __init__(self, state: RuntimeState) -> None:
        self.state = state
        self._lock = threading.Lock()
        # farm card -> (the device's default context when the mode was set, the mode)
        self._modes: dict[int, tuple[Any, int]] = {}

    def reset(self) -> None:
        """A session starts or ended: every device is back to the default mode."""
        with self._lock:
            self._modes.clear()

    def _device(self) -> tuple[int, Any]:
        """The current device's card and what identifies its current opening (its default
        context: a reset drops it, the next ``set_device`` makes another)."""
        card = self.state.current_context().device_id
        device = self.state.devices.get(card)
        return card, None if device is None else device.default_context

    @api()
    def set_device_sat_mode(self, mode: Any) -> None:
        """Set the current device's overflow mode (0 saturation, 1 inf/nan; others → 100000);
        107002 without a context."""
        value = int_arg(mode, "mode")
        if value not in _MODES:
            raise AclError(f"overflow mode {value} is not 0 or 1", ACL_ERROR_INVALID_PARAM)
        card, opening = self._device()
        with self._lock:
            self._modes[card] = (opening, value)

    @api(1)
    def get_device_sat_mode(self) -> int:
        """``(mode, ret)``: the current device's overflow mode (1, inf/nan, unless set);
        107002 without a context."""
        card, opening = self._device()
        with self._lock:
            found = self._modes.get(card)
        if found is None or found[0] is not opening:
            return DEFAULT_OVERFLOW_MODE
        return found[1]
