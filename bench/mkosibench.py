"""Debian's mkosi as a second yardstick next to dib: the builders section's image, built by mkosi.

The same content as dib's debian-minimal: Debian bookworm from the bench's mirror, every
package dib's cold image has (its ``.packages`` manifest) asked for by name, documentation
kept (dib keeps it), and only the release's main suite, as dib reads it. mkosi 14 adds
<release>-updates and security.debian.org to the image's apt sources before its apt run
(a newer kernel from there would sit next to the one dib's list names); a skeleton tree
(``--skeleton-tree``: files mkosi copies in, on Debian just before that apt run) empties
those two files. ``--local-mirror`` would drop them too, but mkosi 14 then lists the
mirror twice, once ``[trusted=yes]``, and apt refuses the conflicting sources.

The output is the closest mkosi 14 can make here: a GPT disk with one ext4 root converted
to qcow2 (``--format gpt_ext4 --qcow2``, uncompressed) where a loop device can be
attached, a tar otherwise. Its cold build is its first ``--incremental`` build on empty
caches (it also writes its cache image, as dib's cold build stores its tree); its
incremental build is the next one, which copies that image and re-runs the final stage.

One workaround, an mkosi option: ``--nspawn-keep-unit``. mkosi runs some steps in
``systemd-nspawn --register=no``, which still asks systemd over the system bus for a
scope unit unless told to stay in the caller's; where PID 1 is not systemd there is no
system bus and the first such step fails ("Failed to open system bus").
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bench.figures import Figure, megabytes, ratio
from bench.proc import TOOL_TIMEOUT, release_mounts, timed
from bench.steps import ANSI_ESCAPE, one_line
from bench.workspace import Bench, BenchError
from dib import spawn

PROGRAM = "mkosi"
BUILD_TIMEOUT = 3600.0
# Debian policy 5.6.1: what a package name may be; anything else never reaches apt's
# command line (a name like "--allow-unauthenticated" would be read as an option).
PACKAGE_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")
STEP = "‣"  # mkosi's prefix of its own progress lines; its errors read "‣ Error: ..."
WORKAROUND = "nspawn kept in mkosi's own unit (--nspawn-keep-unit: no system bus needed)"
TRACEBACK = "Traceback (most recent call last):"
# A tool mkosi ran failed: its complaint is above the traceback.
TOOL_FAILED = re.compile(r"subprocess\.CalledProcessError: Command '\[?'([^']{1,200})'")


@dataclass(frozen=True)
class Output:
    """An image type mkosi makes, as the table names it."""

    kind: str
    file: str  # its name in the output directory
    options: tuple[str, ...]


DISK = Output("qcow2 (GPT disk, ext4 root, uncompressed)", "image.qcow2",
              ("--format", "gpt_ext4", "--qcow2"))
TAR = Output("tar (no loop device for a disk here)", "image.tar", ("--format", "tar"))


@dataclass(frozen=True)
class MkosiBuilt:
    timed: spawn.Result
    output: Output
    size: int | None  # bytes of the output file
    packages: frozenset[str]  # installed in the image, from mkosi's manifest
    load: float = 0.0  # the machine's 1-minute load average as the build started
    leftovers: tuple[str, ...] = ()  # mounts, loop devices, processes released after it

    @property
    def seconds(self) -> float | None:
        return self.timed.seconds if self.timed.ok else None

    @property
    def failure(self) -> str:
        return "" if self.timed.ok else failure_reason(self.timed)


@dataclass(frozen=True)
class Mkosi:
    """mkosi with its own cache, workspace and output under ``root``."""

    program: str
    version: str
    root: Path
    mirror: str
    release: str
    output: Output

    @property
    def name(self) -> str:
        return f"{PROGRAM} {self.version}"

    @property
    def image(self) -> Path:
        return self.root / "output" / self.output.file

    def argv(self, packages: Iterable[str]) -> list[str]:
        return [
            self.program,
            "--distribution", "debian", "--release", self.release,
            "--mirror", self.mirror, "--skeleton-tree", str(self.root / "skeleton"),
            *self.output.options, "--bootable=no", "--with-docs=yes",
            "--nspawn-keep-unit=yes", "--incremental=yes", "--force",
            "--cache", str(self.root / "cache"),
            "--workspace-dir", str(self.root / "workspace"),
            "--output", str(self.image),
            f"--package={','.join(usable_packages(packages))}",
            "build",
        ]

    def cold(self) -> None:
        """Empty caches: the package cache and the cache image beside the output."""
        for part in ("cache", "output", "workspace"):
            shutil.rmtree(self.root / part, ignore_errors=True)

    def build(self, bench: Bench, label: str, packages: Iterable[str]) -> MkosiBuilt:
        if not usable_packages(packages):
            raise BenchError("no package list: dib's cold build wrote no usable manifest")
        for part in ("cache", "output", "workspace"):
            (self.root / part).mkdir(parents=True, exist_ok=True)
        self._main_suite_only()
        bench.say(f"mkosi: {label}")
        load = os.getloadavg()[0]
        try:
            result = timed(self.argv(packages), bench.log(label.replace(" ", "-")),
                           env=spawn.child_env(), cwd=self.root, timeout=BUILD_TIMEOUT)
        except OSError as err:  # removed since ``find``
            raise BenchError(f"{self.program} cannot be started: {err}") from err
        finally:
            leftovers = release_leftovers(self.root)
        size = self.image.stat().st_size if result.ok and self.image.exists() else None
        return MkosiBuilt(result, self.output, size, manifest_packages(self.image), load,
                          tuple(leftovers))


    def _main_suite_only(self) -> None:
        """The skeleton tree's emptied copies of the sources mkosi adds (module docstring)."""
        sources = self.root / "skeleton" / "etc" / "apt" / "sources.list.d"
        sources.mkdir(parents=True, exist_ok=True)
        for suite in (f"{self.release}-updates", f"{self.release}-security"):
            (sources / f"{suite}.list").write_text(
                "# the release's main suite only, as dib's image (dib-matrix benchmark)\n")


def find(bench: Bench, release: str) -> Mkosi:
    """Debian's mkosi on this machine (``apt-get install mkosi``), or why not, one line."""
    program = shutil.which(PROGRAM, path=spawn.child_env()["PATH"])
    if program is None:
        raise BenchError(f"{PROGRAM} is not installed: apt-get install {PROGRAM}")
    try:
        shown = spawn.run([program, "--version"], timeout=TOOL_TIMEOUT)
    except OSError as err:
        raise BenchError(f"{program} cannot be started: {err}") from err
    match = re.fullmatch(r"mkosi (\S{1,20})", shown.text.strip())
    if not shown.ok or match is None:
        raise BenchError(f"{PROGRAM} --version: {one_line(shown.text) or 'no answer'}")
    output = DISK if loop_device_free() else TAR
    return Mkosi(program, match[1], bench.path("builders", PROGRAM), bench.mirror, release,
                 output)


def loop_device_free() -> bool:
    """mkosi 14 makes a disk on a loop device: one must be free to attach."""
    if not Path("/dev/loop-control").exists():
        return False
    try:
        return spawn.run(["losetup", "--find"], timeout=TOOL_TIMEOUT).ok
    except OSError:  # no losetup
        return False


def usable_packages(names: Iterable[str]) -> list[str]:
    """Sorted, de-duplicated, and only what Debian calls a package name."""
    return sorted({name for name in names if PACKAGE_NAME.fullmatch(name)})


def manifest_packages(image: Path) -> frozenset[str]:
    """Package names from mkosi's JSON manifest beside ``image``; empty when unreadable."""
    try:
        data = json.loads(image.with_name(image.name + ".manifest").read_text())
    except (OSError, ValueError):
        return frozenset()
    entries = data.get("packages") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        return frozenset()
    return frozenset(entry["name"] for entry in entries
                     if isinstance(entry, dict) and isinstance(entry.get("name"), str))


def failure_reason(result: spawn.Result) -> str:
    how = (f"timed out after {result.seconds:.0f} s" if result.timed_out
           else f"failed (exit {result.returncode})")
    return f"{how}: {meaningful_line(result.text)}"


def meaningful_line(output: str) -> str:
    """mkosi's last error ("Error: ..."), else the last line that is not one of its progress
    steps (a tool's complaint; below a traceback, its exception), else its last step: one
    printable, bounded line."""
    lines = [" ".join(ANSI_ESCAPE.sub("", raw).split()) for raw in output.splitlines()]
    errors = [line for line in lines if line.startswith(f"{STEP} Error:")]
    if errors:
        return one_line(errors[-1].removeprefix(STEP))
    said = [line for line in lines if line and not line.startswith(STEP)]
    if TRACEBACK in said:
        return _traceback_cause(said)
    if said:
        return one_line(said[-1])
    steps = [line for line in lines if line]  # killed mid-step: the step it was in
    return one_line(f"during: {steps[-1].removeprefix(STEP)}") if steps else "no output"


def _traceback_cause(said: list[str]) -> str:
    """mkosi's own crash names its exception; a tool it ran, the tool's last complaint."""
    start = len(said) - 1 - said[::-1].index(TRACEBACK)
    exception = said[-1]
    failed = TOOL_FAILED.match(exception)
    if failed and start > 0:
        return one_line(f"{Path(failed[1]).name}: {said[start - 1]}")
    return one_line(exception)


def release_leftovers(root: Path) -> list[str]:
    """Whatever a build under ``root`` left: mounts, loop devices, then processes still
    naming a path below it (an nspawn whose mkosi was killed)."""
    released = release_mounts(root)
    for pid, command in stray_processes(root):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue
        released.append(f"process {pid} ({command})")
    return released


def stray_processes(root: Path) -> list[tuple[int, str]]:
    """(pid, program) of every other process whose command line names a path below ``root``."""
    needle = (str(root.resolve()) + "/").encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # it ended meanwhile
            continue
        if any(needle in part for part in argv):
            found.append((int(entry.name), Path(argv[0].decode(errors="replace")).name))
    return sorted(found)


@dataclass(frozen=True)
class DibSide:
    """What mkosi is measured against: dib's cold and warm seconds and its cold image's
    packages."""

    cold: float | None
    warm: float | None
    packages: frozenset[str]


def figures(section: str, name: str, cold: MkosiBuilt | None, incremental: MkosiBuilt | None,
            why_not: str, dib: DibSide) -> list[Figure]:
    """mkosi's rows; one row ``name`` with the reason when it did not build."""
    if cold is None or not cold.timed.ok:
        return [Figure(section, name, None, "s", note=cold.failure if cold else why_not)]
    again = incremental.seconds if incremental else None
    return [
        Figure(section, f"{name} cold", cold.seconds, "s", note=_cold_note(cold, dib.packages)),
        Figure(section, f"{name} incremental", again, "s", note=_incremental_note(incremental)),
        Figure(section, f"dib cold / {PROGRAM} cold", ratio(dib.cold, cold.seconds), "x",
               note="reference"),
        Figure(section, f"dib warm / {PROGRAM} incremental", ratio(dib.warm, again), "x",
               note="reference"),
    ]


def _cold_note(cold: MkosiBuilt, dib_packages: frozenset[str]) -> str:
    size = megabytes(cold.size)
    made = f"{cold.output.kind}, {size:.0f} MB" if size is not None else cold.output.kind
    beyond = len(cold.packages - dib_packages)
    return (f"{made}, {len(cold.packages)} packages ({beyond} not in dib's image); first "
            f"--incremental build on empty caches; {WORKAROUND}; load average {cold.load:.1f} "
            f"at start{_leftover_note(cold)}")


def _incremental_note(built: MkosiBuilt | None) -> str:
    if built is None:
        return "not run: its cold build made no cache"
    if not built.timed.ok:
        return built.failure
    return (f"its cache image copied, the final stage re-run; load average {built.load:.1f} "
            f"at start{_leftover_note(built)}")


def _leftover_note(built: MkosiBuilt) -> str:
    return f"; released after it: {', '.join(built.leftovers)}" if built.leftovers else ""
