"""The compact ``rich`` table every terminal report of the bench uses (loadtest.render, the
per-node table of loadtest.cluster_report): one space between columns, so 80 columns suffice."""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.table import Table

__all__ = ["compact_table"]


def compact_table(
    title: str, columns: Sequence[str], caption: str | None = None, *, wrap_labels: bool = False
) -> Table:
    """A compact table: columns named ``"<name"`` are left-aligned; numbers are never wrapped
    or cut; with ``wrap_labels`` the left-aligned columns may wrap (a label folds rather than
    being cut)."""
    table = Table(
        title=title,
        title_justify="left",
        title_style="bold",
        caption=caption,
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        header_style="bold",
        padding=(0, 0),
        show_edge=False,
    )
    for name in columns:
        if name.startswith("<"):
            table.add_column(name[1:], justify="left", no_wrap=not wrap_labels)
        else:
            table.add_column(name, justify="right", no_wrap=True)
    return table
