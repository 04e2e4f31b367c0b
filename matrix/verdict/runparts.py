"""The hook an upstream diskimage-builder run died in, from its dib-run-parts trail.

Upstream diskimage-builder writes no failure record, but its ``dib-run-parts``
logs ``Running <dir>/<phase>.d/<hook>`` before each hook and ``<hook> completed``
after it. A hook that started and never completed is the one that failed; the
most error-shaped line it printed is its error line. The result has the shape of
dib's own failure record (``dib.failure``), so the verdict stage treats both alike.
"""

from __future__ import annotations

import collections
import re
from typing import Any

from dib.failure import pick_error_line

RUNNING = re.compile(
    r"^dib-run-parts Running (?P<path>\S*/(?P<phase>[a-z-]+\.d)/(?P<hook>[^/\s]+))$")
COMPLETED = re.compile(r"^dib-run-parts (?P<hook>\S+) completed$")
KEPT_LINES = 60  # of a hook's own output, for its error line


class RunPartsTrail:
    """Fed every log line (dib's prefix removed), in order."""

    def __init__(self) -> None:
        self.running: re.Match[str] | None = None
        self.output: collections.deque[str] = collections.deque(maxlen=KEPT_LINES)

    def feed(self, message: str) -> None:
        started = RUNNING.match(message)
        if started:
            self.running = started
            self.output.clear()
            return
        if self.running is None:
            return
        done = COMPLETED.match(message)
        if done and done.group("hook") == self.running.group("hook"):
            self.running = None
        elif not message.startswith("dib-run-parts ") and not message.startswith("+"):
            self.output.append(message)  # the hook's own lines, not bash's trace

    def record(self) -> dict[str, Any] | None:
        """The failure record of the hook that never completed, or None."""
        if self.running is None:
            return None
        return {"kind": "hook", "phase": self.running.group("phase"),
                "hook": self.running.group("hook"), "element": None, "status": "non-zero",
                "error": pick_error_line(self.output), "command": self.running.group("path"),
                "message": f"{self.running.group('phase')}/{self.running.group('hook')} did not "
                           "complete (diskimage-builder)"}
