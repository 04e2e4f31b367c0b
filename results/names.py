"""The name rules: which strings may name a host, a target, a row or a run.

One home for them, at the bottom of the tree: configuration files are checked with
them (``matrix.config``), and so is everything read back from a run directory,
where a name becomes a path (``logs/<host>/<row>.log``) and the directory may have
come from another machine. Every rule is a full match: ``$`` in a pattern would let
a final newline through.
"""

from __future__ import annotations

import re

# Hosts, targets, checks and catalogue-free names of the matrix: lower case, no
# separators, never "." or ".." (the first character is a letter or digit).
NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")
# A row is a name, or a target's boot row "<target>:boot".
ROW_RE = re.compile(r"[a-z0-9][a-z0-9._-]*(?::boot)?")
# A run id is its directory's name: also upper case (20250601T020000Z-a1b2c3).
RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_NAME = 128  # longer is never a name we wrote, and makes paths no file system takes


def _fits(rule: re.Pattern[str], value: object) -> bool:
    return isinstance(value, str) and len(value) <= MAX_NAME and rule.fullmatch(value) is not None


def is_name(value: object) -> bool:
    """A host, target or check name (``debian-bookworm``, ``tox``)."""
    return _fits(NAME_RE, value)


def is_row(value: object) -> bool:
    """A row of the table: a name or ``<target>:boot``."""
    return _fits(ROW_RE, value)


def is_run_id(value: object) -> bool:
    """A run id, which is also a directory name under the output directory."""
    return _fits(RUN_ID_RE, value)
