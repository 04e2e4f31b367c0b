"""matrix.config.hosts: host schema validation (errors name file, line and key) and loading."""

from pathlib import Path

import pytest

from matrix.config.diagnostics import ConfigError
from matrix.config.hosts import (
    BaseKind,
    BootstrapBase,
    BootstrapTool,
    ImageBase,
    PackageManager,
    RootfsBase,
    UnknownHost,
    load_host,
    load_hosts,
    select_hosts,
)

BUNDLED = {
    "debian-bullseye",
    "debian-bookworm",
    "debian-bookworm-rpmtools",
    "debian-trixie",
    "debian-sid",
    "ubuntu-jammy",
    "ubuntu-noble",
    "fedora-43",
    "centos-stream9",
    "opensuse-leap-15",
    "gentoo",
}
DIB_NEEDS = {"debootstrap", "e2fsprogs", "tar", "util-linux", "mtools", "dosfstools"}


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def issues_of(path: Path) -> list[tuple[int | None, str, str]]:
    with pytest.raises(ConfigError) as err:
        load_host(path)
    for issue in err.value.issues:
        assert issue.file == path
    return [(i.line, i.key, i.message) for i in err.value.issues]


def test_bundled_hosts_load():
    hosts = load_hosts()
    assert set(hosts) == BUNDLED
    for name in ("debian-bullseye", "debian-bookworm", "debian-trixie", "debian-sid"):
        assert hosts[name].kind is BaseKind.BOOTSTRAP
        assert hosts[name].package_manager is PackageManager.APT
        assert DIB_NEEDS | {"python3", "python3-yaml", "qemu-utils", "tox"} <= set(
            hosts[name].packages
        )
    for name in BUNDLED - {n for n in hosts if n.startswith("debian-")}:
        assert hosts[name].kind is BaseKind.IMAGE


def test_bundled_bootstrap_hosts_name_no_mirror():
    for host in load_hosts().values():
        if isinstance(host.base, BootstrapBase):
            assert host.base.mirror is None


def test_minimal_bootstrap_host(tmp_path):
    host = load_host(write(tmp_path, "deb", "name: deb\nbase:\n  bootstrap: bookworm\n"))
    assert host.base == BootstrapBase("bookworm")
    assert host.base.variant == "minbase"
    assert host.base.tool is BootstrapTool.DEBOOTSTRAP
    assert host.package_manager is PackageManager.APT
    assert host.packages == ()


def test_full_definition(tmp_path):
    (tmp_path / "root.tar").write_bytes(b"")
    path = write(
        tmp_path,
        "full",
        """\
name: full
description: everything
base:
  rootfs: root.tar
package-manager: dnf
packages: [python3, python3-pyyaml]
prepare: ["echo one"]
setup: ["echo two"]
environment:
  B: "2"
  A: 1
""",
    )
    host = load_host(path)
    assert host.base == RootfsBase(tmp_path / "root.tar")
    assert host.environment == (("A", "1"), ("B", "2"))
    assert host.prepare == ("echo one",)
    assert host.setup == ("echo two",)
    assert host.source == path


def test_every_error_is_reported_with_line_and_key(tmp_path):
    path = write(
        tmp_path,
        "bad",
        """\
name: bad
base:
  bootstrap:
    suite: Bookworm
    tool: cdebootstrap
    colour: blue
packages:
  - python3
  - "rm -rf /"
  - 7
setup: echo hi
environmnet:
  A: b
""",
    )
    found = issues_of(path)
    assert (4, "base.bootstrap.suite", "'Bookworm' is not a suite name") in found
    keyed = {key: (line, message) for line, key, message in found}
    assert keyed["base.bootstrap.tool"][0] == 5
    assert "debootstrap, mmdebstrap" in keyed["base.bootstrap.tool"][1]
    assert keyed["base.bootstrap.colour"][0] == 6
    assert keyed["packages[1]"] == (9, "'rm -rf /' is not a valid package name")
    assert keyed["packages[2]"][0] == 10
    assert keyed["setup"][0] == 11
    assert keyed["environmnet"][0] == 12
    assert "did you mean 'environment'" in keyed["environmnet"][1]
    assert len(found) == 7, found


def test_missing_required_keys(tmp_path):
    found = issues_of(write(tmp_path, "empty", "description: nothing here\n"))
    messages = sorted(message for _, _, message in found)
    assert messages == ["missing required key 'base'", "missing required key 'name'"]


def test_name_must_match_file(tmp_path):
    found = issues_of(write(tmp_path, "one", "name: two\nbase: {bootstrap: sid}\n"))
    assert found == [(1, "name", "'two' must match the file name ('one')")]


def test_base_needs_exactly_one_kind(tmp_path):
    text = "name: two-kinds\nbase:\n  image: fedora:43\n  bootstrap: sid\n"
    ((line, key, message),) = issues_of(write(tmp_path, "two-kinds", text))
    assert (line, key) == (2, "base")
    assert "exactly one of: bootstrap, image, rootfs" in message


def test_image_host_needs_package_manager(tmp_path):
    found = issues_of(write(tmp_path, "img", "name: img\nbase: {image: 'fedora:43'}\n"))
    assert found == [(2, "base", "'package-manager' is required for image and rootfs hosts")]


def test_image_reference_is_checked(tmp_path):
    text = "name: img\nbase:\n  image: 'Fedora 43'\npackage-manager: dnf\n"
    ((line, key, message),) = issues_of(write(tmp_path, "img", text))
    assert (line, key) == (3, "base.image")
    assert "not an image reference" in message


def test_image_reference_with_registry_port_and_digest(tmp_path):
    ref = "registry.invalid:5000/team/fedora:43@sha256:" + "a" * 64
    path = write(tmp_path, "img", f"name: img\nbase: {{image: '{ref}'}}\npackage-manager: dnf\n")
    assert load_host(path).base == ImageBase(ref)


def test_missing_rootfs_tarball(tmp_path):
    text = "name: tb\nbase:\n  rootfs: nowhere.tar\npackage-manager: apt\n"
    ((line, key, message),) = issues_of(write(tmp_path, "tb", text))
    assert (line, key) == (3, "base.rootfs")
    assert "does not exist" in message


def test_environment_rejects_newlines_and_bad_names(tmp_path):
    text = 'name: env\nbase: {bootstrap: sid}\nenvironment:\n  "1X": a\n  OK: "a\\nb"\n  L: [1]\n'
    found = issues_of(write(tmp_path, "env", text))
    assert found == [
        (4, "environment.1X", "'1X' is not a valid variable name"),
        (5, "environment.OK", "must not contain control characters or newlines"),
        (6, "environment.L", "must be a string or number, got a list"),
    ]


def test_duplicate_keys_are_errors(tmp_path):
    text = "name: dup\nbase: {bootstrap: sid}\npackages: [a]\npackages: [b]\n"
    found = issues_of(write(tmp_path, "dup", text))
    assert found == [(4, "packages", "duplicate key (first defined on line 3)")]


def test_not_a_mapping(tmp_path):
    found = issues_of(write(tmp_path, "list", "- a\n- b\n"))
    assert found == [(1, "", "a host file must be a mapping, got a list")]


def test_load_hosts_collects_errors_of_all_files(tmp_path):
    write(tmp_path, "a", "name: a\nbase: {bootstrap: sid}\nfoo: 1\n")
    write(tmp_path, "b", "name: b\nbase: {bootstrap: 'x y'}\n")
    write(tmp_path, "c", "name: c\nbase: {bootstrap: sid}\n")
    with pytest.raises(ConfigError) as err:
        load_hosts([tmp_path])
    assert [(i.file.name, i.line, i.key) for i in err.value.issues] == [
        ("a.yaml", 3, "foo"),
        ("b.yaml", 2, "base.bootstrap.suite"),
    ]


def test_later_directory_overrides(tmp_path):
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir()
    second.mkdir()
    write(first, "h", "name: h\nbase: {bootstrap: sid}\n")
    write(second, "h", "name: h\nbase: {bootstrap: trixie}\n")
    assert load_hosts([first, second])["h"].base.suite == "trixie"


def test_select_hosts_by_name_and_glob():
    hosts = load_hosts()
    names = [h.name for h in select_hosts(hosts, ["debian-b*", "gentoo"])]
    assert names == ["debian-bookworm", "debian-bookworm-rpmtools", "debian-bullseye", "gentoo"]
    assert len(select_hosts(hosts, [])) == len(BUNDLED)
    with pytest.raises(UnknownHost, match="no host matches 'debian-potato'"):
        select_hosts(hosts, ["debian-potato"])
