"""A run's record made a saved snapshot (``dib-matrix snapshot save``), and finding one.

A run leaves ``repository.json`` in its directory: every Release file, index and pool
file its cells were served, each teed into the store by the run's repository view.
That is not yet every package its images hold: dib's image caches and warm package
caches install packages nobody downloaded. So each line of each image's package
manifest (``name version arch``) is looked up in the run's own Packages indices
(:mod:`matrix.snapshot.packages`), and the file that stanza names is had from the
store, else from a local package source (the shared apt-cacher-ng cache), else from
the archive; each is checked against the index's SHA256 before it is kept. What still
cannot be had is saved as missing, and the result says "incomplete": a snapshot that
lacks files is never a silent success.

Everything read here is untrusted: ``repository.json`` and the manifests come from a
run directory, the indices from a mirror. Each is read bounded, and a path taken from
any of them is checked before it joins a directory.
"""

from __future__ import annotations

import datetime as dt
import http.client
import itertools
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matrix.snapshot.manifest import ArchiveState, FileRef, Snapshot, StoreError, read_json
from matrix.snapshot.packages import Package, choose, pool_files
from matrix.snapshot.store import Store
from results.archive import RunDir
from results.model import RunResults
from results.names import is_run_id
from results.paths import UnsafePath, inside
from results.reader import ResultsError, clip, error_line, read_results
from results.safefile import MiB, UnsafeFile, iter_lines, open_regular, read_regular
from results.sizes import format_size

REPOSITORY_LIMIT = 64 * MiB  # bytes of repository.json (a run's every pool file: ~1 MB)
MANIFEST_LIMIT = 8 * MiB  # bytes of an image's package manifest (ours: ~50 KB)
MANIFEST_LINES = 100_000  # packages of one image (a desktop image: ~3,000)
ALL_PACKAGE_LINES = 5_000_000  # of every image of a run (2,600 cells x 2,000 is ~5M)
SHOWN_NOTES = 20  # notes printed; the rest counted
WORD_LIMIT = 256  # characters of a package name, version or architecture
CHUNK = MiB
APT_CACHER_CACHE = "cache"  # apt-cacher-ng's files, under the directory it is given
SOURCE_DIRECTORIES = 256  # top directories of a package source tried (apt-cacher-ng: ~3)
FETCH_TIMEOUT = 30.0  # seconds a fetch from the archive may wait for data
FETCH_MIN_RATE = 64 * 1024  # bytes/s: slower than this, a file's fetch gives up
SHOWN_MISSING = 5  # missing files named in the result

ORIGIN_RUN = "run"  # saved by hand from a run (stays until ``snapshot rm``)
REPOSITORY = "repository"  # results.json's block naming the snapshots a run used


class SaveError(Exception):
    """A run that cannot be saved as a snapshot; one line naming the file and the problem."""


# ---------------------------------------------------------------- the run's record


def read_repository(path: Path) -> dict[str, ArchiveState]:
    """The archives of a run's ``repository.json`` (``{"archives": {uri: ArchiveState}}``),
    read bounded as strict JSON and validated by a manifest's rules; SaveError otherwise."""
    try:
        data = read_regular(path, REPOSITORY_LIMIT)
    except FileNotFoundError:
        raise SaveError(f"{path}: no repository.json: the run was made before runs recorded "
                        "their repository state, or did not get that far") from None
    except UnsafeFile as err:
        raise SaveError(str(err)) from None
    except OSError as err:
        raise SaveError(error_line(err)) from None
    try:
        document = read_json(data, str(path))
    except StoreError as err:
        raise SaveError(str(err)) from None
    if not isinstance(document, dict) or not isinstance(document.get("archives"), dict):
        raise SaveError(f"{path}: must be an object with an object 'archives'")
    archives = {}
    for uri, state in document["archives"].items():
        try:
            archives[uri] = ArchiveState.from_json(uri, state, f"{path}: archives[{clip(uri)}]")
        except StoreError as err:
            raise SaveError(str(err)) from None
    return archives


def read_run(run_dir: Path) -> RunResults:
    """The run's results (the validating reader); SaveError on one line otherwise."""
    try:
        return read_results(run_dir)
    except FileNotFoundError:
        raise SaveError(f"{run_dir}: no results.json: not a run directory") from None
    except (ResultsError, OSError) as err:
        raise SaveError(error_line(err)) from None


# ---------------------------------------------------------------- what the images hold


@dataclass(frozen=True)
class Image:
    cell: str  # the id of the cell that built it
    suite: str | None  # its release (bookworm), when provenance says
    packages: tuple[Package, ...]


def images_of(results: RunResults, run: RunDir, notes: list[str]) -> list[Image]:
    """The package lists of the run's images: each cell's manifest file (once, however
    many cells name it), else the versions its provenance recorded. At most
    ALL_PACKAGE_LINES in all, each package held once however many images list it."""
    images: list[Image] = []
    seen: set[str] = set()
    known: dict[Package, Package] = {}
    left = ALL_PACKAGE_LINES
    for cell in results.cells:
        if left <= 0:
            notes.append(f"the images' package lists hold more than {ALL_PACKAGE_LINES} "
                         f"lines in all: those from {cell.id} on were not read")
            break
        provenance = cell.provenance if isinstance(cell.provenance, dict) else {}
        manifest = provenance.get("packages_manifest")
        key = manifest if isinstance(manifest, str) else f"cell:{cell.id}"
        if key in seen:
            continue
        seen.add(key)
        packages = _manifest_packages(run, manifest, cell.id, notes)
        if packages is None:
            packages = _recorded_packages(provenance.get("packages"))
        packages = packages[:left]
        left -= len(packages)
        suite = provenance.get("suite")
        if packages:
            images.append(Image(cell.id, suite if isinstance(suite, str) else None,
                                tuple(known.setdefault(item, item) for item in packages)))
    return images


def _manifest_packages(run: RunDir, relative: object, cell: str,
                       notes: list[str]) -> list[Package] | None:
    if relative is None:
        return None
    path = run.recorded(relative)
    if path is None:
        notes.append(f"{cell}: its package manifest {clip(relative)} is not a file in the run")
        return None
    try:
        lines = list(itertools.islice(iter_lines(path, MANIFEST_LIMIT), MANIFEST_LINES))
    except (OSError, UnsafeFile) as err:
        notes.append(f"{cell}: package manifest unreadable: {error_line(err)}")
        return None
    packages = []
    for line in lines:
        words = line.decode("utf-8", "replace").split()
        if len(words) >= 2:
            packages.append(_package(words[0], words[1], words[2] if len(words) > 2 else ""))
    return packages


def _recorded_packages(recorded: object) -> list[Package]:
    """provenance.packages: ``name`` or ``name:arch`` -> version."""
    if not isinstance(recorded, dict):
        return []
    packages = []
    for label, version in list(recorded.items())[:MANIFEST_LINES]:
        if isinstance(label, str) and isinstance(version, str):
            name, _, arch = label.partition(":")  # a Debian package name holds no ':'
            packages.append(_package(name, version, arch))
    return packages


def _package(name: str, version: str, arch: str) -> Package:
    return Package(name[:WORD_LIMIT], version[:WORD_LIMIT], arch[:WORD_LIMIT])


# ---------------------------------------------------------------- having the files


class Obtainer:
    """Puts the files a snapshot names into the store: from the store itself, a package
    source directory, or the archive, each verified by its SHA256 and size."""

    def __init__(self, store: Store, sources: Iterable[Path], fetch: bool = True) -> None:
        self.store = store
        self.sources = [place for source in sources for place in _source_roots(Path(source))]
        self.fetch = fetch
        self.unreachable: dict[str, str] = {}  # archive uri -> why it is not asked again
        self.counts: Counter[str] = Counter()  # how each file was had
        self._opener = urllib.request.build_opener()  # proxies from the environment
        self._tops: dict[Path, list[str]] = {}

    def obtain(self, uri: str, path: str, ref: FileRef) -> bool:
        """Whether ``ref``'s blob is in the store now."""
        if self.store.has(ref.sha256):
            how = "store"
        elif self._from_sources(uri, path, ref):
            how = "package cache"
        elif self._from_archive(uri, path, ref):
            how = "archive"
        else:
            return False
        self.counts[how] += 1
        return True

    def _from_sources(self, uri: str, path: str, ref: FileRef) -> bool:
        for candidate in self._candidates(uri, path):
            try:
                with open_regular(candidate) as stream:
                    if os.fstat(stream.fileno()).st_size != ref.size:
                        continue
                    self.store.put_stream(iter(lambda: stream.read(CHUNK), b""), ref.sha256,
                                          limit=ref.size)
                return True
            except (OSError, UnsafeFile, StoreError):  # absent, not a file, other content
                continue
        return False

    def _candidates(self, uri: str, path: str) -> Iterator[Path]:
        """Where a package source may keep ``path`` of archive ``uri``: under the archive's
        path (``debian/pool/...``), under ``<host>/<path>`` (apt-cacher-ng's own layout),
        or under any top directory (apt-cacher-ng's shared names: ``debrep/pool/...``)."""
        split = urllib.parse.urlsplit(uri)
        prefix = [part for part in split.path.split("/") if part]
        parts = path.split("/")
        for source in self.sources:
            tops = [prefix, [split.netloc, *prefix], *([top] for top in self._top_dirs(source))]
            for top in tops:
                try:
                    yield inside(source, *top, *parts)
                except UnsafePath:
                    continue

    def _top_dirs(self, source: Path) -> list[str]:
        if source not in self._tops:
            try:
                with os.scandir(source) as entries:
                    names = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
            except OSError:
                names = []
            self._tops[source] = sorted(names)[:SOURCE_DIRECTORIES]
        return self._tops[source]

    def _from_archive(self, uri: str, path: str, ref: FileRef) -> bool:
        if not self.fetch or uri in self.unreachable:
            return False
        url = f"{uri}/{urllib.parse.quote(path)}"
        deadline = time.monotonic() + FETCH_TIMEOUT + ref.size / FETCH_MIN_RATE
        try:
            with self._opener.open(url, timeout=FETCH_TIMEOUT) as response:
                self.store.put_stream(_body(response, deadline), ref.sha256, limit=ref.size)
            return True
        except urllib.error.HTTPError as err:
            if err.code >= 500:  # the mirror (or a proxy before it) is down: ask no more
                self.unreachable[uri] = f"HTTP {err.code} {err.reason}"
            return False
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            self.unreachable[uri] = str(getattr(err, "reason", err)) or type(err).__name__
            return False
        except (StoreError, _TooSlow):  # other content than the index says, or a trickle
            return False


def _source_roots(source: Path) -> list[Path]:
    """Where a package source keeps files: the directory, and for apt-cacher-ng's own
    directory (``conf/``, ``cache/``, ``log/``) its ``cache/`` too."""
    cache = source / APT_CACHER_CACHE
    return [source, cache] if cache.is_dir() and not cache.is_symlink() else [source]


class _TooSlow(Exception):
    pass


def _body(response: Any, deadline: float) -> Iterator[bytes]:
    while chunk := response.read(CHUNK):
        if time.monotonic() > deadline:
            raise _TooSlow()
        yield chunk


# ---------------------------------------------------------------- saving


@dataclass
class SaveResult:
    snapshot: Snapshot  # as saved: files it could not keep are in its ``missing``
    counts: Counter[str]  # how the files were had: store, package cache, archive
    added: int  # pool files kept that the run did not download: its images' packages
    unindexed: dict[str, int] = field(default_factory=dict)  # cell -> packages in no index
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.snapshot.name

    @property
    def missing(self) -> list[str]:
        return [f"{uri}/{path}" for uri, paths in sorted(self.snapshot.missing.items())
                for path in paths]

    def summary(self) -> str:
        """One line: files, bytes, and "incomplete: N files" when it lacks some."""
        files = [ref for archive in self.snapshot.archives.values()
                 for ref in archive.files.values()]
        pool = sum(path.startswith("pool/") for archive in self.snapshot.archives.values()
                   for path in archive.files)
        text = (f"{len(files)} files, {format_size(sum(ref.size for ref in files))} "
                f"({pool} pool files, {self.added} of them only in the images' package lists)")
        return text + (f"; incomplete: {len(self.missing)} files" if self.missing else "")

    def lines(self) -> list[str]:
        """What ``snapshot save`` prints: the snapshot, where its files came from, and
        what it lacks."""
        snap = self.snapshot
        lines = [f"saved snapshot {snap.name} from run {snap.run_id}: {self.summary()}",
                 "files had from: " + (", ".join(f"the {how} {count}" for how, count in
                                                 sorted(self.counts.items())) or "nowhere")]
        notes = self.notes + [f"{cell}: {count} packages of its image are in none of the "
                              "run's Packages indices (not kept)"
                              for cell, count in sorted(self.unindexed.items())]
        lines += [f"note: {note}" for note in notes[:SHOWN_NOTES]]
        if len(notes) > SHOWN_NOTES:
            lines.append(f"note: ... and {len(notes) - SHOWN_NOTES} more notes")
        missing = self.missing
        if missing:
            shown = ", ".join(missing[:SHOWN_MISSING])
            extra = len(missing) - SHOWN_MISSING
            more = f" and {extra} more" if extra > 0 else ""
            lines.append(f"incomplete: {len(missing)} files could not be had: {shown}{more}")
        return lines


def save_run(store: Store, run_dir: Path, name: str | None = None, origin: str = ORIGIN_RUN,
             package_sources: Iterable[Path] = (), fetch: bool = True) -> SaveResult:
    """Save the run in ``run_dir`` as snapshot ``name`` (default: its run id). Saving the
    same run again gives the same manifest (its time aside) and stores nothing new; a
    name another run's snapshot has is refused (SaveError)."""
    run = RunDir(run_dir)
    results = read_run(run_dir)
    name = results.run_id if name is None else name
    if not is_run_id(name):
        raise SaveError(f"{clip(name)} is not a snapshot name (letters, digits, '.', '_', "
                        "'-'; at most 128)")
    _check_name_free(store, name, results.run_id)
    archives = read_repository(run.repository_file)
    notes: list[str] = []
    obtainer = Obtainer(store, package_sources, fetch)
    # What the run was served first: the indices among them are read next.
    for uri, path in sorted((uri, path) for uri, archive in archives.items()
                            for path in archive.files):
        obtainer.obtain(uri, path, archives[uri].files[path])
    added, unindexed = _add_image_packages(store, archives, images_of(results, run, notes),
                                           notes)
    for uri, path in added:
        obtainer.obtain(uri, path, archives[uri].files[path])
    notes += [f"{uri}: not asked for more files: {why}"
              for uri, why in sorted(obtainer.unreachable.items())]
    snapshot = Snapshot(name, dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                        results.run_id, archives, origin)
    saved = store.save(snapshot, allow_missing=True)  # what it lacks is recorded, and said
    kept = sum(path in saved.archives[uri].files for uri, path in added)
    return SaveResult(saved, obtainer.counts, kept, unindexed, notes)


def _check_name_free(store: Store, name: str, run_id: str) -> None:
    if name not in store.names():
        return
    try:
        existing = store.load(name)
    except StoreError as err:
        raise SaveError(f"snapshot {name} exists and cannot be read ({err}): remove it "
                        "first (dib-matrix snapshot rm)") from None
    if existing.run_id != run_id:
        raise SaveError(f"snapshot {name} exists, saved from run {existing.run_id}: choose "
                        "another name or remove it first (dib-matrix snapshot rm)")


def _add_image_packages(store: Store, archives: dict[str, ArchiveState], images: list[Image],
                        notes: list[str]) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """Add to ``archives`` the pool file of each image package the run's indices list;
    the (archive, path) of each added, and per cell how many packages no index lists."""
    names = {package.name for image in images for package in image.packages}
    candidates = pool_files(store, archives, names, notes) if names else {}
    added: list[tuple[str, str]] = []
    unindexed: dict[str, int] = {}
    for image in images:
        lost = 0
        for package in image.packages:
            entry = choose(candidates.get(package.name, ()), package, image.suite)
            if entry is None:
                lost += 1
                continue
            files = archives[entry.archive].files
            if entry.path not in files:
                files[entry.path] = FileRef(entry.sha256, entry.size)
                added.append((entry.archive, entry.path))
        if lost == len(image.packages):
            notes.append(f"{image.cell}: none of its {lost} packages is in the run's Packages "
                         "indices (an image of another archive, or of none the run read)")
        elif lost:
            unindexed[image.cell] = lost
    return added, unindexed


# ---------------------------------------------------------------- finding a snapshot


def snapshot_for(store: Store, name_or_run: str) -> Snapshot:
    """The snapshot a name gives: a snapshot's name, else the newest snapshot recorded
    from that run id, else the snapshot a run directory's results name (the one it was
    pinned to, else the one recorded from it). StoreError listing what exists otherwise."""
    if is_run_id(name_or_run) and name_or_run in store.names():
        return store.load(name_or_run)
    from_run = [snap for snap in store.snapshots() if snap.run_id == name_or_run]
    if from_run:
        return from_run[0]
    path = Path(name_or_run)
    if name_or_run and (os.sep in name_or_run or path.is_dir()):
        return _snapshot_of_run(store, path)
    raise StoreError(f"no snapshot {clip(name_or_run)} in {store.root} (neither a name nor "
                     f"a run id); {_listing(store)}")


def _snapshot_of_run(store: Store, path: Path) -> Snapshot:
    try:
        results = read_results(path)
    except (ResultsError, OSError) as err:
        raise StoreError(f"{clip(str(path))}: not a snapshot, and not a run: "
                         f"{error_line(err)}") from None
    for name in names_in(results):
        if name in store.names():
            return store.load(name)
    from_run = [snap for snap in store.snapshots() if snap.run_id == results.run_id]
    if from_run:
        return from_run[0]
    raise StoreError(f"run {results.run_id} names no snapshot of {store.root}; "
                     f"{_listing(store)}")


def names_in(results: RunResults) -> list[str]:
    """The snapshots a run's results name: the one it was pinned to, the one recorded
    from it (``repository.snapshot``, ``repository.recorded``)."""
    block = results.repository if isinstance(results.repository, dict) else {}
    return [value for value in (block.get("snapshot"), block.get("recorded"))
            if is_run_id(value)]


def _listing(store: Store) -> str:
    names = store.names()
    if not names:
        return "the store holds no snapshot"
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    return f"snapshots: {shown}"
