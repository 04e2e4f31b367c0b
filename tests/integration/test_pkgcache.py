"""The shared package cache against the real apt-cacher-ng, the mirror and cell containers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dib.bootstrap import BaseSpec, probe_mirror
from matrix.containers.engine import CellSpec, dib_command, dib_environment, run_cell
from matrix.hostgen.pkgcache import CacheStats, PackageCache, PackageCacheError
from tests.integration.hostfixtures import HostgenSession, open_hostgen_session

pytestmark = pytest.mark.integration
HOST = "debian-bookworm"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PackageCache]:
    try:
        started = PackageCache.start(tmp_path_factory.mktemp("pkgcache"))
    except PackageCacheError as err:
        pytest.skip(str(err))
    with started:
        yield started
    assert started.process.returncode is not None  # reaped


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostgenSession]:
    yield from open_hostgen_session(tmp_path_factory)


def settled(cache: PackageCache) -> CacheStats:
    """Stats once the log stops growing (a transfer line lands as its download ends)."""
    before = cache.stats()
    for _ in range(20):
        time.sleep(0.25)
        now = cache.stats()
        if now == before:
            return now
        before = now
    return before


def test_dib_mirror_probe_goes_through_the_cache(cache, monkeypatch):
    from dib.mirror import MirrorNotFound, find_mirror

    try:
        mirror = find_mirror("debian")
    except MirrorNotFound as err:
        pytest.skip(str(err))
    if not mirror.startswith("http://"):
        pytest.skip(f"mirror {mirror} is not plain http: nothing to cache")
    for name, value in cache.environment().items():
        monkeypatch.setenv(name, value)
    before = settled(cache)
    probe_mirror(BaseSpec("debian", "bookworm", "amd64", mirror, "minbase", ("main",), ()))
    fetched = settled(cache) - before
    assert fetched.bytes_served > 0 and fetched.bytes_from_upstream > 0
    log = cache.layout.transfer_log.read_text()
    assert "dists/bookworm/Release" in log


def test_a_second_cache_dir_user_is_refused_while_it_runs(cache):
    with pytest.raises(PackageCacheError, match="in use"):
        PackageCache.start(cache.layout.root)


def build_in_cell(hosts: HostgenSession, cache: PackageCache, name: str) -> CacheStats:
    """A cold dib build (its own empty image-cache volume) in a cell, through the cache."""
    env = dib_environment({"DIB_RELEASE": "bookworm", **cache.environment()}, hosts.mirror)
    before = settled(cache)
    result = run_cell(hosts.client, CellSpec(
        run_id=hosts.run_id,
        cell_id=f"pkgcache-{name}",
        host=HOST,
        image=hosts.image(HOST),
        command=dib_command(["debian-minbase"], name, ("tar",)),
        log_path=hosts.workdir / "logs" / f"pkgcache-{name}.log",
        timeout=1800,
        environment=env,
        dib_tree=Path(__file__).resolve().parents[2],
        out_dir=hosts.out_dir(HOST),
        cache_volume=f"dib-matrix-test-{hosts.run_id}-pkgcache-{name}",  # removed with the run
    ))
    log = result.log_path.read_text(errors="replace")
    assert result.ok, log[-3000:]
    assert "using cached base" not in log  # cold: debootstrap really ran
    return settled(cache) - before


@pytest.mark.slow
def test_second_cold_build_downloads_at_most_a_tenth(cache, hosts):
    if not hosts.mirror.startswith("http://"):
        pytest.skip(f"mirror {hosts.mirror} is not plain http: nothing to cache")
    first = build_in_cell(hosts, cache, "first")
    second = build_in_cell(hosts, cache, "second")
    print(f"\nfirst: {first}\nsecond: {second}")
    assert first.bytes_from_upstream > 10 << 20  # the packages came through the cache
    assert second.bytes_served >= 0.9 * first.bytes_served  # ...the second time as well
    assert second.bytes_from_upstream <= 0.10 * first.bytes_from_upstream
