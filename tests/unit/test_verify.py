"""matrix.verdict.verify on tar images: os-release, the dpkg database against the manifest, the
expectation a target gives, the summary line, and the bounded tool runner."""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path

import pytest

from matrix.config.targets import Target
from matrix.verdict.verify import expectation_for, summary, tools, verify_images
from matrix.verdict.verify.checks import release_matches
from matrix.verdict.verify.expect import BARE_EXT4, Expectation
from matrix.verdict.verify.limits import OS_RELEASE_LIMIT, Deadline, VerifyError
from matrix.verdict.verify.parse import parse_os_release
from matrix.verdict.verify.tools import run_tool
from results.model import ImageCheck
from tests.unit.verifydata import BOOKWORM, PACKAGES, manifest_text, one, status_text

# What base-files 14.2 (testing and unstable alike) ships, checked against the real deb.
SID = 'PRETTY_NAME="Debian GNU/Linux forky/sid"\nNAME="Debian GNU/Linux"\n' \
      "VERSION_CODENAME=forky\nID=debian\n"
NOBLE = 'PRETTY_NAME="Ubuntu 24.04 LTS"\nVERSION_ID="24.04"\nVERSION_CODENAME=noble\n' \
        "ID=ubuntu\nID_LIKE=debian\nUBUNTU_CODENAME=noble\n"
DEBIAN = Expectation("debian", "bookworm")


def add(tar: tarfile.TarFile, name: str, data: bytes | None = None, link: str | None = None
        ) -> None:
    """A regular file with ``data``, or a symbolic link to ``link``."""
    info = tarfile.TarInfo(name)
    if link is not None:
        info.type, info.linkname = tarfile.SYMTYPE, link
        tar.addfile(info)
        return
    info.size = len(data or b"")
    tar.addfile(info, io.BytesIO(data or b""))


def make_tar(
    path: Path,
    os_release: str | None = BOOKWORM,
    packages: dict[str, str] | None = PACKAGES,
    manifest: dict[str, str] | None = PACKAGES,
    link: str | None = "../usr/lib/os-release",
    status_extra: str = "",
    members: tuple[tuple[str, bytes], ...] = (),
    mode: str = "w",
) -> Path:
    """A small image archive laid out as ``tar -C root .`` writes it (``./`` names)."""
    with tarfile.open(path, mode) as tar:
        add(tar, "./etc/hostname", b"image\n")
        if os_release is not None:
            if link is None:
                add(tar, "./etc/os-release", os_release.encode())
            else:
                add(tar, "./etc/os-release", link=link)
        for name, data in members:
            add(tar, name, data)
        if packages is not None:
            add(tar, "./var/lib/dpkg/status", status_text(packages, status_extra).encode())
        if os_release is not None and link is not None:
            add(tar, "./usr/lib/os-release", os_release.encode())
    if manifest is not None:
        stem = path.name.split(".")[0]
        (path.parent / f"{stem}.packages").write_text(manifest_text(manifest))
    return path


def test_a_matching_tar_passes_every_check(tmp_path):
    image = make_tar(tmp_path / "t.tar")
    checks = verify_images([image], DEBIAN, tmp_path, timeout=30)
    assert [(c.name, c.ok) for c in checks] == [("os-release", True), ("packages", True),
                                               ("identity", True)]
    assert one(checks, "os-release").detail == "debian bookworm"
    assert one(checks, "packages").detail == "3 packages installed, as t.packages lists"
    assert all(c.image == "t.tar" for c in checks)
    assert summary(checks) is None
    assert not list(tmp_path.glob(".verify-*"))  # the work directory is removed


def test_image_path_is_relative_to_the_run_directory(tmp_path):
    (tmp_path / "images" / "h").mkdir(parents=True)
    image = make_tar(tmp_path / "images" / "h" / "t.tar")
    checks = verify_images([image], DEBIAN, tmp_path, timeout=30)
    assert {c.image for c in checks} == {"images/h/t.tar"}


def test_release_mismatch_reads_image_is_target_wants(tmp_path):
    checks = verify_images([make_tar(tmp_path / "t.tar")], Expectation("debian", "forky"),
                           tmp_path, timeout=30)
    check = one(checks, "os-release")
    assert not check.ok
    assert check.detail == "image is bookworm, target wants forky"
    assert summary(checks) == "verify: os-release: image is bookworm, target wants forky"


def test_distribution_mismatch(tmp_path):
    image = make_tar(tmp_path / "t.tar", os_release=NOBLE)
    check = one(verify_images([image], Expectation("debian", "noble"), tmp_path, 30),
                "os-release")
    assert (check.ok, check.detail) == (False, "image is ubuntu, target wants debian")
    both = one(verify_images([image], DEBIAN, tmp_path, 30), "os-release")
    assert both.detail == ("image is ubuntu, target wants debian; "
                           "image is noble, target wants bookworm")


@pytest.mark.parametrize("mode", ["w:gz", "w"])
@pytest.mark.parametrize("link", [None, "../usr/lib/os-release", "/usr/lib/os-release"])
def test_os_release_is_found_as_file_relative_or_absolute_link(tmp_path, mode, link):
    suffix = "tgz" if mode == "w:gz" else "tar"
    image = make_tar(tmp_path / f"t.{suffix}", link=link, mode=mode)
    assert one(verify_images([image], DEBIAN, tmp_path, 30), "os-release").ok


def test_os_release_link_elsewhere_is_followed_in_another_pass(tmp_path):
    image = tmp_path / "t.tar"
    with tarfile.open(image, "w") as tar:
        add(tar, "./etc/os-release", link="../opt/release/os-release")
        add(tar, "./opt/release/os-release", BOOKWORM.encode())
    (tmp_path / "t.packages").write_text("")
    checks = verify_images([image], DEBIAN, tmp_path, 30)
    assert one(checks, "os-release").ok


def test_dangling_os_release_and_missing_os_release_fail(tmp_path):
    image = tmp_path / "t.tar"
    with tarfile.open(image, "w") as tar:
        add(tar, "./etc/os-release", link="../usr/lib/os-release")
    check = one(verify_images([image], DEBIAN, tmp_path, 30), "os-release")
    assert not check.ok
    assert check.detail == ("os-release: etc/os-release points to usr/lib/os-release, "
                            "which is not in the archive")
    bare = make_tar(tmp_path / "u.tar", os_release=None)
    check = one(verify_images([bare], DEBIAN, tmp_path, 30), "os-release")
    assert check.detail == "os-release: no etc/os-release or usr/lib/os-release in the archive"


def test_os_release_is_read_bounded(tmp_path):
    padded = "#" + "x" * (OS_RELEASE_LIMIT + 10) + "\n" + BOOKWORM
    image = make_tar(tmp_path / "t.tar", os_release=padded)
    check = one(verify_images([image], DEBIAN, tmp_path, 30), "os-release")
    assert not check.ok  # ID and VERSION_CODENAME lie beyond what is read
    assert "target wants debian" in check.detail


def test_packages_in_the_image_not_in_the_manifest_are_counted_and_named(tmp_path):
    image = make_tar(tmp_path / "t.tar", packages={**PACKAGES, "foo": "1", "bar": "2",
                                                    "baz": "3", "qux": "4"})
    check = one(verify_images([image], DEBIAN, tmp_path, 30), "packages")
    assert not check.ok
    assert check.detail == ("packages: 4 in the image are not in the manifest "
                            "(bar, baz, foo, ...)")


def test_packages_missing_from_the_image_and_versions_that_differ(tmp_path):
    image = make_tar(tmp_path / "t.tar", packages={"apt": "2.6.0", "bash": PACKAGES["bash"]})
    check = one(verify_images([image], DEBIAN, tmp_path, 30), "packages")
    assert check.detail == ("packages: 1 in the manifest is not in the image (base-files); "
                            "1 package differs in version (apt: image 2.6.0, manifest 2.6.1)")


def test_only_installed_packages_count(tmp_path):
    removed = ("Package: gone\nStatus: deinstall ok config-files\nArchitecture: amd64\n"
               "Version: 1\n\nPackage: half\nStatus: install ok half-configured\n"
               "Architecture: amd64\nVersion: 1\n")
    image = make_tar(tmp_path / "t.tar", status_extra=removed)
    assert one(verify_images([image], DEBIAN, tmp_path, 30), "packages").ok


def test_missing_manifest_fails(tmp_path):
    image = make_tar(tmp_path / "t.tar", manifest=None)
    check = one(verify_images([image], DEBIAN, tmp_path, 30), "packages")
    assert (check.ok, check.detail) == (False, "packages: no manifest t.packages beside the image")


def test_rpm_image_packages_are_not_applicable(tmp_path):
    image = make_tar(tmp_path / "t.tar", os_release='ID="fedora"\nVERSION_ID=43\n',
                     packages=None, manifest={}, members=(("./var/lib/rpm/rpmdb.sqlite", b"x"),))
    checks = verify_images([image], Expectation("fedora", "43"), tmp_path, 30)
    assert all(c.ok for c in checks), checks
    assert one(checks, "packages").detail.startswith("not applicable: an rpm image")


def test_no_dpkg_database_but_a_manifest_fails(tmp_path):
    image = make_tar(tmp_path / "t.tar", packages=None)
    check = one(verify_images([image], DEBIAN, tmp_path, 30), "packages")
    assert check.detail == "packages: the image has no dpkg database, but t.packages lists packages"


def test_unreadable_or_missing_images_fail_without_raising(tmp_path):
    (tmp_path / "t.tar").write_bytes(b"not a tar archive at all" * 100)
    checks = verify_images([tmp_path / "t.tar", tmp_path / "gone.qcow2", tmp_path / "t.iso"],
                           DEBIAN, tmp_path, 30)
    judged = [c for c in checks if c.name != "identity"]  # not judged where nothing is read
    assert [c.ok for c in judged] == [False] * len(judged)
    assert one(checks, "identity").detail.startswith("not checked: ")
    assert one(checks, "os-release").detail.startswith("os-release: cannot read the image")
    assert [c.detail for c in checks if c.name == "image"] == [
        "image: no such file: gone.qcow2", "image: no such file: t.iso"]


def test_out_of_time_checks_fail(tmp_path):
    checks = verify_images([make_tar(tmp_path / "t.tar")], DEBIAN, tmp_path, timeout=0)
    assert [c.ok for c in checks] == [False, False, False]
    assert checks[0].detail == "os-release: not checked, the verification ran out of time"


@pytest.mark.parametrize(
    ("text", "wanted", "ok"),
    [
        (BOOKWORM, "bookworm", True),
        (BOOKWORM, "trixie", False),
        (SID, "forky", True),
        (SID, "sid", True),  # an unstable image says forky/sid
        (SID, "unstable", True),
        (SID, "testing", True),
        (BOOKWORM, "sid", False),
        (BOOKWORM, "testing", False),
        (BOOKWORM, "stable", True),
        (NOBLE, "noble", True),
        (NOBLE, "jammy", False),
        ('ID="centos"\nVERSION_ID="9"\n', "9-stream", True),
        ('ID="centos"\nVERSION_ID="9"\n', "10-stream", False),
        ('ID="opensuse-leap"\nVERSION_ID="15.6"\n', "15.6", True),
        ('ID=fedora\nVERSION_ID=43\nVERSION_CODENAME=""\n', "43", True),
    ],
)
def test_release_matches(text, wanted, ok):
    assert release_matches(parse_os_release(text), wanted) is ok


def test_sid_detail_explains_the_shared_os_release(tmp_path):
    image = make_tar(tmp_path / "t.tar", os_release=SID)
    check = one(verify_images([image], Expectation("debian", "sid"), tmp_path, 30), "os-release")
    assert check.ok
    assert "forky/sid" in check.detail and "share" in check.detail
    bookworm = make_tar(tmp_path / "b.tar")
    check = one(verify_images([bookworm], Expectation("debian", "sid"), tmp_path, 30),
                "os-release")
    assert check.detail == "image is bookworm, target wants sid"


def test_unknown_distribution_or_release_is_not_checked(tmp_path):
    check = one(verify_images([make_tar(tmp_path / "t.tar")], Expectation(None, None),
                              tmp_path, 30), "os-release")
    assert check.ok
    assert "distribution and release not checked" in check.detail


def test_summary_is_one_line_of_the_first_failure():
    checks = [ImageCheck("packages", True, "fine"),
              ImageCheck("partition table", False, "partition table: image has 1 partition,\n"
                                                    "planned 2"),
              ImageCheck("os-release", False, "image is bookworm, target wants forky")]
    assert summary(checks) == "verify: partition table: partition table: image has 1 " \
                              "partition, planned 2"
    assert summary(checks[:1]) is None
    assert summary([]) is None


# ---- expectation_for -----------------------------------------------------------------


def target(elements, outputs=("tar",), env=(), arch="amd64") -> Target:
    return Target("t", tuple(elements), tuple(env), tuple(outputs), arch)


def test_expectation_from_the_base_element_and_the_cell_environment():
    expect = expectation_for(target(["debian-minimal"]), {"DIB_RELEASE": "trixie"})
    assert expect == Expectation("debian", "trixie", None, None, "amd64")
    assert expectation_for(target(["ubuntu-minimal"]), {"DIB_RELEASE": "noble"}).distro_id == \
        "ubuntu"
    assert expectation_for(target(["opensuse-minimal"]), {}).distro_id == "opensuse-leap"


def test_the_cell_environment_wins_over_the_target_and_the_element_default():
    assert expectation_for(target(["debian-minimal"]), {}).release == "bookworm"
    assert expectation_for(target(["ubuntu-minimal"]), {}).release == "noble"
    pinned = target(["debian-minimal"], env=(("DIB_RELEASE", "bullseye"),))
    assert expectation_for(pinned, {}).release == "bullseye"
    assert expectation_for(pinned, {"DIB_RELEASE": "forky"}).release == "forky"


def test_unknown_base_element_is_not_checked(tmp_path):
    element = tmp_path / "elements" / "my-os"
    element.mkdir(parents=True)
    (element / "element-provides").write_text("operating-system\n")
    expect = expectation_for(target(["my-os"]), {"ELEMENTS_PATH": str(tmp_path / "elements")})
    assert (expect.distro_id, expect.release) == (None, None)
    missing = expectation_for(target(["no-such-element", "debian-minimal"]), {})
    assert missing.distro_id == "debian"  # resolved what it could


def test_a_disk_image_without_vm_is_a_bare_labelled_filesystem():
    expect = expectation_for(target(["debian-minimal"], ("tar", "qcow2")), {})
    assert expect.layout == BARE_EXT4
    assert expect.layout.root is not None and expect.layout.root.label == "cloudimg-rootfs"


def test_vm_targets_get_the_layout_dib_plans():
    mbr = expectation_for(target(["debian-minimal", "vm"], ("qcow2",)), {}).layout
    assert mbr is not None and mbr.table == "mbr"
    assert [(p.name, p.filesystem, p.label, p.mountpoint) for p in mbr.partitions] == [
        ("root", "ext4", "cloudimg-rootfs", "/")]
    efi = expectation_for(target(["debian-minimal", "vm", "block-device-efi"], ("qcow2",)),
                          {"DIB_BLOCK_DEVICE": "mbr"}).layout  # the element wins
    assert efi is not None and efi.table == "gpt"
    assert [(p.name, p.label) for p in efi.partitions] == [
        ("ESP", "ESP"), ("BSP", None), ("root", "cloudimg-rootfs")]
    gpt = expectation_for(target(["debian-minimal", "vm"], ("raw",)),
                          {"DIB_BLOCK_DEVICE": "gpt"}).layout
    assert gpt is not None and [p.name for p in gpt.partitions] == ["BSP", "root"]
    arm = expectation_for(target(["debian-minimal", "vm"], ("raw",), arch="arm64"), {}).layout
    assert arm is not None and arm.table == "gpt"


def test_a_layout_given_in_the_environment_is_used_and_a_bad_one_is_reported():
    config = ("- local_loop:\n    name: image0\n- partitioning:\n    base: image0\n"
              "    label: mbr\n    partitions:\n      - name: root\n        mkfs:\n"
              "          type: ext4\n          label: myroot\n"
              "          mount:\n            mount_point: /\n")
    vm = target(["debian-minimal", "vm"], ("qcow2",))
    layout = expectation_for(vm, {"DIB_BLOCK_DEVICE_CONFIG": config}).layout
    assert layout is not None and layout.partitions[0].label == "myroot"
    bad = expectation_for(vm, {"DIB_BLOCK_DEVICE_CONFIG": "- partitioning: {label: zip}"})
    assert bad.layout is None
    assert bad.layout_problem and "layout cannot be read" in bad.layout_problem


# ---- the tool runner -----------------------------------------------------------------


def test_run_tool_bounds_output_and_time():
    with pytest.raises(VerifyError, match="wrote more than 1 KiB"):
        run_tool(["yes"], Deadline.after(10), limit=1024)
    started = time.monotonic()
    with pytest.raises(VerifyError, match="sleep did not finish in time"):
        run_tool(["sleep", "30"], Deadline.after(0.3))
    assert time.monotonic() - started < 5
    result = run_tool(["sh", "-c", "echo out; echo err >&2; exit 3"], Deadline.after(10))
    assert (result.returncode, result.output, result.errors) == (3, b"out\n", "err\n")


def test_a_missing_tool_names_its_package(monkeypatch):
    monkeypatch.setattr(tools.shutil, "which", lambda name: None)
    with pytest.raises(VerifyError, match=r"qemu-img not available on this machine "
                                          r"\(install qemu-utils\)"):
        run_tool(["qemu-img", "info"], Deadline.after(10))


def test_a_manifest_with_blank_and_short_lines_is_read(tmp_path):
    from matrix.verdict.verify.parse import read_manifest

    manifest = tmp_path / "image.packages"
    manifest.write_text("apt 2.6.1 amd64\n\n   \nlonely\n")
    assert read_manifest(manifest) == {("apt", "amd64"): "2.6.1", ("lonely", ""): ""}
