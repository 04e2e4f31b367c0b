"""Check an element's effects in a built image by reading its tarball (no extraction).

An effect is a one-key mapping from the compat table (``table.yaml``)::

    {"file": "/etc/x"}            the path exists (a glob is allowed)
    {"absent": "/etc/x"}          it does not
    {"symlink": "/usr/local/bin/x"}
    {"contains": ["/etc/x", "^re$"]}   a line matches (re.MULTILINE)
    {"lacks": ["/etc/x", "^re$"]}      no line matches
    {"package": "openssh-server"}      installed in /var/lib/dpkg/status
    {"unit": "ssh.service"}            enabled: a link in /etc/systemd/system/*.wants/
    {"user": "debian"}                 a line of /etc/passwd
    {"host": "/path"}                  a path on the build machine
    {"table": "gpt"}                   <output>.layout.json's partition table
    {"disk": "qcow2"}                  <output>.qcow2 passes ``qemu-img check``

:func:`check` returns the effects that were not met, each as a short text.
"""

from __future__ import annotations

import fnmatch
import json
import posixpath
import re
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

KINDS = (
    "file", "absent", "symlink", "contains", "lacks", "package", "unit", "user",
    "host", "table", "disk",
)
MAX_READ = 4 << 20


class EffectError(ValueError):
    """An effect in the table is malformed."""


def _norm(name: str) -> str:
    name = name.lstrip("./") if name.startswith("./") else name.lstrip("/")
    return "/" + posixpath.normpath(name) if name not in ("", ".") else "/"


@dataclass
class ImageTar:
    """An image tarball's members, looked up by absolute path."""

    path: Path
    members: Dict[str, tarfile.TarInfo] = field(default_factory=dict)
    _tar: Optional[tarfile.TarFile] = None

    @classmethod
    def open(cls, path: Path) -> ImageTar:
        tar = tarfile.open(path)  # noqa: SIM115 - closed by ImageTar.close()
        image = cls(Path(path), _tar=tar)
        for member in tar.getmembers():
            image.members[_norm(member.name)] = member
        return image

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None

    def __enter__(self) -> ImageTar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def canonical(self, path: str) -> str:
        """``path`` with every symlink component resolved inside the image."""
        parts = [p for p in _norm(path).split("/") if p]
        done = "/"
        hops = 0
        while parts:
            current = posixpath.join(done, parts.pop(0))
            member = self.members.get(current)
            if member is not None and member.issym() and hops < 40:
                hops += 1
                target = member.linkname
                base = "/" if target.startswith("/") else done
                target_parts = [p for p in _norm(posixpath.join(base, target)).split("/") if p]
                parts = target_parts + parts
                done = "/"
                continue
            done = current
        return done

    def resolve(self, path: str) -> Optional[tarfile.TarInfo]:
        """The member at ``path``, following symlinks (absolute ones inside the image)."""
        return self.members.get(self.canonical(path))

    def exists(self, path: str) -> bool:
        return self.resolve(path) is not None or _norm(path) in self.members

    def glob(self, pattern: str) -> List[str]:
        pattern = _norm(pattern)
        if not any(ch in pattern for ch in "*?["):
            return [pattern] if self.exists(pattern) else []
        return sorted(name for name in self.members if fnmatch.fnmatchcase(name, pattern))

    def read(self, path: str) -> Optional[str]:
        member = self.resolve(path)
        if member is None or not member.isfile() or self._tar is None:
            return None
        handle = self._tar.extractfile(member)
        if handle is None:
            return None
        return handle.read(MAX_READ).decode("utf-8", errors="replace")


def installed_packages(status: str) -> Dict[str, str]:
    """Package -> Status from a dpkg status file's text."""
    packages: Dict[str, str] = {}
    for stanza in status.split("\n\n"):
        fields: Dict[str, str] = {}
        for line in stanza.splitlines():
            key, sep, value = line.partition(":")
            if sep and not line[:1].isspace():
                fields[key.strip()] = value.strip()
        if "Package" in fields:
            packages[fields["Package"]] = fields.get("Status", "")
    return packages


def unit_enabled(image: ImageTar, unit: str) -> bool:
    for name in image.members:
        if name.startswith("/etc/systemd/system/") and posixpath.basename(name) == unit:
            parent = posixpath.basename(posixpath.dirname(name))
            if parent.endswith((".wants", ".requires")):
                return True
    return False


def validate(effect: Mapping[str, object]) -> tuple:
    if not isinstance(effect, Mapping) or len(effect) != 1:
        raise EffectError(f"an effect is a one-key mapping, not {effect!r}")
    kind, value = next(iter(effect.items()))
    if kind not in KINDS:
        raise EffectError(f"unknown effect {kind!r} (known: {', '.join(KINDS)})")
    if kind in ("contains", "lacks"):
        if not (isinstance(value, (list, tuple)) and len(value) == 2):
            raise EffectError(f"{kind}: takes [path, regex], not {value!r}")
        re.compile(str(value[1]))
    elif not isinstance(value, str):
        raise EffectError(f"{kind}: takes a string, not {value!r}")
    return kind, value


def describe(effect: Mapping[str, object]) -> str:
    kind, value = next(iter(effect.items()))
    if isinstance(value, (list, tuple)):
        return f"{kind} {value[0]} /{value[1]}/"
    return f"{kind} {value}"


def check_one(
    image: Optional[ImageTar],
    effect: Mapping[str, object],
    output: Optional[Path] = None,
    substitutions: Optional[Mapping[str, str]] = None,
) -> Optional[str]:
    """None when ``effect`` holds, else why not."""
    kind, value = validate(effect)
    what = describe(effect)
    if kind == "host":
        path = Path(str(value).format(**(substitutions or {})))
        return None if path.exists() else f"{what}: {path} not found"
    if kind == "table":
        if output is None:
            return f"{what}: no output"
        layout = Path(str(output) + ".layout.json")
        try:
            record = json.loads(layout.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return f"{what}: {layout.name} unreadable ({exc.__class__.__name__})"
        found = record.get("table")
        return None if found == value else f"{what}: layout says {found!r}"
    if kind == "disk":
        if output is None:
            return f"{what}: no output"
        disk = Path(f"{output}.{value}")
        if not disk.exists():
            return f"{what}: {disk.name} not written"
        done = subprocess.run(
            ["qemu-img", "check", str(disk)], capture_output=True, text=True, check=False
        )
        return None if done.returncode == 0 else f"{what}: qemu-img check failed"
    if image is None:
        return f"{what}: no tarball"
    if kind == "file":
        return None if image.glob(str(value)) else f"{what}: not in the image"
    if kind == "absent":
        return None if not image.glob(str(value)) else f"{what}: present in the image"
    if kind == "symlink":
        member = image.members.get(_norm(str(value)))
        return None if member is not None and member.issym() else f"{what}: no such symlink"
    if kind in ("contains", "lacks"):
        path, pattern = value
        text = image.read(str(path))
        if text is None:
            return f"{describe({kind: [path, pattern]})}: {path} not in the image"
        hit = re.search(str(pattern), text, re.MULTILINE) is not None
        if kind == "contains":
            return None if hit else f"{what}: no matching line"
        return None if not hit else f"{what}: a line matches"
    if kind == "package":
        status = installed_packages(image.read("/var/lib/dpkg/status") or "")
        state = status.get(str(value))
        return None if state == "install ok installed" else f"{what}: not installed"
    if kind == "unit":
        return None if unit_enabled(image, str(value)) else f"{what}: not enabled"
    if kind == "user":
        passwd = image.read("/etc/passwd") or ""
        users = {line.split(":", 1)[0] for line in passwd.splitlines() if line}
        return None if value in users else f"{what}: no such user"
    raise EffectError(f"unhandled effect {kind!r}")  # pragma: no cover


def check(
    tarball: Optional[Path],
    expect: Sequence[Mapping[str, object]],
    output: Optional[Path] = None,
    substitutions: Optional[Mapping[str, str]] = None,
) -> List[str]:
    """The unmet effects of ``expect`` (empty: all met)."""
    image = ImageTar.open(tarball) if tarball is not None and Path(tarball).exists() else None
    try:
        return [
            miss
            for effect in expect
            if (miss := check_one(image, effect, output, substitutions)) is not None
        ]
    finally:
        if image is not None:
            image.close()
