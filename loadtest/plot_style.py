"""The look and plumbing shared by the figures of :mod:`loadtest.plots` (which re-exports
:data:`FIGSIZE` and :data:`DPI`): size and resolution, card and fault colours, card and phase
labels, the log latency axis, and a matplotlib figure (imported lazily, Agg backend, no pyplot
state) and its saving.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "DPI",
    "FIGSIZE",
    "CARD_COLOURS",
    "FAULT_COLOURS",
    "figure",
    "save",
    "card_key",
    "card_label",
    "phase_title",
    "log_y",
]

logger = logging.getLogger(__name__)

FIGSIZE = (12.0, 7.0)
DPI = 100
#: Card colours: tab10/tab20 without the reds, which are kept for errors.
CARD_COLOURS = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
    "#c5b0d5",
    "#c49c94",
    "#f7b6d2",
    "#c7c7c7",
]
FAULT_COLOURS = {
    "crash": "#404040",
    "hang": "#6a3d9a",
    "slow": "#ff7f00",
    "error": "#d62728",
    "disconnect": "#1f3b73",
    "heartbeat_loss": "#00827f",
    "drop": "#8c510a",
    "corrupt": "#c51b7d",
    "ecc": "#556b2f",
    "oom": "#7f0000",
}


def figure(title: str):
    """A titled figure of :data:`FIGSIZE` on the Agg backend (no pyplot state)."""
    # matplotlib is an optional extra (``npufarm[plot]``) and slow to import: imported here, so
    # that importing the load tester works without it and a missing one is reported per render.
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    fig.suptitle(title, fontsize=14, fontweight="bold")
    return fig


def save(fig, path: str | Path) -> Path:
    """``fig`` as a PNG at ``path`` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    logger.debug("wrote %s", path)
    return path


def card_key(card: Any) -> tuple:
    """Sort key: numeric card ids in order, then other labels."""
    text = str(card)
    return (0, int(text), "") if text.lstrip("-").isdigit() else (1, 0, text)


def card_label(card: str) -> str:
    """``"-1"`` → broker, ``"3"`` → card 3, anything else as is."""
    return "broker" if card == "-1" else (f"card {card}" if card.lstrip("-").isdigit() else card)


def phase_title(phase: Mapping[str, Any], sep: str = ": ") -> str:
    """``c4`` → ``c4: concurrency 4``, ``r200`` → ``r200: 200 req/s``."""
    name = str(phase.get("name", "?"))
    if phase.get("concurrency") is not None:
        load = f"concurrency {phase['concurrency']}"
    elif phase.get("rate") is not None:
        load = f"{float(phase['rate']):g} req/s"
    else:
        return name
    return name if load in name else f"{name}{sep}{load}"


def log_y(ax, label: str) -> None:
    """Log y axis with plain-number ticks at 1-2-5 steps (10, 20, 50 ms, not 10^1)."""
    # lazy: optional extra, see figure()
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel(f"{label}, log scale")
