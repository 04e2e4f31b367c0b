"""Figures of one benchmark run, their targets, and the printed table.

Pure functions and plain data: every section produces ``Figure`` values and
this module alone decides how they read.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

from tabulate import tabulate

MB = 1 << 20


@dataclass(frozen=True)
class Figure:
    """One measured value; ``target`` is an upper bound (every target here is one)."""

    section: str
    name: str
    value: float | None  # None: not measured (the note says why)
    unit: str = ""  # "s", "MB", "x" (a ratio), "%", "" (a count)
    target: float | None = None
    note: str = ""

    @property
    def status(self) -> str:
        if self.target is None:
            return ""
        if self.value is None:
            return "n/a"
        return "ok" if self.value <= self.target else "MISSED"


@dataclass
class Report:
    """Everything one run measured, plus the profiles taken where a target was missed."""

    figures: list[Figure] = field(default_factory=list)
    profiles: dict[str, list[str]] = field(default_factory=dict)  # title -> lines
    notes: list[str] = field(default_factory=list)

    def add(self, figures: Iterable[Figure]) -> None:
        self.figures.extend(figures)

    def missed(self) -> list[Figure]:
        return [f for f in self.figures if f.status == "MISSED"]

    def to_json(self) -> str:
        data = {"figures": [asdict(f) | {"status": f.status} for f in self.figures],
                "profiles": self.profiles, "notes": self.notes}
        return json.dumps(data, indent=2)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def megabytes(size: float | None) -> float | None:
    return None if size is None else size / MB


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "%":
        return f"{value:.1f} %"
    if unit == "":
        return f"{value:g}"
    digits = 2 if abs(value) < 10 else 1 if abs(value) < 100 else 0
    return f"{value:.{digits}f} {unit}"


def format_target(figure: Figure) -> str:
    return "" if figure.target is None else "<= " + format_value(figure.target, figure.unit)


def format_table(figures: Sequence[Figure]) -> str:
    """One row per figure; the section is named on its first row only."""
    rows = []
    previous = None
    for figure in figures:
        section = figure.section if figure.section != previous else ""
        previous = figure.section
        rows.append([section, figure.name, format_value(figure.value, figure.unit),
                     format_target(figure), figure.status, figure.note])
    return tabulate(rows, headers=["section", "figure", "value", "target", "", "note"],
                    tablefmt="simple", disable_numparse=True)


def format_report(report: Report) -> str:
    parts = [format_table(report.figures)]
    missed = report.missed()
    parts.append(f"\ntargets: {sum(f.status == 'ok' for f in report.figures)} met, "
                 f"{len(missed)} missed"
                 + (": " + "; ".join(f"{f.section}/{f.name}" for f in missed) if missed else ""))
    for title, lines in report.profiles.items():
        parts.append(f"\nprofile: {title}\n" + "\n".join(f"  {line}" for line in lines))
    parts.extend(f"note: {note}" for note in report.notes)
    return "\n".join(parts)
