import urllib.error

import pytest

from dib import bootstrap
from dib.errors import DibError


def spec(**overrides):
    values = dict(
        distro="debian",
        release="bookworm",
        arch="amd64",
        mirror="http://m.example/debian",
        variant="minbase",
        components=("main",),
        include=(),
    )
    values.update(overrides)
    return bootstrap.BaseSpec(**values)


def test_missing_script_uses_debootstraps_wording(tmp_path, monkeypatch):
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "bookworm").write_text("")
    monkeypatch.setattr(bootstrap.shutil, "which", lambda name: "/usr/sbin/" + name)
    env = {"DEBOOTSTRAP_DIR": str(tmp_path)}
    bootstrap.check_script("bookworm", env)
    with pytest.raises(DibError) as err:
        bootstrap.check_script("forky", env)
    assert str(err.value) == f"No such script: {tmp_path}/scripts/forky"


def test_cache_key_changes_with_every_input():
    keys = {
        spec().key,
        spec(release="trixie").key,
        spec(mirror="http://other/debian").key,
        spec(include=("vim",)).key,
        spec(arch="arm64").key,
        spec(variant="buildd").key,
    }
    assert len(keys) == 6
    assert spec().key == spec().key


def test_probe_404_says_the_suite_is_not_carried():
    def opener(url, timeout):
        raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)

    with pytest.raises(DibError, match="does not carry suite 'bookworm'"):
        bootstrap.probe_mirror(spec(), opener=opener, sleep=lambda s: None)


def test_probe_unreachable_gives_up_after_bounded_attempts():
    calls = []

    def opener(url, timeout):
        calls.append(timeout)
        raise urllib.error.URLError("Connection refused")

    with pytest.raises(DibError, match=r"unreachable: Connection refused \(after 3 attempts\)"):
        bootstrap.probe_mirror(spec(), opener=opener, sleep=lambda s: None)
    assert calls == [bootstrap.PROBE_TIMEOUT_SECONDS] * bootstrap.PROBE_ATTEMPTS


def test_probe_retries_then_succeeds():
    answers = [urllib.error.URLError("timed out"), None]

    def opener(url, timeout):
        answer = answers.pop(0)
        if answer:
            raise answer

    bootstrap.probe_mirror(spec(), opener=opener, sleep=lambda s: None)
    assert answers == []


def test_spec_reads_the_environment():
    env = {
        "DISTRO_NAME": "debian",
        "DIB_RELEASE": "trixie",
        "ARCH": "amd64",
        "DIB_DISTRIBUTION_MIRROR": "http://m.example/debian",
        "DIB_DEBIAN_COMPONENTS": "main,contrib",
        "DIB_DEBOOTSTRAP_INCLUDE": "vim less",
    }
    got = bootstrap.spec_from_env(env)
    assert got.components == ("main", "contrib")
    assert got.include == ("less", "vim")
    assert got.cache_file(bootstrap.Path("/c")).name.startswith("debian-trixie-amd64-")


def test_debootstrap_runs_with_unsafe_io_and_leaves_no_trace(tmp_path, monkeypatch):
    seen = {}

    def fake_run(cmd, tag, timeout):
        cfg = tmp_path / bootstrap.UNSAFE_IO
        seen["cfg"] = cfg.read_text() if cfg.exists() else None
        if "fail" in cmd:
            raise bootstrap.CommandFailed("debootstrap", 1, ["E: boom"])

    monkeypatch.setattr(bootstrap, "run", fake_run)
    bootstrap.debootstrap(spec(), tmp_path, 10)
    assert seen["cfg"] == "force-unsafe-io\n"
    assert not (tmp_path / bootstrap.UNSAFE_IO).exists()
    with pytest.raises(DibError):
        bootstrap.debootstrap(spec(release="fail"), tmp_path, 10)
    assert not (tmp_path / bootstrap.UNSAFE_IO).exists()
