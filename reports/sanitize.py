"""Make untrusted log text safe to show: no terminal escapes, no control characters.

Log lines come from builds we do not control. HTML escaping is jinja2's job
(autoescape); this module removes what no output format can show: ANSI colour
sequences, carriage-return progress bars, and characters XML 1.0 forbids.
"""

from __future__ import annotations

import re

ANSI_RE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
# C0 controls except tab and newline, DEL, C1 controls, surrogates, and U+FFFE/U+FFFF.
FORBIDDEN_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
REPLACEMENT = "\ufffd"


def clean_line(line: str) -> str:
    """One log line as a terminal would leave it: escapes gone, last \\r segment kept."""
    line = ANSI_RE.sub("", line.rstrip("\r\n"))
    if "\r" in line:
        line = line.rstrip("\r").rsplit("\r", 1)[-1]
    return FORBIDDEN_RE.sub(REPLACEMENT, line)


def clean_text(text: str) -> str:
    """Multi-line text with every line cleaned; newlines normalised to ``\\n``."""
    return "\n".join(clean_line(line) for line in text.replace("\r\n", "\n").split("\n"))


def one_line(text: str, limit: int | None = None) -> str:
    """Text for a single-line place (a table cell, a legend entry, an XML attribute)."""
    flat = " ".join(clean_text(text).split())
    if limit is not None and len(flat) > limit:
        return flat[: max(limit - 1, 0)] + "\u2026"
    return flat
