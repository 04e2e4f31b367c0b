"""DIB_APT_KEYRING: the keyring a private or test archive is signed with. debootstrap
gets it as --keyring, the local suite checks the InRelease with it, apt in the image
trusts it; a keyring that cannot serve stops the build before debootstrap, naming the
variable and the path (debootstrap itself replaced)."""

import os
import re
import shutil
import stat
import tarfile
from pathlib import Path

import pytest

from dib import bootstrap, failure, suiteview
from dib.bootstrap import IMAGE_KEYRING, AptKeyring
from dib.errors import ConfigError, DibError

# Hand-made OpenPGP packets (RFC 4880 4.2): the format check reads headers only.
PUBLIC_OLD = b"\x99\x00\x03pub"  # old format, tag 6, two-byte length
PUBLIC_NEW = b"\xc6\x03pub"  # new format, tag 6
USER_ID = b"\xb4\x04user"  # old format, tag 13, one-byte length
SECRET_KEY = b"\x95\x00\x03sec"  # tag 5
SECRET_SUBKEY = b"\xc7\x03sec"  # tag 7
KEYRING = PUBLIC_OLD + USER_ID + PUBLIC_NEW


def spec():
    return bootstrap.BaseSpec("debian", "bookworm", "amd64", "http://m.invalid/debian",
                              "minbase", ("main",), ())


@pytest.fixture
def base_env(tmp_path, monkeypatch):
    monkeypatch.setattr(bootstrap, "check_script", lambda release, env: None)
    monkeypatch.setattr(bootstrap, "probe_mirror", lambda spec: None)
    monkeypatch.setattr(bootstrap.debprefetch, "prefetch", lambda *a, **k: None)
    (tmp_path / "root").mkdir()
    ring = tmp_path / "keys" / "archive key.gpg"  # a space: one argv word all the same
    ring.parent.mkdir()
    ring.write_bytes(KEYRING)
    ring.chmod(0o600)
    return {"DIB_RELEASE": "bookworm", "DIB_DISTRIBUTION_MIRROR": "http://m.invalid/debian",
            "DIB_IMAGE_CACHE": str(tmp_path / "cache"), "TARGET_ROOT": str(tmp_path / "root"),
            "TMPDIR": str(tmp_path), "DIB_DEBOOTSTRAP_LOCAL_SUITE": "0",
            "DIB_APT_KEYRING": str(ring)}


def fake_debootstrap(calls):
    def debootstrap(spec, root, timeout, mirror="", options=()):
        calls.append((mirror, options))
        (root / "etc/apt/trusted.gpg.d").mkdir(parents=True, exist_ok=True)
    return debootstrap


def test_debootstrap_command_checks_with_the_keyring():
    keyring = AptKeyring(Path("/k/archive key.gpg"), KEYRING)
    cmd = bootstrap.debootstrap_command(spec(), Path("/r"), "http://m/debian",
                                        bootstrap.keyring_options(keyring))
    assert cmd == ["debootstrap", "--variant=minbase", "--arch=amd64", "--components=main",
                   "--keyring=/k/archive key.gpg", "bookworm", "/r", "http://m/debian"]
    assert bootstrap.keyring_options(None) == ()


def test_plain_debootstrap_gets_it_and_apt_in_the_image_trusts_it(base_env, tmp_path,
                                                                    monkeypatch):
    calls = []
    monkeypatch.setattr(bootstrap, "debootstrap", fake_debootstrap(calls))
    cache_file = bootstrap.prepare_root(base_env)
    assert calls == [("", (f"--keyring={base_env['DIB_APT_KEYRING']}",))]
    installed = tmp_path / "root" / IMAGE_KEYRING
    assert installed.read_bytes() == KEYRING
    assert stat.S_IMODE(installed.stat().st_mode) == 0o644  # apt reads it as _apt
    with tarfile.open(cache_file) as cached:  # the cached base never trusts it
        assert not [n for n in cached.getnames() if n.endswith("dib-apt-keyring.gpg")]

    shutil.rmtree(tmp_path / "root")
    (tmp_path / "root").mkdir()
    bootstrap.prepare_root(base_env)  # from the cache: trusted all the same
    assert installed.read_bytes() == KEYRING
    assert len(calls) == 1

    shutil.rmtree(tmp_path / "root")
    (tmp_path / "root").mkdir()
    bootstrap.prepare_root({k: v for k, v in base_env.items() if k != "DIB_APT_KEYRING"})
    assert not installed.exists()


def test_a_symlink_at_the_name_is_replaced_not_followed(base_env, tmp_path, monkeypatch):
    monkeypatch.setattr(bootstrap, "debootstrap", fake_debootstrap([]))
    outside = tmp_path / "outside"
    outside.write_text("untouched")
    (tmp_path / "root" / IMAGE_KEYRING).parent.mkdir(parents=True)
    (tmp_path / "root" / IMAGE_KEYRING).symlink_to(outside)
    bootstrap.prepare_root(base_env)
    assert outside.read_text() == "untouched"
    assert (tmp_path / "root" / IMAGE_KEYRING).read_bytes() == KEYRING


def test_a_keyring_that_cannot_be_installed_is_a_dib_error(base_env, tmp_path, monkeypatch):
    def debootstrap(spec, root, timeout, mirror="", options=()):
        (root / "etc/apt").mkdir(parents=True)
        (root / "etc/apt/trusted.gpg.d").write_text("a file, not a directory")

    monkeypatch.setattr(bootstrap, "debootstrap", debootstrap)
    with pytest.raises(DibError, match=r"^DIB_APT_KEYRING: cannot install it as "
                                       r"/etc/apt/trusted.gpg.d/dib-apt-keyring.gpg"):
        bootstrap.prepare_root(base_env)


def test_the_local_suite_checks_the_inrelease_with_it(base_env, tmp_path, monkeypatch):
    scripts = tmp_path / "debootstrap" / "scripts"
    scripts.mkdir(parents=True)
    (scripts / "bookworm").write_text("keyring /usr/share/keyrings/script.gpg\n")
    env = {**base_env, "DIB_DEBOOTSTRAP_LOCAL_SUITE": "1",
           "DEBOOTSTRAP_DIR": str(tmp_path / "debootstrap")}
    checked_with = []

    def prepare(*args):
        checked_with.append(args[-1])
        raise suiteview.ViewError("stop here")

    monkeypatch.setattr(suiteview, "prepare", prepare)
    monkeypatch.setattr(bootstrap, "debootstrap", fake_debootstrap([]))
    bootstrap.prepare_root(env)
    shutil.rmtree(env["DIB_IMAGE_CACHE"])  # a cold debootstrap again
    del env["DIB_APT_KEYRING"]
    bootstrap.prepare_root(env)
    assert checked_with == [base_env["DIB_APT_KEYRING"], "/usr/share/keyrings/script.gpg"]
    assert suiteview.keyring_for(scripts / "bookworm", Path("/k/r.gpg")) == "/k/r.gpg"
    assert suiteview.keyring_for(scripts / "bookworm") == "/usr/share/keyrings/script.gpg"


@pytest.mark.skipif(shutil.which("gpg") is None or shutil.which("gpgv") is None,
                    reason="needs gpg and gpgv")
def test_a_real_inrelease_verifies_against_its_own_keyring_only(tmp_path):
    from tests.gpgkeys import signing_key  # standard library only, as dib's tests

    with signing_key(tmp_path, "Key One <one@example.invalid>") as key, \
            signing_key(tmp_path, "Key Two <two@example.invalid>") as other:
        inrelease = key.clearsign(b"Origin: test\nSuite: test\n")
        assert bootstrap.keyring_problem(key.keyring.read_bytes()) is None  # gpg --export's
        suiteview.verify_inrelease(inrelease, str(key.keyring), tmp_path)
        with pytest.raises(suiteview.ViewError, match="signature not verified"):
            suiteview.verify_inrelease(inrelease, str(other.keyring), tmp_path)
        secret = key.gpg("--export-secret-keys", key.uid)
        assert "secret key" in bootstrap.keyring_problem(secret)


@pytest.mark.parametrize("data", [KEYRING, PUBLIC_NEW, PUBLIC_OLD])
def test_public_keyrings_pass(data):
    assert bootstrap.keyring_problem(data) is None


DEBIAN_KEYRING = Path(suiteview.DEFAULT_KEYRING)


@pytest.mark.skipif(not DEBIAN_KEYRING.is_file(), reason="no debian-archive-keyring here")
def test_debians_own_keyring_passes():
    assert bootstrap.apt_keyring({"DIB_APT_KEYRING": str(DEBIAN_KEYRING)}).path == (
        DEBIAN_KEYRING)


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _large(path: Path) -> None:
    with path.open("wb") as out:
        out.truncate(bootstrap.APT_KEYRING_MAX_BYTES + 1)


def _dangling(path: Path) -> None:
    path.symlink_to(path.parent / "nowhere")


# (name, how the path is made, the end of the message)
BAD_KEYRINGS = [
    ("missing", None, "does not exist"),
    ("dangling", _dangling, "does not exist"),
    ("directory", Path.mkdir, r"cannot be read: not a regular file \(a directory\)"),
    ("fifo", _fifo, r"cannot be read: not a regular file \(a FIFO\)"),
    ("large", _large, "cannot be read: larger than 16 MiB: refused"),
    ("empty", lambda p: p.write_bytes(b""), "is empty"),
    ("armored", lambda p: p.write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQ==\n"),
     r"is ASCII-armored: give the binary keyring \(gpg --dearmor FILE\)"),
    ("keybox", lambda p: p.write_bytes(b"\x00\x00\x00\x20\x01\x01\x00\x02KBXf" + bytes(20)),
     "is a GnuPG keybox"),
    ("text", lambda p: p.write_text("deb http://m/debian bookworm main\n"),
     r"is not an OpenPGP keyring \(no OpenPGP packet at byte 0\)"),
    ("truncated", lambda p: p.write_bytes(PUBLIC_OLD + b"\x99\x00\x30short"),
     r"is not an OpenPGP keyring \(truncated OpenPGP packet\)"),
    ("bad-length", lambda p: p.write_bytes(b"\xc6\xe5partial"),
     r"is not an OpenPGP keyring \(bad OpenPGP packet length\)"),
    ("secret", lambda p: p.write_bytes(SECRET_KEY + USER_ID), "holds a secret key"),
    ("secret-subkey", lambda p: p.write_bytes(PUBLIC_NEW + USER_ID + SECRET_SUBKEY),
     "holds a secret key"),
    ("no-public-key", lambda p: p.write_bytes(USER_ID), "holds no public key"),
]


@pytest.mark.parametrize("name, make, why", BAD_KEYRINGS, ids=[c[0] for c in BAD_KEYRINGS])
def test_a_bad_keyring_stops_the_build_before_debootstrap(base_env, tmp_path, monkeypatch,
                                                          name, make, why):
    path = tmp_path / f"bad {name}\nring.gpg"  # a newline: the message stays one line
    if make:
        make(path)
    env = {**base_env, "DIB_APT_KEYRING": str(path)}
    started = []
    monkeypatch.setattr(bootstrap, "probe_mirror", lambda spec: started.append("probe"))
    monkeypatch.setattr(bootstrap, "debootstrap", lambda *a, **k: started.append("run"))
    named = re.escape(f"DIB_APT_KEYRING={str(path)!r} ")
    with pytest.raises(ConfigError, match=f"^{named}{why}") as err:
        bootstrap.prepare_root(env)
    assert started == []
    assert "\n" not in str(err.value)
    assert not (tmp_path / "root" / IMAGE_KEYRING).exists()


def test_a_relative_path_is_refused(base_env):
    with pytest.raises(ConfigError, match="^DIB_APT_KEYRING='keys/ring.gpg' is not an "
                                          "absolute path$"):
        bootstrap.prepare_root({**base_env, "DIB_APT_KEYRING": "keys/ring.gpg"})


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_keyring_is_refused(base_env, tmp_path):
    ring = Path(base_env["DIB_APT_KEYRING"])
    ring.chmod(0)
    with pytest.raises(ConfigError, match="cannot be read: Permission denied"):
        bootstrap.prepare_root(base_env)


def test_the_failure_record_names_the_setting(base_env, tmp_path, monkeypatch):
    monkeypatch.setattr(bootstrap, "debootstrap", lambda *a, **k: pytest.fail("ran"))
    detail_file = tmp_path / "detail"
    env = {**base_env, "DIB_APT_KEYRING": str(tmp_path / "none.gpg"),
           failure.HOOK_DETAIL_VAR: str(detail_file)}
    assert bootstrap.main(env) == 1
    detail = failure.read_hook_detail(detail_file)
    assert detail == {"kind": "config",
                      "error": f"DIB_APT_KEYRING='{tmp_path}/none.gpg' does not exist"}


def test_a_debootstrap_failure_is_still_recorded_as_one(base_env, tmp_path, monkeypatch):
    def debootstrap(*args, **kwargs):
        raise DibError("debootstrap of bookworm from http://m.invalid/debian failed")

    monkeypatch.setattr(bootstrap, "debootstrap", debootstrap)
    detail_file = tmp_path / "detail"
    assert bootstrap.main({**base_env, failure.HOOK_DETAIL_VAR: str(detail_file)}) == 1
    assert failure.read_hook_detail(detail_file)["kind"] == "debootstrap"
