"""The README's list of supported calls is generated from the facade and kept in step."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from acl._calls import (
    BEGIN_MARKER,
    END_MARKER,
    MODULES,
    readme_block,
    render_markdown,
    replace_block,
    summary_of,
    supported_calls,
)

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_block_matches_the_generated_markdown():
    text = README.read_text()
    assert text.count(BEGIN_MARKER) == 1 and text.count(END_MARKER) == 1
    begin = text.index(BEGIN_MARKER) + len(BEGIN_MARKER)
    found = text[begin : text.index(END_MARKER)]
    assert found == "\n" + render_markdown(), (
        "README.md's supported-calls block is out of date: run `python -m acl --readme README.md`"
    )
    assert "### Supported calls\n\n" + readme_block() in text


def test_every_public_call_is_listed_with_a_summary():
    listing = supported_calls()
    assert list(listing) == list(MODULES)
    for module_name, calls in listing.items():
        module = sys.modules[module_name]
        names = [name for name, _ in calls]
        assert names == [n for n in module.__all__ if not inspect.ismodule(getattr(module, n))]
        for name, summary in calls:
            assert summary, f"{module_name}.{name} has no docstring summary"
            assert "\n" not in summary and "``" not in summary
    assert "constants" not in [name for name, _ in listing["acl"]]
    assert ("event_elapsed_time" in dict(listing["acl.rt"])) and (
        "set_dynamic_batch_size" in dict(listing["acl.mdl"])
    )


def test_summary_is_the_first_paragraph_on_one_line():
    def documented():
        """``acl.rt.thing``: ret; a | b
        continues here.

        Not this paragraph."""

    assert summary_of(documented) == "Returns `ret`; a \\| b continues here."
    assert summary_of(lambda: None) == ""


def test_render_and_replace_block():
    listing = {"acl": [("init", "Start.")], "acl.rt": [("malloc", "Memory.")]}
    markdown = render_markdown(listing)
    assert markdown.startswith("2 calls are emulated")
    assert "| `acl.rt.malloc` | Memory. |\n" in markdown and markdown.endswith("\n")
    text = f"intro\n{BEGIN_MARKER}\nold\n{END_MARKER}\noutro\n"
    assert (
        replace_block(text, markdown) == f"intro\n{BEGIN_MARKER}\n{markdown}{END_MARKER}\noutro\n"
    )
    with pytest.raises(ValueError):
        replace_block("no markers here", markdown)
    with pytest.raises(ValueError):
        replace_block(f"{END_MARKER}\n{BEGIN_MARKER}", markdown)


def test_python_dash_m_acl_prints_the_markdown():
    done = subprocess.run(
        [sys.executable, "-m", "acl"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=README.parent,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == render_markdown()
