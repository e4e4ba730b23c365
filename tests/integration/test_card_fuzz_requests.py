"""Every request op of a card (device/requests.py) with generated bodies: each request gets
exactly one reply with an integer code, the card stays up, and a good request still works
afterwards. Bodies mix plausible fields of the wrong type with random keys and values."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import ACL_SUCCESS
from core.protocol import Cmd
from device.requests import OPS
from tests.integration.card_harness import CLIENT, TENSOR_BYTES, CardHarness

pytestmark = pytest.mark.timeout(120)

FIELDS = ["size", "offset", "handle", "spec", "name", "stream", "rule", "rule_id", "kinds"]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.text(max_size=8),
    st.binary(max_size=8),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=8,
)
bodies = st.fixed_dictionaries(
    {"op": st.one_of(st.sampled_from(sorted(OPS)), values)},
    optional={field: values for field in FIELDS},
)


@pytest.fixture(scope="module")
def card():
    # the scripted broker beats only while a test pumps it; hypothesis's own pauses (shrinking)
    # must not make the card give up on its broker
    h = CardHarness(heartbeat_liveness=400)
    h.start()
    yield h
    h.close()


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=bodies)
def test_any_request_body_gets_one_coded_reply(card, body):
    b = card.broker
    rid = b.request_nowait(body.pop("op"), CLIENT, **body)
    reply = b.reply(rid, CLIENT, timeout_s=10.0)
    assert isinstance(reply["code"], int) and reply["rid"] == rid
    assert card.alive(), card.errors
    assert not b.pending(Cmd.REPLY), "a request was answered twice"


def test_the_card_still_works_after_the_fuzz(card):
    offset = card.malloc(TENSOR_BYTES)
    assert card.broker.request("free", offset=offset)["code"] == ACL_SUCCESS
    assert card.alive(), card.errors
