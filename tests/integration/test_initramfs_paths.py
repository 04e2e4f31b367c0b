"""dib's mkinitramfs stand-in gives the initramfs the real mkinitramfs gives, byte for byte.

A Debian kernel tree built by dib (tar), then in a chroot of it: initramfs-tools' own
mkinitramfs, and dib's stand-in (its path questions answered in the shell, no cache, no
pigz), both with the same SOURCE_DATE_EPOCH.
"""

import shutil
import subprocess
import tarfile

import pytest

from tests.integration.dibhelpers import REPO, dib_env, run_dib

pytestmark = pytest.mark.integration
SHIMS = REPO / "elements" / "dpkg" / "shims"


def build_kernel_tree(tmp_path_factory, image_cache, release):
    tmp = tmp_path_factory.mktemp(f"initramfs-paths-{release}")
    out = tmp / "out" / "kernel"
    args = ["-o", str(out), "-t", "tar", "--image-cache", str(image_cache),
            "-p", "linux-image-amd64,initramfs-tools", "debian-minbase"]
    built = run_dib(args, dib_env(tmp, {"DIB_RELEASE": release}))
    assert built.returncode == 0, built.stdout[-3000:]
    root = tmp / "root"
    root.mkdir()
    with tarfile.open(out.with_name("kernel.tar")) as tar:
        tar.extraction_filter = getattr(tarfile, "fully_trusted_filter", None)
        tar.extractall(root)
    shutil.copytree(SHIMS, root / "dib-shims")
    return root


@pytest.fixture(scope="module")
def kernel_tree(tmp_path_factory, image_cache):
    return build_kernel_tree(tmp_path_factory, image_cache, "bookworm")


def in_chroot(root, *argv):
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SOURCE_DATE_EPOCH": "1700000000",
           "DIB_INITRAMFS_PIGZ": "0"}
    return subprocess.run(["chroot", str(root), *argv], env=env, capture_output=True,
                          text=True, timeout=600)


def initramfs(root, command, name):
    """The bytes ``command`` (the real mkinitramfs or the stand-in) builds in ``root``."""
    version = next((root / "lib/modules").iterdir()).name
    done = in_chroot(root, command, "-o", f"/{name}", version)
    assert done.returncode == 0, done.stderr
    return (root / name).read_bytes(), done.stderr


def assert_same_initramfs(kernel_tree):
    built, _ = initramfs(kernel_tree, "/dib-shims/mkinitramfs", "shim.img")
    assert len(built) > 1 << 20
    assert built == initramfs(kernel_tree, "mkinitramfs", "plain.img")[0]


def test_the_stand_in_builds_the_same_initramfs_as_mkinitramfs(kernel_tree):
    assert_same_initramfs(kernel_tree)


@pytest.mark.slow
def test_the_same_initramfs_on_trixie(tmp_path_factory, image_cache):
    """trixie's initramfs-tools and coreutils: another copy_file, the same answers."""
    assert_same_initramfs(build_kernel_tree(tmp_path_factory, image_cache, "trixie"))


def test_a_failing_shell_leaves_it_to_the_real_mkinitramfs(kernel_tree):
    paths = kernel_tree / "dib-shims" / "mkinitramfs-paths.sh"
    kept = paths.read_text()
    paths.write_text("echo 'broken on purpose' >&2; exit 3\n")
    try:
        built, errors = initramfs(kernel_tree, "/dib-shims/mkinitramfs", "again.img")
    finally:
        paths.write_text(kept)
    assert "running it as it is" in errors
    assert built == initramfs(kernel_tree, "mkinitramfs", "plain2.img")[0]
