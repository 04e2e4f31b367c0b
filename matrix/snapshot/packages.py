"""A run's Packages indices read for the pool files of the packages its images hold.

An image's package list says ``name version arch``, not where the ``.deb`` is. Each
name is looked up in the Packages indices the run read (:func:`pool_files`), and
:func:`choose` takes the stanza of the same version and architecture, from the image's
own suite first. The indices come from a mirror: each is unpacked as a stream under a
bound, and a path or hash taken from a stanza is checked before it is trusted.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from dib.debprefetch import parse_stanza
from matrix.snapshot.manifest import MAX_BLOB, ArchiveState, StoreError, path_problem
from matrix.snapshot.store import Store
from results.safefile import MiB

INDEX_UNPACKED_LIMIT = 1 << 30  # bytes of one unpacked Packages index (bookworm: 45 MB)
STANZA_LIMIT = MiB  # bytes of one stanza (ours: ~1-5 KB)
CANDIDATES = 256  # pool files of one package name kept (versions x arches x suites: ~10)
CHUNK = MiB


@dataclass(frozen=True)
class Package:
    """One line of an image's package manifest."""

    name: str
    version: str
    arch: str  # "" when the manifest does not say


@dataclass(frozen=True)
class PoolFile:
    """A pool file a Packages index names."""

    archive: str
    suite: str
    path: str
    sha256: str
    size: int
    version: str
    arch: str


def pool_files(store: Store, archives: Mapping[str, ArchiveState], names: set[str],
               notes: list[str]) -> dict[str, list[PoolFile]]:
    """Package name -> the pool files of it the run's Packages indices list, for
    ``names`` only (a full parse of every stanza costs seconds of CPU per index); at
    most CANDIDATES of one name (an index repeating a stanza costs nothing)."""
    found: dict[str, dict[PoolFile, None]] = {}
    for uri, archive in sorted(archives.items()):
        for suite_name, suite in sorted(archive.suites.items()):
            for path, sha in packages_indices(suite.indices):
                try:
                    for stanza in _stanzas(store, sha):
                        entry = _pool_file(stanza, names, uri, suite_name)
                        if entry is not None:
                            known = found.setdefault(entry[0], {})
                            if len(known) < CANDIDATES:
                                known[entry[1]] = None
                except (StoreError, IndexUnreadable) as err:
                    notes.append(f"{uri} {path}: not read: {err}")
    return {name: list(entries) for name, entries in found.items()}


def packages_indices(indices: Mapping[str, str]) -> list[tuple[str, str]]:
    """The binary Packages indices among a suite's indices, one per directory (the
    compressed variants hold the same stanzas)."""
    chosen: dict[str, tuple[str, str]] = {}
    for path, sha in sorted(indices.items()):
        directory, _, name = path.rpartition("/")
        if name.split(".", 1)[0] == "Packages" and "/binary-" in f"/{directory}":
            chosen.setdefault(directory, (path, sha))
    return sorted(chosen.values())


class IndexUnreadable(Exception):
    """An index blob that cannot be unpacked or is larger than any index."""


def _stanzas(store: Store, sha256: str) -> Iterator[bytes]:
    """The stanzas of an index blob, unpacked as its first bytes say (xz, gzip, bzip2 or
    plain), streamed: memory stays at a block and a stanza whatever the index's size."""
    with store.open_blob(sha256) as raw:
        head = raw.read(6)
        raw.seek(0)
        stream = _unpacking(raw, head)
        rest, total = b"", 0
        try:
            while block := stream.read(CHUNK):
                total += len(block)
                if total > INDEX_UNPACKED_LIMIT:
                    raise IndexUnreadable(f"unpacks to more than {INDEX_UNPACKED_LIMIT} bytes")
                *whole, rest = (rest + block).split(b"\n\n")
                if len(rest) > STANZA_LIMIT:
                    raise IndexUnreadable(f"a stanza of more than {STANZA_LIMIT} bytes")
                yield from whole
        except (OSError, EOFError, lzma.LZMAError, ValueError) as err:  # corrupt, truncated
            raise IndexUnreadable(f"cannot be unpacked: {err}") from None
        if rest.strip():
            yield rest


def _unpacking(raw: BinaryIO, head: bytes) -> BinaryIO:
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(raw)  # type: ignore[return-value]
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw)  # type: ignore[return-value]
    if head.startswith(b"BZh"):
        return bz2.BZ2File(raw)  # type: ignore[return-value]
    return raw


def _pool_file(stanza: bytes, names: set[str], archive: str,
               suite: str) -> tuple[str, PoolFile] | None:
    """The pool file ``stanza`` names when its package is one of ``names`` and it says
    what a download needs, with a path and hash that may be trusted."""
    stanza = stanza.lstrip(b"\n")
    if not stanza.startswith(b"Package:"):
        return None
    end = stanza.find(b"\n")
    name = stanza[8:end if end >= 0 else None].strip().decode("utf-8", "replace")
    if name not in names:
        return None
    deb = parse_stanza(stanza.decode("utf-8", "replace"))
    if deb is None or deb.name != name or not 0 <= deb.size <= MAX_BLOB:
        return None
    sha = deb.sha256.lower()
    if len(sha) != 64 or any(ch not in "0123456789abcdef" for ch in sha):
        return None
    if path_problem(deb.filename) or not deb.filename.startswith("pool/"):
        return None
    return name, PoolFile(archive, suite, deb.filename, sha, deb.size, deb.version, deb.arch)


def choose(candidates: Sequence[PoolFile], package: Package,
           suite: str | None) -> PoolFile | None:
    """The pool file of ``package`` (same version; the same architecture, or ``all`` on
    either side): from its image's own suite (``bookworm``, ``bookworm-updates``,
    ``bookworm/updates``) before any other, the exact architecture before ``all``."""
    def fits(entry: PoolFile) -> bool:
        return entry.version == package.version and (
            not package.arch or entry.arch == package.arch or "all" in (entry.arch,
                                                                          package.arch))

    def rank(entry: PoolFile) -> tuple[bool, bool, str, str]:
        own = bool(suite) and (entry.suite == suite or entry.suite.startswith(
            (f"{suite}-", f"{suite}/")))
        return (not own, entry.arch != package.arch, entry.archive, entry.path)

    fitting = [entry for entry in candidates if fits(entry)]
    return min(fitting, key=rank) if fitting else None
