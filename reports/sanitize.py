"""Make untrusted text safe to show: no terminal escapes, no control characters.

Log lines, evidence, legends, reasons and reproducers come from builds and run
directories we do not control. HTML escaping is jinja2's job (autoescape); this
module removes what no output format may carry raw:

- terminal escape sequences (ANSI colours, cursor moves, window titles) and the
  one-byte C1 controls a terminal also obeys (``\\x9b`` is a CSI);
- carriage returns (progress bars redraw a line: a terminal shows its last state);
- bidirectional overrides and isolates, which make a terminal or a browser show
  text in another order than it is ("Trojan Source"), and line/paragraph separators;
- characters XML 1.0 forbids (C0 controls, surrogates, U+FFFE/U+FFFF).

Two kinds of callers: a *value* is cleaned when it enters a report (``clean_line``
and ``clean_text`` for log lines, which read as a terminal would leave them;
``one_line`` for a field in a single-line place: escapes dropped, all its text kept),
and a *rendered document* (a report, a printed table, a log record, every value a
template prints) gets ``safe_text`` as its last step: escape sequences dropped, every
other unsafe character left becomes U+FFFD, so the rule holds whatever a renderer
forgot; layout characters, newline and tab, are kept.
"""

from __future__ import annotations

import logging
import re

# A whole escape sequence: CSI (ESC [ or the one-byte 0x9b), OSC up to BEL or ST
# (ESC ] or 0x9d), or a two-character escape (ESC followed by one byte). An OSC's body
# stops at the next ESC or 0x9d, so a flood of unterminated ones is read once (linear).
ANSI_RE = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    r"|(?:\x1b\]|\x9d)[^\x07\x1b\x9c\x9d]*(?:\x07|\x1b\\|\x9c)"
    r"|\x1b[@-Z\\-_]"
)
# C0 controls except tab and newline, DEL, C1 controls, the bidi controls (ALM, LRM,
# RLM, embeddings and overrides U+202A-U+202E, isolates U+2066-U+2069), line and
# paragraph separators, surrogates, and U+FFFE/U+FFFF.
UNSAFE_RE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
    "\u2028\u2029\ud800-\udfff\ufffe\uffff]"
)
REPLACEMENT = "\ufffd"


def _neutralised(text: str) -> str:
    """Escape sequences dropped whole; every other unsafe character made U+FFFD."""
    return UNSAFE_RE.sub(REPLACEMENT, ANSI_RE.sub("", text))


def safe_text(text: str) -> str:
    """A rendered document (a report, a table, a log record) made safe for any output:
    the last guard, so the rule holds whatever a renderer forgot. Newlines and tabs are
    kept, so layout is too; a lone carriage return shows as U+FFFD, never obeyed."""
    return _neutralised(text.replace("\r\n", "\n"))


def clean_line(line: str) -> str:
    """One log line as a terminal would leave it: escapes gone, last \\r segment kept."""
    line = ANSI_RE.sub("", line.rstrip("\r\n"))
    if "\r" in line:
        line = line.rstrip("\r").rsplit("\r", 1)[-1]
    return UNSAFE_RE.sub(REPLACEMENT, line)


def clean_text(text: str) -> str:
    """Multi-line text with every line cleaned; newlines normalised to ``\\n``."""
    return "\n".join(clean_line(line) for line in text.replace("\r\n", "\n").split("\n"))


def one_line(text: str, limit: int | None = None) -> str:
    """Text for a single-line place (a table cell, a legend entry, an XML attribute).

    All of the text shows: a carriage return is a space here, as a newline is, so
    hostile text cannot erase what precedes it on the line (a label, a check's name).
    """
    flat = " ".join(_neutralised(text.replace("\r", " ")).split())
    if limit is not None and len(flat) > limit:
        return flat[: max(limit - 1, 0)] + "\u2026"
    return flat


class SafeFormatter(logging.Formatter):
    """Log records for the console and run.log: they carry legends, reasons and paths
    from builds, so each formatted record passes :func:`safe_text`."""

    def format(self, record: logging.LogRecord) -> str:
        return safe_text(super().format(record))
