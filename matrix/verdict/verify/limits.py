"""What a verification may spend: byte limits on everything it reads, one deadline for
all of a cell's checks, and the error of a check that could not be made."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

KIB = 1 << 10
MIB = 1 << 20
OS_RELEASE_LIMIT = 16 * KIB  # bytes read of an os-release file
STATUS_LIMIT = 64 * MIB  # bytes read of dpkg's status file
MANIFEST_LIMIT = 16 * MIB
LAYOUT_LIMIT = 1 * MIB
TOOL_OUTPUT_LIMIT = 1 * MIB  # stdout of a tool, unless a call says otherwise
SYMLINK_HOPS = 4  # symbolic links followed to an image's os-release


class VerifyError(Exception):
    """A check could not be made (tool missing, timeout, unreadable image): it fails."""


@dataclass
class Deadline:
    end: float  # time.monotonic() then
    seconds: float = 0.0  # the whole budget, for messages

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds, seconds)

    def left(self) -> float:
        return self.end - time.monotonic()

    @property
    def passed(self) -> bool:
        return self.left() <= 0


def read_text(path: Path, limit: int, strict: bool = False) -> str:
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
