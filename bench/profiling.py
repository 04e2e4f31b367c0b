"""Say what costs the time where a target is missed.

``py-spy`` samples a whole process (every thread, while waiting too), which is
what an orchestrator that mostly waits on its engine needs; cProfile would see
only the main thread. Its raw output is one line per distinct stack:
``outer (file.py:1);inner (file.py:9) 42``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

SAMPLE_RATE = 100  # per second and thread
# Frames of these trees are named in a summary (our code and the engine client).
OURS = ("matrix/", "reports/", "dib/", "docker/")
# A thread waiting is not cost: watchdog timers, the scheduler's loop waiting
# for a cell to finish, pool workers waiting for a cell to run.
WAITING = ("Timer.run", "wait (concurrent/futures/_base.py")
FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^():]+)(?::\d+)?\)$")


def record_argv(py_spy: Path, output: Path, argv: list[str]) -> list[str]:
    return [str(py_spy), "record", "--idle", "--threads", "--nonblocking", "--format", "raw",
            "--rate", str(SAMPLE_RATE), "--output", str(output), "--", *argv]


def _frames(stack: str) -> list[tuple[str, str]]:
    frames = []
    for raw in stack.split(";"):
        match = FRAME.match(raw.strip())
        if match:
            frames.append((match["func"], match["file"]))
    return frames


def _short(file: str) -> str:
    for tree in OURS:
        index = file.rfind("/" + tree)
        if index >= 0:
            return file[index + 1:]
        if file.startswith(tree):
            return file
    return file


def _idle(stack: str) -> bool:
    if any(marker in stack for marker in WAITING):
        return True
    return "_worker (" in stack and not any(tree in stack for tree in OURS[:3])


def busy_seconds(lines: Iterable[str], rate: int = SAMPLE_RATE) -> Counter[str]:
    """Thread-seconds each of our functions was on a busy stack (inclusive)."""
    seconds: Counter[str] = Counter()
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        if _idle(stack):
            continue
        # Decorator wrappers (docker's `<locals>.inner`) only repeat their caller.
        named = {f"{func} ({_short(file)})" for func, file in _frames(stack)
                 if _short(file).startswith(OURS) and "<locals>" not in func}
        for name in named:
            seconds[name] += int(count) / rate
    return seconds


def summarise(raw: Path, top: int = 10) -> list[str]:
    try:
        lines = raw.read_text(errors="replace").splitlines()
    except OSError as err:
        return [f"no profile: {err}"]
    seconds = busy_seconds(lines)
    if not seconds:
        return ["no busy samples of dib-matrix code"]
    return [f"{value:7.2f} s  {name}" for name, value in seconds.most_common(top)]
