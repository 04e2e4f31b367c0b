"""The failure category catalogue: one YAML entry per cause, loaded and checked.

An entry names a cause (``id``), says it in one line (``legend``, which may use
named groups of the pattern that matched, or fields of dib's failure record),
and says how to recognise it: ``patterns`` over log lines, ``record`` (kinds of
dib's own failure record), or neither (then only a cell that knows the cause for
sure, e.g. a timeout, names it). The bundled catalogue comes first; a user's file
adds entries or replaces one with the same id, so any row can be re-categorised.

Patterns are compiled with RE2, whose matching time is linear in the line: a
pattern from a user's file cannot hang a run. What RE2 does not take
(backreferences, lookaround) is refused at load time with file, line and key.
An entry's keys are declared once, in ``CATEGORY_KEYS`` (see ``matrix.config.schema``).

A known issue has a lifecycle: an entry may name its ``ticket`` (an http(s) URL the
reports link), the day it became known (``since``), and either a day to look at it
again (``review-after``) or a day it stops being accepted (``expires``: an
allowed-failures rule naming it stops allowing it; ``matrix.verdict.lifecycle``).
"""

from __future__ import annotations

import datetime as dt
import enum
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import re2

from matrix.config.diagnostics import ConfigError, IssueCollector
from matrix.config.globs import compiled, glob_problem
from matrix.config.schema import (
    Derived,
    Invalid,
    Key,
    Reader,
    enum_parser,
    parse_bool,
    read_keys,
    shown,
)
from matrix.config.yamlload import KeyPath, load_yaml
from results.weblinks import web_url_problem

UNCATEGORIZED = "uncategorized"
ANY = "*"  # a host or row that every entry's scope takes (dib-matrix classify without --row)
DEFAULT_PRIORITY = 50
ID_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,127}")  # full match: "$" lets a final newline by


class RecordKind(str, enum.Enum):
    """Kinds of dib's own failure record (``dib.failure``) an entry can name."""

    HOOK = "hook"
    ENVIRONMENT = "environment"
    PACKAGES = "packages"
    DEBOOTSTRAP = "debootstrap"
    OUTPUT = "output"
    ELEMENTS = "elements"
    CONFIG = "config"
    INTERRUPTED = "interrupted"
    INTERNAL = "internal"


MAX_PATTERN_LENGTH = 2000
_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # a refused pattern is reported once, by us, with its place


def bundled_catalogue() -> Path:
    return Path(str(resources.files("matrix.verdict") / "categories" / "default.yaml"))


@dataclass(frozen=True)
class CategoryRule:
    id: str
    legend: str
    patterns: tuple[Any, ...] = ()  # compiled RE2 patterns
    priority: int = DEFAULT_PRIORITY
    record: tuple[RecordKind, ...] = ()  # kinds of dib failure record this entry names
    warnings: bool = False  # may match apt/debootstrap "W:" lines (else never)
    generic: bool = False  # a catch-all: names the tool or step that failed, not the cause
    # The mirror, the network or the engine failed, not the build: a bump run's gate
    # lists such a failure as infrastructure, never as a regression.
    infrastructure: bool = False
    # A retry can fix it (the mirror, the network or the engine may answer next time):
    # only such failures use the matrix's retries (matrix.run.retry).
    retry: bool = False
    ignore: tuple[Any, ...] = ()  # compiled RE2 patterns of lines the entry never takes
    link: str | None = None
    hosts: tuple[str, ...] = ("*",)
    targets: tuple[str, ...] = ("*",)  # globs over the row: a target, "tox", "hostgen", "x:boot"
    ticket: str | None = None  # the known issue's ticket (an http or https URL)
    since: dt.date | None = None  # the day the issue became known
    review_after: dt.date | None = None  # listed as stale after this day
    expires: dt.date | None = None  # stale, and no longer allowed, after this day

    def in_scope(self, host: str, row: str) -> bool:
        """Whether the entry applies to this cell; ``*`` stands for any host or row."""
        return (host == ANY or any(compiled(g).match(host) for g in self.hosts)) and (
            row == ANY or any(compiled(g).match(row) for g in self.targets))


@dataclass(frozen=True)
class Catalogue:
    rules: tuple[CategoryRule, ...]

    def get(self, rule_id: str) -> CategoryRule | None:
        return next((r for r in self.rules if r.id == rule_id), None)

    def scoped(self, host: str, row: str) -> tuple[CategoryRule, ...]:
        return tuple(r for r in self.rules if r.in_scope(host, row))

    def generic_ids(self) -> frozenset[str]:
        """Ids of the catch-all entries (``generic: true``): they name where a build
        failed, not why, so their failures get an excerpt of the log."""
        return frozenset(r.id for r in self.rules if r.generic)

    def infrastructure_ids(self) -> frozenset[str]:
        """Ids of the entries whose cause is the mirror, the network or the engine
        (``infrastructure: true``): never a regression in a bump run's gate."""
        return frozenset(r.id for r in self.rules if r.infrastructure)

    def retry_ids(self) -> frozenset[str]:
        """Ids of the entries a retry can fix (``retry: true``): the only failures the
        matrix's ``retries`` try again."""
        return frozenset(r.id for r in self.rules if r.retry)


def compile_pattern(text: str) -> Any:
    """An RE2 pattern, or ValueError saying why it is refused."""
    if len(text) > MAX_PATTERN_LENGTH:
        raise ValueError(f"longer than {MAX_PATTERN_LENGTH} characters")
    try:
        return re2.compile(text, options=_OPTIONS)
    except re2.error as err:
        detail = err.args[0] if err.args else err
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", errors="replace")
        raise ValueError(f"not a linear-time (RE2) regex: {detail}") from None


OPTIONAL_SEGMENT = re.compile(r"\[\[(.*?)\]\]")
MAX_LEGEND = 300


def legend_problem(legend: object) -> str | None:
    """Why ``legend`` cannot be a legend: only plain ``{name}`` fields may be filled in
    (a format spec such as ``{path:>99999999999}`` would exhaust memory)."""
    if not isinstance(legend, str) or not legend.strip():
        return "must be a non-empty string"
    if len(legend) > MAX_LEGEND:
        return f"longer than {MAX_LEGEND} characters"
    try:
        fields = list(string.Formatter().parse(OPTIONAL_SEGMENT.sub(r"\1", legend)))
    except ValueError as err:
        return f"not a legend template ({err}); write a literal brace as {{{{ or }}}}"
    for _, name, spec, conversion in fields:
        if name is not None and (not name.isidentifier() or spec or conversion):
            return (f"'{{{name}{'!' + conversion if conversion else ''}"
                    f"{':' + spec if spec else ''}}}': only {{name}} fields (a pattern's named "
                    "group or a dib failure record field) can be filled in")
    return None


def load_catalogue(paths: Sequence[Path] = ()) -> Catalogue:
    """The bundled catalogue, then each user file; a later entry with the same id replaces."""
    issues = IssueCollector()
    rules: dict[str, CategoryRule] = {}
    for path in (bundled_catalogue(), *paths):
        try:
            doc = load_yaml(path)
        except ConfigError as err:
            issues.extend(err.issues)
            continue
        issues.extend(doc.issues)
        if not isinstance(doc.data, list):
            issues.add(doc.issue((), "a category file must be a list of categories"))
            continue
        reader = Reader(doc, issues)
        for index, entry in enumerate(doc.data):
            rule = _rule(reader, index, entry)
            if rule is not None:
                rules.pop(rule.id, None)  # a replacement takes the place of the last file
                rules[rule.id] = rule
    issues.check()
    return Catalogue(tuple(rules.values()))


def _rule_id(value: object, reader: Reader, path: KeyPath) -> str:
    if not isinstance(value, str) or not ID_RE.fullmatch(value) or value == UNCATEGORIZED:
        raise Invalid(f"required: lower-case words and dashes (not '{UNCATEGORIZED}')")
    return value


def _legend(value: object, reader: Reader, path: KeyPath) -> str:
    problem = legend_problem(value)
    if problem:
        raise Invalid(problem)
    assert isinstance(value, str)
    return value


def _priority(value: object, reader: Reader, path: KeyPath) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 1000:
        raise Invalid("must be a whole number from 0 to 1000")
    return value


def _link(value: object, reader: Reader, path: KeyPath) -> str:
    if not isinstance(value, str):
        raise Invalid("must be a string (a URL)")
    return value


def _ticket(value: object, reader: Reader, path: KeyPath) -> str:
    problem = web_url_problem(value)
    if problem:
        raise Invalid(f"{problem}, got {shown(value)}")
    assert isinstance(value, str)
    return value


DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")  # full match: YYYY-MM-DD, nothing else


def parse_date(value: object, reader: Reader | None = None, path: KeyPath = ()) -> dt.date:
    """A day as YAML writes it (``2025-06-01``, read as a date) or the same text quoted;
    a time of day, another spelling (``20250601``) or an impossible day is refused."""
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    if isinstance(value, str) and DATE_RE.fullmatch(value):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise Invalid(f"must be a day as YYYY-MM-DD, got {shown(value)}")


def _patterns(value: object, reader: Reader, path: KeyPath) -> tuple[Any, ...]:
    if not isinstance(value, list):
        raise Invalid("must be a list of regexes")
    compiled = []
    problems: list[tuple[KeyPath, str]] = []
    for number, text in enumerate(value):
        if not isinstance(text, str) or not text:
            problems.append(((number,), "must be a non-empty string"))
            continue
        try:
            compiled.append(compile_pattern(text))
        except ValueError as err:
            problems.append(((number,), f"bad regex: {err}"))
    if problems:
        raise Invalid.many(problems)
    return tuple(compiled)


_record_kind = enum_parser(RecordKind)


def _record_kinds(value: object, reader: Reader, path: KeyPath) -> tuple[RecordKind, ...]:
    kinds = [value] if isinstance(value, str) else value
    try:
        if not isinstance(kinds, list):
            raise Invalid("not a list")
        return tuple(_record_kind(kind) for kind in kinds)
    except Invalid:
        raise Invalid("must be a list of dib failure kinds: "
                      + ", ".join(k.value for k in RecordKind)) from None


def _globs(value: object, reader: Reader, path: KeyPath) -> tuple[str, ...]:
    """One glob or a list of them (one is written bare on purpose: ``hosts: 'fedora-*'``)."""
    globs = [value] if isinstance(value, str) else value
    if not isinstance(globs, list) or not globs:
        raise Invalid("must be a glob or a list of globs")
    problems = [((index,), f"{problem}, got {shown(glob)}") for index, glob in enumerate(globs)
                if (problem := glob_problem(glob)) is not None]
    if problems:
        raise Invalid.many(problems if isinstance(value, list) else [((), problems[0][1])])
    return tuple(globs)


CATEGORY_KEYS: tuple[Key, ...] = (
    Key("id", _rule_id, "lower-case words and dashes; one cause, one id", required=True),
    Key("legend", _legend, "the footnote text; {name} takes a named group of the matching "
        "pattern or a field of dib's failure record",
        Derived(lambda values, reader: values["id"], "the id")),
    Key("priority", _priority, "0-1000: the highest matching entry names the cause",
        DEFAULT_PRIORITY),
    Key("patterns", _patterns, "RE2 regexes searched in each log line", []),
    Key("record", _record_kinds, "kinds of dib's failure record the entry names: "
        + ", ".join(k.value for k in RecordKind), []),
    Key("warnings", parse_bool, "may match apt's and debootstrap's W: lines", False),
    Key("ignore", _patterns, "RE2 regexes of lines the entry never takes (a benign line "
        "that reads like its own, e.g. apt's E: about /dev/pts in a chroot)", []),
    Key("generic", parse_bool, "a catch-all entry: it names the tool or step that failed, not "
        "the cause (dib-matrix catalogue coverage counts it apart)", False),
    Key("infrastructure", parse_bool, "the cause is the mirror, the network or the container "
        "engine, not the build: a bump run (run --bump-from) lists such a failure as "
        "infrastructure, never as a regression", False),
    Key("retry", parse_bool, "a retry can fix it (a mirror that was unreachable or syncing, a "
        "network or engine hiccup): only such failures are tried again, up to the matrix's "
        "retries, after retry-delay, doubling; any other failure is never retried", False),
    Key("link", _link, "a URL shown with the legend"),
    Key("hosts", _globs, "globs over host names the entry applies to", ANY),
    Key("targets", _globs, "globs over rows (tox, hostgen, a target, <target>:boot) the "
        "entry applies to", ANY),
    Key("ticket", _ticket, "the known issue's ticket, an http or https URL: reports link it "
        "and say how often the cause was seen"),
    Key("since", parse_date, "the day the issue became known (YYYY-MM-DD)"),
    Key("review-after", parse_date, "from the day after, catalogue stale lists the entry "
        "(YYYY-MM-DD; not with expires)"),
    Key("expires", parse_date, "from the day after, the entry is stale and an "
        "allowed-failures rule naming it no longer allows its failures (YYYY-MM-DD; not with "
        "review-after)"),
)


def _check_dates(reader: Reader, index: int, values: dict[str, Any]) -> None:
    """A known issue is reviewed or expires, not both; neither before it was known."""
    if values["review-after"] is not None and values["expires"] is not None:
        reader.report((index, "expires"), "give review-after or expires, not both")
    for key in ("review-after", "expires"):
        if values["since"] is not None and values[key] is not None and (
                values[key] < values["since"]):
            reader.report((index, key), f"{values[key]} is before since ({values['since']})")


def _rule(reader: Reader, index: int, entry: object) -> CategoryRule | None:
    if not isinstance(entry, dict):
        reader.report((index,), "each category must be a mapping")
        return None
    values = read_keys(CATEGORY_KEYS, entry, reader, prefix=(index,))
    if values["id"] is None:
        return None
    _check_dates(reader, index, values)
    return CategoryRule(**{key.field: values[key.name] for key in CATEGORY_KEYS})
