"""Which snapshots ``dib-matrix gc`` drops: a pure function of the store's snapshots and
the output directory's runs, and the gc that applies it.

Two kinds of snapshot live in the store:

- saved by hand (``dib-matrix snapshot save``, origin ``run``): a release's pinned
  state, named by a person. They stay until ``snapshot rm``.
- recorded at the end of a run (``snapshot: record``, origin ``record``), named after
  the run. One goes when retention collects its run from the output directory, unless
  a run still there names it: a run pinned to it (``repository.snapshot``) or whose
  record it is (``repository.recorded``). A run kept with ``dib-matrix keep`` is never
  collected, so what it names stays; a run still there but not kept protects it too,
  since its replay needs it.

Only the runs retention collects *now* count as gone, not every run id absent from the
output directory: one store serves every output directory of the machine (a CI job's,
a developer's, a test's), and a run absent from this one may be alive in another.
A record whose run went some other way (``rm -rf``) stays until ``snapshot rm``.
A run directory whose results.json cannot be read names nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from matrix.snapshot.save import names_in
from matrix.snapshot.store import CollectStats, Store
from results.archive import OutDir, RunDir, run_dirs
from results.reader import ResultsError

RECORD = "record"  # origin of a snapshot saved automatically at the end of a run
GRACE_SECONDS = 7 * 86400  # unnamed blobs younger than this stay: a running run's tee


@dataclass(frozen=True)
class SnapshotEntry:
    """What the policy needs of one snapshot of the store."""

    name: str
    origin: str
    run_id: str | None


@dataclass(frozen=True)
class Drop:
    name: str
    why: str


def doomed(snapshots: Iterable[SnapshotEntry], collected: Iterable[str],
           named_by: Mapping[str, Iterable[str]]) -> list[Drop]:
    """The snapshots to drop, sorted by name: the records of the runs ``collected``
    (removed by retention) that no remaining run names (``named_by``: the id of each run
    left in the output directory -> the snapshot names its results give)."""
    gone = set(collected) - set(named_by)  # a run both left and gone is left
    named = {name for names in named_by.values() for name in names}
    drops = []
    for entry in snapshots:
        run_id = entry.run_id or entry.name  # a record is named after its run
        if entry.origin == RECORD and run_id in gone and entry.name not in named:
            drops.append(Drop(entry.name, f"the record of run {run_id}, which retention "
                                          "collected"))
    return sorted(drops, key=lambda drop: drop.name)


@dataclass(frozen=True)
class SnapshotGc:
    """What :func:`collect` did (or, on a dry run, would do)."""

    snapshots: int  # readable snapshots in the store before
    drops: tuple[Drop, ...]
    collected: CollectStats | None  # None on a dry run or without a store


def collect(store: Store, out: OutDir, collected_runs: Iterable[str], dry_run: bool = False,
            grace_seconds: float = GRACE_SECONDS) -> SnapshotGc:
    """Drop the snapshots :func:`doomed` names once retention collected
    ``collected_runs`` from ``out`` (on a dry run: would collect), then the blobs no
    snapshot names that are older than ``grace_seconds``. A manifest that cannot be read
    is never dropped and stops the collection of blobs (StoreError)."""
    if not store.root.is_dir():  # no store yet: nothing to say, and none made
        return SnapshotGc(0, (), None)
    gone = set(collected_runs)
    snapshots = [SnapshotEntry(snap.name, snap.origin, snap.run_id)
                 for snap in store.snapshots()]
    records = any(entry.origin == RECORD and (entry.run_id or entry.name) in gone
                  for entry in snapshots)
    named_by = _names_of_runs(out, gone) if records else {}
    drops = tuple(doomed(snapshots, gone, named_by))
    if dry_run:
        return SnapshotGc(len(snapshots), drops, None)
    for drop in drops:
        store.remove(drop.name)
    return SnapshotGc(len(snapshots), drops, store.collect(grace_seconds))


def _names_of_runs(out: OutDir, gone: set[str]) -> dict[str, list[str]]:
    """Run id -> the snapshots its results name, for each run of ``out`` not ``gone``
    (an unreadable one names nothing)."""
    named: dict[str, list[str]] = {}
    for path in run_dirs(out.path):
        if path.name in gone:
            continue
        try:
            named[path.name] = names_in(RunDir(path).load())
        except (ResultsError, OSError):
            named[path.name] = []
    return named
