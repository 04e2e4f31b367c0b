"""``dib-matrix`` command line.

Two things every command shares are decided here, once, at the top:

- a reader that goes away (``dib-matrix plan | head``) ends the output quietly: no
  traceback, exit code 141 (128 + SIGPIPE), what a shell reports for a program a
  closed pipe stopped. Not 0: the command's own verdict (compare's gate, run's
  failures) was never fully delivered, so a ``set -o pipefail`` script must not read
  it as a pass; not 1 or 2, which mean a failed cell and bad input. The command still
  runs to its end with its output dropped, so a ``run`` writes all its results. A
  closed stderr drops the messages the same way and keeps the exit code.
- Ctrl-C outside a run's own handling ends with one line and exit code 130
  (128 + SIGINT), not a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any, List, Optional, TextIO

from matrix.cli import (
    archivecli,
    cataloguecli,
    classifycli,
    hostcli,
    investigatecli,
    mergecli,
    runcli,
    showcli,
    snapshotcli,
    supportcli,
)
from reports import cli as reportcli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dib-matrix",
        description="Test OS image builds across a host x target matrix.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    runcli.add_parsers(sub)
    investigatecli.add_parsers(sub)  # investigate a finished run's regressions
    hostcli.add_parser(sub)
    reportcli.add_parsers(sub)
    classifycli.add_parser(sub)
    cataloguecli.add_parser(sub)
    mergecli.add_parser(sub)
    showcli.add_parser(sub)
    archivecli.add_parsers(sub)  # gc, keep
    snapshotcli.add_parser(sub)  # snapshot save/list/show/rm/export
    supportcli.add_parser(sub)
    return parser


EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_OUTPUT_CLOSED = 141  # 128 + SIGPIPE


class ClosedPipeGuard:
    """A text stream that turns "the reader went away" into silence: the first write
    or flush that meets a closed pipe marks the stream closed and points its descriptor
    at /dev/null; later writes are dropped. Everything else is the wrapped stream's."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.closed_early = False

    def write(self, text: str) -> int:
        if not self.closed_early:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._discard()
        return len(text)

    def flush(self) -> None:
        if not self.closed_early:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._discard()

    def _discard(self) -> None:
        self.closed_early = True
        # What the stream still buffers is flushed again at interpreter exit: on
        # /dev/null instead of the dead pipe, so no "Exception ignored" message follows.
        try:
            descriptor = self._stream.fileno()
        except (OSError, ValueError):  # not a real file (a test's capture): nothing to do
            return
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, descriptor)
        finally:
            os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def guarded_output() -> Iterator[list[ClosedPipeGuard]]:
    """sys.stdout and sys.stderr behind a :class:`ClosedPipeGuard` for the block."""
    saved = sys.stdout, sys.stderr
    guards = [ClosedPipeGuard(saved[0]), ClosedPipeGuard(saved[1])]
    sys.stdout, sys.stderr = guards  # type: ignore[assignment]
    try:
        yield guards
    finally:
        for guard in guards:
            guard.flush()  # a pipe closed after the last write shows here, not at exit
        sys.stdout, sys.stderr = saved


def run_command(argv: Optional[List[str]]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args))


def main(argv: Optional[List[str]] = None) -> int:
    with guarded_output() as (stdout, _):
        try:
            code = run_command(argv)
        except KeyboardInterrupt:
            print("dib-matrix: interrupted", file=sys.stderr)
            code = EXIT_INTERRUPTED
    # A closed stdout cut the output short: say so. A closed stderr lost only messages:
    # the exit code still says what happened.
    return EXIT_OUTPUT_CLOSED if stdout.closed_early else code


if __name__ == "__main__":
    sys.exit(main())
