"""dib's commands: ``dib.spawn.run`` with each output line in dib's log under a tag, and
a failure raised as ``CommandFailed`` (its tail is what dib's failure record quotes)."""

from __future__ import annotations

import logging
import os
import time
from typing import Mapping, Optional, Sequence

from dib import spawn
from dib.errors import CommandFailed

LOG = logging.getLogger("dib")
TAIL_LINES = 40


def run(
    cmd: Sequence[str],
    *,
    tag: str,
    env: Optional[Mapping[str, str]] = None,
    cwd: Optional[str] = None,
    timeout: Optional[float] = None,
    check: bool = True,
) -> int:
    """Run ``cmd``, each output line logged as it comes, prefixed with ``tag``; its exit
    status. CommandFailed when it timed out, or (``check``) exited non-zero."""
    result = spawn.run(cmd, timeout=timeout, env=_dib_env(env), cwd=cwd,
                       on_line=lambda line: LOG.info("%s | %s", tag, line))
    if result.timed_out or (check and result.returncode != 0):
        raise CommandFailed(tag, result.returncode, result.tail(TAIL_LINES),
                            timed_out=result.timed_out, command=cmd)
    return result.returncode


def capture(
    cmd: Sequence[str], *, timeout: float = 60, env: Optional[Mapping[str, str]] = None
) -> str:
    """Run a short command and return its stdout; raise CommandFailed with stderr's tail."""
    result = spawn.run(cmd, timeout=timeout, env=_dib_env(env), errors_apart=True)
    if result.timed_out:
        raise CommandFailed(cmd[0], -1, timed_out=True, command=cmd)
    if not result.ok:
        lines = result.errors.splitlines()[-TAIL_LINES:]
        raise CommandFailed(" ".join(cmd[:2]), result.returncode, lines, command=cmd)
    return result.text


def _dib_env(env: Optional[Mapping[str, str]]) -> Mapping[str, str]:
    """dib's own environment unless the caller gives one: dib already runs in the
    environment its caller curated (a hook's, or the user's for ``disk-image-create``),
    and the tools it starts (debootstrap: DEBOOTSTRAP_DIR, proxies) read it."""
    return os.environ if env is None else env


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.monotonic()

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.start
