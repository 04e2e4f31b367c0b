"""The snapshot store: blobs (dedup, hashes, limits, concurrent writers), manifests
(round trip, hostile files), locking, collect, usage and export in Debian's layout."""

from __future__ import annotations

import copy
import errno
import fcntl
import hashlib
import json
import logging
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from matrix.snapshot import export as export_module
from matrix.snapshot import manifest as manifest_module
from matrix.snapshot import store as store_module
from matrix.snapshot.export import export
from matrix.snapshot.manifest import ArchiveState, FileRef, Snapshot, StoreError, SuiteState
from matrix.snapshot.store import Blob, BlobTooLarge, HashMismatch, Store

DEBIAN = "http://deb.debian.org/debian"
SECURITY = "http://deb.debian.org/debian-security"
INDEX = "dists/bookworm/main/binary-amd64/Packages.xz"
HELLO = "pool/main/h/hello/hello_2.10_amd64.deb"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(err.value)
    assert text and "\n" not in text, repr(text)
    return text


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


def put_archive(store: Store, uri: str, contents: dict[str, bytes]) -> ArchiveState:
    """An archive state whose files (path -> bytes) are all in ``store``."""
    files = {}
    for path, data in contents.items():
        blob = store.put_bytes(data)
        files[path] = FileRef(blob.sha256, blob.size)
    suite = SuiteState(
        suite="bookworm", components=["main"], architectures=["amd64"],
        inrelease=files["dists/bookworm/InRelease"].sha256 if "dists/bookworm/InRelease" in files
        else None, release=None, release_gpg=None,
        date="Sat, 10 Feb 2024 10:47:45 UTC", valid_until=None,
        indices={path: ref.sha256 for path, ref in files.items() if path == INDEX})
    return ArchiveState(uri=uri, suites={"bookworm": suite}, files=files)


def make_snapshot(name: str, *archives: ArchiveState, created: str = "2024-02-10T02:00:00+00:00",
                  ) -> Snapshot:
    return Snapshot(name=name, created=created, run_id=name, origin="run",
                    archives={archive.uri: archive for archive in archives})


def bookworm(store: Store, deb: bytes = b"hello 2.10 " * 100) -> ArchiveState:
    return put_archive(store, DEBIAN, {
        "dists/bookworm/InRelease": b"-----BEGIN PGP SIGNED MESSAGE-----\nSuite: stable\n",
        INDEX: b"Packages of bookworm",
        HELLO: deb,
    })


# ---------------------------------------------------------------- blobs


def test_put_lays_blobs_out_by_hash_read_only(store: Store) -> None:
    blob = store.put_bytes(b"hello")
    assert blob == Blob(sha(b"hello"), 5)
    path = store.root / "blobs" / "sha256" / blob.sha256[:2] / blob.sha256
    assert store.blob_path(blob.sha256) == path
    assert path.read_bytes() == b"hello"
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert store.has(blob.sha256) and not store.has("0" * 64)
    with store.open_blob(blob.sha256) as stream:
        assert stream.read() == b"hello"
    assert list((store.root / "tmp").iterdir()) == []


def test_put_stream_hashes_what_it_writes(store: Store) -> None:
    chunks = [b"a" * 1000, b"", b"b" * 5000]
    blob = store.put_stream(iter(chunks), expected_sha256=sha(b"".join(chunks)))
    assert blob.size == 6000
    assert store.put_stream(chunks) == blob  # a second put keeps the one copy


def test_put_file_copies_a_regular_file(store: Store, tmp_path: Path) -> None:
    source = tmp_path / "hello.deb"
    source.write_bytes(b"deb" * 1000)
    assert store.put_file(source, sha(b"deb" * 1000)).size == 3000


@pytest.mark.parametrize("make", ["fifo", "directory"])
def test_put_file_refuses_what_is_not_a_regular_file(store: Store, tmp_path: Path,
                                                     make: str) -> None:
    odd = tmp_path / "odd"
    os.mkfifo(odd) if make == "fifo" else odd.mkdir()
    with pytest.raises(StoreError) as err:
        store.put_file(odd)
    assert str(odd) in one_line(err)


def test_hash_mismatch_leaves_nothing(store: Store) -> None:
    with pytest.raises(HashMismatch) as err:
        store.put_stream([b"evil"], expected_sha256=sha(b"good"))
    assert sha(b"good") in one_line(err)
    assert not store.has(sha(b"good")) and not store.has(sha(b"evil"))
    assert list((store.root / "tmp").iterdir()) == []


def test_limit_stops_an_endless_stream(store: Store) -> None:
    def endless():
        while True:
            yield b"x" * 4096
    with pytest.raises(BlobTooLarge) as err:
        store.put_stream(endless(), limit=100_000)
    assert isinstance(err.value, StoreError) and "100000" in one_line(err)
    assert list((store.root / "tmp").iterdir()) == []


def test_a_failing_source_leaves_no_temporary(store: Store) -> None:
    def broken():
        yield b"part"
        raise ConnectionResetError("upstream went away")
    with pytest.raises(ConnectionResetError):
        store.put_stream(broken())
    assert list((store.root / "tmp").iterdir()) == []


@pytest.mark.parametrize("bad", ["A" * 64, "a" * 63, "../" + "a" * 61, "", "g" * 64,
                                 "a" * 64 + "\n"])
def test_blob_names_are_checked(store: Store, bad: str) -> None:
    with pytest.raises(ValueError):
        store.blob_path(bad)
    with pytest.raises(ValueError):
        store.put_bytes(b"x", expected_sha256=bad)


def test_concurrent_writers_of_one_blob(store: Store) -> None:
    data = os.urandom(256 * 1024)
    results: list[Blob] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def writer() -> None:
        start.wait()
        try:
            chunks = (data[at:at + 4096] for at in range(0, len(data), 4096))
            results.append(store.put_stream(chunks, expected_sha256=sha(data)))
        except BaseException as err:  # noqa: BLE001  # reported by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and results == [Blob(sha(data), len(data))] * 8
    fan = store.blob_path(sha(data)).parent
    assert [path.name for path in fan.iterdir()] == [sha(data)]
    assert store.blob_path(sha(data)).read_bytes() == data
    assert list((store.root / "tmp").iterdir()) == []


def test_open_blob_of_a_missing_blob(store: Store) -> None:
    with pytest.raises(StoreError) as err:
        store.open_blob("0" * 64)
    assert "0" * 64 in one_line(err)


# ---------------------------------------------------------------- dedup and usage


def blob_bytes(store: Store) -> int:
    return sum(path.stat().st_size for path in (store.root / "blobs").rglob("*")
               if path.is_file())


def test_two_snapshots_sharing_files_cost_the_unique_bytes_once(store: Store) -> None:
    first = make_snapshot("night-1", bookworm(store))
    store.save(first)
    once = blob_bytes(store)
    new_deb = b"hello 2.11 " * 100
    second = make_snapshot("night-2", bookworm(store, deb=new_deb))
    store.save(second)
    assert blob_bytes(store) == once + len(new_deb)  # only the changed package costs
    usage = store.usage("night-2")
    assert usage.files == 3 and usage.bytes == once - len(b"hello 2.10 " * 100) + len(new_deb)
    assert usage.unique_bytes == len(new_deb) and usage.missing == 0
    assert store.usages() == {"night-1": store.usage("night-1"), "night-2": usage}
    assert store.usage("night-1").unique_bytes == len(b"hello 2.10 " * 100)
    store.remove("night-1")
    assert store.usage("night-2").unique_bytes == usage.bytes


# ---------------------------------------------------------------- manifests


def test_manifest_round_trip(store: Store) -> None:
    snapshot = make_snapshot("20240210T020000Z-a1b2c3", bookworm(store),
                             put_archive(store, SECURITY, {"pool/updates/x.deb": b"x"}))
    snapshot.missing = {SECURITY: ["pool/updates/y.deb"]}
    store.save(snapshot)
    assert store.load(snapshot.name) == snapshot
    assert store.names() == [snapshot.name]
    path = store.root / "manifests" / f"{snapshot.name}.json"
    assert Snapshot.from_json(json.loads(path.read_text())) == snapshot


def test_snapshots_newest_first_and_a_bad_manifest_skipped(store: Store, caplog) -> None:
    archive = bookworm(store)
    for name, created in (("b", "2024-02-11T02:00:00+00:00"), ("a", "2024-02-12T02:00:00Z"),
                          ("c", "2024-02-10T02:00:00")):
        store.save(make_snapshot(name, archive, created=created))
    (store.root / "manifests" / "broken.json").write_text("{")
    (store.root / "manifests" / "..json").write_text("{}")  # not a name: not listed
    with caplog.at_level(logging.WARNING, logger="dib-matrix"):
        assert [snap.name for snap in store.snapshots()] == ["a", "b", "c"]
    assert [record.message for record in caplog.records if "broken" in record.message]


def test_save_refuses_a_manifest_whose_blobs_are_missing(store: Store) -> None:
    snapshot = make_snapshot("night", bookworm(store))
    snapshot.archives[DEBIAN].files["pool/main/a/absent.deb"] = FileRef("0" * 64, 3)
    with pytest.raises(StoreError) as err:
        store.save(snapshot)
    assert "0" * 64 in one_line(err) and "1 of its files" in str(err.value)
    assert store.names() == []


def test_save_allow_missing_records_what_it_lacks(store: Store) -> None:
    snapshot = make_snapshot("night", bookworm(store))
    snapshot.archives[DEBIAN].files["pool/main/a/absent.deb"] = FileRef("0" * 64, 3)
    saved = store.save(snapshot, allow_missing=True)
    assert "pool/main/a/absent.deb" in snapshot.archives[DEBIAN].files  # the caller's: as given
    loaded = store.load("night")
    assert loaded == saved
    assert "pool/main/a/absent.deb" not in loaded.archives[DEBIAN].files
    assert loaded.missing == {DEBIAN: ["pool/main/a/absent.deb"]}


def test_save_validates_what_it_is_given(store: Store) -> None:
    snapshot = make_snapshot("night", bookworm(store))
    snapshot.archives[DEBIAN].files["pool/../../../etc/passwd"] = FileRef(sha(b"x"), 1)
    store.put_bytes(b"x")
    with pytest.raises(StoreError) as err:
        store.save(snapshot)
    assert "'..'" in one_line(err)


def test_save_refuses_an_archive_or_suite_filed_under_another_key(store: Store) -> None:
    snapshot = make_snapshot("night", bookworm(store))
    snapshot.archives[DEBIAN].uri = SECURITY
    with pytest.raises(StoreError) as err:
        store.save(snapshot)
    assert "holds the archive" in one_line(err)
    snapshot = make_snapshot("night", bookworm(store))
    snapshot.archives[DEBIAN].suites["bookworm"].suite = "sid"
    with pytest.raises(StoreError) as err:
        store.save(snapshot)
    assert "holds the suite" in one_line(err)


def test_lock_that_is_a_symlink_is_a_store_error(store: Store, tmp_path: Path) -> None:
    store.root.mkdir(parents=True)
    (store.root / "lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StoreError) as err:
        store.save(make_snapshot("night", bookworm(store)))
    assert "lock" in one_line(err)
    assert not (tmp_path / "elsewhere").exists()


def test_remove(store: Store) -> None:
    store.save(make_snapshot("night", bookworm(store)))
    store.remove("night")
    assert store.names() == []
    for name in ("night", "../night", "a/b", ""):
        with pytest.raises(StoreError):
            store.remove(name)


def test_load_unknown_and_unnamable(store: Store) -> None:
    with pytest.raises(StoreError) as err:
        store.load("absent")
    assert "no snapshot named absent" in one_line(err)
    with pytest.raises(StoreError) as err:
        store.load("../../etc/passwd")
    assert "not a snapshot name" in one_line(err)


# ---------------------------------------------------------------- hostile manifests


def good_document(store: Store) -> dict[str, Any]:
    return make_snapshot("night", bookworm(store)).to_json()


def edit(change: Callable[[dict[str, Any]], object]) -> Callable[[dict[str, Any]], None]:
    return lambda doc: None if change(doc) else None


def files_of(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["archives"][DEBIAN]["files"]


def suite_of(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["archives"][DEBIAN]["suites"]["bookworm"]


def add_file(path: str) -> Callable[[dict[str, Any]], None]:
    return lambda doc: files_of(doc).__setitem__(path, {"sha256": "a" * 64, "size": 1})


def rename_archive(uri: object) -> Callable[[dict[str, Any]], None]:
    return lambda doc: doc.__setitem__("archives", {uri: doc["archives"][DEBIAN]})


HOSTILE_EDITS: dict[str, tuple[Callable[[dict[str, Any]], object], str]] = {
    # names
    "name with a slash": (lambda doc: doc.__setitem__("name", "../night"), "name"),
    "name not the file's": (lambda doc: doc.__setitem__("name", "other"), "name"),
    "name too long": (lambda doc: doc.__setitem__("name", "n" * 200), "name"),
    "run id with a newline": (lambda doc: doc.__setitem__("run_id", "r\n1"), "run_id"),
    "origin unknown": (lambda doc: doc.__setitem__("origin", "elsewhere"), "origin"),
    "created not a time": (lambda doc: doc.__setitem__("created", "yesterday"), "created"),
    "format from the future": (lambda doc: doc.__setitem__("format", 2), "format"),
    "format a boolean": (lambda doc: doc.__setitem__("format", True), "format"),
    # paths
    "dot-dot path": (add_file("pool/../../../etc/passwd"), "files"),
    "dot-dot at the end": (add_file("pool/main/.."), "files"),
    "absolute path": (add_file("/etc/passwd"), "files"),
    "empty segment": (add_file("pool//x.deb"), "files"),
    "trailing slash": (add_file("pool/x/"), "files"),
    "NUL in a path": (add_file("pool/x\0.deb"), "files"),
    "newline in a path": (add_file("pool/x\n.deb"), "files"),
    "path not under dists or pool": (add_file("index.html"), "files"),
    "bare top directory": (add_file("pool"), "files"),
    "path too long": (add_file("pool/" + "a/" * 600 + "x"), "files"),
    "segment too long": (add_file("pool/" + "a" * 300), "files"),
    "file is a directory of another": (add_file("pool/main"), "is a file and a directory"),
    "index path escapes": (lambda doc: suite_of(doc)["indices"].__setitem__(
        "dists/../../x", "a" * 64), "indices"),
    "missing path escapes": (lambda doc: doc.__setitem__("missing", {DEBIAN: ["../x"]}),
                             "missing"),
    "suite escapes": (lambda doc: doc["archives"][DEBIAN]["suites"].__setitem__(
        "../x", suite_of(doc)), "suites"),
    "component escapes": (lambda doc: suite_of(doc).__setitem__("components", ["/main"]),
                          "components"),
    # URIs (they become directories of an export)
    "uri ftp": (rename_archive("ftp://deb.debian.org/debian"), "archives"),
    "uri with white space": (rename_archive("http://deb.debian.org/deb ian"), "archives"),
    "uri with a user": (rename_archive("http://user:secret@deb.debian.org/debian"), "archives"),
    "uri trailing slash": (rename_archive("http://deb.debian.org/debian/"), "archives"),
    "uri with a query": (rename_archive("http://deb.debian.org/debian?x=1"), "archives"),
    "uri dot-dot": (rename_archive("http://deb.debian.org/a/../../b"), "archives"),
    "uri without host": (rename_archive("http:///debian"), "archives"),
    "uri bad port": (rename_archive("http://deb.debian.org:http/debian"), "archives"),
    "missing keyed by no uri": (lambda doc: doc.__setitem__("missing", {"x": []}), "missing"),
    # types and values
    "size a string": (lambda doc: files_of(doc)[HELLO].__setitem__("size", "10"), "size"),
    "size a boolean": (lambda doc: files_of(doc)[HELLO].__setitem__("size", True), "size"),
    "size negative": (lambda doc: files_of(doc)[HELLO].__setitem__("size", -1), "size"),
    "size a float": (lambda doc: files_of(doc)[HELLO].__setitem__("size", 1.5), "size"),
    "sha upper case": (lambda doc: files_of(doc)[HELLO].__setitem__("sha256", "A" * 64),
                       "sha256"),
    "sha a path": (lambda doc: files_of(doc)[HELLO].__setitem__("sha256", "../" * 21 + "a"),
                   "sha256"),
    "file ref a list": (lambda doc: files_of(doc).__setitem__(HELLO, ["a" * 64, 1]), HELLO),
    "files a list": (lambda doc: doc["archives"][DEBIAN].__setitem__("files", []), "files"),
    "archives a list": (lambda doc: doc.__setitem__("archives", []), "archives"),
    "suite lacks a key": (lambda doc: suite_of(doc).pop("indices"), "indices"),
    "date not printable": (lambda doc: suite_of(doc).__setitem__("date", "\x1b[2J"), "date"),
    "date huge": (lambda doc: suite_of(doc).__setitem__("date", "x" * 10_000), "date"),
    "inrelease not a hash": (lambda doc: suite_of(doc).__setitem__("inrelease", 1), "inrelease"),
    "architecture with a slash": (lambda doc: suite_of(doc).__setitem__(
        "architectures", ["../amd64"]), "architectures"),
    "document a list": (lambda doc: doc.clear(), "lacks the key"),
}


def write_manifest(store: Store, text: str | bytes, name: str = "night") -> Path:
    path = store.root / "manifests" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.parametrize("case", sorted(HOSTILE_EDITS))
def test_hostile_manifest_is_one_line_store_error(store: Store, case: str) -> None:
    change, key = HOSTILE_EDITS[case]
    document = copy.deepcopy(good_document(store))
    change(document)
    path = write_manifest(store, json.dumps(document))
    with pytest.raises(StoreError) as err:
        store.load("night")
    text = one_line(err)
    assert str(path) in text and key in text, text
    assert "\x1b" not in text and "\0" not in text  # the untrusted text is escaped
    assert store.snapshots() == []  # skipped, with a warning


@pytest.mark.parametrize("text, why", [
    ('{"name": "a", "name": "b"}', "given twice"),
    ('{"format": NaN}', "NaN"),
    ('{"format": 1' + "0" * 5000 + "}", "not JSON"),
    ("[" * 100_000 + "]" * 100_000, "nested too deep"),
    ("{" * 10, "not JSON"),
    ("", "not JSON"),
    ('"just a string"', "must be an object"),
])
def test_manifest_that_is_not_strict_json(store: Store, text: str, why: str) -> None:
    write_manifest(store, text)
    with pytest.raises(StoreError) as err:
        store.load("night")
    assert why in one_line(err)


def test_manifest_not_utf8(store: Store) -> None:
    write_manifest(store, b'{"name": "\xff"}')
    with pytest.raises(StoreError) as err:
        store.load("night")
    assert "not UTF-8" in one_line(err)


def test_manifest_too_many_containers(store: Store, monkeypatch) -> None:
    monkeypatch.setattr(manifest_module, "MAX_CONTAINERS", 1000)
    write_manifest(store, "[" + "{}," * 1000 + "{}]")
    with pytest.raises(StoreError) as err:
        store.load("night")
    assert "more than 1000" in one_line(err)


def test_huge_manifest_is_refused_unread(store: Store) -> None:
    path = write_manifest(store, b"")
    with path.open("r+b") as handle:
        handle.truncate(store_module.MAX_MANIFEST + 1)  # sparse: costs no disk
    with pytest.raises(StoreError) as err:
        store.load("night")
    assert str(path) in one_line(err)


@pytest.mark.parametrize("make", ["fifo", "directory", "dangling symlink"])
def test_manifest_that_is_not_a_regular_file(store: Store, make: str) -> None:
    path = store.root / "manifests" / "night.json"
    path.parent.mkdir(parents=True)
    if make == "fifo":
        os.mkfifo(path)
    elif make == "directory":
        path.mkdir()
    else:
        path.symlink_to(store.root / "absent")
    with pytest.raises(StoreError) as err:
        store.load("night")  # never a hang on the FIFO
    one_line(err)


# ---------------------------------------------------------------- locking and collect


def test_busy_store_is_a_clear_error(store: Store, monkeypatch) -> None:
    monkeypatch.setattr(store_module, "LOCK_WAIT", 0.1)
    store.root.mkdir(parents=True)
    holder = os.open(store.root / "lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        snapshot = make_snapshot("night", bookworm(store))
        for operation in (lambda: store.save(snapshot), lambda: store.remove("night"),
                          store.collect):
            with pytest.raises(StoreError) as err:
                operation()
            assert "snapshot store is busy" in one_line(err)
        assert store.load  # reads do not lock
        assert store.names() == []
    finally:
        os.close(holder)


def age(path: Path, seconds: float) -> None:
    when = time.time() - seconds
    os.utime(path, (when, when))


def test_collect_removes_unnamed_old_blobs_only(store: Store) -> None:
    kept = make_snapshot("kept", bookworm(store))
    store.save(kept)
    old_orphan = store.put_bytes(b"old orphan" * 10)
    young_orphan = store.put_bytes(b"young orphan")
    for blob in kept.blobs() | {old_orphan.sha256}:
        age(store.blob_path(blob), 8 * 86400)
    stale = store.root / "tmp" / "blob.stale"
    fresh = store.root / "tmp" / "blob.fresh"
    stale.write_bytes(b"abandoned")
    fresh.write_bytes(b"being written")
    age(stale, 2 * 86400)
    stats = store.collect(grace_seconds=7 * 86400)
    assert (stats.blobs, stats.bytes) == (1, len(b"old orphan" * 10))
    assert (stats.temporaries, stats.temporary_bytes) == (1, len(b"abandoned"))
    assert not store.has(old_orphan.sha256) and store.has(young_orphan.sha256)
    assert all(store.has(blob) for blob in kept.blobs())
    assert fresh.exists() and not stale.exists()
    assert store.collect(grace_seconds=0).blobs == 1  # the young orphan, once grace is 0


def test_collect_after_remove_frees_the_snapshot(store: Store) -> None:
    store.save(make_snapshot("night", bookworm(store)))
    store.remove("night")
    assert store.collect(grace_seconds=0).blobs == 3
    assert blob_bytes(store) == 0


def test_a_put_refreshes_an_old_blob_so_collect_spares_it(store: Store) -> None:
    blob = store.put_bytes(b"reused by a new run")
    age(store.blob_path(blob.sha256), 30 * 86400)
    store.put_bytes(b"reused by a new run")
    assert store.collect().blobs == 0 and store.has(blob.sha256)


def test_collect_stops_on_a_bad_manifest(store: Store) -> None:
    orphan = store.put_bytes(b"maybe named by the bad one")
    write_manifest(store, "{", name="broken")
    with pytest.raises(StoreError) as err:
        store.collect(grace_seconds=0)
    assert "nothing collected" in one_line(err) and "broken" in str(err.value)
    assert store.has(orphan.sha256)


def test_collect_leaves_foreign_files_alone(store: Store) -> None:
    store.put_bytes(b"x")
    foreign = store.root / "blobs" / "sha256" / "zz"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert store.collect(grace_seconds=0).blobs == 1
    assert (foreign / "notes.txt").exists()


# ---------------------------------------------------------------- export


def test_export_lays_out_a_debian_archive(store: Store, tmp_path: Path) -> None:
    mirror = put_archive(store, "http://mirror.example.org/debian",
                         {"dists/bookworm/InRelease": b"other host's InRelease"})
    top = put_archive(store, "http://10.0.0.1:3142", {"dists/sid/Release": b"sid"})
    snapshot = make_snapshot("night", bookworm(store),
                             put_archive(store, SECURITY, {"pool/updates/s.deb": b"security"}),
                             mirror, top)
    dest = tmp_path / "export"
    stats = export(store, snapshot, dest)
    archive = dest / "debian"
    assert (archive / "dists/bookworm/InRelease").read_bytes().startswith(b"-----BEGIN PGP")
    assert (archive / HELLO).read_bytes() == b"hello 2.10 " * 100
    assert (archive / INDEX).read_bytes() == b"Packages of bookworm"
    by_hash = archive / "dists/bookworm/main/binary-amd64/by-hash/SHA256" / sha(
        b"Packages of bookworm")
    assert by_hash.read_bytes() == b"Packages of bookworm"
    assert (dest / "debian-security/pool/updates/s.deb").read_bytes() == b"security"
    # the same prefix on another host, and an archive at a host's top
    assert (dest / "mirror.example.org/debian/dists/bookworm/InRelease").exists()
    assert (dest / "dists/sid/Release").read_bytes() == b"sid"
    assert stats.roots == {DEBIAN: "debian", SECURITY: "debian-security",
                           "http://mirror.example.org/debian": "mirror.example.org/debian",
                           "http://10.0.0.1:3142": ""}
    assert stats.files == stats.linked == 7 and stats.copied == 0
    deb = archive / HELLO
    assert deb.stat().st_ino == store.blob_path(sha(b"hello 2.10 " * 100)).stat().st_ino


def test_export_copies_across_file_systems(store: Store, tmp_path: Path, monkeypatch) -> None:
    def no_link(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")
    monkeypatch.setattr(os, "link", no_link)
    stats = export(store, make_snapshot("night", bookworm(store)), tmp_path / "export")
    assert stats.copied == stats.files == 4 and stats.linked == 0
    deb = tmp_path / "export/debian" / HELLO
    assert deb.read_bytes() == b"hello 2.10 " * 100
    assert stat.S_IMODE(deb.stat().st_mode) == 0o644


def test_export_into_an_empty_directory(store: Store, tmp_path: Path) -> None:
    dest = tmp_path / "empty"
    dest.mkdir()
    assert export(store, make_snapshot("night", bookworm(store)), dest).files == 4


@pytest.mark.parametrize("make", ["non-empty", "file", "symlink to empty"])
def test_export_refuses_a_used_destination(store: Store, tmp_path: Path, make: str) -> None:
    dest = tmp_path / "dest"
    if make == "non-empty":
        dest.mkdir()
        (dest / "mine").write_text("keep me")
    elif make == "file":
        dest.write_text("keep me")
    else:
        (tmp_path / "empty").mkdir()
        dest.symlink_to(tmp_path / "empty")
    snapshot = make_snapshot("night", bookworm(store))
    before = sorted(str(path) for path in tmp_path.rglob("*"))
    with pytest.raises(StoreError) as err:
        export(store, snapshot, dest)
    assert str(dest) in one_line(err)
    assert sorted(str(path) for path in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("path", ["pool/../../outside", "/tmp/outside", "pool/a/../../../x"])
def test_export_refuses_escaping_paths(store: Store, tmp_path: Path, path: str) -> None:
    snapshot = make_snapshot("night", bookworm(store))
    snapshot.archives[DEBIAN].files[path] = FileRef(store.put_bytes(b"x").sha256, 1)
    with pytest.raises(StoreError):
        export(store, snapshot, tmp_path / "sub" / "export")
    assert sorted(tmp_path.iterdir()) == [tmp_path / "store"]


@pytest.mark.parametrize("uri", ["http://h/../..", "http://h/a/..", "http://h/./x"])
def test_export_refuses_escaping_prefixes(store: Store, tmp_path: Path, uri: str) -> None:
    archive = bookworm(store)
    archive.uri = uri
    with pytest.raises(StoreError) as err:
        export(store, make_snapshot("night", archive), tmp_path / "sub" / "export")
    assert "not safe" in one_line(err)
    assert sorted(tmp_path.iterdir()) == [tmp_path / "store"]


def test_export_with_a_missing_blob_writes_nothing(store: Store, tmp_path: Path) -> None:
    snapshot = make_snapshot("night", bookworm(store))
    snapshot.archives[DEBIAN].files["pool/main/a/a.deb"] = FileRef("0" * 64, 1)
    with pytest.raises(StoreError) as err:
        export(store, snapshot, tmp_path / "export")
    assert "nothing exported" in one_line(err)
    assert not (tmp_path / "export").exists()


def test_archive_roots_never_overlap() -> None:
    archives = {uri: ArchiveState(uri=uri) for uri in (
        "http://a/debian", "http://b/debian", "https://a/debian", "http://a",
        "http://c/dists/x", "http://a/pool")}
    roots = export_module.archive_roots(make_snapshot("n", *archives.values()))
    assert len(set(roots.values())) == len(roots)
    for uri, root in roots.items():
        for other, other_root in roots.items():
            if uri != other:
                assert not export_module._overlaps(root, other_root), (root, other_root)


@pytest.mark.parametrize("path", ["pool/../../outside", "pool/a/../../../x"])
def test_export_paths_are_checked_again_where_they_are_written(
        store: Store, tmp_path: Path, path: str, monkeypatch) -> None:
    """The second line of defence holds on its own: with the manifest checks skipped,
    ``results.paths.inside`` still refuses a path that leaves the export."""
    monkeypatch.setattr(export_module, "validated", lambda snapshot: snapshot)
    snapshot = make_snapshot("night", bookworm(store))
    snapshot.archives[DEBIAN].files[path] = FileRef(store.put_bytes(b"x").sha256, 1)
    with pytest.raises(StoreError) as err:
        export(store, snapshot, tmp_path / "sub" / "export")
    assert "'..'" in one_line(err)
    assert not (tmp_path / "outside").exists() and not (tmp_path / "sub" / "x").exists()
