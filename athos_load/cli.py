"""``athos-load``: the tool's own command, beside ``locust -f locustfile.py``.

``athos-load options`` lists every ``--athos-*`` option with its default, environment variable and
help (Locust prints ``--help`` before it imports the locustfile, so they cannot appear there).
"""

from __future__ import annotations

import argparse
import sys

from .options import describe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="athos-load", description="Load and soak testing for Athos roleplay calls.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("options", help="list every --athos-* option of `locust -f locustfile.py`")
    args = parser.parse_args(argv)
    if args.command == "options":
        print(describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
