"""Why did a cell change? What differs between two runs for one cell, most specific first.

A regression (or a fix) is attributed to the inputs the two runs recorded for that cell
(``provenance``, written by ``matrix.run.provenance``):

- our code: the files of dib's own elements in the cell's closure (``elements``) and the
  files of the ``dib/`` package (the run's ``provenance.dib.files``), with the two trees'
  commits (or digests, for a tree that is no git checkout);
- the host: the host image id;
- the mirror: the Release ``Date:`` of the cell's suite;
- the image: its package versions (``libc6 2.36-9 -> 2.36-10``).

The changed file of the hook that failed (dib's failure record, ``failed_hook``, or
the cause's text: ``element growroot: post-install.d/80-growroot exited 1``), or a
package the cause's evidence names, comes first and is marked as the likely cause.
Pure functions over two ``RunResults``: no files are read.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from results.model import Cell, RunResults, State

SHOWN = 8  # changed files or packages named per factor; the rest are counted
ELEMENT_FILE = re.compile(r"^elements/([^/]+)/(.+)$")


@dataclass(frozen=True)
class Factor:
    """One input that differs between the two runs for a cell."""

    kind: str  # "element", "dib", "packages", "host", "mirror"
    summary: str  # one line: "elements/foo/install.d/10-bar changed"
    details: tuple[str, ...] = ()  # e.g. "libc6 2.36-9 -> 2.36-10", at most SHOWN
    likely: bool = False  # the cause of the failure names it


@dataclass(frozen=True)
class Attribution:
    cell_id: str
    factors: tuple[Factor, ...] = ()
    notes: tuple[str, ...] = ()  # what could not be compared, and why

    @property
    def headline(self) -> str:
        """The most specific difference, or why there is none."""
        if self.factors:
            first = self.factors[0]
            return first.summary + (" (likely cause)" if first.likely else "")
        return self.notes[0] if self.notes else "no recorded input differs"

    def entries(self) -> list[tuple[str, tuple[str, ...]]]:
        """Every factor (marked when likely) with its details, then the notes."""
        out = [(f.summary + (" (likely cause)" if f.likely else ""), f.details)
               for f in self.factors]
        return out + [(note, ()) for note in self.notes]


def _short(value: Any, chars: int = 12) -> str:
    text = str(value)
    if text.startswith("sha256:"):
        return "sha256:" + text[7:7 + chars]
    return text[:chars] if len(text) > 40 else text


def _cause_text(cell: Cell | None) -> str:
    """What the cell's verdict says (legend and evidence line), for naming the likely cause."""
    if cell is None:
        return ""
    parts = [cell.category.legend if cell.category else "", cell.evidence or ""]
    return "\n".join(parts)


def _failing(old: Cell | None, new: Cell | None) -> Cell | None:
    """The side whose verdict explains the change: the failing one."""
    if new is not None and new.state is not State.SUCCESS:
        return new
    return old


def changed_files(before: Mapping[str, str], after: Mapping[str, str]) -> list[str]:
    """``path changed`` / ``added`` / ``removed`` / ``mode`` lines, sorted by path."""
    lines = []
    for path in sorted(set(before) | set(after)):
        old, new = before.get(path), after.get(path)
        if old == new:
            continue
        if old is None:
            lines.append(f"{path} added")
        elif new is None:
            lines.append(f"{path} removed")
        elif old.split("+")[0] == new.split("+")[0]:
            lines.append(f"{path} mode changed ({'now' if new.endswith('+x') else 'no longer'}"
                         " executable)")
        else:
            lines.append(f"{path} changed")
    return lines


def _hook_file(cell: Cell | None) -> str | None:
    """The element file whose hook failed, from dib's failure record (``failed_hook``)."""
    hook = cell.provenance.get("failed_hook") if cell is not None else None
    if not isinstance(hook, dict) or not all(hook.get(k) for k in ("element", "phase", "hook")):
        return None
    return f"elements/{hook['element']}/{hook['phase']}/{hook['hook']}"


def _names_hook(path: str, cause: str, hook_file: str | None = None) -> bool:
    """Whether the failure names this element file: dib's record of the failed hook, or
    the cause's text (its element and its hook)."""
    if hook_file is not None and path == hook_file:
        return True
    found = ELEMENT_FILE.match(path)
    if not found or not cause:
        return False
    element, rest = found.groups()
    return element in cause and (rest in cause or rest.rsplit("/", 1)[-1] in cause)


def _first_words(lines: list[str]) -> list[str]:
    return [line.split(" ", 1)[0] for line in lines]


def _bounded(lines: list[str]) -> tuple[str, ...]:
    if len(lines) <= SHOWN:
        return tuple(lines)
    return (*lines[:SHOWN], f"and {len(lines) - SHOWN} more")


def _tree_name(dib: Mapping[str, Any]) -> str:
    commit = dib.get("commit")
    if commit:
        return str(commit)[:12] + (" (with local changes)" if dib.get("dirty") else "")
    digest = dib.get("digest")
    return f"digest {str(digest)[:12]}" if digest else "unknown tree"


def element_factors(old: Cell, new: Cell, cause: str, hook_file: str | None = None
                    ) -> list[Factor]:
    """The cell's element files that differ: the failing hook's own file first."""
    before = old.provenance.get("elements")
    after = new.provenance.get("elements")
    if not isinstance(before, dict) or not isinstance(after, dict):
        return []
    lines = changed_files(before, after)
    likely = [line for line in lines if _names_hook(line.split(" ", 1)[0], cause, hook_file)]
    others = [line for line in lines if line not in likely]
    factors = [Factor("element", f"{line} (in the cell's element closure)", likely=True)
               for line in likely]
    if len(others) == 1:
        factors.append(Factor("element", f"{others[0]} (in the cell's element closure)"))
    elif others:
        elements = sorted({m.group(1) for p in _first_words(others)
                           if (m := ELEMENT_FILE.match(p))})
        factors.append(Factor("element", f"{len(others)} files of the cell's element closure "
                              f"changed ({', '.join(elements)})", _bounded(others)))
    return factors


def dib_factors(old_run: RunResults, new_run: RunResults) -> list[Factor]:
    """Files of the dib/ package that differ (every cell runs them)."""
    before = (old_run.provenance.get("dib") or {}).get("files")
    after = (new_run.provenance.get("dib") or {}).get("files")
    if not isinstance(before, dict) or not isinstance(after, dict):
        return []
    lines = changed_files(before, after)
    if not lines:
        return []
    if len(lines) == 1:
        return [Factor("dib", lines[0])]
    return [Factor("dib", f"{len(lines)} files of the dib package changed", _bounded(lines))]


def package_changes(before: Mapping[str, str], after: Mapping[str, str]) -> list[str]:
    """``libc6 2.36-9 -> 2.36-10``, ``+ foo 1.0`` (new), ``- bar 2.0`` (gone)."""
    lines = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        if old is None:
            lines.append(f"+ {name} {new}")
        elif new is None:
            lines.append(f"- {name} {old}")
        else:
            lines.append(f"{name} {old} -> {new}")
    return lines


def _package_name(line: str) -> str:
    words = line.split()
    return words[1] if words[0] in "+-" else words[0]


_WORD = re.compile(r"[\w.+-]+")  # a package name is made of these


def cause_words(cause: str) -> frozenset[str]:
    """The words of a cause a package name can be (read once per cause, not per package:
    a regression's cause against hundreds of changed packages)."""
    return frozenset(_WORD.findall(cause))


def names_package(name: str, words: Collection[str]) -> bool:
    """Whether the cause names the package: a word that is its name, or its name and a
    full stop after it (``libc6.``, ``libc6.so``)."""
    bare = name.split(":", 1)[0]
    return bare in words or any(word.startswith(bare + ".") for word in words)


def packages_of(run: RunResults, cell: Cell) -> dict[str, str] | None:
    """The cell's image's package versions; a boot row without its own: its build's."""
    packages = cell.provenance.get("packages")
    if isinstance(packages, dict):
        return packages
    if cell.row.endswith(":boot"):
        build = run.cell(cell.host, cell.row[: -len(":boot")])
        if build is not None and isinstance(build.provenance.get("packages"), dict):
            return build.provenance["packages"]
    return None


def package_factors(old_run: RunResults, new_run: RunResults, old: Cell, new: Cell,
                    cause: str) -> tuple[list[Factor], list[str]]:
    before, after = packages_of(old_run, old), packages_of(new_run, new)
    if before is None or after is None:
        if "packages" in old.provenance or "packages" in new.provenance:
            which = "either run" if before is None and after is None else (
                "the baseline" if before is None else "this run")
            return [], [f"package versions not compared: no package list in {which} (a build "
                        "that failed before writing its image has none)"]
        return [], []
    lines = package_changes(before, after)
    if not lines:
        return [], []
    words = cause_words(cause)
    likely = [line for line in lines if names_package(_package_name(line), words)]
    factors = [Factor("packages", f"package {line}", likely=True) for line in likely]
    others = [line for line in lines if line not in likely]
    if len(others) == 1:
        factors.append(Factor("packages", f"package {others[0]}"))
    elif others:
        factors.append(Factor("packages", f"{len(others)} package versions differ",
                              _bounded(others)))
    return factors, []


def host_factors(old: Cell, new: Cell) -> list[Factor]:
    before, after = old.provenance.get("host_image"), new.provenance.get("host_image")
    if before and after and before != after:
        return [Factor("host", f"host image {_short(before)} -> {_short(after)} "
                       f"(host {new.host} rebuilt)")]
    return []


def mirror_factors(old: Cell, new: Cell) -> tuple[list[Factor], list[str]]:
    suite = new.provenance.get("suite") or old.provenance.get("suite")
    if "mirror_release_date" not in old.provenance or "mirror_release_date" not in new.provenance:
        return [], []
    before = old.provenance.get("mirror_release_date")
    after = new.provenance.get("mirror_release_date")
    if before and after and before != after:
        return [Factor("mirror", f"mirror's {suite} Release: {before} -> {after}")], []
    if not before or not after:
        which = "either run" if not before and not after else (
            "the baseline" if not before else "this run")
        return [], [f"mirror's {suite} Release date unknown in {which}"]
    return [], []


def attribute(old_run: RunResults, new_run: RunResults, old: Cell, new: Cell) -> Attribution:
    """What differs between the two runs for this cell, the likely cause first."""
    if not old.provenance or not new.provenance:
        which = "either run" if not old.provenance and not new.provenance else (
            "the baseline" if not old.provenance else "this run")
        return Attribution(new.id, notes=(f"no provenance recorded in {which} (a run made "
                                          "before dib-matrix recorded it, or a cell that ran "
                                          "nothing)",))
    failing = _failing(old, new)
    cause = _cause_text(failing)
    notes: list[str] = []
    factors = element_factors(old, new, cause, _hook_file(failing))
    factors += dib_factors(old_run, new_run)
    packages, note = package_factors(old_run, new_run, old, new, cause)
    factors += packages
    notes += note
    factors += host_factors(old, new)
    mirror, note = mirror_factors(old, new)
    factors += mirror
    notes += note
    old_dib = old_run.provenance.get("dib") or {}
    new_dib = new_run.provenance.get("dib") or {}
    if _tree_name(old_dib) != _tree_name(new_dib):
        tree = f"dib tree {_tree_name(old_dib)} -> {_tree_name(new_dib)}"
        if not any(f.kind in ("element", "dib") for f in factors):
            tree += " (none of this cell's files changed)"
        notes.insert(0, tree)
    if not factors:
        notes.append("no recorded input of this cell differs (host image, dib and element "
                     "files, mirror date, packages): a flaky cell, or a cause outside what "
                     "dib-matrix records")
    ordered = sorted(factors, key=lambda f: not f.likely)  # stable: kinds keep their order
    return Attribution(new.id, tuple(ordered), tuple(notes))


@dataclass
class Attributions:
    """Attributions of a comparison's regressions and fixes, by cell id."""

    by_cell: dict[str, Attribution] = field(default_factory=dict)

    def get(self, cell_id: str) -> Attribution | None:
        return self.by_cell.get(cell_id)


def attribute_changes(old_run: RunResults, new_run: RunResults,
                      pairs: list[tuple[Cell, Cell]]) -> Attributions:
    """Attribute each (old, new) pair of cells (the regressions and fixes)."""
    found = Attributions()
    for old, new in pairs:
        found.by_cell[new.id] = attribute(old_run, new_run, old, new)
    return found
