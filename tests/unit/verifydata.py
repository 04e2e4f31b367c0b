"""Image-check test data: an os-release, a dpkg status file and its manifest."""

from __future__ import annotations

from results.model import ImageCheck

BOOKWORM = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nVERSION_ID="12"\n' \
           "VERSION_CODENAME=bookworm\nID=debian\n"


PACKAGES = {"apt": "2.6.1", "base-files": "12.4+deb12u5", "bash": "5.2.15-2+b2"}


def status_text(packages: dict[str, str], extra: str = "") -> str:
    stanzas = [
        f"Package: {name}\nStatus: install ok installed\nPriority: required\n"
        f"Architecture: amd64\nVersion: {version}\nDescription: {name}\n more text\n"
        for name, version in packages.items()
    ]
    return "\n".join(stanzas) + ("\n" + extra if extra else "")


def manifest_text(packages: dict[str, str]) -> str:
    return "".join(f"{name} {version} amd64\n" for name, version in sorted(packages.items()))


def one(checks: list[ImageCheck], name: str) -> ImageCheck:
    found = [c for c in checks if c.name == name]
    assert len(found) == 1, checks
    return found[0]
