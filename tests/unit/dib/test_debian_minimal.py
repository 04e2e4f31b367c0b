"""dib's debian-minimal: diskimage-builder's settings and apt sources (no build)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dib import mirror
from dib.elements import bundled_elements_dir

ELEMENTS = bundled_elements_dir()
ENV_FILES = [
    ELEMENTS / "debian-minbase/environment.d/10-debian-minbase.bash",
    ELEMENTS / "debian-minimal/environment.d/10-debian-minimal.bash",
]
BASEINSTALL = ELEMENTS / "debian-minimal/root.d/75-debian-minimal-baseinstall"


def sourced(env: dict, *names: str) -> dict:
    script = 'for f in "$@"; do source "$f"; done; ' + "; ".join(
        f'printf "%s\\0" "${{{n}}}"' for n in names
    )
    done = subprocess.run(
        ["bash", "-euc", script, "env", *map(str, ENV_FILES)],
        env={"PATH": "/usr/bin:/bin", "_DIB_PYTHON": "false", **env},
        capture_output=True, text=True, check=True,
    )
    return dict(zip(names, done.stdout.split("\0")))


def test_sources_follow_diskimage_builders_layout():
    got = sourced(
        {"DIB_RELEASE": "bookworm", "DIB_DISTRIBUTION_MIRROR": "http://m.test/debian",
         "DIB_DEBIAN_SECURITY_MIRROR": "http://s.test/debian-security",
         "DIB_DEBIAN_COMPONENTS": "main,contrib"},
        "DIB_APT_SOURCES_CONF", "DIB_INIT_SYSTEM", "EFI_BOOT_DIR", "DIB_DEBOOTSTRAP_INCLUDE",
    )
    assert got["DIB_APT_SOURCES_CONF"].splitlines() == [
        "default:deb http://m.test/debian bookworm main contrib",
        "updates:deb http://m.test/debian bookworm-updates main contrib",
        "security:deb http://s.test/debian-security bookworm-security main contrib",
    ]
    assert got["DIB_INIT_SYSTEM"] == "systemd"
    assert got["EFI_BOOT_DIR"] == "EFI/debian"
    assert got["DIB_DEBOOTSTRAP_INCLUDE"].split() == [
        "systemd-sysv", "busybox", "sudo", "gnupg2", "python3"]


def test_no_known_security_archive_means_no_security_line():
    got = sourced({"DIB_RELEASE": "trixie", "DIB_DEBIAN_DISTRIBUTION_MIRROR": "http://m.test/d"},
                  "DIB_APT_SOURCES_CONF", "DIB_DISTRIBUTION_MIRROR")
    assert got["DIB_DISTRIBUTION_MIRROR"] == "http://m.test/d"
    assert [line.split(":")[0] for line in got["DIB_APT_SOURCES_CONF"].splitlines()] == [
        "default", "updates"]


@pytest.mark.parametrize("release", ["sid", "unstable", "testing"])
def test_unstable_suites_get_one_source(release):
    got = sourced({"DIB_RELEASE": release, "DIB_DISTRIBUTION_MIRROR": "http://m.test/d",
                   "DIB_DEBIAN_SECURITY_MIRROR": "http://s.test/s"}, "DIB_APT_SOURCES_CONF")
    assert got["DIB_APT_SOURCES_CONF"] == f"default:deb http://m.test/d {release} main"


def test_a_users_sources_conf_wins():
    got = sourced({"DIB_DISTRIBUTION_MIRROR": "http://m.test/d",
                   "DIB_APT_SOURCES_CONF": "mine:deb http://x.test/d bookworm main"},
                  "DIB_APT_SOURCES_CONF")
    assert got["DIB_APT_SOURCES_CONF"] == "mine:deb http://x.test/d bookworm main"


def run_baseinstall(tmp_path, conf: str) -> subprocess.CompletedProcess:
    (tmp_path / "etc/apt/sources.list.d").mkdir(parents=True)
    (tmp_path / "etc/apt/sources.list").write_text("deb http://old.test/d bookworm main\n")
    (tmp_path / "etc/apt/sources.list.d/old.list").write_text("old\n")
    return subprocess.run(
        ["bash", str(BASEINSTALL)],
        env={"PATH": "/usr/bin:/bin", "TARGET_ROOT": str(tmp_path),
             "DIB_APT_SOURCES_CONF": conf, "DIB_DEBIAN_MINIMAL_BASE_PACKAGES": ""},
        capture_output=True, text=True,
    )


def test_baseinstall_writes_one_list_per_line_and_nothing_else(tmp_path):
    done = run_baseinstall(tmp_path, "default:deb http://m.test/d bookworm main\n\n"
                                     "updates:deb http://m.test/d bookworm-updates main\n")
    assert done.returncode == 0, done.stderr
    apt = tmp_path / "etc/apt"
    assert not (apt / "sources.list").exists()
    assert sorted(p.name for p in (apt / "sources.list.d").iterdir()) == [
        "default.list", "updates.list"]
    assert (apt / "sources.list.d/updates.list").read_text() == (
        "deb http://m.test/d bookworm-updates main\n")


@pytest.mark.parametrize("line", ["../../etc/passwd:deb x", "no colon here", ":deb x", "a b:deb x"])
def test_baseinstall_refuses_a_name_that_is_not_a_file_name(tmp_path, line):
    done = run_baseinstall(tmp_path, line)
    assert done.returncode == 1
    assert "is not NAME:SOURCE-LINE" in done.stderr
    assert not (tmp_path / "etc/passwd").exists()


def test_security_mirror_comes_from_the_machines_apt_sources(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d/debian.sources").write_text(
        "Types: deb\nURIs: http://m.test/debian\nSuites: bookworm\nComponents: main\n\n"
        "Types: deb\nURIs: http://m.test/debian-security/\nSuites: bookworm-security\n"
        "Components: main\n")
    assert mirror.find_security_mirror(tmp_path) == "http://m.test/debian-security"
    assert mirror.find_mirror("debian", {}, tmp_path) == "http://m.test/debian"
    (tmp_path / "sources.list.d/debian.sources").write_text("")
    assert mirror.find_security_mirror(tmp_path) is None


def test_mirror_cli_usage_and_failure(capsys):
    assert mirror.main([]) == 2
    assert mirror.main(["debian", "extra"]) == 2
    assert "usage" in capsys.readouterr().err
    assert subprocess.run([sys.executable, "-m", "dib.mirror", "nosuchdistro"],
                          capture_output=True, env={"PATH": "/usr/bin:/bin"}).returncode == 1
