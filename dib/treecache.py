"""The installed-tree cache: a warm build starts after post-install.d.

After the package-installing phases (root.d to post-install.d) a build scrubs the tree
of per-machine identity (:mod:`dib.treescrub`) and stores it as
``<image-cache>/tree/<key>.tar`` beside ``<key>.json``; a later build with the same key
(:mod:`dib.treekey`) restores it and runs only post-root.d onwards. The tree also
depends on the mirror: the record lists every apt InRelease (or Release) the tree was
installed from, with its sha256, and a lookup fetches each again, through the build's
proxy, and uses the tree only if all are the same. (A run pinned to a snapshot serves the
snapshot's bytes; a live run the mirror's of tonight.) With ``--offline`` the tree is used
without that check, as the cached base is.

``DIB_TREE_CACHE=0`` turns the cache off, ``refresh`` rebuilds and replaces the entry; an
element holding a ``no-tree-cache`` file (its text: why) keeps its builds out of it. The
cache keeps at most ``DIB_TREE_CACHE_MAX`` bytes (default 8G), the least recently used
trees going first.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, List, Mapping, Optional, Sequence, Tuple

from dib import cachebudget, chroot, environment, tarball, treekey, treescrub
from dib.elements import Element
from dib.errors import DibError
from dib.outputs import sha256_file
from dib.run import Stopwatch, capture
from dib.treekey import CACHED_PHASES

LOG = logging.getLogger("dib")
SWITCH = "DIB_TREE_CACHE"
BUDGET = "DIB_TREE_CACHE_MAX"
DEFAULT_BUDGET = 8 << 30
UNCACHEABLE = "no-tree-cache"
DIRECTORY = "tree"
RECORD_LIMIT = 1 << 20
RELEASE_LIMIT = 32 << 20  # bytes read of a fetched InRelease
FETCH_TIMEOUT = 20.0
LISTS = "var/lib/apt/lists"
PRINTED_URI = re.compile(r"^'([^']+)' (\S+) ")
# apt's downloaded packages: fetched again if a later phase wants them (the dpkg element's
# cleanup removes them from the image anyway).
NOT_STORED = ("./var/cache/apt/archives/*.deb",)


class TreeCacheError(DibError):
    """A setting of the tree cache is wrong."""


@dataclass(frozen=True)
class Pin:
    """One repository file the tree was installed from; ``sha256`` empty: it was absent."""

    url: str
    sha256: str


@dataclass(frozen=True)
class Record:
    key: str
    created: float
    elements: Tuple[str, ...]
    pins: Tuple[Pin, ...]
    scrubbed: Tuple[str, ...] = ()
    phases: Tuple[str, ...] = field(default=tuple(p.dirname for p in CACHED_PHASES))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Record:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        pins = tuple(Pin(str(p["url"]), str(p["sha256"])) for p in data["pins"])
        return cls(str(data["key"]), float(data["created"]),
                   tuple(str(e) for e in data["elements"]), pins,
                   tuple(str(s) for s in data.get("scrubbed", ())),
                   tuple(str(p) for p in data.get("phases", ())))


Fetcher = Callable[[str], Optional[bytes]]  # the file's bytes, None when it is absent


def parse_budget(text: str) -> int:
    """``8G``, ``500M``, ``1048576``: bytes."""
    size = cachebudget.parse_size(text)
    if size is None:
        raise TreeCacheError(f"{BUDGET}={text!r}: not a size (e.g. 8G, 500M)")
    return size


def off_reason(env: Mapping[str, str], elements: Sequence[Element],
               breaks: Sequence[str]) -> str:
    """Why this build does not use the tree cache; empty when it does."""
    if env.get(SWITCH, "1").strip().lower() in ("0", "off", "no", "false"):
        return f"{SWITCH}={env[SWITCH]}"
    for element in elements:
        mark = element.path / UNCACHEABLE
        if mark.is_file():
            why = mark.read_text(errors="replace")[:200].strip()
            return f"element '{element.name}' is not cacheable" + (f" ({why})" if why else "")
    cached = {p.label for p in CACHED_PHASES}
    stops = sorted(b for b in breaks if b.split("-", 1)[-1] in cached)
    if stops:
        return f"break points in cached phases ({', '.join(stops)})"
    return ""


def fetcher(env: Mapping[str, str]) -> Fetcher:
    """Fetches as the build's hooks would: through its proxy unless no_proxy says not."""
    proxies = {scheme: env.get(f"{scheme}_proxy") or env.get(f"{scheme.upper()}_PROXY", "")
               for scheme in ("http", "https")}
    proxies = {k: v for k, v in proxies.items() if v}
    no_proxy = env.get("no_proxy") or env.get("NO_PROXY", "")

    def fetch(url: str) -> Optional[bytes]:
        host = urllib.parse.urlsplit(url).hostname or ""
        bypass = bool(no_proxy) and urllib.request.proxy_bypass_environment(
            host, {"no": no_proxy})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler(
            {} if bypass else proxies))
        try:
            with opener.open(url, timeout=FETCH_TIMEOUT) as response:
                return response.read(RELEASE_LIMIT + 1)  # more: never a pinned file's hash
        except urllib.error.HTTPError as err:
            if err.code in (404, 410):
                return None
            raise
        except urllib.error.URLError as err:
            if isinstance(err.reason, FileNotFoundError):  # a file: repository
                return None
            raise

    return fetch


def pins_of(root: Path, env: Mapping[str, str]) -> Tuple[Pin, ...]:
    """The apt InRelease files ``root`` was installed from, as ``apt-get update
    --print-uris`` names them, with the sha256 of the copy in its lists."""
    if not (root / "usr/bin/apt-get").exists():
        return ()
    with chroot.chroot_environment(root):
        printed = capture(["chroot", str(root), "apt-get", "update", "--print-uris"],
                          env=environment.for_chroot(env), timeout=120)
    pins = []
    for line in printed.splitlines():
        match = PRINTED_URI.match(line)
        if not match or not match[1].endswith("/InRelease"):
            continue
        url, name = match[1], match[2]
        for suffix_url, suffix_name in ((url, name), (url[: -len("InRelease")] + "Release",
                                                      name[: -len("InRelease")] + "Release")):
            copy = root / LISTS / suffix_name
            if copy.is_file() and not copy.is_symlink():
                pins.append(Pin(suffix_url, sha256_file(copy)))
                break
        else:
            pins.append(Pin(url, ""))
    return tuple(pins)


def changed_pin(pins: Sequence[Pin], fetch: Fetcher) -> str:
    """The first pinned file the repository now serves differently; empty: none."""
    for pin in pins:
        try:
            data = fetch(pin.url)
        except (OSError, urllib.error.URLError, ValueError) as err:
            return f"repository state unknown ({pin.url}: {getattr(err, 'reason', err)})"
        now = "" if data is None else hashlib.sha256(data).hexdigest()
        if now != pin.sha256:
            return f"the repository changed ({pin.url})"
    return ""


class TreeCache:
    """One build's entry in the tree cache of ``cache_dir``."""

    def __init__(self, cache_dir: Path, key: str, env: Mapping[str, str],
                 fetch: Optional[Fetcher] = None):
        self.directory = cache_dir / DIRECTORY
        self.key = key
        self.env = env
        self.fetch = fetch or fetcher(env)
        self.offline = env.get("DIB_OFFLINE", "") not in ("", "0")
        self.refresh = env.get(SWITCH, "").strip().lower() == "refresh"
        self.budget = parse_budget(env[BUDGET]) if env.get(BUDGET) else DEFAULT_BUDGET

    @property
    def tar(self) -> Path:
        return self.directory / f"{self.key}.tar"

    @property
    def record_file(self) -> Path:
        return self.directory / f"{self.key}.json"

    @property
    def short(self) -> str:
        return self.key[:16]

    def read_record(self) -> Optional[Record]:
        try:
            with self.record_file.open("rb") as handle:
                text = handle.read(RECORD_LIMIT).decode("utf-8", "replace")
            record = Record.from_json(text)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return record if record.key == self.key else None

    def lookup(self) -> Tuple[bool, str]:
        """(hit, why not)."""
        if self.refresh:
            return False, f"{SWITCH}=refresh"
        record = self.read_record()
        if record is None or not self.tar.is_file():
            return False, "no tree cached for these inputs"
        if self.offline:
            return True, "repository not checked: offline"
        changed = changed_pin(record.pins, self.fetch)
        return (False, changed) if changed else (True, "")

    def restore(self, root: Path) -> None:
        tarball.unpack(self.tar, root, tag="tree-cache")
        cachebudget.touch(self.tar)

    def store(self, root: Path, elements: Sequence[str]) -> str:
        """Scrub and store ``root``; a line for the log (the build goes on either way)."""
        mounted = [p for p in chroot.mounts_under(root) if p != Path(os.path.realpath(root))]
        if mounted:
            return f"off: hooks left mounts in the image ({', '.join(map(str, mounted))})"
        try:
            pins = pins_of(root, self.env)
        except DibError as err:
            return f"off: the tree's apt sources could not be listed ({err})"
        if not pins:
            return "off: no apt repository state in the tree to check a cached copy against"
        scrubbed = treescrub.scrub_identity(root)
        if scrubbed:
            LOG.info("tree cache: identity removed: %s", ", ".join(scrubbed))
        self.directory.mkdir(parents=True, exist_ok=True)
        watch = Stopwatch()
        record_partial = self.record_file.with_name(
            f"{self.record_file.name}.partial-{os.getpid()}")
        record = Record(self.key, time.time(), tuple(elements), pins, tuple(scrubbed))
        try:
            record_partial.write_text(record.to_json())
            tarball.pack(root, self.tar, tag="tree-cache", excluded=NOT_STORED)
            os.replace(record_partial, self.record_file)
        except (DibError, OSError) as err:
            return f"not stored: {err}"
        finally:
            with contextlib.suppress(FileNotFoundError):
                record_partial.unlink()
        size = self.tar.stat().st_size
        prune(self.directory, self.budget, keep=self.key)
        return f"stored {self.short} ({size >> 20} MiB in {watch.seconds:.1f} s)"


def for_build(cache_dir: Path, elements: Sequence[Element], env: Mapping[str, str],
              packages: Sequence[str], build_paths: Sequence[str],
              breaks: Sequence[str]) -> Tuple[Optional[TreeCache], str]:
    """This build's cache entry, or None and why the build does without."""
    why = off_reason(env, elements, breaks)
    if why:
        return None, why
    key = treekey.tree_key(elements, env, packages, build_paths)
    return TreeCache(cache_dir, key, env), ""


def prune(directory: Path, budget: int, keep: str) -> List[str]:
    """Remove the least recently used trees until the rest fit ``budget``; never ``keep``."""

    def remove(tar: Path) -> bool:
        for path in (tar, tar.with_suffix(".json")):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return True

    return cachebudget.prune(directory, budget, keep, remove)
