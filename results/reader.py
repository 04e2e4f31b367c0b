"""The one reader of results.json: a run directory is untrusted input once written.

A run directory may come from another machine (a shard part, a CI artifact) or have
been edited by hand, and what it says becomes paths (``logs/<host>/<row>.log``),
links in reports and the gate's exit code. Every reader of a run goes through
:func:`read_results`, which takes a file only when all of this holds:

1. it is a regular file (never a FIFO, a device or a directory) of at most
   ``MAX_BYTES``, in strict UTF-8 (``results.safefile``);
2. it is JSON as RFC 8259 has it: no NaN or Infinity, no number that overflows, no
   duplicate key (the second value would hide the first), no lone surrogate (no
   UTF-8 writer can write it back); of a bounded size: at most ``MAX_CONTAINERS``
   arrays and objects before parsing (a tiny ``[]`` costs ~60 bytes of memory),
   ``MAX_VALUES`` values after, nested at most ``MAX_DEPTH`` deep (everything after
   the parser recurses);
3. it is valid against the shipped JSON Schema: types, states, kinds, required keys,
   and list sizes far above any run (so a hostile file's validation stays short);
4. what a schema cannot say holds: names are names (``results.names``: they become
   paths), each host, row and cell id once, logs and images inside their own
   directory of the run, a shard's numbers consistent.

Otherwise :class:`ResultsError` says which file and the JSON path of its first
problem, on one line, with the untrusted text in it escaped and cut. An I/O error
(missing file, FIFO, no permission) stays an OSError: :func:`error_line` words both.
"""

from __future__ import annotations

import functools
import json
import math
import re
import reprlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from results.limits import MAX_SHARDS
from results.model import SCHEMA_VERSION, RunResults
from results.names import is_name, is_row, is_run_id
from results.safefile import MiB, read_regular
from results.schemafile import SCHEMA_PATH

# A 2,600-cell run is ~10 MB (~4 KB a cell); cells with a full package manifest in
# their provenance reach ~15 KB. 64 MiB keeps room for such a run and bounds what
# parsing costs (about five times the file in memory).
MAX_BYTES = 64 * MiB
# Ours nest 6 deep (a merged run's engine, a shard plan's cells); the bound keeps every
# recursive consumer (schema validation, copies, json.dumps) far from Python's limit.
MAX_DEPTH = 32
# ~10 per cell in ours: a million brackets is far beyond any run we write.
MAX_CONTAINERS = 1_000_000
# Values of every kind: ~110 a cell in a 2,600-cell run, ~400 with a full package
# manifest. What validation costs follows this count (~7 us a value the schema visits),
# so it is the bound on a valid but absurd file's time, as MAX_BYTES is on its memory.
MAX_VALUES = 2_000_000
MAX_DIGITS = 20  # an integer we write (sizes, bytes, counts) has at most 20 digits
PATH_LIMIT = 1024  # characters of a log or image path
SHOWN = 80  # characters of untrusted text in a message
PATH_PARTS = 8  # keys and indices of a JSON path in a message (ours go 5 deep)
MESSAGE_LIMIT = 240  # characters of a schema error's own wording


class ResultsError(ValueError):
    """A results.json that is not one this tool may read; one line: file, where, what."""

    def __init__(self, path: Path, where: str, problem: str):
        self.path, self.where, self.problem = path, where, problem
        super().__init__(f"{shown_path(path)}: {where}: {printable(problem)}")


Problem = tuple[str, str]  # (JSON path, what is wrong there)


def read_results(path: Path) -> RunResults:
    """The run at ``path`` (its directory or its results.json), checked as above."""
    file = path / "results.json" if path.is_dir() else path
    document = _parse(file, read_regular(file, MAX_BYTES))
    problem = (_version_problem(document) or _schema_problem(document)
               or next(_rule_problems(document), None))
    if problem is not None:
        raise ResultsError(file, *problem)
    try:
        return RunResults.from_json(document)
    except (KeyError, TypeError, ValueError) as err:  # the checks above missed a case
        raise ResultsError(file, "$", f"cannot be read: {err}") from err


def error_line(err: OSError | ResultsError) -> str:
    """What went wrong reading a run, on one line: ``<file>: <problem>``."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{shown_path(err.filename)}: {err.strerror}"
    return printable(str(err))


# ---------------------------------------------------------------- text in messages

_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = SHOWN
_SHORT.maxlist = _SHORT.maxdict = 3
_SHORT.maxlevel = 2


def clip(value: object) -> str:
    """``value`` for a message: its repr (control characters escaped), cut to ~80;
    JSON's words for null, true and false."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return _SHORT.repr(value)


def printable(text: str) -> str:
    """``text`` with every character a terminal would act on escaped (one line)."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def shown_path(path: object) -> str:
    return printable(str(path))


def _key_path(base: str, key: str) -> str:
    """``$.a.b`` for a plain key, ``$.a['odd key']`` for anything else."""
    if _PLAIN_KEY.fullmatch(key):
        return f"{base}.{key}"
    return f"{base}[{clip(key)}]"


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,79}")


def _json_path(parts: Sequence[str | int]) -> str:
    """``$.cells[3].host``; past PATH_PARTS parts (only nesting we never write) cut: ``...``."""
    where = "$"
    for part in parts[:PATH_PARTS]:
        where = f"{where}[{part}]" if isinstance(part, int) else _key_path(where, part)
    return where + ("..." if len(parts) > PATH_PARTS else "")


# ---------------------------------------------------------------- 1, 2: bytes to JSON


@dataclass(frozen=True)
class _Refused:
    """A value the parser met that results.json must not hold, left in its place so the
    walk after parsing can say where it is."""

    why: str


class _Hooks:
    """``json.loads``'s hooks for one parse; ``refused`` says whether they left a _Refused."""

    def __init__(self) -> None:
        self.refused = False

    def _refuse(self, why: str) -> _Refused:
        self.refused = True
        return _Refused(why)

    def constant(self, name: str) -> _Refused:  # NaN, Infinity, -Infinity
        return self._refuse(f"{name} is not a JSON number")

    def float(self, text: str) -> float | _Refused:
        value = float(text)
        return self._refuse(f"{clip(text)} overflows") if math.isinf(value) else value

    def int(self, text: str) -> int | _Refused:
        if len(text.lstrip("-")) > MAX_DIGITS:
            return self._refuse(f"an integer of {len(text)} digits")
        return int(text)

    def object(self, pairs: list[tuple[str, Any]]) -> dict[str, Any] | _Refused:
        found = dict(pairs)
        if len(found) == len(pairs):
            return found
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                return self._refuse(f"duplicate key {clip(key)}")
            seen.add(key)
        return found  # not reached: dict() lost a key, so one came twice


def _parse(file: Path, data: bytes) -> Any:
    """The JSON document in ``data``, or ResultsError at its first problem."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ResultsError(file, "$", f"not UTF-8 (byte {err.start})") from err
    containers = text.count("[") + text.count("{")  # brackets in strings count too: a bound
    if containers > MAX_CONTAINERS:
        raise ResultsError(file, "$", f"more than {MAX_CONTAINERS} arrays and objects")
    hooks = _Hooks()
    try:
        document = json.loads(text, object_pairs_hook=hooks.object, parse_constant=hooks.constant,
                              parse_float=hooks.float, parse_int=hooks.int)
    except json.JSONDecodeError as err:
        raise ResultsError(file, "$", f"not JSON: {err.msg} at line {err.lineno} "
                                      f"column {err.colno}") from err
    except ValueError as err:
        raise ResultsError(file, "$", f"not JSON: {err}") from err
    except RecursionError as err:  # the C parser's own guard; refused here, not passed on
        raise ResultsError(file, "$", f"nested deeper than {MAX_DEPTH} levels") from err
    every_value = hooks.refused or _SURROGATE_ESCAPE.search(text) is not None
    problem = _walk(document, every_value)
    if problem is not None:
        raise ResultsError(file, *problem)
    return document


# Only an escape writes a surrogate (strict UTF-8 refused encoded ones); the parser joins
# a pair into one character, so one left in a string is alone.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _walk(document: Any, every_value: bool) -> Problem | None:
    """The first place nested too deep and, with ``every_value``, the first refused value
    or lone surrogate; depth first, in document order, without recursion. Without
    ``every_value`` (nothing to find there) only arrays and objects are visited. Past
    MAX_VALUES values in all, the document is refused."""
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), document)]
    values = 1
    while stack:
        at, value = stack.pop()
        if len(at) > MAX_DEPTH:
            return _json_path(at), f"nested deeper than {MAX_DEPTH} levels"
        if every_value:
            problem = _value_problem(value)
            if problem is not None:
                return _json_path(at), problem
        if isinstance(value, dict):
            children: list[tuple[str | int, Any]] = list(value.items())
        elif isinstance(value, list):
            children = list(enumerate(value))
        else:
            continue
        values += len(children)
        if values > MAX_VALUES:
            return "$", f"more than {MAX_VALUES} values"
        stack.extend(((*at, key), child) for key, child in reversed(children)
                     if every_value or isinstance(child, (dict, list)))
    return None


def _value_problem(value: Any) -> str | None:
    if isinstance(value, _Refused):
        return value.why
    if isinstance(value, str) and _LONE_SURROGATE.search(value):
        return f"a lone surrogate in {clip(value)}"
    if isinstance(value, dict):
        bad = next((key for key in value if _LONE_SURROGATE.search(key)), None)
        if bad is not None:
            return f"a lone surrogate in the key {clip(bad)}"
    return None


# ---------------------------------------------------------------- 3: the JSON Schema


def _version_problem(document: Any) -> Problem | None:
    """Another version's file says so first (the schema would name some other key)."""
    if not isinstance(document, dict) or "schema_version" not in document:
        return None
    version = document["schema_version"]
    if version == SCHEMA_VERSION and type(version) is int:
        return None
    return "$.schema_version", f"results schema_version {clip(version)} is not {SCHEMA_VERSION}"


@functools.lru_cache(maxsize=1)
def _validator() -> Any:
    import jsonschema  # 85 ms to import: only a reader of results pays it

    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema)


def _schema_problem(document: Any) -> Problem | None:
    """The first error, not the best of all: a hostile file may hold millions, and the
    schema's size bounds come before the items they bound, so it stops early."""
    from jsonschema.exceptions import best_match

    first = next(_validator().iter_errors(document), None)
    if first is None:
        return None
    error = best_match([first])  # into a oneOf/anyOf's alternatives, should one fail
    return _json_path(tuple(error.absolute_path)), _schema_message(error)


def _schema_message(error: Any) -> str:
    """jsonschema's wording with the offending value cut short (it quotes it whole)."""
    message: str = error.message
    whole = repr(error.instance)
    if message.startswith(whole):
        message = clip(error.instance) + message[len(whole):]
    if len(message) > MESSAGE_LIMIT:
        message = message[:MESSAGE_LIMIT] + "..."
    return message


# ---------------------------------------------------------------- 4: beyond the schema
# The schema has held: every type below is the one it names.


def _rule_problems(document: Mapping[str, Any]) -> Iterator[Problem]:
    if not is_run_id(document["run_id"]):
        yield "$.run_id", f"not a run id: {clip(document['run_id'])}"
    yield from _names("$.hosts", document["hosts"], is_name, "a host name")
    yield from _names("$.rows", document["rows"], is_row, "a row name")
    for key in ("host_images", "base_images"):
        yield from _key_names(f"$.{key}", document.get(key, {}))
    yield from _cell_problems(document["cells"])
    for index, rerun in enumerate(document.get("reruns", [])):
        yield from _place(f"$.reruns[{index}].log", rerun.get("log"), "logs", optional=True)
    if "shard" in document:
        yield from _shard_problems(document["shard"])


def _names(where: str, values: Iterable[Any], rule: Callable[[object], bool],
           what: str) -> Iterator[Problem]:
    """Each of ``values`` a name by ``rule``, and each once."""
    seen: set[str] = set()
    for index, value in enumerate(values):
        if not rule(value):
            yield f"{where}[{index}]", f"not {what}: {clip(value)}"
        elif value in seen:
            yield f"{where}[{index}]", f"{clip(value)} is listed twice"
        seen.add(value)


def _key_names(where: str, mapping: Mapping[str, Any]) -> Iterator[Problem]:
    for key in mapping:
        if not is_name(key):
            yield _key_path(where, key), f"not a host name: {clip(key)}"


def _cell_problems(cells: list[dict[str, Any]]) -> Iterator[Problem]:
    seen: set[str] = set()
    for index, cell in enumerate(cells):
        at = f"$.cells[{index}]"
        host, row = cell["host"], cell["row"]
        if not is_name(host):
            yield f"{at}.host", f"not a host name: {clip(host)}"
        if not is_row(row):
            yield f"{at}.row", f"not a row name: {clip(row)}"
        cell_id = f"{host}.{row}"
        if cell["id"] != cell_id:
            yield f"{at}.id", f"{clip(cell['id'])} is not <host>.<row> ({clip(cell_id)})"
        elif cell_id in seen:  # a second verdict for a cell would hide the first
            yield f"{at}.id", f"cell {clip(cell_id)} is listed twice"
        seen.add(cell_id)
        yield from _cell_paths(at, cell)


def _cell_paths(at: str, cell: Mapping[str, Any]) -> Iterator[Problem]:
    yield from _place(f"{at}.log", cell.get("log"), "logs", optional=True)
    for index, artifact in enumerate(cell.get("artifacts", [])):
        yield from _place(f"{at}.artifacts[{index}].path", artifact["path"], "images")
    for index, check in enumerate(cell.get("checks", [])):
        yield from _place(f"{at}.checks[{index}].image", check.get("image"), "images",
                          optional=True)
    manifest = cell.get("provenance", {}).get("packages_manifest")
    yield from _place(f"{at}.provenance.packages_manifest", manifest, "images", optional=True)


def _place(where: str, value: str | None, top: str, optional: bool = False
           ) -> Iterator[Problem]:
    """A path the run recorded: relative, inside ``top`` (logs/, images/), no ``..``;
    None or "" when ``optional`` (no log, no image)."""
    if optional and not value:
        return
    value = value or ""
    parts = PurePosixPath(value).parts
    if (len(value) > PATH_LIMIT or value.startswith("/") or len(parts) < 2
            or parts[0] != top or ".." in parts or "\\" in value or not value.isprintable()):
        yield where, f"not a path inside {top}/: {clip(value)}"


def _shard_problems(shard: Mapping[str, Any]) -> Iterator[Problem]:
    count = shard["count"]
    if count > MAX_SHARDS:  # it sizes merge's loops and listings
        yield "$.shard.count", f"{count} shards: more than {MAX_SHARDS}"
    if shard.get("index", 1) > count:
        yield "$.shard.index", f"{shard['index']} is more than $.shard.count ({count})"
    yield from _names("$.shard.hosts", shard.get("hosts", []), is_name, "a host name")
    if "plan" in shard:
        yield from _plan_problems(shard["plan"], count)
    for index, part in enumerate(shard.get("parts", [])):
        at = f"$.shard.parts[{index}]"
        if part["index"] > count:
            yield f"{at}.index", f"{part['index']} is more than $.shard.count ({count})"
        if not is_run_id(part["run_id"]):
            yield f"{at}.run_id", f"not a run id: {clip(part['run_id'])}"
        yield from _names(f"{at}.hosts", part.get("hosts", []), is_name, "a host name")
    for index, number in enumerate(shard.get("missing", [])):
        if number > count:
            yield f"$.shard.missing[{index}]", f"{number} is more than $.shard.count ({count})"


def _plan_problems(plan: Mapping[str, Any], count: int) -> Iterator[Problem]:
    yield from _names("$.shard.plan.hosts", plan["hosts"], is_name, "a host name")
    yield from _names("$.shard.plan.rows", plan["rows"], is_row, "a row name")
    for host, number in plan["assignment"].items():
        where = _key_path("$.shard.plan.assignment", host)
        if not is_name(host):
            yield where, f"not a host name: {clip(host)}"
        elif number > count:
            yield where, f"shard {number} is more than $.shard.count ({count})"
    seen: set[str] = set()
    for index, (host, row, _kind, _voting) in enumerate(plan["cells"]):
        at = f"$.shard.plan.cells[{index}]"
        if not is_name(host):
            yield f"{at}[0]", f"not a host name: {clip(host)}"
        if not is_row(row):
            yield f"{at}[1]", f"not a row name: {clip(row)}"
        if f"{host}.{row}" in seen:
            yield at, f"cell {clip(f'{host}.{row}')} is listed twice"
        seen.add(f"{host}.{row}")
