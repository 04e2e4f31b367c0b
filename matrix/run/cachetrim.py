"""``dib-matrix gc --caches``: what the caches hold, trimmed to a size, least recently used first.

Two caches outlive runs: the shared package cache (apt-cacher-ng's files under
``~/.cache/dib-matrix/apt-cacher-ng/cache``, :mod:`matrix.hostgen.pkgcache`) and each
host's image-cache volume on the engine (labelled ``org.dib-matrix.cache``). Both are
one list, least recently used first: a file by the later of its access and modification
times (apt-cacher-ng's ``.head`` file goes with its package), a volume by the last run
in the output directory that used its host, else its creation time.

Nothing a live run uses is removed: the package cache only while no apt-cacher-ng runs
on it (its lock is held while trimming, so none starts meanwhile), a volume only when no
live lease names it (under the lease registry's lock) and the engine agrees (a mounted
volume is refused). An unreachable engine costs the volumes, not the files: they are
still trimmed, and the report says why the volumes were left.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests

from matrix.containers.labels import LABEL_CACHE
from matrix.containers.leases import InUse, Registry, kept_line
from matrix.hostgen import pkgcache
from results.sizes import format_size

HEAD_SUFFIX = ".head"  # apt-cacher-ng's header file beside each cached file
Say = Callable[[str], None]


@dataclass
class CacheItem:
    """One thing that can be removed: a package-cache file (with its header) or a volume."""

    kind: str  # "file" or "volume"
    name: str  # the file's path under the cache, or the volume's name
    size: int  # bytes on disk (a volume: as the engine counts them)
    last_used: dt.datetime
    paths: tuple[Path, ...] = ()  # a file's paths
    volume: Any = None  # the SDK's volume


@dataclass
class Part:
    """One cache's items, or why it was left out."""

    items: list[CacheItem]
    skipped: str | None = None


# ---------------------------------------------------------------- the package cache


@contextlib.contextmanager
def package_files(root: Path, dry_run: bool) -> Iterator[Part]:
    """The package cache's files, with its lock held for the block (not for a dry run)."""
    cache = pkgcache.Layout(root).cache_dir
    if not cache.is_dir():
        yield Part([], f"no package cache at {root}")
        return
    with contextlib.ExitStack() as stack:
        if not dry_run:
            try:
                stack.enter_context(pkgcache.hold_idle(root))
            except (pkgcache.PackageCacheError, OSError) as err:
                yield Part([], f"left as it is: {err}")
                return
        try:
            items = _file_items(cache)
        except (OSError, RecursionError) as err:  # a tree nested past os.walk's reach
            yield Part([], f"left as it is: cannot be read ({err})")
            return
        yield Part(items)


def _file_items(cache: Path) -> list[CacheItem]:
    groups: dict[str, list[tuple[Path, os.stat_result]]] = {}
    for directory, _dirs, files in os.walk(cache, followlinks=False):
        for name in files:
            path = Path(directory) / name
            info = os.lstat(path)
            if not stat.S_ISREG(info.st_mode):
                continue
            key = str(path.relative_to(cache)).removesuffix(HEAD_SUFFIX)
            groups.setdefault(key, []).append((path, info))
    items = []
    for key, members in groups.items():
        used = max(max(info.st_atime, info.st_mtime) for _, info in members)
        items.append(CacheItem("file", key, sum(info.st_blocks * 512 for _, info in members),
                               dt.datetime.fromtimestamp(used, dt.timezone.utc),
                               paths=tuple(path for path, _ in members)))
    return items


# ---------------------------------------------------------------- the engine's volumes


@contextlib.contextmanager
def cache_volumes(client: Any, registry: Registry, last_runs: Mapping[str, dt.datetime]
                  ) -> Iterator[tuple[Part, InUse]]:
    """The image-cache volumes, the lease registry frozen for the block."""
    if isinstance(client, str):  # why there is no engine
        yield Part([], client), InUse()
        return
    with registry.frozen() as in_use:
        try:
            items = _volume_items(client, last_runs)
        except (docker.errors.DockerException, requests.RequestException) as err:
            yield Part([], f"left as they are: the engine did not answer ({err})"), in_use
            return
        yield Part(items), in_use


def _volume_items(client: Any, last_runs: Mapping[str, dt.datetime]) -> list[CacheItem]:
    sizes = {v.get("Name"): (v.get("UsageData") or {}).get("Size", -1)
             for v in client.df().get("Volumes") or []}
    items = []
    for volume in client.volumes.list(filters={"label": LABEL_CACHE}):
        labels = volume.attrs.get("Labels") or {}
        host = labels.get(LABEL_CACHE, "")
        used = last_runs.get(host) or _created(volume.attrs.get("CreatedAt"))
        size = sizes.get(volume.name, -1)
        items.append(CacheItem("volume", volume.name, max(int(size), 0), used, volume=volume))
    return items


def _created(stamp: object) -> dt.datetime:
    """A volume's CreatedAt (``2025-06-01T02:00:00Z``); the epoch when unreadable (oldest)."""
    try:
        moment = dt.datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return dt.datetime.fromtimestamp(0, dt.timezone.utc)
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


# ---------------------------------------------------------------- trimming


@dataclass(frozen=True)
class Outcome:
    total: int
    removed: list[CacheItem]
    kept: list[str]  # lines: an item spared because something live uses it

    @property
    def freed(self) -> int:
        return sum(item.size for item in self.removed)


def trim(items: list[CacheItem], budget: int | None, in_use: InUse,
         remove: Callable[[CacheItem], str | None]) -> Outcome:
    """Least recently used first, remove items until at most ``budget`` bytes are left.
    ``remove`` says why it could not (or None when it did)."""
    total = sum(item.size for item in items)
    held, removed, kept = total, [], []
    for item in sorted(items, key=lambda i: (i.last_used, i.name)):
        if budget is None or held <= budget:
            break
        holder = in_use.holder(item.name) if item.kind == "volume" else None
        why = kept_line(item.name, holder) if holder else remove(item)
        if why:
            kept.append(why)
            continue
        removed.append(item)
        held -= item.size
    return Outcome(total, removed, kept)


def remover(dry_run: bool) -> Callable[[CacheItem], str | None]:
    def remove(item: CacheItem) -> str | None:
        if dry_run:
            return None
        if item.kind == "file":
            for path in item.paths:
                path.unlink(missing_ok=True)
            return None
        try:
            item.volume.remove(force=True)
        except docker.errors.NotFound:
            return None
        except docker.errors.APIError as exc:  # mounted by a container
            return f"kept cache volume {item.name}: {exc.explanation or exc}"
        return None

    return remove


def trim_caches(package_root: Path, client: Any, budget: int | None, *, registry: Registry,
                last_runs: Mapping[str, dt.datetime], dry_run: bool, say: Say) -> Outcome:
    """Report both caches and, with ``budget``, trim them together; ``client`` is the
    engine's client or a string saying why there is none."""
    with package_files(package_root, dry_run) as files, \
            cache_volumes(client, registry, last_runs) as (volumes, in_use):
        _report(files, volumes, say)
        outcome = trim(files.items + volumes.items, budget, in_use, remover(dry_run))
    _report_outcome(outcome, budget, dry_run, say)
    return outcome


def _report(files: Part, volumes: Part, say: Say) -> None:
    if files.skipped:
        say(f"package cache: {files.skipped}")
    else:
        size = sum(item.size for item in files.items)
        say(f"package cache: {format_size(size)} in {len(files.items)} files")
    if volumes.skipped:
        say(f"cache volumes: {volumes.skipped}")
    for item in sorted(volumes.items, key=lambda i: i.name):
        say(f"cache volume {item.name}: {format_size(item.size)}, last used "
            f"{item.last_used.isoformat(timespec='seconds')}")


def _report_outcome(outcome: Outcome, budget: int | None, dry_run: bool, say: Say) -> None:
    verb = "would remove" if dry_run else "removed"
    files = [item for item in outcome.removed if item.kind == "file"]
    if files:
        say(f"{verb} {len(files)} package-cache files ({format_size(sum(i.size for i in files))}),"
            " least recently used first")
    for item in outcome.removed:
        if item.kind == "volume":
            say(f"{verb} cache volume {item.name} ({format_size(item.size)})")
    for line in outcome.kept:
        say(line)
    left = outcome.total - outcome.freed
    limit = f" of max-bytes {format_size(budget)}" if budget is not None else \
        " (no --max-bytes: nothing removed)"
    say(f"caches: {format_size(left)}{limit} (was {format_size(outcome.total)})")
