"""dib.debprefetch against a tiny fake mirror (tests/unit/dib/fakemirror.py)."""

import logging
import lzma
import time

import pytest

from dib import bootstrap, debprefetch
from dib.debprefetch import Deb, PackageIndex, dependency_names, resolve
from tests.unit.dib.fakemirror import (
    MINBASE,
    PROXY_VARIABLES,
    RELEASE,
    Mirror,
    archive,
    index_of,
    stanza,
)


@pytest.fixture(params=["HTTP/1.0", "HTTP/1.1"])
def mirror(request, monkeypatch):
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    served = Mirror(request.param)
    yield served
    served.close()


def run(served, root, **kwargs):
    args = dict(mirror=served.url, release=RELEASE, arch="amd64", components=("main",),
                variant="minbase", include=(), root=root)
    args.update(kwargs)
    return debprefetch.prefetch(**args)


def placed(root):
    return sorted(p.name for p in (root / "var/cache/apt/archives").iterdir())


def _wait_for(condition, within=10.0):
    """Until ``condition()`` holds (a download under way), at most ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "the prefetch never got that far"
        time.sleep(0.01)


def test_prefetch_places_what_debootstrap_wants_under_its_names(mirror, tmp_path, caplog):
    mirror.publish(archive())
    with caplog.at_level(logging.INFO, logger="dib"):
        summary = run(mirror, tmp_path, include=("sudo",))
    names = placed(tmp_path)
    assert "dpkg_1%3a1.21.22_amd64.deb" in names
    assert "zlib1g_1%3a1.2.13.dfsg-1_amd64.deb" in names
    assert {n.split("_")[0] for n in names} == MINBASE | {"sudo"}
    assert summary.fetched == summary.wanted == len(MINBASE) + 1
    deb = tmp_path / "var/cache/apt/archives/tar_1.0_amd64.deb"
    assert deb.read_bytes() == b"deb of tar"
    line = caplog.records[-1].getMessage()
    assert line.startswith(f"prefetched {summary.wanted} of {summary.wanted} debs (")
    assert line.endswith(" s")


def test_kept_alive_connections_serve_many_files(tmp_path):
    mirror = Mirror("HTTP/1.1")
    try:
        mirror.publish(archive())
        summary = run(mirror, tmp_path, workers=2)
    finally:
        mirror.close()
    assert summary.fetched == len(MINBASE)
    assert len(mirror.connections) <= 3  # the index's, and one per worker


def test_a_proxy_from_the_environment_is_used(mirror, tmp_path, monkeypatch):
    mirror.publish(archive())
    monkeypatch.setenv("http_proxy", mirror.url.rsplit("/", 1)[0])
    summary = run(mirror, tmp_path, mirror="http://mirror.invalid/debian")
    assert summary.fetched == len(MINBASE)
    assert mirror.proxied == len(mirror.requests) > len(MINBASE)


def test_a_deb_already_in_place_is_not_downloaded_again(mirror, tmp_path):
    mirror.publish(archive())
    run(mirror, tmp_path)
    mirror.requests.clear()
    summary = run(mirror, tmp_path)
    assert not [r for r in mirror.requests if r.endswith(".deb")]
    assert summary.bytes == 0


def test_release_falls_back_from_inrelease(mirror, tmp_path):
    mirror.publish(archive(), release_name="Release")
    summary = run(mirror, tmp_path)
    assert summary.fetched == len(MINBASE)


def test_a_deb_that_does_not_match_its_checksum_is_left_to_debootstrap(mirror, tmp_path,
                                                                        caplog):
    debs = archive()
    tar = next(filename for entry, filename, _ in debs if "Package: tar\n" in entry)
    mirror.publish(debs, lie_about={tar})
    with caplog.at_level(logging.INFO, logger="dib"):
        summary = run(mirror, tmp_path)
    assert summary.fetched == summary.wanted - 1
    assert not [n for n in placed(tmp_path) if n.startswith("tar_") or "prefetch" in n]
    assert any("tar: " in r.getMessage() and "SHA256" in r.getMessage()
               for r in caplog.records)


def test_an_index_that_does_not_match_the_release_gives_up_quietly(mirror, tmp_path, caplog):
    mirror.publish(archive())
    index = f"dists/{RELEASE}/main/binary-amd64/Packages.xz"
    mirror.files[index] = lzma.compress(b"Package: evil\n")
    with caplog.at_level(logging.INFO, logger="dib"):
        assert run(mirror, tmp_path) is None
    assert not (tmp_path / "var").exists()
    assert [r.getMessage() for r in caplog.records] == [
        "deb prefetch skipped: main/binary-amd64/Packages.xz does not match the "
        "Release file's SHA256"
    ]


def test_an_unreachable_mirror_gives_up_quietly(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="dib"):
        summary = debprefetch.prefetch("http://127.0.0.1:9/debian", RELEASE, "amd64",
                                       ("main",), "minbase", (), tmp_path, deadline=5)
    assert summary is None
    assert len(caplog.records) == 1
    assert caplog.records[0].getMessage().startswith("deb prefetch skipped: ")


def test_a_hanging_deb_download_hits_the_request_timeout(mirror, tmp_path):
    debs = archive()
    mirror.publish(debs)
    mirror.hang = {f for _, f, _ in debs if "/tar/" in f or "/apt/" in f}
    started = time.monotonic()
    summary = run(mirror, tmp_path, deadline=30, per_request=0.25)
    assert time.monotonic() - started < 5  # the request timeout, far from the deadline
    assert summary.fetched == summary.wanted - 2
    assert not [n for n in placed(tmp_path) if "prefetch" in n]


def test_a_trickling_deb_download_hits_the_overall_deadline(mirror, tmp_path, caplog):
    # tar trickles a byte every 0.2 s, each read well within the request timeout: only
    # the overall deadline can end it, long before its 44 s of bytes are through.
    debs = [stanza("tar", body=b"a slow deb " * 20) if "Package: tar\n" in entry
            else (entry, filename, body) for entry, filename, body in archive()]
    mirror.publish(debs)
    mirror.trickle = {f for _, f, _ in debs if "/tar/" in f}
    deadline = 0.5  # room for the index and the other debs (~20 ms) on a busy host
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="dib"):
        summary = run(mirror, tmp_path, deadline=deadline, per_request=1.0)
    took = time.monotonic() - started
    assert deadline - 0.1 < took < deadline + 2.5  # the deadline, plus at most one read
    assert summary.fetched == summary.wanted - 1
    assert not [n for n in placed(tmp_path) if n.startswith("tar_") or "prefetch" in n]
    assert any("deadline reached" in r.getMessage() for r in caplog.records)


def test_a_hanging_index_hits_the_deadline(mirror, tmp_path):
    mirror.publish(archive())
    mirror.hang = {f"dists/{RELEASE}/InRelease"}
    started = time.monotonic()
    assert run(mirror, tmp_path, deadline=0.3, per_request=5) is None
    assert time.monotonic() - started < 4  # the deadline, not the request timeout


def test_debootstraps_names_replace_the_epoch_colon():
    deb = Deb("libfoo", "1:2.3", "amd64", "pool/f.deb", "0" * 64, 1)
    assert deb.dest_name == "libfoo_1%3a2.3_amd64.deb"
    assert Deb("x", "2.3", "all", "p", "0", 1).dest_name == "x_2.3_all.deb"
    # like debootstrap's sed 's/:/%3a/': the first colon only
    assert Deb("x", "1:2:3", "all", "p", "0", 1).dest_name == "x_1%3a2:3_all.deb"


def test_dependency_fields_read_as_debootstrap_reads_them():
    field = "libc6 (>= 2.34), perl:any | perl-base, debconf (>= 0.5) | debconf-2.0,python3:any"
    assert dependency_names(field) == ["libc6", "perl", "debconf", "python3"]
    assert dependency_names("") == []


def test_resolution_follows_depends_pre_depends_and_first_alternatives():
    index = index_of(
        stanza("a", depends="b (>= 1) | c", pre_depends="d:any"),
        stanza("b", depends="e"), stanza("c"), stanza("d"), stanza("e"), stanza("f"),
    )
    assert [d.name for d in resolve(index, ["a"])] == ["a", "b", "d", "e"]


def test_resolution_takes_provides_only_for_a_name_no_real_package_has():
    index = index_of(
        stanza("a", depends="awk, mail-transport-agent, b, nowhere"),
        stanza("b", provides="a-thing"),
        stanza("mawk", provides="awk (= 1.3)"),
        stanza("exim4", provides="mail-transport-agent"),
        stanza("postfix", provides="mail-transport-agent"),
        stanza("other", provides="b"),
    )
    assert [d.name for d in resolve(index, ["a"])] == ["a", "b", "mawk"]


def test_resolution_skips_excluded_dependencies_and_unknown_names():
    index = index_of(stanza("a", depends="usrmerge"), stanza("usrmerge"))
    assert [d.name for d in resolve(index, ["a", "ghost"], {"usrmerge"})] == ["a"]


def test_minbase_starts_from_required_apt_and_includes():
    index = index_of(*archive())
    names, excluded = debprefetch.initial_names(index, RELEASE, "minbase", ["sudo"], False)
    assert names == {"base-files", "mawk", "dpkg", "apt", "usr-is-merged", "sudo"}
    assert excluded == {"usrmerge"}
    names, _ = debprefetch.initial_names(index, "trixie", "minbase", [], True)
    assert names == {"base-files", "mawk", "dpkg", "apt", "ca-certificates"}


def test_index_reads_the_first_stanza_of_a_name():
    index = PackageIndex()
    index.add(stanza("a", "1")[0].encode())
    index.add(stanza("a", "2")[0].encode())
    assert index.get("a").version == "1"
    assert index.get("zzz") is None and "zzz" not in index


@pytest.mark.parametrize(
    "env, mirror_url, expected",
    [
        ({}, "http://m/debian", True),
        ({}, "https://m/debian", True),
        ({}, "file:///srv/mirror/debian", False),
        ({"DIB_OFFLINE": "1"}, "http://m/debian", False),
        ({"DIB_DEBOOTSTRAP_PREFETCH": "0"}, "http://m/debian", False),
        ({"DIB_DEBOOTSTRAP_PREFETCH": "1"}, "http://m/debian", True),
    ],
)
def test_enabled_only_for_online_http_mirrors(env, mirror_url, expected):
    assert debprefetch.enabled(env, mirror_url) is expected


def test_alongside_prefetches_while_the_body_runs_and_leaves_no_deb(mirror, tmp_path):
    mirror.publish(archive())
    archives = tmp_path / "var/cache/apt/archives"
    env = {}
    with debprefetch.alongside(env, mirror.url, RELEASE, "amd64", ("main",), "minbase", (),
                               tmp_path):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(list(archives.glob("*.deb"))) < len(MINBASE):
            time.sleep(0.05)  # debootstrap would be resolving its dependencies meanwhile
        assert len(list(archives.glob("*.deb"))) == len(MINBASE)
    assert list(archives.iterdir()) == []  # what debootstrap did not remove itself


def test_alongside_stops_a_slow_prefetch_when_the_body_ends(mirror, tmp_path, caplog):
    debs = archive()
    mirror.publish(debs)
    mirror.trickle = {f for _, f, _ in debs if f.endswith(".deb")}
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="dib"), debprefetch.alongside(
        {}, mirror.url, RELEASE, "amd64", ("main",), "minbase", (), tmp_path
    ):
        _wait_for(lambda: any(r.endswith(".deb") for r in mirror.requests))
    assert time.monotonic() - started < 3  # the end of the body, plus one read
    assert list((tmp_path / "var/cache/apt/archives").iterdir()) == []
    assert any("stopped" in r.getMessage() for r in caplog.records)


def test_alongside_does_nothing_when_disabled(tmp_path, monkeypatch):
    monkeypatch.setattr(debprefetch, "prefetch", lambda *a, **k: pytest.fail("prefetched"))
    for env, url in (({"DIB_DEBOOTSTRAP_PREFETCH": "0"}, "http://m/debian"),
                     ({}, "file:///srv/debian")):
        with debprefetch.alongside(env, url, RELEASE, "amd64", ("main",), "minbase", (),
                                   tmp_path):
            pass
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("opt_out, calls", [("1", 1), ("0", 0)])
def test_bootstrap_prefetches_while_debootstrap_runs(tmp_path, monkeypatch, opt_out, calls):
    order = []
    monkeypatch.setattr(bootstrap, "check_script", lambda release, env: None)
    monkeypatch.setattr(bootstrap, "probe_mirror", lambda spec: order.append("probe"))

    def prefetch(*args, stop, placed):
        order.append(("prefetch",) + args)
        stop.wait(5)  # runs until debootstrap is done
        order.append("prefetch stopped")

    monkeypatch.setattr(bootstrap.debprefetch, "prefetch", prefetch)

    def debootstrap(*args):
        time.sleep(0.02)
        order.append("debootstrap")

    monkeypatch.setattr(bootstrap, "debootstrap", debootstrap)
    monkeypatch.setattr(bootstrap, "store", lambda root, cache: order.append("store"))
    env = {"DIB_RELEASE": RELEASE, "DIB_DISTRIBUTION_MIRROR": "http://m.invalid/debian",
           "DIB_IMAGE_CACHE": str(tmp_path / "cache"), "TARGET_ROOT": str(tmp_path / "root"),
           "DIB_DEBOOTSTRAP_PREFETCH": opt_out, "DIB_DEBOOTSTRAP_INCLUDE": "sudo",
           "DIB_DEBOOTSTRAP_LOCAL_SUITE": "0"}
    bootstrap.prepare_root(env)
    prefetched = [o for o in order if isinstance(o, tuple)]
    assert len(prefetched) == calls
    if calls:
        assert order[0] == "probe" and order[-2:] == ["prefetch stopped", "store"]
        assert order.index("debootstrap") < order.index("prefetch stopped")
        assert prefetched[0][1:] == ("http://m.invalid/debian", RELEASE, "amd64", ("main",),
                                     "minbase", ("sudo",), tmp_path / "root")
    else:
        assert order == ["probe", "debootstrap", "store"]


def test_a_request_that_times_out_on_a_kept_alive_connection_is_not_sent_again(tmp_path):
    """Only a dropped connection is worth a second try: a timeout would cost twice."""
    mirror = Mirror("HTTP/1.1")
    try:
        mirror.publish(archive())
        mirror.hang = {"pool/slow.deb"}
        fetcher = debprefetch.Fetcher(debprefetch.Clock(30))
        with fetcher.get(f"{mirror.url}/dists/{RELEASE}/InRelease", 5.0) as response:
            response.read()  # the connection is now kept alive
        with pytest.raises(OSError), fetcher.get(f"{mirror.url}/pool/slow.deb", 0.2):
            pass
        fetcher.close()
    finally:
        mirror.close()
    assert mirror.requests.count("pool/slow.deb") == 1
