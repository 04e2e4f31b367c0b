"""The tools verification runs (qemu-img, sfdisk, debugfs) through ``dib.spawn.run``: an
argv list (no shell), the curated environment, the cell's deadline and bounded output.
What verification adds: a missing tool, a tool out of time and a flood of output are a
``VerifyError``, and a failure is worded in the tool's own first line."""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence

from dib import spawn

from .limits import KIB, TOOL_OUTPUT_LIMIT, Deadline, VerifyError

TOOL_PACKAGES = {"qemu-img": "qemu-utils", "sfdisk": "fdisk", "debugfs": "e2fsprogs"}
STOP_GRACE = 1.0  # a tool that reads an image has nothing to clean up


def run_tool(argv: Sequence[str], deadline: Deadline,
             limit: int = TOOL_OUTPUT_LIMIT) -> spawn.Result:
    """Run ``argv`` until the deadline, stderr apart; more than ``limit`` bytes of output fail."""
    tool = argv[0]
    if shutil.which(tool) is None:
        raise VerifyError(f"{tool} not available on this machine "
                          f"(install {TOOL_PACKAGES.get(tool, tool)})")
    if deadline.left() <= 0:
        raise VerifyError(f"{tool} did not finish in time")
    result = spawn.run(argv, timeout=deadline.left(), limit=limit, whole_output=True,
                       errors_apart=True, grace=STOP_GRACE)
    if result.timed_out:
        raise VerifyError(f"{tool} did not finish in time")
    if result.overflowed:
        raise VerifyError(f"{tool} wrote more than {limit // KIB} KiB")
    return result


def tool_error(result: spawn.Result, what: str) -> VerifyError:
    """The tool's own words: its first message line (debugfs' version banner skipped)."""
    lines = [line.strip() for line in result.errors.splitlines()
             if line.strip() and not re.match(r"^debugfs \d", line)]
    status = f" (exit {result.returncode})" if result.returncode else ""
    return VerifyError(f"{what} failed{status}: {lines[0] if lines else 'no message'}")
