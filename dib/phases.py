"""Build phases and the merged hook tree that every phase runs from.

As in diskimage-builder, every element's directory is merged into one tree
(``TMP_HOOKS_PATH``); a phase runs the executable scripts of ``<phase>.d`` in
numeric order after sourcing every ``environment.d`` file.
"""

from __future__ import annotations

import enum
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from dib.elements import Element
from dib.errors import ElementError


class Phase(enum.Enum):
    """The phases in the order they run; ``in_chroot`` says where their scripts run."""

    ROOT = ("root", False)
    EXTRA_DATA = ("extra-data", False)
    PRE_INSTALL = ("pre-install", True)
    INSTALL = ("install", True)
    POST_INSTALL = ("post-install", True)
    POST_ROOT = ("post-root", False)
    BLOCK_DEVICE = ("block-device", False)
    PRE_FINALISE = ("pre-finalise", False)
    FINALISE = ("finalise", True)
    CLEANUP = ("cleanup", False)

    def __init__(self, label: str, in_chroot: bool):
        self.label = label
        self.in_chroot = in_chroot

    @property
    def dirname(self) -> str:
        return f"{self.label}.d"


ENVIRONMENT_DIR = "environment.d"
# Directories whose file names must be unique across elements (DIB fails on these too).
UNIQUE_DIRS = tuple(p.dirname for p in Phase) + (ENVIRONMENT_DIR, "bin")
# As diskimage-builder's dib-run-parts: a phase runs only files named with letters, digits,
# "_" and "-" (no dot: "foo.init", "bar.service" beside the hooks are data, never run);
# environment.d files may also have dots ("10-dpkg.bash").
SCRIPT_NAME = re.compile(r"^[0-9A-Za-z_-]+$")
ENVIRONMENT_NAME = re.compile(r"^[0-9A-Za-z_.-]+$")
ELEMENT_METADATA = {"element-deps", "element-provides", "README.rst", "README.md"}


def script_sort_key(name: str) -> Tuple[int, str]:
    """Numeric order on the leading digits ("5-a" before "10-b"), then by name."""
    match = re.match(r"^(\d+)", name)
    return (int(match.group(1)) if match else 1 << 30, name)


@dataclass(frozen=True)
class HookOrigin:
    """Where a file of the merged tree came from: its element and its own path there."""

    element: Optional[str]
    source: Path


@dataclass(frozen=True)
class HookTree:
    """The merged hook tree of one build; ``origins`` maps each merged file (relative
    path, e.g. ``post-install.d/80-growroot``) back to its element."""

    root: Path
    origins: Mapping[str, HookOrigin] = field(default_factory=dict, compare=False, hash=False)

    def origin(self, path: Path) -> HookOrigin:
        """The element file behind ``path`` (a file of this tree); itself when unknown."""
        # A link in the tree (install-types links the chosen hooks) stands for its target.
        for candidate, root in ((path, self.root), (path.resolve(), self.root.resolve())):
            try:
                key = candidate.relative_to(root).as_posix()
            except ValueError:
                continue
            if key in self.origins:
                return self.origins[key]
        return HookOrigin(None, path)

    def scripts(self, phase: Phase) -> List[Path]:
        directory = self.root / phase.dirname
        if not directory.is_dir():
            return []
        found = [p for p in directory.iterdir() if p.is_file() and SCRIPT_NAME.match(p.name)]
        return sorted(found, key=lambda p: script_sort_key(p.name))

    def environment_files(self) -> List[Path]:
        directory = self.root / ENVIRONMENT_DIR
        if not directory.is_dir():
            return []
        found = (p for p in directory.iterdir() if p.is_file() and ENVIRONMENT_NAME.match(p.name))
        return sorted(found, key=lambda p: p.name)

    def ignored(self, phase: Phase) -> List[str]:
        """Files of ``phase`` that are not run because of their names (dib-run-parts' rule)."""
        directory = self.root / phase.dirname
        if not directory.is_dir():
            return []
        found = (p.name for p in directory.iterdir() if p.is_file())
        return sorted(name for name in found if not SCRIPT_NAME.match(name))


def merge_elements(elements: Sequence[Element], dest: Path) -> HookTree:
    """Copy every element into ``dest``; a phase script or env file named twice is an error."""
    owner: Dict[str, str] = {}
    origins: Dict[str, HookOrigin] = {}
    dest.mkdir(parents=True, exist_ok=True)
    for element in elements:
        for source in sorted(element.path.rglob("*")):
            relative = source.relative_to(element.path)
            if relative.parts[0] in ELEMENT_METADATA or source.is_dir():
                continue
            if not source.is_file():  # a FIFO would fail the copy, a device fill the disk
                raise ElementError(f"element '{element.name}': {source}: not a regular file")
            key = relative.as_posix()
            if relative.parts[0] in UNIQUE_DIRS and key in owner:
                raise ElementError(
                    f"'{key}' is provided by both elements '{owner[key]}' and '{element.name}'; "
                    "rename one of them"
                )
            owner[key] = element.name
            origins[key] = HookOrigin(element.name, source)
            target = dest / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists() or target.is_symlink():
                target.unlink()
            shutil.copy2(source, target)
    return HookTree(dest, origins)
