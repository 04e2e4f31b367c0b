"""A seeded fuzzer over the golden results.json: the reader loads or refuses, nothing else.

Each round tampers with a copy of the golden all-states run's document (types
swapped, keys dropped, names and paths replaced by hostile strings, numbers that are
not JSON's, lone surrogates, duplicate keys, deep nesting) and reads it back with
:func:`results.reader.read_results`. Every round must end in one of two ways, fast:

- a ResultsError whose message is one line naming the file and a JSON path, with no
  character a terminal would act on; or
- a run that keeps the reader's promises: names are names, each cell id once, logs and
  images inside their directories of the run, and the text report, JUnit, compare and
  the gate work on it.

Rounds: ``tests.hostile.fuzz_rounds()`` (60 by default, ``DIB_MATRIX_FUZZ_ROUNDS``).
A failing round names its seed and what was done to the document.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from reports.compare import compare
from reports.gate import gate_exit_code
from reports.junit import render_junit
from reports.text import render_report
from results.model import RunResults
from results.names import is_name, is_row, is_run_id
from results.reader import ResultsError, read_results
from tests.hostile import fuzz_rounds
from tests.resultfactory import ALL_STATES

GOLDEN = json.loads((ALL_STATES / "results.json").read_text(encoding="utf-8"))
ROUND_SECONDS = 5.0  # a sanity bound: a round takes milliseconds
HOSTILE_STRINGS = ["../x", "../../../../etc/passwd", "/etc", "a\nb", "x\r", "\x1b[31mred",
                   "\x1b]0;pwned\x07", "", ".", "..", " ", "a b", "UPPER", "x" * 5000,
                   "\u202eevil", "caf\u00e9", "\x00", "a/b", "a\\b", "logs/../../x",
                   "images/h/../../../x", "logs/h/x.log\n", "javascript:alert(1)", "\ud800",
                   "\udfff\ud800", "host:boot", "x:boot", "-", "a.b"]
SWAPS: list[Any] = [None, True, False, 0, -1, 1.5, "", "false", "1", [], {}, [1], {"a": 1},
                    10 ** 30, -(10 ** 25)]
# Markers put into the document and replaced in its text: what json.dumps cannot write.
DEEP, NAN, DUPLICATE = "@@deep@@", "@@nan@@", "@@duplicate@@"


def places(document: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into ``document`` (keys and indices), the root included."""
    found = [at]
    if isinstance(document, dict):
        for key, value in document.items():
            found += places(value, (*at, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            found += places(value, (*at, index))
    return found


def get(document: Any, at: tuple[Any, ...]) -> Any:
    for part in at:
        document = document[part]
    return document


def swap_type(rng: random.Random, document: Any, at: tuple[Any, ...]) -> str:
    value = rng.choice(SWAPS)
    get(document, at[:-1])[at[-1]] = value
    return f"{at} = {value!r:.40}"


def drop_key(rng: random.Random, document: Any, at: tuple[Any, ...]) -> str:
    parent = get(document, at[:-1])
    if isinstance(parent, dict):
        del parent[at[-1]]
        return f"del {at}"
    del parent[at[-1]]
    return f"del {at} (an item)"


def hostile_string(rng: random.Random, document: Any, at: tuple[Any, ...]) -> str:
    value = rng.choice(HOSTILE_STRINGS)
    get(document, at[:-1])[at[-1]] = value
    return f"{at} = {value!r:.40}"


def hostile_key(rng: random.Random, document: Any, at: tuple[Any, ...]) -> str:
    parent = get(document, at[:-1])
    if not isinstance(parent, dict):
        return hostile_string(rng, document, at)
    key = rng.choice(HOSTILE_STRINGS)
    parent[key] = parent.pop(at[-1])
    return f"key {at} -> {key!r:.40}"


def marker(name: str) -> Any:
    def put(rng: random.Random, document: Any, at: tuple[Any, ...]) -> str:
        get(document, at[:-1])[at[-1]] = name
        return f"{at} = {name}"
    return put


def name_everywhere(rng: random.Random, document: Any, at: tuple[Any, ...]) -> str:
    """A host renamed in one of the places names live (hosts, a cell, its log path)."""
    value = rng.choice(HOSTILE_STRINGS)
    cell = rng.choice(document["cells"]) if isinstance(document.get("cells"), list) else {}
    where = rng.choice(["hosts", "host", "row", "log", "id"])
    if where == "hosts" and isinstance(document.get("hosts"), list) and document["hosts"]:
        document["hosts"][0] = value
    elif isinstance(cell, dict):
        cell[where] = value
    return f"{where} = {value!r:.40}"


def twin_cell(rng: random.Random, document: Any, at: tuple[Any, ...]) -> str:
    """A cell listed twice, the copy with another verdict: one would hide the other."""
    cells = document.get("cells")
    if not isinstance(cells, list) or not cells or not isinstance(cells[0], dict):
        return "no cells to copy"
    twin = dict(rng.choice(cells))
    twin["state"] = rng.choice(["success", "failed"])
    cells.insert(rng.randrange(len(cells) + 1), twin)
    return f"twin of {twin.get('id')!r}"


MUTATIONS = [swap_type, swap_type, drop_key, hostile_string, hostile_string, hostile_key,
             name_everywhere, name_everywhere, twin_cell, marker(DEEP), marker(NAN),
             marker(DUPLICATE)]


def shard_mark(document: dict[str, Any]) -> dict[str, Any]:
    """The mark of shard 1 of 2 that ``run --shard`` writes, for the golden run's cells."""
    hosts = document["hosts"]
    return {"kind": "part", "index": 1, "count": 2, "matrix_hash": "ab" * 32,
            "dib_tree_digest": "cd" * 32, "balance": "kind", "hosts": hosts[:2],
            "plan": {"hosts": hosts, "rows": document["rows"],
                     "assignment": {h: 1 if i < 2 else 2 for i, h in enumerate(hosts)},
                     "cells": [[c["host"], c["row"], c["kind"], c["voting"]]
                               for c in document["cells"]]}}


def rerun_record(document: dict[str, Any]) -> dict[str, Any]:
    """What ``run --resume RUN_DIR --cells`` keeps of a cell's earlier verdict."""
    cell = document["cells"][3]
    return {"cell": cell["id"], "at": "2025-06-02T00:00:00+00:00", "finished": None,
            "state": "failed", "category": "boom", "evidence": "E: boom", "reason": None,
            "attempts": 1, "duration": 3.0, "log": f"logs/{cell['host']}/x.run-1.log",
            "reused": False, "rerun_dib_tree": None}


def tampered(rng: random.Random) -> tuple[bytes, list[str]]:
    """The golden document (with a shard mark or a re-run record, at times) after one
    to three mutations, as the bytes of a file."""
    document = json.loads(json.dumps(GOLDEN))
    if rng.random() < 0.3:
        document["shard"] = shard_mark(document)
    if rng.random() < 0.2:
        document["reruns"] = [rerun_record(document)]
    done = []
    for _ in range(rng.randint(1, 3)):
        targets = places(document)[1:]
        if not targets:
            break
        done.append(rng.choice(MUTATIONS)(rng, document, rng.choice(targets)))
    text = json.dumps(document, indent=rng.choice([None, 2]))
    depth = rng.choice([40, 1000, 100_000])
    text = (text.replace(json.dumps(DEEP), "[" * depth + "]" * depth, 1)
            .replace(json.dumps(NAN), rng.choice(["NaN", "Infinity", "-Infinity", "1e999"]))
            .replace(json.dumps(DUPLICATE), '{"a": 1, "a": 2}'))
    return text.encode("utf-8", "surrogatepass"), done


def keeps_promises(run: RunResults) -> None:
    """What a loaded run may be trusted with."""
    assert is_run_id(run.run_id)
    assert all(is_name(h) for h in run.hosts) and len(set(run.hosts)) == len(run.hosts)
    assert all(is_row(r) for r in run.rows) and len(set(run.rows)) == len(run.rows)
    ids = [c.id for c in run.cells]
    assert len(set(ids)) == len(ids)
    for cell in run.cells:
        assert is_name(cell.host) and is_row(cell.row) and isinstance(cell.voting, bool)
        paths = [cell.log or "logs/x"] + [a.path for a in cell.artifacts]
        for path in paths:
            parts = PurePosixPath(path).parts
            assert parts[0] in ("logs", "images") and ".." not in parts, path
    mark = run.shard
    if mark:
        assert 1 <= mark.get("index", 1) <= mark["count"]
        plan = mark.get("plan", {"hosts": [], "rows": [], "cells": []})
        assert all(is_name(h) for h in [*mark.get("hosts", []), *plan["hosts"]])
        assert all(is_name(h) and is_row(r) for h, r, _, _ in plan["cells"])
    for rerun in run.reruns:
        assert rerun.get("log") is None or PurePosixPath(rerun["log"]).parts[0] == "logs"
    render_report(run)
    render_junit(run)
    compare(read_results(ALL_STATES), run)
    assert gate_exit_code(run) in (0, 1)


def refusal_is_one_clear_line(err: ResultsError, file: Path) -> None:
    message = str(err)
    assert message.startswith(f"{file}: $"), message
    assert message.isprintable(), repr(message)  # no newline, ESC, CR or bidi override
    assert len(message) < 600, message


@pytest.mark.parametrize("round_number", range(fuzz_rounds()))
def test_tampered_results_load_or_are_refused(tmp_path, round_number):
    rng = random.Random(f"results-fuzz-{round_number}")
    data, done = tampered(rng)
    file = tmp_path / "results.json"
    file.write_bytes(data)
    started = time.monotonic()
    try:
        run = read_results(tmp_path)
    except ResultsError as err:
        refusal_is_one_clear_line(err, file)
    else:
        keeps_promises(run)
    took = time.monotonic() - started
    assert took < ROUND_SECONDS, f"round {round_number} ({done}) took {took:.1f} s"


def test_the_untampered_golden_run_loads(tmp_path):
    keeps_promises(read_results(ALL_STATES))
    document = json.loads(json.dumps(GOLDEN))
    document.update(shard=shard_mark(document), reruns=[rerun_record(document)])
    (tmp_path / "results.json").write_text(json.dumps(document))
    keeps_promises(read_results(tmp_path))
