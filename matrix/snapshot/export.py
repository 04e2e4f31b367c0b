"""A snapshot written out in Debian's archive layout (``dib-matrix snapshot export``).

Each archive of the snapshot gets a directory (:func:`archive_roots`: its URL's path,
``debian``) holding ``dists/`` and ``pool/`` as the archive's files say, each file a
hard link to its blob in the store (a copy across file systems). Every path is checked
where it is written (``results.paths.inside``) on top of the manifest's own rules, so
nothing lands outside the destination, and no symlink is followed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from matrix.snapshot.manifest import ARCHIVE_TOPS, ArchiveState, Snapshot, StoreError, validated
from matrix.snapshot.store import CHUNK, Store
from results import safefile
from results.paths import UnsafePath, inside
from results.reader import clip


@dataclass(frozen=True)
class ExportStats:
    files: int = 0  # written (by link or copy)
    bytes: int = 0
    linked: int = 0  # hard links to the store's blobs
    copied: int = 0  # copies (another file system)
    roots: dict[str, str] = field(default_factory=dict)  # archive uri -> its directory in dest


def export(store: Store, snapshot: Snapshot, dest: Path) -> ExportStats:
    """Write ``snapshot`` to ``dest`` in Debian's archive layout: for each archive its
    path prefix (``debian``; an empty prefix: ``dest`` itself), then ``dists/`` and
    ``pool/`` as the archive's files say, each a hard link to its blob (a copy across
    file systems). Indices are also linked under ``by-hash/SHA256/`` beside them, so apt
    finds them whether or not the Release asks for that.

    ``dest`` must be absent or an empty directory, and no path leaves it; a blob the
    store lacks stops the export before anything is written (StoreError for each)."""
    snapshot = validated(snapshot)
    roots = archive_roots(snapshot)
    plan = _export_plan(snapshot, roots)
    absent = sorted({sha for sha in plan.values() if not store.has(sha)})
    if absent:
        raise StoreError(f"snapshot {snapshot.name}: {len(absent)} of its files are not in "
                         f"the store {store.root} ({absent[0]} ...): nothing exported")
    dest = _empty_destination(Path(dest))
    linked = copied = size = 0
    for relative, sha in sorted(plan.items()):
        blob = store.blob_path(sha)
        try:
            target = _inside_creating(dest, relative.split("/"))
        except (UnsafePath, OSError) as err:
            raise StoreError(f"export to {dest}: {clip(relative)}: {err}") from None
        if _link_or_copy(blob, target):
            linked += 1
        else:
            copied += 1
        size += os.lstat(target).st_size
    return ExportStats(linked + copied, size, linked, copied, roots)


def archive_roots(snapshot: Snapshot) -> dict[str, str]:
    """archive uri -> its directory in an export (``debian``; ``""`` for the top): its
    URL's path; an archive whose place another one took (the same prefix on another
    host) gets ``<host>/<prefix>``."""
    roots: dict[str, str] = {}
    for uri in sorted(snapshot.archives):
        split = urlsplit(uri)
        prefix = split.path.strip("/")
        candidates = (prefix, f"{split.netloc}/{prefix}", f"{split.scheme}/{split.netloc}/{prefix}")
        free = [place.strip("/") for place in candidates
                if not any(_overlaps(place.strip("/"), taken) for taken in roots.values())]
        if not free:
            raise StoreError(f"export: no directory left for {uri}")
        roots[uri] = free[0]
    return roots


def _overlaps(root: str, other: str) -> bool:
    """Whether the trees ``root/{dists,pool}`` and ``other/{dists,pool}`` share a path:
    the same root, or one root inside the other's dists/ or pool/."""
    if root == other:
        return True
    outer, inner = sorted((root, other), key=len)
    if outer and not inner.startswith(f"{outer}/"):
        return False
    return inner[len(outer):].strip("/").split("/", 1)[0] in ARCHIVE_TOPS


def _export_plan(snapshot: Snapshot, roots: Mapping[str, str]) -> dict[str, str]:
    """Every file to write, relative to the export's top -> its sha256."""
    plan: dict[str, str] = {}
    for uri, root in roots.items():
        for path, sha in _archive_files(snapshot.archives[uri]).items():
            relative = f"{root}/{path}" if root else path
            if plan.setdefault(relative, sha) != sha:
                raise StoreError(f"export: {clip(relative)} is given twice with different "
                                 "content")
    return plan


def _archive_files(archive: ArchiveState) -> dict[str, str]:
    """path -> sha256 of what an export of ``archive`` holds: its files, and each index
    also at ``<its directory>/by-hash/SHA256/<sha256>`` where that clashes with nothing."""
    files = {path: ref.sha256 for path, ref in archive.files.items()}
    directories = {parent for path in files for parent in _parents(path)}
    for path, sha in list(files.items()):
        directory, _, name = path.rpartition("/")
        if not path.startswith("dists/") or name in ("InRelease", "Release", "Release.gpg") \
                or "/by-hash/" in path:
            continue
        by_hash = f"{directory}/by-hash/SHA256/{sha}"
        if by_hash not in files and by_hash not in directories \
                and not any(parent in files for parent in _parents(by_hash)):
            files[by_hash] = sha
            directories.update(_parents(by_hash))
    return files


def _parents(path: str) -> list[str]:
    """``a/b/c`` -> ``["a/b", "a"]``."""
    parts = path.split("/")
    return ["/".join(parts[:end]) for end in range(len(parts) - 1, 0, -1)]


def _empty_destination(dest: Path) -> Path:
    """``dest`` made absolute, created when absent; StoreError unless it is absent or an
    empty directory (a symlink to one is refused: it is not followed)."""
    dest = Path(os.path.abspath(dest))
    try:
        info = os.lstat(dest)
    except FileNotFoundError:
        try:
            dest.mkdir(parents=True)
        except OSError as err:
            raise StoreError(f"{dest}: cannot be made: {err.strerror or err}") from None
        return dest
    if not stat.S_ISDIR(info.st_mode):
        raise StoreError(f"{dest}: exists and is not a directory: refused to export there")
    with os.scandir(dest) as entries:
        if any(True for _ in entries):
            raise StoreError(f"{dest}: is not empty: export writes only to a new or empty "
                             "directory")
    return dest


def _inside_creating(dest: Path, segments: list[str]) -> Path:
    """``dest/segments...`` with its directories made, each checked by
    ``results.paths.inside`` (one plain component, no symlinked directory on the way)."""
    directory = dest
    for segment in segments[:-1]:
        directory = inside(directory, segment)
        with contextlib.suppress(FileExistsError):
            directory.mkdir()
        if not stat.S_ISDIR(os.lstat(directory).st_mode):
            raise UnsafePath(f"{directory}: is not a directory")
    return inside(directory, segments[-1])


def _link_or_copy(blob: Path, target: Path) -> bool:
    """Hard-link ``blob`` at ``target`` (True), or copy it there when links cannot cross
    (False). An existing ``target`` is never replaced (StoreError)."""
    try:
        os.link(blob, target, follow_symlinks=False)
        return True
    except FileExistsError:
        raise StoreError(f"export: {target} already exists") from None
    except OSError as err:
        if err.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise StoreError(f"export: {target}: {err.strerror or err}") from None
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        out_fd = os.open(target, flags, 0o644)
    except FileExistsError:
        raise StoreError(f"export: {target} already exists") from None
    with os.fdopen(out_fd, "wb") as out, safefile.open_regular(blob) as source:
        shutil.copyfileobj(source, out, CHUNK)
        os.fchmod(out.fileno(), 0o644)  # whatever the umask: a web server serves it
    return False
