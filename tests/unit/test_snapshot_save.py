"""Saving a run as a snapshot (``matrix.snapshot.save``) and which snapshots gc drops
(``matrix.snapshot.retain``).

Hostile classes covered: a repository.json that is not strict JSON, too large, of the
wrong shape or with paths and URIs that leave their place (each one line, SaveError);
package manifests and Packages stanzas whose paths or hashes cannot be trusted (never
followed, never kept); package-cache files with other content than the index says
(never kept); an archive that does not answer (asked once); a name another run's
snapshot has; the gc policy's protections (hand-saved snapshots, runs left naming one,
snapshots of other output directories).
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import http.server
import json
import lzma
import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from matrix.snapshot import packages, retain, save
from matrix.snapshot.manifest import ArchiveState, FileRef, Snapshot, StoreError
from matrix.snapshot.retain import Drop, SnapshotEntry, doomed
from matrix.snapshot.save import SaveError, read_repository, save_run, snapshot_for
from matrix.snapshot.store import Store
from results.archive import OutDir
from tests.archivefactory import run_id, stored_run
from tests.hostile import golden_copy

RUN_ID = "20250601T020000Z-a1b2c3"  # the golden run's
MANIFEST = "images/debian-bookworm/debian-bookworm.packages"
BUILD_CELL = "debian-bookworm.debian-bookworm"
INDEX = "dists/bookworm/main/binary-amd64/Packages.xz"


@dataclass(frozen=True)
class Deb:
    name: str
    version: str
    arch: str

    @property
    def path(self) -> str:
        return f"pool/main/{self.name[0]}/{self.name}/{self.name}_{self.version}_{self.arch}.deb"

    @property
    def content(self) -> bytes:
        return f"!<arch> {self.name} {self.version} {self.arch}\n".encode() * 40

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    def ref(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": len(self.content)}

    def stanza(self, **override: str) -> str:
        fields = {"Package": self.name, "Version": self.version, "Architecture": self.arch,
                  "Maintainer": "Nobody <n@example.org>", "Filename": self.path,
                  "Size": str(len(self.content)), "SHA256": self.sha256,
                  "Description": "a package\n more text"} | override
        return "".join(f"{key}: {value}\n" for key, value in fields.items())

    def line(self) -> str:
        return f"{self.name} {self.version} {self.arch}"


SERVED = Deb("hello", "2.10-3", "amd64")  # downloaded by the run: in repository.json
CACHED = Deb("libfoo1", "1.2-1", "amd64")  # in the package cache only
FETCHED = Deb("base-files", "12.4", "all")  # on the archive only
LOST = Deb("zlib1g", "1.2.13", "amd64")  # nowhere


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Archive:
    """A fake run of one archive: its store, its run directory, its package cache."""

    tmp: Path
    uri: str
    debs: list[Deb] = field(default_factory=lambda: [SERVED, CACHED, FETCHED, LOST])
    image: list[str] = field(default_factory=list)  # the image's manifest lines

    def __post_init__(self) -> None:
        self.store = Store(self.tmp / "store")
        self.cache = self.tmp / "acng"
        self.out = self.tmp / "out"
        self.image = self.image or [deb.line() for deb in self.debs]

    def index_bytes(self, stanzas: list[str] | None = None) -> bytes:
        text = "\n".join(stanzas if stanzas is not None else [d.stanza() for d in self.debs])
        return lzma.compress(text.encode())

    def repository(self, index: bytes) -> dict[str, Any]:
        inrelease = b"-----BEGIN PGP SIGNED MESSAGE-----\nSuite: bookworm\n"
        self.store.put_bytes(inrelease)
        self.store.put_bytes(index)
        self.store.put_bytes(SERVED.content)
        suite = {"components": ["main"], "architectures": ["amd64"], "inrelease": sha(inrelease),
                 "release": None, "release_gpg": None, "date": "Sat, 31 May 2025 20:00:00 UTC",
                 "valid_until": None, "indices": {INDEX: sha(index)}}
        files = {"dists/bookworm/InRelease": {"sha256": sha(inrelease), "size": len(inrelease)},
                 INDEX: {"sha256": sha(index), "size": len(index)},
                 SERVED.path: SERVED.ref()}
        return {"archives": {self.uri: {"suites": {"bookworm": suite}, "files": files}}}

    def run(self, index: bytes | None = None, repository: Any = None,
            provenance: dict[str, Any] | None = None, run_results: Any = None) -> Path:
        """The run directory: the golden run with a build cell's image manifest and a
        repository.json (``repository``: its document, or raw bytes)."""
        def edit(document: dict[str, Any]) -> None:
            for cell in document["cells"]:
                if cell["id"] == BUILD_CELL:
                    cell["provenance"] = provenance if provenance is not None else {
                        "distro": "debian", "suite": "bookworm", "packages_manifest": MANIFEST,
                        "packages": {}}
            if run_results:
                run_results(document)

        run_dir = golden_copy(self.out / RUN_ID, edit)
        manifest = run_dir / MANIFEST
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_text("".join(line + "\n" for line in self.image))
        document = repository if repository is not None else self.repository(
            index if index is not None else self.index_bytes())
        raw = document if isinstance(document, bytes) else json.dumps(document).encode()
        (run_dir / "repository.json").write_bytes(raw)
        return run_dir

    def cache_deb(self, deb: Deb, content: bytes | None = None, top: str = "debrep") -> Path:
        path = self.cache / top / deb.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(deb.content if content is None else content)
        return path


@contextlib.contextmanager
def serving(root: Path) -> Iterator[tuple[str, list[str]]]:
    """``root`` on a loopback http.server: its URL and the paths asked for."""
    asked: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            asked.append(self.path)

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def closed_port_uri() -> str:
    return "http://127.0.0.1:9/debian"  # discard: nothing listens, refused at once


def blob_count(store: Store) -> int:
    return sum(1 for path in store.blobs_dir.rglob("*") if path.is_file())


# ---------------------------------------------------------------- saving


def test_save_keeps_what_the_run_read_and_what_its_images_hold(tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "debian" / FETCHED.path).parent.mkdir(parents=True)
    (mirror / "debian" / FETCHED.path).write_bytes(FETCHED.content)
    with serving(mirror) as (url, asked):
        fake = Archive(tmp_path, f"{url}/debian")
        run_dir = fake.run()
        fake.cache_deb(CACHED)
        result = save_run(fake.store, run_dir, package_sources=[fake.cache])
    snap = fake.store.load(RUN_ID)
    files = snap.archives[fake.uri].files
    assert {SERVED.path, CACHED.path, FETCHED.path} <= set(files)
    assert LOST.path not in files
    assert snap.missing == {fake.uri: [LOST.path]}
    assert snap.origin == "run" and snap.run_id == RUN_ID
    assert result.counts == {"store": 3, "package cache": 1, "archive": 1}
    assert result.added == 2  # CACHED and FETCHED: LOST was listed, not kept
    for deb in (SERVED, CACHED, FETCHED):
        assert fake.store.blob_path(deb.sha256).read_bytes() == deb.content
    assert any(line.startswith("incomplete: 1 files") and LOST.path in line
               for line in result.lines())
    assert f"/debian/{LOST.path}" in asked  # asked for, found nowhere


def test_saving_the_same_run_again_gives_the_same_manifest_and_no_new_blob(tmp_path):
    fake = Archive(tmp_path, closed_port_uri())
    run_dir = fake.run()
    fake.cache_deb(CACHED)
    first = save_run(fake.store, run_dir, package_sources=[fake.cache]).snapshot.to_json()
    blobs = blob_count(fake.store)
    second = save_run(fake.store, run_dir, package_sources=[fake.cache]).snapshot.to_json()
    assert blob_count(fake.store) == blobs
    first.pop("created"), second.pop("created")
    assert first == second


def test_a_complete_save_says_nothing_is_missing(tmp_path):
    fake = Archive(tmp_path, closed_port_uri(), debs=[SERVED, CACHED])
    run_dir = fake.run()
    fake.cache_deb(CACHED, top="deb.example.org")  # any top directory of the cache
    result = save_run(fake.store, run_dir, package_sources=[fake.cache])
    assert result.missing == [] and result.snapshot.missing == {}
    assert not any("incomplete" in line for line in result.lines())


@pytest.mark.parametrize("where", ["prefix", "host", "top", "apt-cacher-ng root"])
def test_the_package_cache_is_searched_in_each_layout(tmp_path, where):
    fake = Archive(tmp_path, "http://127.0.0.1:9/debian", debs=[CACHED])
    run_dir = fake.run()
    top = {"prefix": "debian", "host": "127.0.0.1:9/debian", "top": "debrep",
           "apt-cacher-ng root": "cache/debrep"}[where]
    fake.cache_deb(CACHED, top=top)
    result = save_run(fake.store, run_dir, package_sources=[fake.cache], fetch=False)
    assert result.counts["package cache"] == 1 and result.missing == []


def test_a_cached_file_with_other_content_is_never_kept(tmp_path):
    fake = Archive(tmp_path, closed_port_uri(), debs=[CACHED])
    run_dir = fake.run()
    fake.cache_deb(CACHED, content=b"x" * len(CACHED.content))  # same size, other bytes
    result = save_run(fake.store, run_dir, package_sources=[fake.cache])
    assert not fake.store.has(sha(b"x" * len(CACHED.content)))
    assert result.missing == [f"{fake.uri}/{CACHED.path}"]


def test_a_fifo_or_a_symlink_out_of_the_cache_is_not_read(tmp_path):
    fake = Archive(tmp_path, closed_port_uri(), debs=[CACHED])
    run_dir = fake.run()
    place = fake.cache / "debian" / CACHED.path
    place.parent.mkdir(parents=True)
    os.mkfifo(place)
    outside = tmp_path / "elsewhere"
    (outside / "pool").mkdir(parents=True)
    (fake.cache / "debrep").symlink_to(outside)  # a top directory that leads out
    result = save_run(fake.store, run_dir, package_sources=[fake.cache])
    assert result.missing == [f"{fake.uri}/{CACHED.path}"]


def test_an_unreachable_archive_is_asked_once(tmp_path):
    many = [Deb(f"pkg{number}", "1.0", "amd64") for number in range(5)]
    fake = Archive(tmp_path, closed_port_uri(), debs=many)
    result = save_run(fake.store, fake.run())
    assert len(result.missing) == 5
    assert any("not asked for more files" in note for note in result.notes)


def test_an_archive_answering_5xx_is_asked_once(tmp_path):
    asked = []

    class Failing(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_error(502, "Mirror unreachable")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        many = [Deb(f"pkg{number}", "1.0", "amd64") for number in range(4)]
        fake = Archive(tmp_path, f"http://127.0.0.1:{server.server_address[1]}/debian",
                       debs=many)
        result = save_run(fake.store, fake.run())
    finally:
        server.shutdown()
        server.server_close()
    assert len(asked) == 1 and len(result.missing) == 4


def test_arch_all_and_the_images_own_suite_are_matched(tmp_path):
    both = [Deb("tzdata", "2025a", "all"), Deb("libc6", "2.36", "amd64")]
    fake = Archive(tmp_path, closed_port_uri(), debs=both,
                   image=["tzdata 2025a amd64", "libc6 2.36 amd64", "libc6 2.36 i386"])
    for deb in both:
        fake.cache_deb(deb)
    result = save_run(fake.store, fake.run(), package_sources=[fake.cache])
    files = result.snapshot.archives[fake.uri].files
    assert both[0].path in files and both[1].path in files
    assert result.unindexed == {BUILD_CELL: 1}  # libc6:i386: no i386 index was read


def test_recorded_versions_serve_when_the_manifest_is_gone(tmp_path):
    fake = Archive(tmp_path, closed_port_uri(), debs=[CACHED])
    provenance = {"suite": "bookworm", "packages": {f"{CACHED.name}:amd64": CACHED.version,
                                                    "other:i386": 7}}
    run_dir = fake.run(provenance=provenance)
    fake.cache_deb(CACHED)
    result = save_run(fake.store, run_dir, package_sources=[fake.cache])
    assert CACHED.path in result.snapshot.archives[fake.uri].files


def test_a_manifest_path_out_of_the_run_is_refused_by_the_reader(tmp_path):
    fake = Archive(tmp_path, closed_port_uri(), debs=[CACHED])
    run_dir = fake.run(provenance={"packages_manifest": "../../../etc/passwd"})
    with pytest.raises(SaveError, match="packages_manifest"):
        save_run(fake.store, run_dir)


@pytest.mark.parametrize("kind", ["symlink out", "fifo", "directory", "absent", "not a dict"])
def test_a_manifest_that_is_not_a_file_of_the_run_is_not_read(tmp_path, kind):
    fake = Archive(tmp_path, closed_port_uri(), debs=[CACHED])
    odd = "images/debian-bookworm/odd.packages"
    provenance = {"packages_manifest": odd, "packages": {}}
    if kind == "not a dict":
        provenance = {"packages_manifest": None, "packages": ["libfoo1", "1.2-1"]}
    run_dir = fake.run(provenance=provenance)
    secret = tmp_path / "secret"
    secret.write_text(CACHED.line() + "\n")
    place = run_dir / odd
    if kind == "symlink out":
        place.symlink_to(secret)
    elif kind == "fifo":
        os.mkfifo(place)
    elif kind == "directory":
        place.mkdir()
    fake.cache_deb(CACHED)
    result = save_run(fake.store, run_dir, package_sources=[fake.cache])
    assert CACHED.path not in result.snapshot.archives[fake.uri].files
    assert result.added == 0


@pytest.mark.parametrize("override", [
    {"Filename": "../../../../etc/passwd"}, {"Filename": "/etc/passwd"},
    {"Filename": "dists/bookworm/InRelease"}, {"Filename": "pool//x.deb"},
    {"Filename": "pool/a\x1bb.deb"}, {"SHA256": "00" * 31}, {"SHA256": "zz" * 32},
    {"Size": "-1"}, {"Size": str(1 << 40)}, {"Size": "many"}, {"Package": "other"},
])
def test_a_stanza_that_cannot_be_trusted_is_not_kept(tmp_path, override):
    fake = Archive(tmp_path, closed_port_uri(), debs=[CACHED])
    fake.cache_deb(CACHED)
    run_dir = fake.run(index=fake.index_bytes([CACHED.stanza(**override)]))
    result = save_run(fake.store, run_dir, package_sources=[fake.cache])
    files = result.snapshot.archives[fake.uri].files
    assert set(files) == {"dists/bookworm/InRelease", INDEX, SERVED.path}


@pytest.mark.parametrize("pack", [gzip.compress, lambda data: data,
                                  lambda data: lzma.compress(data)[:40],
                                  lambda data: b"\x1f\x8b" + os.urandom(200)])
def test_indices_are_read_in_each_compression_and_a_broken_one_is_said(tmp_path, pack):
    fake = Archive(tmp_path, closed_port_uri(), debs=[CACHED])
    fake.cache_deb(CACHED)
    text = CACHED.stanza().encode()
    run_dir = fake.run(index=pack(text))
    result = save_run(fake.store, run_dir, package_sources=[fake.cache])
    kept = CACHED.path in result.snapshot.archives[fake.uri].files
    broken = any("not read" in note for note in result.notes)
    assert kept != broken


def test_an_image_of_another_archive_is_a_note_not_a_failure(tmp_path):
    fake = Archive(tmp_path, closed_port_uri(), debs=[SERVED],
                   image=["bash 5.1.8-9.el9 x86_64", "glibc 2.34 x86_64"])
    result = save_run(fake.store, fake.run())
    assert any("none of its 2 packages" in note for note in result.notes)
    assert result.missing == []


def test_a_name_another_run_saved_is_refused(tmp_path):
    fake = Archive(tmp_path, closed_port_uri(), debs=[SERVED])
    run_dir = fake.run()
    save_run(fake.store, run_dir, name="release-1")
    other = fake.store.load("release-1")
    other.run_id = "20250101T000000Z-000000"
    fake.store.save(other)
    with pytest.raises(SaveError, match="exists, saved from run 20250101"):
        save_run(fake.store, run_dir, name="release-1")


@pytest.mark.parametrize("name", ["../x", "a b", "", ".hidden", "x" * 200, "a/b"])
def test_a_bad_snapshot_name_is_refused(tmp_path, name):
    fake = Archive(tmp_path, closed_port_uri(), debs=[SERVED])
    with pytest.raises(SaveError, match="not a snapshot name"):
        save_run(fake.store, fake.run(), name=name)


# ---------------------------------------------------------------- hostile repository.json


def good_archive() -> dict[str, Any]:
    return {"suites": {}, "files": {"pool/main/h/hello/h.deb": {"sha256": "a" * 64, "size": 1}}}


HOSTILE_REPOSITORIES: dict[str, Any] = {
    "not json": b"{archives",
    "not utf-8": b'{"archives": {"\xff": 1}}',
    "duplicate key": b'{"archives": {}, "archives": {}}',
    "nan": b'{"archives": {"http://h/debian": {"suites": {}, "files": {"pool/x": '
           b'{"sha256": "' + b"a" * 64 + b'", "size": NaN}}}}}',
    "deep": b"[" * 100_000 + b"]" * 100_000,
    "many containers": b"[" + b"{}," * 2_100_000 + b"{}]",
    "a list": [],
    "no archives": {"suites": {}},
    "archives a list": {"archives": []},
    "archive a string": {"archives": {"http://h/debian": "x"}},
    "not a uri": {"archives": {"ftp://h/debian": good_archive()}},
    "uri with a user": {"archives": {"http://u:p@h/debian": good_archive()}},
    "uri dot-dot path": {"archives": {"http://h/../../etc": good_archive()}},
    "uri with newline": {"archives": {"http://h/deb\nian": good_archive()}},
    "dot-dot file": {"archives": {"http://h/debian": {"suites": {}, "files": {
        "pool/../../etc/passwd": {"sha256": "a" * 64, "size": 1}}}}},
    "absolute file": {"archives": {"http://h/debian": {"suites": {}, "files": {
        "/etc/passwd": {"sha256": "a" * 64, "size": 1}}}}},
    "file outside pool": {"archives": {"http://h/debian": {"suites": {}, "files": {
        "etc/passwd": {"sha256": "a" * 64, "size": 1}}}}},
    "bad sha": {"archives": {"http://h/debian": {"suites": {}, "files": {
        "pool/x": {"sha256": "A" * 64, "size": 1}}}}},
    "size a string": {"archives": {"http://h/debian": {"suites": {}, "files": {
        "pool/x": {"sha256": "a" * 64, "size": "1"}}}}},
    "size a bool": {"archives": {"http://h/debian": {"suites": {}, "files": {
        "pool/x": {"sha256": "a" * 64, "size": True}}}}},
    "suite dot-dot": {"archives": {"http://h/debian": {"files": {}, "suites": {
        "..": {"components": [], "architectures": [], "inrelease": None, "release": None,
               "release_gpg": None, "date": None, "valid_until": None, "indices": {}}}}}},
    "index path absolute": {"archives": {"http://h/debian": {"files": {}, "suites": {
        "bookworm": {"components": [], "architectures": [], "inrelease": None,
                     "release": None, "release_gpg": None, "date": None,
                     "valid_until": None, "indices": {"/etc/shadow": "a" * 64}}}}}},
    "date with escape": {"archives": {"http://h/debian": {"files": {}, "suites": {
        "bookworm": {"components": [], "architectures": [], "inrelease": None,
                     "release": None, "release_gpg": None, "date": "\x1b]0;owned\x07",
                     "valid_until": None, "indices": {}}}}}},
}


@pytest.mark.parametrize("case", sorted(HOSTILE_REPOSITORIES))
def test_a_hostile_repository_file_is_one_line(tmp_path, case):
    document = HOSTILE_REPOSITORIES[case]
    path = tmp_path / "repository.json"
    path.write_bytes(document if isinstance(document, bytes) else json.dumps(document).encode())
    with pytest.raises(SaveError) as caught:
        read_repository(path)
    message = str(caught.value)
    assert "\n" not in message and "\x1b" not in message and len(message) < 2000


def test_a_huge_fifo_directory_or_absent_repository_file_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(save, "REPOSITORY_LIMIT", 1000)
    (tmp_path / "huge.json").write_bytes(b" " * 2000)
    os.mkfifo(tmp_path / "fifo.json")
    (tmp_path / "dir.json").mkdir()
    (tmp_path / "zero.json").symlink_to("/dev/zero")
    for name in ("huge.json", "fifo.json", "dir.json", "absent.json", "zero.json"):
        with pytest.raises(SaveError) as caught:
            read_repository(tmp_path / name)
        assert "\n" not in str(caught.value)


def test_a_run_without_results_or_repository_file_is_a_save_error(tmp_path):
    fake = Archive(tmp_path, closed_port_uri())
    run_dir = fake.run()
    (run_dir / "repository.json").unlink()
    with pytest.raises(SaveError, match="no repository.json"):
        save_run(fake.store, run_dir)
    with pytest.raises(SaveError, match="no results.json"):
        save_run(fake.store, tmp_path)


# ---------------------------------------------------------------- finding a snapshot


def test_a_snapshot_is_found_by_name_run_id_or_run_directory(tmp_path):
    fake = Archive(tmp_path, closed_port_uri(), debs=[SERVED])
    pinned = "release-1"

    def pin(document: dict[str, Any]) -> None:
        document["repository"] = {"mode": "pinned", "snapshot": pinned}

    run_dir = fake.run(run_results=pin)
    save_run(fake.store, run_dir, name=pinned)
    assert snapshot_for(fake.store, pinned).name == pinned
    assert snapshot_for(fake.store, RUN_ID).name == pinned  # its run id
    assert snapshot_for(fake.store, str(run_dir)).name == pinned
    with pytest.raises(StoreError, match="snapshots: release-1"):
        snapshot_for(fake.store, "nightly")
    with pytest.raises(StoreError, match="not a snapshot, and not a run"):
        snapshot_for(fake.store, str(tmp_path / "nothing-here") + "/")


# ---------------------------------------------------------------- gc


OTHER_RUN = "20250102T000000Z-0000aa"


@pytest.mark.parametrize("snapshot, collected, named_by, drop", [
    # a record of a collected run goes
    (SnapshotEntry(RUN_ID, "record", RUN_ID), [RUN_ID], {}, True),
    # ... unless a run left is pinned to it or records it
    (SnapshotEntry(RUN_ID, "record", RUN_ID), [RUN_ID], {OTHER_RUN: [RUN_ID]}, False),
    # a record of a run still there stays
    (SnapshotEntry(RUN_ID, "record", RUN_ID), [], {RUN_ID: []}, False),
    # a record of a run absent but not collected now (another output directory's) stays
    (SnapshotEntry(RUN_ID, "record", RUN_ID), [OTHER_RUN], {}, False),
    # saved by hand: stays until snapshot rm
    (SnapshotEntry("release-1", "run", RUN_ID), [RUN_ID], {}, False),
    # a record named after its run when its run id is not said
    (SnapshotEntry(RUN_ID, "record", None), [RUN_ID], {}, True),
    # a record saved under another name still follows its run
    (SnapshotEntry("nightly-1", "record", RUN_ID), [RUN_ID], {}, True),
    # a run both collected and left (a dry run's view) keeps what it names
    (SnapshotEntry(RUN_ID, "record", RUN_ID), [RUN_ID], {RUN_ID: [RUN_ID]}, False),
])
def test_gc_policy(snapshot, collected, named_by, drop):
    dropped = doomed([snapshot], collected, named_by)
    assert [d.name for d in dropped] == ([snapshot.name] if drop else [])
    assert all(isinstance(d, Drop) and d.why for d in dropped)


def test_gc_drops_the_records_of_collected_runs_and_keeps_the_rest(tmp_path):
    out = tmp_path / "out"
    store = Store(tmp_path / "store")
    runs = [stored_run(out, day) for day in (1, 2, 3)]
    pinned = runs[2].load()
    pinned.repository = {"mode": "pinned", "snapshot": run_id(2)}
    runs[2].save(pinned)
    blob = store.put_bytes(b"a deb")
    for day, origin in ((1, "record"), (2, "record"), (3, "record")):
        store.save(snapshot_of(run_id(day), origin, blob.sha256))
    store.save(snapshot_of("release-1", "run", blob.sha256, run=run_id(1)))
    gone = [run_id(1), run_id(2)]
    dry = retain.collect(store, OutDir(out), gone, dry_run=True)
    assert [d.name for d in dry.drops] == [run_id(1)] and dry.collected is None
    assert run_id(1) in store.names()  # a dry run changes nothing
    for run in gone:
        shutil.rmtree(out / run)
    done = retain.collect(store, OutDir(out), gone)
    assert [d.name for d in done.drops] == [run_id(1)]
    assert store.names() == sorted([run_id(2), run_id(3), "release-1"])
    assert store.has(blob.sha256)


def test_gc_without_a_store_makes_none(tmp_path):
    store = Store(tmp_path / "absent")
    result = retain.collect(store, OutDir(tmp_path), [run_id(1)])
    assert result.drops == () and not store.root.exists()


def snapshot_of(name: str, origin: str, blob: str, run: str | None = None) -> Snapshot:
    archive = ArchiveState("http://deb.example.org/debian", {},
                           {"pool/main/a/a/a.deb": FileRef(blob, 5)})
    return Snapshot(name, "2025-06-01T02:00:00+00:00", run or name,
                    {archive.uri: archive}, origin)


def test_an_index_gone_from_the_store_is_had_again_before_it_is_read(tmp_path):
    fake = Archive(tmp_path, closed_port_uri(), debs=[CACHED])
    index = fake.index_bytes()
    run_dir = fake.run(index=index)
    blob = fake.store.blob_path(sha(index))
    os.chmod(blob, 0o644)
    blob.unlink()  # a `snapshot rm` collected it while the run went on
    place = fake.cache / "debrep" / INDEX
    place.parent.mkdir(parents=True)
    place.write_bytes(index)
    fake.cache_deb(CACHED)
    result = save_run(fake.store, run_dir, package_sources=[fake.cache])
    assert CACHED.path in result.snapshot.archives[fake.uri].files
    assert result.missing == []


@pytest.mark.parametrize("limit, index", [
    ("STANZA_LIMIT", lzma.compress(b"Package: x\n" + b"Description: y" * 100_000)),
    ("INDEX_UNPACKED_LIMIT", lzma.compress(b"Package: x\n\n" * 100_000)),
])
def test_an_index_beyond_its_bounds_is_a_note(tmp_path, monkeypatch, limit, index):
    monkeypatch.setattr(packages, limit, 1000)
    monkeypatch.setattr(packages, "CHUNK", 512)
    fake = Archive(tmp_path, closed_port_uri(), debs=[CACHED])
    result = save_run(fake.store, fake.run(index=index))
    assert any("not read" in note and "more than" in note for note in result.notes)


def test_notes_and_package_lists_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(save, "ALL_PACKAGE_LINES", 3)
    many = [Deb(f"pkg{number}", "1.0", "amd64") for number in range(6)]
    fake = Archive(tmp_path, closed_port_uri(), debs=many)
    document = fake.repository(fake.index_bytes())
    suites = document["archives"][fake.uri]["suites"]
    for number in range(30):  # suites whose index is nowhere: a note each
        suites[f"s{number}"] = dict(suites["bookworm"], indices={
            f"dists/s{number}/main/binary-amd64/Packages": f"{number:064x}"})
    result = save_run(fake.store, fake.run(repository=document))
    pool = [path for path in result.snapshot.missing[fake.uri] if path.startswith("pool/")]
    assert len(pool) == 3  # the first 3 lines of 6: none is anywhere
    assert any("more than 3 lines in all" in note for note in result.notes)
    lines = result.lines()
    assert len(lines) < 30 and any("more notes" in line for line in lines)


def test_an_index_repeating_stanzas_keeps_a_bounded_list(tmp_path, monkeypatch):
    monkeypatch.setattr(packages, "CANDIDATES", 3)
    fake = Archive(tmp_path, closed_port_uri(), debs=[CACHED])
    stanzas = [CACHED.stanza()] * 20_000 + [CACHED.stanza(Version=f"9.{n}") for n in range(9)]
    archives = read_repository(fake.run(index=fake.index_bytes(stanzas)) / "repository.json")
    found = packages.pool_files(fake.store, archives, {CACHED.name}, [])
    assert len(found[CACHED.name]) == 3 and found[CACHED.name][0].version == CACHED.version
