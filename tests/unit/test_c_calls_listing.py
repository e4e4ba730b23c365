"""The README's list of exported and emulated C calls is generated and kept in step."""

from __future__ import annotations

from pathlib import Path

import pytest

from cabi.bridge import EMULATED
from cabi.listing import BEGIN_MARKER, END_MARKER, render_markdown, replace_block
from cabi.symbols import prototypes

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_block_matches_the_generated_markdown():
    text = README.read_text()
    assert replace_block(text) == text, (
        "README.md's c-calls block is out of date: run `python -m cabi --readme README.md`"
    )


def test_every_exported_call_is_listed_once_and_emulated_ones_have_a_summary():
    markdown = render_markdown()
    listed = []
    for line in markdown.splitlines():
        if line.startswith("| `"):
            listed.append(line.split("`")[1])  # a table row names its call first
        elif line.startswith("`"):
            listed += [name.strip("` ") for name in line.split(",")]  # a not-emulated list
    assert sorted(listed) == sorted(proto.name for proto in prototypes())
    for name in EMULATED:
        if name in {p.name for p in prototypes()}:
            row = next(line for line in markdown.splitlines() if line.startswith(f"| `{name}` |"))
            assert row.split("|")[2].strip(), f"{name} has no summary"


def test_replace_block_needs_exactly_one_block():
    with pytest.raises(ValueError):
        replace_block("no markers here")
    with pytest.raises(ValueError):
        replace_block(f"{BEGIN_MARKER}{END_MARKER}{BEGIN_MARKER}{END_MARKER}")
    assert replace_block(f"a{BEGIN_MARKER}old{END_MARKER}b", "new\n") == (
        f"a{BEGIN_MARKER}\nnew\n{END_MARKER}b"
    )
