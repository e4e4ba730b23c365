"""The output files of an ``npufarm bench`` result (the formats are documented in
:mod:`loadtest.report`, which re-exports these functions): ``result.json`` (:func:`write_json`,
:func:`read_json`), ``summary.csv`` (:func:`write_csv`), ``requests.jsonl`` (:func:`write_jsonl`).

The schema names these need come from :mod:`loadtest.schema`, not from ``report``, which imports
this module.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.schema import DEFAULT_PERCENTILES, SCHEMA, as_samples, latency_ms, percentile_key

__all__ = ["write_json", "read_json", "write_csv", "csv_columns", "write_jsonl"]

logger = logging.getLogger(__name__)


def write_json(result: Mapping[str, Any], path: str | Path) -> Path:
    """``result`` as indented JSON (strict: no NaN)."""
    path = Path(path)
    path.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    logger.debug("wrote %s", path)
    return path


def read_json(path: str | Path) -> dict[str, Any]:
    """A result written by :func:`write_json`; ValueError if its schema is not :data:`SCHEMA`."""
    result = json.loads(Path(path).read_text())
    if not isinstance(result, dict) or result.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a {SCHEMA} result")
    return result


def csv_columns(percentiles: Sequence[float]) -> list[str]:
    """The columns of :func:`write_csv`."""
    lat = [f"latency_ms_{percentile_key(q)}" for q in percentiles]
    return [
        "phase",
        "mode",
        "concurrency",
        "rate",
        "card",
        "requests",
        "completed",
        "errors",
        "error_rate",
        "throughput_rps",
        "goodput_rps",
        *lat,
        "latency_ms_max",
        "latency_ms_mean",
    ]


def _csv_row(phase: Mapping[str, Any], card: str, figures: Mapping[str, Any]) -> dict[str, Any]:
    row = {k: phase.get(k) for k in ("mode", "concurrency", "rate")}
    row.update(phase=phase["name"], card=card, errors=sum(figures["errors"].values()))
    row.update({k: figures[k] for k in ("requests", "completed", "error_rate")})
    row.update({k: figures[k] for k in ("throughput_rps", "goodput_rps")})
    row.update({f"latency_ms_{k}": v for k, v in figures["latency_ms"].items()})
    return row


def write_csv(result: Mapping[str, Any], path: str | Path) -> Path:
    """One row per phase (``card = "all"``), each followed by one row per card."""
    percentiles = (result.get("config") or {}).get("percentiles") or DEFAULT_PERCENTILES
    path = Path(path)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, csv_columns(percentiles), extrasaction="ignore")
        writer.writeheader()
        for phase in result["phases"]:
            writer.writerow(_csv_row(phase, "all", phase))
            for card, figures in phase["per_card"].items():
                writer.writerow(_csv_row(phase, card, figures))
    logger.debug("wrote %s", path)
    return path


def write_jsonl(samples: np.ndarray, path: str | Path, origin_s: float = 0.0) -> Path:
    """One request a line; times relative to ``origin_s``."""
    samples = as_samples(samples)
    lat = latency_ms(samples)
    path = Path(path)
    with path.open("w") as handle:
        for row, ms in zip(samples.tolist(), lat.tolist()):
            phase, slot, card, code, intended, start, end = row
            record = {
                "phase": phase,
                "slot": slot,
                "card": card,
                "code": code,
                "intended_s": round(intended - origin_s, 6),
                "start_s": round(start - origin_s, 6),
                "end_s": round(end - origin_s, 6),
                "latency_ms": round(ms, 4),
            }
            handle.write(json.dumps(record) + "\n")
    logger.debug("wrote %d samples to %s", samples.size, path)
    return path
