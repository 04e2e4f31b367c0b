"""Run a command, timed, with the peak memory of its process tree; leave nothing behind."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from dib import spawn

INTERRUPT_GRACE = 60.0  # a builder interrupted mid-build unmounts before it exits
PASSED_ENV = ("PATH", "HOME", "LANG", "http_proxy", "https_proxy", "no_proxy", "DOCKER_HOST")


@dataclass(frozen=True)
class Timed:
    argv: tuple[str, ...]
    seconds: float
    returncode: int  # negative: killed by that signal
    peak_rss: int  # bytes: the largest single process of the tree (wait4's ru_maxrss)
    log: Path
    cpu: float = 0.0  # user + system seconds of the whole tree (wait4): load-independent

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def tail(self, lines: int = 5) -> str:
        with suppress(OSError):
            text = self.log.read_text(errors="replace").strip().splitlines()
            return " | ".join(line.strip() for line in text[-lines:])
        return ""


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {key: os.environ[key] for key in PASSED_ENV if key in os.environ}
    env.setdefault("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    env.update({"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"})
    env.update(extra or {})
    return env


def timed(argv: Sequence[str], log: Path, *, env: Mapping[str, str],
          cwd: Path | None = None, timeout: float = 3600) -> Timed:
    """Run ``argv`` (output to ``log``); Ctrl-C is passed on and the child reaped first."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"$ {' '.join(argv)}\n".encode())
        out.flush()
        start = time.monotonic()
        process = spawn.spawn(argv, stdout=out, env=env, cwd=cwd)
    # A bare kill: this thread reaps the child itself (wait4, for its rusage).
    watchdog = threading.Timer(timeout, _kill_group, (process.pid,))
    watchdog.start()
    try:
        status, usage = _wait4(process.pid)
    except BaseException:
        spawn.stop(process, INTERRUPT_GRACE, first=signal.SIGINT)  # builders clean up on ^C
        raise
    finally:
        watchdog.cancel()
    spawn.forget(process)
    seconds = time.monotonic() - start
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4, not Popen
    # ru_maxrss is in KiB on Linux.
    return Timed(tuple(argv), seconds, process.returncode, usage.ru_maxrss * 1024, log,
                 usage.ru_utime + usage.ru_stime)


def _wait4(pid: int) -> tuple[int, resource.struct_rusage]:
    while True:
        try:
            _, status, usage = os.wait4(pid, 0)
            return status, usage
        except InterruptedError:
            continue


def _kill_group(pid: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def release_mounts(under: Path) -> list[str]:
    """Unmount what a failed builder left mounted below ``under``; detach its loop devices."""
    root = str(under.resolve())
    released = []
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        points = [line.split()[1].replace("\\040", " ") for line in mounts]
    for point in sorted((p for p in points if p.startswith(root + "/")), reverse=True):
        if subprocess.run(["umount", "--lazy", point], capture_output=True).returncode == 0:
            released.append(point)
    listing = subprocess.run(["losetup", "--list", "--json"], capture_output=True, text=True)
    if listing.returncode == 0 and listing.stdout.strip():
        for device in json.loads(listing.stdout).get("loopdevices", []):
            if str(device.get("back-file", "")).startswith(root + "/"):
                subprocess.run(["losetup", "-d", device["name"]], capture_output=True)
                released.append(device["name"])
    return released
