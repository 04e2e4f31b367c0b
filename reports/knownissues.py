"""What a report says about a failure besides its cause: the known issue it is, how
often it was seen, and on which other hosts of the run it happened too.

- *Known issue*: a failure whose catalogue entry has a ``ticket`` says ``known issue
  <ticket>: seen 4 times since 2025-05-02, last on RUN (cell)``. The ticket is the one
  the run wrote into the cell's category; results.json is untrusted once written, so
  a ticket that is not an http(s) link by ``results.weblinks`` is not shown at all. The
  counts come from the record of occurrences of the output directory the run lives in
  (``results.occurrences``, ``<run dir>/../.dib-matrix/occurrences.jsonl``), read once
  per report and only when some failure has a ticket.
- *Also on*: a failure whose cause also failed the same row on other hosts of the same
  run says ``also on debian-trixie, debian-sid``; otherwise ``only on this host``.
  From the results alone.

Every text here is raw: each renderer cleans and escapes it for its format.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from reports.legend import has_named_cause
from results.archive import Warn, warn_on_stderr
from results.model import Cell, RunResults, State
from results.occurrences import Seen, read, seen
from results.weblinks import is_web_url

MAX_ALSO_ON = 8  # hosts named; the rest are counted


def is_named_failure(cell: Cell) -> bool:
    """A failure (allowed or not) whose cause the catalogue named."""
    return (cell.state.is_failure or cell.state is State.ALLOWED_FAILURE) and has_named_cause(
        cell)


def ticket_of(cell: Cell) -> str | None:
    """The ticket of a named failure's cause, when it is a web link a report may show."""
    if not is_named_failure(cell) or cell.category is None:
        return None
    ticket = cell.category.ticket
    return ticket if is_web_url(ticket) else None


def seen_text(found: Seen | None) -> str:
    """``seen 4 times since 2025-05-02, last on RUN (cell)``."""
    if found is None:
        return "not seen in this output directory's record of occurrences"
    times = "once" if found.count == 1 else f"{found.count} times"
    return (f"seen {times} since {found.first.date().isoformat()}, last on "
            f"{found.last.run} ({found.last.cell})")


class KnownIssues:
    """The known-issue and also-on texts of one run's cells."""

    def __init__(self, results: RunResults, seen_by_entry: Mapping[str, Seen] | None = None):
        self.results = results
        self.seen = dict(seen_by_entry or {})
        self._by_row: dict[str, list[Cell]] = {}
        for cell in results.cells:
            if is_named_failure(cell):
                self._by_row.setdefault(cell.row, []).append(cell)

    @classmethod
    def load(cls, results: RunResults, run_dir: Path | None,
             warn: Warn = warn_on_stderr) -> KnownIssues:
        """With the counts from the record beside ``run_dir`` (in its output directory);
        the record is read only when some failure has a ticket."""
        wanted = {c.category.id for c in results.cells if c.category and ticket_of(c)}
        if not wanted or run_dir is None:
            return cls(results)
        found = read(run_dir.absolute().parent, warn)
        counts = {entry: hit for entry in sorted(wanted) if (hit := seen(found, entry))}
        return cls(results, counts)

    def known_issue(self, cell: Cell) -> tuple[str, str] | None:
        """(ticket, what the record says of it) for a failure whose cause has a ticket."""
        ticket = ticket_of(cell)
        if ticket is None or cell.category is None:
            return None
        return ticket, seen_text(self.seen.get(cell.category.id))

    def known_issue_text(self, cell: Cell) -> str | None:
        """``known issue <ticket>: seen ...``, or None."""
        found = self.known_issue(cell)
        return None if found is None else f"known issue {found[0]}: {found[1]}"

    def also_on(self, cell: Cell) -> list[str] | None:
        """The other hosts whose cell of the same row failed with the same cause, in the
        run's host order; None when ``cell`` is not a failure with a named cause."""
        if not is_named_failure(cell) or cell.category is None:
            return None
        cause = cell.category.id
        hosts = {c.host for c in self._by_row.get(cell.row, ())
                 if c.host != cell.host and c.category is not None and c.category.id == cause}
        order = {host: index for index, host in enumerate(self.results.hosts)}
        return sorted(hosts, key=lambda host: (order.get(host, len(order)), host))

    def also_on_text(self, cell: Cell) -> str | None:
        """``also on a, b`` or ``only on this host``; None when it does not apply."""
        hosts = self.also_on(cell)
        if hosts is None:
            return None
        if not hosts:
            return "only on this host"
        more = len(hosts) - MAX_ALSO_ON
        return "also on " + ", ".join(hosts[:MAX_ALSO_ON]) + (
            f" and {more} more" if more > 0 else "")
