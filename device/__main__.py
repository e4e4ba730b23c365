"""``python -m device --spec '<json>'``: run one card in the foreground (the supervisor normally
starts cards itself; this entry point is for debugging a single card against a running broker)."""

from __future__ import annotations

import argparse
import json

from device.card import run_card

__all__ = ["main"]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m device", description=__doc__)
    parser.add_argument("--spec", required=True, help="CardSpec as JSON")
    args = parser.parse_args()
    run_card(json.loads(args.spec))


if __name__ == "__main__":
    main()
