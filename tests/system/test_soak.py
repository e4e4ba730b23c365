"""A 2-minute chaos soak (benchmarks/soak.py) reports zero violations.

8 cards, 3 client processes x 2 threads, the seeded mixed fault plan, seeded SIGKILLs of a
client and a card, a runtime heartbeat_loss / disconnect, a recover, resets and finalize/init
cycles, light and heavy models. The checkers themselves are proven able to fail in
tests/unit/test_soak_checks.py; ``python -m benchmarks.soak`` (10 minutes by default) is the
long run.
"""

from __future__ import annotations

import pytest

from benchmarks.soak import build_parser, render, run_soak

pytestmark = [pytest.mark.system, pytest.mark.timeout(420)]


def test_two_minute_chaos_soak_has_no_violations():
    report = run_soak(build_parser().parse_args(["--duration", "120", "--seed", "7"]))
    render(report)
    assert report["card_kills"] and report["client_kills"], "the schedule killed nothing"
    assert report["sessions"]["finished"] >= 3, report["sessions"]
    assert report["sessions"]["iterations"] > 100, report["sessions"]
    assert not report["violations"], "\n".join(report["violations"])
