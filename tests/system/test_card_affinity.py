"""Card profile ``cpu_affinity``: a card whose profile says ``[0]`` really runs pinned to CPU 0
(the kernel's view, /proc/<pid>/status), and a card without the key keeps the farm's CPUs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.system.conftest import CI_CONFIG, start_farm, stop_and_check

pytestmark = pytest.mark.timeout(60)


def _cpus_allowed(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no Cpus_allowed_list in /proc/{pid}/status")


def test_a_card_with_affinity_runs_pinned(tmp_path: Path) -> None:
    config = tmp_path / "pinned.toml"
    config.write_text(
        CI_CONFIG.read_text()
        + "\n[[cards.override]]\ndevice_id = 0\ncpu_affinity = [0]\nintra_op_threads = 1\n"
    )
    farm = start_farm(cards=2, config=config)
    try:
        pinned, free = farm.card_pids()
        assert _cpus_allowed(pinned) == "0"
        own = _cpus_allowed(os.getpid())
        assert _cpus_allowed(free) == own
    finally:
        stop_and_check(farm)
