"""The pure parts of the calls ais_bench makes first: the dynamic-AIPP data size, and the text a
failed sync leaves for ``get_recent_err_msg`` (which task of which stream failed)."""

from __future__ import annotations

import pytest

from client.exceptions import TaskErrorNotes
from client.models import aipp_data_size
from client.tracks import StreamTrack
from core.errors import ACL_ERROR_INVALID_PARAM, AclError


def test_aipp_data_size_is_ges_layout() -> None:
    # dynamic_aipp.h: a 64-byte kAippDynamicPara head, 96 bytes of kAippDynamicBatchPara each
    assert aipp_data_size(1) == 160
    assert aipp_data_size(8) == 64 + 8 * 96
    for bad in (0, -1, 2**64):
        with pytest.raises(AclError) as raised:
            aipp_data_size(bad)
        assert raised.value.code == ACL_ERROR_INVALID_PARAM


def test_task_error_notes_name_the_first_failure_once() -> None:
    notes = TaskErrorNotes()
    track = StreamTrack(device_id=1, stream_id=0x5000_0000_0038)
    notes.task_settled(7, 0, track)  # success: nothing kept
    notes.task_settled(9, 507015, track)
    notes.task_settled(11, 507011, track)  # not the first: the stream reports 507015
    notes.task_settled(12, 507010, StreamTrack(1, 64))  # a lost card is no task's failure
    text = notes.text(track, 507015, 3)
    assert text == "task 9 on device 3 stream 56 failed with 507015"
    # taken: a later failure of the stream is named by itself, an unknown one generically
    assert notes.text(track, 507015, 3).startswith("a task on device 3 stream 56 failed")
    notes.task_settled(20, 507011, track)
    assert notes.text(track, 507015, 3).startswith("a task on")  # not the code taken
