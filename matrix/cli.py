"""``dib-matrix`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from matrix import hostcli

# Until the orchestrator lands, "run" builds this default target with the bundled builder.
DEFAULT_BUILD = ["-o", "out/debian-bookworm", "-t", "qcow2", "debian-minimal"]
DEFAULT_BUILD_ENV = {"DIB_RELEASE": "bookworm"}


def _cmd_run(args: argparse.Namespace) -> int:
    from dib import cli as dib_cli

    for key, value in DEFAULT_BUILD_ENV.items():
        os.environ.setdefault(key, value)
    return dib_cli.main(DEFAULT_BUILD + list(args.dib_args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dib-matrix",
        description="Test OS image builds across a host x target matrix.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="run the default job (for now: build debian-bookworm qcow2)")
    run.add_argument("dib_args", nargs="*", help="extra dib-build arguments")
    run.set_defaults(func=_cmd_run)
    hostcli.add_parser(sub)
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
