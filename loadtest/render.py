"""``npufarm report``: re-render a saved ``npufarm bench`` result in the terminal and as PNGs.

:func:`render_terminal` prints rich tables of a result (``npufarm.bench/1``): one row per phase
(throughput, goodput, latency percentiles, errors), one row per phase and card, and one row per
fault window (the faulted card's p99 before / during / after the fault beside the other cards',
the faulted card's errors, time to detect and to recover). Every table fits 80 columns (a pipe,
a CI log) with nothing cut, and every column is explained in its caption: a figure a reader
cannot interpret, or that blends a faulted card with healthy ones, misleads. :func:`bench_table`,
:func:`print_bench_summary` and :func:`write_bench_plots` are ``npufarm bench``'s own output.
:func:`report_main` is the CLI entry: it loads ``RESULT.json`` (checking the schema version), prints
that summary and re-renders the PNGs of :mod:`loadtest.plots` next to the JSON (or into ``--out``),
with the per-request plot when the result's ``requests.jsonl`` is there.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from loadtest.cluster_report import print_node_table
from loadtest.plots import render_all
from loadtest.report import SCHEMA, fault_title
from loadtest.tables import compact_table

__all__ = [
    "SCHEMA",
    "SchemaError",
    "load_result",
    "load_samples",
    "bench_table",
    "print_bench_summary",
    "write_bench_plots",
    "render_terminal",
    "report_main",
]

logger = logging.getLogger(__name__)

DEFAULT_SAMPLES = "requests.jsonl"
_NEVER = "[yellow]never[/]"  # a bad request was seen, no good run followed within the phase


class SchemaError(ValueError):
    """The file is not a result this version of ``npufarm report`` can read."""


def load_result(path: str | Path) -> dict[str, Any]:
    """Read a bench ``result.json``; :class:`SchemaError` if it is not ``npufarm.bench/1``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SchemaError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SchemaError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise SchemaError(f"{path}: expected a JSON object, got {type(data).__name__}")
    schema = data.get("schema")
    if schema != SCHEMA:
        found = "no 'schema' field" if schema is None else f"schema {schema!r}"
        raise SchemaError(
            f"{path}: not an npufarm bench result this version can read ({found}, expected "
            f"{SCHEMA!r}); re-run `npufarm bench` to produce one"
        )
    phases = data.get("phases")
    if not isinstance(phases, list) or not all(isinstance(p, dict) for p in phases):
        raise SchemaError(f"{path}: 'phases' must be a list of objects")
    return data


def load_samples(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield the rows of a ``requests.jsonl``; malformed lines are skipped (and counted in a
    warning)."""
    bad = 0
    with Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(row, dict):
                yield row
            else:
                bad += 1
    if bad:
        logger.warning("%s: skipped %d malformed line(s)", path, bad)


# -- terminal -----------------------------------------------------------------------------------


def _ms(value: Any) -> str:
    if value is None:
        return "—"
    v = float(value)
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:,.0f}"


def _num(value: Any, digits: int = 1) -> str:
    return "—" if value is None else f"{float(value):,.{digits}f}"


def _secs(value: Any) -> str:
    return "—" if value is None else f"{float(value):.3f}"


def _total(errors: Any) -> int:
    """Error count of ``{"<code>": n}`` or of a plain number."""
    if isinstance(errors, Mapping):
        return sum(int(n) for n in errors.values())
    return int(errors or 0)


def _count(n: int) -> str:
    return f"[red]{n}[/]" if n else "0"


def _codes(errors: Mapping[str, Any]) -> str:
    """``{"507015": 10, "507011": 2}`` → ``507015×10, 507011×2``."""
    top = sorted(errors.items(), key=lambda kv: -int(kv[1]))
    return ", ".join(f"{code}×{n}" for code, n in top[:4]) + (", …" if len(top) > 4 else "")


def _p99(summary: Any) -> Any:
    if not isinstance(summary, Mapping):
        return None
    lat = summary.get("latency_ms")
    if isinstance(lat, Mapping):
        return lat.get("p99")
    return summary.get("p99_ms", summary.get("p99"))


def _card_name(card: Any) -> str:
    return "broker" if str(card) == "-1" else str(card)


def _title(result: Mapping[str, Any]) -> str:
    farm = result.get("farm") or {}
    cards = farm.get("cards")
    n = len(cards) if isinstance(cards, list | tuple) else cards
    title = f"npufarm bench — farm {farm.get('name') or '?'}"
    title += f", {n} card{'s' * (n != 1)} driven" if isinstance(n, int) else ""
    if farm.get("card_count") not in (None, n):
        title += f" of {farm['card_count']}"
    scale = farm.get("time_scale")
    return title + (f", time scale {scale:g}" if scale not in (None, 1, 1.0) else "")


def _phase_notes(result: Mapping[str, Any]) -> list[str]:
    phases = result.get("phases", [])
    slo = next((p["slo_ms"] for p in phases if p.get("slo_ms") is not None), None)
    good = f"good/s: completed within {slo:g} ms, per s" if slo else "good/s: completed, per s"
    notes = [
        "latency in ms over completed requests",
        "thr/s: completed per s of the window",
        good,
        "err: failed requests",
    ]
    notes += [
        f"{p.get('name', '?')} errors: {_codes(p['errors'])}"
        for p in phases
        if isinstance(p.get("errors"), Mapping) and p["errors"]
    ]
    notes += [
        f"{p.get('name', '?')}: {p['missed']} scheduled requests never sent"
        for p in phases
        if p.get("missed")
    ]
    if any(p.get("interrupted") for p in phases):
        notes.append("[yellow]run interrupted: the last phase is partial[/]")
    if (result.get("generator") or {}).get("saturated"):
        notes.append("[yellow]load generator saturated: figures may understate the farm[/]")
    return notes


def _phase_table(result: Mapping[str, Any], wide: bool):
    phases = result.get("phases", [])
    title, caption = _title(result), "; ".join(_phase_notes(result))
    extra = ["<mode", "dur s", "req", "done"] if wide else ["req"]
    columns = ["<phase", *extra, "thr/s", "good/s", "p50", "p90", "p99", "p99.9", "max"]
    table = compact_table(title, [*columns, "err"], caption)
    for p in phases:
        lat = p.get("latency_ms") or {}
        req, done = str(p.get("requests", "—")), str(p.get("completed", "—"))
        cells = [str(p.get("mode", "")), _num(p.get("duration_s")), req, done] if wide else [req]
        table.add_row(
            str(p.get("name", "?")),
            *cells,
            _num(p.get("throughput_rps")),
            _num(p.get("goodput_rps")),
            *(_ms(lat.get(k)) for k in ("p50", "p90", "p99", "p99.9", "max")),
            _count(_total(p.get("errors"))),
        )
    return table


def _card_table(result: Mapping[str, Any]):
    columns = ["<phase", "<card", "req", "err", "thr/s", "p50", "p99", "max"]
    table = compact_table("Per card", columns, caption="latency in ms")
    for p in result.get("phases", []):
        cards = p.get("per_card") or {}
        for k, card in enumerate(sorted(cards, key=lambda c: (len(str(c)), str(c)))):
            stats = cards[card] or {}
            lat = stats.get("latency_ms") or {}
            table.add_row(
                str(p.get("name", "?")) if k == 0 else "",
                _card_name(card),
                str(stats.get("requests", "—")),
                _count(_total(stats.get("errors"))),
                _num(stats.get("throughput_rps")),
                *(_ms(lat.get(key)) for key in ("p50", "p99", "max")),
                end_section=k == len(cards) - 1,
            )
    return table


_FAULT_CAPTION = (
    "p99 in ms: the faulted card's before / during / after the window, and the other cards' "
    "during it; err: the faulted card's failed requests during the window; window: s since the "
    "bench started (first to last fault event, or the rule's duration; a one-off fault such as "
    "a disconnect lasts until its card recovered, or to the end of the run); detect / recover: "
    "s from the window start to the card's first bad request / to a run of good ones; "
    "none: no bad request on the card; never: not recovered within the run"
)


def _card_p99(part: Any, card: Any) -> Any:
    """p99 of the faulted card in a before / during / after part (all cards only for a result
    without per-card figures)."""
    if not isinstance(part, Mapping):
        return None
    per_card = part.get("per_card")
    if isinstance(per_card, Mapping):
        return _p99(per_card.get(str(card)))
    return _p99(part)


def _fault_row(w: Mapping[str, Any], wide: bool) -> list[str]:
    fault = w["fault"] if isinstance(w.get("fault"), Mapping) else w
    card = fault.get("card")
    where = f" @{_card_name(card)}" if card is not None else ""
    start, end = w.get("start_s"), w.get("end_s")
    window = "—" if start is None or end is None else f"{start:.2f}–{end:.2f}"
    detect, recover = w.get("time_to_detect_s"), w.get("time_to_recover_s")
    during = w.get("during") or {}
    per_card = during.get("per_card")
    on_card = per_card.get(str(card)) if isinstance(per_card, Mapping) else during
    rule = fault.get("name") or ("" if fault.get("rule") is None else f"#{fault['rule']}")
    cells = [rule, str(fault.get("code", "—")), str(w.get("events", "—"))] if wide else []
    return [
        fault_title(fault.get("kind", "?"), fault.get("params")) + where,
        *cells,
        window,
        *(_ms(_card_p99(w.get(k), card)) for k in ("before", "during", "after")),
        _ms(_p99(during.get("others"))),
        _count(_total((on_card or {}).get("errors"))),
        "none" if detect is None else _secs(detect),
        _secs(recover) if recover is not None else _NEVER if detect is not None else "—",
    ]


def _fault_table(result: Mapping[str, Any], wide: bool):
    phases = result.get("phases", [])
    rows = [(p, w) for p in phases for w in p.get("fault_windows") or []]
    if not rows:
        return None
    named = len(phases) > 1  # the phase column only when there is more than one
    extra = ["<rule", "code", "events"] if wide else []
    columns = [
        *(["<phase"] if named else []),
        "<fault",
        *extra,
        "window s",
        "p99\nbefore",
        "p99\nduring",
        "p99\nafter",
        "others\np99",
        "err",
        "detect",
        "recover",
    ]
    table = compact_table("Fault windows", columns, _FAULT_CAPTION, wrap_labels=True)
    for p, w in rows:
        table.add_row(*([str(p.get("name", "?"))] if named else []), *_fault_row(w, wide))
    return table


_GENERATOR_CAPTION = (
    "latency in ms; lag|gap ms: p50 of how late the generator sent (open loop: actual − "
    "intended send) or of the pause between two requests of a slot (closed loop); cpu: the "
    "busiest bench worker's CPU time / wall time (≥ 0.9: the generator, not the farm, may be "
    "the limit)"
)


def bench_table(result: Mapping[str, Any]):
    """``npufarm bench``'s summary: one row per phase with the generator's own figures (its send
    lag or gap and its CPU) beside the farm's, every column explained in the caption."""
    model = Path((result.get("config") or {}).get("model") or "?").stem
    cards = (result.get("farm") or {}).get("cards")
    columns = ["<phase", "req", "err", "thr/s", "good/s", "p50", "p99", "max", "lag|gap ms", "cpu"]
    table = compact_table(f"npufarm bench: {model} on cards {cards}", columns, _GENERATOR_CAPTION)
    for p in result.get("phases", []):
        lat, gen = p.get("latency_ms") or {}, p.get("generator") or {}
        lag = gen.get("lag_ms") or gen.get("issue_gap_ms") or {}
        cpu = max(gen.get("worker_cpu_util") or [], default=None)
        table.add_row(
            str(p.get("name", "?")),
            str(p.get("requests", "—")),
            _count(_total(p.get("errors"))),
            _num(p.get("throughput_rps")),
            _num(p.get("goodput_rps")),
            *(_ms(lat.get(k)) for k in ("p50", "p99", "max")),
            _ms(lag.get("p50")),
            "—" if cpu is None else f"{cpu:.2f}",
        )
    return table


def _accuracy_table(result: Mapping[str, Any]):
    """The requests' own p50 / p99 (end − start) over the modelled duration per phase (None
    when no phase has a figure)."""
    phases = [p for p in result.get("phases", []) if p.get("accuracy")]
    if not phases:
        return None
    targets = (result.get("accuracy") or {}).get("targets") or {}
    bounds = ", ".join(f"{k} ±{targets[k] * 100:g}%" for k in ("p50", "p99") if k in targets)
    caption = (
        "the requests' own latency in ms (execute → sync with the two copies, from the actual "
        f"send) and its ratio to the modelled duration; ok: within {bounds}"
    )
    columns = ["<phase", "modelled", "p50", "p50 ×", "p99", "p99 ×", "ok"]
    table = compact_table("Accuracy", columns, caption)
    for p in phases:
        figure = p["accuracy"]
        ok = figure.get("within")
        table.add_row(
            str(p.get("name", "?")),
            _ms(figure.get("modelled_ms")) if figure.get("modelled_ms") else "per card",
            *(
                cell
                for k in ("p50", "p99")
                for cell in (_ms(figure.get(f"{k}_ms")), _num(figure.get(f"{k}_ratio"), 3))
            ),
            "—" if ok is None else "yes" if ok else "[yellow]no[/]",
        )
    return table


def render_terminal(result: Mapping[str, Any], console=None) -> None:
    """Print the phase, per-card and fault-window tables of ``result`` on ``console`` (a
    ``rich.console.Console``; default: a new one on stdout). Consoles narrower than 120 columns
    get compact tables (no mode, duration, completed; no fault rule, code, event count)."""
    console = console or Console()
    wide = console.width >= 120
    console.print(_phase_table(result, wide))
    if any(p.get("per_card") for p in result.get("phases", [])):
        console.print()
        console.print(_card_table(result))
    if (accuracy := _accuracy_table(result)) is not None:
        console.print()
        console.print(accuracy)
    faults = _fault_table(result, wide)
    if faults is not None:
        console.print()
        console.print(faults)
    elif result.get("faults"):
        console.print(f"{len(result['faults'])} fault event(s), no fault windows in this result")
    print_node_table(result, console)  # a --ray result: per node


def print_bench_summary(result: dict[str, Any]) -> None:
    """The phase table with the generator's figures, then the accuracy and the fault windows
    (if any)."""
    console = Console()
    console.print(bench_table(result))
    if (accuracy := _accuracy_table(result)) is not None:
        console.print(accuracy)
    faults = _fault_table(result, console.width >= 120)
    if faults is not None:
        console.print()
        console.print(faults)


def write_bench_plots(result: dict[str, Any], out_dir: str | None, per_request: bool) -> str:
    """Render the PNGs next to the result (when matplotlib is there); one line saying which
    files were written where (or that none were)."""
    if out_dir is None:
        return "npufarm bench: no files written (--out DIR writes result.json, summary.csv, PNGs)"
    out = Path(out_dir).resolve()
    names = ["result.json", "summary.csv", *(["requests.jsonl"] if per_request else [])]
    try:
        samples = load_samples(out / "requests.jsonl") if per_request else None
        names += [path.name for path in render_all(result, out, samples=samples)]
        missing = ""
    except ImportError as exc:
        missing = f"; no PNGs: {exc.name or exc} is not installed (pip install 'npufarm[plot]')"
    except (OSError, ValueError) as exc:  # an unwritable folder, an unreadable requests.jsonl
        missing = f"; no PNGs: {exc}"
    return f"npufarm bench: wrote {', '.join(names)} to {out}{missing}"


# -- CLI ----------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="npufarm report",
        description="Print the summary of a saved `npufarm bench` result and re-render its plots.",
    )
    parser.add_argument("result", type=Path, help="result.json written by `npufarm bench`")
    parser.add_argument(
        "--out", type=Path, default=None, help="directory for the PNGs (default: next to the JSON)"
    )
    parser.add_argument("--no-plots", action="store_true", help="only print the summary")
    return parser


def _samples_path(result: Mapping[str, Any], result_path: Path) -> Path | None:
    name = result.get("samples_file") or DEFAULT_SAMPLES
    path = Path(name)
    path = path if path.is_absolute() else result_path.parent / path
    if path.is_file():
        return path
    if result.get("samples_file"):
        logger.warning("samples file %s not found; skipping the latency-over-time plot", path)
    return None


def report_main(argv: Sequence[str] | None = None) -> int:
    """``npufarm report RESULT.json [--out DIR] [--no-plots]``. Exit codes: 0 ok, 1 the plots
    could not be rendered, 2 usage error or unreadable / wrong-schema result."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    try:
        result = load_result(args.result)
    except SchemaError as exc:
        print(f"npufarm report: error: {exc}", file=sys.stderr)
        return 2
    render_terminal(result)
    if args.no_plots:
        return 0
    out_dir = args.out if args.out is not None else args.result.parent
    samples_path = _samples_path(result, args.result)
    try:
        samples = load_samples(samples_path) if samples_path else None  # read in one pass
        paths = render_all(result, out_dir, samples=samples)
    except ImportError as exc:
        print(
            f"npufarm report: cannot plot ({exc}); install the 'plot' extra "
            "(pip install 'npufarm[plot]') or pass --no-plots",
            file=sys.stderr,
        )
        return 1
    except (OSError, ValueError) as exc:  # unwritable --out, unreadable requests.jsonl
        print(f"npufarm report: cannot render the plots into {out_dir}: {exc}", file=sys.stderr)
        return 1
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(report_main())
