"""Retention: which runs of an output directory go, so its disk stays bounded.

A policy has up to three limits, each a bound of its own; a run goes when any of them
says so:

- ``keep-runs N``: runs beyond the newest N;
- ``keep-days D``: runs started more than D days ago;
- ``max-bytes SIZE``: then the oldest runs left, until the output directory holds at
  most SIZE bytes.

Never removed: the newest run; the run ``latest`` names; a run given as protected (the
run that is ending); a run marked with ``dib-matrix keep`` (:mod:`results.keeps`); a
run a live lease names, which is also what makes a run "in progress" (a results.json
with ``finished: null`` whose lease is gone is a dead run, collected like any other);
and each cell's last-known-good, which lives outside the runs
(:mod:`results.lastgood`). A run that cannot be read is listed and removed only when
asked (``remove_bad``): it may be a newer tool's run.

Bytes are bytes on disk (allocated blocks) of what the archive holds (its runs, its
state, the files beside them; another directory in the output directory is not
walked), each inode counted once: an image hard-linked into later runs (``--reuse``)
or into the last-good store is freed only when its last link goes.

Removal holds the archive's lock, decides under it, checks the lease of each run again
just before, renames the run to a hidden ``.trash-*`` name (a reader sees the whole
run or none of it) and deletes that. Leases are the orchestrator's business: the
caller says which runs are live (``live``).
"""

from __future__ import annotations

import datetime as dt
import os
import stat
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from results.archive import STATE_DIR, OutDir, RunDir, Warn, run_dirs, warn_on_stderr
from results.keeps import KeepMark, marks
from results.model import RunResults
from results.names import is_run_id
from results.reader import ResultsError, error_line, printable, shown_path
from results.sizes import format_size
from results.trees import inodes, remove_tree

MAX_KEEP_RUNS = 100_000
MAX_KEEP_DAYS = 36_500  # a hundred years: beyond it a number is a typo

Inode = tuple[int, int]  # (device, inode)
Live = Callable[[str], bool]  # run id -> a live lease names it
Measure = Callable[[os.stat_result], int]  # what one inode counts for


def allocated(info: os.stat_result) -> int:
    """Bytes on disk: what retention bounds (a sparse raw image counts what it holds)."""
    return info.st_blocks * 512


def apparent(info: os.stat_result) -> int:
    """Bytes a file says it has (the benchmark's sparse stand-ins for images)."""
    return info.st_size


class PolicyError(ValueError):
    """A retention limit out of range; the message names it."""


def parse_keep_runs(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_KEEP_RUNS:
        raise PolicyError(f"must be a whole number from 1 to {MAX_KEEP_RUNS}, "
                          f"got {value!r:.40}")
    return value


def parse_keep_days(value: object) -> float:
    number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if number is None or not 0 < number <= MAX_KEEP_DAYS:  # also refuses nan
        raise PolicyError(f"must be a number of days more than 0 and at most "
                          f"{MAX_KEEP_DAYS}, got {value!r:.40}")
    return float(number)


@dataclass(frozen=True)
class Policy:
    keep_runs: int | None = None
    keep_days: float | None = None
    max_bytes: int | None = None

    @property
    def limits(self) -> bool:
        return any(v is not None for v in (self.keep_runs, self.keep_days, self.max_bytes))

    def describe(self) -> str:
        parts = []
        if self.keep_runs is not None:
            parts.append(f"keep-runs {self.keep_runs}")
        if self.keep_days is not None:
            parts.append(f"keep-days {self.keep_days:g}")
        if self.max_bytes is not None:
            parts.append(f"max-bytes {format_size(self.max_bytes)}")
        return ", ".join(parts) or "no limits"


# ---------------------------------------------------------------- the runs, as gc sees them


@dataclass(frozen=True)
class Listed:
    """A directory of the output directory that holds a results.json."""

    name: str
    path: Path
    results: RunResults | None  # None: it cannot be read (``problem`` says why)
    problem: str | None
    when: dt.datetime  # when it started (results.json's time when it does not say)


def list_runs(out: OutDir) -> list[Listed]:
    """Every run directory, readable or not, newest first."""
    listed = [_listed(path) for path in run_dirs(out.path)]
    return sorted(listed, key=lambda run: (run.when, run.name), reverse=True)


def _listed(path: Path) -> Listed:
    run = RunDir(path)
    results, problem = None, None
    if not is_run_id(path.name):
        problem = f"{shown_path(path)}: not a run id"
    else:
        try:
            results = run.load()
        except (ResultsError, OSError) as err:
            problem = error_line(err)
    started = _parsed(results.started) if results is not None else None
    return Listed(path.name, path, results, problem, started or _mtime(run.results_file))


def _parsed(stamp: str | None) -> dt.datetime | None:
    try:
        text = stamp or ""
        moment = dt.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def _mtime(path: Path) -> dt.datetime:
    try:
        seconds = os.lstat(path).st_mtime
    except OSError:
        seconds = 0.0
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc)


# ---------------------------------------------------------------- bytes, once per inode


@dataclass
class Ledger:
    """Bytes on disk under the output directory, each inode once, and what removing
    trees frees: an inode is freed when the last of its links goes."""

    size: dict[Inode, int] = field(default_factory=dict)
    links_left: dict[Inode, int] = field(default_factory=dict)
    trees: dict[str, Counter[Inode]] = field(default_factory=dict)  # top-level name -> links

    @classmethod
    def of(cls, out: Path, measure: Measure = allocated) -> Ledger:
        """What the archive holds under ``out``: its runs (readable or not), its state,
        runs being removed, and the files beside them (index.html, latest). Another
        directory there is not the archive's and is not walked (``gc --out /`` must not
        walk a whole machine)."""
        ledger = cls()
        if not out.is_dir():
            return ledger
        ours = {path.name for path in [*run_dirs(out), *OutDir(out).trash_dirs()]}
        for child in sorted(out.iterdir()):
            if child.name in ours or child.name == STATE_DIR or not _real_directory(child):
                ledger.trees[child.name] = ledger._walk(child, measure)
        return ledger

    def _walk(self, top: Path, measure: Measure) -> Counter[Inode]:
        links: Counter[Inode] = Counter()
        for info in inodes(top):
            inode = (info.st_dev, info.st_ino)
            links[inode] += 1
            self.size[inode] = measure(info)
            # A directory cannot be hard-linked: it goes with the one tree holding it.
            self.links_left[inode] = 1 if stat.S_ISDIR(info.st_mode) else info.st_nlink
        return links

    @property
    def total(self) -> int:
        return sum(self.size.values())

    def remove(self, name: str) -> int:
        """Bytes freed by removing top-level entry ``name`` after the ones removed so far."""
        freed = 0
        for inode, count in self.trees.pop(name, Counter()).items():
            self.links_left[inode] -= count
            if self.links_left[inode] <= 0:
                freed += self.size[inode]
        return freed


def _real_directory(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


# ---------------------------------------------------------------- deciding


@dataclass(frozen=True)
class Removal:
    name: str
    path: Path
    why: str
    freed: int  # bytes on disk its removal frees (after the removals before it)


@dataclass(frozen=True)
class Spared:
    name: str
    why: str  # what protects it, for a run a limit would have removed


@dataclass(frozen=True)
class GcPlan:
    policy: Policy
    runs: int  # readable runs before
    removals: tuple[Removal, ...]
    spared: tuple[Spared, ...]
    bad: tuple[Listed, ...]
    total: int  # bytes on disk under the output directory before
    budget_missed: bool = False  # max-bytes cannot be met: the rest is protected

    @property
    def freed(self) -> int:
        return sum(r.freed for r in self.removals)

    @property
    def after(self) -> int:
        return self.total - self.freed


@dataclass(frozen=True)
class Inputs:
    """What a decision depends on besides the runs and the policy."""

    live: Live
    kept: Mapping[str, KeepMark]
    latest: str | None
    protect: frozenset[str]
    now: dt.datetime
    remove_bad: bool


def decide(runs: list[Listed], policy: Policy, inputs: Inputs, ledger: Ledger) -> GcPlan:
    """The removals (oldest first) ``policy`` asks for among ``runs`` (newest first)."""
    good = [run for run in runs if run.results is not None]
    bad = tuple(run for run in runs if run.results is None)
    wanted = _wanted_gone(good, policy, inputs.now)
    removals: list[Removal] = []
    spared: list[Spared] = []
    for index in reversed(range(len(good))):
        run = good[index]
        why = wanted.get(run.name)
        if why is None:
            continue
        protection = _protection(run, index, inputs)
        if protection is not None:
            spared.append(Spared(run.name, protection))
        else:
            removals.append(Removal(run.name, run.path, why, ledger.remove(run.name)))
    if inputs.remove_bad:
        for run in reversed(bad):
            if not inputs.live(run.name):
                removals.append(Removal(run.name, run.path, "unreadable (--remove-bad)",
                                        ledger.remove(run.name)))
    missed = _meet_budget(good, policy, inputs, ledger, removals, spared)
    return GcPlan(policy, len(good), tuple(removals), tuple(spared), bad, ledger.total, missed)


def _wanted_gone(good: list[Listed], policy: Policy, now: dt.datetime) -> dict[str, str]:
    """Runs the count and age limits remove, with why."""
    wanted: dict[str, str] = {}
    if policy.keep_runs is not None:
        for run in good[policy.keep_runs:]:
            wanted[run.name] = f"beyond the newest {policy.keep_runs}"
    if policy.keep_days is not None:
        oldest = now - dt.timedelta(days=policy.keep_days)
        for run in good:
            if run.when < oldest:
                wanted.setdefault(run.name, f"older than {policy.keep_days:g} days")
    return wanted


def _meet_budget(good: list[Listed], policy: Policy, inputs: Inputs, ledger: Ledger,
                 removals: list[Removal], spared: list[Spared]) -> bool:
    """Oldest first, the runs left go until max-bytes holds; whether it still does not."""
    if policy.max_bytes is None:
        return False
    gone = {r.name for r in removals} | {s.name for s in spared}
    held = ledger.total - sum(r.freed for r in removals)
    for index in reversed(range(len(good))):
        if held <= policy.max_bytes:
            break
        run = good[index]
        if run.name in gone:
            continue
        protection = _protection(run, index, inputs)
        if protection is not None:
            spared.append(Spared(run.name, protection))
            continue
        removal = Removal(run.name, run.path, f"over max-bytes {format_size(policy.max_bytes)}",
                          ledger.remove(run.name))
        removals.append(removal)
        held -= removal.freed
    return held > policy.max_bytes


def _protection(run: Listed, index: int, inputs: Inputs) -> str | None:
    """Why ``run`` (``index`` in newest-first order) is never removed, or None."""
    if index == 0:
        return "the newest run"
    if run.name in inputs.protect:
        return "the run that is ending"
    if run.name == inputs.latest:
        return "'latest' points at it"
    if run.name in inputs.kept:
        reason = inputs.kept[run.name].reason
        return "marked with dib-matrix keep" + (f" ({reason})" if reason else "")
    if inputs.live(run.name):
        return "in progress (its lease is live)"
    return None


# ---------------------------------------------------------------- doing


def plan(out: OutDir, policy: Policy, live: Live, *, protect: Iterable[str] = (),
         remove_bad: bool = False, now: dt.datetime | None = None,
         warn: Warn = warn_on_stderr) -> GcPlan:
    """What :func:`collect` would remove now; reads only (a dry run)."""
    latest = out.latest()
    inputs = Inputs(live, marks(out, warn), latest.run_id if latest else None,
                    frozenset(protect), now or dt.datetime.now(dt.timezone.utc), remove_bad)
    return decide(list_runs(out), policy, inputs, Ledger.of(out.path))


def collect(out: OutDir, policy: Policy, live: Live, *, protect: Iterable[str] = (),
            remove_bad: bool = False, now: dt.datetime | None = None,
            warn: Warn = warn_on_stderr) -> GcPlan:
    """Remove what :func:`plan` says, under the archive's lock; the plan of what went."""
    with out.locked():
        for leftover in out.trash_dirs():  # a removal killed half-way
            remove_tree(leftover)
        decided = plan(out, policy, live, protect=protect, remove_bad=remove_bad, now=now,
                       warn=warn)
        done = []
        for removal in decided.removals:
            if live(removal.name):  # a run resumed since the decision
                warn(f"kept {removal.name}: its run went live meanwhile")
                continue
            trash = out.trash(removal.name)
            try:
                os.rename(removal.path, trash)
            except FileNotFoundError:
                continue  # removed meanwhile by hand
            remove_tree(trash)
            done.append(removal)
    return GcPlan(policy, decided.runs, tuple(done), decided.spared, decided.bad,
                  decided.total, decided.budget_missed)


def describe_plan(gc: GcPlan, dry_run: bool) -> list[str]:
    """What gc says: each removal and why, what was spared, unreadable runs, the bytes."""
    verb = "would remove" if dry_run else "removed"
    lines = [f"{verb} {r.name}: {r.why} ({format_size(r.freed)})" for r in gc.removals]
    lines += [f"kept {s.name}: {s.why}" for s in gc.spared]
    lines += [f"unreadable run {printable(run.problem or run.name)}"
              + ("" if any(r.name == run.name for r in gc.removals)
                 else " (removed only with --remove-bad)") for run in gc.bad]
    summary = (f"{verb} {len(gc.removals)} of {gc.runs + len(gc.bad)} runs, "
               f"{'freeing' if dry_run else 'freed'} {format_size(gc.freed)}: the output "
               f"directory {'would hold' if dry_run else 'holds'} {format_size(gc.after)} "
               f"(was {format_size(gc.total)}; {gc.policy.describe()})")
    lines.append(summary)
    if gc.budget_missed:
        lines.append(f"still over max-bytes {format_size(gc.policy.max_bytes or 0)}: what is "
                     "left is protected")
    return lines
