"""The run's repository view: what every cell reads the mirror through, and its books.

Cells get ``http_proxy=http://<token>:x@127.0.0.1:<port>`` (:meth:`RepositoryView.client_env`);
apt, wget and urllib send the token as ``Proxy-Authorization``, so the view knows which
cell read what. Being a proxy, not a mirror URL, keeps every URL a cell sees unchanged.

Live mode pins each (archive, suite) once per run, at :meth:`RepositoryView.prefetch`
or at its first request, and serves those release files for the whole run; an index
is served only when the pinned Release lists it; a pool file is teed into the store
(:mod:`matrix.snapshot.upstream` does the fetching). So no cell of a run sees another
index than the others. Pinned mode serves a saved :class:`Snapshot` from the store and
fetches nothing: what it lacks is ``404 Not in snapshot``.

The view keeps the books: what each client read (:meth:`RepositoryView.usage`), the
run's repository state (:meth:`RepositoryView.state`, :meth:`RepositoryView.snapshot`).
Reading requests and writing answers over HTTP is :mod:`matrix.snapshot.server`'s.
"""

from __future__ import annotations

import contextlib
import copy
import email.utils
import secrets
import threading
import urllib.parse
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Optional

from matrix.hostgen.pkgcache import NO_PROXY
from matrix.snapshot.manifest import ArchiveState, FileRef, Snapshot, StoreError, SuiteState
from matrix.snapshot.server import ProxyServer, proxy_token
from matrix.snapshot.store import Blob, Store
from matrix.snapshot.upstream import (
    CHUNK,
    TOP_FILES,
    UPSTREAM_TIMEOUT,
    Answer,
    PinnedRelease,
    Reply,
    Target,
    Upstream,
    bad_request,
    fetch_index,
    forward,
    named_index,
    normalize_archive,
    not_found,
    pin_suite,
    printable,
    stream_pool,
)

LOG_LINE_MAX = 600
MISSES_KEPT = 200  # per client: enough to name what a snapshot lacks
PREFETCH_WORKERS = 8
POLL_SECONDS = 0.1  # how soon stop() is noticed
STOP_GRACE = 10.0  # seconds stop() waits for answers under way (a store write, a cut)
STRIPES = 32  # locks for index fetches, by hash: one fetch of an index at a time
NOT_IN_SNAPSHOT = "Not in snapshot"
NOT_IN_RELEASE = "Not in release"
STATS = ("requests", "bytes_served", "bytes_from_upstream", "misses", "errors")


class ViewError(Exception):
    """The view could not start (one line)."""


@dataclass
class ClientUsage:
    """What one client (a cell) read through the view."""

    # archive uri -> suite -> {index path relative to the archive: sha256}
    suites: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)
    pool_files: int = 0
    misses: list[str] = field(default_factory=list)  # urls answered "Not in snapshot"


class RequestLog:
    """One bounded line per request (and per event) in a file; never to a terminal."""

    def __init__(self, path: Optional[Path]) -> None:
        self._lock = threading.Lock()
        self._file: Optional[IO[str]] = None
        if path is not None:
            try:
                self._file = path.open("a", encoding="utf-8", errors="replace")
            except OSError as err:
                raise ViewError(f"cannot write the view log {path}: {err.strerror}") from None

    def write(self, *fields: object) -> None:
        line = printable(" ".join(str(f) for f in fields), LOG_LINE_MAX)
        stamp = datetime.now(timezone.utc).strftime("%H:%M:%S.%f")[:-3]
        with self._lock, contextlib.suppress(OSError, ValueError):  # a full disk: no line
            if self._file is not None:
                self._file.write(f"{stamp} {line}\n")
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def http_date(release_date: Optional[str]) -> Optional[str]:
    """A Release ``Date:`` as an HTTP date (for Last-Modified); None if it is none."""
    try:
        when = email.utils.parsedate_to_datetime(release_date or "")
    except (TypeError, ValueError, IndexError, AttributeError):
        return None
    when = when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)
    return email.utils.format_datetime(when.astimezone(timezone.utc), usegmt=True)


def _suite_name(suite: str) -> str:
    if not suite or "/" in suite or suite in (".", "..") or not suite.isprintable() \
            or " " in suite or len(suite) > 128:
        raise ValueError(f"{printable(suite, 100)!r} is not a suite name")
    return suite


class RepositoryView:
    """The run's repository view; use as a context manager so it is always stopped."""

    def __init__(self, store: Store, upstream: Optional[Upstream],
                 snapshot: Optional[Snapshot], log: RequestLog) -> None:
        self.store = store
        self._upstream = upstream
        self._snapshot = snapshot
        self._log = log
        self._lock = threading.Lock()  # guards every dictionary below
        self._pins: dict[tuple[str, str], PinnedRelease] = {}
        self._pin_locks: dict[tuple[str, str], threading.Lock] = {}
        self._fetch_locks = [threading.Lock() for _ in range(STRIPES)]
        self._served: dict[str, dict[str, FileRef]] = {}  # archive -> path -> file
        self._read: dict[tuple[str, str], dict[str, str]] = {}  # (archive, suite) -> indices
        self._touched: set[tuple[str, str]] = set()
        self._clients: dict[str, ClientUsage] = {}
        self._tokens: dict[str, str] = {}  # label -> token
        self._labels: dict[str, str] = {}  # token -> label
        self._counts: Counter[str] = Counter()
        self._by_prefix: dict[str, ArchiveState] = {}  # the first by URI where hosts differ
        for uri, saved in sorted(snapshot.archives.items() if snapshot is not None else ()):
            self._by_prefix.setdefault(urllib.parse.urlsplit(uri).path.rstrip("/"), saved)
        self._server: Optional[ProxyServer] = None
        self._thread: Optional[threading.Thread] = None
        self.port = 0
        self.url = ""

    @classmethod
    def start(cls, store: Store, *, upstream_proxy: Optional[str] = None,
              snapshot: Optional[Snapshot] = None, log_path: Optional[Path] = None,
              bind: str = "127.0.0.1", upstream_timeout: float = UPSTREAM_TIMEOUT
              ) -> RepositoryView:
        """Serve on ``bind`` at a free port: pinned to ``snapshot`` when given (no
        upstream at all), else live through ``upstream_proxy`` (or direct)."""
        upstream = None if snapshot is not None else Upstream(upstream_proxy, upstream_timeout)
        view = cls(store, upstream, snapshot, RequestLog(log_path))
        try:
            server = ProxyServer(bind, view)
        except OSError as err:
            view._log.close()
            raise ViewError(f"repository view cannot listen on {bind}: {err.strerror}") from None
        view._server, view.port = server, server.server_address[1]
        view.url = f"http://{f'[{bind}]' if ':' in bind else bind}:{view.port}"
        view._thread = threading.Thread(target=server.serve_forever, args=(POLL_SECONDS,),
                                        name="repository-view", daemon=True)
        view._thread.start()
        view.log("view", "started", view.url, "pinned" if snapshot else "live")
        return view

    @property
    def pinned(self) -> bool:
        return self._snapshot is not None

    def stop(self) -> None:
        """Stop serving, cut open connections, join the server thread; idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join()
        late = server.end_connections(STOP_GRACE)
        if late:
            self.log("view", f"{late} handlers still running {STOP_GRACE:.0f} s after stop")
        self.log("view", "stopped", self.stats())
        self._log.close()

    def __enter__(self) -> RepositoryView:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------ clients and books

    def client_env(self, label: str) -> dict[str, str]:
        """The proxy variables for one client: its token names it in the view's books."""
        with self._lock:
            token = self._tokens.get(label)
            while token is None or self._labels.get(token, label) != label:
                token = secrets.token_hex(5)
            self._tokens[label], self._labels[token] = token, label
        return {"http_proxy": f"http://{token}:x@{self.url.removeprefix('http://')}",
                "no_proxy": NO_PROXY}

    def label_of(self, authorization: Optional[str]) -> str:
        """The label a ``Proxy-Authorization`` value names ('' for none or unknown)."""
        if authorization is None:
            return ""
        token = proxy_token(authorization)
        with self._lock:
            return self._labels.get(token, "")

    def usage(self, label: str) -> ClientUsage:
        with self._lock:
            return copy.deepcopy(self._clients.get(label, ClientUsage()))

    def stats(self) -> dict[str, int]:
        with self._lock:
            counts = {name: self._counts[name] for name in STATS}
        counts["bytes_from_upstream"] = self._upstream.bytes_read if self._upstream else 0
        return counts

    def count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] += amount

    def log(self, *fields: object) -> None:
        self._log.write(*fields)

    def _record(self, label: str, archive: str, suite: str = "",
                files: Iterable[tuple[str, FileRef]] = (), index: Optional[str] = None,
                pool: bool = False) -> None:
        """Note what ``label`` was served: files of ``archive``, the index it read."""
        with self._lock:
            served = self._served.setdefault(archive, {})
            for path, ref in files:
                served.setdefault(path, ref)  # the first wins: a path never changes in a run
            client = self._clients.setdefault(label, ClientUsage())
            if suite:
                self._touched.add((archive, suite))
                read = client.suites.setdefault(archive, {}).setdefault(suite, {})
                if index is not None:
                    read[index] = served[index].sha256
                    self._read.setdefault((archive, suite), {})[index] = served[index].sha256
            client.pool_files += pool

    def _miss(self, label: str, url: str, why: str = "") -> Answer:
        with self._lock:
            self._counts["misses"] += 1
            misses = self._clients.setdefault(label, ClientUsage()).misses
            if len(misses) < MISSES_KEPT:
                misses.append(url)
        if why:
            self.log("miss", url, why)
        return Answer(404, NOT_IN_SNAPSHOT, f"{url}: not in the snapshot this run replays")

    def state(self) -> dict[str, ArchiveState]:
        """Every archive and suite pinned (live) or served (pinned) so far, with every
        dists/ and pool file the run served."""
        with self._lock:
            archives: dict[str, ArchiveState] = {}
            for archive, suite in sorted(self._pins if self._snapshot is None else self._touched):
                state = archives.setdefault(archive, ArchiveState(archive))
                state.suites[suite], tops = self._suite_state(archive, suite)
                state.files.update(tops)
            for archive, served in self._served.items():
                archives.setdefault(archive, ArchiveState(archive)).files.update(
                    copy.deepcopy(served))
            for state in archives.values():
                state.files = dict(sorted(state.files.items()))
            return dict(sorted(archives.items()))

    def _suite_state(self, archive: str, suite: str) -> tuple[SuiteState, dict[str, FileRef]]:
        indices = dict(sorted(self._read.get((archive, suite), {}).items()))
        if self._snapshot is not None:
            saved = self._snapshot.archives[archive]
            state = copy.deepcopy(saved.suites[suite])
            state.indices = indices
            tops = [f"dists/{suite}/{name}" for name in TOP_FILES]
            return state, {path: copy.copy(saved.files[path]) for path in tops
                           if path in saved.files}
        pinned = self._pins[(archive, suite)]
        release, sha = pinned.release, {name: ref.sha256 for name, ref in pinned.files.items()}
        state = SuiteState(
            suite=suite, components=list(release.components),
            architectures=list(release.architectures), inrelease=sha.get("InRelease"),
            release=sha.get("Release"), release_gpg=sha.get("Release.gpg"),
            date=release.date, valid_until=release.valid_until, indices=indices)
        return state, {f"dists/{suite}/{name}": copy.copy(ref)
                       for name, ref in pinned.files.items()}

    def snapshot(self, name: str, run_id: Optional[str], origin: str) -> Snapshot:
        """This run's repository state as a snapshot (every blob it names is in the store)."""
        created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+00:00")
        return Snapshot(name=name, created=created, run_id=run_id, archives=self.state(),
                        origin=origin)

    # ------------------------------------------------------------ pinning

    def prefetch(self, pairs: Iterable[tuple[str, str]], timeout: float = 30.0
                 ) -> dict[tuple[str, str], str]:
        """Pin each (archive uri, suite) now, in parallel: errors by pair (as given),
        never raised. Pinned mode: which pairs the snapshot lacks."""
        errors: dict[tuple[str, str], str] = {}
        wanted: dict[tuple[str, str], tuple[str, str]] = {}
        for pair in pairs:
            try:
                wanted[pair] = (normalize_archive(pair[0]), _suite_name(pair[1]))
            except ValueError as err:
                errors[pair] = str(err)
        if self._snapshot is not None:
            lacking = {pair: self._snapshot_lacks(*key) for pair, key in wanted.items()}
            return {**errors, **{pair: why for pair, why in lacking.items() if why}}
        pool = ThreadPoolExecutor(max_workers=PREFETCH_WORKERS, thread_name_prefix="pin")
        futures: dict[Future[PinnedRelease], tuple[str, str]] = {
            pool.submit(self._pin, *key): pair for pair, key in wanted.items()}
        done, pending = wait(futures, timeout)
        pool.shutdown(wait=False, cancel_futures=True)
        for future in done:
            err = future.exception()
            if err is not None:
                errors[futures[future]] = printable(
                    err if isinstance(err, Answer) else f"{type(err).__name__}: {err}", 300)
        for future in pending:
            errors[futures[future]] = f"not pinned within {timeout:.0f} s"
        return errors

    def _snapshot_lacks(self, archive: str, suite: str) -> str:
        state = self._snapshot_archive(archive, urllib.parse.urlsplit(archive).path)
        if state is None:
            return f"the snapshot has no archive {archive}"
        saved = state.suites.get(suite)
        if saved is None:
            return f"the snapshot has no suite {suite} of {state.uri}"
        release = saved.inrelease or saved.release
        if release is None or not self.store.has(release):
            return f"the snapshot's Release of {state.uri} {suite} is not in the store"
        return ""

    def _pin(self, archive: str, suite: str) -> PinnedRelease:
        """The suite's release as pinned for this run: read once, under a per-pair lock."""
        pair = (archive, suite)
        with self._lock:
            pinned = self._pins.get(pair)
            lock = self._pin_locks.setdefault(pair, threading.Lock())
        if pinned is not None:
            return pinned
        assert self._upstream is not None
        with lock:
            with self._lock:
                pinned = self._pins.get(pair)
            if pinned is not None:
                return pinned
            try:
                fresh = pin_suite(self._upstream, self.store, archive, suite)
            except BaseException:
                with self._lock:  # nothing pinned: the next request tries again
                    self._pin_locks.pop(pair, None)  # and made-up suites leave no lock behind
                raise
            with self._lock:
                pinned = self._pins.setdefault(pair, fresh)  # the first pin wins, always
        if pinned is fresh:
            for note in pinned.notes:
                self.log("pin", note)
            self.log("pin", archive, suite, pinned.release.date,
                     *(f"{name}={ref.sha256[:12]}" for name, ref in pinned.files.items()))
        return pinned

    # ------------------------------------------------------------ serving

    def serve(self, target: Target, label: str, reply: Reply) -> str:
        """Answer one request through ``reply``; where it came from (store, upstream,
        pinned). A failure before anything was sent is raised as an :class:`Answer`."""
        if self._snapshot is not None:
            return self._serve_pinned(target, label, reply)
        assert self._upstream is not None
        if not target.origin:
            raise bad_request("origin-form request to a proxy: send the full http:// URL")
        if not target.path:
            forward(self._upstream, target.url, target.origin, reply)
            return "upstream"
        if target.suite:
            return self._serve_dists(target, label, reply)
        return self._serve_pool(target, label, reply)

    def _serve_dists(self, target: Target, label: str, reply: Reply) -> str:
        archive, suite = target.archive, target.suite
        pinned = self._pin(archive, suite)
        last_modified = http_date(pinned.release.date)
        if target.rest in TOP_FILES:
            ref = pinned.files.get(target.rest)
            if ref is None:
                raise not_found(target.url)
            self._record(label, archive, suite, [(target.path, ref)])
            self._send_blob(reply, ref, last_modified)
            return "store"
        listed = pinned.release.sha256
        named = named_index(((path, sha) for path, (sha, _) in listed.items()), target.rest)
        if named is None:
            raise Answer(404, NOT_IN_RELEASE, f"{target.url}: not in the pinned Release")
        sha256, size = listed[named]
        source = "store"
        with self._fetch_locks[int(sha256[:4], 16) % STRIPES]:
            if not self.store.has(sha256):
                assert self._upstream is not None
                fetch_index(self._upstream, self.store, archive, suite, named, pinned)
                source = "upstream"
        ref, index = FileRef(sha256, size), f"dists/{suite}/{named}"
        self._record(label, archive, suite, [(index, ref), (target.path, ref)], index=index)
        self._send_blob(reply, ref, last_modified)
        return source

    def _serve_pool(self, target: Target, label: str, reply: Reply) -> str:
        """From the store when the run has the file already, else teed from upstream."""
        assert self._upstream is not None
        with self._lock:
            known = self._served.get(target.archive, {}).get(target.path)
        if known is not None and self._blob_fits(known):
            self._record(label, target.archive, pool=True)
            self._send_blob(reply, known, None)
            return "store"
        kept: list[FileRef] = []

        def book(blob: Blob) -> None:
            kept.append(FileRef(blob.sha256, blob.size))
            self._record(label, target.archive, files=[(target.path, kept[0])], pool=True)

        stream_pool(self._upstream, self.store, target.archive, target.path, reply, book)
        if kept and not reply.started:  # the mirror gave no length: kept first, served now
            self._send_blob(reply, kept[0], None)
        return "upstream"

    def _snapshot_archive(self, archive: str, prefix: str) -> Optional[ArchiveState]:
        assert self._snapshot is not None
        exact = self._snapshot.archives.get(archive)
        return exact if exact is not None else self._by_prefix.get(prefix.rstrip("/"))

    def _serve_pinned(self, target: Target, label: str, reply: Reply) -> str:
        """From the snapshot only: anything it lacks is 404 Not in snapshot."""
        state = self._snapshot_archive(target.archive, target.prefix) if target.path else None
        if state is None:
            raise self._miss(label, target.url)
        files, path = state.files, target.path
        if target.suite:  # a by-hash request stands for its named index
            listed = ((p, ref.sha256) for p, ref in files.items()
                      if p.startswith(f"dists/{target.suite}/"))
            path = named_index(listed, target.path) or path
        ref = files.get(path)
        if ref is None:
            raise self._miss(label, target.url)
        if not self._blob_fits(ref):
            raise self._miss(label, target.url, f"blob {ref.sha256} is missing or damaged")
        last_modified = None
        if target.suite in state.suites:
            index = path if target.rest not in TOP_FILES else None
            self._record(label, state.uri, target.suite, [(path, ref), (target.path, ref)],
                         index=index)
            last_modified = http_date(state.suites[target.suite].date)
        else:
            self._record(label, state.uri, files=[(path, ref)], pool=not target.suite)
        self._send_blob(reply, ref, last_modified)
        return "pinned"

    def _blob_fits(self, ref: FileRef) -> bool:
        """The blob is in the store with the size the books say (a cheap check)."""
        try:
            return self.store.blob_path(ref.sha256).stat().st_size == ref.size
        except (OSError, ValueError):
            return False

    def _send_blob(self, reply: Reply, ref: FileRef, last_modified: Optional[str]) -> None:
        try:
            blob = self.store.open_blob(ref.sha256)
        except StoreError:
            raise Answer(500, "Internal Server Error",
                         f"blob {ref.sha256} vanished from the store") from None
        headers = {"Content-Type": "application/octet-stream"}
        if last_modified:
            headers["Last-Modified"] = last_modified
        with blob:
            reply.begin(200, "OK", ref.size, headers)
            left = 0 if reply.head else ref.size
            while left > 0:
                chunk = blob.read(min(CHUNK, left))
                if not chunk:  # shorter than the books say: cut, the client must not wait
                    raise StoreError(f"blob {ref.sha256} is shorter than {ref.size} bytes")
                reply.write(chunk)
                left -= len(chunk)

