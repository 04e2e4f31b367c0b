"""Foreign architecture: the same cold ``debian-minbase`` tar build by dib for amd64 and
for arm64 (every program of the arm64 build runs under qemu-user through the kernel's
binfmt handler), and what emulation costs as a ratio.

No target: the figure says what a matrix cell's timeout must allow on this machine.
"""

from __future__ import annotations

import os
import shutil
import sys

from bench.figures import Figure, ratio
from bench.proc import release_mounts, timed
from bench.steps import slowest_steps
from bench.workspace import REPO, Bench, BenchError
from dib import arch, spawn

SECTION = "arm64"
RELEASE = "bookworm"
ELEMENT = "debian-minbase"


def run(bench: Bench) -> tuple[list[Figure], dict[str, list[str]]]:
    if bench.quick:
        raise BenchError("skipped with --quick (two cold debootstraps, one emulated)")
    if not arch.can_run("arm64"):
        raise BenchError("no usable binfmt handler for arm64 here (./quickstart setup "
                         "registers qemu-user-static's)")
    seconds: dict[str, float | None] = {}
    notes: dict[str, str] = {}
    profiles: dict[str, list[str]] = {}
    for target in ("amd64", "arm64"):
        root = bench.path("foreign", target)
        shutil.rmtree(root, ignore_errors=True)  # cold: an empty image cache
        (root / "tmp").mkdir(parents=True)
        env = spawn.child_env({"PYTHONPATH": str(REPO), "DIB_RELEASE": RELEASE,
                               "DIB_DISTRIBUTION_MIRROR": bench.mirror,
                               "TMPDIR": str(root / "tmp")})
        argv = [sys.executable, "-m", "dib", "--image-cache", str(root / "cache"), "-a", target,
                "-o", str(root / "image"), "-t", "tar", ELEMENT]
        bench.say(f"{SECTION}: {ELEMENT} tar, cold, for {target}")
        load = os.getloadavg()[0]
        log = bench.log(f"foreign-{target}")
        try:
            result = timed(argv, log, env=env, timeout=3600)
        finally:
            release_mounts(root)
            shutil.rmtree(root, ignore_errors=True)
        seconds[target] = result.seconds if result.ok else None
        notes[target] = (f"load average {load:.1f} at start" if result.ok
                         else f"failed (exit {result.returncode}), see {log}")
        profiles[f"{target}: slowest steps"] = slowest_steps(log)
    return [
        Figure(SECTION, f"{ELEMENT} tar cold, amd64", seconds["amd64"], "s",
               note=notes["amd64"]),
        Figure(SECTION, f"{ELEMENT} tar cold, arm64 (qemu-user)", seconds["arm64"], "s",
               note=notes["arm64"]),
        Figure(SECTION, "arm64 / amd64", ratio(seconds["arm64"], seconds["amd64"]), "x",
               note="what emulation costs a build here"),
    ], profiles
