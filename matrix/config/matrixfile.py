"""The matrix file: which hosts and targets, what to leave out or add, how to run.

Every key is declared once in ``MATRIX_KEYS`` (parser, default, help): the loader,
``dib-matrix run --help`` and the command-line overrides (``--timeout`` ...) all
read that table. Validation collects every problem with file, line and key.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matrix.config.diagnostics import ConfigError, ConfigIssue, IssueCollector
from matrix.config.globs import NameIndex, compiled, first_matches, glob_problem, match_globs
from matrix.config.hosts import HostDefinition, load_host, load_hosts
from matrix.config.registry import BadReference, parse_mirror, with_registry_mirror
from matrix.config.registryname import RegistryName, parse_registry
from matrix.config.schema import (
    Derived,
    Invalid,
    Key,
    Option,
    Reader,
    bounded_int,
    closest,
    enum_parser,
    parse_bool,
    parse_dib_env,
    parse_text,
    read_keys,
    shown,
)
from matrix.config.snapshotkey import SnapshotSetting, parse_snapshot
from matrix.config.targets import BOOT_SUFFIX, Target, load_target, load_targets
from matrix.config.yamlload import KeyPath, load_yaml
from results.names import is_name
from results.retention import Policy, parse_keep_days, parse_keep_runs
from results.sizes import parse_size


class Network(str, enum.Enum):
    """How cell containers reach the network (the matrix's ``network`` key)."""

    HOST = "host"
    NONE = "none"
    BRIDGE = "bridge"


class Check(str, enum.Enum):
    """Per-host check rows (the matrix's ``checks`` key)."""

    TOX = "tox"


BUNDLED_MATRICES_DIR = Path(__file__).resolve().parent / "matrices"
DEFAULT_MATRIX = "default"
DURATION_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smh]?)\s*")  # full match
MAX_DURATION = 7 * 24 * 3600.0  # a week: beyond it a timer is a typo (or .inf)
BOOT_TIMEOUT_CAP = 600.0  # a boot test's default: the cell timeout, at most 10 minutes
# Counts that multiply work. Each failed cell runs 1 + retries times: ten retries is
# far past "flaky", and 10**9 would keep a run going for ever. Cells at once are
# containers on one engine (or services of one swarm): past a few hundred the engine,
# not the matrix, is the limit.
MAX_RETRIES = 10
MAX_PARALLEL = 256
# Cells investigated per run: each costs up to five builds.
MAX_INVESTIGATE = 100
# The back-off between retries doubles up to this; a longer first wait is a typo (a
# mirror that syncs for longer is better pinned to a snapshot than waited for).
MAX_RETRY_DELAY = 600.0


@dataclass(frozen=True)
class CellRule:
    """A host glob and a target glob, as in exclude and allowed-failures."""

    host: str
    target: str
    reason: str = ""
    # allowed-failures only: a catalogue entry's id. The rule then allows only failures
    # with that cause, until the entry expires (matrix.verdict.lifecycle).
    cause: str | None = None

    def matches(self, host: str, row: str) -> bool:
        return bool(compiled(self.host).match(host) and compiled(self.target).match(row))


def first_rules(rules: tuple[CellRule, ...], hosts: Iterable[str], rows: Iterable[str]
                ) -> dict[tuple[str, str], CellRule]:
    """For each (host, row) some rule matches, the first such rule (the one that
    applies); every glob is compiled and matched once, not once per cell."""
    found = first_matches([(rule.host, rule.target) for rule in rules], hosts, rows)
    return {cell: rules[index] for cell, index in found.items()}


@dataclass(frozen=True)
class Include:
    """One added cell; its host and target need not be in the matrix's lists."""

    host: HostDefinition
    target: Target
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class MatrixConfig:
    """A loaded matrix file: one field per ``MATRIX_KEYS`` row (defaults live there)."""

    path: Path
    name: str
    hosts: tuple[HostDefinition, ...]
    targets: tuple[Target, ...]
    checks: tuple[str, ...]
    exclude: tuple[CellRule, ...]
    include: tuple[Include, ...]
    allowed_failures: tuple[CellRule, ...]
    max_parallel: int
    timeout: float
    hostgen_timeout: float
    boot_timeout: float
    retries: int
    retry_delay: float  # seconds before the first retry (doubled before each next one)
    fail_fast: bool
    env: tuple[tuple[str, str], ...]
    output: Path
    network: Network
    categories: tuple[Path, ...]
    registry_mirror: str | None
    retention: Policy | None = None  # the run archive's bounds, applied after every run
    snapshot: SnapshotSetting = SnapshotSetting()  # live, pinned, recorded, or a service
    investigate: int = 3  # regressed cells run --investigate investigates (its budget)
    # A multi-node swarm (run --engine swarm): cells at once on one node (None: an even
    # share of max-parallel), where dib layers are pushed (None: a registry the run
    # starts), and whether every node mounts the results directory at the same path.
    max_per_node: int | None = None
    registry: RegistryName | None = None
    shared_results: bool = False

    def host(self, name: str) -> HostDefinition:
        return next(h for h in self.hosts if h.name == name)

    def target(self, name: str) -> Target:
        return next(t for t in self.targets if t.name == name)


def parse_duration(value: Any, reader: Any = None, path: KeyPath = ()) -> float:
    """Seconds from 30m, 90s, 1h or a number of seconds (more than 0, at most a week)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = DURATION_RE.fullmatch(str(value)) if isinstance(value, str) else None
        if not match:
            raise Invalid(f"cannot read duration {value!r} (examples: 90s, 30m, 1h)")
        seconds = float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]
    if not 0 < seconds <= MAX_DURATION:  # also refuses nan
        raise Invalid(f"duration {value!r} must be more than 0 and at most a week")
    return seconds


def parse_retry_delay(value: Any, reader: Any = None, path: KeyPath = ()) -> float:
    """Seconds before the first retry: 0 (at once) or a duration up to MAX_RETRY_DELAY."""
    if _is_zero_duration(value):
        return 0.0
    seconds = parse_duration(value)
    if seconds > MAX_RETRY_DELAY:
        raise Invalid(f"retry delay {value!r} must be at most {MAX_RETRY_DELAY / 60:.0f}m "
                      "(the back-off doubles it, up to that)")
    return seconds


def _is_zero_duration(value: Any) -> bool:
    """0, 0.0, "0", "0s", "0m": no wait at all (which parse_duration refuses)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return value == 0
    match = DURATION_RE.fullmatch(value) if isinstance(value, str) else None
    return match is not None and float(match.group(1)) == 0


@dataclass
class _MatrixReader(Reader):
    """A matrix file's reader also knows the hosts and targets its names refer to."""

    known_hosts: Mapping[str, HostDefinition]
    known_targets: Mapping[str, Target]


def _checks(value: Any, reader: Any, path: KeyPath) -> tuple[str, ...]:
    known = [c.value for c in Check]
    if not isinstance(value, list) or any(not isinstance(v, str) or v not in known
                                          for v in value):
        raise Invalid(f"must be a list among: {', '.join(known)}")
    if len(set(value)) != len(value):
        raise Invalid("lists a check twice (its cells would have one id)")
    return tuple(value)


def _paths(value: Any, reader: Reader, path: KeyPath) -> tuple[Path, ...]:
    """A file or a list of files, relative to the matrix file."""
    files = [value] if isinstance(value, str) else value
    if not isinstance(files, list) or not all(isinstance(f, str) and f for f in files):
        raise Invalid("must be a file name or a list of file names")
    return tuple(reader.doc.path.parent / f for f in files)


def _output(value: Any, reader: Reader, path: KeyPath) -> Path:
    if not isinstance(value, str) or not value.strip() or not value.isprintable():
        raise Invalid(f"must be a directory name without control characters, got {shown(value)}")
    return Path(value)


def _registry_mirror(value: Any, reader: Any = None, path: KeyPath = ()) -> str:
    try:
        return parse_mirror(value)
    except BadReference as err:
        raise Invalid(str(err)) from None


def _registry(value: Any, reader: Any = None, path: KeyPath = ()) -> RegistryName:
    try:
        return parse_registry(value)
    except ValueError as err:
        raise Invalid(str(err)) from None


def _limit(parse: Callable[[Any], Any]) -> Callable[[Any, Any, KeyPath], Any]:
    """A key parser from one of the archive's own (a ValueError becomes Invalid)."""

    def parser(value: Any, reader: Any = None, path: KeyPath = ()) -> Any:
        try:
            return parse(value)
        except ValueError as err:
            raise Invalid(str(err)) from None

    return parser


RETENTION_KEYS: tuple[Key, ...] = (
    Key("keep-runs", _limit(parse_keep_runs), "keep the newest N runs"),
    Key("keep-days", _limit(parse_keep_days), "keep the runs of the last D days"),
    Key("max-bytes", _limit(parse_size), "then remove the oldest runs until the output "
        "directory holds at most SIZE (800M, 50G)"),
)


def _retention(value: Any, reader: Reader, path: KeyPath) -> Policy:
    """``retention:``, a mapping of RETENTION_KEYS, each limit a bound of its own."""
    if not isinstance(value, dict) or not value:
        raise Invalid("must be a mapping with keep-runs, keep-days and/or max-bytes")
    values = read_keys(RETENTION_KEYS, value, reader, prefix=path)
    return Policy(**{key.field: values[key.name] for key in RETENTION_KEYS})


def _names(what: str, known: Callable[[_MatrixReader], Mapping[str, Any]],
           loader: Callable[[Path], Any]) -> Callable[[Any, _MatrixReader, KeyPath], tuple]:
    """A parser for ``hosts``/``targets``: names, globs or paths to YAML files. A bad
    entry is reported and the others kept, so later checks see what did resolve."""

    def parse(value: Any, reader: _MatrixReader, path: KeyPath) -> tuple:
        if not isinstance(value, list) or not value:
            raise Invalid(f"must be a non-empty list, got {shown(value)}")
        names = known(reader)
        chosen: dict[str, Any] = {}
        for index, entry in enumerate(value):
            where = path + (index,)
            if not isinstance(entry, str) or not entry:
                reader.report(where, "must be a name, a glob or a path to a YAML file")
            elif entry.endswith((".yaml", ".yml")):
                _add_file(what, names, chosen, reader, where, loader, entry)
            elif (problem := glob_problem(entry)) is not None:
                reader.report(where, f"{shown(entry)}: {problem}")
            else:
                matched = match_globs(names, entry)
                if not matched:
                    reader.report(where, f"unknown {what} '{entry}'"
                                  f"{closest(entry, names)}; known: {', '.join(names)}")
                for name in matched:
                    chosen.setdefault(name, names[name])
        return tuple(chosen.values())

    return parse


def _add_file(what: str, known: Mapping[str, Any], chosen: dict[str, Any],
              reader: _MatrixReader, where: KeyPath, loader: Callable[[Path], Any],
              entry: str) -> None:
    """A host or target given by path. Its name is its file's name (the loader checks),
    and it may not take the name of another definition: the cells, logs and reports of
    a bundled ``debian-bookworm`` would silently be another file's."""
    try:
        item = loader(reader.doc.path.parent / entry)
    except ConfigError as err:
        reader.issues.extend(err.issues)
        return
    for other in (known.get(item.name), chosen.get(item.name)):
        if other is not None and not _same_file(_source(other), _source(item)):
            reader.report(where, f"'{entry}' defines {what} '{item.name}', the name of another "
                          f"definition ({_source(other) or 'given before'}): a file given by "
                          "path needs a name of its own (rename the file and its name)")
            return
    chosen[item.name] = item


def _source(item: Any) -> Path | None:
    return getattr(item, "source", None) or getattr(item, "path", None)


def _same_file(one: Path | None, other: Path | None) -> bool:
    return one is not None and other is not None and one.resolve() == other.resolve()


def _glob_of(entry: Mapping[str, Any], key: str, reader: Reader, where: KeyPath) -> str:
    """A rule's host or target glob: a string of name characters and glob magic (a list
    or a number would be turned into a glob nobody wrote: str([a, b]) is a [...] set)."""
    value = entry.get(key, "*")
    problem = glob_problem(value)
    if problem is not None:
        reader.report(where + (key,), f"{problem}, got {shown(value)}")
        return ""
    return value


def _rules(need_reason: bool, with_cause: bool = False
           ) -> Callable[[Any, Reader, KeyPath], tuple[CellRule, ...]]:
    """A parser for ``exclude`` and ``allowed-failures``: host and target globs (and,
    ``with_cause``, the catalogue entry whose failures alone are allowed)."""
    known = ("host", "target", "reason", *(("cause",) if with_cause else ()))

    def parse(value: Any, reader: Reader, path: KeyPath) -> tuple[CellRule, ...]:
        if not isinstance(value, list):
            raise Invalid(f"must be a list of {{{', '.join(known)}}} entries")
        rules = []
        for index, entry in enumerate(value):
            where = path + (index,)
            if not isinstance(entry, dict):
                reader.report(where, "must be a mapping with host and/or target")
                continue
            for extra in entry:
                if extra not in known:
                    reader.report(where + (extra,), f"unknown key; known: {', '.join(known)}")
            reason = entry.get("reason")
            if reason is not None and not isinstance(reason, str):
                reader.report(where + ("reason",), f"must be text, got {shown(reason)}")
                reason = ""
            elif need_reason and not (reason and reason.strip()):
                reader.report(where, "every exclude entry needs a reason")
            if "host" not in entry and "target" not in entry:
                reader.report(where, "needs host and/or target")
            host, target = _glob_of(entry, "host", reader, where), _glob_of(
                entry, "target", reader, where)
            cause = entry.get("cause")
            if "cause" in entry and not is_name(cause):  # a bare "cause:" too: not "any"
                reader.report(where + ("cause",), f"must be a catalogue entry's id, got "
                              f"{shown(cause)}")
                continue
            if host and target:
                rules.append(CellRule(host, target, (reason or "").strip(), cause))
        return tuple(rules)

    return parse


def _includes(value: Any, reader: _MatrixReader, path: KeyPath) -> tuple[Include, ...]:
    if not isinstance(value, list):
        raise Invalid("must be a list of {host, target, env} entries")
    found = []
    for index, entry in enumerate(value):
        where = path + (index,)
        if not isinstance(entry, dict):
            reader.report(where, "must be a mapping with host and target")
            continue
        for extra in entry:
            if extra not in ("host", "target", "env"):
                reader.report(where + (extra,), "unknown key; known: host, target, env")
        host, target = entry.get("host"), entry.get("target")
        if _unknown(reader, where + ("host",), "host", host, reader.known_hosts):
            continue
        if _unknown(reader, where + ("target",), "target", target, reader.known_targets):
            continue
        try:
            env = parse_dib_env(entry.get("env"))
        except Invalid as exc:
            for sub, message in exc.under(where + ("env",)).problems:
                reader.report(sub, message)
            continue
        found.append(Include(reader.known_hosts[host], reader.known_targets[target], env))
    return tuple(found)


def _unknown(reader: Reader, where: KeyPath, what: str, name: Any,
             known: Mapping[str, Any]) -> bool:
    """Report ``name`` unless it is a known host's or target's name."""
    if not isinstance(name, str):
        reader.report(where, f"must be a {what} name, got {shown(name)}")
    elif name not in known:
        reader.report(where, f"unknown {what} {shown(name)}{closest(name, known)}")
    else:
        return False
    return True


MATRIX_KEYS: tuple[Key, ...] = (
    Key("name", lambda v, r, p: parse_text(v), "a label for the run",
        Derived(lambda values, reader: reader.doc.path.stem, "the file name")),
    Key("hosts", _names("host", lambda r: r.known_hosts, load_host),
        "host names (hosts/*.yaml), globs, or paths to host YAML files", required=True),
    Key("targets", _names("target", lambda r: r.known_targets, load_target),
        "target names (targets/*.yaml), globs, or paths to target YAML files", required=True),
    Key("checks", _checks, "per-host check rows; known: "
        + ", ".join(c.value for c in Check), ["tox"]),
    Key("exclude", _rules(need_reason=True),
        "cells to leave out: [{host: GLOB, target: GLOB, reason: TEXT}]", []),
    Key("include", _includes,
        "cells to add: [{host: NAME, target: NAME, env: {...}}]; never changes a cell", []),
    Key("allowed-failures", _rules(need_reason=False, with_cause=True),
        "non-voting cells: [{host: GLOB, target: GLOB, cause: ID}]; with cause (a catalogue "
        "entry's id) only failures with that cause are allowed, until the entry expires", []),
    Key("max-parallel", bounded_int(1, MAX_PARALLEL), "cells run at once", 2, option=Option.VALUE,
        example="N"),
    Key("timeout", parse_duration, "per cell, e.g. 30m, 90s, 1h", "30m", option=Option.VALUE,
        example="DURATION"),
    Key("hostgen-timeout", parse_duration, "per host image build", "30m",
        option=Option.VALUE, example="DURATION"),
    Key("boot-timeout", parse_duration, "per boot test, until the guest's marker",
        Derived(lambda values, reader: min(values["timeout"], BOOT_TIMEOUT_CAP),
                "the timeout, at most 10m"), option=Option.VALUE, example="DURATION"),
    Key("retries", bounded_int(0, MAX_RETRIES), "extra attempts for a failed cell whose cause "
        "a retry can fix (a catalogue entry with retry: true: mirror unreachable or syncing, "
        "engine errors); other failures are never retried", 0, option=Option.VALUE,
        example="N"),
    Key("retry-delay", parse_retry_delay, "wait before the first retry, doubled before each "
        "next one up to 10m; 0 retries at once", "30s", option=Option.VALUE,
        example="DURATION"),
    Key("fail-fast", parse_bool, "stop everything at the first voting failure", False,
        option=Option.FLAG),
    Key("env", parse_dib_env, "DIB_* variables for every build", {}),
    Key("output", _output, "results directory, relative to the working directory", "out"),
    Key("network", enum_parser(Network), "container network mode: "
        + ", ".join(n.value for n in Network), "host"),
    Key("categories", _paths, "extra failure category files (YAML), relative to the "
        "matrix file", []),
    Key("registry-mirror", _registry_mirror, "pull Docker Hub images (fedora:40, "
        "library/x, docker.io/...) from this registry instead, e.g. myregistry.example/hub "
        "(it stands in for docker.io); other registries' references are left alone",
        option=Option.VALUE, example="REGISTRY[/PATH]"),
    Key("retention", _retention, "bounds on the runs kept in the output directory, applied "
        "at the end of every run: {keep-runs: N, keep-days: D, max-bytes: SIZE}; the newest "
        "run, kept runs, live runs and each cell's last-good always stay"),
    Key("snapshot", parse_snapshot, "repository state: 'record' (save the run's as a "
        "snapshot), a snapshot's name or a run id (replay it, offline), or {url: URL, "
        "timestamp: 20240101T000000Z} (a snapshot service laid out like "
        "snapshot.debian.org)", Derived(lambda values, reader: SnapshotSetting(),
                                        "the live mirror, nothing saved"),
        option=Option.VALUE, example="record|NAME|RUN"),
    Key("investigate", bounded_int(0, MAX_INVESTIGATE), "with run --investigate: how many "
        "regressed voting cells to investigate (each runs again as up to five variants: same "
        "inputs, the last-good's dib tree, host image, snapshot, all of them)", 3),
    Key("max-per-node", bounded_int(1, MAX_PARALLEL), "on a multi-node swarm (--engine "
        "swarm): cells at once on one node", Derived(lambda values, reader: None,
                                                     "an even share of max-parallel"),
        option=Option.VALUE, example="N"),
    Key("registry", _registry, "on a multi-node swarm: push each host's dib layer to this "
        "registry (every node must pull from it) and run cells from it pinned by digest",
        Derived(lambda values, reader: None, "a registry the run starts on the manager"),
        option=Option.VALUE, example="HOST[:PORT][/PREFIX]"),
    Key("shared-results", parse_bool, "on a multi-node swarm: every node mounts the results "
        "directory at the same path, so cells write their images there instead of "
        "uploading them to the run", False, option=Option.FLAG),
)


def resolve_matrix_path(name_or_path: str | None) -> Path:
    """A bundled matrix by name, or a path; None is the default matrix."""
    if not name_or_path:
        name_or_path = DEFAULT_MATRIX
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or "/" in name_or_path:
        return candidate
    bundled = BUNDLED_MATRICES_DIR / f"{name_or_path}.yaml"
    if bundled.exists():
        return bundled
    known = sorted(p.stem for p in BUNDLED_MATRICES_DIR.glob("*.yaml"))
    raise ConfigError([ConfigIssue(candidate, None, "", "no such matrix; bundled: "
                                   + ", ".join(known) + closest(name_or_path, known))])


OVERRIDES = tuple(key for key in MATRIX_KEYS if key.option is not None)


def load_matrix(path: Path, host_dirs: tuple[Path, ...] | None = None,
                target_dirs: tuple[Path, ...] | None = None,
                overrides: Mapping[str, Any] | None = None) -> MatrixConfig:
    """Load and validate a matrix file; raise one ConfigError listing every problem.

    ``overrides`` are command-line values by key name (``{"timeout": "20m"}``), read
    by the key's own parser in place of the file's value.
    """
    doc = load_yaml(path)
    if not isinstance(doc.data, dict):
        raise ConfigError([doc.issue((), "a matrix file must be a mapping of keys: "
                                         + ", ".join(k.name for k in MATRIX_KEYS))])
    reader = _MatrixReader(doc, IssueCollector(list(doc.issues)),
                           load_hosts(host_dirs) if host_dirs else load_hosts(),
                           load_targets(target_dirs) if target_dirs else load_targets())
    values = read_keys(MATRIX_KEYS, doc.data, reader, overrides=overrides,
                       override_issue=_override_issue)
    if any(values[key.name] is None for key in MATRIX_KEYS if key.required):
        reader.issues.check()  # no hosts or no targets: nothing further to check against
    config = MatrixConfig(path=path, **{key.field: values[key.name] for key in MATRIX_KEYS})
    config, _ = with_registry_mirror(config, config.registry_mirror)  # image hosts' pulls
    for key, rules in (("exclude", config.exclude), ("allowed-failures", config.allowed_failures)):
        _check_rules_match(reader, key, rules, config)
    reader.issues.check()
    return config


def _override_issue(name: str, message: str) -> ConfigIssue:
    return ConfigIssue(Path("command line"), None, f"--{name}", message)


def _check_rules_match(reader: Reader, key: str, rules: tuple[CellRule, ...],
                       config: MatrixConfig) -> None:
    """A glob that matches no host or no row is a typo that would silently change the
    gate: say so."""
    hosts = NameIndex(h.name for h in config.hosts)
    rows = NameIndex(["hostgen", *config.checks, *(t.name for t in config.targets),
                      *(t.name + BOOT_SUFFIX for t in config.targets if t.boot_test)])
    for index, rule in enumerate(rules):
        if not hosts.matching(rule.host):
            reader.report((key, index, "host"), f"'{rule.host}' matches no host of this matrix")
        if not rows.matching(rule.target):
            reader.report((key, index, "target"),
                          f"'{rule.target}' matches no row of this matrix")
