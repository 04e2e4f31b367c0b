"""The snapshot store: content-addressed files and the manifests that name them.

Files are kept once, by their sha256, whatever snapshot or path names them, so thirty
nightly snapshots cost little more than the packages that changed::

    <root>/blobs/sha256/<first 2 hex>/<64 hex>   the files, read-only
    <root>/manifests/<name>.json                 one snapshot (JSON, written atomically)
    <root>/tmp/                                  partial writes, renamed into blobs when verified
    <root>/lock                                  flock held by save, remove and collect

A blob is written to ``tmp/`` under a random name, hashed while it is written, checked
and renamed into place: a reader never sees half a blob, and two writers of the same
blob rename identical files over each other. Reads take no lock; ``collect`` spares
blobs younger than its grace, so a run storing blobs for a manifest it has not saved
yet does not lose them.

What a manifest says and how it is checked is :mod:`matrix.snapshot.manifest`'s; writing
a snapshot out in Debian's archive layout is :mod:`matrix.snapshot.export`'s.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from matrix.snapshot.manifest import (
    MAX_BLOB,
    Snapshot,
    StoreError,
    SuiteState,
    is_sha256,
    parse_manifest,
    parse_time,
    validated,
)
from results import safefile
from results.locks import take_exclusive
from results.names import is_run_id
from results.reader import clip
from results.store import write_atomically

LOG = logging.getLogger("dib-matrix")

DEFAULT_ROOT = Path.home() / ".cache" / "dib-matrix" / "snapshots"
MiB = 1 << 20
MAX_MANIFEST = 64 * MiB
LOCK_WAIT = 30.0  # seconds save/remove/collect wait for another holder
STALE_TMP_SECONDS = 86400.0  # a partial write older than this was abandoned
CHUNK = MiB


class HashMismatch(StoreError):
    """A blob whose content is not the sha256 it was expected to have."""


class BlobTooLarge(StoreError):
    """A blob larger than the limit its writer gave."""


@dataclass(frozen=True)
class Blob:
    sha256: str
    size: int


@dataclass(frozen=True)
class CollectStats:
    blobs: int = 0  # blobs removed
    bytes: int = 0  # their bytes
    temporaries: int = 0  # abandoned partial writes removed
    temporary_bytes: int = 0


@dataclass(frozen=True)
class Usage:
    files: int  # distinct blobs of the snapshot present in the store
    bytes: int  # their bytes
    unique_bytes: int  # bytes of blobs no other snapshot names: what removing it frees
    missing: int = 0  # blobs it names that the store lacks


class Store:
    """The snapshot store under ``root`` (created on the first write)."""

    def __init__(self, root: Path = DEFAULT_ROOT) -> None:
        self.root = Path(root)
        self.blobs_dir = self.root / "blobs" / "sha256"
        self.manifests_dir = self.root / "manifests"
        self.tmp_dir = self.root / "tmp"

    # ---- blobs

    def blob_path(self, sha256: str) -> Path:
        if not is_sha256(sha256):
            raise ValueError(f"{clip(sha256)} is not a sha256 (64 lower-case hex digits)")
        return self.blobs_dir / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.blob_path(sha256).is_file()

    def put_stream(self, chunks: Iterable[bytes], expected_sha256: str | None = None,
                   limit: int = MAX_BLOB) -> Blob:
        """Store the concatenated ``chunks``: written to ``tmp/``, hashed, checked against
        ``expected_sha256`` (HashMismatch) and ``limit`` (BlobTooLarge), renamed into place.
        A blob the store has already is kept as it is (its time refreshed for collect)."""
        if expected_sha256 is not None:
            self.blob_path(expected_sha256)  # ValueError before any work
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(prefix="blob.", dir=self.tmp_dir)
        temp = Path(temp_name)
        try:
            with os.fdopen(handle, "wb") as out:
                blob = _write_hashed(out, chunks, limit, expected_sha256)
                out.flush()
                os.fchmod(out.fileno(), 0o444)
                os.fsync(out.fileno())
            self._place(temp, blob.sha256)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return blob

    def put_bytes(self, data: bytes, expected_sha256: str | None = None) -> Blob:
        return self.put_stream([data], expected_sha256)

    def put_file(self, path: Path, expected_sha256: str | None = None) -> Blob:
        """Store a copy of the regular file ``path`` (StoreError for anything else)."""
        try:
            with safefile.open_regular(path) as source:
                return self.put_stream(iter(lambda: source.read(CHUNK), b""), expected_sha256)
        except safefile.UnsafeFile as err:
            raise StoreError(str(err)) from None

    def open_blob(self, sha256: str) -> BinaryIO:
        path = self.blob_path(sha256)
        try:
            return safefile.open_regular(path)
        except FileNotFoundError:
            raise StoreError(f"{path}: blob {sha256} is not in the store") from None
        except safefile.UnsafeFile as err:
            raise StoreError(str(err)) from None

    def _place(self, temp: Path, sha256: str) -> None:
        final = self.blob_path(sha256)
        with contextlib.suppress(FileNotFoundError):
            os.utime(final)  # have it already: keep its inode (exports link to it)
            temp.unlink()
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp, final)  # a concurrent writer of the same blob: identical content

    # ---- manifests

    def manifest_path(self, name: str) -> Path:
        if not is_run_id(name):
            raise StoreError(f"{clip(name)} is not a snapshot name (letters, digits, '.', '_', "
                             "'-'; at most 128)")
        return self.manifests_dir / f"{name}.json"

    def names(self) -> list[str]:
        try:
            entries = list(os.scandir(self.manifests_dir))
        except FileNotFoundError:
            return []
        return sorted(entry.name[:-len(".json")] for entry in entries
                      if entry.name.endswith(".json") and is_run_id(entry.name[:-len(".json")]))

    def load(self, name: str) -> Snapshot:
        path = self.manifest_path(name)
        try:
            data = safefile.read_regular(path, MAX_MANIFEST)
        except FileNotFoundError:
            raise StoreError(f"no snapshot named {name} in {self.root}") from None
        except safefile.UnsafeFile as err:
            raise StoreError(str(err)) from None
        except OSError as err:
            raise StoreError(f"{path}: {err.strerror or err}") from None
        snapshot = parse_manifest(data, str(path))
        if snapshot.name != name:
            raise StoreError(f"{path}: name: {clip(snapshot.name)} is not the file's name")
        return snapshot

    def snapshots(self) -> list[Snapshot]:
        """Every readable snapshot, newest first; a bad manifest is skipped with a warning."""
        found = []
        for name in self.names():
            try:
                found.append(self.load(name))
            except StoreError as err:
                LOG.warning("snapshot %s skipped: %s", name, err)
        return sorted(found, key=lambda snap: (_sort_time(snap.created), snap.name), reverse=True)

    def save(self, snapshot: Snapshot, allow_missing: bool = False) -> Snapshot:
        """Write ``snapshot``'s manifest atomically; what was written.

        Every blob it names must be in the store (StoreError listing the first few),
        unless ``allow_missing``: then a file whose blob is absent moves from the
        archive's ``files`` to ``missing`` (the manifest records what it lacks)."""
        checked = validated(snapshot)
        with self._locked():
            if allow_missing:
                checked = self._without_missing(checked)
            absent = sorted(sha for sha in checked.blobs() if not self.has(sha))
            if absent:
                listed = ", ".join(absent[:3]) + (" ..." if len(absent) > 3 else "")
                raise StoreError(f"snapshot {checked.name}: {len(absent)} of its files are not "
                                 f"in the store {self.root}: {listed}")
            path = self.manifest_path(checked.name)
            try:
                self.manifests_dir.mkdir(parents=True, exist_ok=True)
                write_atomically(path, json.dumps(checked.to_json(), indent=1, sort_keys=True)
                                 + "\n")
            except OSError as err:
                raise StoreError(f"{path}: not written: {err.strerror or err}") from None
        return checked

    def _without_missing(self, snapshot: Snapshot) -> Snapshot:
        missing = {uri: set(paths) for uri, paths in snapshot.missing.items()}
        for uri, archive in snapshot.archives.items():
            gone = [path for path, ref in archive.files.items() if not self.has(ref.sha256)]
            for path in gone:
                del archive.files[path]
                missing.setdefault(uri, set()).add(path)
            for suite in archive.suites.values():
                _forget_absent_refs(suite, self.has, missing.setdefault(uri, set()))
        snapshot.missing = {uri: sorted(paths) for uri, paths in missing.items() if paths}
        return snapshot

    def remove(self, name: str) -> None:
        path = self.manifest_path(name)
        with self._locked():
            try:
                path.unlink()
            except FileNotFoundError:
                raise StoreError(f"no snapshot named {name} in {self.root}") from None
            except OSError as err:
                raise StoreError(f"{path}: not removed: {err.strerror or err}") from None

    # ---- space

    def collect(self, grace_seconds: float = 7 * 86400) -> CollectStats:
        """Remove blobs no manifest names that are older than ``grace_seconds``, and
        partial writes older than a day. A manifest that cannot be read stops it: what
        it names is unknown (remove it with :meth:`remove`)."""
        with self._locked():
            named: set[str] = set()
            for name in self.names():
                try:
                    named |= self.load(name).blobs()
                except StoreError as err:
                    raise StoreError(f"nothing collected: {err}") from None
            now = time.time()
            blobs, blob_bytes = self._remove_old(self._blob_files(), now - grace_seconds, named)
            temps, temp_bytes = self._remove_old(_regular_files(self.tmp_dir),
                                                 now - STALE_TMP_SECONDS, set())
        return CollectStats(blobs, blob_bytes, temps, temp_bytes)

    def _blob_files(self) -> Iterator[os.DirEntry[str]]:
        for fan in _entries(self.blobs_dir):
            if fan.is_dir(follow_symlinks=False) and re.fullmatch(r"[0-9a-f]{2}", fan.name):
                for entry in _regular_files(Path(fan.path)):
                    if is_sha256(entry.name) and entry.name.startswith(fan.name):
                        yield entry

    @staticmethod
    def _remove_old(entries: Iterable[os.DirEntry[str]], before: float,
                    keep: set[str]) -> tuple[int, int]:
        count = size = 0
        for entry in entries:
            if entry.name in keep:
                continue
            info = os.lstat(entry.path)  # fresh: a writer may have refreshed it just now
            if info.st_mtime >= before:
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                count += 1
                size += info.st_size
        return count, size

    def usage(self, name: str) -> Usage:
        """What snapshot ``name`` costs (StoreError when it cannot be read)."""
        snapshot = self.load(name)
        others = [snap.blobs() for snap in self.snapshots() if snap.name != name]
        return self._usage(snapshot.blobs(), set().union(*others))

    def usages(self) -> dict[str, Usage]:
        """:meth:`usage` of every readable snapshot, each manifest read once (a listing
        of thirty snapshots would read thirty times thirty otherwise)."""
        named = {snap.name: snap.blobs() for snap in self.snapshots()}
        holders: dict[str, int] = {}
        for blobs in named.values():
            for sha in blobs:
                holders[sha] = holders.get(sha, 0) + 1
        return {name: self._usage(blobs, {sha for sha in blobs if holders[sha] > 1})
                for name, blobs in named.items()}

    def _usage(self, blobs: set[str], shared: set[str]) -> Usage:
        files = total = unique = absent = 0
        for sha in blobs:
            try:
                size = self.blob_path(sha).stat().st_size
            except FileNotFoundError:
                absent += 1
                continue
            files += 1
            total += size
            unique += 0 if sha in shared else size
        return Usage(files, total, unique, absent)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock = self.root / "lock"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise StoreError(f"{lock}: cannot be opened: {err.strerror or err}") from None
        try:
            if not take_exclusive(fd, LOCK_WAIT):
                raise StoreError(f"snapshot store is busy: another process holds "
                                 f"{self.root / 'lock'} (waited {LOCK_WAIT:.0f} s)")
            yield
        finally:
            os.close(fd)


def _write_hashed(out: BinaryIO, chunks: Iterable[bytes], limit: int,
                  expected: str | None) -> Blob:
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise BlobTooLarge(f"a file of more than {limit} bytes refused "
                               f"(expected {expected or 'any content'})")
        digest.update(chunk)
        out.write(chunk)
    sha = digest.hexdigest()
    if expected is not None and sha != expected:
        raise HashMismatch(f"content of sha256 {sha} ({size} bytes) where {expected} was "
                           "expected")
    return Blob(sha, size)


def _forget_absent_refs(suite: SuiteState, has: Any, missing: set[str]) -> None:
    """Indices whose blob is absent leave ``suite.indices`` for ``missing``."""
    for path, sha in list(suite.indices.items()):
        if not has(sha):
            del suite.indices[path]
            missing.add(path)
    for attribute, name in (("inrelease", "InRelease"), ("release", "Release"),
                            ("release_gpg", "Release.gpg")):
        sha = getattr(suite, attribute)
        if sha is not None and not has(sha):
            setattr(suite, attribute, None)
            missing.add(f"dists/{suite.suite}/{name}")


def _entries(directory: Path) -> list[os.DirEntry[str]]:
    try:
        return list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _regular_files(directory: Path) -> Iterator[os.DirEntry[str]]:
    return (entry for entry in _entries(directory) if entry.is_file(follow_symlinks=False))


def _sort_time(created: str) -> float:
    moment = parse_time(created)
    return moment.timestamp() if moment is not None else 0.0
