"""What a snapshot manifest says, and the rules each of its fields keeps.

A snapshot is what a run read from its Debian archives: for each archive
(:class:`ArchiveState`) its suites as pinned (:class:`SuiteState`: InRelease, Release,
the indices read) and every file kept (:class:`FileRef`), each named by its sha256.
:class:`Snapshot` is one ``manifests/<name>.json`` of the store.

A manifest is untrusted once written (a store may be copied from another machine, a
file edited by hand): it is read bounded, as strict JSON (:func:`read_json`), and every
field is checked (names, hashes, URIs, times, and paths that stay inside an exported
tree) before anything uses it. A snapshot built in memory passes the same checks
(:func:`validated`), and a run's ``repository.json`` the same reading and rules.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, NoReturn
from urllib.parse import urlsplit

from results.names import is_run_id
from results.reader import clip

MAX_BLOB = 4 << 30  # bytes: far above any .deb or index, far below a full disk
MAX_CONTAINERS = 2_000_000  # arrays and objects in one document read: parsing stays bounded
MAX_PATH = 1024  # characters of a path in an archive (pool paths are < 200)
MAX_SEGMENT = 255  # bytes of one path component: what file systems take
MAX_TEXT = 256  # characters of a Date, a suite, an architecture
MAX_URI = 2048
ORIGINS = ("run", "record")  # saved from a run by hand | recorded at the end of a run
FORMAT = 1  # the manifest's layout; a later layout gets a new number
ARCHIVE_TOPS = ("dists", "pool")  # an archive's files live under these

_HEX = re.compile(r"[0-9a-f]{64}")
_ARCH = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class StoreError(Exception):
    """A snapshot, its manifest or a store operation that cannot be used: one line
    naming the file or snapshot."""


def is_sha256(value: object) -> bool:
    """Whether ``value`` is a sha256 as the store names blobs: 64 lower-case hex digits."""
    return isinstance(value, str) and _HEX.fullmatch(value) is not None


# ---------------------------------------------------------------- what a manifest says


@dataclass
class FileRef:
    sha256: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size}


@dataclass
class SuiteState:
    """One suite of an archive as the run saw it: its Release files and the indices read."""

    suite: str
    components: list[str]
    architectures: list[str]
    inrelease: str | None  # sha256; None when the archive had only Release + Release.gpg
    release: str | None
    release_gpg: str | None
    date: str | None
    valid_until: str | None
    # path relative to the archive ("dists/bookworm/main/binary-amd64/Packages.xz") -> sha256
    indices: dict[str, str] = field(default_factory=dict)

    def blobs(self) -> set[str]:
        named = {self.inrelease, self.release, self.release_gpg, *self.indices.values()}
        return {sha for sha in named if sha is not None}

    def to_json(self) -> dict[str, Any]:
        return {"components": list(self.components), "architectures": list(self.architectures),
                "inrelease": self.inrelease, "release": self.release,
                "release_gpg": self.release_gpg, "date": self.date,
                "valid_until": self.valid_until, "indices": dict(sorted(self.indices.items()))}

    @classmethod
    def from_json(cls, suite: str, data: object, where: str = "suite") -> SuiteState:
        check = _Checker(where)
        check.suite_name(suite, "")
        doc = check.object(data, "", _SUITE_KEYS)
        return cls(
            suite=suite,
            components=check.list_of(doc["components"], "components", check.relative),
            architectures=check.list_of(doc["architectures"], "architectures", check.arch),
            inrelease=check.optional(doc["inrelease"], "inrelease", check.sha256),
            release=check.optional(doc["release"], "release", check.sha256),
            release_gpg=check.optional(doc["release_gpg"], "release_gpg", check.sha256),
            date=check.optional(doc["date"], "date", check.text),
            valid_until=check.optional(doc["valid_until"], "valid_until", check.text),
            indices=check.mapping(doc["indices"], "indices", check.archive_path, check.sha256))


_SUITE_KEYS = ("components", "architectures", "inrelease", "release", "release_gpg", "date",
               "valid_until", "indices")


@dataclass
class ArchiveState:
    """One archive (``http://HOST/debian``): its suites and every file the snapshot holds."""

    uri: str  # no trailing slash
    suites: dict[str, SuiteState] = field(default_factory=dict)
    # path relative to the archive (dists/... and pool/...) -> the blob
    files: dict[str, FileRef] = field(default_factory=dict)

    def blobs(self) -> set[str]:
        named = {ref.sha256 for ref in self.files.values()}
        for suite in self.suites.values():
            named |= suite.blobs()
        return named

    def to_json(self) -> dict[str, Any]:
        return {"suites": {name: state.to_json() for name, state in sorted(self.suites.items())},
                "files": {path: ref.to_json() for path, ref in sorted(self.files.items())}}

    @classmethod
    def from_json(cls, uri: str, data: object, where: str = "archive") -> ArchiveState:
        check = _Checker(where)
        check.uri(uri, "")
        doc = check.object(data, "", ("suites", "files"))
        suites = check.object(doc["suites"], "suites")
        files = check.mapping(doc["files"], "files", check.archive_path, check.file_ref)
        check.no_file_is_a_directory(files, "files")
        return cls(uri=uri,
                   suites={name: SuiteState.from_json(name, state, f"{where}: suites[{clip(name)}]")
                           for name, state in suites.items()},
                   files=files)


@dataclass
class Snapshot:
    """A saved repository state: the manifest ``<root>/manifests/<name>.json``."""

    name: str
    created: str  # ISO 8601, UTC
    run_id: str | None
    archives: dict[str, ArchiveState]  # by uri
    origin: str  # one of ORIGINS
    # archive uri -> paths the snapshot could not keep (a run read them, no blob was had)
    missing: dict[str, list[str]] = field(default_factory=dict)

    def blobs(self) -> set[str]:
        """Every sha256 the snapshot names."""
        named: set[str] = set()
        for archive in self.archives.values():
            named |= archive.blobs()
        return named

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "name": self.name, "created": self.created,
                "run_id": self.run_id, "origin": self.origin,
                "archives": {uri: state.to_json() for uri, state in sorted(self.archives.items())},
                "missing": {uri: sorted(paths) for uri, paths in sorted(self.missing.items())}}

    @classmethod
    def from_json(cls, data: object, where: str = "snapshot") -> Snapshot:
        """The snapshot ``data`` describes; StoreError naming ``where`` and the key otherwise."""
        check = _Checker(where)
        doc = check.object(data, "", ("format", "name", "created", "run_id", "origin",
                                      "archives", "missing"))
        if doc["format"] != FORMAT or isinstance(doc["format"], bool):
            check.fail("format", f"{clip(doc['format'])} is not a format this version reads "
                                 f"({FORMAT})")
        archives = check.object(doc["archives"], "archives")
        return cls(
            name=check.name(doc["name"], "name"),
            created=check.timestamp(doc["created"], "created"),
            run_id=check.optional(doc["run_id"], "run_id", check.name),
            origin=check.origin(doc["origin"], "origin"),
            archives={uri: ArchiveState.from_json(uri, state, f"{where}: archives[{clip(uri)}]")
                      for uri, state in archives.items()},
            missing=check.mapping(doc["missing"], "missing", check.uri,
                                  lambda value, key: check.list_of(value, key,
                                                                   check.archive_path)))


class _Checker:
    """Checks of untrusted manifest values; each failure is one StoreError line:
    ``<where>: <key>: <why>``, the untrusted text in it escaped and cut."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, key: str, why: str) -> NoReturn:
        at = f"{self.where}: {key}" if key else self.where
        raise StoreError(f"{at}: {why}")

    def object(self, value: object, key: str, required: Iterable[str] = ()) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(key, f"must be an object, not {_kind(value)}")
        for name in required:
            if name not in value:
                self.fail(key, f"lacks the key {name!r}")
        for name in value:
            if not isinstance(name, str):
                self.fail(key, "keys must be strings")
        return value

    def mapping(self, value: object, key: str, check_key: Any, check_value: Any) -> dict[str, Any]:
        found = self.object(value, key)
        return {check_key(name, f"{key}[{clip(name)}]"):
                check_value(item, f"{key}[{clip(name)}]") for name, item in found.items()}

    def list_of(self, value: object, key: str, check_item: Any) -> list[Any]:
        if not isinstance(value, list):
            self.fail(key, f"must be a list, not {_kind(value)}")
        return [check_item(item, f"{key}[{index}]") for index, item in enumerate(value)]

    def optional(self, value: object, key: str, check: Any) -> Any:
        return None if value is None else check(value, key)

    def string(self, value: object, key: str, limit: int = MAX_TEXT) -> str:
        if not isinstance(value, str):
            self.fail(key, f"must be a string, not {_kind(value)}")
        if len(value) > limit:
            self.fail(key, f"longer than {limit} characters")
        return value

    def text(self, value: object, key: str) -> str:
        text = self.string(value, key)
        if not text.isprintable():
            self.fail(key, f"{clip(text)} holds characters that are not printable")
        return text

    def name(self, value: object, key: str) -> str:
        if not is_run_id(value):
            self.fail(key, f"{clip(value)} is not a snapshot or run name "
                           "(letters, digits, '.', '_', '-'; at most 128)")
        return value  # type: ignore[return-value]  # is_run_id holds only for a str

    def origin(self, value: object, key: str) -> str:
        if value not in ORIGINS:
            self.fail(key, f"{clip(value)} is not one of {', '.join(ORIGINS)}")
        return value  # type: ignore[return-value]

    def timestamp(self, value: object, key: str) -> str:
        text = self.text(value, key)
        if parse_time(text) is None:
            self.fail(key, f"{clip(text)} is not an ISO 8601 time")
        return text

    def sha256(self, value: object, key: str) -> str:
        if not is_sha256(value):
            self.fail(key, f"{clip(value)} is not a sha256 (64 lower-case hex digits)")
        return value  # type: ignore[return-value]

    def size(self, value: object, key: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_BLOB:
            self.fail(key, f"{clip(value)} is not a size in bytes (0 to {MAX_BLOB})")
        return value  # type: ignore[return-value]

    def file_ref(self, value: object, key: str) -> FileRef:
        doc = self.object(value, key, ("sha256", "size"))
        return FileRef(self.sha256(doc["sha256"], f"{key}.sha256"),
                       self.size(doc["size"], f"{key}.size"))

    def relative(self, value: object, key: str) -> str:
        path = self.string(value, key, MAX_PATH)
        problem = path_problem(path)
        if problem:
            self.fail(key, f"{clip(path)} {problem}")
        return path

    def archive_path(self, value: object, key: str) -> str:
        path = self.relative(value, key)
        if path.split("/", 1)[0] not in ARCHIVE_TOPS or "/" not in path:
            self.fail(key, f"{clip(path)} is not under {' or '.join(ARCHIVE_TOPS)}/")
        return path

    def suite_name(self, value: object, key: str) -> str:
        return self.relative(value, key)  # "bookworm", "buster/updates"

    def arch(self, value: object, key: str) -> str:
        if not isinstance(value, str) or len(value) > MAX_TEXT or not _ARCH.fullmatch(value):
            self.fail(key, f"{clip(value)} is not an architecture name")
        return value  # type: ignore[return-value]

    def uri(self, value: object, key: str) -> str:
        problem = uri_problem(value)
        if problem:
            self.fail(key, f"{clip(value)} {problem}")
        return value  # type: ignore[return-value]

    def no_file_is_a_directory(self, files: Mapping[str, FileRef], key: str) -> None:
        """No path is a directory of another one: the tree could not be written out."""
        for path in files:
            parent = path.rpartition("/")[0]
            while parent:
                if parent in files:
                    self.fail(key, f"{clip(parent)} is a file and a directory of {clip(path)}")
                parent = parent.rpartition("/")[0]


def path_problem(path: str) -> str | None:
    """Why ``path`` is not a safe relative path (None when it is): it must stay inside
    the directory it is joined to, whatever writes it there."""
    if not path:
        return "is empty"
    if len(path) > MAX_PATH:
        return f"is longer than {MAX_PATH} characters"
    if _CONTROL.search(path):
        return "holds a control character or NUL"
    if path.startswith("/"):
        return "is absolute"
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            return "has an empty, '.' or '..' component"
        if len(segment.encode("utf-8", "surrogatepass")) > MAX_SEGMENT:
            return f"has a component longer than {MAX_SEGMENT} bytes"
    return None


def uri_problem(value: object) -> str | None:
    """Why ``value`` is not an archive URI ``http(s)://HOST[:PORT][/PATH]`` without a
    trailing slash, user, query or fragment (None when it is)."""
    if not isinstance(value, str):
        return f"must be a string, not {_kind(value)}"
    if len(value) > MAX_URI:
        return f"is longer than {MAX_URI} characters"
    if not value.isprintable() or any(ch.isspace() for ch in value):
        return "holds white space or characters that are not printable"
    try:
        split = urlsplit(value)
        split.port  # noqa: B018  # raises ValueError on a port that is not a number
    except ValueError as err:
        return f"is not a URL ({err})"
    if split.scheme not in ("http", "https") or not split.hostname:
        return "is not an http:// or https:// URL with a host"
    if split.username is not None or split.query or split.fragment or "?" in value \
            or "#" in value:
        return "has a user, a query or a fragment"
    if value.endswith("/"):
        return "ends with '/'"
    prefix = split.path.strip("/")
    if split.path and (not split.path.startswith("/") or (prefix and path_problem(prefix))):
        return f"has a path that is not safe ({path_problem(prefix) or 'not absolute'})"
    return None


def parse_time(text: str) -> datetime | None:
    """An ISO 8601 time (``Z`` too, which Python 3.10 does not read) as an aware
    datetime, UTC when it names no zone; None when it is not one."""
    try:
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(value), "a value")


def validated(snapshot: Snapshot) -> Snapshot:
    """A checked copy of a snapshot built in memory (by a run, by hand): what
    :meth:`Snapshot.from_json` would take from its manifest, or StoreError. Each archive
    and suite must be filed under its own uri and suite name."""
    where = f"snapshot {clip(snapshot.name)}"
    for uri, archive in snapshot.archives.items():
        if archive.uri != uri:
            raise StoreError(f"{where}: archives[{clip(uri)}] holds the archive "
                             f"{clip(archive.uri)}")
        for name, suite in archive.suites.items():
            if suite.suite != name:
                raise StoreError(f"{where}: archives[{clip(uri)}]: suites[{clip(name)}] "
                                 f"holds the suite {clip(suite.suite)}")
    return Snapshot.from_json(snapshot.to_json(), where)


# ---------------------------------------------------------------- reading a manifest


def parse_manifest(data: bytes, where: str) -> Snapshot:
    """The snapshot in the manifest bytes ``data``: :func:`read_json`, then validated;
    StoreError naming ``where`` otherwise."""
    return Snapshot.from_json(read_json(data, where), where)


def read_json(data: bytes, where: str) -> Any:
    """The JSON document in ``data``, read strictly: UTF-8, no duplicate key, no NaN, at
    most MAX_CONTAINERS objects and lists; StoreError naming ``where`` otherwise. The
    caller bounds the bytes."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise StoreError(f"{where}: not UTF-8 (byte {err.start})") from None
    if text.count("{") + text.count("[") > MAX_CONTAINERS:
        raise StoreError(f"{where}: more than {MAX_CONTAINERS} objects and lists")
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except json.JSONDecodeError as err:
        raise StoreError(f"{where}: not JSON: {err.msg} at line {err.lineno} "
                         f"column {err.colno}") from None
    except ValueError as err:  # a duplicate key, NaN, an integer of thousands of digits
        raise StoreError(f"{where}: not JSON: {clip(str(err))}") from None
    except RecursionError:
        raise StoreError(f"{where}: nested too deep") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) == len(pairs):
        return found
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise ValueError(f"the key {key!r} given twice")
        seen.add(key)
    return found  # not reached: dict() lost a key, so one came twice


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")
