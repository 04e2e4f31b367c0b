"""A directory tree kept as a tar file in dib's image cache (the debootstrapped base, the
installed tree): owners by number, extended attributes, one filesystem; written under a
temporary name and renamed, so a concurrent build never reads half a file."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Sequence

from dib.run import run

FLAGS = ("--numeric-owner", "--xattrs")


def unpack(tarball: Path, root: Path, tag: str) -> None:
    run(["tar", "-C", str(root), *FLAGS, "-xpf", str(tarball)], tag=tag)


def pack(root: Path, tarball: Path, tag: str, excluded: Sequence[str] = ()) -> None:
    """``root`` into ``tarball``; ``excluded``: tar patterns of members left out."""
    partial = tarball.with_name(f"{tarball.name}.partial-{os.getpid()}")
    try:
        run(["tar", "-C", str(root), *FLAGS, "--one-file-system",
             *(f"--exclude={pattern}" for pattern in excluded), "-cpf", str(partial), "."],
            tag=tag)
        os.replace(partial, tarball)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
