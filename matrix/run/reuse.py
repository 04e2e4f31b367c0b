"""Content-addressed cell reuse: a cell's key names everything its result depends on.

key = hash(host image id, the files of every element the target resolves to, the
target definition, the dib package, the options that change the output; for a target
with ``diskimage-builder-elements``, that release's version and pinned wheel sha256,
which stand for every upstream element file). A later
run with ``--reuse`` takes a finished cell with the same key instead of building
again, so a patch to one element re-runs only the cells whose closure holds it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from dib.elements import index_elements, resolve
from dib.errors import DibError
from matrix.config import upstreamdib
from matrix.run.plan import PlannedCell
from results.model import Cell, CellKind, RunResults, State, load

KEY_VERSION = "1"
CHECK_INPUTS = ("dib", "elements", "tests/unit/dib", "tox.ini", "matrix/run/incontainer")


def _hashed(paths: Iterable[Path]) -> list[Path]:
    """The files of ``paths`` a key holds, in key order."""
    return [p for p in sorted(paths) if p.is_file() and "__pycache__" not in p.parts]


def file_digest(path: Path) -> tuple[bytes, bool]:
    """What a key holds of one file: its content's sha256 and whether it is executable."""
    return hashlib.sha256(path.read_bytes()).digest(), os.access(path, os.X_OK)


def _hash_files(digest: hashlib._Hash, root: Path, paths: Iterable[Path]) -> None:
    for path in _hashed(paths):
        content, executable = file_digest(path)
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(content)
        digest.update(b"x" if executable else b"-")


def file_digests(root: Path, paths: Iterable[Path], chars: int = 16) -> dict[str, str]:
    """Per file a key holds: path relative to ``root`` -> its sha256 (``chars`` hex digits),
    ``+x`` when executable. The readable form of what :func:`_hash_files` hashes, so a
    comparison of two runs can name the files that changed."""
    digests = {}
    for path in _hashed(paths):
        content, executable = file_digest(path)
        digests[str(path.relative_to(root))] = content.hex()[:chars] + ("+x" if executable else "")
    return digests


def _tree_files(root: Path, top: str) -> list[Path]:
    base = root / top
    return [base] if base.is_file() else list(base.rglob("*"))


@dataclass
class KeyMaker:
    """Computes cell keys against one dib tree; element closures are cached per target.

    ``upstream_elements`` maps a diskimage-builder version to its element tree on this
    machine (filled by the run once the tree is prepared): a target using it resolves
    there first, as its cell's dib does.
    """

    dib_tree: Path
    upstream_elements: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._closures: dict[tuple[str | None, tuple[str, ...]], list[Path]] = {}
        self._index = index_elements([self.dib_tree / "elements"])

    def element_dirs(self, elements: tuple[str, ...], upstream: str | None = None) -> list[Path]:
        """The dirs of dib's own elements in the closure (upstream ones are pinned by sha)."""
        cache_key = (upstream, elements)
        if cache_key not in self._closures:
            if upstream is None:
                index = self._index
            elif upstream in self.upstream_elements:
                index = index_elements([self.upstream_elements[upstream],
                                        self.dib_tree / "elements"])
            else:  # the closure is unknown here: every dib element counts
                self._closures[cache_key] = sorted(
                    p for p in (self.dib_tree / "elements").iterdir() if p.is_dir())
                return self._closures[cache_key]
            try:
                resolution = resolve(["base", *elements], index)
                dirs = [e.path for e in resolution.elements]
            except DibError:
                dirs = []  # the build will fail on it; nothing to reuse anyway
            mine = self.dib_tree / "elements"
            self._closures[cache_key] = [d for d in dirs if d.parent == mine]
        return self._closures[cache_key]

    def closure_files(self, cell: PlannedCell) -> list[Path]:
        """The files of dib's own elements in a build or boot cell's closure (what its key
        hashes of the element tree)."""
        if cell.kind not in (CellKind.BUILD, CellKind.BOOT) or cell.target is None:
            return []
        dirs = self.element_dirs(cell.target.elements, cell.target.upstream_elements)
        return [path for element_dir in dirs for path in element_dir.rglob("*")]

    def key(self, cell: PlannedCell, host_image_id: str) -> str | None:
        digest = hashlib.sha256(f"dib-matrix-cell/{KEY_VERSION}\0{host_image_id}\0".encode())
        digest.update(cell.kind.value.encode() + b"\0")
        if cell.kind is CellKind.CHECK:
            for top in CHECK_INPUTS:
                _hash_files(digest, self.dib_tree, _tree_files(self.dib_tree, top))
            return digest.hexdigest()
        # A boot row's key is its build's inputs under another kind: it changes
        # exactly when the image it boots would.
        if cell.kind not in (CellKind.BUILD, CellKind.BOOT) or cell.target is None:
            return None
        target = cell.target
        definition = {"elements": target.elements, "outputs": target.outputs,
                      "arch": target.arch, "env": cell.env}
        upstream = target.upstream_elements
        if upstream:
            # The release and its wheel's sha256 pin every upstream element file.
            definition["diskimage-builder-elements"] = [
                upstream, upstreamdib.PINS.get(upstream, "unpinned")]
        digest.update(json.dumps(definition, sort_keys=True).encode())
        _hash_files(digest, self.dib_tree, _tree_files(self.dib_tree, "dib"))
        for element_dir in self.element_dirs(target.elements, upstream):
            _hash_files(digest, self.dib_tree, element_dir.rglob("*"))
        return digest.hexdigest()


@dataclass(frozen=True)
class Reusable:
    cell: Cell
    run_dir: Path


def index_previous(out_dir: Path, exclude_run: str, with_failures: bool = False
                   ) -> dict[str, Reusable]:
    """Finished cells of earlier runs by key, newest run first wins."""
    found: dict[str, Reusable] = {}
    runs = sorted((p for p in out_dir.iterdir() if (p / "results.json").is_file()
                   and not p.is_symlink() and p.name != exclude_run),
                  key=lambda p: p.name, reverse=True) if out_dir.is_dir() else []
    accepted = {State.SUCCESS} | ({State.FAILED} if with_failures else set())
    for run_dir in runs:
        try:
            results: RunResults = load(run_dir)
        except (ValueError, OSError):
            continue
        for cell in results.cells:
            if cell.key and cell.state in accepted and not cell.passed_on_retry:
                found.setdefault(cell.key, Reusable(cell, run_dir))
    return found


def link_or_copy(source: Path, dest: Path) -> None:
    """Hard-link an artifact into this run (copy across filesystems)."""
    import shutil

    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.unlink(missing_ok=True)
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)
