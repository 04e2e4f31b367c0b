"""What a report says of a shard's run, a merge of shards and cells re-run in place."""

from __future__ import annotations

from reports.sanitize import one_line
from results.model import RunResults

LISTED = 10  # cells or parts named on one line before "+N more"


def _listing(items: list[str]) -> str:
    more = len(items) - LISTED
    return ", ".join(items[:LISTED]) + (f" +{more} more" if more > 0 else "")


def _field(value: object, limit: int = 40) -> str:
    """A value of the shard block (read from a run directory: untrusted) on one line."""
    return one_line(str(value), limit)


def shard_lines(results: RunResults) -> list[str]:
    """Lines for the head of report.txt; none for an ordinary run."""
    return [text for _, text in shard_rows(results)]


def shard_rows(results: RunResults) -> list[tuple[str, str]]:
    """(label, text) rows: the shard or merge, missing shards, cells re-run in place."""
    lines: list[tuple[str, str]] = []
    mark = results.shard
    count = _field(mark.get("count"))
    digest = one_line(str(mark.get("matrix_hash", "")))[:12]
    if mark.get("kind") == "part":
        hosts = [_field(h, 80) for h in mark.get("hosts", [])]
        lines.append(("shard", f"shard {_field(mark.get('index'))}/{count} of matrix {digest}: "
                      + (_listing(hosts) if hosts else "no cells")
                      + " (dib-matrix merge makes one run of the shards' runs)"))
    elif mark.get("kind") == "merged":
        parts = [f"{_field(p.get('index'))}/{count} {_field(p.get('run_id'), 60)}"
                 for p in mark.get("parts", [])]
        lines.append(("merged", f"merged from {len(parts)} of {count} shards of matrix "
                      f"{digest}: " + _listing(parts)))
        missing = mark.get("missing") or []
        if missing:
            lines.append(("missing shards", "MISSING shards: "
                          + _listing([f"{_field(i)}/{count}" for i in missing])
                          + " - their cells are pending: merge again with every shard's run"))
    if results.reruns:
        cells = list(dict.fromkeys(_field(r.get("cell"), 80) for r in results.reruns))
        lines.append(("re-run", "re-run in place: " + _listing(cells)
                      + " (earlier verdicts and logs: dib-matrix show RUN_DIR CELL)"))
    return lines
