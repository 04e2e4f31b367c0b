"""dib against the real diskimage-builder and Debian's mkosi: debian-minimal bookworm, cold then
warm.

Both build the same content (dib's debian-minimal is diskimage-builder's: kernel,
systemd, python3, ...) on this machine from the same mirror with the same apt
sources (``DIB_APT_SOURCES_CONF``: the release's main suite; diskimage-builder
would otherwise add a security archive of its own choosing), each with its own
empty cache for the cold build. DIB gets
its best warm case: its debootstrap tarball kept and used (``DIB_DEBOOTSTRAP_CACHE``,
``DIB_DEBIAN_USE_DEBOOTSTRAP_CACHE``) besides its shared apt cache. mkosi, a second
yardstick, builds the same packages its own way (``bench.mkosibench``), cold and with
its ``--incremental`` mode; its ratios are for reference, with no target.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bench import mkosibench
from bench.figures import Figure, megabytes, ratio
from bench.mkosibench import DibSide, Mkosi, MkosiBuilt
from bench.proc import last_lines, release_mounts, timed
from bench.steps import STAMP, cache_profile, dib_slowest, slowest_steps
from bench.workspace import REPO, Bench, BenchError, package_version, venv_tool
from dib import spawn

T = TypeVar("T")

SECTION = "dib vs DIB"
RELEASE = "bookworm"
ELEMENT = "debian-minimal"
DIB_PACKAGE = "diskimage-builder"
COLD_RATIO_TARGET = 0.4
WARM_RATIO_TARGET = 0.20
QUICK = "skipped with --quick"  # the slow reference builders
MKOSI_BUILDS = {"cold": "cold", "warm": "incremental"}  # dib's build -> mkosi's beside it


@dataclass(frozen=True)
class Built:
    timed: spawn.Result
    size: int | None  # bytes of the qcow2
    packages: frozenset[str]
    load: float = 0.0  # the machine's 1-minute load average as the build started

    @property
    def load_note(self) -> str:
        return f"load average {self.load:.1f} at start" if self.timed.ok else ""

    @property
    def seconds(self) -> float | None:
        return self.timed.seconds if self.timed.ok else None

    @property
    def failure(self) -> str:
        if self.timed.ok:
            return ""
        last = STAMP.sub(r"\2", last_lines(self.timed, 1))  # without the log's time stamp
        return f"failed (exit {self.timed.returncode}): {last[:140]}"


@dataclass
class Builder:
    """One image builder with its own cache, scratch and output paths."""

    name: str
    root: Path
    command: list[str]  # without -o/-t/elements
    env: dict[str, str]
    packages: Callable[[Path], set[str]]  # names installed in the image at that output

    @property
    def image(self) -> Path:
        return self.root / "image.qcow2"

    def cold(self) -> None:
        cache = self.root / "cache"
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir(parents=True)

    def build(self, bench: Bench, label: str, extra: tuple[str, ...] = ()) -> Built:
        tmp = self.root / "tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.image.unlink(missing_ok=True)
        env = {**self.env, "TMPDIR": str(tmp)}
        argv = [*self.command, "-o", str(self.root / "image"), "-t", "qcow2", *extra, ELEMENT]
        bench.say(f"{SECTION}: {label}")
        load = os.getloadavg()[0]  # other work on the machine slows both builders alike
        try:
            result = timed(argv, bench.log(label.replace(" ", "-")), env=env, timeout=3600)
        finally:
            release_mounts(self.root)  # a failed DIB build can leave its loop mount
            shutil.rmtree(tmp, ignore_errors=True)
        size = self.image.stat().st_size if result.ok and self.image.exists() else None
        names = self.packages(self.root / "image") if result.ok else set()
        return Built(result, size, frozenset(names), load)


def our_packages(output: Path) -> set[str]:
    manifest = output.with_name(output.name + ".packages")
    if not manifest.exists():
        return set()
    return {line.split()[0] for line in manifest.read_text().splitlines() if line.strip()}


def dib_packages(output: Path) -> set[str]:
    directory = output.with_name(output.name + ".d") / "dib-manifests"
    manifests = sorted(directory.glob("dib-manifest-dpkg-*"))
    if not manifests:
        return set()
    # Multi-arch packages are listed as name:arch there.
    return {entry["package"].split(":")[0]
            for entry in json.loads(manifests[0].read_text())["packages"]}


def sources_conf(bench: Bench) -> str:
    """Both debian-minimals read it (diskimage-builder's names): the same apt sources."""
    return f"default:deb {bench.mirror} {RELEASE} main"


def ours(bench: Bench) -> Builder:
    root = bench.path("builders", "dib")
    env = spawn.child_env({"PYTHONPATH": str(REPO), "DIB_RELEASE": RELEASE,
                           "DIB_DISTRIBUTION_MIRROR": bench.mirror,
                           "DIB_APT_SOURCES_CONF": sources_conf(bench)})
    return Builder("dib", root, [sys.executable, "-m", "dib", "--image-cache",
                                 str(root / "cache")], env, our_packages)


def diskimage_builder(bench: Bench) -> Builder:
    for tool, package in (("sudo", "sudo"), ("qemu-img", "qemu-utils"),
                          ("debootstrap", "debootstrap"), ("losetup", "mount")):
        if shutil.which(tool, path=spawn.child_env()["PATH"] + ":/usr/sbin:/sbin") is None:
            raise BenchError(f"diskimage-builder needs {tool}: apt-get install {package}")
    program = venv_tool(bench, "diskimage-builder", [DIB_PACKAGE], "disk-image-create")
    root = bench.path("builders", "diskimage-builder")
    env = spawn.child_env({
        "PATH": f"{program.parent}:{spawn.child_env()['PATH']}",
        "DIB_RELEASE": RELEASE,
        "DIB_DISTRIBUTION_MIRROR": bench.mirror,
        "DIB_APT_SOURCES_CONF": sources_conf(bench),
        "DIB_IMAGE_CACHE": str(root / "cache"),
        # Its warm best: write the debootstrap tarball, and use it when there.
        "DIB_DEBOOTSTRAP_CACHE": "1",
        "DIB_DEBIAN_USE_DEBOOTSTRAP_CACHE": "1",
    })
    version = package_version(program.parent / "python", DIB_PACKAGE)
    return Builder(f"DIB {version}", root, [str(program)], env, dib_packages)


def run(bench: Bench) -> tuple[list[Figure], dict[str, list[str]]]:
    mine = ours(bench)
    reference, why_not = _optional(bench, diskimage_builder)
    yardstick, why_no_mkosi = _optional(bench, lambda b: mkosibench.find(b, RELEASE))
    builds: dict[str, Built] = {}
    made: dict[str, MkosiBuilt] = {}
    # Interleaved, so all meet the same contention on a shared machine: the cold builds
    # together, then the warm ones.
    for phase in ("cold", "warm"):
        for label, builder in ((f"DIB {phase}", reference), (f"dib {phase}", mine)):
            if builder is not None:
                if phase == "cold":
                    builder.cold()
                builds[label] = builder.build(bench, label)
        if yardstick is not None:
            why_no_mkosi = _mkosi_build(bench, yardstick, phase, builds, made) or why_no_mkosi
    same = _same_packages(bench, mine, builds)
    if same is not None:
        builds["dib cold, DIB's packages"] = same
    dib = DibSide(_seconds(builds, "dib cold"), _seconds(builds, "dib warm"),
                  builds["dib cold"].packages if "dib cold" in builds else frozenset())
    beside = mkosibench.figures(SECTION, yardstick.name if yardstick else mkosibench.PROGRAM,
                                made.get("cold"), made.get("warm"), why_no_mkosi, dib)
    figures = _figures(builds, reference, why_not, beside)
    return figures, _profiles(bench, figures)


def _optional(bench: Bench, find: Callable[[Bench], T]) -> tuple[T | None, str]:
    """A reference builder, or why it is not measured (not with --quick: they are slow)."""
    if bench.quick:
        return None, QUICK
    try:
        return find(bench), ""
    except BenchError as err:
        return None, str(err)


def _mkosi_build(bench: Bench, mkosi: Mkosi, phase: str, builds: dict[str, Built],
                 made: dict[str, MkosiBuilt]) -> str:
    """mkosi's build beside dib's ``phase`` build, into ``made``; or why it did not run.
    It asks for the packages of dib's cold image; the incremental build needs its cold one."""
    if phase != "cold" and not ("cold" in made and made["cold"].timed.ok):
        return ""
    if phase == "cold":
        mkosi.cold()
    packages = builds["dib cold"].packages if "dib cold" in builds else frozenset()
    try:
        made[phase] = mkosi.build(bench, f"mkosi {MKOSI_BUILDS[phase]}", packages)
    except BenchError as err:
        return str(err)
    return ""


def _seconds(builds: dict[str, Built], label: str) -> float | None:
    return builds[label].seconds if label in builds else None


def _profiles(bench: Bench, figures: list[Figure]) -> dict[str, list[str]]:
    """The warm build's tree cache (always), and each build's slowest steps for the
    ratios that missed their target."""
    missed = {f.name for f in figures if f.status == "MISSED"}
    logs = []
    if "dib cold / DIB cold" in missed:
        logs += [("dib cold", "dib-cold"), ("DIB cold", "DIB-cold")]
    if "  / DIB cold" in missed:
        logs += [("dib cold, DIB's package set", "dib-cold-same-packages"),
                 ("DIB cold", "DIB-cold")]
    if "dib warm / dib cold" in missed:
        logs += [("dib warm", "dib-warm")]
    profiles = {}
    if bench.log("dib-warm").exists():
        profiles["dib warm: from the cache / still ran"] = cache_profile(bench.log("dib-warm"))
    for title, name in logs:
        steps = dib_slowest if title.startswith("DIB") else slowest_steps
        profiles[f"{title}: slowest steps (from its log)"] = steps(bench.log(name))
    return profiles


def _same_packages(bench: Bench, mine: Builder, builds: dict[str, Built]) -> Built | None:
    """dib again, cold, asked for every package DIB's image has: like for like content."""
    if bench.quick or "DIB cold" not in builds or "dib cold" not in builds:
        return None
    extra = builds["DIB cold"].packages - builds["dib cold"].packages
    if not extra or not builds["dib cold"].packages:
        return None
    mine.cold()
    return mine.build(bench, "dib cold same packages", ("-p", ",".join(sorted(extra))))


def _figures(builds: dict[str, Built], reference: Builder | None, why_not: str,
             beside: list[Figure]) -> list[Figure]:
    def seconds(label: str) -> float | None:
        return builds[label].seconds if label in builds else None

    def note(label: str, otherwise: str = "") -> str:
        if label in builds:
            return builds[label].failure or builds[label].load_note
        return why_not or otherwise

    dib_name = reference.name if reference else "DIB"
    same = "dib cold, DIB's packages"
    figures = [
        Figure(SECTION, f"{dib_name} cold", seconds("DIB cold"), "s", note=note("DIB cold")),
        Figure(SECTION, "dib cold", seconds("dib cold"), "s", note=note("dib cold")),
        Figure(SECTION, "dib cold / DIB cold", ratio(seconds("dib cold"), seconds("DIB cold")),
               "x", COLD_RATIO_TARGET),
        Figure(SECTION, f"{dib_name} warm", seconds("DIB warm"), "s", note=note("DIB warm")),
        Figure(SECTION, "dib warm", seconds("dib warm"), "s", note=note("dib warm")),
        Figure(SECTION, "dib warm / dib cold", ratio(seconds("dib warm"), seconds("dib cold")),
               "x", WARM_RATIO_TARGET),
        Figure(SECTION, "DIB warm / DIB cold", ratio(seconds("DIB warm"), seconds("DIB cold")),
               "x", note="reference"),
        *beside,
    ]
    if same in builds:
        extra = len(builds["DIB cold"].packages - builds["dib cold"].packages)
        figures += [
            Figure(SECTION, "dib cold, DIB's package set", seconds(same), "s",
                   note=builds[same].failure
                   or f"-p with the {extra} packages only DIB's image had"),
            Figure(SECTION, "  / DIB cold", ratio(seconds(same), seconds("DIB cold")), "x",
                   COLD_RATIO_TARGET, note="stricter reading: the same content"),
        ]
    cpu = {label: built.timed.cpu for label, built in builds.items() if built.timed.ok}
    for label in ("DIB cold", "dib cold", "DIB warm", "dib warm", same):
        if label in cpu:
            figures.append(Figure(SECTION, f"CPU time, {label}", cpu[label], "s",
                                  note="user + system of the whole build"))
    for a, b in (("dib cold", "DIB cold"), ("dib warm", "dib cold")):
        if a in cpu and b in cpu:
            figures.append(Figure(SECTION, f"CPU {a} / {b}", ratio(cpu[a], cpu[b]), "x",
                                  note="the same ratio in CPU time, which other work on "
                                  "the machine does not stretch"))
    for label in ("DIB cold", "dib cold", same):
        if label in builds and builds[label].timed.ok:
            figures.append(Figure(SECTION, f"peak RSS, {label}",
                                  megabytes(builds[label].timed.peak_rss), "MB",
                                  note="largest single process of the build"))
    for label in ("DIB cold", "dib cold", same):
        if label in builds and builds[label].size is not None:
            figures.append(Figure(SECTION, f"qcow2 size, {label}", megabytes(builds[label].size),
                                  "MB", note=f"{len(builds[label].packages)} packages"))
    return figures
