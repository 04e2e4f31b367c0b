"""Expand a matrix into cells with stable ids, and the DAG between them.

Per host: ``hostgen`` → each check row (``tox``) and each target build; a
target with ``boot-test`` also gets ``<target>:boot`` after its build. Pure
functions: no engine, no files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dib.arch import normalise as normalise_arch
from matrix.config.hosts import HostDefinition
from matrix.config.matrixfile import MatrixConfig, first_rules
from matrix.config.schema import select
from matrix.config.targets import BOOT_SUFFIX, Target
from matrix.hostgen.facts import HostFacts
from results.model import CellKind

HOSTGEN = "hostgen"
CHECK_TOOLS = {"tox": ("runuser", "tox")}


@dataclass(frozen=True)
class PlannedCell:
    host: HostDefinition
    row: str
    kind: CellKind
    needs: tuple[str, ...] = ()  # ids of prerequisite cells
    target: Target | None = None
    env: tuple[tuple[str, str], ...] = ()
    excluded: str | None = None  # the exclude rule's reason
    voting: bool = True

    @property
    def id(self) -> str:
        return f"{self.host.name}.{self.row}"


@dataclass(frozen=True)
class Plan:
    hosts: tuple[HostDefinition, ...]
    rows: tuple[str, ...]
    cells: tuple[PlannedCell, ...]

    def by_id(self) -> dict[str, PlannedCell]:
        return {c.id: c for c in self.cells}


class SelectionError(ValueError):
    """A --hosts/--targets glob matched nothing."""


def _select(names: list[str], patterns: Sequence[str], what: str) -> list[str]:
    chosen, unmatched = select(names, patterns)
    if unmatched:
        raise SelectionError(f"--{what} {unmatched[0]!r} matches none of: {', '.join(names)}")
    return chosen


def make_plan(config: MatrixConfig, host_globs: Sequence[str] = (),
              target_globs: Sequence[str] = ()) -> Plan:
    hosts = {h.name: h for h in config.hosts}
    targets = {t.name: t for t in config.targets}
    pairs: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {
        (h, t): () for h in hosts for t in targets
    }
    for inc in config.include:  # adds cells; an existing one is never changed
        hosts.setdefault(inc.host.name, inc.host)
        targets.setdefault(inc.target.name, inc.target)
        pairs.setdefault((inc.host.name, inc.target.name), inc.env)
    included = {(i.host.name, i.target.name) for i in config.include}
    host_names = _select(list(hosts), host_globs, "hosts")
    target_names = _select(list(targets), target_globs, "targets")

    rows: list[str] = [HOSTGEN, *config.checks]
    for name in target_names:
        rows.append(name)
        if targets[name].boot_test:
            rows.append(name + BOOT_SUFFIX)
    # Which rule takes each cell, worked out for all cells at once: asked cell by cell,
    # thousands of rules times thousands of rows is minutes.
    exclusions = first_rules(config.exclude, host_names, rows)
    # A rule naming a cause leaves the cell voting: the verdict decides (runner._fill).
    non_voting = first_rules(tuple(r for r in config.allowed_failures if r.cause is None),
                             host_names, rows)

    def excluded(host: str, row: str) -> str | None:
        if (host, row) in included:
            return None
        rule = exclusions.get((host, row))
        return rule.reason if rule else None

    def voting(host: str, row: str) -> bool:
        return (host, row) not in non_voting

    cells: list[PlannedCell] = []
    base_env = config.env
    for host_name in host_names:
        host = hosts[host_name]
        hostgen_id = f"{host_name}.{HOSTGEN}"
        cells.append(PlannedCell(host, HOSTGEN, CellKind.HOSTGEN))
        for check in config.checks:
            cells.append(PlannedCell(host, check, CellKind.CHECK, (hostgen_id,),
                                     excluded=excluded(host_name, check),
                                     voting=voting(host_name, check)))
        for target_name in target_names:
            if (host_name, target_name) not in pairs:
                continue
            target = targets[target_name]
            env = tuple(sorted({**dict(base_env), **target.env_dict,
                                **dict(pairs[(host_name, target_name)])}.items()))
            reason = excluded(host_name, target_name)
            build = PlannedCell(host, target_name, CellKind.BUILD, (hostgen_id,), target, env,
                                reason, voting(host_name, target_name))
            cells.append(build)
            if target.boot_test:
                boot_row = target_name + BOOT_SUFFIX
                # hostgen too: a resumed run keeps the build, but the boot row's reuse
                # key needs the host image its hostgen names again.
                cells.append(PlannedCell(host, boot_row, CellKind.BOOT, (hostgen_id, build.id),
                                         target, env, reason, voting(host_name, boot_row)))
    used_rows = {c.row for c in cells}
    return Plan(tuple(hosts[n] for n in host_names), tuple(r for r in rows if r in used_rows),
                tuple(cells))


def preflight(cell: PlannedCell, facts: HostFacts | None) -> str | None:
    """The line a doomed cell would end with, from the host's facts; None to run it."""
    if facts is None:
        return None
    if cell.kind is CellKind.CHECK:
        for tool in CHECK_TOOLS.get(cell.row, ()):
            if not facts.has_tool(tool):
                return f"{tool} not available"
        return None
    if cell.kind is not CellKind.BUILD or cell.target is None:
        return None
    # A foreign architecture's programs (debootstrap's second stage, every hook) run
    # through the kernel's binfmt handler: without one the build would die minutes in.
    if facts.runs_arch(cell.target.arch) is False:
        return f"no binfmt handler for {normalise_arch(cell.target.arch)}"
    for tool in cell.target.requires.tools:
        if not facts.has_tool(tool):
            return f"{tool} not available"
    release = cell.target.requires.debootstrap_script
    if release and not facts.has_debootstrap_script(release):
        return f"No such script: /usr/share/debootstrap/scripts/{release}"
    return None
