"""Results of a run as plain data: cells, their states and the run's metadata.

``results.json`` is the one source every report reads. It is rewritten atomically
(temp file + rename) after every finished cell, so a killed orchestrator loses
nothing that finished.

A rewrite costs what changed, not the whole matrix: each cell keeps its JSON text
from the last save and :func:`save` re-serializes only cells that changed since,
then joins the texts (a 2600-cell run would otherwise spend most of its
scheduling time in ``asdict`` and ``json.dumps`` of unchanged cells). A cell
knows it changed because every attribute assignment on it takes a fresh stamp
(``Cell.__setattr__``); what assignment cannot see, a change inside its
``category`` or ``artifacts`` (``cell.category.legend = ...``,
``cell.artifacts.append(...)``), is caught by comparing a snapshot of their
values. The document is byte for byte what ``json.dumps(results.to_json(),
indent=2, sort_keys=True)`` gives.
"""

from __future__ import annotations

import collections
import enum
import itertools
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

# Change stamps for Cell: ``next()`` on a count is atomic under the GIL, so two
# assignments never get the same stamp and a stamp is never reused.
_STAMPS = itertools.count(1)
# Names of the two private entries of a Cell's __dict__ (not dataclass fields:
# equality, repr, asdict and to_json ignore them).
_STAMP = "_json_stamp"
_SAVED = "_json_saved"
_POSITIONS = "_cell_positions"  # RunResults: (host, row) -> index in cells


class State(str, enum.Enum):
    """The verdict of one cell. Every report shows each with one colour and one meaning."""

    SUCCESS = "success"
    FAILED = "failed"  # the build failed; category says why (or "uncategorized")
    SKIPPED = "skipped"  # not run: a prerequisite failed (category missing-dependency)
    EXCLUDED = "excluded"  # left out by the matrix file, with its reason
    TIMEOUT = "timeout"  # killed at the per-cell timeout
    ERROR = "error"  # the infrastructure failed (engine), not the build
    ALLOWED_FAILURE = "allowed-failure"  # failed, but the cell is non-voting
    PENDING = "pending"  # planned, not finished (only seen in partial results)

    @property
    def is_failure(self) -> bool:
        return self in (State.FAILED, State.TIMEOUT, State.ERROR)

    @property
    def is_finished(self) -> bool:
        return self is not State.PENDING


class CellKind(str, enum.Enum):
    HOSTGEN = "hostgen"
    CHECK = "check"  # a per-host check row such as tox
    BUILD = "build"
    BOOT = "boot"


@dataclass
class Category:
    id: str
    legend: str  # with captured groups filled in, e.g. "No such script: .../forky"
    link: str | None = None
    labels: list[str] = field(default_factory=list)  # every matching category id


@dataclass
class Artifact:
    path: str  # relative to the run directory
    type: str
    size: int
    sha256: str


@dataclass
class ImageCheck:
    """One check of a built image before its cell may say ``success``."""

    name: str  # e.g. "os-release", "packages", "qemu-img check", "partition table"
    ok: bool
    detail: str  # what was found (and, when not ok, what was wanted)
    image: str = ""  # the artifact's path relative to the run directory
    seconds: float | None = None  # what the check took


@dataclass
class Cell:
    host: str
    row: str  # "hostgen", a check name ("tox") or a target name
    kind: CellKind
    state: State = State.PENDING
    category: Category | None = None
    evidence: str | None = None  # the matched log line, or the log tail when uncategorized
    reason: str | None = None  # why skipped or excluded
    voting: bool = True
    attempts: int = 0
    reused: bool = False
    started: str | None = None
    finished: str | None = None
    duration: float | None = None
    log: str | None = None  # relative to the run directory
    artifacts: list[Artifact] = field(default_factory=list)
    reproducer: str | None = None
    key: str | None = None  # content key for reuse
    checks: list[ImageCheck] = field(default_factory=list)  # image verification, build rows
    free_bytes: dict[str, int | None] = field(default_factory=dict)  # when a cell failed
    # What the result depended on (host image, element files, mirror date, packages):
    # matrix.run.provenance writes it, reports.attribution compares it. {} in older runs.
    provenance: dict[str, Any] = field(default_factory=dict)

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        # After the assignment: a save that read the previous stamp before it
        # serialized this cell sees a new one next time and serializes it again.
        self.__dict__[_STAMP] = next(_STAMPS)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # copy, deepcopy and pickle: the saved text is not carried over (a stamp
        # from another process could equal one this process hands out later).
        self.__dict__.update(state)
        self.__dict__.pop(_SAVED, None)
        self.__dict__[_STAMP] = next(_STAMPS)

    @property
    def id(self) -> str:
        return f"{self.host}.{self.row}"

    @property
    def passed_on_retry(self) -> bool:
        return self.state is State.SUCCESS and self.attempts > 1

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["id"] = self.id
        data["kind"] = self.kind.value
        data["state"] = self.state.value
        if not data["provenance"]:  # cells that ran nothing, and older runs: as before
            del data["provenance"]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Cell:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["kind"] = CellKind(values["kind"])
        values["state"] = State(values["state"])
        if values.get("category"):
            values["category"] = Category(**values["category"])
        values["artifacts"] = [Artifact(**a) for a in values.get("artifacts") or []]
        values["checks"] = [ImageCheck(**c) for c in values.get("checks") or []]
        return cls(**values)


@dataclass
class RunResults:
    run_id: str
    matrix: str  # path of the matrix file
    hosts: list[str]  # column order
    rows: list[str]  # row order: hostgen, checks, then targets
    cells: list[Cell] = field(default_factory=list)
    started: str | None = None
    finished: str | None = None
    interrupted: bool = False
    dib_tree: dict[str, Any] = field(default_factory=dict)  # path, commit
    engine: dict[str, Any] = field(default_factory=dict)
    host_images: dict[str, str] = field(default_factory=dict)  # host -> image tag
    options: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)  # dib tree, mirror dates
    # A shard of a sharded run or a merge of shards (matrix.run.shards, reports.merge);
    # written only when set, like reruns.
    shard: dict[str, Any] = field(default_factory=dict)
    # Earlier verdicts of cells re-run in place (run --resume RUN_DIR --cells GLOB).
    reruns: list[dict[str, Any]] = field(default_factory=list)
    # Image hosts' registry images, pinned: host -> {reference, digest[, written]}.
    base_images: dict[str, dict[str, str]] = field(default_factory=dict)

    def cell(self, host: str, row: str) -> Cell | None:
        """The cell at (host, row): a dictionary lookup, not a scan per finished cell.

        The index is a private entry of ``__dict__`` (not a field: equality, repr and
        the JSON ignore it), rebuilt when ``cells`` changed under it.
        """
        found = self._at(host, row)
        if found is None:
            self.__dict__[_POSITIONS] = {(c.host, c.row): i for i, c in enumerate(self.cells)}
            found = self._at(host, row)
        return found

    def _at(self, host: str, row: str) -> Cell | None:
        position = self.__dict__.get(_POSITIONS, {}).get((host, row))
        if position is None or position >= len(self.cells):
            return None
        cell = self.cells[position]
        return cell if (cell.host, cell.row) == (host, row) else None

    def classification_rate(self) -> float | None:
        failed = [c for c in self.cells if c.state.is_failure or c.state is State.ALLOWED_FAILURE]
        if not failed:
            return None
        named = [c for c in failed if c.category and c.category.id != "uncategorized"]
        return len(named) / len(failed)

    def counts(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for cell in self.cells:
            totals[cell.state.value] = totals.get(cell.state.value, 0) + 1
        return dict(sorted(totals.items()))

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "cells"}
        data["schema_version"] = SCHEMA_VERSION
        _drop_unset(data)
        data["cells"] = [c.to_json() for c in self.cells]
        data["counts"] = self.counts()
        data["classification_rate"] = self.classification_rate()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunResults:
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"results schema_version {version!r} is not {SCHEMA_VERSION}")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known and k != "cells"}
        results = cls(**values)
        results.cells = [Cell.from_json(c) for c in data.get("cells", [])]
        return results


OMIT_WHEN_EMPTY = ("shard", "reruns",  # only sharded, merged or re-run runs have them
                   "provenance",  # runs made before provenance was recorded
                   "base_images")  # runs without a registry (image:) host


def _drop_unset(document: dict[str, Any]) -> None:
    for name in OMIT_WHEN_EMPTY:
        if not document.get(name):
            document.pop(name, None)


def current_umask() -> int:
    """This process's umask, read without changing it (os.umask would race threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` in one step so a reader (or a crash) never sees half a file."""
    write_chunks_atomically(path, [text.encode("utf-8")])


def write_chunks_atomically(path: Path, chunks: Iterable[bytes]) -> None:
    """:func:`write_atomically` of the concatenated ``chunks`` (not joined in memory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
            out.flush()
            # mkstemp makes the file 0600; a report is a file like any other (a web
            # server or another CI user reads it), so it gets what the umask allows.
            os.fchmod(out.fileno(), 0o666 & ~current_umask())
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


_CELL_INDENT = " " * 4  # a cell is an item of "cells", itself a key of the document
_FAILED_STATES = frozenset(s.value for s in State if s.is_failure or s is State.ALLOWED_FAILURE)


def _frozen(value: Any) -> Any:
    """A hashable snapshot of ``value`` that compares equal only to equal contents."""
    if isinstance(value, list | tuple):
        return (type(value), tuple(_frozen(v) for v in value))
    if isinstance(value, dict):
        return (dict, tuple((k, _frozen(v)) for k, v in value.items()))
    if hasattr(value, "__dataclass_fields__"):
        return (type(value), tuple(_frozen(getattr(value, f.name)) for f in fields(value)))
    return value


def _nested_key(cell: Cell) -> Any:
    """The values inside ``cell.category``, ``cell.artifacts`` and ``cell.checks`` (which
    assigning to the cell's own attributes does not cover), or None when all are empty."""
    category, artifacts, checks = cell.category, cell.artifacts, cell.checks
    if category is None and not artifacts and not checks:
        return None
    if type(category) is Category:
        cat: Any = (category.id, category.legend, category.link, tuple(category.labels))
    else:
        cat = _frozen(category)
    arts = tuple((a.path, a.type, a.size, a.sha256) if type(a) is Artifact else _frozen(a)
                 for a in artifacts)
    return (cat, type(artifacts), arts, _frozen(checks) if checks else None)


def _serialize(cell: Cell) -> tuple[Any, Any, bytes, tuple[str, bool]]:
    """Serialize ``cell`` and keep the text in it: (stamp, nested key, the cell's
    indented JSON text, tally), tally being (state, a failure with a named cause)."""
    own = cell.__dict__
    # Stamp and nested key first, the text after: a change made while this runs
    # leaves a key that no longer matches, so the next save serializes again.
    stamp = own.get(_STAMP)
    nested = _nested_key(cell)
    data = cell.to_json()
    # json.dumps escapes every non-ASCII character (ensure_ascii): the text is ASCII.
    text = _CELL_INDENT + json.dumps(data, indent=2, sort_keys=True).replace(
        "\n", "\n" + _CELL_INDENT)
    state, category = data["state"], data.get("category")
    named = state in _FAILED_STATES and bool(category) and category["id"] != "uncategorized"
    saved = (stamp, nested, text.encode("ascii"), (state, named))
    if stamp is not None:  # a Cell made without __init__ has no stamp: never trust its text
        own[_SAVED] = saved
    return saved


def _document(results: RunResults) -> list[bytes]:
    """The pieces of results.json, in order: ``json.dumps(results.to_json(), indent=2,
    sort_keys=True)`` plus a newline, from each cell's text of the last save where it
    still holds. The cells are one piece (one copy of their texts)."""
    texts: list[bytes] = []
    tallies: list[tuple[str, bool]] = []
    add_text, add_tally = texts.append, tallies.append  # the loop runs per cell per save
    for cell in list(results.cells):
        own = cell.__dict__
        saved = own.get(_SAVED)
        # Unchanged when no assignment took a new stamp and, if the cell has (or had)
        # a category or artifacts, their values are still the ones serialized.
        if (saved is None or saved[0] != own.get(_STAMP)
                or ((saved[1] is not None or cell.category is not None or cell.artifacts
                     or cell.checks)
                    and saved[1] != _nested_key(cell))):
            saved = _serialize(cell)
        add_text(saved[2])
        add_tally(saved[3])
    counts: dict[str, int] = {}
    failed = named = 0
    for (state, is_named), number in collections.Counter(tallies).items():
        counts[state] = counts.get(state, 0) + number
        if state in _FAILED_STATES:
            failed += number
            named += number if is_named else 0
    document: dict[str, Any] = {f.name: getattr(results, f.name) for f in fields(results)
                                if f.name != "cells"}
    document["schema_version"] = SCHEMA_VERSION
    _drop_unset(document)
    document["counts"] = dict(sorted(counts.items()))
    document["classification_rate"] = named / failed if failed else None
    chunks: list[bytes] = []
    text = "{\n"  # what is not a cell, written out when a cell's piece comes
    for index, key in enumerate(sorted([*document, "cells"])):
        text += (",\n" if index else "") + f"  {json.dumps(key)}: "
        if key != "cells":
            text += json.dumps(document[key], indent=2, sort_keys=True).replace("\n", "\n  ")
        elif not texts:
            text += "[]"
        else:
            chunks += [(text + "[\n").encode("ascii"), b",\n".join(texts)]
            text = "\n  ]"
    chunks.append((text + "\n}\n").encode("ascii"))
    return chunks


def save(results: RunResults, run_dir: Path) -> Path:
    path = run_dir / "results.json"
    write_chunks_atomically(path, _document(results))
    return path


def load(path: Path) -> RunResults:
    """Load a run from its directory or its results.json."""
    if path.is_dir():
        path = path / "results.json"
    return RunResults.from_json(json.loads(path.read_text(encoding="utf-8")))
