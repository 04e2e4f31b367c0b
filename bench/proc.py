"""Run a command for the benchmark (``dib.spawn.run``: timed, with the peak memory and CPU
time of its process tree) with its output in a log file; leave nothing behind."""

from __future__ import annotations

import json
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

from dib import spawn

INTERRUPT_GRACE = 60.0  # a builder interrupted mid-build unmounts before it exits
TOOL_TIMEOUT = 60.0


def timed(argv: Sequence[str], log: Path, *, env: Mapping[str, str],
          cwd: Path | None = None, timeout: float = 3600) -> spawn.Result:
    """Run ``argv`` (output appended to ``log``); a timeout or Ctrl-C reaches it as Ctrl-C
    would (builders clean up on SIGINT), SIGKILL after INTERRUPT_GRACE."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return spawn.run(argv, timeout=timeout, log=out, env=env, cwd=cwd,
                         grace=INTERRUPT_GRACE, first=signal.SIGINT)


def release_mounts(under: Path) -> list[str]:
    """Unmount what a failed builder left mounted below ``under``; detach its loop devices."""
    root = str(under.resolve())
    released = []
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        points = [line.split()[1].replace("\\040", " ") for line in mounts]
    for point in sorted((p for p in points if p.startswith(root + "/")), reverse=True):
        if spawn.run(["umount", "--lazy", point], timeout=TOOL_TIMEOUT).ok:
            released.append(point)
    listing = spawn.run(["losetup", "--list", "--json"], timeout=TOOL_TIMEOUT,
                        whole_output=True, errors_apart=True)
    if listing.ok and listing.text.strip():
        for device in json.loads(listing.text).get("loopdevices", []):
            if str(device.get("back-file", "")).startswith(root + "/"):
                spawn.run(["losetup", "-d", device["name"]], timeout=TOOL_TIMEOUT)
                released.append(device["name"])
    return released


def last_lines(result: spawn.Result, count: int = 5) -> str:
    """The end of a command's output on one line, for a failure message."""
    return " | ".join(line.strip() for line in result.tail(count))
