"""Verify a build cell's images on the orchestrating machine: green means verified.

Runs after a build container exited 0 and before its cell may say ``success``.
Every check reads the image without extracting it and without a loop device:

- tar (tar, tgz, tar.gz), one pass with :mod:`tarfile`: ``etc/os-release``
  (through its usual symlink to ``usr/lib/os-release``, a few KiB at most) must
  name the target's distribution and release; the dpkg database
  (``var/lib/dpkg/status``) must hold the packages of ``<target>.packages``.
- disk images (raw, qcow2 and the other qemu-img formats): ``qemu-img check``
  (``qemu-img info`` for raw); the partition table (``sfdisk --json`` on the
  image's first and last MiB) and each filesystem's label (read from its
  superblock) against the layout dib planned (``<target>.layout.json`` when dib
  wrote one, else the target's layout); os-release and packages from the root
  filesystem through ``debugfs`` (a qcow2's root filesystem is first copied into a
  sparse raw file in a temporary directory of the run directory).

Tools run with argv lists, a deadline and bounded output. A failed check's
detail reads on its own (``image is bookworm, target wants forky``); the first
failed check of a cell is :func:`summary`'s one line ``verify: <name>: <detail>``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import posixpath
import re
import selectors
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from dib.blockdevice.layout import ROOT_LABEL, LayoutError, parse_layout_text
from dib.blockdevice.plan import layout_source, make_plan
from dib.elements import elements_path, index_elements, resolve
from dib.errors import DibError
from dib.outputs import QEMU_FORMATS, TAR_TYPES
from matrix.results import ImageCheck
from matrix.targets import Target

LOG = logging.getLogger(__name__)

KIB = 1 << 10
MIB = 1 << 20
SECTOR = 512
OS_RELEASE_LIMIT = 16 * KIB  # bytes read of an os-release file
STATUS_LIMIT = 64 * MIB  # bytes read of dpkg's status file
MANIFEST_LIMIT = 16 * MIB
LAYOUT_LIMIT = 1 * MIB
TOOL_OUTPUT_LIMIT = 1 * MIB  # stdout of a tool, unless a call says otherwise
TOOL_ERROR_LIMIT = 64 * KIB
SHOWN = 3  # names shown in a mismatch detail
SYMLINK_HOPS = 4
DISK_FORMATS = {"raw": "raw", **QEMU_FORMATS}
TOOL_PACKAGES = {"qemu-img": "qemu-utils", "sfdisk": "fdisk", "debugfs": "e2fsprogs"}
# Base elements (diskimage-builder's names too) -> os-release ID.
DISTRO_IDS = {
    "debian-minimal": "debian",
    "debian": "debian",
    "ubuntu-minimal": "ubuntu",
    "ubuntu": "ubuntu",
    "fedora-minimal": "fedora",
    "fedora": "fedora",
    "centos-minimal": "centos",
    "centos": "centos",
    "opensuse-minimal": "opensuse-leap",
    "opensuse": "opensuse-leap",
    "rhel": "rhel",
    "rocky-container": "rocky",
}
OPERATING_SYSTEM = "operating-system"
# Debian suites named by role, not codename: an unstable image says "<testing>/sid".
UNSTABLE = ("sid", "unstable")
ROLE_SUITES = ("stable", "oldstable", "oldoldstable", "testing")
X86 = ("amd64", "i386", "x86_64")
RELEASE_DEFAULT = re.compile(r"DIB_RELEASE=\$\{DIB_RELEASE:-([A-Za-z0-9._-]+)\}")
EXT_MAGIC = 0xEF53


# ---- what the target wants ----------------------------------------------------------


@dataclass(frozen=True)
class PlannedPartition:
    """One planned partition (for a bare filesystem image: the whole disk)."""

    name: str
    filesystem: str | None = None  # ext4, vfat, ... or None (e.g. a BIOS boot partition)
    label: str | None = None  # the filesystem label
    mountpoint: str | None = None
    type: str | None = None  # MBR code ("83") or GPT type GUID
    start: int | None = None  # bytes, when dib recorded them
    size: int | None = None


@dataclass(frozen=True)
class PlannedLayout:
    table: str | None  # "mbr", "gpt", or None: a bare filesystem without a table
    partitions: tuple[PlannedPartition, ...]
    origin: str  # where the plan came from, for details

    @property
    def root(self) -> PlannedPartition | None:
        return next((p for p in self.partitions if p.mountpoint == "/"), None)


BARE_EXT4 = PlannedLayout(
    None, (PlannedPartition("root", "ext4", ROOT_LABEL, "/"),), "bare ext4 filesystem"
)


@dataclass(frozen=True)
class Expectation:
    distro_id: str | None  # os-release ID; None: not checked
    release: str | None  # DIB_RELEASE; None: not checked
    layout: PlannedLayout | None = None  # None: the target makes no disk image
    layout_problem: str | None = None  # why the layout could not be told


def expectation_for(
    target: Target, env: Mapping[str, str], elements_dirs: Sequence[Path] | None = None
) -> Expectation:
    """What ``target``'s images must be, for a cell with ``env`` (its DIB_* variables).

    ``elements_dirs``: where to find elements (default: ELEMENTS_PATH, then the bundled
    tree); an element that cannot be found leaves the distribution unchecked.
    """
    merged = {**target.env_dict, **env}
    closure, base = _closure(target, merged, elements_dirs)
    distro = DISTRO_IDS.get(base.name) if base else None
    release = merged.get("DIB_RELEASE") or (_default_release(base.path) if base else None)
    layout, problem = _planned_for_target(target, merged, closure)
    return Expectation(distro, release, layout, problem)


@dataclass(frozen=True)
class _Element:
    name: str
    path: Path


def _closure(
    target: Target, env: Mapping[str, str], elements_dirs: Sequence[Path] | None
) -> tuple[dict[str, _Element], _Element | None]:
    """Every element of the build (dib adds ``base``) and the operating-system one."""
    dirs = list(elements_dirs) if elements_dirs is not None else elements_path(env)
    index = index_elements(dirs)
    try:
        resolution = resolve(["base", *target.elements], index)
    except DibError as err:
        LOG.info("verify: elements of %s not resolved here (%s)", target.name, err)
        found = {n: _Element(n, index[n].path) for n in target.elements if n in index}
        base = next((found[n] for n in target.elements if n in DISTRO_IDS and n in found), None)
        return found, base
    closure = {e.name: _Element(e.name, e.path) for e in resolution.elements}
    base_name = resolution.provided.get(OPERATING_SYSTEM)
    return closure, closure.get(base_name) if base_name else None


def _default_release(element: Path) -> str | None:
    """``DIB_RELEASE=${DIB_RELEASE:-bookworm}`` in the base element's environment.d."""
    directory = element / "environment.d"
    for script in sorted(directory.glob("*")) if directory.is_dir() else []:
        found = RELEASE_DEFAULT.search(_read_text(script, 64 * KIB))
        if found:
            return found.group(1)
    return None


def _planned_for_target(
    target: Target, env: Mapping[str, str], closure: Mapping[str, _Element]
) -> tuple[PlannedLayout | None, str | None]:
    if not [t for t in target.outputs if t not in TAR_TYPES]:
        return None, None
    vm = closure.get("vm")
    if vm is None:
        return BARE_EXT4, None
    kind = next((n[len("block-device-"):] for n in closure if n.startswith("block-device-")),
                None) or env.get("DIB_BLOCK_DEVICE") or ("mbr" if target.arch in X86 else "efi")
    try:
        text, origin = layout_source({**env, "DIB_BLOCK_DEVICE": kind}, vm.path)
        plan = make_plan(parse_layout_text(text, origin), text, origin)
    except (DibError, LayoutError, OSError) as err:
        return None, f"the target's block-device layout cannot be read here: {err}"
    parts = tuple(
        PlannedPartition(
            p.name,
            p.filesystem.type if p.filesystem else None,
            plan.identities[p.name].label if p.name in plan.identities else None,
            p.mount_point,
            p.type_code,
        )
        for p in plan.layout.partitions
    )
    return PlannedLayout(plan.layout.label, parts, f"the target's {origin} layout"), None


# ---- verification --------------------------------------------------------------------


@dataclass
class Deadline:
    end: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    def left(self) -> float:
        return self.end - time.monotonic()


class VerifyError(Exception):
    """A check could not be made (tool missing, timeout, unreadable image): it fails."""


@dataclass(frozen=True)
class Found:
    """One check's outcome before it is stamped with its image and time."""

    name: str
    ok: bool
    detail: str


# Filled in when ImageCheck has a ``seconds`` field (each check's own time).
_TIMED = "seconds" in {f.name for f in dataclasses.fields(ImageCheck)}


def _image_check(found: Found, image: str, seconds: float) -> ImageCheck:
    extra: dict[str, Any] = {"seconds": round(seconds, 3)} if _TIMED else {}
    return ImageCheck(found.name, found.ok, found.detail, image, **extra)


def verify_images(
    images: Sequence[Path], expect: Expectation, run_dir: Path, timeout: float
) -> list[ImageCheck]:
    """Check every image of one build cell; never raises for a bad or unreadable image."""
    deadline = Deadline.after(timeout)
    checks: list[ImageCheck] = []
    work = _work_dir(run_dir)
    try:
        for image in images:
            checks += _verify_one(image, expect, run_dir, deadline, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return checks


def summary(checks: Sequence[ImageCheck]) -> str | None:
    """``verify: <name>: <detail>`` of the first failed check, on one line; None if all pass."""
    failed = next((c for c in checks if not c.ok), None)
    if failed is None:
        return None
    return " ".join(f"verify: {failed.name}: {failed.detail}".split())


def _work_dir(run_dir: Path) -> Path:
    base = run_dir if run_dir.is_dir() else Path(tempfile.gettempdir())
    return Path(tempfile.mkdtemp(prefix=".verify-", dir=base))


def image_type(path: Path) -> str | None:
    """The dib output type of an image file from its name (``x.tar.gz`` -> ``tar.gz``)."""
    name = path.name
    for kind in sorted((*TAR_TYPES, *DISK_FORMATS), key=len, reverse=True):
        if name.endswith("." + kind):
            return kind
    return None


def _stem(path: Path, kind: str) -> Path:
    return path.with_name(path.name[: -len(kind) - 1])


def _relative(path: Path, run_dir: Path) -> str:
    try:
        return str(path.resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return str(path)


def _verify_one(
    image: Path, expect: Expectation, run_dir: Path, deadline: Deadline, work: Path
) -> list[ImageCheck]:
    relative = _relative(image, run_dir)
    kind = image_type(image)
    timed: list[ImageCheck] = []
    if kind is None or not image.is_file():
        what = "no such file" if not image.is_file() else "unknown image type"
        return [ImageCheck("image", False, f"image: {what}: {image.name}", relative)]
    steps = _tar_steps(image, kind, expect) if kind in TAR_TYPES else _disk_steps(
        image, kind, expect, work
    )
    for step in steps:
        started = time.monotonic()
        found = _run_step(step, deadline)
        seconds = time.monotonic() - started
        LOG.info("verify %s: %s %s in %.3f s: %s", relative, found.name,
                 "ok" if found.ok else "FAILED", seconds, found.detail)
        timed.append(_image_check(found, relative, seconds))
    return timed


Step = tuple[str, Callable[[Deadline], Found]]


def _run_step(step: Step, deadline: Deadline) -> Found:
    name, check = step
    if deadline.left() <= 0:
        return Found(name, False, f"{name}: not checked, the verification ran out of time")
    try:
        return check(deadline)
    except VerifyError as err:
        return Found(name, False, f"{name}: {err}")
    except (OSError, tarfile.TarError, EOFError, ValueError, KeyError, TypeError) as err:
        return Found(name, False, f"{name}: cannot read the image: {err}")
    except Exception as err:  # a bug here must not take the run down: the check fails
        LOG.exception("verify: %s failed unexpectedly", name)
        return Found(name, False, f"{name}: internal error of the check: {err!r}")


# ---- tar images ----------------------------------------------------------------------


@dataclass
class TarFacts:
    os_release: dict[str, str] | None = None
    os_release_problem: str = "no etc/os-release or usr/lib/os-release in the archive"
    packages: dict[tuple[str, str], str] | None = None  # (name, arch) -> version
    rpm: bool = False


def _tar_steps(image: Path, kind: str, expect: Expectation) -> list[Step]:
    facts: dict[str, TarFacts] = {}

    def read(deadline: Deadline) -> TarFacts:
        if "facts" not in facts:
            facts["facts"] = read_tar(image, deadline)
        return facts["facts"]

    return [
        ("os-release", lambda d: check_os_release(read(d).os_release,
                                                  read(d).os_release_problem, expect)),
        ("packages", lambda d: check_packages(read(d).packages, read(d).rpm,
                                              manifest_path(image, kind))),
    ]


def manifest_path(image: Path, kind: str) -> Path:
    return _stem(image, kind).with_name(_stem(image, kind).name + ".packages")


def _normal(name: str) -> str:
    return posixpath.normpath("/" + name).lstrip("/")


def _link_target(member: tarfile.TarInfo) -> str:
    """Where a symlink member points, as an archive path."""
    if member.linkname.startswith("/"):
        return _normal(member.linkname)
    return _normal(posixpath.join(posixpath.dirname(_normal(member.name)), member.linkname))


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int) -> bytes:
    handle = tar.extractfile(member)
    if handle is None:
        return b""
    with handle:
        return handle.read(limit)


class _Scan:
    """One pass over an archive, keeping what the checks need and nothing else."""

    def __init__(self, wanted: set[str]):
        self.wanted = wanted
        self.texts: dict[str, bytes] = {}
        self.links: dict[str, str] = {}
        self.packages: dict[tuple[str, str], str] | None = None
        self.rpm = False

    def take(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = _normal(member.name)
        if name in self.wanted:
            if member.issym():
                self.links[name] = _link_target(member)
            elif member.isfile() or member.islnk():
                self.texts[name] = _read_member(tar, member, OS_RELEASE_LIMIT)
        elif name == "var/lib/dpkg/status" and (member.isfile() or member.islnk()):
            handle = tar.extractfile(member)
            if handle is not None:
                with handle:
                    self.packages = parse_dpkg_status(handle, STATUS_LIMIT)
        elif name.startswith(("var/lib/rpm/", "usr/lib/sysimage/rpm/")):
            self.rpm = True

    def resolved(self, name: str) -> tuple[bytes | None, str | None]:
        """(text, None) once ``name`` leads to a file read; (None, next name) otherwise."""
        for _ in range(SYMLINK_HOPS + 1):
            if name in self.texts:
                return self.texts[name], None
            if name not in self.links:
                return None, name
            name = self.links[name]
        return None, None

    def done(self) -> bool:
        text, _ = self.resolved("etc/os-release")
        return text is not None and self.packages is not None


def _scan(path: Path, scan: _Scan, deadline: Deadline, stop: bool) -> None:
    with tarfile.open(path, mode="r:*") as tar:
        for count, member in enumerate(tar):
            scan.take(tar, member)
            if count % 512 == 0 and deadline.left() <= 0:
                raise VerifyError("the archive was not read to its end in time")
            if stop and scan.done():
                return


def read_tar(path: Path, deadline: Deadline) -> TarFacts:
    """os-release and the dpkg database of a tar image, read member by member."""
    scan = _Scan({"etc/os-release", "usr/lib/os-release"})
    _scan(path, scan, deadline, stop=True)
    facts = TarFacts(packages=scan.packages, rpm=scan.rpm)
    for start in ("etc/os-release", "usr/lib/os-release"):
        text, pending = scan.resolved(start)
        for _ in range(SYMLINK_HOPS):
            if text is not None or pending is None or pending in scan.wanted:
                break
            scan.wanted.add(pending)  # a link to somewhere unusual: one more pass
            _scan(path, scan, deadline, stop=False)
            text, pending = scan.resolved(start)
        if text is not None:
            facts.os_release = parse_os_release(text.decode("utf-8", "replace"))
            return facts
        if start == "etc/os-release" and "etc/os-release" in scan.links:
            facts.os_release_problem = (
                f"etc/os-release points to {scan.links['etc/os-release']}, "
                "which is not in the archive"
            )
    return facts


# ---- os-release ----------------------------------------------------------------------


def parse_os_release(text: str) -> dict[str, str]:
    """KEY=value lines of os-release(5); quotes and backslash escapes removed."""
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        values[key.strip()] = value
    return values


def image_release(os_release: Mapping[str, str]) -> str:
    """How an image names its release: the codename, else the version, else its name."""
    return (os_release.get("VERSION_CODENAME") or os_release.get("VERSION_ID")
            or os_release.get("PRETTY_NAME") or "of no known release")


def release_matches(os_release: Mapping[str, str], wanted: str) -> bool:
    """True when the image is the release ``wanted`` (DIB_RELEASE) names.

    Debian's testing and unstable share one base-files: an unstable (sid) image says
    ``VERSION_CODENAME=<testing codename>``, ``PRETTY_NAME="Debian GNU/Linux forky/sid"``
    and has no VERSION_ID; so ``sid``/``unstable`` want ``/sid`` in PRETTY_NAME, and
    ``testing`` wants no VERSION_ID. ``9-stream`` matches VERSION_ID 9.
    """
    codename = os_release.get("VERSION_CODENAME", "")
    version = os_release.get("VERSION_ID", "")
    pretty = os_release.get("PRETTY_NAME", "")
    if wanted in UNSTABLE:
        return not version and pretty.endswith("/sid")
    if wanted == "testing":
        return not version and bool(codename)
    if wanted in ROLE_SUITES:
        return bool(version)
    if wanted in (codename, version, os_release.get("UBUNTU_CODENAME")):
        return True
    return bool(version) and wanted.split("-", 1)[0] == version


def _release_note(os_release: Mapping[str, str], wanted: str) -> str:
    if wanted in UNSTABLE:
        return (f" (os-release says {os_release.get('PRETTY_NAME', '')!r}: testing and "
                "unstable share their os-release)")
    if wanted in ROLE_SUITES:
        return f" (the suite {wanted} is not matched to a codename)"
    return ""


def check_os_release(
    os_release: Mapping[str, str] | None, problem: str, expect: Expectation
) -> Found:
    name = "os-release"
    if os_release is None:
        return Found(name, False, f"os-release: {problem}")
    distro = os_release.get("ID", "")
    found = image_release(os_release)
    wrong = []
    if expect.distro_id is not None and distro != expect.distro_id:
        wrong.append(f"image is {distro or 'of no known distribution'}, "
                     f"target wants {expect.distro_id}")
    if expect.release is not None and not release_matches(os_release, expect.release):
        wrong.append(f"image is {found}, target wants {expect.release}")
    if wrong:
        return Found(name, False, "; ".join(wrong))
    unchecked = [what for what, value in (("distribution", expect.distro_id),
                                           ("release", expect.release)) if value is None]
    note = f"; {' and '.join(unchecked)} not checked (unknown for this target)" if unchecked else ""
    note += _release_note(os_release, expect.release) if expect.release else ""
    return Found(name, True, f"{distro or '?'} {found}{note}")


# ---- packages ------------------------------------------------------------------------


def parse_dpkg_status(stream: IO[bytes], limit: int) -> dict[tuple[str, str], str]:
    """(name, arch) -> version of every package dpkg has "install ok installed"."""
    installed: dict[tuple[str, str], str] = {}
    fields: dict[str, str] = {}
    read = 0
    for raw in stream:
        read += len(raw)
        if read > limit:
            raise VerifyError(f"dpkg status is larger than {limit // MIB} MiB")
        line = raw.decode("utf-8", "replace").rstrip("\n")
        if not line.strip():
            _keep_installed(fields, installed)
            fields = {}
        elif not line[0].isspace() and ":" in line:
            key, value = line.split(":", 1)
            fields[key] = value.strip()
    _keep_installed(fields, installed)
    return installed


def _keep_installed(fields: Mapping[str, str], into: dict[tuple[str, str], str]) -> None:
    status = fields.get("Status", "").split()
    if "Package" in fields and len(status) == 3 and status[1:] == ["ok", "installed"]:
        into[(fields["Package"], fields.get("Architecture", ""))] = fields.get("Version", "")


def read_manifest(path: Path) -> dict[tuple[str, str], str]:
    """(name, arch) -> version from a ``<target>.packages`` manifest (name version arch)."""
    rows = {}
    for line in _read_text(path, MANIFEST_LIMIT, strict=True).splitlines():
        name, version, arch = ([*line.split(), "", ""][:3])
        if name:
            rows[(name, arch)] = version
    return rows


def _names(keys: Sequence[tuple[str, str]] | set[tuple[str, str]]) -> str:
    names = sorted({name for name, _ in keys})
    shown = ", ".join(names[:SHOWN])
    return shown + (", ..." if len(names) > SHOWN else "")


def _count(number: int, what: str = "package") -> str:
    return f"{number} {what}{'' if number == 1 else 's'}"


def compare_packages(
    image: Mapping[tuple[str, str], str], manifest: Mapping[tuple[str, str], str]
) -> list[str]:
    """How the image's packages differ from the manifest's, worded for a legend."""
    extra = set(image) - set(manifest)
    missing = set(manifest) - set(image)
    versions = sorted(k for k in set(image) & set(manifest) if image[k] != manifest[k])
    problems = []
    if extra:
        verb = "is" if len(extra) == 1 else "are"
        problems.append(f"{len(extra)} in the image {verb} not in the manifest ({_names(extra)})")
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        problems.append(
            f"{len(missing)} in the manifest {verb} not in the image ({_names(missing)})"
        )
    if versions:
        first = versions[0]
        problems.append(
            f"{_count(len(versions))} differ{'s' if len(versions) == 1 else ''} in version "
            f"({first[0]}: image {image[first]}, "
            f"manifest {manifest[first]})"
        )
    return problems


def check_packages(
    packages: Mapping[tuple[str, str], str] | None, rpm: bool, manifest: Path
) -> Found:
    name = "packages"
    if packages is None:
        if rpm:
            return Found(name, True, "not applicable: an rpm image (only dpkg databases "
                                     "are compared with the manifest)")
        if manifest.is_file() and read_manifest(manifest):
            return Found(name, False, f"packages: the image has no dpkg database, but "
                                      f"{manifest.name} lists packages")
        return Found(name, True, "not applicable: no dpkg database and an empty manifest")
    if not manifest.is_file():
        return Found(name, False, f"packages: no manifest {manifest.name} beside the image")
    problems = compare_packages(packages, read_manifest(manifest))
    if problems:
        return Found(name, False, "packages: " + "; ".join(problems))
    return Found(name, True, f"{_count(len(packages))} installed, as {manifest.name} lists")


# ---- tools ---------------------------------------------------------------------------


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
    proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    try:
        out, err = _collect(proc, argv[0], deadline, limit)
        returncode = proc.wait(timeout=max(deadline.left(), 1.0))
    except (VerifyError, subprocess.TimeoutExpired) as problem:
        proc.kill()
        proc.wait()
        if isinstance(problem, VerifyError):
            raise
        raise VerifyError(f"{argv[0]} did not finish in time") from None
    finally:
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


def _tool_error(result: ToolResult, what: str) -> VerifyError:
    """The tool's own words: its first message line (debugfs' version banner skipped)."""
    lines = [line.strip() for line in result.stderr.splitlines()
             if line.strip() and not re.match(r"^debugfs \d", line)]
    status = f" (exit {result.returncode})" if result.returncode else ""
    return VerifyError(f"{what} failed{status}: {lines[0] if lines else 'no message'}")


# ---- disk images ---------------------------------------------------------------------


@dataclass(frozen=True)
class Disk:
    path: Path
    format: str  # qemu-img's format name
    size: int  # virtual size in bytes


@dataclass(frozen=True)
class ImagePartition:
    number: int
    start: int  # bytes
    size: int
    type: str
    name: str = ""


@dataclass(frozen=True)
class Table:
    label: str | None  # "mbr", "gpt" or None
    partitions: tuple[ImagePartition, ...]


@dataclass(frozen=True)
class Filesystem:
    type: str | None  # "ext4" (any ext), "vfat", or None when not recognised
    label: str


def _disk_steps(image: Path, kind: str, expect: Expectation, work: Path) -> list[Step]:
    state: dict[str, Any] = {}
    disk_format = DISK_FORMATS[kind]
    plans = planned_layout(image, kind, expect)
    planned = plans.best

    def disk(deadline: Deadline) -> Disk:
        if "disk" not in state:
            state["disk"] = Disk(image, disk_format, virtual_size(image, disk_format, deadline))
        return state["disk"]  # type: ignore[no-any-return]

    def table(deadline: Deadline) -> Table:
        if "table" not in state:
            state["table"] = read_table(disk(deadline), work, deadline)
        return state["table"]  # type: ignore[no-any-return]

    def root_fs(deadline: Deadline) -> str:
        if "root" not in state:
            state["root"] = root_filesystem(disk(deadline), table(deadline), planned, work,
                                            deadline)
        return state["root"]  # type: ignore[no-any-return]

    return [
        ("qemu-img check", lambda d: check_qemu_img(disk(d), d)),
        ("partition table", lambda d: check_table(table(d), plans)),
        ("filesystem label", lambda d: check_labels(disk(d), table(d), planned, work, d)),
        ("os-release", lambda d: check_os_release(*debugfs_os_release(root_fs(d), d), expect)),
        ("packages", lambda d: check_packages(debugfs_packages(root_fs(d), d), False,
                                              manifest_path(image, kind))),
    ]


def virtual_size(image: Path, disk_format: str, deadline: Deadline) -> int:
    result = run_tool(["qemu-img", "info", "--output=json", "-f", disk_format, str(image)],
                      deadline)
    if result.returncode != 0:
        raise _tool_error(result, "qemu-img info")
    info = json.loads(result.stdout)
    return int(info["virtual-size"])


def check_qemu_img(disk: Disk, deadline: Deadline) -> Found:
    name = "qemu-img check"
    if disk.format == "raw":
        actual = disk.path.stat().st_size
        if actual == 0 or actual % SECTOR:
            return Found(name, False, f"qemu-img info: the raw image is {actual} bytes, "
                                      f"not a whole number of {SECTOR}-byte sectors")
        if disk.size != actual:
            return Found(name, False, f"qemu-img info: virtual size {disk.size} bytes, "
                                      f"but the raw file is {actual} bytes")
        return Found(name, True, f"raw, {_mib(disk.size)} (qemu-img info; raw has no check)")
    argv = ["qemu-img", "check", "--output=json", "-f", disk.format, str(disk.path)]
    result = run_tool(argv, deadline)
    if result.returncode == 63:
        return Found(name, True, f"{disk.format}, {_mib(disk.size)}: the format has no check")
    try:
        report = json.loads(result.stdout) if result.stdout.strip() else {}
    except json.JSONDecodeError:
        report = {}
    problems = [f"{report[k]} {k}" for k in ("corruptions", "leaks", "check-errors")
                if report.get(k)]
    if result.returncode != 0 or problems:
        found = ", ".join(problems) or (result.stderr.strip().splitlines() or ["?"])[-1]
        return Found(name, False, f"qemu-img check: {found}")
    return Found(name, True, f"{disk.format}, {_mib(disk.size)} virtual, no errors")


def _mib(size: int) -> str:
    return f"{size / MIB:.0f} MiB" if size % MIB == 0 else f"{size / MIB:.2f} MiB"


def read_span(disk: Disk, offset: int, length: int, work: Path, deadline: Deadline) -> bytes:
    """``length`` bytes at ``offset`` of the disk's contents (raw reads the file itself)."""
    length = max(0, min(length, disk.size - offset))
    if disk.format == "raw":
        with open(disk.path, "rb") as handle:
            handle.seek(offset)
            return handle.read(length)
    if length == 0:
        return b""
    out = work / f"span-{offset}-{length}.raw"
    source = _json_source(disk, offset, length)
    argv = ["qemu-img", "dd", "-O", "raw", f"bs={length}", "count=1", f"if={source}",
            f"of={out}"]
    try:
        result = run_tool(argv, deadline)
        if result.returncode != 0:
            raise _tool_error(result, "qemu-img dd")
        with open(out, "rb") as handle:
            return handle.read(length)
    finally:
        out.unlink(missing_ok=True)


def _json_source(disk: Disk, offset: int, size: int) -> str:
    """A qemu ``json:`` filename for ``size`` bytes at ``offset`` of the disk, as raw."""
    spec = {"driver": "raw", "offset": offset, "size": size,
            "file": {"driver": disk.format,
                     "file": {"driver": "file", "filename": str(disk.path.resolve())}}}
    if disk.format == "raw":
        spec["file"] = spec["file"]["file"]  # type: ignore[index]
    return "json:" + json.dumps(spec, separators=(",", ":"))


def read_table(disk: Disk, work: Path, deadline: Deadline) -> Table:
    """The partition table, from ``sfdisk --json`` on the image (raw) or on a sparse copy
    of its first and last MiB (other formats: where MBR, GPT and GPT's backup live)."""
    target = disk.path
    if disk.format != "raw":
        target = work / "table.raw"
        head = read_span(disk, 0, MIB, work, deadline)
        tail_at = max(0, disk.size - MIB)
        tail = read_span(disk, tail_at, MIB, work, deadline) if tail_at >= len(head) else b""
        with open(target, "wb") as handle:
            handle.truncate(disk.size)
            handle.write(head)
            handle.seek(tail_at)
            handle.write(tail)
    result = run_tool(["sfdisk", "--json", str(target)], deadline)
    if result.returncode != 0:
        if "does not contain a recognized partition table" in result.stderr:
            return Table(None, ())
        raise _tool_error(result, "sfdisk --json")
    return parse_sfdisk(json.loads(result.stdout))


def parse_sfdisk(data: Mapping[str, Any]) -> Table:
    table = data.get("partitiontable", {})
    sector = int(table.get("sectorsize", SECTOR))
    label = {"dos": "mbr", "gpt": "gpt"}.get(table.get("label", ""), table.get("label"))
    parts = tuple(
        ImagePartition(number, int(p["start"]) * sector, int(p["size"]) * sector,
                       str(p.get("type", "")).upper(), str(p.get("name", "")))
        for number, p in enumerate(table.get("partitions", []), start=1)
    )
    return Table(label, parts)


def load_layout_record(path: Path) -> PlannedLayout:
    """``<target>.layout.json`` as dib.disk writes it."""
    data = json.loads(_read_text(path, LAYOUT_LIMIT, strict=True))
    parts = tuple(
        PlannedPartition(p["name"], p.get("filesystem"), p.get("label"), p.get("mountpoint"),
                         p.get("type"), p.get("start"), p.get("size"))
        for p in data["partitions"]
    )
    return PlannedLayout(data["table"], parts, path.name)


@dataclass(frozen=True)
class Plans:
    """The layout dib recorded beside the image and the one the target asks for."""

    recorded: PlannedLayout | None
    wanted: PlannedLayout | None
    note: str  # why there is neither, or why the record was not read

    @property
    def best(self) -> PlannedLayout | None:
        """What the image is compared with: the record (it has sizes), else the target's."""
        return self.recorded or self.wanted


def planned_layout(image: Path, kind: str, expect: Expectation) -> Plans:
    path = _stem(image, kind).with_name(_stem(image, kind).name + ".layout.json")
    note = "" if expect.layout else (expect.layout_problem or "the target plans no disk layout")
    if not path.is_file():
        return Plans(None, expect.layout, note)
    try:
        return Plans(load_layout_record(path), expect.layout, note)
    except (OSError, ValueError, KeyError, TypeError, VerifyError) as err:
        return Plans(None, expect.layout, f"{path.name} cannot be read: {err}")


def compare_plans(recorded: PlannedLayout, wanted: PlannedLayout) -> list[str]:
    """Where what dib planned differs from what the target asks for."""
    if recorded.table != wanted.table:
        return [f"dib planned {recorded.table or 'a bare filesystem'}, "
                f"target wants {wanted.table or 'a bare filesystem'}"]
    names = [p.name for p in recorded.partitions]
    want = [p.name for p in wanted.partitions]
    if names != want:
        return [f"dib planned partitions {', '.join(names)}, target wants {', '.join(want)}"]
    return [f"dib labelled {got.name} {got.label!r}, target wants {plan.label!r}"
            for got, plan in zip(recorded.partitions, wanted.partitions)
            if plan.label is not None and got.label != plan.label]


def _table_name(label: str | None) -> str:
    return f"an {label} table" if label == "mbr" else (f"a {label} table" if label
                                                     else "no partition table")


def compare_tables(image: Table, planned: PlannedLayout) -> list[str]:
    if image.label != planned.table:
        kind = f"{planned.table}" if planned.table else "a bare filesystem"
        return [f"image has {_table_name(image.label)}, planned {kind}"]
    if planned.table is None:
        return []
    have, want = len(image.partitions), len(planned.partitions)
    if have != want:
        return [f"image has {_count(have, 'partition')}, planned {want}"]
    problems = []
    for got, plan in zip(image.partitions, planned.partitions):
        where = f"partition {got.number} ({plan.name})"
        if planned.table == "gpt" and got.name and got.name != plan.name:
            problems.append(f"partition {got.number} is named {got.name!r}, planned {plan.name!r}")
        if plan.type and got.type != plan.type.upper():
            problems.append(f"{where} has type {got.type}, planned {plan.type.upper()}")
        if plan.start is not None and got.start != plan.start:
            problems.append(f"{where} starts at sector {got.start // SECTOR}, "
                            f"planned {plan.start // SECTOR}")
        if plan.size is not None and got.size != plan.size:
            problems.append(f"{where} is {_mib(got.size)}, planned {_mib(plan.size)}")
    return problems


def check_table(image: Table, plans: Plans) -> Found:
    name = "partition table"
    planned = plans.best
    if planned is None:
        return Found(name, True, f"not compared: {plans.note}; image has "
                                 f"{_table_name(image.label)}")
    problems = compare_tables(image, planned)
    if plans.recorded and plans.wanted:
        problems += compare_plans(plans.recorded, plans.wanted)
    if problems:
        return Found(name, False, "partition table: " + "; ".join(problems[:SHOWN]))
    if planned.table is None:
        return Found(name, True, f"no partition table: a bare filesystem ({planned.origin})")
    parts = ", ".join(p.name for p in planned.partitions)
    return Found(name, True, f"{planned.table}, {_count(len(planned.partitions), 'partition')} "
                             f"({parts}) as in {planned.origin}")


def filesystem_at(block: bytes) -> Filesystem:
    """The filesystem whose first 4 KiB are ``block``: ext (magic at 1024+56, label at
    1024+120, 16 bytes) or FAT (boot sector label at 0x47 for FAT32, 0x2B otherwise)."""
    if len(block) >= 1024 + 136 and int.from_bytes(block[1080:1082], "little") == EXT_MAGIC:
        return Filesystem("ext4", _label(block[1144:1160]))
    if len(block) >= 512 and block[510:512] == b"\x55\xaa":
        if block[0x52:0x5A] == b"FAT32   ":
            return Filesystem("vfat", _label(block[0x47:0x52]))
        if block[0x36:0x39] == b"FAT":
            return Filesystem("vfat", _label(block[0x2B:0x36]))
    return Filesystem(None, "")


def _label(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace").strip()


def _partition_spans(table: Table, disk: Disk) -> list[tuple[int, int]]:
    if table.label is None:
        return [(0, disk.size)]
    return [(p.start, p.size) for p in table.partitions]


def check_labels(
    disk: Disk, table: Table, planned: PlannedLayout | None, work: Path, deadline: Deadline
) -> Found:
    name = "filesystem label"
    spans = _partition_spans(table, disk)
    if planned is None or len(spans) != len(planned.partitions):
        found = [filesystem_at(read_span(disk, s, 4 * KIB, work, deadline)) for s, _ in spans]
        labels = ", ".join(f"{f.type}:{f.label!r}" for f in found if f.type) or "none"
        return Found(name, True, f"not compared (no matching plan); filesystems: {labels}")
    problems, seen = [], []
    for (start, _), plan in zip(spans, planned.partitions):
        if not plan.filesystem:
            continue
        got = filesystem_at(read_span(disk, start, 4 * KIB, work, deadline))
        what = "root filesystem" if plan.mountpoint == "/" else f"{plan.name} filesystem"
        kind = "vfat" if plan.filesystem == "vfat" else "ext4"
        if got.type != kind:
            problems.append(f"{what}: no {plan.filesystem} filesystem found")
        elif plan.label is not None and got.label != plan.label:
            problems.append(f"{what} is labelled {got.label!r}, planned {plan.label!r}")
        seen.append(f"{plan.name}={got.label!r}")
    if problems:
        return Found(name, False, "; ".join(problems[:SHOWN]))
    return Found(name, True, ", ".join(seen) or "no filesystems planned")


# ---- inside the root filesystem ------------------------------------------------------


def root_filesystem(
    disk: Disk, table: Table, planned: PlannedLayout | None, work: Path, deadline: Deadline
) -> str:
    """A debugfs device spec of the root ext filesystem (``file?offset=N`` for raw; a
    sparse raw copy of just that filesystem for other formats)."""
    start, size = _root_span(disk, table, planned, work, deadline)
    if disk.format == "raw":
        return f"{disk.path}?offset={start}" if start else str(disk.path)
    copy = work / "root.raw"
    if not copy.exists():
        argv = ["qemu-img", "convert", "-O", "raw", "-S", "4k", _json_source(disk, start, size),
                str(copy)]
        result = run_tool(argv, deadline)
        if result.returncode != 0:
            raise _tool_error(result, "qemu-img convert of the root filesystem")
    return str(copy)


def _root_span(
    disk: Disk, table: Table, planned: PlannedLayout | None, work: Path, deadline: Deadline
) -> tuple[int, int]:
    """Where the root ext filesystem is: the planned root partition, else the ext
    filesystem labelled cloudimg-rootfs, else the first ext filesystem."""
    spans = _partition_spans(table, disk)
    found = {s: filesystem_at(read_span(disk, s[0], 4 * KIB, work, deadline)) for s in spans}
    if planned is not None and len(spans) == len(planned.partitions):
        for span, plan in zip(spans, planned.partitions):
            if plan.mountpoint == "/" and found[span].type == "ext4":
                return span
    ext = [s for s in spans if found[s].type == "ext4"]
    chosen = [s for s in ext if found[s].label == ROOT_LABEL] or ext
    if not chosen:
        raise VerifyError("no ext filesystem found on the image to read it from")
    return chosen[0]


def debugfs_read(device: str, path: str, deadline: Deadline, limit: int) -> bytes | None:
    """A file's bytes through ``debugfs -c`` (symlinks followed); None when it is absent."""
    for _ in range(SYMLINK_HOPS + 1):
        stat = run_tool(["debugfs", "-c", "-R", f"stat {path}", device], deadline)
        if stat.returncode != 0 or b"Inode:" not in stat.stdout:
            if "File not found" in stat.stderr or "not found" in stat.stderr:
                return None
            raise _tool_error(stat, f"debugfs stat {path}")
        link = re.search(rb'Fast link dest: "(.*)"', stat.stdout)
        if link is None:
            result = run_tool(["debugfs", "-c", "-R", f"cat {path}", device], deadline, limit)
            if result.returncode != 0:
                raise _tool_error(result, f"debugfs cat {path}")
            return result.stdout
        target = link.group(1).decode("utf-8", "replace")
        path = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    raise VerifyError(f"too many symbolic links from {path}")


def debugfs_os_release(device: str, deadline: Deadline) -> tuple[dict[str, str] | None, str]:
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        data = debugfs_read(device, path, deadline, OS_RELEASE_LIMIT)
        if data is not None:
            return parse_os_release(data.decode("utf-8", "replace")), ""
    return None, "no /etc/os-release or /usr/lib/os-release in the root filesystem"


def debugfs_packages(device: str, deadline: Deadline) -> dict[tuple[str, str], str] | None:
    data = debugfs_read(device, "/var/lib/dpkg/status", deadline, STATUS_LIMIT)
    return None if data is None else parse_dpkg_status(io.BytesIO(data), STATUS_LIMIT)


# ---- small helpers -------------------------------------------------------------------


def _read_text(path: Path, limit: int, strict: bool = False) -> str:
    """At most ``limit`` bytes of a text file; ``strict``: a longer file is an error."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError:
        if strict:
            raise
        return ""
    if len(data) > limit:
        if strict:
            raise VerifyError(f"{path.name} is larger than {limit // KIB} KiB")
        data = data[:limit]
    return data.decode("utf-8", "replace")


__all__ = [
    "Expectation",
    "PlannedLayout",
    "PlannedPartition",
    "expectation_for",
    "summary",
    "verify_images",
]
