"""Where a build's time went, read from its log (builds are mostly external tools)."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) \| (.*)$")


def _stamped(log: Path) -> list[tuple[float, str]]:
    """(seconds since the first line, text) of every time-stamped log line."""
    lines = []
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return []
    for raw in text.splitlines():
        match = STAMP.match(raw)
        if match:
            when = dt.datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S.%f").timestamp()
            lines.append((when, match[2]))
    return [(when - lines[0][0], line) for when, line in lines] if lines else []


def slowest_steps(log: Path, top: int = 6) -> list[str]:
    """dib logs 'finished <hook> in N s' per hook, then makes the filesystem and converts it."""
    lines = _stamped(log)
    if not lines:
        return ["no time-stamped lines in " + str(log)]
    steps = [(float(m[2]), m[1]) for m in (re.match(r"finished (\S+) in ([\d.]+) s", text)
                                          for _, text in lines) if m]
    hooks_end = max((when for when, text in lines if text.startswith("finished ")), default=0)
    made = next((when for when, text in lines if text.startswith("ext4 filesystem")), None)
    if made is not None:
        steps.append((made - hooks_end, "filesystem image (mkfs.ext4 -d)"))
        steps.append((lines[-1][0] - made, "qcow2 conversion (qemu-img convert -c)"))
    steps.append((lines[-1][0], "whole build"))
    return [f"{seconds:7.1f} s  {name}" for seconds, name in sorted(steps, reverse=True)[:top]]


def dib_slowest(log: Path, top: int = 6) -> list[str]:
    """diskimage-builder prints a PROFILING table (script, seconds) after every phase."""
    lines = _stamped(log)
    steps = []
    phase = ""
    for _, text in lines:
        match = re.match(r"dib-run-parts Target: (\S+)", text)
        if match:
            phase = match[1]
            continue
        match = re.match(r"dib-run-parts (\S+)\s+([\d.]+)$", text)
        if match:
            steps.append((float(match[2]), f"{phase}/{match[1]}"))
    convert = [when for when, text in lines
               if text.startswith(("Converting image using qemu-img", "Image file "))]
    if len(convert) == 2:  # the conversion is outside its tables
        steps.append((convert[1] - convert[0], "qcow2 conversion (qemu-img convert)"))
    if lines:
        steps.append((lines[-1][0], "whole build"))
    return [f"{seconds:7.1f} s  {name}" for seconds, name in sorted(steps, reverse=True)[:top]]
