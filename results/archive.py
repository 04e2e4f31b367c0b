"""The output directory and the run directories in it: the one owner of their layout.

::

    <out>/<run-id>/results.json                  results.store writes it, results.reader reads it
    <out>/<run-id>/run.log                       the orchestrator's own log
    <out>/<run-id>/repository.json               what its cells were served (matrix.snapshot)
    <out>/<run-id>/report.txt, report.html, junit.xml
    <out>/<run-id>/bump.md, summary.md           a bump run's (run --bump-from) markdown
    <out>/<run-id>/logs/<host>/<row>.log         a boot row "t:boot" logs to t-boot.log
    <out>/<run-id>/images/<host>/<target><suffix>  .qcow2, .sha256, .packages, .failure.json
    <out>/latest -> <run-id>
    <out>/.dib-matrix/lock                       held (flock) while the archive changes
    <out>/.dib-matrix/keep/<run-id>.json         a run retention never removes (dib-matrix keep)
    <out>/.dib-matrix/last-good/<host>/<row>/    a cell's last success: last-good.json and
                                                 its files, hard-linked (results.lastgood)
    <out>/.trash-<run-id>-<token>/               a run being removed (results.retention)

:class:`OutDir` lists the runs, makes a new one and points ``latest`` at it, and says
where the archive's own state is; :class:`RunDir` says where each file of one run is,
and reads and writes its results. No other module builds a run path or lists runs.
A name starting with ``.`` is never a run: the archive's state and runs being
removed are left out of every listing.

A run directory is untrusted once written (a shard part comes from another machine,
a results.json may be edited by hand): every path built from a name goes through
:func:`results.paths.inside`, a path that results.json records is followed only
while it stays inside its run (:meth:`RunDir.recorded`), and a listing reads what
it can and skips the rest. One bad run must not cost the history, the reuse index
or the estimates of every other run, so each run that cannot be read is skipped
with one warning line naming it and its first problem.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import secrets
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from dib import failure
from results import store
from results.locks import take_exclusive
from results.model import RunResults
from results.names import is_name, is_row, is_run_id
from results.paths import UnsafeOutput, UnsafePath, check_component, inside, kind
from results.reader import ResultsError, clip, error_line, read_results, shown_path

LATEST = "latest"
LOGS = "logs"
IMAGES = "images"
RUN_LOG = "run.log"
REPOSITORY_FILE = "repository.json"  # the repository state the run's cells were served
PACKAGES = ".packages"  # dib's package manifest beside an image (dib/outputs.py)
TEXT_REPORT, HTML_REPORT, JUNIT_REPORT = "report.txt", "report.html", "junit.xml"
BUMP_REPORT, SUMMARY_REPORT = "bump.md", "summary.md"  # written by a bump run (run --bump-from)
STATE_DIR = ".dib-matrix"  # the archive's own state, beside the runs
LOCK_FILE = "lock"
KEEP_DIR = "keep"
LAST_GOOD_DIR = "last-good"
TRASH_PREFIX = ".trash-"
# How long a writer of the archive waits for another (a gc, a run recording its
# last-good cells): each holds the lock for seconds, so minutes mean one is stuck.
LOCK_WAIT = 120.0

Warn = Callable[[str], None]


def warn_on_stderr(message: str) -> None:
    print(f"dib-matrix: warning: {message}", file=sys.stderr)


# ---------------------------------------------------------------- one run


@dataclass(frozen=True)
class RunDir:
    """The directory of one run: where each of its files is."""

    path: Path

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def results_file(self) -> Path:
        return self.path / store.RESULTS_FILE

    @property
    def run_log(self) -> Path:
        return self.path / RUN_LOG

    @property
    def repository_file(self) -> Path:
        """Every Release file, index and pool file the run's cells were served
        (``{"archives": {uri: ArchiveState}}``, matrix.snapshot.manifest's JSON)."""
        return self.path / REPOSITORY_FILE

    @property
    def text_report(self) -> Path:
        return self.path / TEXT_REPORT

    @property
    def html_report(self) -> Path:
        return self.path / HTML_REPORT

    @property
    def junit_report(self) -> Path:
        return self.path / JUNIT_REPORT

    @property
    def bump_report(self) -> Path:
        """A bump run's review body: the package changes against the run it bumps from."""
        return self.path / BUMP_REPORT

    @property
    def summary_report(self) -> Path:
        """A bump run's markdown summary (regressions, counts, a Bump section)."""
        return self.path / SUMMARY_REPORT

    def log(self, host: str, row: str) -> Path:
        """The log of cell ``host``.``row`` (a boot row's ``:`` becomes ``-``)."""
        return inside(self.path, LOGS, host, _named(row, ".log").replace(":", "-"))

    def images(self, host: str) -> Path:
        """Where the builds on ``host`` leave their images."""
        return inside(self.path, IMAGES, host)

    def image(self, host: str, target: str, suffix: str) -> Path:
        """``target``'s image file on ``host`` ending in ``suffix`` (``.qcow2``, ``""``)."""
        return inside(self.path, IMAGES, host, _named(target, suffix))

    def image_files(self, host: str, target: str) -> list[Path]:
        """Every file of ``target``'s build on ``host``: ``<target>.<anything>``."""
        return sorted(self.images(host).glob(f"{glob.escape(check_component(target))}.*"))

    def failure_record(self, host: str, target: str) -> Path:
        """dib's structured record of a failed build, beside its image."""
        return failure.path_for(self.image(host, target, ""))

    def packages(self, host: str, target: str) -> Path:
        """dib's package manifest of ``target``'s image on ``host``."""
        return self.image(host, target, PACKAGES)

    def relative(self, path: Path) -> str:
        """``path`` as results.json records it: relative to the run (``logs/h/t.log``);
        ValueError when it is not under the run's directory."""
        return str(path.relative_to(self.path))

    def recorded(self, relative: object) -> Path | None:
        """The file a path recorded in results.json names (a cell's log), symlinks
        resolved; None when there is none or it leads out of the run."""
        if not isinstance(relative, str) or not relative:
            return None
        try:
            root = self.path.resolve()
            path = (root / relative).resolve()
        except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
            return None
        return path if root in path.parents else None

    def create(self) -> RunDir:
        """Make the directory (and the output directory) unless it is there; this run."""
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def load(self) -> RunResults:
        """The run's results, read by the validating reader (ResultsError, OSError)."""
        return read_results(self.path)

    def save(self, results: RunResults) -> Path:
        """Write the run's results.json atomically; its path."""
        return store.save(results, self.path)


def _named(name: object, suffix: str) -> str:
    """``name`` + ``suffix``, the name checked as one plain component on its own first
    (``..`` + ``.log`` would pass as a file name)."""
    return check_component(name) + suffix


# ---------------------------------------------------------------- the runs of an output directory


@dataclass(frozen=True)
class StoredRun:
    run_dir: Path
    results: RunResults


@dataclass(frozen=True)
class OutDir:
    """The output directory: its runs, newest first, and the ``latest`` link."""

    path: Path

    def runs(self, limit: int | None = None, warn: Warn = warn_on_stderr,
             exclude: str | None = None) -> Iterator[StoredRun]:
        """The newest ``limit`` (None: all) readable runs, newest first: :func:`runs_in`."""
        return itertools.islice(runs_in(self.path, warn, exclude), limit)

    def run(self, run_id: str) -> RunDir:
        """The directory of run ``run_id`` (UnsafePath unless it is a run id)."""
        return RunDir(inside(self.path, _run_id(run_id)))

    def new_run(self, run_id: str) -> RunDir:
        """:meth:`run`, its directory made."""
        return self.run(run_id).create()

    def point_latest(self, run_id: str) -> None:
        """Point ``latest`` at run ``run_id`` with one rename: a reader sees the link
        to the earlier run or to this one, never no link. Only a link (or nothing) is
        replaced: a file or directory named ``latest`` is not ours (UnsafeOutput)."""
        link = self.path / LATEST
        if os.path.lexists(link) and not link.is_symlink():
            raise UnsafeOutput(f"{shown_path(link)}: is {kind(os.lstat(link).st_mode)}, not "
                               "the link to the newest run: left as it is")
        temp = inside(self.path, f".{LATEST}-{_run_id(run_id)}")
        temp.unlink(missing_ok=True)  # left by a run killed right here
        temp.symlink_to(run_id)
        os.replace(temp, link)

    def latest(self) -> RunDir | None:
        """The run ``latest`` points at; None without a link to a run directory here."""
        try:
            target = os.readlink(self.path / LATEST)
        except OSError:
            return None
        if not _names_a_run(target) or not (self.path / target).is_dir():
            return None
        return RunDir(self.path / target)


    # ------------------------------------------------------------ the archive's own state

    @property
    def state_dir(self) -> Path:
        return inside(self.path, STATE_DIR)

    @property
    def keep_dir(self) -> Path:
        return inside(self.path, STATE_DIR, KEEP_DIR)

    def keep_mark(self, run_id: str) -> Path:
        """The file whose presence says run ``run_id`` is kept (``dib-matrix keep``)."""
        return inside(self.path, STATE_DIR, KEEP_DIR, f"{_run_id(run_id)}.json")

    @property
    def last_good_dir(self) -> Path:
        return inside(self.path, STATE_DIR, LAST_GOOD_DIR)

    def last_good(self, host: str, row: str) -> Path:
        """The directory of cell ``host``.``row``'s last success (UnsafePath unless both
        are names)."""
        if not is_name(host) or not is_row(row):
            raise UnsafePath(f"{clip(host)}.{clip(row)}: not a cell of names")
        return inside(self.path, STATE_DIR, LAST_GOOD_DIR, host, row)

    def trash(self, name: str) -> Path:
        """A fresh name to move ``name`` (a run) to before it is deleted."""
        return inside(self.path, f"{TRASH_PREFIX}{check_component(name)}-{secrets.token_hex(4)}")

    def trash_dirs(self) -> list[Path]:
        """What removals killed half-way left (real directories only)."""
        if not self.path.is_dir():
            return []
        return sorted(child for child in self.path.iterdir()
                      if child.name.startswith(TRASH_PREFIX) and not child.is_symlink()
                      and child.is_dir())

    def make_state_dir(self) -> Path:
        """The state directory, made unless it is there; a symlink or a file in its place
        is not ours (UnsafeOutput)."""
        path = self.state_dir
        with contextlib.suppress(FileExistsError):
            path.mkdir(parents=True)
        mode = os.lstat(path).st_mode
        if not stat.S_ISDIR(mode):
            raise UnsafeOutput(f"{shown_path(path)}: is {kind(mode)}, not the archive's "
                               "state directory: left as it is")
        return path

    @contextlib.contextmanager
    def locked(self, wait: float = LOCK_WAIT) -> Iterator[None]:
        """The archive's lock (``flock`` on ``.dib-matrix/lock``), held for the block: one
        writer of the archive at a time. ArchiveBusy after ``wait`` seconds. Not
        re-entrant: a block never takes it twice."""
        self.make_state_dir()
        fd = _open_lock(inside(self.path, STATE_DIR, LOCK_FILE))
        try:
            if not take_exclusive(fd, wait):
                raise ArchiveBusy(f"{shown_path(self.path)}: another dib-matrix holds the "
                                  f"archive's lock for over {wait:.0f} s")
            yield
        finally:
            os.close(fd)  # the lock goes with the descriptor


class ArchiveBusy(OSError):
    """The archive's lock stayed taken past the wait."""


def _open_lock(path: Path) -> int:
    """The lock file's descriptor: a regular file, never a symlink followed or a FIFO."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK,
                 0o666)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafeOutput(f"{shown_path(path)}: not a regular file: not the archive's lock")
    return fd


def _names_a_run(name: object) -> bool:
    """A run id, and not ``latest`` (the link's own name)."""
    return is_run_id(name) and name != LATEST


def _run_id(run_id: str) -> str:
    """``run_id`` when it may name a run's directory; UnsafePath otherwise."""
    if not _names_a_run(run_id):
        raise UnsafePath(f"{clip(run_id)}: not a run id (letters, digits, '.', '_', '-'; "
                         f"not {LATEST!r})")
    return run_id


def run_dirs(out_dir: Path) -> list[Path]:
    """The directories under ``out_dir`` that hold a results.json, newest first (a run
    id starts with its time). ``latest`` is a run listed already: the link, and a copy
    of the run in its place (an artifact upload or ``cp -L`` follows links), are left
    out, as is any other symlink and every name starting with ``.`` (the archive's
    state, a run being removed)."""
    if not out_dir.is_dir():
        return []
    found = [child for child in out_dir.iterdir()
             if child.name != LATEST and not child.name.startswith(".")
             and not child.is_symlink() and child.is_dir()
             and os.path.lexists(RunDir(child).results_file)]
    return sorted(found, key=lambda child: child.name, reverse=True)


def runs_in(out_dir: Path, warn: Warn = warn_on_stderr,
            exclude: str | None = None) -> Iterator[StoredRun]:
    """The readable runs under ``out_dir``, newest first, read as they are asked for;
    ``exclude`` (the run going on) is left out. Each run that cannot be read is
    ``warn``-ed about once, as ``skipped <path>: <problem>``, and skipped."""
    for run_dir in run_dirs(out_dir):
        if run_dir.name == exclude:
            continue
        if not is_run_id(run_dir.name):
            warn(f"skipped {shown_path(run_dir)}: not a run id")
            continue
        try:
            results = RunDir(run_dir).load()
        except (ResultsError, OSError) as err:
            warn(f"skipped {error_line(err)}")
            continue
        yield StoredRun(run_dir, results)
