"""A failed cell's excerpt as every report shows it.

The excerpt (``Cell.excerpt``, written by the verdict stage: the lines of the cell's
log most unlike the successful logs of its row) is read back from results.json, which
is untrusted: an entry that is not ``{"line": positive int, "text": str}`` is left
out, the text is flattened to one line with escapes and control characters removed,
and both the number of lines and their length are bounded. HTML escaping stays
jinja2's job; markdown escapes with its own helpers.
"""

from __future__ import annotations

from dataclasses import dataclass

from reports.sanitize import one_line
from results.model import Cell

MAX_LINES = 20  # the verdict stage writes 5; a hand-edited run gets no more than this
TEXT_LIMIT = 300  # characters of a line shown
MAX_LINE_NUMBER = 1 << 53  # beyond any log (and any JSON reader's exact integers)


@dataclass(frozen=True)
class ExcerptLineView:
    line: int  # 1-based line number in the cell's log
    text: str  # one line, cleaned, bounded; raw text for an autoescaping template


def excerpt_lines(cell: Cell) -> list[ExcerptLineView]:
    """The well-formed lines of ``cell``'s excerpt, cleaned and bounded."""
    entries = getattr(cell, "excerpt", None)
    if not isinstance(entries, list):
        return []
    shown: list[ExcerptLineView] = []
    for entry in entries[:MAX_LINES]:
        if not isinstance(entry, dict):
            continue
        number, text = entry.get("line"), entry.get("text")
        # bool is an int to Python, not a line number
        if type(number) is not int or not 1 <= number <= MAX_LINE_NUMBER:
            continue
        if isinstance(text, str):
            shown.append(ExcerptLineView(number, one_line(text, TEXT_LIMIT)))
    return shown
