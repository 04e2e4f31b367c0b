"""A size budget for a directory of cached tar files (the debootstrapped bases, the
installed trees): once a store goes over it, the least recently used files go first.

A use is a file's mtime (a restore touches it). Each cache says how to remove one of
its entries, because an entry is more than its tar (a record, a lock) and may be in use.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from pathlib import Path
from typing import Callable, List, Optional

LOG = logging.getLogger("dib")
SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)
SCALE = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
# A half-written tar no process has touched for this long belongs to a killed build.
STALE_PARTIAL_SECONDS = 6 * 3600


def parse_size(text: str) -> Optional[int]:
    """``8G``, ``500M``, ``1048576``, ``2GiB``: bytes; None when ``text`` is not a size."""
    match = SIZE.match(text)
    return int(match[1]) * SCALE[match[2].upper()] if match else None


def touch(path: Path) -> None:
    """Mark ``path`` as just used, so it is pruned last."""
    with contextlib.suppress(OSError):
        path.touch(exist_ok=True)


def prune(directory: Path, budget: int, keep: str,
          remove: Callable[[Path], bool]) -> List[str]:
    """Remove least recently used ``*.tar`` entries until the rest fit ``budget``.

    ``keep`` (a stem) is never removed; ``remove(tar)`` removes one entry and says whether
    it could (False: in use, tried no further). Returns the stems removed.
    """
    remove_stale_partials(directory)
    entries = []
    for tar in directory.glob("*.tar"):
        with contextlib.suppress(OSError):
            info = tar.stat()
            entries.append((info.st_mtime, info.st_size, tar))
    total = sum(size for _, size, _ in entries)
    removed = []
    for _, size, tar in sorted(entries):
        if total <= budget:
            break
        if tar.stem == keep or not remove(tar):
            continue
        total -= size
        removed.append(tar.stem)
        LOG.info("%s: removed %s (least recently used, over %d MiB)",
                 directory.name, tar.stem, budget >> 20)
    return removed


def remove_stale_partials(directory: Path, now: Optional[float] = None) -> None:
    now = time.time() if now is None else now
    for partial in directory.glob("*.partial-*"):
        with contextlib.suppress(OSError):
            if now - partial.stat().st_mtime > STALE_PARTIAL_SECONDS:
                partial.unlink()
