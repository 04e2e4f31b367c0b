"""The shared package cache: two cold dib builds (separate, empty image caches) through it.

Both builds run on this machine through one fresh apt-cacher-ng (matrix/hostgen/pkgcache.py);
its transfer log says how many bytes each fetched from the mirror.
"""

from __future__ import annotations

import shutil
import sys
import time

from bench.figures import Figure, megabytes, ratio
from bench.proc import last_lines, timed
from bench.workspace import REPO, Bench, BenchError
from dib import spawn
from matrix.hostgen.pkgcache import CacheStats, PackageCache, PackageCacheError

SECTION = "package cache"
UPSTREAM_TARGET_PERCENT = 10.0


def settled(cache: PackageCache) -> CacheStats:
    """Its stats once the transfer log stops growing (a line lands as a download ends)."""
    before = cache.stats()
    for _ in range(20):
        time.sleep(0.25)
        now = cache.stats()
        if now == before:
            break
        before = now
    return before


def run(bench: Bench) -> tuple[list[Figure], dict[str, list[str]]]:
    root = bench.path("pkgcache")
    shutil.rmtree(root, ignore_errors=True)
    try:
        cache = PackageCache.start(root / "apt-cacher-ng")
    except PackageCacheError as err:
        raise BenchError(str(err)) from err
    results = {}
    with cache:
        for label in ("first", "second"):
            env = spawn.child_env({"PYTHONPATH": str(REPO), "DIB_RELEASE": "bookworm",
                                   "DIB_DISTRIBUTION_MIRROR": bench.mirror,
                                   **cache.environment()})
            before = settled(cache)
            bench.say(f"{SECTION}: {label} cold build through {cache.proxy_url}")
            result = timed([sys.executable, "-m", "dib", "-o", str(root / label / "image"),
                            "-t", "tar", "--image-cache", str(root / label / "cache"),
                            "debian-minbase"], bench.log(f"pkgcache-{label}"), env=env)
            if not result.ok:
                raise BenchError(f"{label} build failed: {last_lines(result, 1)}")
            results[label] = (result.seconds, settled(cache) - before)
    shutil.rmtree(root, ignore_errors=True)
    (first_s, first), (second_s, second) = results["first"], results["second"]
    return [
        Figure(SECTION, "1st cold build (tar), via the cache", first_s, "s",
               note=f"{megabytes(first.bytes_from_upstream):.1f} MB from the mirror"),
        Figure(SECTION, "2nd cold build, empty image cache", second_s, "s",
               note=f"{megabytes(second.bytes_from_upstream):.2f} MB from the mirror, "
               f"{megabytes(second.bytes_served):.1f} MB served"),
        Figure(SECTION, "  mirror bytes 2nd / 1st",
               ratio(100 * second.bytes_from_upstream, first.bytes_from_upstream), "%",
               UPSTREAM_TARGET_PERCENT),
        Figure(SECTION, "  time 2nd / 1st", ratio(second_s, first_s), "x", note="reference"),
    ], {}
