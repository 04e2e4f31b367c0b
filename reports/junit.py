"""junit.xml: one testsuite per host, one testcase per cell (classname=host, name=row).

The outcome of each state comes from ``reports.styles``: failures carry the
category id as ``type`` and the evidence as ``message``; engine errors are
``<error>``; skipped, excluded, allowed-failure and pending cells are
``<skipped>`` with the reason.

Every name, message and text comes from a run directory (untrusted): before the tree
is serialised, :func:`xml_safe` cleans every attribute and text of it once, so the
document always parses whatever a field holds (no character XML 1.0 forbids, no
terminal escape for whoever reads the file in a terminal).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from reports.legend import UNCATEGORIZED, footnote_text, grid_order
from reports.sanitize import clean_text, one_line
from reports.styles import JUnitOutcome, style
from results.model import Cell, RunResults, State

MESSAGE_LIMIT = 1000


def _seconds(cell: Cell) -> str:
    return f"{cell.duration or 0.0:.3f}"


def outcome_type(cell: Cell) -> str:
    """The ``type`` attribute: the category id, else the state."""
    if cell.category is not None:
        return cell.category.id
    if cell.state is State.FAILED:
        return UNCATEGORIZED
    return str(cell.state.value)


def outcome_message(cell: Cell) -> str:
    """The ``message`` attribute: the evidence line, else the legend or the reason."""
    text = cell.evidence or footnote_text(cell) or cell.reason or style(cell.state).label
    if cell.state is State.ALLOWED_FAILURE:
        text = f"allowed failure (non-voting): {text}"
    return one_line(text, MESSAGE_LIMIT)


def outcome_body(cell: Cell) -> str:
    parts = []
    if cell.category:
        parts.append(f"category: {cell.category.id} - {cell.category.legend}")
    if cell.reason:
        parts.append(f"reason: {cell.reason}")
    if cell.evidence:
        parts.append(f"evidence:\n{cell.evidence}")
    return clean_text("\n".join(parts))


def system_out(cell: Cell) -> str:
    lines = [f"state: {cell.state.value}"]
    if cell.passed_on_retry:
        lines.append(f"passed only on attempt {cell.attempts}")
    if cell.reused:
        lines.append("result reused from an earlier run")
    if not cell.voting:
        lines.append("non-voting")
    if cell.log:
        lines.append(f"log: {cell.log}")
    if cell.reproducer:
        lines.append(f"reproduce: {cell.reproducer}")
    lines += [f"image: {a.path} ({a.size} bytes, sha256 {a.sha256})" for a in cell.artifacts]
    return clean_text("\n".join(lines))


def testcase(cell: Cell) -> ET.Element:
    case = ET.Element("testcase", classname=cell.host, name=cell.row, time=_seconds(cell))
    outcome = style(cell.state).junit
    if outcome is not JUnitOutcome.PASSED:
        tag = outcome.value
        child = ET.SubElement(case, tag, type=outcome_type(cell), message=outcome_message(cell))
        if tag != "skipped":
            child.text = outcome_body(cell)
    ET.SubElement(case, "system-out").text = system_out(cell)
    return case


def _count(cells: list[Cell], outcome: JUnitOutcome) -> int:
    return sum(1 for c in cells if style(c.state).junit is outcome)


def _totals(element: ET.Element, cells: list[Cell]) -> None:
    element.set("tests", str(len(cells)))
    element.set("failures", str(_count(cells, JUnitOutcome.FAILURE)))
    element.set("errors", str(_count(cells, JUnitOutcome.ERROR)))
    element.set("skipped", str(_count(cells, JUnitOutcome.SKIPPED)))
    element.set("time", f"{sum(c.duration or 0.0 for c in cells):.3f}")


def testsuite(results: RunResults, host: str, cells: list[Cell]) -> ET.Element:
    suite = ET.Element("testsuite", name=host)
    _totals(suite, cells)
    if results.started:
        suite.set("timestamp", results.started)
    properties = ET.SubElement(suite, "properties")
    for name, value in (
        ("run", results.run_id),
        ("matrix", results.matrix),
        ("host-image", results.host_images.get(host, "")),
    ):
        ET.SubElement(properties, "property", name=name, value=one_line(str(value)))
    suite.extend(testcase(c) for c in cells)
    return suite


def render_junit(results: RunResults) -> str:
    """The whole junit.xml document as text."""
    ordered = grid_order(results)
    hosts = list(results.hosts) + sorted({c.host for c in ordered} - set(results.hosts))
    root = ET.Element("testsuites", name=f"dib-matrix {results.run_id}")
    _totals(root, ordered)
    for host in hosts:
        root.append(testsuite(results, host, [c for c in ordered if c.host == host]))
    xml_safe(root)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def xml_safe(root: ET.Element) -> None:
    """Clean every attribute (to one line) and every text of the tree in place."""
    for element in root.iter():
        for key, value in list(element.attrib.items()):
            element.set(key, one_line(value))
        if element.text:
            element.text = clean_text(element.text)
