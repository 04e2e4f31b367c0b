"""Shell globs over names, each compiled once; which rule takes each cell, for all cells at once.

The matrix picks hosts and targets by glob (``targets: ['debian-*']``, ``--hosts``),
leaves cells out and makes them non-voting by a host glob and a row glob
(``exclude``, ``allowed-failures``), and the catalogue scopes its entries the same
way. The meaning is ``fnmatch.fnmatchcase``'s (``*``, ``?``, ``[seq]``, ``[!seq]``,
case-sensitive); every glob is translated by ``fnmatch.translate`` once.

A plan asks "which rule, if any, takes this cell first?" for every cell: asked cell
by cell, 5,000 rows against 2,500 rules was 25 million fnmatch calls (tens of
seconds). :func:`first_matches` turns it around: each distinct glob is matched once,
against only the names that could match it (a plain name by a set lookup, a glob
against the names sharing its literal head or tail, found by bisection), and each
host's rows are handed out rule by rule with set operations, stopping when none is
left.
"""

from __future__ import annotations

import bisect
import fnmatch
import functools
import re
from collections.abc import Iterable, Sequence

MAX_GLOB = 256  # characters: longer is no glob over names of at most 128


def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern))


@functools.lru_cache(maxsize=4096)
def compiled(pattern: str) -> re.Pattern[str]:
    """The glob as a regex over a whole name (cached: the same globs come back often)."""
    return _compile(pattern)


def glob_problem(pattern: object) -> str | None:
    """Why ``pattern`` cannot be a glob over names, or None."""
    if not isinstance(pattern, str) or not pattern:
        return "must be a glob (a non-empty string)"
    if len(pattern) > MAX_GLOB:
        return f"longer than {MAX_GLOB} characters"
    if not pattern.isprintable() or any(ch.isspace() for ch in pattern):
        return "must not contain spaces or control characters"
    return None


def match_globs(names: Iterable[str], pattern: str) -> list[str]:
    """The names a shell glob matches, in the names' order (case-sensitive)."""
    return list(filter(compiled(pattern).match, names))


def fnmatch_magic(pattern: str) -> bool:
    """Whether ``pattern`` is a glob rather than a plain name (fnmatch's own test)."""
    return any(ch in pattern for ch in "*?[")


class NameIndex:
    """Names, sorted forwards and by their reversed spelling, so that a glob's literal
    head or tail narrows the names it must be tried on to a bisected range."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = frozenset(names)
        self._forward = sorted(self.names)
        self._backward = sorted(name[::-1] for name in self.names)

    def matching(self, pattern: str) -> frozenset[str]:
        """The names ``pattern`` matches."""
        if not fnmatch_magic(pattern):
            return frozenset((pattern,)) if pattern in self.names else frozenset()
        head = _literal_head(pattern)
        tail = _literal_head(pattern[::-1], stops="*?[]")
        by_head = _prefixed(self._forward, head)
        by_tail = _prefixed(self._backward, tail)
        if pattern == head + "*":  # "debian-*": the bisected range is the answer
            return frozenset(by_head)
        shorter = len(by_tail) < len(by_head)
        candidates = [name[::-1] for name in by_tail] if shorter else by_head
        if not candidates:
            return frozenset()
        return frozenset(filter(compiled(pattern).match, candidates))


def _literal_head(pattern: str, stops: str = "*?[") -> str:
    """The characters before the first that may be magic: every match starts with them.
    (From the end, ``]`` stops too: the characters after the last ``]`` are outside any
    ``[...]`` set.)"""
    for index, char in enumerate(pattern):
        if char in stops:
            return pattern[:index]
    return pattern


def _prefixed(ordered: list[str], head: str) -> list[str]:
    if not head:
        return ordered
    start = bisect.bisect_left(ordered, head)
    end = bisect.bisect_left(ordered, head + "\U0010ffff", start)
    return ordered[start:end]


def first_matches(rules: Sequence[tuple[str, str]], hosts: Iterable[str],
                  rows: Iterable[str]) -> dict[tuple[str, str], int]:
    """For every (host, row) that some rule (host glob, row glob) matches, the index of
    the first such rule in ``rules``."""
    host_index, row_index = NameIndex(hosts), NameIndex(rows)
    hosts_of = _match_each([host for host, _ in rules], host_index)
    rows_of = _match_each([row for _, row in rules], row_index)
    found: dict[tuple[str, str], int] = {}
    for host in sorted(host_index.names):
        left = set(row_index.names)
        for index, (rule_hosts, rule_rows) in enumerate(zip(hosts_of, rows_of)):
            if host not in rule_hosts:
                continue
            taken = left.intersection(rule_rows)
            found.update(((host, row), index) for row in taken)
            left -= taken
            if not left:
                break
    return found


def _match_each(patterns: Sequence[str], index: NameIndex) -> list[frozenset[str]]:
    """What each pattern matches; a pattern that repeats is matched once."""
    memo: dict[str, frozenset[str]] = {}
    for pattern in patterns:
        if pattern not in memo:
            memo[pattern] = index.matching(pattern)
    return [memo[pattern] for pattern in patterns]
