"""dib.rpmbase (the dnf and zypper base trees) and the RPM elements' package data."""

from pathlib import Path

import pytest

from dib import rpmbase
from dib.elements import index_elements, resolve
from dib.packages import Distro, plan_packages
from dib.rpmbase import Repo, RepoConfigError

ELEMENTS = Path(__file__).resolve().parents[2] / "elements"


def test_release_and_arch_as_rpm_distributions_spell_them():
    assert rpmbase.releasever("43") == "43"
    assert rpmbase.releasever("9-stream") == "9"
    assert rpmbase.rpm_arch("amd64") == "x86_64"
    assert rpmbase.rpm_arch("arm64") == "aarch64"
    assert rpmbase.rpm_arch("x86_64") == "x86_64"


def test_fedora_and_centos_repositories_under_the_mirror():
    env = {"DIB_DISTRIBUTION_MIRROR": "http://m.example/pub/"}
    fedora = rpmbase.dnf_repos("fedora", "43", env)
    assert fedora == [
        Repo("fedora", "http://m.example/pub/releases/$releasever/Everything/$basearch/os/"),
        Repo("updates", "http://m.example/pub/updates/$releasever/Everything/$basearch/"),
    ]
    centos = rpmbase.dnf_repos("centos", "9-stream", env)
    assert [r.url for r in centos] == [
        "http://m.example/pub/$releasever-stream/BaseOS/$basearch/os/",
        "http://m.example/pub/$releasever-stream/AppStream/$basearch/os/",
    ]


def test_no_mirror_is_a_config_error_naming_the_variables():
    with pytest.raises(RepoConfigError, match="DIB_DISTRIBUTION_MIRROR.*DIB_YUM_MINIMAL_"
                                              "BOOTSTRAP_REPOS"):
        rpmbase.dnf_repos("fedora", "43", {"DIB_DISTRIBUTION_MIRROR": "  "})
    with pytest.raises(RepoConfigError, match="DIB_OPENSUSE_MIRROR.*ZYPPER_REPOS"):
        rpmbase.zypper_repos("15.6", {})
    with pytest.raises(RepoConfigError, match="not fedora or centos"):
        rpmbase.dnf_repos("rocky", "9", {"DIB_DISTRIBUTION_MIRROR": "http://m"})


def test_repo_file_keeps_the_variables_for_the_image_dnf():
    text = rpmbase.repo_file_text("fedora", [Repo("fedora", "http://m/$releasever/")], False)
    assert text.splitlines() == [
        "[dib-fedora]",
        "name=dib: fedora $releasever - fedora",
        "baseurl=http://m/$releasever/",
        "enabled=1",
        "gpgcheck=0",
        "skip_if_unavailable=False",
    ]
    assert "gpgcheck=1" in rpmbase.repo_file_text("centos", [Repo("a", "http://m/")], True)


def test_opensuse_repositories():
    env = {"DIB_OPENSUSE_MIRROR": "http://m/opensuse/"}
    assert rpmbase.zypper_repos("15.6", env) == [
        Repo("oss", "http://m/opensuse/distribution/leap/15.6/repo/oss/"),
        Repo("update", "http://m/opensuse/update/leap/15.6/oss/"),
    ]
    assert rpmbase.zypper_repos("tumbleweed", env)[0].url == "http://m/opensuse/tumbleweed/repo/oss/"
    with pytest.raises(RepoConfigError, match="unsupported openSUSE release '42.3'"):
        rpmbase.zypper_repos("42.3", env)


def test_zypper_repos_as_upstream_writes_them():
    env = {"ZYPPER_REPOS": "oss=>http://a/oss/ update=>http://a/u/", "DIB_OPENSUSE_MIRROR": "x"}
    assert rpmbase.zypper_repos("15.6", env) == [Repo("oss", "http://a/oss/"),
                                                 Repo("update", "http://a/u/")]
    with pytest.raises(RepoConfigError, match="'http://a/' is not NAME=>URI"):
        rpmbase.zypper_repos("15.6", {"ZYPPER_REPOS": "http://a/"})


def test_flags():
    assert rpmbase.flag({}, "X", True) is True
    assert rpmbase.flag({"X": "0"}, "X", True) is False
    assert rpmbase.flag({"X": "false"}, "X", True) is False
    assert rpmbase.flag({"X": "1"}, "X", False) is True


def test_dnf_command_installs_into_the_root_with_the_release():
    cmd = rpmbase.dnf_command(Path("/r"), Path("/c/dnf.conf"), Path("/c/repos"),
                              Path("/cache"), "9-stream", "amd64", ["a", "b"])
    assert cmd[:2] == ["dnf", "-y"]
    assert "--installroot=/r" in cmd
    assert "--releasever=9" in cmd
    assert "--forcearch=x86_64" in cmd
    assert "--setopt=reposdir=/c/repos" in cmd
    assert "--config=/c/dnf.conf" in cmd
    assert cmd[-3:] == ["install", "a", "b"]


def test_zypper_commands_and_gpg_checks():
    base = rpmbase.zypper_base(Path("/r"), Path("/cache"), gpgcheck=True)
    assert base[:5] == ["zypper", "--non-interactive", "--gpg-auto-import-keys", "--root", "/r"]
    assert "--no-gpg-checks" not in base
    assert "--no-gpg-checks" in rpmbase.zypper_base(Path("/r"), Path("/c"), gpgcheck=False)
    add = rpmbase.zypper_addrepo(base, Repo("oss", "http://m/oss/"), gpgcheck=False)
    assert add[len(base):] == ["addrepo", "--keep-packages", "--no-gpgcheck", "--name",
                               "dib: oss", "http://m/oss/", "oss"]
    assert rpmbase.zypper_install(base, ["a"])[len(base):] == ["install", "--no-recommends", "a"]


def test_rpm_home_points_the_database_into_the_root():
    with rpmbase.rpm_home() as home:
        assert Path(home, ".rpmmacros").read_text() == "%_dbpath /var/lib/rpm\n"
    with rpmbase.rpm_home("/usr/lib/sysimage/rpm") as home:
        assert "%_dbpath /usr/lib/sysimage/rpm" in Path(home, ".rpmmacros").read_text()
    assert not Path(home).exists()


def test_finish_tree(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "resolv.conf").symlink_to("/run/somewhere")
    (tmp_path / "etc" / "x.conf.rpmnew").write_text("new")
    (tmp_path / "etc" / "x.conf").write_text("old")
    rpmbase.finish_tree(tmp_path)
    assert (tmp_path / "etc" / "resolv.conf").read_text().startswith("# This file")
    assert (tmp_path / "etc" / "locale.conf").read_text() == 'LANG="en_US.UTF-8"\n'
    assert str((tmp_path / "etc" / "localtime").readlink()) == "/usr/share/zoneinfo/UTC"
    assert (tmp_path / "etc" / "x.conf").read_text() == "new"
    assert not (tmp_path / "etc" / "x.conf.rpmnew").exists()


def test_installed_rpms_without_a_database_is_empty(tmp_path):
    assert rpmbase.installed_rpms(tmp_path) == []


def test_main_without_the_tool_says_so_and_tells_dib(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(rpmbase.shutil, "which", lambda tool: None)
    detail = tmp_path / "detail"
    env = {"DIB_HOOK_FAILURE_FILE": str(detail), "TARGET_ROOT": str(tmp_path / "mnt"),
           "DIB_IMAGE_CACHE": str(tmp_path / "cache")}
    assert rpmbase.main(["zypper"], env) == 1
    assert "zypper not available" in capsys.readouterr().out
    assert "error=zypper not available" in detail.read_text()
    assert "kind=config" in detail.read_text()
    assert rpmbase.main(["apt"], env) == 2


def test_main_without_a_repository_fails_before_any_tool_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(rpmbase.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    ran = []
    monkeypatch.setattr(rpmbase, "run", lambda *a, **k: ran.append(a))
    env = {"DISTRO_NAME": "opensuse", "DIB_RELEASE": "15.6",
           "TARGET_ROOT": str(tmp_path / "mnt"), "DIB_IMAGE_CACHE": str(tmp_path / "cache")}
    assert rpmbase.main(["zypper"], env) == 1
    assert "set DIB_OPENSUSE_MIRROR" in capsys.readouterr().out
    assert ran == []


# ---- the elements' package-installs and pkg-map, as dib plans them -------------------

def _planned(element: str, distro: str, release: str) -> list:
    index = index_elements([ELEMENTS])
    resolution = resolve(["base", element], index)
    plan = plan_packages(resolution.elements, Distro(distro, release), "amd64", {})
    return plan["install.d"].install


def test_yum_minimal_packages_per_distro():
    fedora = _planned("fedora-minimal", "fedora", "43")
    assert fedora == ["audit", "dracut", "dracut-config-generic", "grubby", "kernel",
                      "lsb_release"]
    centos = _planned("centos-minimal", "centos", "9-stream")
    assert "lsb_release" not in centos and "redhat-lsb-core" not in centos
    assert "kernel" in centos
    # another Red Hat-family release: the family name
    assert "redhat-lsb-core" in _planned("centos-minimal", "centos", "8-stream")


def test_zypper_minimal_packages():
    assert _planned("opensuse-minimal", "opensuse", "15.6") == [
        "kernel-default", "bash", "lsb-release", "openssl", "sed", "sudo"]


def test_rpm_elements_provide_the_operating_system():
    index = index_elements([ELEMENTS])
    for element, tool_element in (("fedora-minimal", "yum-minimal"),
                                  ("centos-minimal", "yum-minimal"),
                                  ("opensuse-minimal", "zypper-minimal")):
        names = resolve(["base", element], index).names
        assert tool_element in names and "package-installs" in names


def test_database_where_the_image_rpm_looks():
    assert rpmbase.rpm_dbpath("fedora", "43", {}) == "/usr/lib/sysimage/rpm"
    assert rpmbase.rpm_dbpath("fedora", "35", {}) == "/var/lib/rpm"
    assert rpmbase.rpm_dbpath("centos", "9-stream", {}) == "/var/lib/rpm"
    assert rpmbase.rpm_dbpath("centos", "10-stream", {}) == "/usr/lib/sysimage/rpm"
    assert rpmbase.rpm_dbpath("opensuse", "15.6", {}) == "/usr/lib/sysimage/rpm"
    assert rpmbase.rpm_dbpath("fedora", "43", {"DIB_RPM_DBPATH": "/x/rpm"}) == "/x/rpm"


def test_init_rpmdb_links_the_old_path(tmp_path):
    rpmbase.init_rpmdb(tmp_path / "a", "/usr/lib/sysimage/rpm")
    assert (tmp_path / "a/usr/lib/sysimage/rpm").is_dir()
    assert str((tmp_path / "a/var/lib/rpm").readlink()) == "../../usr/lib/sysimage/rpm"
    rpmbase.init_rpmdb(tmp_path / "b", "/var/lib/rpm")
    assert (tmp_path / "b/var/lib/rpm").is_dir()
    assert not (tmp_path / "b/var/lib/rpm").is_symlink()


def test_offline_uses_the_caches_only():
    cmd = rpmbase.dnf_command(Path("/r"), Path("/c"), Path("/d"), Path("/k"), "43", "amd64",
                              ["a"], offline=True)
    assert "--cacheonly" in cmd
    assert "--cacheonly" not in rpmbase.dnf_command(Path("/r"), Path("/c"), Path("/d"),
                                                    Path("/k"), "43", "amd64", ["a"])
    assert "--no-refresh" in rpmbase.zypper_base(Path("/r"), Path("/k"), True, offline=True)


def test_release_repo_files_are_set_aside_for_the_mirror(tmp_path):
    repos = tmp_path / "etc/yum.repos.d"
    repos.mkdir(parents=True)
    for name in ("fedora.repo", "fedora-updates.repo", "dib-fedora.repo"):
        (repos / name).write_text("[x]\n")
    rpmbase._set_aside_release_repos(tmp_path, "dib-fedora.repo")
    assert sorted(p.name for p in repos.iterdir()) == [
        "dib-fedora.repo", "fedora-updates.repo.dib-disabled", "fedora.repo.dib-disabled"]
