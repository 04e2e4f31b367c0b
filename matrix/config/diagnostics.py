"""Configuration problems that point at a file, a line and a key.

Loaders collect every problem they find (so a user fixes them all in one go)
and raise one ``ConfigError`` carrying the whole list.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in one configuration file."""

    file: Path
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else str(self.file)
        key = f" {self.key}:" if self.key else ""
        return printable(f"{where}:{key} {self.message}")


def printable(text: str) -> str:
    """``text`` with every character a terminal would act on (controls, escapes, bidi
    overrides) written as its Python escape: keys and values come from hostile files."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


class ConfigError(Exception):
    """One or more configuration problems; ``issues`` lists them in file order."""

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        self.issues: tuple[ConfigIssue, ...] = tuple(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


@dataclass
class IssueCollector:
    """Accumulates issues while a loader keeps going; ``check()`` raises them at the end."""

    issues: list[ConfigIssue] = field(default_factory=list)

    def add(self, issue: ConfigIssue) -> None:
        self.issues.append(issue)

    def extend(self, issues: Iterable[ConfigIssue]) -> None:
        self.issues.extend(issues)

    def check(self) -> None:
        if self.issues:
            ordered = sorted(self.issues, key=lambda i: (str(i.file), i.line or 0, i.key))
            raise ConfigError(ordered)
