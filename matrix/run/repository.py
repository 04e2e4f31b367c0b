"""The run's repository state: one view of the mirror (or of a snapshot) for every cell.

Every run starts a repository view (:mod:`matrix.snapshot.view`) in front of the
package cache: each suite's InRelease is read once, at the start, and every cell gets
the same indices, so the mirror cannot move between the first cell and the last. A
pinned run (``snapshot: NAME``, ``run --snapshot``) is served from the snapshot store
alone; ``snapshot: record`` saves the run's state as a snapshot at its end. Each cell's
proxy names it, so the view can say which suites and indices that cell read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dib import spawn
from matrix.config.snapshotkey import SnapshotSetting
from matrix.run.plan import Plan
from matrix.snapshot.manifest import Snapshot
from matrix.snapshot.store import Store
from matrix.snapshot.view import RepositoryView, ViewError
from results.archive import RunDir
from results.model import CellKind, RunResults

LOG = logging.getLogger("dib-matrix")
LOOPBACK = "127.0.0.1"  # where the view listens unless the cells run on other machines

INDEX_READER = "dib-matrix: the run's record"  # the view's label for complete_indices
INDEX_FORMS = (".xz", ".gz", "")  # the first the Release lists is read
INDEX_TIMEOUT = 120.0  # seconds for one index (tens of MB from a slow mirror)
PREFETCH_TIMEOUT = 15.0  # seconds for every suite's InRelease at the start, in parallel
WAIVED = {"DIB_APT_CHECK_VALID_UNTIL": "false"}  # a snapshot's Release files are old


def snapshot_identity(snapshot: Snapshot) -> str:
    """What a pinned cell's reuse key holds of its snapshot: the content, not the name
    (two names of one state are one state) and not the mirror's host name (a replay on a
    machine with another mirror host is the same build)."""
    state = []
    for archive in sorted(snapshot.archives.values(), key=lambda a: a.uri):
        prefix = archive.uri.split("://", 1)[-1].partition("/")[2]
        suites = sorted((s.suite, s.inrelease or s.release or "")
                        for s in archive.suites.values())
        files = sorted((path, ref.sha256) for path, ref in archive.files.items())
        state.append([prefix, suites, files])
    return hashlib.sha256(json.dumps(state).encode()).hexdigest()


def suites_to_pin(plan: Plan, mirror: str | None, suite_of: Any) -> list[tuple[str, str]]:
    """(archive, suite) of every bootstrapped host and every debootstrapping build of the
    plan: the suites pinned at the run's start. ``suite_of(cell)`` gives a build's
    ``provenance.Suite`` (its archive and release)."""
    pairs: set[tuple[str, str]] = set()
    for host in plan.hosts:
        suite = getattr(host.base, "suite", None)
        archive = getattr(host.base, "mirror", None) or mirror
        if suite and archive:
            pairs.add((archive.rstrip("/"), suite))
    for cell in plan.cells:
        if cell.kind is CellKind.BUILD and cell.excluded is None:
            found = suite_of(cell)
            if found.mirror and found.release:
                pairs.add((found.mirror.rstrip("/"), found.release))
    return sorted(pairs)


@dataclass
class RepositoryStage:
    """The run's view and what the run decided about repository state."""

    setting: SnapshotSetting
    store: Store
    view: RepositoryView | None = None
    snapshot: Snapshot | None = None  # the pinned snapshot
    errors: dict[str, str] = field(default_factory=dict)  # "archive suite" -> why not pinned
    pinned_at_start: str | None = None  # a recording run's suites, once pinned (base_state)
    # No view on a multi-node run: the package cache listens on this machine's loopback,
    # which other nodes cannot reach, so cells go to the mirror directly.
    direct: bool = False

    @classmethod
    def start(cls, setting: SnapshotSetting, store: Store, snapshot: Snapshot | None,
              upstream_proxy: str | None, log_path: Path, stack: contextlib.ExitStack,
              bind: str = LOOPBACK) -> RepositoryStage:
        """The view on ``bind``, running until ``stack`` closes. A view that cannot start
        leaves a live run to the package cache alone (said once); a pinned run cannot go
        on."""
        stage = cls(setting, store, snapshot=snapshot)
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            stage.view = stack.enter_context(RepositoryView.start(
                store, upstream_proxy=upstream_proxy, snapshot=snapshot, log_path=log_path,
                bind=bind))
        except (OSError, ViewError) as err:
            if snapshot is not None:
                raise
            stage.direct = bind != LOOPBACK
            LOG.warning("no repository view (%s): cells use the mirror as it moves%s", err,
                        ", without the package cache (other nodes cannot reach it)"
                        if stage.direct else "")
            return stage
        LOG.info("repository view at %s (%s)", stage.view.url,
                 f"snapshot {snapshot.name}" if snapshot else "live mirror, pinned per run")
        return stage

    @property
    def mode(self) -> str:
        return "pinned" if self.snapshot is not None else "live"

    def pin(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Read every planned suite's InRelease now: this is the run's repository state."""
        if self.view is None:
            return
        errors = self.view.prefetch(list(pairs), timeout=PREFETCH_TIMEOUT)
        for (archive, suite), why in sorted(errors.items()):
            self.errors[f"{archive} {suite}"] = why
            LOG.warning("repository %s %s not pinned at the start: %s", archive, suite, why)
        self.pinned_at_start = self._state_of_pins()

    def key_part(self) -> str:
        """What a cell's reuse key holds of the repository state ("live" adds nothing)."""
        if self.snapshot is not None:
            return "snapshot:" + snapshot_identity(self.snapshot)
        if self.setting.service is not None:
            return "service:" + self.setting.service.mirror
        return "live"

    def cell_env(self, label: str, base: Mapping[str, str]) -> dict[str, str]:
        """A cell's proxy variables: through the view, named after the cell (else the
        package cache's ``base``); Valid-Until waived for a snapshot."""
        env = dict(base)
        if self.direct:
            env = {k: v for k, v in env.items() if k not in spawn.PROXY_ENV}
        if self.view is not None:
            env.update(self.view.client_env(label))
        if self.setting.waives_valid_until:
            env.update(WAIVED)
        state = self.base_state()
        if state:  # dib's cached bases are per repository state
            env["DIB_REPOSITORY_STATE"] = state
        return env

    def base_state(self) -> str | None:
        """What dib's cached debootstrap bases are keyed by in this run: the snapshot (or
        service) for a pinned run; for a recording run the suites pinned at its start, so
        that what it records is what its images hold (a base cached from an older state
        would not be); None for other live runs (a cached base is reused as before)."""
        if self.key_part() != "live":
            return hashlib.sha256(self.key_part().encode()).hexdigest()
        return self.pinned_at_start

    def _state_of_pins(self) -> str | None:
        if not self.setting.record or self.view is None:
            return None
        pins = sorted((uri, suite, state.inrelease or state.release or "")
                      for uri, archive in self.view.state().items()
                      for suite, state in archive.suites.items())
        return hashlib.sha256(json.dumps(pins).encode()).hexdigest() if pins else None

    def complete_indices(self, architectures: Iterable[str],
                         components: Iterable[str] = ("main",)) -> None:
        """A recording run keeps each pinned suite's Packages index of the run's
        architectures even where no cell read one (a cell that starts from a cached base
        reads none): ``snapshot save`` finds the images' packages in them. Read through
        the view, which checks them against the pinned Release and stores them."""
        if self.view is None or self.snapshot is not None:
            return
        proxy = self.view.client_env(INDEX_READER)["http_proxy"]
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy}))
        for uri, archive in sorted(self.view.state().items()):
            for suite, state in sorted(archive.suites.items()):
                for component in sorted(set(components) & set(state.components)):
                    for arch in sorted(set(architectures) & set(state.architectures)):
                        _read_first(opener, [
                            f"{uri}/dists/{suite}/{component}/binary-{arch}/Packages{ext}"
                            for ext in INDEX_FORMS])

    def cell_record(self, label: str) -> list[dict[str, Any]]:
        """Per suite the cell read: the archive, the suite's pinned state and the indices
        the cell read (the cell's ``provenance.repositories``)."""
        if self.view is None:
            return []
        usage = self.view.usage(label)
        state = self.view.state()
        record = []
        for uri, suites in sorted(usage.suites.items()):
            for suite, indices in sorted(suites.items()):
                pinned = state[uri].suites.get(suite) if uri in state else None
                entry: dict[str, Any] = {"uri": uri, "suite": suite,
                                         "indices": dict(sorted(indices.items()))}
                if pinned is not None:
                    entry.update(_suite_summary(pinned))
                record.append(entry)
        return record

    def run_record(self) -> dict[str, Any]:
        """The run's ``repository`` record (RunResults.repository)."""
        record: dict[str, Any] = {
            "mode": self.mode,
            "snapshot": self.snapshot.name if self.snapshot else None,
            "valid_until_waived": self.setting.waives_valid_until}
        if self.setting.service is not None:
            record["service"] = self.setting.service.to_json()
        if self.view is not None:
            archives: dict[str, Any] = {}
            for uri, archive in sorted(self.view.state().items()):
                archives[uri] = {suite: _suite_summary(state)
                                 for suite, state in sorted(archive.suites.items())}
            record["archives"] = archives
            record["stats"] = dict(self.view.stats())
        if self.errors:
            record["errors"] = dict(self.errors)
        return record

    def write_state(self, run_dir: Path) -> None:
        """``repository.json``: every file the run's cells were served (what
        ``snapshot save`` keeps)."""
        if self.view is None:
            return
        document = {"archives": {uri: archive.to_json()
                                 for uri, archive in sorted(self.view.state().items())}}
        RunDir(run_dir).repository_file.write_text(json.dumps(document, indent=1) + "\n",
                                                   encoding="utf-8")

    def record_snapshot(self, results: RunResults, run_dir: Path,
                        package_cache: Path | None) -> None:
        """``snapshot: record``: the run saved as a snapshot named after it."""
        if not self.setting.record or self.view is None:
            return
        from matrix.snapshot.save import save_run  # the one caller; keeps start-up light

        try:
            saved = save_run(self.store, run_dir, origin="record",
                             package_sources=(package_cache,) if package_cache else ())
        except Exception as err:  # noqa: BLE001 - a run's end must not sink on it
            LOG.warning("snapshot not recorded: %s", err)
            return
        results.repository["recorded"] = saved.name
        LOG.info("snapshot %s recorded (%s)", saved.name, saved.summary())


def _read_first(opener: urllib.request.OpenerDirector, urls: list[str]) -> None:
    """Read the first of ``urls`` the view serves (it answers 404 for a form its pinned
    Release does not list); a failure is one warning line."""
    for url in urls:
        try:
            with opener.open(url, timeout=INDEX_TIMEOUT) as response:
                while response.read(1 << 20):
                    pass
            return
        except urllib.error.HTTPError as err:
            if err.code == 404:
                continue
            LOG.warning("index %s not kept for the snapshot: %s", url, err)
            return
        except OSError as err:
            LOG.warning("index %s not kept for the snapshot: %s", url, err)
            return


def _suite_summary(state: Any) -> dict[str, Any]:
    return {"inrelease": state.inrelease, "release": state.release, "date": state.date,
            "valid_until": state.valid_until, "components": list(state.components),
            "architectures": list(state.architectures)}
