"""The bounded tool runner: qemu-img, sfdisk and debugfs run with an argv list (no shell),
a curated environment, the cell's deadline and capped output; failures are worded in
the tool's own first line."""

from __future__ import annotations

import os
import re
import selectors
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from dib import spawn

from .limits import KIB, TOOL_ERROR_LIMIT, TOOL_OUTPUT_LIMIT, Deadline, VerifyError

TOOL_PACKAGES = {"qemu-img": "qemu-utils", "sfdisk": "fdisk", "debugfs": "e2fsprogs"}


@dataclass(frozen=True)
class ToolResult:
    returncode: int
    stdout: bytes
    stderr: str


def run_tool(argv: Sequence[str], deadline: Deadline, limit: int = TOOL_OUTPUT_LIMIT) -> ToolResult:
    """Run ``argv`` (no shell) until the deadline; more than ``limit`` bytes of output fail."""
    if shutil.which(argv[0]) is None:
        package = TOOL_PACKAGES.get(argv[0], argv[0])
        raise VerifyError(f"{argv[0]} not available on this machine (install {package})")
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LC_ALL": "C"}
    proc = spawn.spawn(argv, env=env, stderr=subprocess.PIPE)
    try:
        out, err = _collect(proc, argv[0], deadline, limit)
        returncode = proc.wait(timeout=max(deadline.left(), 1.0))
    except (VerifyError, subprocess.TimeoutExpired) as problem:
        spawn.stop(proc, grace=1.0)
        if isinstance(problem, VerifyError):
            raise
        raise VerifyError(f"{argv[0]} did not finish in time") from None
    finally:
        spawn.forget(proc)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    return ToolResult(returncode, out, err.decode("utf-8", "replace"))


def _collect(
    proc: subprocess.Popen[bytes], tool: str, deadline: Deadline, limit: int
) -> tuple[bytes, bytes]:
    assert proc.stdout is not None and proc.stderr is not None
    buffers = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    caps = {proc.stdout.fileno(): limit, proc.stderr.fileno(): TOOL_ERROR_LIMIT}
    with selectors.DefaultSelector() as selector:
        for fd in buffers:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            left = deadline.left()
            if left <= 0:
                raise VerifyError(f"{tool} did not finish in time")
            for key, _ in selector.select(min(left, 5.0)):
                chunk = os.read(key.fd, 64 * KIB)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                room = caps[key.fd] - len(buffers[key.fd])
                if key.fd == proc.stdout.fileno() and len(chunk) > room:
                    raise VerifyError(f"{tool} wrote more than {limit // KIB} KiB")
                buffers[key.fd] += chunk[: max(room, 0)]
    return bytes(buffers[proc.stdout.fileno()]), bytes(buffers[proc.stderr.fileno()])


def tool_error(result: ToolResult, what: str) -> VerifyError:
    """The tool's own words: its first message line (debugfs' version banner skipped)."""
    lines = [line.strip() for line in result.stderr.splitlines()
             if line.strip() and not re.match(r"^debugfs \d", line)]
    status = f" (exit {result.returncode})" if result.returncode else ""
    return VerifyError(f"{what} failed{status}: {lines[0] if lines else 'no message'}")
