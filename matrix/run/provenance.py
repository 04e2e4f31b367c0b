"""What each cell's result depended on, recorded so that a comparison can say what changed.

A nightly that turns red must say whether our code, the host or the mirror changed
(``reports.attribution`` compares two runs' records). The run records, in
``results.json``:

- for the run (``provenance``): the dib tree (git commit and dirtiness, and its
  digest, which names a tree that is no git checkout; per-file digests of the ``dib/``
  package), and the mirror's Release ``Date:`` of every suite the run builds, fetched
  once per suite at the start (bounded time; unknown when it cannot be had);
- per cell (``provenance`` of the cell): the host image id; for builds and boots the
  per-file digests of dib's own elements in the target's closure (the same files the
  reuse key hashes, :mod:`matrix.run.reuse`), the distribution and suite, that suite's
  Release date, and the image's package versions from dib's ``<target>.packages``
  manifest (a boot row: its build's image).

Everything here is best effort: a record that cannot be had is left out or ``None``,
never a failure of the cell.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dib import failure
from matrix.config.dibtree import PACKAGE, DibTree
from matrix.run.plan import Plan, PlannedCell
from matrix.verdict.verify.expect import expectation_for
from matrix.verdict.verify.limits import MANIFEST_LIMIT, VerifyError, read_text
from results.archive import RunDir
from results.model import Cell, CellKind, State
from results.safefile import open_regular

LOG = logging.getLogger("dib-matrix")

RELEASE_TIMEOUT = 10.0  # seconds for one suite's Release file, connection and reading
RELEASE_READ_LIMIT = 64 << 10  # the Date: field is in the first lines
APT_DISTROS = ("debian", "ubuntu")  # archives with dists/<suite>/Release
FIELD_LIMIT = 128  # characters kept of a date, a package name or a version
PACKAGES_LIMIT = 20000  # package entries kept per image
RECORD_LIMIT = 64 << 10  # bytes read of dib's failure record
TREE_CACHE_READ = 16 << 20  # bytes of a build's log searched for dib's tree-cache lines
# dib's own line (time stamp, then the text): a hook's output has its tag between them.
TREE_CACHE_LINE = re.compile(rb"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ \| tree cache: "
                             rb"((?:hit|miss|stored|not stored|off)\b[^\r\n]*)", re.MULTILINE)
TREE_CACHE_LIMIT = 400  # characters kept of what the tree cache did


def tree_record(tree: DibTree) -> dict[str, Any]:
    """The run's record of its dib tree: commit and dirtiness, the tree's digest (which
    names a tree that is no git checkout) and the per-file digests of the ``dib/``
    package."""
    return {"commit": tree.commit, "dirty": tree.dirty, "digest": tree.digest,
            "files": tree.file_digests([PACKAGE])}


def _bounded(text: str, limit: int = FIELD_LIMIT) -> str:
    return "".join(ch for ch in text if ch.isprintable())[:limit]


def release_url(mirror: str, suite: str) -> str:
    return f"{mirror.rstrip('/')}/dists/{suite}/Release"


def fetch_release_date(url: str, timeout: float = RELEASE_TIMEOUT,
                       opener: Callable[..., Any] = urllib.request.urlopen) -> str | None:
    """The ``Date:`` field of an apt Release file, reading at most RELEASE_READ_LIMIT bytes;
    None when the file has none. Raises OSError (URLError too) when it cannot be read."""
    read = 0
    with opener(url, timeout=timeout) as response:
        while read < RELEASE_READ_LIMIT:
            raw = response.readline(4096)
            if not raw:
                break
            read += len(raw)
            line = raw.decode("utf-8", "replace")
            if line.startswith("Date:"):
                return _bounded(line[5:].strip()) or None
            if not line.strip():
                break  # the header paragraph ended
    return None


@dataclass
class MirrorDates:
    """The Release date of each suite, fetched once per run in background threads."""

    fetch: Callable[[str], str | None] = fetch_release_date
    timeout: float = RELEASE_TIMEOUT
    _results: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    _threads: dict[tuple[str, str], threading.Thread] = field(default_factory=dict)
    _deadlines: dict[tuple[str, str], float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, mirror: str, suite: str) -> None:
        key = (mirror, suite)
        with self._lock:
            if key in self._threads:
                return
            thread = threading.Thread(target=self._get, args=key, daemon=True,
                                      name=f"release-{suite}")
            self._threads[key] = thread
            self._deadlines[key] = time.monotonic() + self.timeout
        thread.start()

    def _get(self, mirror: str, suite: str) -> None:
        url = release_url(mirror, suite)
        try:
            entry: dict[str, Any] = {"date": self.fetch(url)}
            if entry["date"] is None:
                entry["error"] = "no Date: field"
        except (OSError, ValueError, urllib.error.URLError) as err:
            entry = {"date": None, "error": _bounded(f"{type(err).__name__}: {err}")}
        with self._lock:
            self._results[(mirror, suite)] = entry

    def date(self, mirror: str, suite: str) -> dict[str, Any]:
        """``{"date": ...}`` for the suite. Its fetch gets ``timeout`` seconds from its
        start in all: callers (the scheduler's thread) wait only for what is left."""
        self.start(mirror, suite)
        thread = self._threads[(mirror, suite)]
        thread.join(max(self._deadlines[(mirror, suite)] - time.monotonic(), 0.0))
        with self._lock:
            return dict(self._results.get((mirror, suite),
                                          {"date": None, "error": "timed out"}))

    def record(self) -> dict[str, Any]:
        """Every fetched suite: ``{mirror: {suite: {"date": ...}}}`` (finished fetches)."""
        found: dict[str, Any] = {}
        with self._lock:
            for (mirror, suite), entry in sorted(self._results.items()):
                found.setdefault(mirror, {})[suite] = dict(entry)
        return found


@dataclass(frozen=True)
class Suite:
    distro: str | None
    release: str | None
    mirror: str | None  # the archive the cell's dib uses, when it is an apt archive


def manifest_path(run_dir: Path, cell: PlannedCell) -> Path | None:
    """dib's package manifest of the image a build or boot cell is about."""
    if cell.target is None or cell.kind not in (CellKind.BUILD, CellKind.BOOT):
        return None
    return RunDir(run_dir).packages(cell.host.name, cell.target.name)


def failed_hook(run_dir: Path, cell: PlannedCell) -> dict[str, str] | None:
    """Which element's hook a failed build stopped in (``element``, ``phase``, ``hook``),
    from dib's failure record beside the image; None without one."""
    if cell.target is None or cell.kind is not CellKind.BUILD:
        return None
    path = RunDir(run_dir).failure_record(cell.host.name, cell.target.name)
    try:
        with open_regular(path) as stream:  # written in the cell: a FIFO must not hang us
            text = stream.read(RECORD_LIMIT).decode("utf-8", "replace")
        record = failure.FailureRecord.from_json(text).bounded().to_dict()
    except (OSError, ValueError, TypeError):
        return None
    found = {k: _bounded(str(record[k])) for k in ("element", "phase", "hook") if record.get(k)}
    return found or None


def tree_cache_outcome(log: Path | None) -> str | None:
    """What dib's installed-tree cache did in a build, from its log: ``hit <key> (...)``,
    ``miss <key>: why; stored <key> (...)``, ``off: why``; None when the log says nothing."""
    if log is None:
        return None
    try:
        with open_regular(log) as stream:
            head = stream.read(TREE_CACHE_READ)
    except OSError:
        return None
    said = [m.decode("utf-8", "replace").strip() for m in TREE_CACHE_LINE.findall(head)]
    return _bounded("; ".join(said), TREE_CACHE_LIMIT) if said else None


def read_packages(path: Path) -> dict[str, str] | None:
    """``name`` (``name:arch`` when one name has several arches) -> version, from a
    manifest; None when there is none (a build that failed before writing it)."""
    try:
        text = read_text(path, MANIFEST_LIMIT, strict=True)
    except (OSError, VerifyError):
        return None
    rows: dict[tuple[str, str], str] = {}
    for line in text.splitlines():  # "name version arch", as dib writes it
        words = line.split()
        if len(words) >= 2:
            rows[(words[0], words[2] if len(words) > 2 else "")] = words[1]
    names: dict[str, int] = {}
    for name, _arch in rows:
        names[name] = names.get(name, 0) + 1
    packages = {}
    for (name, arch), version in sorted(rows.items())[:PACKAGES_LIMIT]:
        label = f"{name}:{arch}" if names[name] > 1 and arch else name
        packages[_bounded(label)] = _bounded(version)
    return packages


class Recorder:
    """Builds the records of one run. ``mirror``: the Debian mirror the run's cells get
    (``find_mirror('debian')``); ``image_id(host)`` the host image's id;
    ``closure_parts(cell)`` the tree parts of the cell's elements
    (``KeyMaker.cell_parts``)."""

    def __init__(self, run_dir: Path, tree: DibTree, mirror: str | None,
                 image_id: Callable[[str], str],
                 closure_parts: Callable[[PlannedCell], tuple[str, ...]] | None,
                 dates: MirrorDates | None = None,
                 elements_dirs: Callable[[PlannedCell], list[Path]] | None = None,
                 repositories: Callable[[str], list[dict[str, Any]]] | None = None):
        self.run_dir = run_dir
        self.tree = tree
        self.mirror = mirror
        self.image_id = image_id
        self.closure_parts = closure_parts
        self.dates = dates or MirrorDates()
        self.elements_dirs = elements_dirs
        self.repositories = repositories  # cell id -> the suites and indices it read
        self.dib_record = tree_record(tree)
        self._suites: dict[tuple[str, tuple[str, ...], tuple[tuple[str, str], ...]], Suite] = {}
        self._elements: dict[str, dict[str, str]] = {}  # target name -> file digests

    def suite(self, cell: PlannedCell) -> Suite:
        """The distribution, release and apt archive of a build or boot cell."""
        if cell.target is None:
            return Suite(None, None, None)
        key = (cell.target.name, tuple(cell.target.elements), tuple(cell.env))
        if key not in self._suites:
            env = {**cell.target.env_dict, **dict(cell.env)}
            dirs = (self.elements_dirs(cell) if self.elements_dirs is not None
                    else [self.tree.elements])
            try:
                expected = expectation_for(cell.target, dict(cell.env), dirs)
                distro, release = expected.distro_id, expected.release
            except Exception:  # noqa: BLE001 - provenance is best effort
                distro, release = None, env.get("DIB_RELEASE")
            # The archive the cell's dib is given: the target's own, else the run's
            # (engine.dib_environment); only apt archives have a Release file.
            mirror = env.get("DIB_DISTRIBUTION_MIRROR") or self.mirror
            if distro not in APT_DISTROS:
                mirror = None
            self._suites[key] = Suite(distro, release, mirror)
        return self._suites[key]

    def prefetch(self, plan: Plan) -> None:
        """Start fetching the Release date of every suite the plan builds (once each)."""
        for cell in plan.cells:
            if cell.kind is CellKind.BUILD and cell.excluded is None:
                suite = self.suite(cell)
                if suite.mirror and suite.release:
                    self.dates.start(suite.mirror, suite.release)

    def run_record(self) -> dict[str, Any]:
        return {"dib": self.dib_record, "mirrors": self.dates.record()}

    def _element_digests(self, cell: PlannedCell) -> dict[str, str]:
        assert cell.target is not None
        if cell.target.name not in self._elements:
            parts = self.closure_parts(cell) if self.closure_parts else ()
            self._elements[cell.target.name] = self.tree.file_digests(parts)
        return self._elements[cell.target.name]

    def fill(self, results: Any, planned: PlannedCell, cell: Cell) -> None:
        """Record what ``cell`` (just finished) depended on, and the run's mirror dates so
        far; a record that cannot be made is left out, the run goes on."""
        try:
            cell.provenance = self.cell_record(planned, cell)
            results.provenance = self.run_record()
        except Exception as err:  # noqa: BLE001 - provenance must never sink a run
            LOG.warning("%s: provenance not recorded (%r)", cell.id, err)

    def cell_record(self, planned: PlannedCell, cell: Cell) -> dict[str, Any]:
        """What ``cell`` (just finished) depended on. Excluded and skipped cells ran
        nothing: they get no record."""
        if not cell.state.is_finished or cell.attempts < 1:
            return {}
        record: dict[str, Any] = {}
        try:
            record["host_image"] = self.image_id(planned.host.name)
        except Exception:  # noqa: BLE001 - no host image (its hostgen failed)
            record["host_image"] = None
        read = self.repositories(planned.id) if self.repositories is not None else []
        if read:
            record["repositories"] = read
        if planned.kind not in (CellKind.BUILD, CellKind.BOOT) or planned.target is None:
            return record
        record["elements"] = self._element_digests(planned)
        if planned.target.upstream_elements:
            record["diskimage_builder_elements"] = planned.target.upstream_elements
        suite = self.suite(planned)
        record["distro"], record["suite"] = suite.distro, suite.release
        if suite.mirror and suite.release:
            entry = self.dates.date(suite.mirror, suite.release)
            record["mirror_release_date"] = entry.get("date")
        else:
            record["mirror_release_date"] = None
        manifest = manifest_path(self.run_dir, planned)
        packages = read_packages(manifest) if manifest is not None else None
        if packages is not None and manifest is not None:
            record["packages_manifest"] = RunDir(self.run_dir).relative(manifest)
        record["packages"] = packages
        if planned.kind is CellKind.BUILD:
            outcome = tree_cache_outcome(RunDir(self.run_dir).recorded(cell.log))
            if outcome is not None:
                record["tree_cache"] = outcome
        if cell.state.is_failure or cell.state is State.ALLOWED_FAILURE:
            hook = failed_hook(self.run_dir, planned)
            if hook is not None:
                record["failed_hook"] = hook
        return record


def start(ctx: Any, plan: Plan, results: Any,
          repositories: Callable[[str], list[dict[str, Any]]] | None = None) -> Recorder | None:
    """The run's recorder (``execute`` calls this once its context is made): the dib tree
    recorded, the suites' Release dates being fetched. None when the suites cannot be
    told."""
    where = getattr(ctx, "settings", ctx)  # the run's settings (or an older context)
    try:
        recorder = Recorder(where.run_dir, where.dib_tree, where.mirror,
                            ctx.image_id, ctx.keys.cell_parts if ctx.keys else None,
                            elements_dirs=ctx.elements_dirs, repositories=repositories)
        recorder.prefetch(plan)
    except (OSError, ValueError) as err:
        LOG.warning("provenance not recorded (%s)", err)
        return None
    results.provenance = recorder.run_record()
    return recorder
