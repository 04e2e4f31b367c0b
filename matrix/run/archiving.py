"""A run's last step in the archive: its successes become last-good cells, then retention.

Called once by the runner's finalise stage, after the run's results are saved. Neither
step can fail the run: a problem is one warning line in the run's log. Which runs are
live is the leases' knowledge (:mod:`matrix.containers.leases`); ``results`` is told
through a predicate, asked again right before each removal.
"""

from __future__ import annotations

import logging
from pathlib import Path

from matrix.config.dibtree import DibTree
from matrix.containers.leases import Registry
from matrix.snapshot import retain
from matrix.snapshot.manifest import StoreError
from matrix.snapshot.store import Store
from results import lastgood, retention
from results.archive import OutDir
from results.model import RunResults
from results.paths import UnsafePath
from results.retention import Live, Policy

LOG = logging.getLogger("dib-matrix")


def live_runs(registry: Registry | None = None) -> Live:
    """Whether a live lease names a run id, read afresh at each question (a run resumed
    a second ago counts). A lease directory that cannot be read raises OSError."""
    leases = registry if registry is not None else Registry()
    return lambda run_id: run_id in leases.live_runs()


def archive_run(out_dir: Path, results: RunResults, policy: Policy | None,
                registry: Registry | None = None, snapshot_root: Path | None = None,
                tree: DibTree | None = None) -> None:
    """Record the run's last-good cells (and keep ``tree``, the run's dib tree, when one
    names it; trees no last-good names any more go), then apply ``policy`` (when it has
    limits) to the output directory; the run itself is never removed. The snapshots
    recorded at the end of the runs it removed go with them (``snapshot_root``: the
    snapshot store)."""
    out = OutDir(out_dir)
    try:
        recorded = lastgood.record_run(out, out.run(results.run_id), results, warn=_warn)
        LOG.debug("last-good: %d cells recorded", len(recorded))
        if tree is not None:
            lastgood.keep_tree(out, recorded, tree.digest, tree.path, tree.files)
        for digest in lastgood.collect_trees(out, warn=_warn):
            LOG.info("last-good: removed the kept dib tree %s (no last-good names it)",
                     digest[:16])
    except (OSError, UnsafePath) as err:
        LOG.warning("last-good cells not recorded: %s", err)
    if policy is None or not policy.limits:
        return
    if results.interrupted:
        LOG.info("retention: not applied after an interrupted run")
        return
    try:
        done = retention.collect(out, policy, live_runs(registry), protect={results.run_id},
                                 warn=_warn)
    except (OSError, UnsafePath) as err:
        LOG.warning("retention not applied: %s", err)
        return
    for line in retention.describe_plan(done, dry_run=False):
        LOG.info("retention: %s", line)
    if snapshot_root is not None and done.removals:
        _collect_snapshots(out, snapshot_root, [r.name for r in done.removals])


def _collect_snapshots(out: OutDir, root: Path, removed: list[str]) -> None:
    """The recorded snapshots of the runs retention removed (unless another run names
    them), then the blobs nothing names."""
    try:
        gc = retain.collect(Store(root), out, removed)
    except (OSError, StoreError) as err:
        LOG.warning("snapshots not collected: %s", err)
        return
    for drop in gc.drops:
        LOG.info("retention: removed snapshot %s (recorded by a removed run)", drop.name)


def _warn(message: str) -> None:
    LOG.warning("%s", message)
