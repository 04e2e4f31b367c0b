"""matrix.hostgen.pkgcache without the real apt-cacher-ng: a fake one on loopback stands in."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

from dib import bootstrap
from dib.errors import DibError
from matrix.hostgen import pkgcache
from matrix.hostgen.pkgcache import (
    CacheStats,
    Layout,
    PackageCache,
    PackageCacheError,
    parse_transfer_log,
    proxy_environment,
    render_config,
)

# Lines as apt-cacher-ng 3.7 writes them (VerboseLog 1), plus the short form
# (VerboseLog 0), an error line and garbage.
TRANSFER_LOG = """\
1795317494|I|151287|127.0.0.1|debrep/dists/bookworm/InRelease
1795317494|O|151293|127.0.0.1|debrep/dists/bookworm/InRelease
1795317494|I|53344|127.0.0.1|debrep/pool/main/h/hello/hello_2.10-3_amd64.deb
1795317494|O|53313|127.0.0.1|debrep/pool/main/h/hello/hello_2.10-3_amd64.deb
1795317494|O|53313|127.0.0.1|debrep/pool/main/h/hello/hello_2.10-3_amd64.deb
1795317495|E|0|127.0.0.1|debrep/dists/nosuch/InRelease
1795317496|O|10
not a log line
1795317497|I|x|127.0.0.1|broken
"""


def test_transfer_log_sums_upstream_and_served_bytes():
    stats = parse_transfer_log(TRANSFER_LOG.splitlines())
    assert stats == CacheStats(bytes_from_upstream=151287 + 53344,
                               bytes_served=151293 + 53313 * 2 + 10)


def test_stats_subtract_to_the_bytes_of_one_build():
    assert CacheStats(500, 900) - CacheStats(200, 300) == CacheStats(300, 600)


def test_only_plain_http_is_routed_through_the_cache():
    env = proxy_environment("http://127.0.0.1:23142")
    assert env["http_proxy"] == "http://127.0.0.1:23142"
    assert not {"https_proxy", "HTTPS_PROXY", "HTTP_PROXY"} & set(env)
    assert "127.0.0.1" in env["no_proxy"].split(",")


def test_config_is_private_to_the_directory_and_loopback_only(tmp_path):
    text = render_config(Layout(tmp_path), 23142)
    conf = dict(line.split(": ", 1) for line in text.splitlines())
    assert conf["BindAddress"] == "127.0.0.1" and conf["Port"] == "23142"
    assert conf["ForeGround"] == "1"
    for key in ("CacheDir", "LogDir", "SocketPath"):
        assert conf[key].startswith(str(tmp_path)), key
    assert "Proxy" not in conf


def test_config_chains_an_upstream_proxy_and_refuses_odd_ones(tmp_path):
    text = render_config(Layout(tmp_path), 23142, "http://proxy.invalid:3128")
    assert "Proxy: http://proxy.invalid:3128\n" in text
    with pytest.raises(PackageCacheError, match="not an http"):
        render_config(Layout(tmp_path), 23142, "http://x\nPort: 80")


def test_missing_apt_cacher_ng_is_one_clear_line(tmp_path):
    with pytest.raises(PackageCacheError) as err:
        PackageCache.start(tmp_path, executable="no-such-apt-cacher-ng")
    assert str(err.value) == ("no-such-apt-cacher-ng not found: install the apt-cacher-ng "
                              "package (it is listed in bindep.txt)")


FAKE_HEAD = f"#!{sys.executable}\n"
FAKE_BODY = """\
import http.server, sys, time
from pathlib import Path
conf = dict(l.split(": ", 1) for l in (Path(sys.argv[2]) / "acng.conf").read_text().splitlines())
"""
SERVE = """\
class Report(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/acng-report.html" else 404)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer((conf["BindAddress"], int(conf["Port"])), Report).serve_forever()
"""


def fake(tmp_path: Path, body: str) -> str:
    """A stand-in apt-cacher-ng: reads the config it is given, then does ``body``."""
    path = tmp_path / "fake-apt-cacher-ng"
    path.write_text(FAKE_HEAD + FAKE_BODY + textwrap.dedent(body))
    path.chmod(0o755)
    return str(path)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0]
    except (ProcessLookupError, FileNotFoundError):
        return False
    return state != "Z"  # a zombie is dead, only not yet reaped by its parent


def test_start_waits_for_an_answer_counts_only_its_own_transfers_and_reaps(tmp_path):
    layout = Layout(tmp_path / "cache")
    layout.make()
    layout.transfer_log.write_text("1|I|999|127.0.0.1|from an earlier run\n")
    with PackageCache.start(layout.root, executable=fake(tmp_path, SERVE)) as cache:
        assert cache.proxy_url == f"http://127.0.0.1:{cache.port}"
        assert pkgcache.PORT_RANGE[0] <= cache.port <= pkgcache.PORT_RANGE[1]
        assert cache.stats() == CacheStats()
        with layout.transfer_log.open("a") as log:
            log.write("2|I|100|127.0.0.1|a\n2|O|100|127.0.0.1|a\n2|O|100|127.0.0.1|a\n3|I|5")
        assert cache.stats() == CacheStats(100, 200)  # the unfinished line is not counted
        with pytest.raises(PackageCacheError, match="in use by another package cache"):
            PackageCache.start(layout.root, executable=fake(tmp_path, SERVE))
        pid = cache.process.pid
    assert cache.process.returncode is not None and not alive(pid)
    cache.stop()  # idempotent
    with PackageCache.start(layout.root, executable=fake(tmp_path, SERVE)):
        pass  # the directory is free again


def test_one_that_cannot_listen_fails_in_one_line_and_is_reaped(tmp_path, monkeypatch):
    monkeypatch.setattr(pkgcache, "PORT_ATTEMPTS", 2)
    never_listens = """\
    print("Port", conf["Port"], "is busy, see the manual (Troubleshooting chapter)", flush=True)
    Path(sys.argv[0] + ".pids").open("a").write(f"{__import__('os').getpid()}\\n")
    time.sleep(600)
    """
    program = fake(tmp_path, never_listens)
    with pytest.raises(PackageCacheError, match=r"did not start: Port \d+ is busy"):
        PackageCache.start(tmp_path / "cache", executable=program, timeout=5)
    pids = [int(p) for p in Path(program + ".pids").read_text().split()]
    assert len(pids) == 2  # a second port was tried
    assert not any(alive(pid) for pid in pids)


def test_one_that_exits_at_once_reports_its_last_words(tmp_path):
    program = fake(tmp_path, 'print("Cannot open the cache directory"); sys.exit(3)\n')
    with pytest.raises(PackageCacheError, match="did not start: Cannot open the cache"):
        PackageCache.start(tmp_path / "cache", executable=program, timeout=5)


def test_a_cached_base_never_hides_a_missing_debootstrap_script(tmp_path, monkeypatch):
    """No cache makes a host-specific failure disappear: the script check comes first."""
    (tmp_path / "scripts").mkdir()
    monkeypatch.setattr(bootstrap.shutil, "which", lambda name: "/usr/sbin/" + name)
    env = {"DEBOOTSTRAP_DIR": str(tmp_path), "DIB_RELEASE": "forky",
           "DIB_DISTRIBUTION_MIRROR": "http://mirror.invalid/debian",
           "DIB_IMAGE_CACHE": str(tmp_path / "cache"), "TARGET_ROOT": str(tmp_path / "root")}
    cached = bootstrap.spec_from_env(env).cache_file(tmp_path / "cache")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")  # a base tarball for forky is in the image cache
    with pytest.raises(DibError, match="No such script: .*/scripts/forky"):
        bootstrap.prepare_root(env)
