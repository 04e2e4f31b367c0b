"""Why a hostgen failed, in one line: a closed set of causes and the log patterns for them."""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass


class HostgenCause(str, enum.Enum):
    """Category ids of hostgen failures (shared with the run's category catalogue)."""

    BASE_IMAGE_UNAVAILABLE = "base-image-unavailable"
    MIRROR_NOT_CONFIGURED = "mirror-not-configured"
    MIRROR_UNREACHABLE = "mirror-unreachable"
    MIRROR_EXPIRED = "mirror-expired"
    PACKAGE_NOT_FOUND = "package-not-found"
    NO_SUCH_SCRIPT = "no-such-script"
    BOOTSTRAP_FAILED = "bootstrap-failed"
    SETUP_FAILED = "setup-command-failed"
    PROBE_FAILED = "facts-probe-failed"
    TIMEOUT = "timeout"
    ENGINE_ERROR = "engine-error"
    BUILD_FAILED = "build-failed"

    @property
    def legend(self) -> str:
        return _LEGENDS[self]


_LEGENDS = {
    HostgenCause.BASE_IMAGE_UNAVAILABLE: "base image unavailable",
    HostgenCause.MIRROR_NOT_CONFIGURED: "no distribution mirror configured",
    HostgenCause.MIRROR_UNREACHABLE: "mirror unreachable",
    HostgenCause.MIRROR_EXPIRED: "mirror metadata expired or not yet valid",
    HostgenCause.PACKAGE_NOT_FOUND: "package not found in that release",
    HostgenCause.NO_SUCH_SCRIPT: "debootstrap does not know this release",
    HostgenCause.BOOTSTRAP_FAILED: "bootstrap of the base system failed",
    HostgenCause.SETUP_FAILED: "a setup command failed",
    HostgenCause.PROBE_FAILED: "host facts probe failed",
    HostgenCause.TIMEOUT: "hostgen timed out",
    HostgenCause.ENGINE_ERROR: "container engine error",
    HostgenCause.BUILD_FAILED: "image build failed",
}


@dataclass(frozen=True)
class Diagnosis:
    cause: HostgenCause
    evidence: str  # the log line (or engine message) that shows it

    def one_line(self) -> str:
        return f"{self.cause.legend}: {self.evidence}" if self.evidence else self.cause.legend


# Checked in order; the first pattern matching any line wins. Package managers'
# own wording, so the evidence line names the package or the URL.
_PATTERNS: tuple[tuple[HostgenCause, re.Pattern[str]], ...] = tuple(
    (cause, re.compile(pattern))
    for cause, pattern in (
        (HostgenCause.PACKAGE_NOT_FOUND, r"E: Unable to locate package \S+"),
        (HostgenCause.PACKAGE_NOT_FOUND, r"E: Package '[^']+' has no installation candidate"),
        (HostgenCause.PACKAGE_NOT_FOUND, r"E: Couldn't find any package by \w+ '[^']+'"),
        (HostgenCause.PACKAGE_NOT_FOUND, r"No match for argument: \S+"),
        (HostgenCause.PACKAGE_NOT_FOUND, r"Unable to find a match: .+"),
        (HostgenCause.PACKAGE_NOT_FOUND, r"No provider of '[^']+' found"),
        (HostgenCause.PACKAGE_NOT_FOUND, r"'[^']+' not found in package names"),
        (HostgenCause.PACKAGE_NOT_FOUND, r"there are no ebuilds to satisfy \"[^\"]+\""),
        (HostgenCause.PACKAGE_NOT_FOUND, r"Couldn't find these debs: .+"),
        (HostgenCause.NO_SUCH_SCRIPT, r"No such script: \S+"),
        (HostgenCause.MIRROR_EXPIRED, r"Release file for \S+ is (?:expired|not valid yet)[^.]*"),
        (HostgenCause.MIRROR_UNREACHABLE, r"Failed getting release (?:signature )?file \S+"),
        (HostgenCause.MIRROR_UNREACHABLE, r"Temporary failure resolving '[^']+'"),
        (HostgenCause.MIRROR_UNREACHABLE, r"Could not (?:resolve|connect to) .+"),
        (HostgenCause.MIRROR_UNREACHABLE, r"Unable to connect to .+"),
        (HostgenCause.MIRROR_UNREACHABLE, r"Failed to fetch \S+.*"),
        (HostgenCause.MIRROR_UNREACHABLE, r"Couldn't download \S+.*"),
        (HostgenCause.MIRROR_UNREACHABLE, r"Cannot download repomd\.xml.*"),
        (HostgenCause.MIRROR_UNREACHABLE, r"Failed to download metadata for repo .+"),
        (HostgenCause.MIRROR_UNREACHABLE, r"Download \(curl\) error.*"),
    )
)


def classify_log(lines: Iterable[str], fallback: HostgenCause, fallback_evidence: str) -> Diagnosis:
    """The first known cause seen in ``lines``.

    Else ``fallback`` with the last error-looking line, or ``fallback_evidence``.
    """
    lines = [line.strip() for line in lines if line.strip()]
    for cause, pattern in _PATTERNS:
        for line in lines:
            found = pattern.search(line)
            if found:
                return Diagnosis(cause, found.group(0))
    return Diagnosis(fallback, _last_error_line(lines) or fallback_evidence)


def _last_error_line(lines: list[str]) -> str:
    for line in reversed(lines):
        if re.match(r"^(E:|Error|error|ERROR|FATAL|fatal)", line):
            return line
    return ""
