"""The installed-tree cache's entries: store, check against the repository, restore, prune."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import threading
from pathlib import Path

import pytest

from dib import treecache
from dib.elements import Element
from dib.treecache import Pin, Record, TreeCache, TreeCacheError, off_reason, parse_budget, prune

KEY = "ab" * 16
RELEASE = b"Origin: Debian\nDate: Sat, 11 Jul 2026 09:00:00 UTC\n"
URL = "http://mirror.invalid/debian/dists/bookworm/InRelease"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def served(files: dict[str, bytes | None]):
    def fetch(url: str):
        if url not in files:
            raise OSError(f"connection refused: {url}")
        return files[url]
    return fetch


def cache_with(tmp_path: Path, pins, files, env=None) -> TreeCache:
    cache = TreeCache(tmp_path / "cache", KEY, env or {}, fetch=served(files))
    cache.directory.mkdir(parents=True)
    cache.tar.write_bytes(b"tar")
    cache.record_file.write_text(Record(KEY, 1.0, ("base",), tuple(pins)).to_json())
    return cache


def test_the_same_repository_state_hits(tmp_path):
    cache = cache_with(tmp_path, [Pin(URL, sha(RELEASE))], {URL: RELEASE})
    assert cache.lookup() == (True, "")


def test_a_changed_inrelease_misses_and_names_it(tmp_path):
    cache = cache_with(tmp_path, [Pin(URL, sha(RELEASE))], {URL: RELEASE + b"Date: later\n"})
    hit, why = cache.lookup()
    assert not hit and why == f"the repository changed ({URL})"


def test_an_unreachable_repository_misses_with_the_reason(tmp_path):
    cache = cache_with(tmp_path, [Pin(URL, sha(RELEASE))], {})
    hit, why = cache.lookup()
    assert not hit and why.startswith("repository state unknown") and "refused" in why


def test_a_suite_that_was_absent_must_still_be_absent(tmp_path):
    updates = URL.replace("bookworm", "bookworm-updates")
    pins = [Pin(URL, sha(RELEASE)), Pin(updates, "")]
    assert cache_with(tmp_path / "a", pins, {URL: RELEASE, updates: None}).lookup()[0]
    assert not cache_with(tmp_path / "b", pins, {URL: RELEASE, updates: b"new"}).lookup()[0]


def test_offline_uses_the_tree_without_asking_the_mirror(tmp_path):
    cache = cache_with(tmp_path, [Pin(URL, sha(RELEASE))], {}, env={"DIB_OFFLINE": "1"})
    assert cache.lookup() == (True, "repository not checked: offline")


def test_refresh_rebuilds(tmp_path):
    cache = cache_with(tmp_path, [Pin(URL, sha(RELEASE))], {URL: RELEASE},
                       env={"DIB_TREE_CACHE": "refresh"})
    assert cache.lookup() == (False, "DIB_TREE_CACHE=refresh")


@pytest.mark.parametrize("record", [
    "", "not json", "[]", "{}", json.dumps({"key": "other", "created": 1, "elements": [],
                                            "pins": []}),
    json.dumps({"key": KEY, "created": "x", "elements": [], "pins": []}),
    json.dumps({"key": KEY, "created": 1, "elements": [], "pins": [{"url": 1}]}),
    "{" * 100000, '{"key": "' + "a" * (3 << 20) + '"}',
])
def test_a_damaged_record_is_a_miss_never_an_error(tmp_path, record):
    cache = cache_with(tmp_path, [Pin(URL, sha(RELEASE))], {URL: RELEASE})
    cache.record_file.write_text(record)
    assert cache.lookup() == (False, "no tree cached for these inputs")


def test_a_record_without_its_tree_is_a_miss(tmp_path):
    cache = cache_with(tmp_path, [Pin(URL, sha(RELEASE))], {URL: RELEASE})
    cache.tar.unlink()
    assert not cache.lookup()[0]


def fake_tree(root: Path) -> None:
    for relative, text in {"etc/machine-id": "0123456789abcdef0123456789abcdef\n",
                           "etc/ssh/ssh_host_ed25519_key": "PRIVATE\n",
                           "usr/bin/tool": "#!/bin/sh\n",
                           "var/cache/apt/archives/vim_9_amd64.deb": "deb",
                           "var/cache/apt/pkgcache.bin": "cache"}.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "usr/bin/tool").chmod(0o755)


@pytest.mark.skipif(os.geteuid() != 0, reason="tar keeps owners only for root")
def test_store_scrubs_then_restore_gives_the_scrubbed_tree(tmp_path, monkeypatch):
    monkeypatch.setattr(treecache, "pins_of", lambda root, env: (Pin(URL, sha(RELEASE)),))
    root = tmp_path / "root"
    fake_tree(root)
    cache = TreeCache(tmp_path / "cache", KEY, {}, fetch=served({URL: RELEASE}))
    outcome = cache.store(root, ["base"])
    assert outcome.startswith(f"stored {KEY[:16]} (")
    record = json.loads(cache.record_file.read_text())
    assert record["pins"] == [{"url": URL, "sha256": sha(RELEASE)}]
    assert "etc/machine-id" in record["scrubbed"]
    assert cache.lookup() == (True, "")
    again = tmp_path / "again"
    again.mkdir()
    cache.restore(again)
    assert (again / "etc/machine-id").read_text() == ""
    assert not (again / "etc/ssh/ssh_host_ed25519_key").exists()
    assert os.access(again / "usr/bin/tool", os.X_OK)
    assert (again / "var/cache/apt/pkgcache.bin").exists()
    assert not (again / "var/cache/apt/archives/vim_9_amd64.deb").exists()
    assert not list(cache.directory.glob("*partial*"))


def test_no_repository_state_no_store(tmp_path, monkeypatch):
    monkeypatch.setattr(treecache, "pins_of", lambda root, env: ())
    root = tmp_path / "root"
    fake_tree(root)
    cache = TreeCache(tmp_path / "cache", KEY, {})
    assert cache.store(root, []).startswith("off: no apt repository state")
    assert not cache.tar.exists()
    assert (root / "etc/machine-id").read_text() != ""  # not stored, not scrubbed


def test_a_failed_store_leaves_no_partial_file(tmp_path, monkeypatch):
    monkeypatch.setattr(treecache, "pins_of", lambda root, env: (Pin(URL, ""),))
    root = tmp_path / "root"
    fake_tree(root)
    cache = TreeCache(tmp_path / "cache", KEY, {})
    cache.directory.mkdir(parents=True)
    monkeypatch.setattr(treecache.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("full")))
    assert cache.store(root, []).startswith("not stored: ")
    assert not list(cache.directory.iterdir())


def test_prune_removes_the_least_recently_used_first_and_keeps_the_new_entry(tmp_path):
    for name in ("new", "old", "mid"):
        tar = tmp_path / f"{name}.tar"
        tar.write_bytes(b"x" * 100)
        tar.with_suffix(".json").write_text("{}")
        os.utime(tar, (0, {"new": 10, "old": 1, "mid": 5}[name]))
    assert prune(tmp_path, 150, keep="new") == ["old", "mid"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.json", "new.tar"]
    assert prune(tmp_path, 10, keep="new") == []


@pytest.mark.parametrize("text, size", [("8G", 8 << 30), ("500M", 500 << 20), ("1024", 1024),
                                        ("2GiB", 2 << 30), ("10k", 10 << 10)])
def test_budget_sizes(text, size):
    assert parse_budget(text) == size


@pytest.mark.parametrize("text", ["", "lots", "-1G", "1.5G", "8X"])
def test_a_bad_budget_names_the_setting(text):
    with pytest.raises(TreeCacheError, match="DIB_TREE_CACHE_MAX"):
        parse_budget(text)


def element(tmp_path: Path, name: str, files: dict[str, str] | None = None) -> Element:
    path = tmp_path / name
    path.mkdir(parents=True)
    for relative, text in (files or {}).items():
        (path / relative).write_text(text)
    return Element(name, path, (), ())


@pytest.mark.parametrize("value", ["0", "off", "no", "false", "OFF"])
def test_the_switch_turns_it_off(tmp_path, value):
    assert off_reason({"DIB_TREE_CACHE": value}, [element(tmp_path, "e")], []) == \
        f"DIB_TREE_CACHE={value}"


def test_an_element_can_declare_itself_uncacheable(tmp_path):
    elements = [element(tmp_path, "plain"),
                element(tmp_path, "live-data", {"no-tree-cache": "fetches today's data\n"})]
    assert off_reason({}, elements, []) == \
        "element 'live-data' is not cacheable (fetches today's data)"


def test_break_points_in_cached_phases_turn_it_off(tmp_path):
    elements = [element(tmp_path, "e")]
    assert off_reason({}, elements, ["after-install"]).startswith("break points in cached")
    assert off_reason({}, elements, ["before-finalise", "after-error"]) == ""


class Proxy(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        Proxy.seen.append(self.path)
        body = RELEASE if self.path.endswith("/InRelease") else b""
        self.send_response(200 if body else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def proxy():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    Proxy.seen = []
    yield f"http://token:x@127.0.0.1:{server.server_port}"
    server.shutdown()


def test_the_repository_is_asked_through_the_builds_proxy(proxy):
    fetch = treecache.fetcher({"http_proxy": proxy})
    assert fetch(URL) == RELEASE
    assert fetch(URL.replace("InRelease", "Release")) is None  # 404: absent
    assert Proxy.seen == [URL, URL.replace("InRelease", "Release")]


def test_no_proxy_is_honoured(proxy):
    fetch = treecache.fetcher({"http_proxy": proxy, "no_proxy": "mirror.invalid"})
    with pytest.raises(OSError):
        fetch(URL)  # straight to a host that does not exist
    assert Proxy.seen == []


def test_a_local_file_repository_is_read_directly(tmp_path):
    inrelease = tmp_path / "InRelease"
    inrelease.write_bytes(RELEASE)
    fetch = treecache.fetcher({})
    assert fetch(inrelease.as_uri()) == RELEASE
    assert fetch((tmp_path / "missing").as_uri()) is None
