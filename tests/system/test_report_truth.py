"""Every figure a report shows is traceable to its samples.

One short real run of ``npufarm bench`` (the CLI, in this process) on the ci config with modelled
latency: two open-loop phases on two cards, card 1 a 3× straggler for the whole run (a fault
plan) and card 0's link dropped once mid-run (injected at run time: lost, reset by the clients,
restarted). Then, for each table and plot, the numbers shown are checked against numbers computed
here, independently of :mod:`loadtest.report`, from ``requests.jsonl`` and the farm's own fault log
``faults.jsonl`` (with the measured windows and the clock of ``result.json``).
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from farm.admin import broker_request, query_status
from loadtest import plots, render
from loadtest.loadgen import bench_main
from tests.conftest import poll_for
from tests.system.conftest import start_farm, stop_and_check

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]

SLO_MS = 12.0  # the straggler (5 ms × 3) misses it, the healthy card (5 ms) does not
RUN = 5  # good requests in a row that count as a recovery (loadtest.report.RECOVERY_RUN)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(out dir, result, requests, fault events, bench stdout) of one real run."""
    tmp = tmp_path_factory.mktemp("truth")
    model = tmp / "small.toml"
    model.write_text(
        '[model]\nname = "small"\nkind = "identity"\nseed = 0\n\n'
        '[[inputs]]\nname = "x"\ndtype = "float32"\nshape = [1, 64]\n\n'
        '[[outputs]]\nname = "y"\ndtype = "float32"\nshape = [1, 64]\n\n'
        "[latency]\nfixed_s = 0.005\n"
    )
    plan = tmp / "plan.toml"
    plan.write_text(
        'seed = 1\n[[fault]]\nname = "straggler"\nkind = "slow"\ncard = 1\nfactor = 3.0\n'
    )
    log = tmp / "faults.jsonl"
    farm = start_farm(
        cards=2, extra=["--time-scale", "1", "--faults", str(plan), "--fault-log", str(log)]
    )
    try:
        errors: list = []
        injector = threading.Thread(target=_drop_link_mid_run, args=(farm.address, errors))
        injector.start()
        out = tmp / "out"
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            code = bench_main(
                [
                    "--address",
                    farm.address,
                    "--model",
                    str(model),
                    "--request-rate",
                    "50:100:50",
                    "--arrival",
                    "poisson",
                    "--duration-s",
                    "2.5",
                    "--warmup-s",
                    "0.3",
                    "--slo-ms",
                    str(SLO_MS),
                    "--workers",
                    "2",
                    "--sync-timeout-ms",
                    "2000",
                    "--per-request",
                    "--out",
                    str(out),
                ]
            )
        injector.join()
        assert not errors, errors
        assert code == 0, stdout.getvalue()
    finally:
        stop_and_check(farm)
    result = json.loads((out / "result.json").read_text())
    requests = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    events = [json.loads(line) for line in log.read_text().splitlines()]
    return out, result, requests, events, stdout.getvalue()


def _drop_link_mid_run(address: str, errors: list) -> None:
    """Once the second phase is under way, drop card 0's link (one disconnect)."""
    try:
        base = query_status(address)["ledger"]["completed"]
        poll_for(lambda: query_status(address)["ledger"]["completed"] > base + 200, 30.0, 0.02)
        rule = {"kind": "disconnect", "card": 0, "name": "link-drop"}
        reply = broker_request(address, {"op": "inject", "rule": rule})
        assert not reply.get("code"), reply
    except BaseException as exc:  # reported by the fixture
        errors.append(exc)


# -- independent figures from the samples ---------------------------------------------------


def _cols(requests: list[dict]) -> dict[str, np.ndarray]:
    keys = ("phase", "card", "code", "intended_s", "end_s", "latency_ms")
    return {k: np.array([r[k] for r in requests]) for k in keys}


def _measured(cols, phase_index: int, phase: dict) -> np.ndarray:
    t = cols["intended_s"]
    return (cols["phase"] == phase_index) & (t >= phase["start_s"]) & (t < phase["end_s"])


def _figures(cols, mask: np.ndarray, duration_s: float) -> dict:
    ok = mask & (cols["code"] == 0)
    lat = cols["latency_ms"][ok]
    pct = dict(zip(("p50", "p90", "p99", "p99.9"), np.percentile(lat, [50, 90, 99, 99.9])))
    return {
        "req": int(mask.sum()),
        "err": int((mask & (cols["code"] != 0)).sum()),
        "thr": ok.sum() / duration_s,
        "good": (lat <= SLO_MS).sum() / duration_s,
        **pct,
        "max": lat.max(),
    }


def _bench_t(event: dict, result: dict) -> float:
    clock = result["clock"]
    return clock["farm_start_monotonic_s"] + event["t_s"] - clock["bench_start_monotonic_s"]


def _detect_recover(cols, mask, card: int, start: float) -> tuple[float | None, float | None]:
    """Among the samples of ``mask`` (one phase's): the first bad request of the card known
    at/after ``start``; the end of the first of RUN good requests in a row (by completion) after
    the first bad one ends (or of a shorter run that reaches the card's last request)."""
    rows = sorted(
        (float(e), float(i), int(c), float(lat))
        for e, i, c, lat, k in zip(
            cols["end_s"][mask],
            cols["intended_s"][mask],
            cols["code"][mask],
            cols["latency_ms"][mask],
            cols["card"][mask],
        )
        if k == card
    )
    bad = [(e if c else i + SLO_MS / 1000, e) for e, i, c, lat in rows if c or lat > SLO_MS]
    bad = [(known, e) for known, e in bad if known >= start]
    if not bad:
        return None, None
    detected, first_end = min(bad)[0], min(e for _, e in bad)
    after = [(e, c == 0 and lat <= SLO_MS) for e, i, c, lat in rows if e > first_end]
    for k, (e, good) in enumerate(after):
        rest = after[k : k + RUN]
        if good and all(g for _, g in rest) and (len(rest) == RUN or k + len(rest) == len(after)):
            return detected - start, e - start
    return detected - start, None


# -- rendered text ------------------------------------------------------------------------------


def _terminal(result: dict, width: int) -> str:
    from rich.console import Console

    console = Console(record=True, width=width, color_system=None)
    render.render_terminal(result, console=console)
    return console.export_text()


def _rows(text: str, title: str, names) -> list[list[str]]:
    """The cells (split on whitespace) of the rows of the table titled ``title``: lines that
    start with a phase name, or with blanks (a phase's further rows), up to the caption."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rule = next(i for i in range(start, len(lines)) if set(lines[i].strip()) == {"─"})
    rows = []
    for line in lines[rule + 1 :]:
        if not line.strip():
            continue  # between two phases' sections
        if not (line.startswith(" ") or line.split()[0] in names):
            break
        rows.append(line.split())
    return rows


def _close(cell: str, value: float) -> bool:
    """A shown number equals ``value`` to the precision it is shown with."""
    shown = float(cell.replace(",", ""))
    digits = len(cell.split(".")[1]) if "." in cell else 0
    return abs(shown - value) <= 0.5 * 10**-digits + 1e-6 * abs(value)


@pytest.mark.parametrize("width", [80, 200])
def test_phase_and_card_tables_equal_the_samples(run, width):
    _, result, requests, _, _ = run
    cols = _cols(requests)
    text = _terminal(result, width)
    assert max(len(line.rstrip()) for line in text.splitlines()) <= width
    assert "…" not in text.replace(", …", "")
    names = {p["name"] for p in result["phases"]}
    phase_rows = {r[0]: r for r in _rows(text, "npufarm bench", names)}
    card_rows, last = {}, None
    for r in _rows(text, "Per card", names):
        last = r[0] if len(r) == 8 else last
        card_rows[(last, r[-7])] = r[-6:]
    for i, phase in enumerate(result["phases"]):
        dur = phase["end_s"] - phase["start_s"]
        want = _figures(cols, _measured(cols, i, phase), dur)
        row = phase_rows[phase["name"]]
        assert int(row[1 if width < 120 else 3]) == want["req"] and int(row[-1]) == want["err"]
        if width >= 120:  # the wide table also shows the completed requests
            assert int(row[4]) == want["req"] - want["err"]
        assert _close(row[-8], want["thr"]) and _close(row[-7], want["good"])
        for cell, key in zip(row[-6:-1], ("p50", "p90", "p99", "p99.9", "max")):
            assert _close(cell, want[key]), (phase["name"], key, cell, want[key])
        for card in (0, 1):
            mask = _measured(cols, i, phase) & (cols["card"] == card)
            want = _figures(cols, mask, dur)
            req, err, thr, p50, p99, mx = card_rows[(phase["name"], str(card))]
            assert (int(req), int(err)) == (want["req"], want["err"])
            assert _close(thr, want["thr"]) and _close(p50, want["p50"])
            assert _close(p99, want["p99"]) and _close(mx, want["max"])


def test_fault_windows_table_equals_the_fault_log_and_samples(run):
    _, result, requests, events, _ = run
    cols = _cols(requests)
    bench_start = (
        result["clock"]["bench_start_monotonic_s"] - result["clock"]["farm_start_monotonic_s"]
    )
    mine = [e for e in events if e["t_s"] >= bench_start]
    slow = [_bench_t(e, result) for e in mine if e["kind"] == "slow"]
    (drop,) = [_bench_t(e, result) for e in mine if e["kind"] == "disconnect"]
    assert all(e["card"] == 1 for e in mine if e["kind"] == "slow")
    windows = {"slow": (1, min(slow), max(slow)), "disconnect": (0, drop, None)}
    rows = _rows(_terminal(result, 200), "Fault windows", {p["name"] for p in result["phases"]})
    seen = set()
    for row in rows:
        phase_name, label = row[0], row[1]
        i = next(k for k, p in enumerate(result["phases"]) if p["name"] == phase_name)
        phase = result["phases"][i]
        kind = label
        card, start, end = windows[kind]
        detect, recover = _detect_recover(cols, cols["phase"] == i, card, start)
        if end is None:  # a one-off fault lasts until its card recovered, or to the run end
            end = start + recover if recover is not None else phase["end_s"]
        title = {"slow": "slow 3× @1", "disconnect": "disconnect @0"}[kind]
        assert " ".join(row[1 : 1 + len(title.split())]) == title
        cells = row[1 + len(title.split()) :]
        events_shown, window = cells[2], cells[3]
        n_events = len(slow) if kind == "slow" else 1
        assert int(events_shown) == n_events
        assert window == f"{start:.2f}–{end:.2f}"
        in_phase = _measured(cols, i, phase)
        t, done, on = cols["intended_s"], cols["end_s"], cols["card"] == card
        parts = {
            "before": in_phase & (done < start),
            "during": in_phase & (done >= start) & (t <= end),
            "after": in_phase & (t > end),
        }
        shown = dict(
            zip(("before", "during", "after", "others", "err", "detect", "recover"), cells[4:])
        )
        for name, mask in parts.items():
            ok = mask & on & (cols["code"] == 0)
            if ok.any():
                assert _close(shown[name], np.percentile(cols["latency_ms"][ok], 99)), name
            else:
                assert shown[name] == "—"
        others = parts["during"] & ~on & (cols["code"] == 0)
        assert _close(shown["others"], np.percentile(cols["latency_ms"][others], 99))
        assert int(shown["err"]) == int((parts["during"] & on & (cols["code"] != 0)).sum())
        assert _close(shown["detect"], detect)
        assert shown["recover"] == "never" if recover is None else _close(shown["recover"], recover)
        seen.add(kind)
    assert seen == {"slow", "disconnect"}


def test_bench_prints_the_truth_in_80_columns_and_says_where_it_wrote(run):
    out, result, _, _, stdout = run
    assert "None" not in stdout and "…" not in stdout.replace(", …", "")
    tables = stdout.splitlines()[:-1]  # the last line names the files: a path may be long
    assert max(len(line) for line in tables) <= 80
    assert "lag|gap ms: p50 of how late" in " ".join(stdout.split())
    pngs = ["latency_over_time.png", "percentiles_vs_load.png", "per_card_throughput.png"]
    files = ", ".join(["result.json", "summary.csv", "requests.jsonl", *pngs])
    assert stdout.splitlines()[-1] == f"npufarm bench: wrote {files} to {out.resolve()}"
    for name in pngs:
        assert (out / name).stat().st_size > 0


@pytest.fixture
def figures(monkeypatch):
    """The matplotlib figures the plots save, by file name."""
    saved: dict[str, object] = {}
    real = plots.save

    def capture(fig, path):
        saved[Path(path).name] = fig
        return real(fig, path)

    monkeypatch.setattr(plots, "save", capture)
    return saved


def test_plots_show_the_samples_figures(run, figures, tmp_path):
    _, result, requests, events, _ = run
    cols = _cols(requests)
    plots.render_all(result, tmp_path, samples=requests)
    measured = np.zeros(len(requests), dtype=bool)
    for i, phase in enumerate(result["phases"]):
        measured |= _measured(cols, i, phase)
    # latency over time: the legend counts what the tables count (no warm-up)
    fig = figures["latency_over_time.png"]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    for card in (0, 1):
        mask = measured & (cols["card"] == card)
        n_err = int((mask & (cols["code"] != 0)).sum())
        assert f"card {card} ({int(mask.sum())} req, {n_err} err)" in legend
    warm = int((~measured).sum())
    assert f"not measured (warm-up: {warm} requests, not counted)" in legend
    lanes = [t.get_text() for ax in fig.axes for t in ax.get_yticklabels()]
    bench_start = (
        result["clock"]["bench_start_monotonic_s"] - result["clock"]["farm_start_monotonic_s"]
    )
    n_slow = sum(1 for e in events if e["kind"] == "slow" and e["t_s"] >= bench_start)
    assert f"slow 3× @card 1: {n_slow} events" in lanes and "disconnect @card 0: 1 event" in lanes
    # percentiles vs load: each point is the phase's percentile of its measured samples
    top, bottom = figures["percentiles_vs_load.png"].axes
    lines = {line.get_label(): line.get_ydata() for line in top.lines}
    rates = {line.get_label(): line.get_ydata() for line in bottom.lines}
    for i, phase in enumerate(result["phases"]):
        want = _figures(cols, _measured(cols, i, phase), phase["end_s"] - phase["start_s"])
        for key in ("p50", "p90", "p99", "p99.9"):
            assert lines[key][i] == pytest.approx(want[key], abs=1e-3)
        assert rates["throughput"][i] == pytest.approx(want["thr"], abs=1e-3)
        assert rates["goodput"][i] == pytest.approx(want["good"], abs=1e-3)
    # per-card throughput: bar heights
    (ax,) = figures["per_card_throughput.png"].axes
    heights = [round(bar.get_height(), 3) for bar in ax.patches]
    want = [
        round(
            _figures(
                cols, _measured(cols, i, p) & (cols["card"] == card), p["end_s"] - p["start_s"]
            )["thr"],
            3,
        )
        for card in (0, 1)
        for i, p in enumerate(result["phases"])
    ]
    assert heights == pytest.approx(want, abs=2e-3)


def test_summary_csv_equals_the_samples(run):
    import csv

    out, result, requests, _, _ = run
    cols = _cols(requests)
    with (out / "summary.csv").open() as handle:
        rows = {(r["phase"], r["card"]): r for r in csv.DictReader(handle)}
    assert len(rows) == 3 * len(result["phases"])  # all cards, card 0, card 1
    for i, phase in enumerate(result["phases"]):
        for card in ("all", "0", "1"):
            mask = _measured(cols, i, phase)
            if card != "all":
                mask &= cols["card"] == int(card)
            want = _figures(cols, mask, phase["end_s"] - phase["start_s"])
            row = rows[(phase["name"], card)]
            assert (int(row["requests"]), int(row["errors"])) == (want["req"], want["err"])
            assert int(row["completed"]) == want["req"] - want["err"]
            assert float(row["throughput_rps"]) == pytest.approx(want["thr"], abs=1e-3)
            assert float(row["goodput_rps"]) == pytest.approx(want["good"], abs=1e-3)
            for key in ("p50", "p90", "p99", "p99.9", "max"):
                assert float(row[f"latency_ms_{key}"]) == pytest.approx(want[key], abs=1e-3)
