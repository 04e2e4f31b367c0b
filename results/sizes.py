"""Byte sizes as people write them (``50G``, ``1.5TiB``, ``800M``) and as reports show them.

One parser for every place a size is given: the matrix file's ``retention: {max-bytes:}``
and ``dib-matrix gc --max-bytes``. Units are binary (``G`` is 2**30, as ``du -h`` and
``df -h`` count); ``B``, ``iB`` and lower case are accepted. A size must be more than 0
and at most ``MAX_SIZE``: ``nan``, ``inf``, ``1e400G`` and ``-5G`` are refused, never
read as "no limit".
"""

from __future__ import annotations

import re

UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
MAX_SIZE = 1 << 60  # an exbibyte: beyond every disk, far below an integer's limits
SIZE_RE = re.compile(r" *([0-9]{1,15}(?:\.[0-9]{1,6})?) *([kmgtp]?)(?:i?b)? *",
                     re.IGNORECASE)  # full match


class SizeError(ValueError):
    """A size that cannot be read; the message says what is accepted."""


def parse_size(value: object) -> int:
    """Bytes from ``50G``, ``1.5T``, ``800MiB``, ``4096`` or a YAML integer."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise SizeError(f"a size is a number of bytes or text such as 50G, got {_shown(value)}")
    if isinstance(value, int):
        size = value
    else:
        match = SIZE_RE.fullmatch(value)
        if match is None:
            raise SizeError(f"cannot read size {_shown(value)} (examples: 800M, 50G, 1.5T)")
        number, unit = match.groups()
        # Whole bytes: a fraction is taken in the unit, then rounded down.
        size = int(float(number) * UNITS[unit.upper()])
    if not 0 < size <= MAX_SIZE:
        raise SizeError(f"{_shown(value)}: a size must be more than 0 and at most "
                        f"{format_size(MAX_SIZE)}")
    return size


def format_size(size: int) -> str:
    """``size`` bytes for a person: ``512 B``, ``1.5 GiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # not reached


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
