"""dib.suiteview: debootstrap's local cut-down suite, against the fake mirror of
tests/unit/dib/fakemirror.py, and its use by dib.bootstrap (debootstrap itself replaced)."""

import hashlib
from pathlib import Path

import pytest

from dib import bootstrap, suiteview
from dib.errors import DibError
from tests.unit.dib.fakemirror import (
    MINBASE,
    PROXY_VARIABLES,
    RELEASE,
    Mirror,
    archive,
    index_of,
    stanza,
)


@pytest.fixture
def mirror(monkeypatch):
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    served = Mirror("HTTP/1.1")
    yield served
    served.close()


INRELEASE = (
    b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\n"
    b"Origin: Debian\nCodename: bookworm\nAcquire-By-Hash: yes\nMD5Sum:\n"
    b" 00 1 main/x\nSHA256:\n 11 2 main/y\n- -dash escaped\n"
    b"-----BEGIN PGP SIGNATURE-----\n\nsig\n-----END PGP SIGNATURE-----\n"
)


def test_reachable_takes_every_alternative_and_provider():
    index = index_of(
        stanza("a", depends="b | c, awk"),
        stanza("b"), stanza("c", pre_depends="d:any (>= 1)"), stanza("d"),
        stanza("mawk", provides="awk"), stanza("gawk", provides="awk"), stanza("unrelated"))
    assert suiteview.reachable(index, ["a", "nowhere"]) == {"a", "b", "c", "d", "mawk",
                                                             "gawk"}


def test_cut_index_keeps_the_index_order_and_text():
    index = index_of(stanza("zz"), stanza("aa"), stanza("mm"))
    cut = suiteview.cut_index(index, ["mm", "zz", "absent"]).decode()
    assert cut.index("Package: zz") < cut.index("Package: mm")
    assert "Package: aa" not in cut and cut.endswith("\n\n")
    assert cut.split("\n\n")[0] + "\n" == stanza("zz")[0]


def test_inrelease_split_as_debootstrap_splits_it():
    release, signature = suiteview.split_inline_signature(INRELEASE)
    assert release.startswith(b"Origin: Debian\n") and release.endswith(b"- -dash escaped")
    assert signature == b"-----BEGIN PGP SIGNATURE-----\n\nsig\n-----END PGP SIGNATURE-----\n"
    assert suiteview.signed_text(INRELEASE).endswith("\n-dash escaped")


def test_release_fields_leave_out_the_checksum_lists():
    fields = suiteview.release_fields(suiteview.signed_text(INRELEASE))
    assert fields == ["Origin: Debian", "Codename: bookworm", "-dash escaped"]


def test_list_names_are_debootstraps():
    assert (suiteview.list_name("http://m.example/debian/", "dists/bookworm/InRelease")
            == "m.example_debian_dists_bookworm_InRelease")


def test_script_keyring(tmp_path):
    script = tmp_path / "sid"
    script.write_text("mirror_style release\nkeyring /k/ring.gpg\n")
    assert suiteview.script_keyring(script) == "/k/ring.gpg"
    assert suiteview.script_keyring(tmp_path / "none") == suiteview.DEFAULT_KEYRING


def test_unverifiable_inrelease_means_no_view(tmp_path):
    with pytest.raises(suiteview.ViewError, match="keyring .* not found"):
        suiteview.verify_inrelease(INRELEASE, str(tmp_path / "missing.gpg"), tmp_path)


def test_enabled():
    assert suiteview.enabled({}, "http://m/debian")
    assert not suiteview.enabled({"DIB_DEBOOTSTRAP_LOCAL_SUITE": "0"}, "http://m/debian")
    assert not suiteview.enabled({"DIB_OFFLINE": "1"}, "http://m/debian")
    assert not suiteview.enabled({}, "file:///srv/debian")
    # The prefetch's own switch is about the prefetch alongside plain debootstrap.
    assert suiteview.enabled({"DIB_DEBOOTSTRAP_PREFETCH": "0"}, "http://m/debian")


def test_prepare_writes_a_consistent_local_suite(mirror, tmp_path, monkeypatch):
    mirror.publish(archive())
    monkeypatch.setattr(suiteview, "verify_inrelease", lambda data, keyring, work: None)
    root, work = tmp_path / "root", tmp_path / "work"
    root.mkdir()
    work.mkdir()
    view = suiteview.prepare(mirror.url, RELEASE, "amd64", ("main",), "minbase", ("sudo",),
                             root, work, "/unused")
    assert view.url == work.resolve().as_uri() and view.wanted == len(MINBASE) + 1
    packages = (work / f"dists/{RELEASE}/main/binary-amd64/Packages").read_bytes()
    names = {line.split()[1] for line in packages.decode().splitlines()
             if line.startswith("Package:")}
    # Every alternative and provider debootstrap might look at; nothing unreachable.
    assert names == MINBASE | {"sudo", "gawk", "usrmerge"}
    release = (work / f"dists/{RELEASE}/Release").read_text()
    assert "Codename: bookworm" in release and "MD5Sum" not in release
    assert (f" {hashlib.sha256(packages).hexdigest()} {len(packages)} "
            "main/binary-amd64/Packages") in release
    debs = sorted(p.name for p in (root / "var/cache/apt/archives").iterdir())
    assert len(debs) == len(MINBASE) + 1 and "dpkg_1%3a1.21.22_amd64.deb" in debs

    lists = root / "var/lib/apt/lists"
    lists.mkdir(parents=True)
    local = lists / suiteview.list_name(view.url, f"dists/{RELEASE}/Release")
    local.write_text("the local one")
    suiteview.restore_lists(view, mirror.url, RELEASE, "amd64", root)
    prefix = suiteview.list_name(mirror.url, f"dists/{RELEASE}/")
    assert sorted(p.name for p in lists.iterdir()) == sorted(
        prefix + n for n in ("InRelease", "Release", "Release.gpg",
                             "main_binary-amd64_Packages"))
    full = lists / (prefix + "main_binary-amd64_Packages")
    assert full.read_bytes() == view.indices["main"].read_bytes()
    assert b"Package: vim" in full.read_bytes()  # the whole index, as debootstrap leaves it


def test_prepare_gives_up_when_a_deb_is_missing(mirror, tmp_path, monkeypatch):
    mirror.publish(archive(), lie_about={"pool/main/t/tar/tar_1.0_amd64.deb"})
    monkeypatch.setattr(suiteview, "verify_inrelease", lambda data, keyring, work: None)
    with pytest.raises(suiteview.ViewError, match="1 .debs not downloaded"):
        suiteview.prepare(mirror.url, RELEASE, "amd64", ("main",), "minbase", (),
                          tmp_path, tmp_path, "/unused")


@pytest.fixture
def base_env(tmp_path, monkeypatch):
    monkeypatch.setattr(bootstrap, "check_script", lambda release, env: None)
    monkeypatch.setattr(bootstrap, "probe_mirror", lambda spec: None)
    monkeypatch.setattr(bootstrap.debprefetch, "prefetch", lambda *a, **k: None)
    (tmp_path / "root").mkdir()
    return {"DIB_RELEASE": RELEASE, "DIB_DISTRIBUTION_MIRROR": "http://m.invalid/debian",
            "DIB_IMAGE_CACHE": str(tmp_path / "cache"), "TARGET_ROOT": str(tmp_path / "root"),
            "TMPDIR": str(tmp_path)}


def fake_debootstrap(calls, fail_with_view=False):
    def debootstrap(spec, root, timeout, mirror="", options=()):
        calls.append((mirror, options))
        (root / "etc").mkdir(exist_ok=True)
        (root / "etc/from").write_text(mirror or spec.mirror)
        if fail_with_view and mirror.startswith("file:"):
            raise DibError("debootstrap failed: Couldn't download package x")
    return debootstrap


def test_bootstrap_uses_the_local_suite(base_env, tmp_path, monkeypatch):
    calls, restored = [], []
    view = suiteview.View("file:///w", b"", {}, 3, 0.1)
    monkeypatch.setattr(suiteview, "prepare", lambda *a: view)
    monkeypatch.setattr(suiteview, "restore_lists", lambda *a: restored.append(a[1:]))
    monkeypatch.setattr(bootstrap, "debootstrap", fake_debootstrap(calls))
    bootstrap.prepare_root(base_env)
    assert calls == [("file:///w", ("--no-check-gpg",))]
    assert restored == [("http://m.invalid/debian", RELEASE, "amd64", tmp_path / "root")]
    assert (tmp_path / "root/etc/apt/sources.list").read_text() == (
        f"deb http://m.invalid/debian {RELEASE} main\n")
    assert not list(tmp_path.glob("dib-suite-*"))  # the work directory is removed


def test_a_failure_with_the_local_suite_starts_over_plainly(base_env, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(suiteview, "prepare", lambda *a: suiteview.View("file:///w", b"", {},
                                                                       3, 0.1))
    monkeypatch.setattr(bootstrap, "debootstrap", fake_debootstrap(calls, fail_with_view=True))
    bootstrap.prepare_root(base_env)
    assert calls == [("file:///w", ("--no-check-gpg",)), ("", ())]
    assert (tmp_path / "root/etc/from").read_text() == "http://m.invalid/debian"


def test_no_local_suite_means_plain_debootstrap(base_env, monkeypatch):
    calls = []

    def prepare(*args):
        (Path(base_env["TARGET_ROOT"]) / "var").mkdir()  # half-placed .debs go too
        raise suiteview.ViewError("keyring /k not found")

    monkeypatch.setattr(suiteview, "prepare", prepare)
    monkeypatch.setattr(bootstrap, "debootstrap", fake_debootstrap(calls))
    bootstrap.prepare_root(base_env)
    assert calls == [("", ())]
    assert not (Path(base_env["TARGET_ROOT"]) / "var").exists()


def test_plain_debootstraps_failure_is_the_message(base_env, monkeypatch):
    monkeypatch.setattr(suiteview, "prepare", lambda *a: suiteview.View("file:///w", b"", {},
                                                                       3, 0.1))

    def debootstrap(spec, root, timeout, mirror="", options=()):
        raise DibError(f"debootstrap of {spec.release} from {mirror or spec.mirror} failed")

    monkeypatch.setattr(bootstrap, "debootstrap", debootstrap)
    with pytest.raises(DibError, match="from http://m.invalid/debian failed"):
        bootstrap.prepare_root(base_env)


def test_an_https_mirror_keeps_debootstraps_ca_certificates(base_env, monkeypatch):
    seen = []
    monkeypatch.setattr(suiteview, "prepare", lambda *a: suiteview.View("file:///w", b"", {},
                                                                       3, 0.1))
    monkeypatch.setattr(suiteview, "restore_lists", lambda *a: None)
    monkeypatch.setattr(bootstrap, "debootstrap",
                        lambda spec, root, timeout, url="", options=(): seen.append(spec))
    bootstrap.prepare_root({**base_env, "DIB_DISTRIBUTION_MIRROR": "https://m.invalid/debian",
                            "DIB_DEBOOTSTRAP_INCLUDE": "sudo"})
    assert seen[0].include == ("sudo", "ca-certificates")
    assert suiteview.mirror_includes("https://m/debian", "stretch") == (
        "apt-transport-https", "ca-certificates")
    assert suiteview.mirror_includes("http://m/debian", "bookworm") == ()
