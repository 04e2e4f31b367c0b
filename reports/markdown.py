"""A comment-sized markdown summary of a run, for a review comment or a CI step summary.

``dib-matrix report RUN --format markdown [--baseline OLD]``: with a baseline,
regressions first (each with its cause and what differs between the two runs for the
cell), then fixes, then counts; without one, the voting failures with their causes,
then counts. Bounded: at most MAX_ITEMS cells per section and MAX_CHARS in all.

Everything that comes from a build (legends with captured groups, evidence lines,
package names, file paths) is untrusted: it is flattened to one line and escaped, so
it cannot open markup, inject HTML, or mention users and issues.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from reports import investigation
from reports.compare import CellDiff, Comparison, compare, describe
from reports.excerptview import excerpt_lines
from reports.knownissues import KnownIssues
from reports.legend import grid_order
from reports.sanitize import one_line, safe_text
from reports.styles import STYLES
from reports.summary import RETRY_NOTE_LIMIT, rate_text
from results.model import BOOT_CHECK_PREFIX, SKIPPED_PREFIX, Cell, RunResults, State

MAX_ITEMS = 20  # cells listed per section
MAX_DETAILS = 6  # attribution entries per cell
MAX_CHARS = 60000  # GitHub's comment limit is 65536 characters
TEXT_LIMIT = 240  # characters of one untrusted text

_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~])")


def escape(text: str, limit: int = TEXT_LIMIT) -> str:
    """Untrusted text as inert markdown: one line, bounded, HTML and markup escaped,
    ``@`` and ``#`` unable to mention or link."""
    flat = one_line(text, limit)
    flat = flat.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    flat = _SPECIAL.sub(r"\\\1", flat)
    return flat.replace("@", "@&#8203;")


def code(text: str, limit: int = TEXT_LIMIT) -> str:
    """A code span of untrusted text (no backticks can close it early)."""
    flat = one_line(text, limit).replace("`", "'")
    return f"`{flat}`" if flat else "` `"


def _voting(diff: CellDiff) -> str:
    return "" if diff.voting else " (non-voting)"


def _diff_item(diff: CellDiff, comparison: Comparison, known: KnownIssues) -> list[str]:
    lines = [f"- {code(diff.id)}{_voting(diff)}: {escape(describe(diff.old))} \u2192 "
             f"{escape(describe(diff.new))}"]
    cell = diff.new if diff.new is not None and diff.new.state is not State.SUCCESS else diff.old
    if cell is not None and cell.evidence and cell.state is not State.SUCCESS:
        lines.append(f"  - evidence: {code(cell.evidence)}")
    if diff.new is not None:  # a regression's, or a fix's that passed only on retry
        lines += _retry_items(diff.new)
    if cell is not None and cell is diff.new:  # known issues of this run's cells only
        lines += _known_items(cell, known)
    if cell is not None and cell.state is not State.SUCCESS:
        lines += _excerpt_items(cell)
    found = comparison.attributions.get(diff.id)
    if found is not None:
        entries = found.entries()
        for number, (entry, details) in enumerate(entries[:MAX_DETAILS]):
            label = "note" if number >= len(found.factors) else ("why" if number == 0
                                                                   else "also")
            shown = "; ".join(details[:4]) + ("; \u2026" if len(details) > 4 else "")
            lines.append(f"  - {label}: {escape(entry)}" + (f" ({escape(shown, 400)})"
                                                          if details else ""))
        if len(entries) > MAX_DETAILS:
            lines.append(f"  - and {len(entries) - MAX_DETAILS} more differences")
    return lines


def _section(title: str, items: list[list[str]]) -> list[str]:
    if not items:
        return []
    lines = ["", f"#### {title} ({len(items)})", ""]
    for item in items[:MAX_ITEMS]:
        lines += item
    if len(items) > MAX_ITEMS:
        lines.append(f"- \u2026 and {len(items) - MAX_ITEMS} more (see the HTML report)")
    return lines


def _failure_item(cell: Cell, known: KnownIssues) -> list[str]:
    cause = cell.category.legend if cell.category else (cell.reason or "")
    lines = [f"- {code(cell.id)}: {escape(STYLES[cell.state].label)}"
             + (f": {escape(cause)}" if cause else "")]
    if cell.evidence:
        lines.append(f"  - evidence: {code(cell.evidence)}")
    return lines + _retry_items(cell) + _known_items(cell, known) + _excerpt_items(cell)


def _retry_items(cell: Cell) -> list[str]:
    """Why its failed attempts were tried again or not (a run asked for retries)."""
    return [f"  - retry: {escape(cell.retry, RETRY_NOTE_LIMIT)}"] if cell.retry else []


def _known_items(cell: Cell, known: KnownIssues) -> list[str]:
    """The known issue a failure is (its ticket as code: inert, copyable) and the other
    hosts it failed on."""
    lines = []
    found = known.known_issue(cell)
    if found is not None:
        ticket, seen = found
        lines.append(f"  - known issue {code(ticket, 2000)}: {escape(seen)}")
    where = known.also_on_text(cell)
    if where:
        lines.append(f"  - {escape(where)}")
    return lines


def _excerpt_items(cell: Cell) -> list[str]:
    """A failure without a precise cause: its log lines unlike successful builds."""
    shown = excerpt_lines(cell)
    if not shown:
        return []
    return ["  - log lines unlike successful builds:",
            *(f"    - line {line.line}: {code(line.text)}" for line in shown)]


def boot_checks_section(results: RunResults) -> list[str]:
    """Each boot row's checks of the running system: every check named with its result,
    a failed one with its detail."""
    items = []
    for cell in grid_order(results):
        checks = [c for c in cell.checks if c.name.startswith(BOOT_CHECK_PREFIX)]
        if not checks:
            continue
        words = [f"{escape(c.name[len(BOOT_CHECK_PREFIX):], 40)} "
                 f"{_check_result(c.ok, c.detail)}" for c in checks]
        item = [f"- {code(cell.id)}: " + ", ".join(words)]
        item += [f"  - {escape(c.name[len(BOOT_CHECK_PREFIX):], 40)}: {code(c.detail)}"
                 for c in checks if not c.ok]
        items.append(item)
    return _section("Boot checks", items)


def _check_result(ok: bool, detail: str) -> str:
    if not ok:
        return "**failed**"
    return "skipped" if detail.startswith(SKIPPED_PREFIX) else "passed"


def counts_table(results: RunResults) -> list[str]:
    counts = results.counts()
    rows = [f"| {s.label} | {counts[s.state.value]} |" for s in STYLES.values()
            if counts.get(s.state.value)]
    return ["", "#### Counts", "", "| state | cells |", "|---|---:|", *rows, "",
            escape(rate_text(results), 200)]


def render_markdown(results: RunResults, baseline: RunResults | None = None,
                    run_dir: Path | None = None, appendix: Sequence[str] = ()) -> str:
    """The summary: regressions, fixes and counts (with a baseline), or failures and counts;
    ``run_dir`` (the run's directory) finds the known issues' counts beside it;
    ``appendix``: lines of markdown (already escaped) shown before the counts, such as a
    bump run's section."""
    title = f"### dib-matrix run {code(results.run_id, 80)}"
    known = KnownIssues.load(results, run_dir)
    lines: list[str] = []
    if baseline is not None:
        comparison = compare(baseline, results)
        regressions = [_diff_item(d, comparison, known) for d in comparison.regressions]
        fixes = [_diff_item(d, comparison, known) for d in comparison.fixes]
        voting = len(comparison.voting_regressions)
        lines += [f"{title}: {len(regressions)} regressions ({voting} voting), "
                  f"{len(fixes)} fixes against {code(baseline.run_id, 80)}"]
        if not regressions and not fixes:
            lines += ["", "No regressions and no fixes."]
        lines += _section("Regressions", regressions)
        lines += _section("Fixes", fixes)
        changed = len(comparison.diffs) - len(regressions) - len(fixes)
        if changed:
            lines += ["", f"{changed} other differences (changed causes, new and removed "
                      "cells): `dib-matrix compare`."]
    else:
        failures = [c for c in grid_order(results) if c.voting and c.state.is_failure]
        lines += [f"{title}: {len(failures)} voting failures"]
        lines += _section("Failures", [_failure_item(c, known) for c in failures])
    if results.interrupted:
        lines += ["", "**Interrupted**: results are partial."]
    lines += appendix
    lines += investigations_section(results)
    lines += boot_checks_section(results)
    lines += counts_table(results)
    return safe_text(_bounded("\n".join(lines) + "\n"))


def investigations_section(results: RunResults) -> list[str]:
    """Each investigated regression: its verdict, the evidence, what each variant did."""
    found = investigation.views(results)
    if not found:
        return []
    lines = ["", "#### Investigations", ""]
    for view in found:
        lines.append(f"- {code(view.cell)}: **{escape(view.verdict)}**: "
                     f"{escape(view.evidence)}")
        ran = "; ".join(f"{v.variant} {v.state}" for v in view.variants)
        if ran:
            lines.append(f"  - variants: {escape(ran)}")
        lines += [f"  - {escape(variant)} not possible: {escape(why)}"
                  for variant, why in view.impossible]
    return lines


def _bounded(text: str) -> str:
    if len(text) <= MAX_CHARS:
        return text
    cut = text[:MAX_CHARS].rsplit("\n", 1)[0]
    return cut + "\n\n\u2026 (cut to fit a comment; see the HTML report)\n"
