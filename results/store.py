"""Writing a run's results.json: atomically, and at the cost of what changed.

``results.json`` is the one source every report reads. It is rewritten atomically
(temp file + rename) after every finished cell, so a killed orchestrator loses
nothing that finished. Reading it back is :mod:`results.reader`'s job (a run
directory is untrusted once written); where it lives in the run directory is
:class:`results.archive.RunDir`'s.

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
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path
from typing import Any

from results.model import (
    SAVED_ENTRY,
    SCHEMA_VERSION,
    STAMP_ENTRY,
    Artifact,
    Category,
    Cell,
    RunResults,
    State,
    drop_unset,
)
from results.paths import check_replaceable

RESULTS_FILE = "results.json"  # a run's results, in its directory


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
    """:func:`write_atomically` of the concatenated ``chunks`` (not joined in memory).

    Only a regular file (or nothing) at ``path`` is replaced: the rename would turn a
    FIFO, a device, a symlink (``/dev/stdout``) or a directory into a regular file, so
    those raise :class:`results.paths.UnsafeOutput` (an OSError) and stay as they are.
    """
    check_replaceable(path)
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


def save(results: RunResults, run_dir: Path) -> Path:
    """Write ``results`` to ``run_dir``'s results.json (atomically); its path."""
    path = run_dir / RESULTS_FILE
    write_chunks_atomically(path, _document(results))
    return path


# ---------------------------------------------------------------- the incremental document

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
        cat: Any = (category.id, category.legend, category.link, tuple(category.labels),
                    category.ticket)
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
    stamp = own.get(STAMP_ENTRY)
    nested = _nested_key(cell)
    data = cell.to_json()
    # json.dumps escapes every non-ASCII character (ensure_ascii): the text is ASCII.
    text = _CELL_INDENT + json.dumps(data, indent=2, sort_keys=True).replace(
        "\n", "\n" + _CELL_INDENT)
    state, category = data["state"], data.get("category")
    named = state in _FAILED_STATES and bool(category) and category["id"] != "uncategorized"
    saved = (stamp, nested, text.encode("ascii"), (state, named))
    if stamp is not None:  # a Cell made without __init__ has no stamp: never trust its text
        own[SAVED_ENTRY] = saved
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
        saved = own.get(SAVED_ENTRY)
        # Unchanged when no assignment took a new stamp and, if the cell has (or had)
        # a category or artifacts, their values are still the ones serialized.
        if (saved is None or saved[0] != own.get(STAMP_ENTRY)
                or ((saved[1] is not None or cell.category is not None or cell.artifacts
                     or cell.checks)
                    and saved[1] != _nested_key(cell))):
            saved = _serialize(cell)
        add_text(saved[2])
        if cell.investigation is None:  # an investigation's variant is off the counts
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
    drop_unset(document)
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
