"""The identity scrub of a tree before it is cached: per-machine material goes, links are
never followed out of the tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dib.treescrub import KEYGEN_UNIT, scrub_identity


def write(root: Path, relative: str, text: str = "x\n") -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "root"
    write(root, "etc/machine-id", "0123456789abcdef0123456789abcdef\n")
    write(root, "var/lib/dbus/machine-id", "0123456789abcdef0123456789abcdef\n")
    for kind in ("rsa", "ecdsa", "ed25519"):
        write(root, f"etc/ssh/ssh_host_{kind}_key", "PRIVATE\n")
        write(root, f"etc/ssh/ssh_host_{kind}_key.pub", "PUBLIC\n")
    write(root, "etc/ssh/sshd_config", "Port 22\n")
    write(root, "var/lib/systemd/random-seed", "seed")
    write(root, "var/lib/systemd/credential.secret", "secret")
    write(root, "etc/udev/rules.d/70-persistent-net.rules", "rule")
    write(root, "usr/lib/systemd/systemd", "")
    return root


def test_per_machine_material_is_removed(tree):
    changed = scrub_identity(tree)
    assert (tree / "etc/machine-id").read_text() == ""
    assert not (tree / "var/lib/dbus/machine-id").exists()
    assert sorted(p.name for p in (tree / "etc/ssh").iterdir()) == ["sshd_config"]
    for gone in ("var/lib/systemd/random-seed", "var/lib/systemd/credential.secret",
                 "etc/udev/rules.d/70-persistent-net.rules"):
        assert not (tree / gone).exists()
    assert "etc/machine-id" in changed and "etc/ssh/ssh_host_ed25519_key" in changed


def test_removed_host_keys_are_made_at_first_boot(tree):
    scrub_identity(tree)
    unit = tree / "etc/systemd/system" / KEYGEN_UNIT
    assert "ExecStart=/usr/bin/ssh-keygen -A" in unit.read_text()
    assert "ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key" in unit.read_text()
    link = tree / "etc/systemd/system/multi-user.target.wants" / KEYGEN_UNIT
    assert os.readlink(link) == f"../{KEYGEN_UNIT}"


def test_no_unit_without_keys_or_without_systemd(tmp_path):
    plain = tmp_path / "plain"
    write(plain, "usr/lib/systemd/systemd", "")
    scrub_identity(plain)
    assert not (plain / "etc/systemd/system" / KEYGEN_UNIT).exists()
    nosystemd = tmp_path / "sysv"
    write(nosystemd, "etc/ssh/ssh_host_rsa_key")
    scrub_identity(nosystemd)
    assert not (nosystemd / "etc/ssh/ssh_host_rsa_key").exists()
    assert not (nosystemd / "etc/systemd").exists()


@pytest.mark.parametrize("value", ["", "uninitialized\n"])
def test_an_unset_machine_id_is_left_alone(tmp_path, value):
    write(tmp_path, "etc/machine-id", value)
    assert scrub_identity(tmp_path) == []
    assert (tmp_path / "etc/machine-id").read_text() == value


def test_a_scrub_is_idempotent(tree):
    scrub_identity(tree)
    assert scrub_identity(tree) == []


def test_a_dbus_link_to_the_machine_id_is_kept(tmp_path):
    write(tmp_path, "etc/machine-id", "")
    link = tmp_path / "var/lib/dbus/machine-id"
    link.parent.mkdir(parents=True)
    link.symlink_to("/etc/machine-id")
    scrub_identity(tmp_path)
    assert link.is_symlink()


@pytest.mark.parametrize("linked", ["etc", "etc/ssh", "var/lib/systemd", "var/lib/dbus",
                                    "etc/machine-id", "var/lib/systemd/random-seed"])
def test_links_in_the_tree_are_never_followed(tmp_path, linked):
    """The tree is the image's: a link in it may point at the build machine's files."""
    outside = tmp_path / "outside"
    for relative in ("etc/machine-id", "etc/ssh/ssh_host_rsa_key", "var/lib/systemd/random-seed",
                     "var/lib/dbus/machine-id"):
        write(outside, relative, "precious\n")
    root = tmp_path / "root"
    write(root, "usr/lib/systemd/systemd", "")
    link = root / linked
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside / linked)
    before = {p: p.read_text() for p in outside.rglob("*") if p.is_file()}
    scrub_identity(root)
    assert {p: p.read_text() for p in outside.rglob("*") if p.is_file()} == before
    assert not (outside / "systemd").exists() and not (outside / "etc/systemd").exists()


def test_a_non_regular_identity_file_is_left_alone(tmp_path):
    (tmp_path / "etc/ssh").mkdir(parents=True)
    os.mkfifo(tmp_path / "etc/ssh/ssh_host_rsa_key")
    os.mkfifo(tmp_path / "etc/machine-id")
    assert scrub_identity(tmp_path) == []
