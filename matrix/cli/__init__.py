"""``dib-matrix`` command line."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from matrix.cli import classifycli, hostcli, mergecli, runcli, showcli
from reports import cli as reportcli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dib-matrix",
        description="Test OS image builds across a host x target matrix.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    runcli.add_parsers(sub)
    hostcli.add_parser(sub)
    reportcli.add_parsers(sub)
    classifycli.add_parser(sub)
    mergecli.add_parser(sub)
    showcli.add_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
