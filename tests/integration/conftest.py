"""Fixtures shared by the integration tests.

``harness`` is one real card in a thread against a scripted broker (see
:mod:`tests.integration.card_harness`); the broker's tests override it with a
:class:`~tests.integration.broker_harness.BrokerHarness` of their own.
"""

from __future__ import annotations

from tests.integration.card_harness import harness  # noqa: F401 (fixture)
