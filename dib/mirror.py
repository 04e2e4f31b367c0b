"""Find a distribution mirror without hard-coding one.

Order: ``DIB_DISTRIBUTION_MIRROR``, then the first matching URI in the machine's
own apt sources (one-line ``sources.list`` and deb822 ``*.sources`` formats).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterable, Iterator, List, Mapping, Optional

APT_SOURCES_ROOT = Path("/etc/apt")

# Path suffixes that identify an archive's main repository (not security/updates ones).
ARCHIVE_SUFFIXES = {
    "debian": ("/debian", "/debian/"),
    "ubuntu": ("/ubuntu", "/ubuntu/"),
}


class MirrorNotFound(Exception):
    """No mirror was configured and none could be discovered."""


def _one_line_uris(text: str) -> Iterator[str]:
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb ") and not line.startswith("deb\t"):
            continue
        words = line.split()[1:]
        if words and words[0].startswith("["):
            # Options block: "[arch=amd64 signed-by=...]" may span several words.
            while words and not words[0].endswith("]"):
                words.pop(0)
            words = words[1:]
        if words:
            yield words[0]


def _deb822_uris(text: str) -> Iterator[str]:
    for stanza in text.split("\n\n"):
        fields = {}
        for raw in stanza.splitlines():
            if raw.startswith("#") or ":" not in raw or raw[:1].isspace():
                continue
            key, value = raw.split(":", 1)
            fields[key.strip().lower()] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        if "deb" not in fields.get("types", "").split():
            continue
        yield from fields.get("uris", "").split()


def apt_source_uris(root: Path = APT_SOURCES_ROOT) -> List[str]:
    """Every ``deb`` URI configured in the apt sources under ``root``, in apt's order."""
    files: List[Path] = []
    main_list = root / "sources.list"
    if main_list.is_file():
        files.append(main_list)
    parts = root / "sources.list.d"
    if parts.is_dir():
        files.extend(sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources")))
    uris: List[str] = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        parse = _deb822_uris if path.suffix == ".sources" else _one_line_uris
        uris.extend(parse(text))
    return uris


def pick_archive_uri(uris: Iterable[str], distro: str) -> Optional[str]:
    suffixes = ARCHIVE_SUFFIXES.get(distro, ("/" + distro, "/" + distro + "/"))
    for uri in uris:
        if uri.startswith(("http://", "https://", "file:/")) and uri.endswith(suffixes):
            return uri.rstrip("/")
    return None


def find_mirror(
    distro: str = "debian",
    env: Optional[Mapping[str, str]] = None,
    apt_root: Path = APT_SOURCES_ROOT,
) -> str:
    """The mirror to use for ``distro``; raises MirrorNotFound with a hint."""
    env = os.environ if env is None else env
    configured = env.get("DIB_DISTRIBUTION_MIRROR", "").strip()
    if configured:
        return configured.rstrip("/")
    found = pick_archive_uri(apt_source_uris(apt_root), distro)
    if found:
        return found
    raise MirrorNotFound(
        f"no {distro} mirror: DIB_DISTRIBUTION_MIRROR is not set and no {distro} archive "
        f"URI was found in {apt_root}/sources.list or {apt_root}/sources.list.d/"
    )


def find_security_mirror(apt_root: Path = APT_SOURCES_ROOT) -> Optional[str]:
    """The machine's Debian security archive, if its apt sources name one."""
    return pick_archive_uri(apt_source_uris(apt_root), "debian-security")


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m dib.mirror DISTRO``: print the mirror (for environment.d scripts);
    ``debian-security`` looks in the machine's apt sources only."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m dib.mirror DISTRO|debian-security", file=sys.stderr)
        return 2
    if args[0] == "debian-security":
        found = find_security_mirror()
    else:
        try:
            found = find_mirror(args[0])
        except MirrorNotFound as err:
            print(err, file=sys.stderr)
            return 1
    if not found:
        return 1
    print(found)
    return 0


if __name__ == "__main__":
    sys.exit(main())
