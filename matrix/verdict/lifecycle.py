"""Known issues over time: stale catalogue entries, and allowed failures by cause.

A catalogue entry is a known issue with a lifecycle (``ticket``, ``since``,
``review-after`` or ``expires``). Two questions are asked of it, here, as pure
functions of the catalogue, the record of occurrences (``results.occurrences``) and
a day or time the caller gives (no clock is read here, so tests need no waiting):

- which entries are stale: nothing matched them for N days, or their
  ``review-after``/``expires`` day is past (``dib-matrix catalogue stale``);
- which failures an ``allowed-failures`` rule naming a cause (``cause: ID``) still
  allows: only failures with that cause, and none once the entry's ``expires`` day
  is past (the cell votes again, and the run says so in one warning line).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from matrix.config.diagnostics import ConfigError, ConfigIssue
from matrix.config.matrixfile import CellRule, MatrixConfig
from matrix.config.yamlload import load_yaml
from matrix.verdict.catalogue import Catalogue, CategoryRule
from results.model import Category

DEFAULT_STALE_DAYS = 21  # three weeks of nightlies without a match, as cockpit prunes
REVIEW_AFTER, EXPIRES = "review-after", "expires"


# ---------------------------------------------------------------- stale entries


@dataclass(frozen=True)
class Unseen:
    """An entry nothing matched in the window: when it was last seen (None: never)."""

    rule: CategoryRule
    last_seen: dt.datetime | None


@dataclass(frozen=True)
class PastDate:
    """An entry whose ``review-after`` or ``expires`` day is past."""

    rule: CategoryRule
    key: str  # REVIEW_AFTER or EXPIRES
    day: dt.date


def unseen(catalogue: Catalogue, last_seen: Mapping[str, dt.datetime], now: dt.datetime,
           days: int) -> list[Unseen]:
    """The entries not seen since ``days`` days before ``now``, in catalogue order."""
    since = now - dt.timedelta(days=days)
    return [Unseen(rule, last_seen.get(rule.id)) for rule in catalogue.rules
            if rule.id not in last_seen or last_seen[rule.id] < since]


def past_dates(catalogue: Catalogue, today: dt.date) -> list[PastDate]:
    """The entries whose review day or expiry day is before ``today``."""
    found = []
    for rule in catalogue.rules:
        for key, day in ((REVIEW_AFTER, rule.review_after), (EXPIRES, rule.expires)):
            if day is not None and today > day:
                found.append(PastDate(rule, key, day))
    return found


def expired(rule: CategoryRule | None, today: dt.date) -> bool:
    """Whether ``rule`` expired before ``today`` (an entry without ``expires`` never does)."""
    return rule is not None and rule.expires is not None and today > rule.expires


# ---------------------------------------------------------------- allowed failures by cause


@dataclass(frozen=True)
class CauseAllowance:
    """The allowed-failures rules that name a cause, split into those that still allow
    and those whose entry expired."""

    live: tuple[CellRule, ...] = ()
    expired: tuple[tuple[CellRule, dt.date], ...] = ()

    def allows(self, host: str, row: str, category: Category | None) -> bool:
        """Whether a failure of cell ``host``.``row`` with ``category`` is allowed: a live
        rule matches the cell and names the failure's cause (the highest-priority entry,
        not a lower label: a failure with another cause votes)."""
        return category is not None and any(
            rule.cause == category.id and rule.matches(host, row) for rule in self.live)

    def warning(self) -> str | None:
        """One line naming every expired entry a rule still names; None when none."""
        if not self.expired:
            return None
        named = sorted({f"{rule.cause} (expired {day.isoformat()})"
                        for rule, day in self.expired})
        return ("allowed-failures: past the catalogue entry's expires date, failures with "
                f"these causes vote again: {', '.join(named)}")


def cause_allowance(rules: Sequence[CellRule], catalogue: Catalogue,
                    today: dt.date) -> CauseAllowance:
    """The rules of ``rules`` naming a cause, judged on ``today``. A rule naming an entry
    the catalogue lacks allows nothing (``unknown_causes`` refuses it before a run)."""
    live, gone = [], []
    for rule in rules:
        if rule.cause is None:
            continue
        entry = catalogue.get(rule.cause)
        if expired(entry, today):
            assert entry is not None and entry.expires is not None
            gone.append((rule, entry.expires))
        elif entry is not None:
            live.append(rule)
    return CauseAllowance(tuple(live), tuple(gone))


def unknown_causes(config: MatrixConfig, catalogue: Catalogue) -> list[ConfigIssue]:
    """An issue (file, line, key) for each allowed-failures rule naming no entry of
    ``catalogue``: a typo there would leave the failures it meant voting, silently."""
    bad = [(index, rule.cause) for index, rule in enumerate(config.allowed_failures)
           if rule.cause is not None and catalogue.get(rule.cause) is None]
    if not bad:
        return []
    try:
        doc = load_yaml(config.path)
    except ConfigError:
        doc = None
    issues = []
    for index, cause in bad:
        where = ("allowed-failures", index, "cause")
        message = f"'{cause}' is no entry of the failure catalogue"
        issues.append(doc.issue(where, message) if doc is not None
                      else ConfigIssue(config.path, None, "allowed-failures", message))
    return issues
