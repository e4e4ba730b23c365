"""loadtest.plots, loadtest.render: PNGs from a synthetic bench result, the report CLI, the tables.

The result is synthetic but built with :mod:`loadtest.report` (the ``npufarm.bench/1`` source of
truth), from per-request samples on a fake monotonic clock: two closed-loop phases (``c4``,
``c16``), two cards, and a ``slow`` fault on card 1 (a fault window) with a few 507015 errors
while it lasts; a second rule fires only during warm-up, so no window covers it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from loadtest import plot_faults, plot_style, plots, render, report  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WIDTH, HEIGHT = 1200, 700
FARM_START = 1000.0  # monotonic clock
BENCH_START = 1002.0
SLOW = (6.0, 7.5)  # card 1 is 8x slower then (s since bench start)


def _samples(rng) -> tuple[np.ndarray, list[tuple]]:
    """(samples, phase plan rows (index, name, concurrency, warm_end, end) in bench seconds)."""
    rows, plan, t = [], [], 0.0
    for index, conc in enumerate((4, 16)):
        start = t
        plan.append((index, f"c{conc}", conc, start + 0.5, start + 4.5))
        while t < start + 4.5:
            for slot in range(conc):
                card = slot % 2
                lat = float(rng.lognormal(np.log(2.0 + conc * 0.4), 0.25)) / 1000.0
                slow = card == 1 and SLOW[0] <= t < SLOW[1]
                code = 507015 if slow and rng.random() < 0.03 else 0
                rows.append((index, slot, card, code, t, t, t + lat * (8 if slow else 1)))
            t += 0.02
    samples = np.array(rows, dtype=report.SAMPLE_DTYPE)
    for name in ("intended_s", "start_s", "end_s"):
        samples[name] += BENCH_START
    return samples, plan


def _fault_events(samples: np.ndarray) -> list[dict]:
    def event(t_bench, rule, kind, code, **detail):
        return {
            "t_s": round(BENCH_START + t_bench - FARM_START, 6),
            "card": 1,
            "epoch": 0,
            "hook": "card.execute",
            "call": 0,
            "kind": kind,
            "code": code,
            "rule": rule,
            "detail": detail,
        }

    slow = [
        event(t, 0, "slow", 0, duration_s=1.5, name="slow-card-1")
        for t in np.arange(SLOW[0], SLOW[1], 0.02)
    ]
    bad = samples[samples["code"] != 0]["start_s"] - BENCH_START
    errors = [event(float(t), 1, "error", 507015) for t in bad]
    warmup = [event(0.1, 2, "hang", 507046), event(0.3, 2, "hang", 507046)]
    return sorted(slow + errors + warmup, key=lambda e: e["t_s"])


def make_result(rng_seed: int = 1) -> tuple[dict, list[dict]]:
    """A result dict (as ``npufarm bench`` writes it) and its ``requests.jsonl`` rows."""
    samples, plan = _samples(np.random.default_rng(rng_seed))
    events = _fault_events(samples)
    phases = []
    for index, name, conc, warm_end, end in plan:
        window = (BENCH_START + warm_end, BENCH_START + end)
        part = samples[samples["phase"] == index]
        phases.append(
            {
                "name": name,
                "mode": "closed",
                "concurrency": conc,
                "rate": None,
                "start_s": warm_end,
                "end_s": end,
                "interrupted": False,
                "missed": 0,
                **report.summarize(part, window=window),
                "fault_windows": report.fault_windows(
                    part, events, FARM_START, window=window, origin_s=BENCH_START
                ),
            }
        )
    result = {
        "schema": report.SCHEMA,
        "config": {"concurrency": [4, 16], "duration_s": 4.0, "slo_ms": None},
        "farm": {"name": "test-farm", "cards": [0, 1], "card_count": 2, "time_scale": 1.0},
        "clock": {"bench_start_monotonic_s": BENCH_START, "farm_start_monotonic_s": FARM_START},
        "phases": phases,
        "generator": {"workers": 2, "slots": 16, "saturated": False},
        "faults": [
            {**e, "bench_t_s": round(FARM_START + e["t_s"] - BENCH_START, 6)} for e in events
        ],
        "samples_file": "requests.jsonl",
    }
    lat = report.latency_ms(samples)
    rows = [
        {
            "phase": int(r["phase"]),
            "slot": int(r["slot"]),
            "card": int(r["card"]),
            "code": int(r["code"]),
            "intended_s": float(r["intended_s"]) - BENCH_START,
            "start_s": float(r["start_s"]) - BENCH_START,
            "end_s": float(r["end_s"]) - BENCH_START,
            "latency_ms": float(ms),
        }
        for r, ms in zip(samples, lat)
    ]
    return json.loads(json.dumps(result)), rows


def _check_png(path: Path) -> None:
    import matplotlib.image as mpimg

    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_MAGIC, path
    img = mpimg.imread(path)
    assert img.shape[:2] == (HEIGHT, WIDTH), (path, img.shape)
    assert float(img[..., :3].std()) > 0.05, f"{path} looks blank"


def _save(tmp_path: Path, result: dict, samples: list[dict] | None) -> Path:
    path = tmp_path / "run" / "result.json"
    path.parent.mkdir()
    path.write_text(json.dumps(result))
    if samples is not None:
        with (path.parent / "requests.jsonl").open("w") as fh:
            fh.writelines(json.dumps(s) + "\n" for s in samples)
    return path


def test_render_all_writes_valid_pngs(tmp_path):
    result, samples = make_result()
    paths = plots.render_all(result, tmp_path, samples=samples)
    names = [p.name for p in paths]
    assert names == ["latency_over_time.png", "percentiles_vs_load.png", "per_card_throughput.png"]
    for path in paths:
        _check_png(path)


def test_render_all_without_samples_skips_latency_plot(tmp_path):
    result, _ = make_result()
    paths = plots.render_all(result, tmp_path / "out")
    assert [p.name for p in paths] == ["percentiles_vs_load.png", "per_card_throughput.png"]
    assert not (tmp_path / "out" / "latency_over_time.png").exists()


def test_latency_plot_other_clocks_and_bare_events(tmp_path):
    _, samples = make_result()
    events = [{"t_s": 5.0, "card": 1, "kind": "crash", "code": 507899}]
    # no farm start: t_s is taken as relative to the first request
    _check_png(plots.plot_latency_over_time(samples, events, tmp_path / "a.png"))
    # monotonic times with t_-prefixed names and phase names, the farm start on that clock
    mono = [
        {
            "phase": f"p{s['phase']}",
            "card": s["card"],
            "code": s["code"],
            "t_intended_s": s["intended_s"] + BENCH_START,
            "t_end_s": s["end_s"] + BENCH_START,
        }
        for s in samples
    ]
    path = plots.plot_latency_over_time(mono, events, tmp_path / "b.png", farm_start_s=FARM_START)
    _check_png(path)
    _check_png(plots.plot_latency_over_time([], None, tmp_path / "empty.png"))


def test_fault_windows_deduplicated_and_loose_events_grouped():
    result, _ = make_result()
    phase = result["phases"][1]
    result["phases"].append({**phase, "name": "again"})  # the same windows in a second phase
    items = plots._windows_and_events(result)
    windows = [i for i in items if i.get("before") is not None]
    assert sorted(w["kind"] for w in windows) == ["error", "slow"]
    err = [e for e in result["faults"] if e["kind"] == "error"]
    (hang,) = [i for i in items if i["kind"] == "hang"]  # warm-up only: one span, 2 events
    assert hang["events"] == 2 and hang["start_s"] == pytest.approx(0.1)
    assert hang["end_s"] == pytest.approx(0.3)
    spans = plot_faults.fault_spans(items, 0.0, None, (-1.0, 100.0))
    lanes = plot_faults.fault_lanes(spans)
    # the fault's strength (a factor, a duration) and its event count are told apart
    slow_lane, error_lane = "slow 1.5 s @card 1: 75 events", f"error @card 1: {len(err)} events"
    assert list(lanes) == ["hang @card 1: 2 events", slow_lane, error_lane]
    (error,) = lanes[error_lane]
    window = next(w for w in windows if w["kind"] == "error")
    assert error["detect"] == pytest.approx(window["start_s"] + window["time_to_detect_s"])
    # more (kind, card) lanes than MAX_LANES: one lane per kind
    n = plot_faults.MAX_LANES
    many = [{**f, "card": c} for c in range(n) for f in spans]
    assert sorted(plot_faults.fault_lanes(many)) == sorted(
        [
            f"hang ({n} cards): {2 * n} events",
            f"slow 1.5 s ({n} cards): {75 * n} events",
            f"error ({n} cards): {len(err) * n} events",
        ]
    )


def test_phase_titles():
    assert plot_style.phase_title({"name": "c4", "concurrency": 4}) == "c4: concurrency 4"
    assert plot_style.phase_title({"name": "r200", "rate": 200.0}, "\n") == "r200\n200 req/s"
    assert plot_style.phase_title({"name": "concurrency 4", "concurrency": 4}) == "concurrency 4"


def test_plots_tolerate_sparse_results(tmp_path):
    result = {
        "schema": "npufarm.bench/1",
        "phases": [
            {
                "name": "rate=200",
                "mode": "open",
                "concurrency": None,
                "rate": 200.0,
                "latency_ms": {"p50": 3.0, "p90": None, "p99": 9.0},
                "errors": {},
                "per_card": {},
            },
        ],
    }
    for path in plots.render_all(result, tmp_path):
        _check_png(path)


def test_import_is_lazy():
    import subprocess
    import sys

    code = "import sys, loadtest.plots, loadtest.render; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_report_main_renders_pngs_next_to_json(tmp_path, capsys):
    result, samples = make_result()
    path = _save(tmp_path, result, samples)
    assert render.report_main([str(path)]) == 0
    for name in ("latency_over_time.png", "percentiles_vs_load.png", "per_card_throughput.png"):
        _check_png(path.parent / name)
    out = capsys.readouterr().out
    assert "c16" in out and "Fault windows" in out and "wrote" in out


def test_report_main_out_dir_and_no_plots(tmp_path, capsys):
    result, _ = make_result()
    path = _save(tmp_path, result, None)
    assert render.report_main([str(path), "--out", str(tmp_path / "o")]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "per_card_throughput.png",
        "percentiles_vs_load.png",
    ]
    assert render.report_main([str(path), "--no-plots", "--out", str(tmp_path / "n")]) == 0
    assert not (tmp_path / "n").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"schema": "npufarm.bench/0", "phases": []}, "schema 'npufarm.bench/0', expected"),
        ({"phases": []}, "no 'schema' field, expected 'npufarm.bench/1'"),
        ({"schema": "npufarm.bench/1", "phases": [1]}, "'phases' must be a list of objects"),
        ("not json", "not valid JSON"),
    ],
)
def test_report_main_rejects_wrong_schema(tmp_path, capsys, content, message):
    path = tmp_path / "result.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    assert render.report_main([str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("npufarm report: error: ") and message in captured.err
    assert captured.out == ""  # no summary printed
    assert not list(tmp_path.glob("*.png"))


def test_report_main_unwritable_out(tmp_path, capsys):
    result, _ = make_result()
    path = _save(tmp_path, result, None)
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert render.report_main([str(path), "--out", str(blocker)]) == 1
    assert "cannot render the plots" in capsys.readouterr().err


def test_report_main_missing_file(tmp_path, capsys):
    assert render.report_main([str(tmp_path / "nope.json")]) == 2
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.parametrize("width", [80, 200])
def test_render_terminal_tables(width):
    from rich.console import Console

    result, _ = make_result()
    console = Console(record=True, width=width, color_system=None)
    render.render_terminal(result, console=console)
    text = console.export_text()
    assert max(len(line.rstrip()) for line in text.splitlines()) <= width
    assert "…" not in text.replace(", …", "")  # nothing truncated, even at 80 columns
    for phase in result["phases"]:
        assert phase["name"] in text
        for key in ("p50", "p90", "p99", "p99.9", "max"):
            assert render._ms(phase["latency_ms"][key]) in text
    header = next(line for line in text.splitlines() if "phase" in line and "p99.9" in line)
    assert all(k in header for k in ("thr/s", "good/s", "p50", "p90", "p99", "max", "err"))
    n_err = result["phases"][1]["errors"]["507015"]
    assert "latency in ms" in text and "Per card" in text and f"507015×{n_err}" in text
    assert "Fault windows" in text and "slow 1.5 s @1" in text and "error @1" in text
    (error,) = [w for w in result["phases"][1]["fault_windows"] if w["kind"] == "error"]
    assert render._secs(error["time_to_detect_s"]) in text
    assert render._secs(error["time_to_recover_s"]) in text
    assert ("closed" in text) == (width >= 120)  # the mode column only on wide consoles
    assert ("slow-card-1" in text) == (width >= 120)  # so is the fault's rule


def test_render_terminal_notes():
    from rich.console import Console

    result, _ = make_result()
    result["generator"]["saturated"] = True
    result["phases"][1].update(interrupted=True, missed=7, slo_ms=50.0)
    console = Console(record=True, width=120, color_system=None)
    render.render_terminal(result, console=console)
    text = " ".join(console.export_text().split())
    assert "saturated" in text and "interrupted" in text and "7 scheduled" in text
    assert "within 50 ms" in text


def test_load_samples_skips_bad_lines(tmp_path):
    path = tmp_path / "requests.jsonl"
    path.write_text('{"phase": "a", "latency_ms": 1}\nnot json\n\n[1]\n')
    assert list(render.load_samples(path)) == [{"phase": "a", "latency_ms": 1}]


def test_bench_says_where_it_wrote_and_why_there_are_no_pngs(tmp_path, monkeypatch):
    import sys

    result, samples = make_result()
    path = _save(tmp_path, result, samples)
    out = path.parent
    line = render.write_bench_plots(result, str(out), per_request=True)
    pngs = "latency_over_time.png, percentiles_vs_load.png, per_card_throughput.png"
    assert line == f"npufarm bench: wrote result.json, summary.csv, requests.jsonl, {pngs} to {out}"
    assert render.write_bench_plots(result, None, per_request=False).startswith(
        "npufarm bench: no files written"
    )
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as without matplotlib
    line = render.write_bench_plots(result, str(out), per_request=False)
    assert line.startswith(f"npufarm bench: wrote result.json, summary.csv to {out}; no PNGs: ")


def test_bench_table_explains_its_columns_in_80_columns():
    from rich.console import Console

    result, _ = make_result()
    for p in result["phases"]:
        p["generator"] = {"lag_ms": None, "issue_gap_ms": {"p50": 0.0123}, "worker_cpu_util": [0.5]}
    console = Console(record=True, width=80, color_system=None)
    console.print(render.bench_table(result))
    text = console.export_text()
    assert "…" not in text and max(len(line.rstrip()) for line in text.splitlines()) <= 80
    flat = " ".join(text.split())
    assert "lag|gap ms: p50 of how late" in flat and "cpu: the busiest bench worker" in flat
    assert "0.01" in text and "0.50" in text and "None" not in text
