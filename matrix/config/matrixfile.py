"""The matrix file: which hosts and targets, what to leave out or add, how to run.

Every key is declared once in ``MATRIX_KEYS`` (help text used by ``--help`` and
the docs); validation collects every problem with file, line and key.
"""

from __future__ import annotations

import difflib
import enum
import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matrix.config.diagnostics import ConfigError, ConfigIssue, IssueCollector
from matrix.config.hosts import HostDefinition, load_host, load_hosts
from matrix.config.targets import BOOT_SUFFIX, Target, check_env, load_target, load_targets
from matrix.config.yamlload import YamlDocument, load_yaml


class Network(str, enum.Enum):
    """How cell containers reach the network (the matrix's ``network`` key)."""

    HOST = "host"
    NONE = "none"
    BRIDGE = "bridge"


BUNDLED_MATRICES_DIR = Path(__file__).resolve().parent / "matrices"
DEFAULT_MATRIX = "default"
KNOWN_CHECKS = ("tox",)
DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*$")
MATRIX_KEYS = {
    "name": "a label for the run",
    "hosts": "host names (hosts/*.yaml), globs, or paths to host YAML files",
    "targets": "target names (targets/*.yaml), globs, or paths to target YAML files",
    "checks": "per-host check rows; known: tox",
    "exclude": "cells to leave out: [{host: GLOB, target: GLOB, reason: TEXT}]",
    "include": "cells to add: [{host: NAME, target: NAME, env: {...}}]; never changes a cell",
    "allowed-failures": "non-voting cells: [{host: GLOB, target: GLOB}]",
    "max-parallel": "cells run at once (default 2)",
    "timeout": "per cell, e.g. 30m, 90s, 1h (default 30m)",
    "hostgen-timeout": "per host image build (default 30m)",
    "retries": "extra attempts for failed cells (default 0)",
    "fail-fast": "stop everything at the first voting failure (default false)",
    "env": "DIB_* variables for every build",
    "output": "results directory (default out, relative to the working directory)",
    "network": "container network mode (default host)",
    "categories": "extra failure category files (YAML), relative to the matrix file",
}


@dataclass(frozen=True)
class CellRule:
    """A host glob and a target glob, as in exclude and allowed-failures."""

    host: str
    target: str
    reason: str = ""

    def matches(self, host: str, row: str) -> bool:
        return fnmatch.fnmatchcase(host, self.host) and fnmatch.fnmatchcase(row, self.target)


@dataclass(frozen=True)
class Include:
    """One added cell; its host and target need not be in the matrix's lists."""

    host: HostDefinition
    target: Target
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class MatrixConfig:
    name: str
    path: Path
    hosts: tuple[HostDefinition, ...]
    targets: tuple[Target, ...]
    checks: tuple[str, ...] = ("tox",)
    exclude: tuple[CellRule, ...] = ()
    include: tuple[Include, ...] = ()
    allowed_failures: tuple[CellRule, ...] = ()
    max_parallel: int = 2
    timeout: float = 1800.0
    hostgen_timeout: float = 1800.0
    retries: int = 0
    fail_fast: bool = False
    env: tuple[tuple[str, str], ...] = ()
    output: Path = Path("out")
    network: str = "host"
    categories: tuple[Path, ...] = ()

    def host(self, name: str) -> HostDefinition:
        return next(h for h in self.hosts if h.name == name)

    def target(self, name: str) -> Target:
        return next(t for t in self.targets if t.name == name)


MAX_DURATION = 7 * 24 * 3600.0  # a week: beyond it a timer is a typo (or .inf)


def parse_duration(value: Any) -> float:
    """Seconds from 30m, 90s, 1h or a number of seconds (more than 0, at most a week)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = DURATION_RE.match(str(value))
        if not match:
            raise ValueError(f"cannot read duration {value!r} (examples: 90s, 30m, 1h)")
        seconds = float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]
    if not 0 < seconds <= MAX_DURATION:  # also refuses nan
        raise ValueError(f"duration {value!r} must be more than 0 and at most a week")
    return seconds


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
                                   + ", ".join(known) + _closest(name_or_path, known))])


def _closest(name: str, known: list[str]) -> str:
    match = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean '{match[0]}'?)" if match else ""


class _Checker:
    """Validates one matrix document, collecting every issue."""

    def __init__(self, doc: YamlDocument, known_hosts: dict[str, HostDefinition],
                 known_targets: dict[str, Target]):
        self.doc = doc
        self.issues = IssueCollector(list(doc.issues))
        self.known_hosts = known_hosts
        self.known_targets = known_targets

    def fail(self, key: tuple, message: str) -> None:
        self.issues.add(self.doc.issue(key, message))

    def names(self, key: str, known: dict[str, Any], loader: Any) -> list[Any]:
        value = self.doc.data.get(key)
        if not isinstance(value, list) or not value:
            self.fail((key,), "must be a non-empty list")
            return []
        chosen: dict[str, Any] = {}
        for index, entry in enumerate(value):
            if not isinstance(entry, str) or not entry:
                self.fail((key, index), "must be a name, a glob or a path to a YAML file")
                continue
            if entry.endswith((".yaml", ".yml")):
                try:
                    item = loader(self.doc.path.parent / entry)
                except ConfigError as err:
                    self.issues.extend(err.issues)
                    continue
                chosen[item.name] = item
                continue
            matched = [n for n in known if fnmatch.fnmatchcase(n, entry)]
            if not matched:
                self.fail((key, index), f"unknown {key[:-1]} '{entry}'"
                          f"{_closest(entry, list(known))}; known: {', '.join(known)}")
            for name in matched:
                chosen.setdefault(name, known[name])
        return list(chosen.values())

    def rules(self, key: str, need_reason: bool) -> list[CellRule]:
        value = self.doc.data.get(key, [])
        if not isinstance(value, list):
            self.fail((key,), "must be a list of {host, target, reason} entries")
            return []
        rules = []
        for index, entry in enumerate(value):
            where = (key, index)
            if not isinstance(entry, dict):
                self.fail(where, "must be a mapping with host and/or target")
                continue
            for extra in set(entry) - {"host", "target", "reason"}:
                self.fail(where + (extra,), "unknown key; known: host, target, reason")
            reason = entry.get("reason")
            if need_reason and not (isinstance(reason, str) and reason.strip()):
                self.fail(where, "every exclude entry needs a reason")
            if "host" not in entry and "target" not in entry:
                self.fail(where, "needs host and/or target")
            rules.append(CellRule(str(entry.get("host", "*")), str(entry.get("target", "*")),
                                  str(reason or "").strip()))
        return rules

    def includes(self) -> list[Include]:
        value = self.doc.data.get("include", [])
        if not isinstance(value, list):
            self.fail(("include",), "must be a list of {host, target, env} entries")
            return []
        found = []
        for index, entry in enumerate(value):
            where = ("include", index)
            if not isinstance(entry, dict):
                self.fail(where, "must be a mapping with host and target")
                continue
            for extra in set(entry) - {"host", "target", "env"}:
                self.fail(where + (extra,), "unknown key; known: host, target, env")
            host, target = entry.get("host"), entry.get("target")
            if host not in self.known_hosts:
                self.fail(where + ("host",), f"unknown host {host!r}"
                          f"{_closest(str(host), list(self.known_hosts))}")
                continue
            if target not in self.known_targets:
                self.fail(where + ("target",), f"unknown target {target!r}"
                          f"{_closest(str(target), list(self.known_targets))}")
                continue
            env = check_env(entry.get("env"), self.doc, where + ("env",), self.issues)
            found.append(Include(self.known_hosts[host], self.known_targets[target],
                                 tuple(sorted(env.items()))))
        return found

    def scalar(self, key: str, parse: Any, default: Any) -> Any:
        if key not in self.doc.data:
            return default
        try:
            return parse(self.doc.data[key])
        except (TypeError, ValueError) as err:
            self.fail((key,), str(err))
            return default


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("must be a whole number of at least 1")
    return value


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("must be a whole number of at least 0")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _network(value: Any) -> str:
    known = [n.value for n in Network]
    if value not in known:
        raise ValueError(f"must be one of: {', '.join(known)}")
    return str(value)


def _paths(value: Any, base: Path) -> tuple[Path, ...]:
    """A file or a list of files, relative to the matrix file."""
    files = [value] if isinstance(value, str) else value
    if not isinstance(files, list) or not all(isinstance(f, str) and f for f in files):
        raise ValueError("must be a file name or a list of file names")
    return tuple(base / f for f in files)


def _checks(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or any(v not in KNOWN_CHECKS for v in value):
        raise ValueError(f"must be a list among: {', '.join(KNOWN_CHECKS)}")
    return tuple(value)


def load_matrix(path: Path, host_dirs: tuple[Path, ...] | None = None,
                target_dirs: tuple[Path, ...] | None = None) -> MatrixConfig:
    """Load and validate a matrix file; raise one ConfigError listing every problem."""
    doc = load_yaml(path)
    if not isinstance(doc.data, dict):
        raise ConfigError([doc.issue((), "a matrix file must be a mapping of keys: "
                                         + ", ".join(MATRIX_KEYS))])
    known_hosts = load_hosts(host_dirs) if host_dirs else load_hosts()
    known_targets = load_targets(target_dirs) if target_dirs else load_targets()
    check = _Checker(doc, known_hosts, known_targets)
    for key in doc.data:
        if key not in MATRIX_KEYS:
            check.fail((key,), f"unknown key{_closest(str(key), list(MATRIX_KEYS))}; known: "
                       + ", ".join(MATRIX_KEYS))
    hosts = check.names("hosts", known_hosts, load_host)
    targets = check.names("targets", known_targets, load_target)
    includes = check.includes()
    categories = check.scalar("categories", lambda v: _paths(v, path.parent), ())
    config = MatrixConfig(
        name=str(doc.data.get("name", path.stem)),
        path=path,
        hosts=tuple(hosts),
        targets=tuple(targets),
        checks=check.scalar("checks", _checks, ("tox",)),
        exclude=tuple(check.rules("exclude", need_reason=True)),
        include=tuple(includes),
        allowed_failures=tuple(check.rules("allowed-failures", need_reason=False)),
        max_parallel=check.scalar("max-parallel", _positive_int, 2),
        timeout=check.scalar("timeout", parse_duration, 1800.0),
        hostgen_timeout=check.scalar("hostgen-timeout", parse_duration, 1800.0),
        retries=check.scalar("retries", _count, 0),
        fail_fast=check.scalar("fail-fast", _bool, False),
        env=tuple(sorted(check_env(doc.data.get("env"), doc, ("env",), check.issues).items())),
        output=Path(str(doc.data.get("output", "out"))),
        network=check.scalar("network", _network, "host"),
        categories=categories,
    )
    for key, rules in (("exclude", config.exclude), ("allowed-failures", config.allowed_failures)):
        _check_rules_match(check, key, rules, config)
    check.issues.check()
    return config


def _check_rules_match(check: _Checker, key: str, rules: tuple[CellRule, ...],
                       config: MatrixConfig) -> None:
    """A glob that matches no host or no row is a typo that would silently change the
    gate: say so."""
    hosts = [h.name for h in config.hosts]
    rows = ["hostgen", *config.checks, *(t.name for t in config.targets),
            *(t.name + BOOT_SUFFIX for t in config.targets if t.boot_test)]
    for index, rule in enumerate(rules):
        if not any(fnmatch.fnmatchcase(h, rule.host) for h in hosts):
            check.fail((key, index, "host"), f"'{rule.host}' matches no host of this matrix")
        if not any(fnmatch.fnmatchcase(r, rule.target) for r in rows):
            check.fail((key, index, "target"), f"'{rule.target}' matches no row of this matrix")
