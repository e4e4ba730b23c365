"""ASCEND_RT_VISIBLE_DEVICES and ASCEND_VISIBLE_DEVICES parsed as CANN and Ascend Docker Runtime
parse them (client.visible): the cases of the CANN environment-variable reference and of the
runtime's own unit tests, and our choices where the vendor is silent."""

from __future__ import annotations

import pytest

from client.state import RuntimeState
from client.visible import (
    CONTAINER_VISIBLE_DEVICES,
    RT_VISIBLE_DEVICES,
    DeviceView,
    VisibleDevicesError,
    container_visible_cards,
    device_view,
    rt_visible_devices,
    split_ids,
)
from core.errors import ACL_ERROR_RT_LOST_HEARTBEAT, AclError


@pytest.mark.parametrize(
    ("value", "tokens"),
    [
        ("1", ["1"]),
        ("1,2,3", ["1", "2", "3"]),
        ("1, 2,3", ["1"]),  # the CANN doc's example: reading stops at the space
        ("1,-1", ["1"]),  # the runtime's unit test
        ("1,,2", ["1"]),  # a second comma in a row ends the list
        ("1,2,", ["1", "2"]),
        ("12,3", ["12", "3"]),
        ("007", ["007"]),
        ("", []),
        (" 1", []),  # must begin with a digit
        (",1", []),
        ("a,1", []),
        ("1a,2", ["1"]),
        ("1\u0663", ["1"]),  # only ASCII digits are digits (C's isdigit)
    ],
)
def test_split_ids_as_cann(value, tokens):
    assert split_ids(value) == tokens


@pytest.mark.parametrize(
    ("value", "count", "devices"),
    [
        ("1", 8, [1]),
        ("1,2,3", 8, [1, 2, 3]),
        ("1, 2,3", 8, [1]),
        ("1,3,8", 8, [1, 3]),  # the doc: 8 is no device, what came before stands
        ("1,-1", 3, [1]),  # the runtime's unit test: count 1, device 0 = 1
        ("0,1,3,4", 4, [0, 1, 3]),  # an id past the end drops it and the rest
        ("3,9,1", 4, [3]),  # the out-of-range id ends the list before the order check
        ("0,1,2,3", 4, [0, 1, 2, 3]),
        ("99999999999999999999", 4, None),  # past any int: no device
        ("4,7", 4, None),  # the user report: nothing selected → no device
        ("", 4, None),  # empty: nothing selected → no device
        (" 1", 4, None),
        ("2,0", 4, None),  # not ascending: rejected whole
        ("0,2,4,6,1,3,5,7", 8, None),  # the user report: "must be ... ascending order"
        ("1,1", 4, None),  # repeated: rejected whole
        ("0,1,1", 4, None),
    ],
)
def test_rt_visible_devices_as_cann(value, count, devices):
    if devices is None:
        with pytest.raises(VisibleDevicesError):
            rt_visible_devices(value, count)
    else:
        assert rt_visible_devices(value, count) == devices


def test_rejections_say_why():
    with pytest.raises(VisibleDevicesError, match="ascending"):
        rt_visible_devices("2,0", 4)
    with pytest.raises(VisibleDevicesError, match="repeated"):
        rt_visible_devices("1,1", 4)
    with pytest.raises(VisibleDevicesError, match=r"none of the 4 devices .*0\.\.3"):
        rt_visible_devices("4,7", 4)


@pytest.mark.parametrize(
    ("value", "cards"),
    [
        ("0", [0]),
        ("1,3", [1, 3]),
        ("3,1", [1, 3]),  # a mount: the container numbers its cards in id order
        ("0-2", [0, 1, 2]),
        ("0-2,3", [0, 1, 2, 3]),
        ("Ascend910-1", [1]),
        ("Ascend910-1,Ascend910-3", [1, 3]),
        ("1, 2", [1, 2]),
        ("1,1", [1]),
        ("", []),
        ("void", []),
    ],
)
def test_container_visible_cards(value, cards):
    assert container_visible_cards(value, range(4)) == cards


@pytest.mark.parametrize("value", ["x", "1;2", "1,,2", "-1"])
def test_container_value_that_is_no_list(value):
    with pytest.raises(VisibleDevicesError, match="not a card list"):
        container_visible_cards(value, range(4))


def test_container_card_that_is_not_in_the_farm():
    with pytest.raises(VisibleDevicesError, match="no card 5"):
        container_visible_cards("1,5", range(4))


def test_unset_sees_every_card_in_id_order():
    view = device_view([3, 1, 0, 2], {})
    assert view == DeviceView((0, 1, 2, 3))
    assert not view.restricted and view.count == 4
    assert view.card(2) == 2 and view.device(3) == 3


def test_rt_renumbers():
    view = device_view(range(4), {RT_VISIBLE_DEVICES: "1,3"})
    assert view.cards == (1, 3) and view.count == 2 and view.restricted
    assert (view.card(0), view.card(1), view.card(2), view.card(-1)) == (1, 3, None, None)
    assert (view.device(1), view.device(3), view.device(0)) == (0, 1, None)
    assert view.setting == "ASCEND_RT_VISIBLE_DEVICES='1,3'"


@pytest.mark.parametrize("value", ["", "2,0", "1,1", "4", " 1"])
def test_rejected_rt_value_leaves_no_device(value):
    view = device_view(range(4), {RT_VISIBLE_DEVICES: value})
    assert view.cards == () and view.count == 0 and view.restricted
    assert RT_VISIBLE_DEVICES in view.why_none()


def test_container_mounts_then_rt_picks_among_its_devices():
    # the user report: a container with card 4 mounted (2 devices inside) and RT=4 → none
    env = {CONTAINER_VISIBLE_DEVICES: "4,5", RT_VISIBLE_DEVICES: "4"}
    assert device_view(range(8), env).cards == ()
    env = {CONTAINER_VISIBLE_DEVICES: "4,5", RT_VISIBLE_DEVICES: "1"}
    assert device_view(range(8), env).cards == (5,)
    assert device_view(range(8), {CONTAINER_VISIBLE_DEVICES: "2,6"}).cards == (2, 6)


def test_container_without_cards():
    view = device_view(range(4), {CONTAINER_VISIBLE_DEVICES: "", RT_VISIBLE_DEVICES: "0"})
    assert view.cards == () and view.restricted
    assert "leaves no device" in view.why_none()
    bad = device_view(range(4), {CONTAINER_VISIBLE_DEVICES: "9"})
    assert bad.cards == () and "no card 9" in bad.why_none()


def test_default_environment_is_this_process(monkeypatch):
    monkeypatch.setenv(RT_VISIBLE_DEVICES, "0")
    monkeypatch.delenv(CONTAINER_VISIBLE_DEVICES, raising=False)
    assert device_view(range(2)).cards == (0,)


def test_error_texts_that_name_a_card_say_which_device_it_is():
    state = RuntimeState()
    state.note_error("set_device", AclError("card 3 is lost", ACL_ERROR_RT_LOST_HEARTBEAT, card=3))
    assert "[card" not in state.get_recent_err_msg()  # every card visible: ids are the cards'
    state.view = device_view(range(4), {RT_VISIBLE_DEVICES: "2,3"})
    state.note_error("malloc", AclError("card 3 is lost", ACL_ERROR_RT_LOST_HEARTBEAT, card=3))
    assert state.get_recent_err_msg().endswith("[card 3 is device 1 of this process]")
    state.note_error("malloc", AclError("card 0 is lost", ACL_ERROR_RT_LOST_HEARTBEAT, card=0))
    assert state.get_recent_err_msg().endswith("[card 0 is not visible]")
    state.note_error("set_device", AclError("no device 5", 107001))
    assert "[card" not in state.get_recent_err_msg()
