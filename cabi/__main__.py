"""``python -m cabi``: print the exported C calls and which are emulated, as Markdown.

``python -m cabi --readme README.md`` rewrites the file's ``c-calls`` block instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cabi.listing import render_markdown, update_readme

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cabi", description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, help="rewrite this file's c-calls block instead")
    args = parser.parse_args(argv)
    if args.readme is not None:
        changed = update_readme(args.readme)
        sys.stdout.write(f"{args.readme}: {'updated' if changed else 'already up to date'}\n")
        return 0
    sys.stdout.write(render_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
