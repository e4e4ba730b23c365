"""A bench slot whose card did not come back before its phase ended (loadtest.workers): pure, no
farm; the slot is left as a failed recovery leaves it (torn down, no device held)."""

from __future__ import annotations

import threading
import time
from collections import deque
from types import SimpleNamespace

import numpy as np
import pytest

import acl
from loadtest.messages import Phase
from loadtest.workers import _LOST, Slot


def test_a_late_send_after_a_failed_recovery_is_a_lost_card_error_not_a_crash():
    worker = SimpleNamespace(acl=acl, stop=threading.Event(), samples=deque(), budget=None)
    slot = Slot(worker, 0, 0)  # never set up: what recover() leaves when the card stays lost
    now = time.monotonic()
    # open loop, phase already ended but within the drain grace: the late send is still made
    phase = Phase(0, now - 1.0, now - 1.0, now - 0.5, False, {0: np.array([0.6])})
    slot.run_phase(phase)
    [(index, slot_id, card, code, intended, start, end)] = list(worker.samples)
    assert (index, slot_id, card, code) == (0, 0, 0, _LOST)
    assert intended == pytest.approx(now - 0.4) and start == end
