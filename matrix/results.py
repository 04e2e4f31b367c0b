"""Results of a run as plain data: cells, their states and the run's metadata.

``results.json`` is the one source every report reads. It is rewritten atomically
(temp file + rename) after every finished cell, so a killed orchestrator loses
nothing that finished.
"""

from __future__ import annotations

import enum
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


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

    def cell(self, host: str, row: str) -> Cell | None:
        return next((c for c in self.cells if c.host == host and c.row == row), None)

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


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` in one step so a reader (or a crash) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def save(results: RunResults, run_dir: Path) -> Path:
    path = run_dir / "results.json"
    write_atomically(path, json.dumps(results.to_json(), indent=2, sort_keys=True) + "\n")
    return path


def load(path: Path) -> RunResults:
    """Load a run from its directory or its results.json."""
    if path.is_dir():
        path = path / "results.json"
    return RunResults.from_json(json.loads(path.read_text(encoding="utf-8")))
