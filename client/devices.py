"""``acl.init`` / ``acl.finalize`` and the ``acl.rt`` device and context calls.

Device ids here are the process's own (``ASCEND_RT_VISIBLE_DEVICES`` renumbers them, read at
``acl.init``: see :mod:`client.visible`): each call maps the id it is given to the farm card
(``state.view``), and everything below (contexts, tracks, routes, the ledger) names the card;
what is reported back (``get_device``) is the process's id again.

A device is opened (its card's HBM attached, a lost card restarted after a reset) without the
runtime lock held: a restart waits for a new card process, and other devices' calls go on
meanwhile. A part of the process-wide runtime (see :mod:`client.runtime`).
"""

from __future__ import annotations

import logging
from typing import Any

from client import discovery
from client.conventions import api, int_arg
from client.embedded import connect
from client.init_config import config_error
from client.records import DeviceState
from client.state import RuntimeState
from core.errors import (
    ACL_ERROR_INVALID_PARAM,
    ACL_ERROR_REPEAT_FINALIZE,
    ACL_ERROR_REPEAT_INITIALIZE,
    ACL_ERROR_RT_INVALID_DEVICEID,
    ACL_ERROR_RT_LOST_HEARTBEAT,
    ACL_ERROR_RT_NO_DEVICE,
    ACL_ERROR_UNINITIALIZE,
    AclError,
)
from core.protocol import BROKER_DEVICE
from device.memory import decode_ptr

__all__ = ["ACL_VERSION", "DeviceApi"]

logger = logging.getLogger(__name__)

_RUN_MODE_HOST = 1
ACL_VERSION = (1, 17, 0)
"""``ACL_MAJOR_VERSION`` / ``ACL_MINOR_VERSION`` / ``ACL_PATCH_VERSION`` of the headers
(``cabi/include/acl/acl_rt.h``), as CANN's ``aclrtGetVersion`` writes them."""
_DEVICE_STATUS_NORMAL, _DEVICE_STATUS_ABNORMAL = 0, 1  # aclrtDeviceStatus


class DeviceApi:
    """Init/finalize, device and context calls on the shared :class:`RuntimeState`."""

    def __init__(self, state: RuntimeState) -> None:
        self.state = state

    # -- init ------------------------------------------------------------------------------
    @api()
    def init(self, config_path: str | None = None) -> None:
        """Connect to a farm (NPUFARM_ADDRESS, the state file, else an embedded one)."""
        state = self.state
        with state.lock:
            if state.session is not None:
                raise AclError("acl.init called twice", ACL_ERROR_REPEAT_INITIALIZE)
            code, reason = config_error(config_path)
            if code:
                raise AclError(f"acl.init: {reason}", code)
            state.reset()
            session, embedded = connect()
            state.start_session(session, embedded)

    @api()
    def finalize(self) -> None:
        """Release everything of this session; 100037 after an earlier finalize."""
        state = self.state
        with state.lock:
            if state.session is None:
                code = ACL_ERROR_REPEAT_FINALIZE if state.finalized_once else ACL_ERROR_UNINITIALIZE
                raise AclError("acl.finalize without a live acl.init", code)
            state.end_session()

    # -- devices ---------------------------------------------------------------------------
    @api(1)
    def get_device_count(self) -> int:
        """Number of devices this process sees (the farm's cards, or those
        ``ASCEND_RT_VISIBLE_DEVICES`` leaves); none: 207004, as CANN. Works before ``acl.init``
        (asks the farm, as CANN asks the driver; no farm: 0 with 207004)."""
        if self.state.session is None:
            view = discovery.device_view_before_init()
        else:
            view = self.state.view
        if not view.count:
            raise AclError(f"no device is visible: {view.why_none()}", ACL_ERROR_RT_NO_DEVICE)
        return view.count

    def _device_id(self, device_id: Any) -> int:
        """The farm card of the process's device ``device_id``; 107001 if it has none."""
        device_id = int_arg(device_id, "device id", ACL_ERROR_RT_INVALID_DEVICEID)
        self.state.require()
        view = self.state.view
        card = view.card(device_id)
        if card is None:
            if not view.restricted:
                raise AclError(f"no device {device_id}", ACL_ERROR_RT_INVALID_DEVICEID)
            if not view.count:
                why = f"no device {device_id}: none is visible ({view.why_none()})"
            else:
                why = f"no device {device_id} among devices 0..{view.count - 1} ({view.setting})"
            raise AclError(why, ACL_ERROR_RT_INVALID_DEVICEID)
        return card

    def _device_state(self, device_id: int) -> DeviceState:
        with self.state.lock:
            found = self.state.devices.get(device_id)
            if found is None:
                found = self.state.devices[device_id] = DeviceState(device_id)
            return found

    def _open_device(self, device_id: int) -> DeviceState:
        """The device's state, its HBM attached (the card restarted first after a loss + reset).

        Never called with the runtime lock held: a restart waits for a new card process (up to
        the request timeout), and other devices' calls go on meanwhile. One thread at a time
        opens a given device (``DeviceState.opening``)."""
        session = self.state.require()
        device = self._device_state(device_id)
        with device.opening:
            card = session.card(device_id)
            if device.needs_restart or (
                card.get("state") == "starting" and device_id not in session.lost
            ):  # a card another process is restarting: the broker answers once it is up
                reply = session.request(BROKER_DEVICE, "restart", device_id=device_id)
                session.attach_card(device_id, reply["card"])
                with self.state.lock:
                    device.needs_restart = False
            session.check_device(device_id)
            card = session.card(device_id)
            try:
                self.state.memory.attach(device_id, card["epoch"], card["shm_name"])
            except (OSError, ValueError, KeyError) as exc:  # the card's memory is gone: lost
                session.membership.mark_lost(device_id, f"cannot attach its memory ({exc})")
                raise AclError(
                    f"device {device_id} is lost (its memory is gone)",
                    ACL_ERROR_RT_LOST_HEARTBEAT,
                    card=device_id,
                ) from None
        return device

    @api()
    def set_device(self, device_id: Any) -> None:
        """Bind this thread to a card (its default context); restarts a lost card after a reset."""
        device_id = self._device_id(device_id)
        device = self._open_device(device_id)
        state = self.state
        with state.lock:
            if state.devices.get(device_id) is not device:  # finalized meanwhile
                raise AclError("acl.finalize ran during set_device", ACL_ERROR_UNINITIALIZE)
            if device.default_context is None:
                device.default_context = state.new_context(device_id)
            device.refs += 1
            state.tls.context = device.default_context

    @api()
    def reset_device(self, device_id: Any) -> None:
        """Drop one reference; at zero wait for the default stream, release the card."""
        # a lost device (whether this process opened it or not) restarts at the next set_device
        device_id = self._device_id(device_id)
        state = self.state
        session = state.require()
        with state.lock:
            device = state.devices.get(device_id)
            if device is None or device.refs == 0:
                if device_id in session.lost:
                    self._device_state(device_id).needs_restart = True
                return
            device.refs -= 1
            if device.refs > 0:
                return
            tracks = [
                c.default_stream.track
                for c in state.contexts.values()
                if c.device_id == device_id and c.default_stream is not None
            ]
        if not (device_id in session.lost or session.broker_lost):
            for track in tracks:  # without the lock: other devices' calls go on
                session.wait(track, track.last_task, session.heartbeat_expiry_s * 4)
        with state.lock:
            if device.refs > 0 or state.devices.get(device_id) is not device:
                return  # set again (or finalized) while this thread waited
            offsets = self._release_device(device_id, device)
            lost = device_id in session.lost or session.broker_lost
        if lost:
            with device.opening:
                device.needs_restart = True
                state.memory.detach(device_id)
            return
        for offset in offsets:  # one-way, in order before any later request to the card
            session.notify_card(device_id, "free", offset=offset)

    def _release_device(self, device_id: int, device: DeviceState) -> list[int]:
        """Drop the device's contexts, allocations and models here (caller holds the lock);
        the card offsets to free."""
        state = self.state
        for context in [c for c in state.contexts.values() if c.device_id == device_id]:
            state.drop_context(context)
        offsets = []
        for ptr in state.allocations.on_device(device_id):
            state.allocations.remove(ptr)
            offsets.append(decode_ptr(ptr)[2])
        for model_id in [m for m, model in state.models.items() if model.device_id == device_id]:
            del state.models[model_id]
        device.default_context = None
        device.streams = device.events = 0
        state.sanitizer.forget_device(device_id)
        return offsets

    @api(1)
    def get_device(self) -> int:
        """The current device of this thread (the process's id, not the farm card's)."""
        card = self.state.current_context().device_id
        device = self.state.view.device(card)
        return card if device is None else device

    @api(1)
    def query_device_status(self, device_id: Any) -> int:
        """0 normal, 1 abnormal (lost card or lost farm)."""
        device_id = self._device_id(device_id)
        session = self.state.require()
        abnormal = device_id in session.lost or session.broker_lost
        return _DEVICE_STATUS_ABNORMAL if abnormal else _DEVICE_STATUS_NORMAL

    @api(1)
    def get_run_mode(self) -> int:
        """1 (ACL_HOST): the emulator runs on the host (also before ``acl.init``)."""
        return _RUN_MODE_HOST

    @api(3)
    def get_version(self) -> tuple[int, int, int]:
        """``(major, minor, patch, ret)`` of the ACL interface (aclrtGetVersion: 1.17.0, the
        headers' ``ACL_*_VERSION``), at any time, ``acl.init`` or not."""
        return ACL_VERSION

    @api("direct", default=None)
    def get_soc_name(self) -> str | None:
        """The SoC name of the current (else the first visible) card's profile, e.g.
        "Ascend910B"; before ``acl.init`` the farm's first card's; None when there is no farm
        (CANN: NULL)."""
        session = self.state.session
        if session is None:
            return discovery.soc_name()
        context = getattr(self.state.tls, "context", None)
        if context is not None:
            card = context.device_id
        else:
            card = (self.state.view.cards or tuple(sorted(session.farm["cards"])))[0]
        return session.card(card).get("soc_name") or None

    # -- contexts --------------------------------------------------------------------------
    @api(1)
    def create_context(self, device_id: Any) -> int:
        """A new context on the device (with its own default stream), made current."""
        device_id = self._device_id(device_id)
        device = self._open_device(device_id)
        state = self.state
        with state.lock:
            if state.devices.get(device_id) is not device:  # finalized meanwhile
                raise AclError("acl.finalize ran during create_context", ACL_ERROR_UNINITIALIZE)
            context = state.new_context(device_id)
            state.tls.context = context
            return context.handle

    @api()
    def destroy_context(self, context: Any) -> None:
        """Destroy a context and its streams; unknown handle → 100000."""
        state = self.state
        with state.lock:
            found = state.contexts.get(int_arg(context, "context"))
            if found is None:
                raise AclError(f"unknown context {context}", ACL_ERROR_INVALID_PARAM)
            state.drop_context(found)

    @api()
    def set_context(self, context: Any) -> None:
        """Make a context current for this thread (switches its device)."""
        with self.state.lock:
            found = self.state.contexts.get(int_arg(context, "context"))
        if found is None:
            raise AclError(f"unknown context {context}", ACL_ERROR_INVALID_PARAM)
        self._open_device(found.device_id)
        self.state.tls.context = found

    @api(1)
    def get_context(self) -> int:
        """The current context; 107002 when there is none."""
        return self.state.current_context().handle
