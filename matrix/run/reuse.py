"""Content-addressed cell reuse: a cell's key names everything its result depends on.

key = hash(host image id, the files of every element the target resolves to, the
target definition, the dib package, the options that change the output (for the tox
row: the host image and every file of the dib tree it runs); for a target
with ``diskimage-builder-elements``, that release's version and pinned wheel sha256,
which stand for every upstream element file). A later
run with ``--reuse`` takes a finished cell with the same key instead of building
again, so a patch to one element re-runs only the cells whose closure holds it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from dib.elements import index_elements, resolve
from dib.errors import DibError
from matrix.config import upstreamdib
from matrix.config.dibtree import ELEMENTS, PACKAGE, DibTree
from matrix.run.plan import PlannedCell
from results.archive import OutDir
from results.model import Cell, CellKind, State

KEY_VERSION = "2"  # 2: the tree's digests come from matrix.config.dibtree


@dataclass
class KeyMaker:
    """Computes cell keys against the run's dib tree; element closures are cached per
    target.

    ``upstream_elements`` maps a diskimage-builder version to its element tree on this
    machine (filled by the run once the tree is prepared): a target using it resolves
    there first, as its cell's dib does.
    """

    tree: DibTree
    upstream_elements: dict[str, Path] = field(default_factory=dict)
    # The run's repository state (matrix.run.repository): "live" adds nothing, so live
    # runs keep the keys they had; a pinned snapshot's content or a service's URL does.
    repository: str = "live"

    def __post_init__(self) -> None:
        self._closures: dict[tuple[str | None, tuple[str, ...]], tuple[str, ...]] = {}
        self._index = index_elements([self.tree.elements])

    def closure_parts(self, elements: tuple[str, ...], upstream: str | None = None
                      ) -> tuple[str, ...]:
        """The parts of the tree (``elements/<name>``) of dib's own elements in the
        closure (upstream ones are pinned by sha)."""
        cache_key = (upstream, elements)
        if cache_key not in self._closures:
            self._closures[cache_key] = self._resolve(elements, upstream)
        return self._closures[cache_key]

    def _resolve(self, elements: tuple[str, ...], upstream: str | None) -> tuple[str, ...]:
        if upstream is None:
            index = self._index
        elif upstream in self.upstream_elements:
            index = index_elements([self.upstream_elements[upstream], self.tree.elements])
        else:  # the closure is unknown here: every dib element counts
            return (ELEMENTS,)
        try:
            dirs = [e.path for e in resolve(["base", *elements], index).elements]
        except DibError:
            return ()  # the build will fail on it; nothing to reuse anyway
        return tuple(self.tree.element_part(d.name) for d in dirs
                     if d.parent == self.tree.elements)

    def cell_parts(self, cell: PlannedCell) -> tuple[str, ...]:
        """The element parts of a build or boot cell's closure: what its key holds of the
        element tree (provenance records their files)."""
        if cell.kind not in (CellKind.BUILD, CellKind.BOOT) or cell.target is None:
            return ()
        return self.closure_parts(cell.target.elements, cell.target.upstream_elements)

    def key(self, cell: PlannedCell, host_image_id: str) -> str | None:
        digest = hashlib.sha256(f"dib-matrix-cell/{KEY_VERSION}\0{host_image_id}\0".encode())
        digest.update(cell.kind.value.encode() + b"\0")
        if cell.kind is CellKind.CHECK:
            digest.update(self.tree.digest.encode())  # the tox row runs every part
            return digest.hexdigest()
        # A boot row's key is its build's inputs under another kind: it changes
        # exactly when the image it boots would.
        if cell.kind not in (CellKind.BUILD, CellKind.BOOT) or cell.target is None:
            return None
        target = cell.target
        definition = {"elements": target.elements, "outputs": target.outputs,
                      "arch": target.arch, "env": cell.env}
        if cell.kind is CellKind.BOOT and target.boot_checks is not None:
            definition["boot-checks"] = target.boot_checks  # what the boot row judges
        upstream = target.upstream_elements
        if upstream:
            # The release and its wheel's sha256 pin every upstream element file.
            definition["diskimage-builder-elements"] = [
                upstream, upstreamdib.PINS.get(upstream, "unpinned")]
        digest.update(json.dumps(definition, sort_keys=True).encode())
        digest.update(self.tree.digest_of((PACKAGE, *self.cell_parts(cell))).encode())
        if self.repository != "live":
            digest.update(b"\0repository\0" + self.repository.encode())
        return digest.hexdigest()


@dataclass(frozen=True)
class Reusable:
    cell: Cell
    run_dir: Path


def index_previous(out_dir: Path, exclude_run: str, with_failures: bool = False
                   ) -> dict[str, Reusable]:
    """Finished cells of earlier runs by key, newest run first wins (a run that cannot
    be read is skipped with a warning: its paths never reach a copy)."""
    found: dict[str, Reusable] = {}
    accepted = {State.SUCCESS} | ({State.FAILED} if with_failures else set())
    for stored in OutDir(out_dir).runs(exclude=exclude_run):
        for cell in stored.results.cells:
            # An investigation's variant built another row's inputs under its own name.
            if (cell.key and cell.state in accepted and not cell.passed_on_retry
                    and cell.investigation is None):
                found.setdefault(cell.key, Reusable(cell, stored.run_dir))
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
