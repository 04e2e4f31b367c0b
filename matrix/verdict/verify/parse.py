"""The text formats read out of an image or beside it: os-release(5), dpkg's status
file (streamed, bounded) and the ``<target>.packages`` manifest dib writes."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from .limits import MANIFEST_LIMIT, MIB, VerifyError, read_text

Packages = dict[tuple[str, str], str]  # (name, arch) -> version


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


def parse_dpkg_status(stream: IO[bytes], limit: int) -> Packages:
    """(name, arch) -> version of every package dpkg has "install ok installed"."""
    installed: Packages = {}
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


def _keep_installed(fields: Mapping[str, str], into: Packages) -> None:
    status = fields.get("Status", "").split()
    if "Package" in fields and len(status) == 3 and status[1:] == ["ok", "installed"]:
        into[(fields["Package"], fields.get("Architecture", ""))] = fields.get("Version", "")


def read_manifest(path: Path) -> Packages:
    """(name, arch) -> version from a ``<target>.packages`` manifest (name version arch)."""
    rows = {}
    for line in read_text(path, MANIFEST_LIMIT, strict=True).splitlines():
        name, version, arch = ([*line.split(), "", "", ""][:3])
        if name:
            rows[(name, arch)] = version
    return rows
