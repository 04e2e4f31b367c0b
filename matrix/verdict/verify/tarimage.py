"""A tar image (tar, tgz, tar.gz) read member by member with :mod:`tarfile`, without
extracting it: its os-release (through the usual symlink to ``usr/lib/os-release``,
a few KiB at most) and its dpkg database, or the sign of an rpm one."""

from __future__ import annotations

import posixpath
import tarfile
from dataclasses import dataclass
from pathlib import Path

from .limits import OS_RELEASE_LIMIT, STATUS_LIMIT, SYMLINK_HOPS, Deadline, VerifyError
from .parse import Packages, parse_dpkg_status, parse_os_release

OS_RELEASES = ("etc/os-release", "usr/lib/os-release")
DPKG_STATUS = "var/lib/dpkg/status"
RPM_DATABASES = ("var/lib/rpm/", "usr/lib/sysimage/rpm/")


@dataclass
class TarFacts:
    os_release: dict[str, str] | None = None
    os_release_problem: str = "no etc/os-release or usr/lib/os-release in the archive"
    packages: Packages | None = None
    rpm: bool = False


def read_tar(path: Path, deadline: Deadline) -> TarFacts:
    """os-release and the dpkg database of a tar image, read member by member."""
    scan = _Scan(set(OS_RELEASES))
    _scan(path, scan, deadline, stop=True)
    facts = TarFacts(packages=scan.packages, rpm=scan.rpm)
    for start in OS_RELEASES:
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


def _scan(path: Path, scan: _Scan, deadline: Deadline, stop: bool) -> None:
    with tarfile.open(path, mode="r:*") as tar:
        for count, member in enumerate(tar):
            scan.take(tar, member)
            if count % 512 == 0 and deadline.left() <= 0:
                raise VerifyError("the archive was not read to its end in time")
            if stop and scan.done():
                return


class _Scan:
    """One pass over an archive, keeping what the checks need and nothing else."""

    def __init__(self, wanted: set[str]):
        self.wanted = wanted
        self.texts: dict[str, bytes] = {}
        self.links: dict[str, str] = {}
        self.packages: Packages | None = None
        self.rpm = False

    def take(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = _normal(member.name)
        if name in self.wanted:
            if member.issym():
                self.links[name] = _link_target(member)
            elif member.isfile() or member.islnk():
                self.texts[name] = _read_member(tar, member, OS_RELEASE_LIMIT)
        elif name == DPKG_STATUS and (member.isfile() or member.islnk()):
            handle = tar.extractfile(member)
            if handle is not None:
                with handle:
                    self.packages = parse_dpkg_status(handle, STATUS_LIMIT)
        elif name.startswith(RPM_DATABASES):
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
