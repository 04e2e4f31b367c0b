"""Typed errors raised by dib; the CLI turns them into a one-line message and exit code."""

from __future__ import annotations

from typing import Optional, Sequence


class DibError(Exception):
    """A build cannot go on; the message is meant for the user as is."""

    exit_code = 1


class ElementError(DibError):
    """Element resolution failed: missing element, cycle, conflicting providers."""

    exit_code = 2


class ConfigError(DibError):
    """Bad command line or element file content."""

    exit_code = 2


class CommandFailed(DibError):
    """An external command exited non-zero or timed out."""

    def __init__(
        self,
        what: str,
        returncode: int,
        tail: Sequence[str] = (),
        timed_out: bool = False,
        command: Optional[Sequence[str]] = None,
    ):
        self.what = what
        self.returncode = returncode
        self.tail = list(tail)
        self.timed_out = timed_out
        self.command = list(command) if command is not None else None
        detail = "timed out" if timed_out else f"failed with exit code {returncode}"
        super().__init__(f"{what} {detail}")


class Interrupted(BaseException):
    """SIGTERM or SIGHUP arrived; unwinds like KeyboardInterrupt so every cleanup runs."""
