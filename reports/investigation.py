"""The investigations of a run's regressions, for every report: one view, three forms.

``results.investigations`` (written by ``matrix.run.investigate``) is untrusted input
like the rest of results.json: every value is shown through :func:`one_line` (text,
markdown) or jinja2's autoescape (HTML), and a malformed entry is left out, never a
crash.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reports.sanitize import one_line

TEXT_LIMIT = 300


@dataclass(frozen=True)
class VariantView:
    variant: str
    cell: str
    state: str
    log: str
    reused: bool


@dataclass(frozen=True)
class InvestigationView:
    cell: str
    verdict: str
    evidence: str
    baseline: str
    last_good: str
    seconds: str
    variants: tuple[VariantView, ...]
    impossible: tuple[tuple[str, str], ...]  # (variant, why)


def views(results: Any) -> list[InvestigationView]:
    """Each readable entry of ``results.investigations``, in order."""
    entries = getattr(results, "investigations", None)
    if not isinstance(entries, list):
        return []
    return [view for view in map(_view, entries) if view is not None]


def _text(value: Any, limit: int = TEXT_LIMIT) -> str:
    return one_line(value if isinstance(value, str) else "-" if value is None else str(value),
                    limit)


def _view(entry: Any) -> InvestigationView | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("cell"), str):
        return None
    variants = tuple(
        VariantView(_text(v.get("variant")), _text(v.get("cell")), _text(v.get("state")),
                    _text(v.get("log")), v.get("reused") is True)
        for v in entry.get("variants") or [] if isinstance(v, dict))
    impossible = tuple((_text(i.get("variant")), _text(i.get("why")))
                       for i in entry.get("impossible") or [] if isinstance(i, dict))
    seconds = entry.get("seconds")
    return InvestigationView(
        _text(entry["cell"]), _text(entry.get("verdict")), _text(entry.get("evidence")),
        _text(entry.get("baseline")), _text(entry.get("last_good")),
        f"{seconds:.0f} s" if isinstance(seconds, (int, float)) and not isinstance(
            seconds, bool) else "-", variants, impossible)


def text_lines(results: Any) -> list[str]:
    """The text reports' section (report.txt, compare)."""
    found = views(results)
    if not found:
        return []
    lines = ["", "investigations (variants of each regressed cell with one input swapped "
                 "back to its last-good value):"]
    for view in found:
        lines.append(f"  {view.cell}: {view.verdict} - {view.evidence} (against run "
                     f"{view.baseline}, last-good run {view.last_good}, {view.seconds})")
        for variant in view.variants:
            reused = ", verdict reused" if variant.reused else ""
            lines.append(f"    {variant.variant}: {variant.state}{reused} (log {variant.log})")
        for variant, why in view.impossible:
            lines.append(f"    {variant}: not possible: {why}")
    return lines
