"""tests/integration/localmirror.py: a tiny archive made from scratch (two .debs from
dpkg-deb, Packages written in Python, Release signed with a test key), one package
bumped, and the result checked as apt checks it: gpgv, the checksums, apt-get itself."""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from dib import bootstrap
from matrix.snapshot import release
from matrix.snapshot.manifest import ArchiveState, FileRef, Snapshot
from matrix.snapshot.store import Store
from tests.integration import localmirror
from tests.integration.localmirror import LocalMirrorError

SUITE = "snaptest"
TOOLS = ("gpg", "gpgv", "gpgconf", "dpkg-deb")
pytestmark = pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS),
                                reason=f"needs {', '.join(TOOLS)}")


@pytest.fixture(scope="module")
def key(tmp_path_factory):
    with localmirror.make_test_key(tmp_path_factory.mktemp("key")) as made:
        yield made


@pytest.fixture(scope="module")
def other_key(tmp_path_factory):
    with localmirror.make_test_key(tmp_path_factory.mktemp("other")) as made:
        yield made


def make_archive(root: Path, key, arches=("amd64",)) -> Path:
    """hello (Architecture: all) and world (amd64, a version with an epoch)."""
    archive = root / "archive"
    debs = [localmirror.make_deb(archive / "pool" / "main" / name[0] / name, name, version,
                                 arch)
            for name, version, arch in (("hello", "1.0-1", "all"), ("world", "2:2.0", "amd64"))]
    localmirror.build_archive(archive, SUITE, debs, key, arches=arches)
    return archive


def release_entries(suite_dir: Path) -> dict[str, list[tuple[str, int, str]]]:
    """{field: [(hash, size, path)]} of the checksum fields of the signed Release."""
    text = release.signed_text((suite_dir / "InRelease").read_bytes()).decode()
    assert text == (suite_dir / "Release").read_text()
    entries: dict[str, list[tuple[str, int, str]]] = {}
    field = ""
    for line in text.splitlines():
        if line[:1].isspace():
            digest, size, path = line.split()
            entries.setdefault(field, []).append((digest, int(size), path))
        else:
            field = line.partition(":")[0]
    return entries


def stanza(text: str, package: str) -> dict[str, str]:
    for paragraph in localmirror.paragraphs(text):
        fields = dict(line.split(": ", 1) for line in paragraph)
        if fields["Package"] == package:
            return fields
    raise AssertionError(f"{package} not in the index")


def test_bump_rebuilds_the_deb_and_re_signs_a_consistent_suite(tmp_path, key, other_key):
    archive = make_archive(tmp_path, key)
    old_world = (archive / "dists" / SUITE / "main/binary-amd64/Packages").read_text()
    bumped = localmirror.bump_package(archive, SUITE, "hello", key)

    assert bumped == localmirror.BumpedPackage(
        "hello", "1.0-1", "1.0-1+bump1", "pool/main/h/hello/hello_1.0-1+bump1_all.deb")
    deb = archive / bumped.filename
    assert (archive / "pool/main/h/hello/hello_1.0-1_all.deb").is_file()  # the old one stays
    version = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True,
                             check=True).stdout.decode().strip()
    assert version == "1.0-1+bump1"

    suite = archive / "dists" / SUITE
    inrelease = (suite / "InRelease").read_bytes()
    release.verify(inrelease, key.keyring)  # gpgv --keyring
    release.verify_detached((suite / "Release").read_bytes(),
                            (suite / "Release.gpg").read_bytes(), key.keyring)
    with pytest.raises(release.SignatureError):  # a wrong key fails
        release.verify(inrelease, other_key.keyring)

    index = suite / "main/binary-amd64/Packages"
    texts = {index.read_text(), gzip.decompress(index.with_suffix(".gz").read_bytes()).decode(),
             lzma.decompress(index.with_suffix(".xz").read_bytes()).decode()}
    assert len(texts) == 1  # every variant says the same
    hello = stanza(texts.pop(), "hello")
    data = deb.read_bytes()
    assert hello["Version"] == "1.0-1+bump1"
    assert hello["Filename"] == bumped.filename
    assert hello["Size"] == str(len(data))
    assert hello["SHA256"] == hashlib.sha256(data).hexdigest()
    assert hello["MD5sum"] == hashlib.md5(data).hexdigest()
    assert stanza(index.read_text(), "world") == stanza(old_world, "world")

    entries = release_entries(suite)
    assert set(entries) == {"MD5Sum", "SHA256"}
    parsed = release.parse_release(inrelease)
    assert parsed.sha256 == {path: (digest, size) for digest, size, path in entries["SHA256"]}
    assert not parsed.acquire_by_hash
    for field, algorithm in (("MD5Sum", "md5"), ("SHA256", "sha256")):
        for digest, size, path in entries[field]:
            listed = (suite / path).read_bytes()
            assert (digest, size) == (hashlib.new(algorithm, listed).hexdigest(), len(listed))
    text = (suite / "Release").read_text()
    assert "Acquire-By-Hash" not in text  # no by-hash copies: the promise is dropped
    assert f"Codename: {SUITE}\n" in text and "Date: Sat, 01 Jun 2024" in text


def test_a_joined_keyring_verifies_either_key(tmp_path, key, other_key):
    archive = make_archive(tmp_path, other_key)
    joined = localmirror.joined_keyring(tmp_path / "both.gpg", key.keyring, other_key.keyring)
    assert bootstrap.keyring_problem(joined.read_bytes()) is None
    release.verify((archive / "dists" / SUITE / "InRelease").read_bytes(), joined)
    localmirror.bump_package(archive, SUITE, "hello", key)
    release.verify((archive / "dists" / SUITE / "InRelease").read_bytes(), joined)


def test_an_epoch_stays_out_of_the_pool_name(tmp_path, key):
    archive = make_archive(tmp_path, key)
    bumped = localmirror.bump_package(archive, SUITE, "world", key)
    assert (bumped.old_version, bumped.new_version) == ("2:2.0", "2:2.0+bump1")
    assert bumped.filename == "pool/main/w/world/world_2.0+bump1_amd64.deb"


def test_every_architecture_listing_the_package_is_rewritten(tmp_path, key):
    archive = make_archive(tmp_path, key, arches=("amd64", "arm64"))
    suite = archive / "dists" / SUITE
    arm64 = suite / "main/binary-arm64/Packages"
    bumped = localmirror.bump_package(archive, SUITE, "hello", key)
    for arch in ("amd64", "arm64"):
        hello = stanza((suite / f"main/binary-{arch}/Packages").read_text(), "hello")
        assert (hello["Version"], hello["Filename"]) == ("1.0-1+bump1", bumped.filename)
    assert len(list((archive / "pool").rglob("hello_*.deb"))) == 2  # one rebuilt .deb

    before = arm64.read_bytes(), (suite / "Release").read_text()
    localmirror.bump_package(archive, SUITE, "world", key)  # amd64 only
    assert arm64.read_bytes() == before[0]
    kept = [line for line in before[1].splitlines() if "binary-arm64" in line]
    assert kept and all(line in (suite / "Release").read_text() for line in kept)
    assert stanza((suite / "main/binary-amd64/Packages").read_text(), "world")["Version"] == (
        "2:2.0+bump1")


def test_a_release_listing_absent_variants_stays_true(tmp_path, key):
    """As Debian's: the uncompressed Packages listed but not on disk (apt checks the
    decompressed index against it), and no Release beside InRelease (a snapshot export)."""
    archive = make_archive(tmp_path, key)
    suite = archive / "dists" / SUITE
    release = (suite / "Release").read_text()
    gone = suite / "main/binary-amd64/Packages"
    sha512 = ("SHA1:\n 00 1 main/binary-amd64/Packages.bz2\n"
              "SHA512:\n 00 1 main/binary-amd64/Packages.bz2\n"
              " 00 1 main/binary-amd64/Packages.xz\n")
    localmirror.sign_release(suite, (release + sha512).encode(), key)
    gone.unlink()
    (suite / "Release").unlink()
    localmirror.bump_package(archive, SUITE, "hello", key)
    assert not gone.exists()
    text = lzma.decompress(gone.with_suffix(".xz").read_bytes())
    entries = release_entries(suite)
    assert (hashlib.sha256(text).hexdigest(), len(text), "main/binary-amd64/Packages") in (
        entries["SHA256"])
    assert "Packages.bz2" not in (suite / "Release").read_text()  # no longer true: dropped
    assert "SHA1:" not in (suite / "Release").read_text()  # nor a list left empty
    xz = gone.with_suffix(".xz").read_bytes()
    assert entries["SHA512"] == [(hashlib.sha512(xz).hexdigest(), len(xz),
                                  "main/binary-amd64/Packages.xz")]


def test_hard_links_into_a_store_are_never_written_through(tmp_path, key):
    archive = make_archive(tmp_path, key)
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    linked = [archive / "dists" / SUITE / name
              for name in ("InRelease", "Release", "main/binary-amd64/Packages.xz")]
    for number, path in enumerate(linked):
        os.link(path, blobs / str(number))
    before = [(blobs / str(n)).read_bytes() for n in range(len(linked))]
    localmirror.bump_package(archive, SUITE, "hello", key)
    assert [(blobs / str(n)).read_bytes() for n in range(len(linked))] == before
    assert linked[0].read_bytes() != before[0]


@pytest.mark.parametrize("package, why", [
    ("absent", "no Packages index of the suite lists absent"),
    ("hello", "pool/main/h/hello/hello_1.0-1_all.deb is not in the pool"),
])
def test_what_cannot_be_bumped_is_named(tmp_path, key, package, why):
    archive = make_archive(tmp_path, key)
    (archive / "pool/main/h/hello/hello_1.0-1_all.deb").unlink()
    with pytest.raises(LocalMirrorError, match=why):
        localmirror.bump_package(archive, SUITE, package, key)


def test_remove_pool_file(tmp_path, key):
    archive = make_archive(tmp_path, key)
    localmirror.bump_package(archive, SUITE, "hello", key)
    with pytest.raises(LocalMirrorError, match="2 pool files of hello"):
        localmirror.remove_pool_file(archive, "hello")
    assert localmirror.remove_pool_file(archive, "hello", "1.0-1") == (
        "pool/main/h/hello/hello_1.0-1_all.deb")
    assert localmirror.remove_pool_file(archive, "world", "2:2.0") == (
        "pool/main/w/world/world_2.0_amd64.deb")
    assert [p.name for p in (archive / "pool").rglob("*.deb")] == ["hello_1.0-1+bump1_all.deb"]


def test_first_ipv4_is_not_loopback():
    address = localmirror.first_ipv4()
    assert not address.startswith("127.")


APT_TIMEOUT = 60
APT_DIRS = ("etc/apt/apt.conf.d", "etc/apt/preferences.d", "etc/apt/trusted.gpg.d",
            "etc/apt/sources.list.d", "var/lib/apt/lists/partial",
            "var/cache/apt/archives/partial", "var/lib/dpkg")


def apt_root(root: Path) -> Path:
    for directory in APT_DIRS:
        (root / directory).mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text("")
    return root


def write_source(root: Path, line: str) -> None:
    (root / "etc/apt/sources.list").write_text(line + "\n")


def apt(root: Path, *command: str) -> subprocess.CompletedProcess:
    """apt-get in the throw-away ``root``: none of this machine's sources, keys or
    proxy (its apt.conf.d is read before any -o, so the -o options say it all)."""
    options = [f"-oDir={root}", f"-oDir::State::status={root}/var/lib/dpkg/status",
               "-oAcquire::http::Proxy=DIRECT", "-oAPT::Sandbox::User=root",
               "-oDebug::NoLocking=1", "-oAcquire::Languages=none"]
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    return subprocess.run(["apt-get", *options, *command], capture_output=True, text=True,
                          timeout=APT_TIMEOUT, check=False, env=env, cwd=root)


def trust_by_signed_by(root: Path, key) -> str:
    return f"signed-by={key.keyring}"


def trust_as_dib_does(root: Path, key) -> str:
    """DIB_APT_KEYRING installed by dib.bootstrap: apt trusts trusted.gpg.d for all."""
    keyring = bootstrap.apt_keyring({"DIB_APT_KEYRING": str(key.keyring)})
    bootstrap.install_apt_keyring(keyring, root)
    return ""


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt-get")
@pytest.mark.parametrize("trust", [trust_by_signed_by, trust_as_dib_does])
def test_apt_reads_the_bumped_copy_over_http(tmp_path, key, trust):
    archive = make_archive(tmp_path, key)
    bumped = localmirror.bump_package(archive, SUITE, "hello", key)
    with localmirror.serve(archive) as served:
        assert not served.url.startswith("http://127.")
        root = apt_root(tmp_path / "apt")
        options = " ".join(["arch=amd64", trust(root, key)]).strip()
        write_source(root, f"deb [{options}] {served.url}/ {SUITE} main")
        update = apt(root, "update")
        assert update.returncode == 0 and "W:" not in update.stderr, update.stderr
        download = apt(root, "download", "hello")
    assert download.returncode == 0, download.stderr
    got = root / "hello_1.0-1+bump1_all.deb"
    assert got.read_bytes() == (archive / bumped.filename).read_bytes()


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt-get")
def test_apt_refuses_the_copy_without_its_key(tmp_path, key):
    archive = make_archive(tmp_path, key)
    localmirror.bump_package(archive, SUITE, "hello", key)
    with localmirror.serve(archive) as served:
        root = apt_root(tmp_path / "apt")
        write_source(root, f"deb [arch=amd64] {served.url}/ {SUITE} main")
        update = apt(root, "update")
    assert update.returncode != 0
    assert "NO_PUBKEY" in update.stderr or "not signed" in update.stderr, update.stderr


def test_drop_from_snapshot_leaves_the_deb_missing_not_the_blob(tmp_path):
    store = Store(tmp_path / "store")
    uri = "http://deb.example/debian"
    files = {}
    for path in ("pool/main/h/hello/hello_1.0-1_all.deb",
                 "pool/main/h/hello/hello-doc_1.0-1_all.deb",
                 "dists/snaptest/InRelease"):
        blob = store.put_bytes(path.encode())
        files[path] = FileRef(blob.sha256, blob.size)
    store.save(Snapshot("night-1", "2024-06-01T00:00:00Z", None,
                        {uri: ArchiveState(uri, {}, files)}, "run"))

    dropped = localmirror.drop_from_snapshot(tmp_path / "store", "night-1", "hello")
    assert dropped == f"{uri}/pool/main/h/hello/hello_1.0-1_all.deb"
    saved = store.load("night-1")
    assert sorted(saved.archives[uri].files) == ["dists/snaptest/InRelease",
                                                 "pool/main/h/hello/hello-doc_1.0-1_all.deb"]
    assert saved.missing == {uri: ["pool/main/h/hello/hello_1.0-1_all.deb"]}
    assert store.has(files["pool/main/h/hello/hello_1.0-1_all.deb"].sha256)
    with pytest.raises(LocalMirrorError, match="holds 0 pool files of hello"):
        localmirror.drop_from_snapshot(tmp_path / "store", "night-1", "hello")
