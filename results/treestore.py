"""The dib trees last-good cells were built with, kept once per digest.

An investigation runs a regressed cell again with the dib tree of its last success
(:mod:`matrix.run.investigate`); that tree may be a checkout edited since, or a
``--dib-tree`` copy long gone. So when a run records its last-good cells, the tree its
build and boot cells ran is kept here::

    <out>/.dib-matrix/trees/<digest>/      the files of the tree cells see (dib/, elements/
                                           and the few packaging files the digest covers)

``<digest>`` is the tree's own digest (``matrix.config.dibtree.digest_files``): the
directory read back as a dib tree has the same digest, so a stored tree is checked, not
trusted. Each file is a hard link to the tree's file when that file still holds the
content the run read (no space while the checkout lives), written from that content
otherwise. A tree is made under a hidden name and renamed into place whole; what a
writer killed half-way leaves (``.new-*``) is swept by :func:`collect`, which also
removes every tree no last-good names. This module is the one owner of the layout.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Protocol

from results.archive import STATE_DIR, OutDir
from results.paths import UnsafePath, inside
from results.trees import remove_tree

TREES_DIR = "trees"
HIDDEN_NEW = ".new-"
DIGEST_RE = re.compile(r"[0-9a-f]{16,128}")
EXECUTABLE_MODE, PLAIN_MODE = 0o755, 0o644


class TreeFile(Protocol):
    """One file of a tree as the run read it (``matrix.config.dibtree.TreeFile``)."""

    content: bytes
    executable: bool
    sha256: bytes


def is_digest(value: object) -> bool:
    return isinstance(value, str) and DIGEST_RE.fullmatch(value) is not None


def trees_dir(out: OutDir) -> Path:
    return inside(out.path, STATE_DIR, TREES_DIR)


def tree_path(out: OutDir, digest: str) -> Path:
    """Where the tree of ``digest`` is kept (UnsafePath unless ``digest`` is one)."""
    if not is_digest(digest):
        raise UnsafePath(f"{digest!r:.80}: not a tree digest")
    return inside(out.path, STATE_DIR, TREES_DIR, digest)


def stored(out: OutDir, digest: str) -> Path | None:
    """The kept tree of ``digest``; None when there is none (never kept, or collected)."""
    try:
        path = tree_path(out, digest)
    except UnsafePath:
        return None
    return path if path.is_dir() and not path.is_symlink() else None


def keep(out: OutDir, digest: str, root: Path, files: Mapping[str, TreeFile]) -> Path:
    """Keep the tree of ``digest`` (its ``files`` as read from ``root``) unless it is
    kept already; its directory. OSError, UnsafePath when it cannot be written."""
    final = tree_path(out, digest)
    if final.is_dir():
        return final
    out.make_state_dir()
    final.parent.mkdir(exist_ok=True)
    staging = inside(final.parent, f"{HIDDEN_NEW}{secrets.token_hex(4)}")
    staging.mkdir()
    try:
        for name, file in sorted(files.items()):
            _place(staging, name, root, file)
        try:
            os.rename(staging, final)
        except OSError:
            if not final.is_dir():  # else another run kept the same tree first
                raise
    finally:
        remove_tree(staging)
    return final


def _place(staging: Path, name: str, root: Path, file: TreeFile) -> None:
    parts = PurePosixPath(name).parts
    dest = inside(staging, *parts)  # every component a plain name
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not _link_same(root.joinpath(*parts), dest, file):
        dest.write_bytes(file.content)
        dest.chmod(EXECUTABLE_MODE if file.executable else PLAIN_MODE)


def _link_same(source: Path, dest: Path, file: TreeFile) -> bool:
    """Hard-link ``source`` when it still holds what the run read, with the same x bit."""
    try:
        if source.is_symlink() or not source.is_file():
            return False
        if hashlib.sha256(source.read_bytes()).digest() != file.sha256:
            return False
        if bool(source.stat().st_mode & 0o100) != file.executable:
            return False
        os.link(source, dest)
    except OSError:
        return False
    return True


def kept(out: OutDir) -> list[str]:
    """The digests of every kept tree, sorted."""
    top = trees_dir(out)
    if not top.is_dir() or top.is_symlink():
        return []
    return sorted(child.name for child in top.iterdir() if is_digest(child.name))


def collect(out: OutDir, named: Iterable[str]) -> list[str]:
    """Remove every kept tree whose digest is not in ``named`` (the digests last-good
    records name), and what killed writers left; the digests removed. The caller holds
    the archive's lock."""
    top = trees_dir(out)
    if not top.is_dir() or top.is_symlink():
        return []
    wanted = set(named)
    removed = []
    for child in sorted(top.iterdir()):
        if child.name.startswith(HIDDEN_NEW):
            remove_tree(child)
        elif is_digest(child.name) and child.name not in wanted:
            remove_tree(child)
            removed.append(child.name)
    return removed
