"""Download the .debs debootstrap will want, in parallel, as it starts (best effort).

debootstrap fetches its ~90-150 packages one ``wget`` at a time. Its ``get`` skips a
download when the destination ``$TARGET/var/cache/apt/archives/<pkg>_<ver>_<arch>.deb``
already exists with the checksum the Packages index lists, so files placed there first
are used as they are (debootstrap validates each one itself).

:func:`prefetch` reads the suite's (In)Release and each component's Packages index
(the index checked against the Release's SHA256; the GPG signature is debootstrap's
business: this copy only picks files, and every .deb is checked against the index's
SHA256, and again by debootstrap), works out roughly the set debootstrap resolves
(``work_out_debs`` in debootstrap's ``debian-common`` plus ``resolve_deps``), and
downloads it with a few threads. Every step is bounded (per-request timeout, overall
deadline, size caps). Nothing here raises except KeyboardInterrupt: on any failure it
logs one line and returns, and debootstrap downloads whatever is missing, as it always
did. A package missed costs debootstrap's own download; one too many costs a download.
:func:`alongside` runs it in a thread while debootstrap reads its own index.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import http.client
import logging
import lzma
import os
import socket
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Set, Tuple

LOG = logging.getLogger("dib")

WORKERS = 8
DEADLINE_SECONDS = 120.0
REQUEST_TIMEOUT_SECONDS = 15.0
RELEASE_MAX_BYTES = 8 << 20
INDEX_MAX_BYTES = 64 << 20  # a compressed Packages index
INDEX_MAX_UNPACKED_BYTES = 512 << 20
CHUNK = 64 << 10
ARCHIVES = Path("var/cache/apt/archives")

# Releases before usr-is-merged existed (debian-common's list); later ones exclude usrmerge.
_PRE_USR_IS_MERGED = ("etch", "lenny", "squeeze", "wheezy", "jessie", "stretch", "buster",
                      "bullseye")
APT_TRANSPORT_HTTPS = ("lenny", "squeeze", "wheezy", "jessie", "stretch")


class PrefetchError(Exception):
    """One step of the prefetch failed; the caller logs it and gives up."""


@dataclass(frozen=True)
class Deb:
    """One package stanza of a Packages index, as far as the prefetch needs it."""

    name: str
    version: str
    arch: str
    filename: str
    sha256: str
    size: int
    priority: str = ""
    depends: str = ""
    pre_depends: str = ""
    provides: str = ""

    @property
    def dest_name(self) -> str:
        """debootstrap's ``apt_dest deb``: ``<pkg>_<ver>_<arch>.deb``, first ':' as %3a."""
        return f"{self.name}_{self.version}_{self.arch}.deb".replace(":", "%3a", 1)


@dataclass(frozen=True)
class Summary:
    fetched: int
    wanted: int
    bytes: int
    seconds: float

    def line(self) -> str:
        return (
            f"prefetched {self.fetched} of {self.wanted} debs "
            f"({self.bytes / 1e6:.1f} MB) in {self.seconds:.1f} s"
        )


class Clock:
    """A deadline (``seconds`` from now) that a stop event can also end early."""

    def __init__(self, seconds: float, stop: Optional[threading.Event] = None):
        self.end = time.monotonic() + seconds
        self.stop = stop or threading.Event()

    def left(self) -> float:
        return self.end - time.monotonic()

    def check(self) -> None:
        if self.stop.is_set():
            raise PrefetchError("stopped")
        if self.left() <= 0:
            raise PrefetchError("deadline reached")

    def timeout(self, per_request: float) -> float:
        self.check()
        return max(0.1, min(per_request, self.left()))


def enabled(env: Mapping[str, str], mirror: str) -> bool:
    """Prefetch for http(s) mirrors, online, unless DIB_DEBOOTSTRAP_PREFETCH=0."""
    if env.get("DIB_DEBOOTSTRAP_PREFETCH", "1").strip().lower() in ("0", "no", "false"):
        return False
    if env.get("DIB_OFFLINE", "") not in ("", "0"):
        return False
    return mirror.startswith(("http://", "https://"))


# ---------------------------------------------------------------- fetching


class _HttpStatus(Exception):
    """The mirror answered with something other than the file."""


class Fetcher:
    """GETs within the deadline over one kept-alive connection per thread and mirror:
    one DNS lookup and TCP connect per worker instead of one per file (a lookup that
    stalls costs the resolver's timeout, seconds, each time). When a proxy from the
    environment applies, or the mirror redirects, it is urllib's opener, as is."""

    def __init__(self, clock: Clock):
        self.clock = clock
        self._local = threading.local()
        self._all: List[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._opener = urllib.request.build_opener()  # the environment's proxies, as of now
        self.placed: List[Path] = []

    @contextlib.contextmanager
    def get(self, url: str, per_request: float) -> Iterator[BinaryIO]:
        timeout = self.clock.timeout(per_request)
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or _proxied(parts.scheme, parts.hostname):
            with self._opener.open(url, timeout=timeout) as response:
                yield response
            return
        conns = self._local.__dict__.setdefault("conns", {})
        key = (parts.scheme, parts.netloc)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        for attempt in (1, 2):
            conn = conns.get(key)
            reused = conn is not None
            if conn is None:
                kind = (http.client.HTTPSConnection if parts.scheme == "https"
                        else http.client.HTTPConnection)
                conn = conns[key] = kind(parts.netloc, timeout=timeout)
                with self._lock:
                    self._all.append(conn)
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            try:
                conn.request("GET", path, headers={"User-Agent": "dib-debprefetch"})
                response = conn.getresponse()
                break
            except (http.client.HTTPException, OSError) as err:
                conn.close()
                del conns[key]
                # A kept-alive connection the server dropped: once more on a new one. A
                # timeout is the server being slow, and trying again would double it.
                if not reused or attempt == 2 or isinstance(err, (socket.timeout,
                                                                   TimeoutError)):
                    raise
        if response.status in (301, 302, 303, 307, 308):
            conn.close()
            del conns[key]
            with self._opener.open(url, timeout=timeout) as redirected:
                yield redirected
            return
        try:
            if response.status != 200:
                raise _HttpStatus(f"HTTP {response.status} for {url}")
            yield response
        finally:
            if response.length == 0:  # read to the end (read1 does not say so itself)
                response.close()
            if not response.isclosed():  # not read to the end: the connection is spent
                conn.close()
                conns.pop(key, None)

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()


def _proxied(scheme: str, host: Optional[str]) -> bool:
    proxies = urllib.request.getproxies()
    return bool(proxies.get(scheme)) and not urllib.request.proxy_bypass(host or "")


def read_url(url: str, fetcher: Fetcher, per_request: float, limit: int) -> bytes:
    """The body of ``url``, at most ``limit`` bytes, within the deadline."""
    with fetcher.get(url, per_request) as response:
        parts: List[bytes] = []
        total = 0
        while True:
            fetcher.clock.check()
            chunk = response.read1(CHUNK)  # what has arrived: no waiting for a full chunk
            if not chunk:
                return b"".join(parts)
            total += len(chunk)
            if total > limit:
                raise PrefetchError(f"{url} is larger than {limit} bytes")
            parts.append(chunk)


def parse_release_sha256(text: str) -> Dict[str, Tuple[str, int]]:
    """The ``SHA256:`` section of a Release/InRelease: path -> (sha256, size)."""
    entries: Dict[str, Tuple[str, int]] = {}
    inside = False
    for line in text.splitlines():
        if line.startswith("-----BEGIN PGP SIGNATURE"):
            break
        if not line[:1].isspace():
            inside = line.strip() == "SHA256:"
            continue
        words = line.split()
        if inside and len(words) == 3 and words[1].isdigit():
            entries[words[2]] = (words[0].lower(), int(words[1]))
    return entries


def fetch_index(mirror: str, release: str, component: str, arch: str,
                sums: Mapping[str, Tuple[str, int]], fetcher: Fetcher,
                per_request: float = REQUEST_TIMEOUT_SECONDS) -> bytes:
    """One component's Packages index (xz preferred), checked against the Release."""
    base = f"{component}/binary-{arch}/Packages"
    for suffix in (".xz", ""):
        if base + suffix in sums:
            break
    else:
        raise PrefetchError(f"the Release file lists no {base}.xz or {base}")
    sha, size = sums[base + suffix]
    if size > (INDEX_MAX_BYTES if suffix else INDEX_MAX_UNPACKED_BYTES):
        raise PrefetchError(f"{base}{suffix} is too large ({size} bytes)")
    data = read_url(f"{mirror}/dists/{release}/{base}{suffix}", fetcher, per_request, size)
    if len(data) != size or hashlib.sha256(data).hexdigest() != sha:
        raise PrefetchError(f"{base}{suffix} does not match the Release file's SHA256")
    if suffix == ".xz":
        unpacker = lzma.LZMADecompressor()
        try:
            data = unpacker.decompress(data, max_length=INDEX_MAX_UNPACKED_BYTES)
        except lzma.LZMAError as err:
            raise PrefetchError(f"{base}.xz: {err}") from None
        if not unpacker.eof:
            raise PrefetchError(f"{base}.xz unpacks to more than {INDEX_MAX_UNPACKED_BYTES} bytes")
    return data


# ---------------------------------------------------------------- resolving

_FIELDS = {
    "package": "name", "version": "version", "architecture": "arch",
    "filename": "filename", "sha256": "sha256", "size": "size", "priority": "priority",
    "depends": "depends", "pre-depends": "pre_depends", "provides": "provides",
}


def parse_stanza(stanza: str) -> Optional[Deb]:
    """One Packages stanza, or None when it lacks what a download needs."""
    fields: Dict[str, str] = {}
    for line in stanza.split("\n"):
        key, sep, value = line.partition(":")
        if sep and not key[:1].isspace():
            attr = _FIELDS.get(key.lower())
            if attr:
                fields[attr] = value.strip()
    try:
        return Deb(**{**fields, "size": int(fields.get("size", ""))})  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


class PackageIndex:
    """Packages indices, read lazily: a full parse of ~60,000 stanzas costs seconds of
    CPU, and debootstrap needs ~150 of them. The first stanza of a name wins."""

    def __init__(self) -> None:
        self._raw: Dict[str, bytes] = {}
        self._debs: Dict[str, Optional[Deb]] = {}
        self._providers: Optional[Dict[str, List[str]]] = None
        self.priorities: Dict[str, Set[str]] = {"required": set(), "important": set()}

    def add(self, text: bytes) -> None:
        for stanza in text.split(b"\n\n"):
            stanza = stanza.lstrip(b"\n")
            if not stanza.startswith(b"Package:"):
                continue
            name = stanza[8:stanza.find(b"\n")].strip().decode("utf-8", "replace")
            if name in self._raw:
                continue
            self._raw[name] = stanza
            for priority, names in self.priorities.items():
                if b"\nPriority: " + priority.encode() in stanza:
                    names.add(name)

    def __contains__(self, name: object) -> bool:
        return self.get(name) is not None  # type: ignore[arg-type]

    def names(self) -> List[str]:
        """Every package name, in the order of the indices."""
        return list(self._raw)

    def stanza(self, name: str) -> Optional[bytes]:
        """The index's own text of ``name``'s (first) stanza, without the blank line."""
        raw = self._raw.get(name)
        return raw.rstrip(b"\n") if raw is not None else None

    def __len__(self) -> int:
        return len(self._raw)

    def get(self, name: str) -> Optional[Deb]:
        if name not in self._debs:
            raw = self._raw.get(name)
            self._debs[name] = parse_stanza(raw.decode("utf-8", "replace")) if raw else None
        return self._debs[name]

    def providers(self, virtual: str) -> List[str]:
        if self._providers is None:
            self._providers = {}
            for name, raw in self._raw.items():
                if b"\nProvides:" in raw:
                    deb = self.get(name)
                    for provided in dependency_names(deb.provides if deb else ""):
                        self._providers.setdefault(provided, []).append(name)
        return self._providers.get(virtual, [])


def parse_packages(text: bytes) -> PackageIndex:
    index = PackageIndex()
    index.add(text)
    return index


def dependency_names(field: str) -> List[str]:
    """debootstrap's GETDEPS reading of Depends/Pre-Depends: each first alternative,
    without version constraint or ``:arch`` qualifier."""
    names = []
    for item in field.split(","):
        first = item.split("|", 1)[0].split("(", 1)[0].strip()
        first = first.split(":", 1)[0]
        if first:
            names.append(first)
    return names


def initial_names(index: PackageIndex, release: str, variant: str, include: Iterable[str],
                  https: bool) -> Tuple[Set[str], Set[str]]:
    """(packages debootstrap starts from, dependencies it never follows): its
    ``work_out_debs`` for Debian suites, plus --include."""
    names = set(index.priorities["required"])
    if variant == "buildd":
        names |= {"apt", "build-essential"}
    elif variant == "minbase":
        names.add("apt")
    else:  # debootstrap's default variant, and fakechroot (which adds binutils)
        names |= index.priorities["important"]
        if variant == "fakechroot":
            names.add("binutils")
    if https:
        names.add("ca-certificates")
        if release in APT_TRANSPORT_HTTPS:
            names.add("apt-transport-https")
    excluded: Set[str] = set()
    if release not in _PRE_USR_IS_MERGED and not release.startswith(("etch", "jessie")):
        excluded.add("usrmerge")
        if release == "bookworm":
            names.add("usr-is-merged")
    names |= set(include)
    return names, excluded


def resolve(index: PackageIndex, names: Iterable[str],
            excluded: Iterable[str] = ()) -> List[Deb]:
    """The Depends/Pre-Depends closure of ``names``, as debootstrap's resolve_deps takes it.

    A dependency that is no real package is taken through Provides when exactly one
    real package provides it (debootstrap itself drops such names; apt would then pick
    the provider). Names that are nowhere are left out.
    """
    skip = set(excluded)
    seen: Dict[str, Deb] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        deb = index.get(name)
        if name in seen or deb is None:
            continue
        seen[name] = deb
        for dep in dependency_names(deb.depends) + dependency_names(deb.pre_depends):
            if dep in skip or dep in seen:
                continue
            if dep not in index:
                found = index.providers(dep)
                if len(found) != 1:
                    continue
                dep = found[0]
            todo.append(dep)
    return [seen[n] for n in sorted(seen)]


# ---------------------------------------------------------------- downloading


def _download(mirror: str, deb: Deb, archives: Path, fetcher: Fetcher,
              per_request: float) -> int:
    """Place one .deb under ``archives``; the bytes downloaded (0 if already there)."""
    dest = archives / deb.dest_name
    if dest.exists():
        return 0
    part = archives / f".{deb.dest_name}.dib-prefetch"
    digest = hashlib.sha256()
    size = 0
    try:
        with fetcher.get(f"{mirror}/{deb.filename}", per_request) as response, \
                open(part, "wb") as out:
            while True:
                fetcher.clock.check()
                chunk = response.read1(CHUNK)  # what has arrived: no waiting for a full chunk
                if not chunk:
                    break
                size += len(chunk)
                if size > deb.size:
                    break
                digest.update(chunk)
                out.write(chunk)
        if size != deb.size or digest.hexdigest() != deb.sha256.lower():
            raise PrefetchError(f"{deb.dest_name} does not match the index's SHA256")
        fetcher.clock.check()  # none placed once stopped
        os.replace(part, dest)
        fetcher.placed.append(dest)
        return size
    finally:
        part.unlink(missing_ok=True)


def download_all(mirror: str, debs: Sequence[Deb], root: Path, fetcher: Fetcher,
                 workers: int = WORKERS,
                 per_request: float = REQUEST_TIMEOUT_SECONDS) -> Tuple[int, int, List[str]]:
    """Download ``debs`` in parallel: (how many placed, bytes, one line per failure)."""
    archives = root / ARCHIVES
    archives.mkdir(parents=True, exist_ok=True)
    placed = total = 0
    problems: List[str] = []
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers,
                                                 thread_name_prefix="debprefetch")
    try:
        futures = {pool.submit(_download, mirror, d, archives, fetcher, per_request): d
                   for d in debs}
        try:
            for future in concurrent.futures.as_completed(futures,
                                                          timeout=max(0.0, fetcher.clock.left())):
                try:
                    total += future.result()
                    placed += 1
                except Exception as err:  # noqa: BLE001 (best effort: debootstrap retries)
                    problems.append(f"{futures[future].name}: {err}")
        except concurrent.futures.TimeoutError:
            problems.append("deadline reached")
    finally:
        # Workers notice within one read (<= per_request); none may still write once
        # this returns, so wait for them.
        fetcher.clock.stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
    return placed, total, problems


# ---------------------------------------------------------------- entry point


def prefetch(mirror: str, release: str, arch: str, components: Sequence[str], variant: str,
             include: Sequence[str], root: Path, deadline: float = DEADLINE_SECONDS,
             per_request: float = REQUEST_TIMEOUT_SECONDS, workers: int = WORKERS,
             stop: Optional[threading.Event] = None,
             placed: Optional[List[Path]] = None) -> Optional[Summary]:
    """Put the .debs debootstrap will want under ``root``; never raises (but ^C).

    ``stop`` ends it early (within one read); ``placed`` collects the paths it placed.
    Returns the summary (also logged), or None when it gave up before downloading.
    """
    started = time.monotonic()
    fetcher = Fetcher(Clock(deadline, stop))
    if placed is not None:
        fetcher.placed = placed
    mirror = mirror.rstrip("/")
    try:
        sums = _release_sums(mirror, release, fetcher, per_request)
        index = PackageIndex()
        for component in components:
            index.add(fetch_index(mirror, release, component, arch, sums, fetcher, per_request))
        names, excluded = initial_names(index, release, variant, include,
                                        mirror.startswith("https://"))
        wanted = resolve(index, names, excluded)
        placed, size, problems = download_all(mirror, wanted, root, fetcher, workers,
                                              per_request)
    except KeyboardInterrupt:
        raise
    except Exception as err:  # noqa: BLE001 (best effort: debootstrap downloads it all)
        LOG.info("deb prefetch skipped: %s", err)
        return None
    finally:
        fetcher.close()
    if problems:
        LOG.info("deb prefetch: %d not prefetched (%s%s)", len(problems), problems[0],
                 ", ..." if len(problems) > 1 else "")
    summary = Summary(placed, len(wanted), size, time.monotonic() - started)
    LOG.info("%s", summary.line())
    return summary


@contextlib.contextmanager
def alongside(env: Mapping[str, str], mirror: str, release: str, arch: str,
              components: Sequence[str], variant: str, include: Sequence[str],
              root: Path) -> Iterator[None]:
    """Prefetch in a thread while the body (debootstrap) runs, when :func:`enabled`.

    debootstrap spends its first ~15 s on its own index and dependency resolution,
    so the debs are usually in place before it looks for them; one it reaches first it
    downloads itself (a prefetched file lands by an atomic rename, with the same bytes,
    so either copy is the right one). On leaving, the thread is stopped and waited for
    (one read at most), and the debs it placed that are still there are removed: after
    debootstrap only its own cleanup decides what stays in the base.
    """
    if not enabled(env, mirror):
        yield
        return
    stop = threading.Event()
    placed: List[Path] = []
    thread = threading.Thread(
        target=prefetch, name="debprefetch", daemon=True,
        args=(mirror, release, arch, components, variant, include, root),
        kwargs={"stop": stop, "placed": placed},
    )
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(REQUEST_TIMEOUT_SECONDS + 5)
        for path in list(placed):
            path.unlink(missing_ok=True)


def _release_sums(mirror: str, release: str, fetcher: Fetcher,
                  per_request: float) -> Dict[str, Tuple[str, int]]:
    last: Optional[Exception] = None
    for name in ("InRelease", "Release"):
        try:
            text = read_url(f"{mirror}/dists/{release}/{name}", fetcher, per_request,
                             RELEASE_MAX_BYTES).decode("utf-8", errors="replace")
        except PrefetchError:
            raise
        except Exception as err:  # noqa: BLE001 (then the other name)
            last = err
            continue
        sums = parse_release_sha256(text)
        if sums:
            return sums
        last = PrefetchError(f"{name} lists no SHA256 checksums")
    raise PrefetchError(f"no usable Release file for {release}: {last}")
