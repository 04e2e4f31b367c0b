"""Image verification of real dib builds on this machine: debian-minbase bookworm as tar
and qcow2 passes every check within its time budget; a target that declares forky but
whose element pins bookworm fails with ``image is bookworm, target wants forky``; a
partitioned disk assembled by dib.blockdevice.disk carries its layout record and passes.

Timings are printed (run with -s to see them).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from dib.blockdevice.disk import assemble
from dib.blockdevice.layout import parse_layout_text
from dib.blockdevice.plan import make_plan, save_plan
from matrix.config.targets import Target, load_target
from matrix.verdict.verify import expectation_for, summary, verify_images
from results.model import ImageCheck
from tests.integration.dibhelpers import REPO, dib_env, run_dib

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parent / "data"
ELEMENTS = DATA / "elements"
TAR_BUDGET = 2.0  # seconds for all checks of a tar target
QCOW2_BUDGET = 10.0  # seconds for all checks of a 2 GiB-virtual qcow2


def timed_verify(images, expect, run_dir, label):
    started = time.monotonic()
    checks = verify_images(images, expect, run_dir, timeout=300)
    seconds = time.monotonic() - started
    print(f"\nverify {label}: {seconds:.2f} s")
    for check in checks:
        print(f"  {check.image}: {check.name}: {'ok' if check.ok else 'FAILED'}: {check.detail}")
    return checks, seconds


def build(tmp: Path, image_cache: Path, name: str, types: str, elements: list[str],
          env: dict[str, str], *extra: str) -> Path:
    out = tmp / "images"
    args = ["-o", str(out / name), "-t", types, "--checksum", "--image-cache", str(image_cache),
            *extra, *elements]
    done = run_dib(args, dib_env(tmp, env))
    assert done.returncode == 0, done.stdout[-3000:]
    return out


@pytest.fixture(scope="module")
def bookworm(tmp_path_factory, image_cache):
    tmp = tmp_path_factory.mktemp("verify-bookworm")
    out = build(tmp, image_cache, "debian-bookworm", "tar,qcow2", ["debian-minbase"],
                {"DIB_RELEASE": "bookworm"}, "--image-size", "2G")
    return tmp, out


def bookworm_target(outputs=("tar", "qcow2")) -> Target:
    return Target("debian-bookworm", ("debian-minbase",), (("DIB_RELEASE", "bookworm"),),
                  tuple(outputs))


def test_a_real_bookworm_build_passes_every_check_in_time(bookworm):
    tmp, out = bookworm
    expect = expectation_for(bookworm_target(), {"DIB_RELEASE": "bookworm"})
    tar_checks, tar_seconds = timed_verify([out / "debian-bookworm.tar"], expect, tmp, "tar")
    qcow2_checks, qcow2_seconds = timed_verify([out / "debian-bookworm.qcow2"], expect, tmp,
                                               "qcow2 (2 GiB virtual)")
    checks = tar_checks + qcow2_checks
    assert all(c.ok for c in checks), summary(checks)
    assert [c.name for c in tar_checks] == ["os-release", "packages", "architecture",
                                            "identity"]
    assert [c.name for c in qcow2_checks] == [
        "qemu-img check", "partition table", "filesystem label", "os-release", "packages",
        "architecture", "identity"]
    assert {c.image for c in checks} == {"images/debian-bookworm.tar",
                                         "images/debian-bookworm.qcow2"}
    assert tar_seconds < TAR_BUDGET
    assert qcow2_seconds < QCOW2_BUDGET
    assert "qcow2, 2048 MiB virtual, no errors" in [c.detail for c in qcow2_checks]
    assert not list(tmp.glob(".verify-*"))


def test_a_bookworm_image_for_a_forky_expectation_fails_its_release(bookworm):
    tmp, out = bookworm
    forky = Target("debian-forky", ("debian-minbase",), (("DIB_RELEASE", "forky"),), ("tar",))
    checks = verify_images([out / "debian-bookworm.tar", out / "debian-bookworm.qcow2"],
                           expectation_for(forky, {}), tmp, timeout=300)
    release = [c for c in checks if c.name == "os-release"]
    assert [(c.ok, c.detail) for c in release] == [
        (False, "image is bookworm, target wants forky")] * 2
    assert summary(checks) == "verify: os-release: image is bookworm, target wants forky"


def test_a_tampered_manifest_fails_the_packages_check(bookworm, tmp_path):
    _, out = bookworm
    image = tmp_path / "t.tar"
    image.symlink_to(out / "debian-bookworm.tar")
    lines = (out / "debian-bookworm.packages").read_text().splitlines()
    (tmp_path / "t.packages").write_text("\n".join(lines[3:]) + "\n")
    check = next(c for c in verify_images([image], expectation_for(bookworm_target(), {}),
                                          tmp_path, 300) if c.name == "packages")
    names = sorted(line.split()[0] for line in lines[:3])
    assert check.detail == (f"packages: 3 in the image are not in the manifest "
                            f"({', '.join(names)})")


def test_a_target_built_from_another_release_than_it_declares(tmp_path, image_cache):
    """The element pins bookworm, the target declares forky: dib exits 0, verify fails."""
    target = load_target(DATA / "targets" / "debian-forky-pinned.yaml")
    env = {**target.env_dict, "ELEMENTS_PATH": str(ELEMENTS)}
    out = build(tmp_path, image_cache, target.name, "tar", list(target.elements), env)
    checks = verify_images([out / f"{target.name}.tar"], expectation_for(target, env),
                           tmp_path, timeout=300)
    assert [(c.name, c.ok) for c in checks] == [("os-release", False), ("packages", True),
                                                 ("architecture", True), ("identity", True)]
    assert checks[0].detail == "image is bookworm, target wants forky"
    assert summary(checks) == "verify: os-release: image is bookworm, target wants forky"


def test_an_assembled_disk_carries_its_layout_record(tmp_path):
    """The disk assembler writes <output>.layout.json beside a raw; verify compares offsets."""
    root = tmp_path / "root"
    (root / "usr" / "lib").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "usr" / "lib" / "os-release").write_text("ID=debian\nVERSION_CODENAME=bookworm\n")
    (root / "etc" / "os-release").symlink_to("../usr/lib/os-release")
    (root / "boot" / "efi" / "EFI" / "BOOT").mkdir(parents=True)
    (root / "boot" / "efi" / "EFI" / "BOOT" / "BOOTX64.EFI").write_text("efi")
    build_dir = tmp_path / "build"
    build_dir.mkdir()
    text = (REPO / "elements" / "vm" / "layouts" / "efi.yaml").read_text()
    save_plan(make_plan(parse_layout_text(text, "efi (efi.yaml)"), text, "efi (efi.yaml)"),
              build_dir)
    out = tmp_path / "images"
    out.mkdir()
    assemble(root, out / "t.raw", build_dir)
    assert (out / "t.layout.json").is_file()
    subprocess.run(["qemu-img", "convert", "-c", "-O", "qcow2", str(out / "t.raw"),
                    str(out / "t.qcow2")], check=True)
    (out / "t.packages").write_text("")
    target = Target("t", ("debian-minbase", "vm", "block-device-efi"),
                    (("DIB_RELEASE", "bookworm"),), ("raw", "qcow2"))
    checks, _ = timed_verify([out / "t.raw", out / "t.qcow2"], expectation_for(target, {}),
                             tmp_path, "assembled efi disk")
    assert all(c.ok for c in checks), summary(checks)
    table = [c for c in checks if c.name == "partition table"]
    assert [c.detail for c in table] == ["gpt, 3 partitions (ESP, BSP, root) as in "
                                         "t.layout.json"] * 2


@pytest.mark.slow
def test_a_real_vm_build_passes_against_its_record(tmp_path, image_cache):
    """debian-minbase + vm + block-device-gpt, 2 GiB: raw and qcow2 with the record."""
    out = build(tmp_path, image_cache, "vm", "raw,qcow2",
                ["debian-minbase", "vm", "block-device-gpt"], {"DIB_RELEASE": "bookworm"},
                "--image-size", "2G")
    assert (out / "vm.layout.json").is_file()
    target = Target("vm", ("debian-minbase", "vm", "block-device-gpt"),
                    (("DIB_RELEASE", "bookworm"),), ("raw", "qcow2"))
    expect = expectation_for(target, {})
    raw_checks, _ = timed_verify([out / "vm.raw"], expect, tmp_path, "vm raw (2 GiB)")
    qcow2_checks, seconds = timed_verify([out / "vm.qcow2"], expect, tmp_path,
                                         "vm qcow2 (2 GiB virtual)")
    checks: list[ImageCheck] = raw_checks + qcow2_checks
    assert all(c.ok for c in checks), summary(checks)
    assert seconds < QCOW2_BUDGET
