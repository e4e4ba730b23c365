"""``python -m acl``: print the emulated pyACL calls as Markdown.

``python -m acl --readme README.md`` rewrites the file's ``supported-calls`` block instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from acl._calls import render_markdown, update_readme


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m acl", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--readme", type=Path, help="rewrite this file's supported-calls block instead"
    )
    args = parser.parse_args(argv)
    if args.readme is not None:
        changed = update_readme(args.readme)
        print(f"{args.readme}: {'updated' if changed else 'already up to date'}")
        return 0
    sys.stdout.write(render_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
