"""``python -m eval``: lists the evaluation commands (each is ``python -m eval.<name> --help``)."""

from __future__ import annotations

import sys

from . import COMMANDS


def main() -> int:
    print("usage: python -m eval.<command> --help   (or: wssl-zoo eval <command> --help)\n")
    for name, what in COMMANDS.items():
        print(f"  {name:10s} {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
