"""The installed-tree cache for real: dib builds on this machine from one image cache.

A cold build stores the tree after post-install.d, scrubbed of per-machine identity; warm
builds restore it and run only the later phases. Their images carry no machine-id and no
ssh host keys (a unit makes them at first boot), the same packages as the cold image, and
a later phase's change; a change to an install.d hook misses the cache and is in the image.
The slow test boots two warm images and sees each make its own host keys.
"""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

import pytest

from dib.bootconsole import CheckStatus
from dib.treescrub import KEYGEN_UNIT
from matrix.verdict.verify import Expectation, summary, verify_images
from tests.integration.dibhelpers import build_mounts, dib_env, make_element, run_dib
from tests.integration.test_vm import needs_qemu
from tests.integration.test_vm_checks import boot

pytestmark = pytest.mark.integration

SSH_ELEMENT = {
    "element-deps": "package-installs\n",
    "package-installs.yaml": "openssh-server:\nsystemd:\n",
    "install.d/50-tree-marker": "#!/bin/sh\necho install-v1 > /etc/tree-marker\n",
    "finalise.d/50-final-marker": "#!/bin/sh\necho final-v1 > /etc/final-marker\n",
}


class Builds:
    """dib builds of debian-minbase + an element with openssh-server, sharing one cache."""

    def __init__(self, root: Path, image_cache: Path):
        self.root = root
        self.elements = root / "elements"
        make_element(self.elements, "ssh-tree", SSH_ELEMENT)
        self.cache = image_cache
        self.env = dib_env(root, {"DIB_RELEASE": "bookworm",
                                  "ELEMENTS_PATH": str(self.elements)})

    def build(self, name: str, types: str = "tar", extra_elements: tuple[str, ...] = (),
              **env: str):
        output = self.root / "out" / name
        done = run_dib(["-o", str(output), "-t", types, "--image-cache", str(self.cache),
                        "debian-minbase", "ssh-tree", *extra_elements],
                       {**self.env, **env}, timeout=1800)
        assert done.returncode == 0, done.stdout[-4000:]
        assert build_mounts() == []
        return done, output

    def edit(self, relative: str, text: str) -> None:
        (self.elements / "ssh-tree" / relative).write_text(text)


def tree_cache_line(log: str) -> str:
    found = re.findall(r"\| tree cache: ((?:hit|miss|stored|off)\b.*)", log)
    return found[-1] if found else ""


def members(image: Path) -> dict[str, bytes | None]:
    """The image's files of interest: name -> content (None for a link)."""
    wanted = re.compile(r"\./(etc/(machine-id|tree-marker|final-marker|ssh/ssh_host_.*)|"
                        rf"etc/systemd/system/(multi-user.target.wants/)?{KEYGEN_UNIT}|"
                        r"var/lib/dbus/machine-id|var/lib/systemd/random-seed)$")
    found = {}
    with tarfile.open(image) as tar:
        for member in tar:
            if wanted.match(member.name):
                data = tar.extractfile(member) if member.isfile() else None
                found[member.name[2:]] = data.read() if data else None
    return found


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """With an image cache of its own: the session's shared one would get a bookworm base
    before test_dib_build's cold build, which must find none."""
    root = tmp_path_factory.mktemp("tree-cache")
    return Builds(root, root / "image-cache")


@pytest.fixture(scope="module")
def cold_and_warm(builds):
    cold = builds.build("cold")
    warm = [builds.build(f"warm{i}") for i in (1, 2)]
    return cold, warm


def test_a_cold_build_stores_its_tree_and_warm_builds_start_from_it(cold_and_warm):
    (cold, _), warm = cold_and_warm
    assert tree_cache_line(cold.stdout).startswith("stored ")
    assert "running install.d/50-tree-marker" in cold.stdout
    for done, _ in warm:
        line = tree_cache_line(done.stdout)
        assert line.startswith("hit ") and "post-install.d from the cache" in line
        assert "running install.d/" not in done.stdout  # the cached phases did not run
        assert "running finalise.d/50-final-marker" in done.stdout


def test_no_image_carries_the_builds_identity(cold_and_warm):
    (_, cold_out), warm = cold_and_warm
    for output in [cold_out] + [out for _, out in warm]:
        image = output.with_name(output.name + ".tar")
        files = members(image)
        assert files["etc/machine-id"] == b""
        assert not [name for name in files if name.startswith("etc/ssh/ssh_host_")]
        assert "var/lib/systemd/random-seed" not in files
        assert b"ssh-keygen -A" in files[f"etc/systemd/system/{KEYGEN_UNIT}"]
        assert f"etc/systemd/system/multi-user.target.wants/{KEYGEN_UNIT}" in files
        assert files["etc/tree-marker"] == b"install-v1\n"
        assert files["etc/final-marker"] == b"final-v1\n"
        checks = verify_images([image], Expectation("debian", "bookworm"), image.parent, 300)
        assert summary(checks) is None, summary(checks)


def test_warm_images_hold_the_cold_images_packages(cold_and_warm):
    (_, cold_out), warm = cold_and_warm
    manifest = cold_out.with_name("cold.packages").read_text()
    assert "openssh-server" in manifest
    for _, output in warm:
        assert output.with_name(output.name + ".packages").read_text() == manifest


def test_a_later_phases_change_hits_and_is_in_the_image(builds, cold_and_warm):
    builds.edit("finalise.d/50-final-marker", "#!/bin/sh\necho final-v2 > /etc/final-marker\n")
    done, output = builds.build("final-changed")
    assert tree_cache_line(done.stdout).startswith("hit ")
    assert members(output.with_name("final-changed.tar"))["etc/final-marker"] == b"final-v2\n"


def test_an_install_hooks_change_misses_and_is_in_the_image(builds, cold_and_warm):
    builds.edit("install.d/50-tree-marker", "#!/bin/sh\necho install-v2 > /etc/tree-marker\n")
    done, output = builds.build("install-changed")
    line = tree_cache_line(done.stdout)
    assert line.startswith("stored "), line
    assert re.search(r"tree cache: miss \w+: no tree cached for these inputs", done.stdout)
    assert members(output.with_name("install-changed.tar"))["etc/tree-marker"] == \
        b"install-v2\n"


def test_off_runs_every_phase(builds, cold_and_warm):
    done, output = builds.build("off", DIB_TREE_CACHE="0")
    assert tree_cache_line(done.stdout) == "off: DIB_TREE_CACHE=0"
    assert "running install.d/50-tree-marker" in done.stdout
    hook = (builds.elements / "ssh-tree/install.d/50-tree-marker").read_text()
    marker = re.search(r"echo (\S+) >", hook)[1]
    assert members(output.with_name("off.tar"))["etc/tree-marker"] == f"{marker}\n".encode()


VM_ELEMENTS = ("vm", "boot-marker", "growroot", "boot-checks")


@pytest.mark.slow
@needs_qemu
def test_two_warm_images_boot_and_each_makes_its_own_host_keys(tmp_path):
    """Both from one cached tree, both booted: each machine made its machine-id and ssh
    host keys at its first boot, and the keys differ."""
    vms = Builds(tmp_path, tmp_path / "image-cache")
    vms.build("vm-cold", "qcow2", VM_ELEMENTS)
    prints = []
    for name in ("vm-warm1", "vm-warm2"):
        done, output = vms.build(name, "qcow2", VM_ELEMENTS)
        said = re.findall(r"\| tree cache: .*", done.stdout)
        assert tree_cache_line(done.stdout).startswith("hit "), said
        image = output.with_name(f"{name}.qcow2")
        checks = verify_images([image], Expectation("debian", "bookworm"), image.parent, 300)
        assert summary(checks) is None, summary(checks)
        result = boot(image, tmp_path / f"{name}-serial.log")
        assert result.passed, result.evidence
        identity = next(c for c in result.checks if c.name == "identity")
        assert identity.status is CheckStatus.PASS, identity
        assert "machine-id made at this boot" in identity.detail
        found = re.search(r"ssh host keys made at this boot \((SHA256:\S+)\)", identity.detail)
        assert found, identity.detail
        prints.append(found[1])
    assert prints[0] != prints[1]
