"""Run-scoped leases: what a live run uses is never removed by another run or by clean.

Several runs may share one engine and one cache (a nightly and a reviewer's
``--dib-tree`` run started a minute apart). Each run holds a *lease*: a small
JSON file ``<lease dir>/<run-id>.json`` naming the engine objects it uses —
image tags and ids (its host images, its dib layers) and volume names (its
hosts' image-cache volumes) — and its owner: pid, the pid's start time (from
``/proc``, so a reused pid is not mistaken for the run), the machine's boot id
and host name. The lease dir is ``~/.cache/dib-matrix/leases`` (or
``$DIB_MATRIX_LEASES``).

Rules:

- A run names an object in its lease *before* it looks it up or builds it
  (``RunLease.hold``), and drops the whole lease when it ends, also on Ctrl-C
  and SIGTERM (``RunLease.release``, a context manager).
- Whatever removes shared objects — ``diblayer.prune``, hostgen's
  ``_prune_stale``/``_remove_replaced``, ``dib-matrix clean`` — does so inside
  ``Registry.frozen()``: the registry lock is held (shared) while it reads the
  live leases and removes, and a writer takes it exclusively, so a lease written
  before the remover looked is honoured, and one written after it finds the
  object gone (and bakes it again: ``LayerBaker.ensure``). A skipped object is
  said in the log: ``kept dib-matrix/dib-x:abc: in use by run <id>``.
- A lease is *stale* — ignored, and swept by the next writer — when its owner is
  gone: same machine and boot, no process with that pid and start time; or the
  same machine rebooted since. A ``kill -9``'d run leaves a stale lease.
- A lease from another machine (a lease dir shared over a network filesystem)
  cannot be checked and counts as live until its file is deleted by hand.

Files are written whole to a temporary name and renamed (readers never see
half a lease); updates hold an exclusive ``flock`` on ``<lease dir>/.lock``.
The lock is per machine: runs on two machines against one remote engine only
see each other's leases through a shared lease dir.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import socket
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOG = logging.getLogger("dib-matrix")
LEASE_DIR_ENV = "DIB_MATRIX_LEASES"
LOCK_NAME = ".lock"
SUFFIX = ".json"
FORMAT = 1


class LeaseError(Exception):
    """A lease could not be taken (one line)."""


def default_dir() -> Path:
    configured = os.environ.get(LEASE_DIR_ENV)
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "dib-matrix" / "leases"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot ('' if unknown or gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else ""


@dataclass(frozen=True)
class Owner:
    """The process that holds a lease, precisely enough to tell when it is gone."""

    pid: int
    start: str  # /proc/<pid>/stat starttime; '' where /proc is not there
    boot_id: str
    machine: str

    @classmethod
    def current(cls) -> Owner:
        pid = os.getpid()
        return cls(pid, _start_time(pid), _boot_id(), socket.gethostname())

    def alive(self) -> bool:
        if self.machine != socket.gethostname():
            return True  # cannot be checked from here: never remove what it may use
        if self.boot_id and _boot_id() and self.boot_id != _boot_id():
            return False  # this machine rebooted since
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # another user's live process
        # A different start time: the pid was reused by another process.
        return not self.start or _start_time(self.pid) in ("", self.start)

    def describe(self) -> str:
        return f"pid {self.pid} on {self.machine}"


@dataclass(frozen=True)
class Lease:
    run_id: str
    owner: Owner
    objects: frozenset[str]  # image tags, image ids, volume names

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "run": self.run_id, "owner": vars(self.owner),
                "objects": sorted(self.objects)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Lease:
        owner = data["owner"]
        return cls(str(data["run"]), Owner(int(owner["pid"]), str(owner.get("start", "")),
                                           str(owner.get("boot_id", "")),
                                           str(owner.get("machine", ""))),
                   frozenset(str(name) for name in data.get("objects", ())))


@dataclass(frozen=True)
class InUse:
    """What the live leases name, read under the registry lock: object -> run id."""

    holders: Mapping[str, str] = field(default_factory=dict)

    def holder(self, *names: str | None) -> str | None:
        """The run whose live lease names any of ``names`` (tags, ids), else None."""
        for name in names:
            if name and name in self.holders:
                return self.holders[name]
        return None

    def image_holder(self, image: Any) -> str | None:
        """For a docker SDK image: the run leasing its id or any of its tags."""
        return self.holder(getattr(image, "id", None), *(getattr(image, "tags", None) or ()))


def _file_name(run_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id).lstrip(".") + SUFFIX


class Registry:
    """The lease files of one lease dir (default: ``default_dir()``)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root if root is not None else default_dir()

    def path(self, run_id: str) -> Path:
        return self.root / _file_name(run_id)

    @contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / LOCK_NAME).open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read_all(self) -> list[Lease]:
        leases = []
        if not self.root.is_dir():
            return leases
        for path in sorted(self.root.glob(f"*{SUFFIX}")):
            if path.name.startswith("."):
                continue  # a temporary file being written
            try:
                leases.append(Lease.from_json(json.loads(path.read_text())))
            except (OSError, ValueError, KeyError, TypeError):
                LOG.debug("lease file %s is unreadable: ignored", path)
        return leases

    def _write(self, lease: Lease) -> None:
        fd, temporary = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=".part")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(lease.to_json(), handle, indent=1)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path(lease.run_id))
        except BaseException:
            with suppress(OSError):
                os.unlink(temporary)
            raise

    def _sweep(self, leases: Iterable[Lease]) -> None:
        """Remove the files of dead owners (called with the lock held exclusively)."""
        for lease in leases:
            if not lease.owner.alive():
                with suppress(FileNotFoundError):
                    self.path(lease.run_id).unlink()
                LOG.debug("stale lease of run %s (%s) removed", lease.run_id,
                          lease.owner.describe())

    def hold(self, run_id: str, objects: Iterable[str | None],
             owner: Owner | None = None) -> Lease:
        """Add ``objects`` to ``run_id``'s lease (created if needed); the lease written."""
        owner = owner or Owner.current()
        names = {name for name in objects if name}
        with self._locked(exclusive=True):
            leases = self._read_all()
            self._sweep(lease for lease in leases if lease.run_id != run_id)
            mine = next((lease for lease in leases if lease.run_id == run_id), None)
            if mine is not None and mine.owner != owner:
                if mine.owner.alive():
                    raise LeaseError(f"run {run_id} is live in {mine.owner.describe()}: "
                                     "one run id cannot run twice at once")
                mine = None  # a resumed run takes over its dead predecessor's lease
            if mine is not None and names <= mine.objects:
                return mine
            lease = Lease(run_id, owner, frozenset(names | (mine.objects if mine else set())))
            self._write(lease)
            return lease

    def release(self, run_id: str, owner: Owner | None = None) -> None:
        """Drop ``run_id``'s lease (only if ``owner``, default this process, holds it)."""
        owner = owner or Owner.current()
        with self._locked(exclusive=True):
            path = self.path(run_id)
            try:
                lease = Lease.from_json(json.loads(path.read_text()))
            except FileNotFoundError:
                return
            except (OSError, ValueError, KeyError, TypeError):
                lease = None
            if lease is None or lease.owner == owner or not lease.owner.alive():
                with suppress(FileNotFoundError):
                    path.unlink()

    def leases(self) -> list[Lease]:
        """Every readable lease, stale ones included (for display)."""
        with self._locked(exclusive=False):
            return self._read_all()

    def live_runs(self) -> dict[str, Owner]:
        """Run id -> owner of every live lease."""
        with self._locked(exclusive=False):
            return {lease.run_id: lease.owner for lease in self._read_all()
                    if lease.owner.alive()}

    @contextmanager
    def frozen(self) -> Iterator[InUse]:
        """What live leases name, with the lock held until the block ends: remove inside it."""
        with self._locked(exclusive=False):
            holders: dict[str, str] = {}
            for lease in self._read_all():
                if lease.owner.alive():
                    for name in lease.objects:
                        holders.setdefault(name, lease.run_id)
            yield InUse(holders)


class RunLease:
    """One run's lease: ``hold`` before using an object, ``release`` at the end.

    A context manager; thread-safe (every cell thread may add to it).
    """

    def __init__(self, run_id: str, registry: Registry | None = None) -> None:
        self.run_id = run_id
        self.registry = registry if registry is not None else Registry()
        self.owner = Owner.current()
        self._lock = threading.Lock()
        self._held: set[str] = set()

    def hold(self, *objects: str | None) -> None:
        names = {name for name in objects if name}
        with self._lock:
            if names <= self._held:
                return
            self.registry.hold(self.run_id, names | self._held, self.owner)
            self._held |= names

    @property
    def objects(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._held)

    def release(self) -> None:
        with self._lock:
            try:
                self.registry.release(self.run_id, self.owner)
            except OSError as err:  # never mask how the run ended; the pid check covers it
                if err.errno != errno.ENOENT:
                    LOG.warning("cannot drop the lease of run %s: %s", self.run_id, err)
            self._held.clear()

    def __enter__(self) -> RunLease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def kept_line(name: str, run_id: str) -> str:
    return f"kept {name}: in use by run {run_id}"
