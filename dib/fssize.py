"""How big an ext4 filesystem must be for a tree (outputs and the disk assembler both ask)."""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path

BLOCK = 4096
MIB = 1 << 20


@dataclass(frozen=True)
class TreeUsage:
    bytes: int
    inodes: int


def tree_usage(root: Path) -> TreeUsage:
    """Space the tree takes on ext4: blocks per file (hard links once), an inode each."""
    seen = set()
    total = 0
    inodes = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            info = os.lstat(os.path.join(dirpath, name))
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            inodes += 1
            if (
                stat.S_ISREG(info.st_mode)
                or stat.S_ISDIR(info.st_mode)
                or (stat.S_ISLNK(info.st_mode) and info.st_size > 60)
            ):
                total += math.ceil(info.st_size / BLOCK) * BLOCK
    return TreeUsage(bytes=total, inodes=inodes + 1)


def estimate_fs_size(usage: TreeUsage) -> int:
    """A filesystem size just above what the tree needs (journal and metadata included)."""
    metadata = usage.inodes * 256 + 64 * MIB
    return math.ceil((usage.bytes * 1.10 + metadata) / MIB) * MIB
