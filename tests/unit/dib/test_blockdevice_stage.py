"""The disk plan inside every build: exported variables, fstab, and the shims that answer
grub-probe, grub-mkrelpath and grub-install from the plan."""

import subprocess
from pathlib import Path

import pytest

from dib.blockdevice import stage
from dib.blockdevice.grubinstall import REQUESTS
from dib.elements import bundled_elements_dir
from dib.phases import Phase

TWO_FS = """\
- local_loop: {name: image0}
- partitioning:
    base: image0
    label: gpt
    partitions:
      - {name: ESP, type: EF00, size: 64MiB,
         mkfs: {type: vfat, mount: {mount_point: /boot/efi, fstab: {options: defaults}}}}
      - {name: BSP, type: EF02, size: 8MiB}
      - {name: boot, size: 256MiB,
         mkfs: {type: ext4, label: bootfs, mount: {mount_point: /boot}}}
      - {name: root, mkfs: {type: ext4, mount: {mount_point: /, fstab: {fsck-passno: 1}}}}
"""


def make_stage(tmp_path, layout=TWO_FS, env=None):
    env = {"DIB_BLOCK_DEVICE_CONFIG": layout, **(env or {})}
    return stage.prepare(env, [], "amd64", tmp_path, bundled_elements_dir(), disk_output=False)


def test_no_layout_no_stage(tmp_path):
    assert stage.prepare({}, [], "amd64", tmp_path, bundled_elements_dir()) is None


def test_environment_names_stand_in_devices(tmp_path):
    disk = make_stage(tmp_path)
    env = disk.environment()
    assert env["IMAGE_BLOCK_DEVICE"] == "/dev/dib/image0"
    assert env["IMAGE_BLOCK_DEVICES"] == (
        "[image0]=/dev/dib/image0 [ESP]=/dev/dib/ESP [BSP]=/dev/dib/BSP "
        "[boot]=/dev/dib/boot [root]=/dev/dib/root"
    )
    assert env["DIB_ROOT_LABEL"] == "cloudimg-rootfs"
    assert env["DIB_ROOT_FSTYPE"] == "ext4"
    assert env["DIB_BOOT_LABEL"] == "bootfs"
    assert env["DIB_MOUNTPOINTS"] == "/|/boot|/boot/efi"
    assert (tmp_path / "block-device" / "plan.json").is_file()


def test_bash_reads_the_devices_as_an_associative_array(tmp_path):
    env = make_stage(tmp_path).environment()
    out = subprocess.run(
        ["bash", "-c", 'declare -A D; eval D=( $IMAGE_BLOCK_DEVICES ); echo "${D[root]}"'],
        env={"IMAGE_BLOCK_DEVICES": env["IMAGE_BLOCK_DEVICES"], "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=True,
    )
    assert out.stdout.strip() == "/dev/dib/root"


def test_fstab_after_root_and_block_device(tmp_path):
    disk = make_stage(tmp_path)
    root = tmp_path / "mnt"
    root.mkdir()
    disk.after_phase(Phase.ROOT, root)
    fstab = (root / "etc" / "fstab").read_text()
    assert f"UUID={disk.plan.root_identity.uuid}\t/\text4" in fstab
    (root / "etc" / "fstab").write_text("replaced by a package\n")
    disk.after_phase(Phase.INSTALL, root)
    assert (root / "etc" / "fstab").read_text() == "replaced by a package\n"
    disk.after_phase(Phase.BLOCK_DEVICE, root)
    assert (root / "etc" / "fstab").read_text() == fstab
    assert (root / "boot" / "efi").is_dir()


@pytest.fixture
def shims(tmp_path):
    disk = make_stage(tmp_path / "build")
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    return disk, disk.install_shims(hooks)


def sh(shims_dir, name, *args, cwd=None):
    return subprocess.run(
        [str(shims_dir / name), *args], capture_output=True, text=True, cwd=cwd,
        env={"PATH": f"{shims_dir}:/usr/bin:/bin"},
    )


def test_grub_probe_answers_from_the_plan(shims):
    disk, shim_dir = shims
    root_uuid = disk.plan.root_identity.uuid
    boot = disk.plan.identities["boot"]

    def probe(*args):
        done = sh(shim_dir, "grub-probe", *args)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert probe("--target=device", "/") == f"/dev/disk/by-uuid/{root_uuid}"
    assert probe("--target=device", "/boot") == f"/dev/disk/by-uuid/{boot.uuid}"
    assert probe("-t", "device", "/usr") == f"/dev/disk/by-uuid/{root_uuid}"
    assert probe("--device", f"/dev/disk/by-uuid/{root_uuid}", "--target=fs") == "ext2"
    assert probe("--device", "/dev/dib/root", "--target=fs_uuid") == root_uuid
    assert probe("--device", "/dev/dib/boot", "--target=fs_label") == boot.label
    assert probe("--target=fs", "/boot") == "ext2"
    assert probe("--device", "/dev/dib/ESP", "--target=fs") == "fat"
    assert probe("--target=partmap", "--device", "/dev/dib/root") == "gpt"
    assert probe("--target=abstraction", "/") == ""
    assert probe("--target=drive", "/boot") == "(hd0,gpt3)"
    assert probe("--target=compatibility_hint", "--device", "/dev/dib/root") == "hd0,gpt4"
    assert probe("--target=hints_string", "--device", "/dev/dib/root").startswith(
        "--hint-bios=hd0,gpt4 --hint-efi=hd0,gpt4"
    )
    assert probe("--target=partmap", "--device", "/dev/dib/image0") == "gpt"


def test_grub_probe_fails_as_the_real_one_does(shims):
    _, shim_dir = shims
    for args, message in (
        (["--device", "/dev/dib/root", "--target=partuuid"], "partuuid"),
        (["--device", "/dev/sda1", "--target=fs"], "not a device of the disk plan"),
        (["--target=fs", "/no/such/path"], "canonical path"),
    ):
        done = sh(shim_dir, "grub-probe", *args)
        assert done.returncode == 1 and message in done.stderr, (args, done.stderr)


def test_grub_mkrelpath_is_relative_to_the_holding_filesystem(shims):
    _, shim_dir = shims
    assert sh(shim_dir, "grub-mkrelpath", "/boot").stdout.strip() == "/"
    assert sh(shim_dir, "grub-mkrelpath", "/usr").stdout.strip() == "/usr"


def test_grub_install_records_and_passes_version_through(shims, tmp_path):
    _, shim_dir = shims
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    real = real_dir / "grub-install"
    real.write_text("#!/bin/sh\necho 'grub-install (GRUB) 2.06-13'\n")
    real.chmod(0o755)
    env = {"PATH": f"{shim_dir}:{real_dir}:/usr/bin:/bin"}
    version = subprocess.run([str(shim_dir / "grub-install"), "--version"], env=env,
                             capture_output=True, text=True, check=True)
    assert "2.06" in version.stdout
    requests = Path(REQUESTS)
    if requests.exists():
        pytest.skip(f"{REQUESTS} exists on this machine; not touching it")
    try:
        done = subprocess.run(
            [str(shim_dir / "grub-install"), "--modules=part_msdos lvm", "--target=i386-pc",
             "/dev/dib/image0"], env=env, capture_output=True, text=True, check=True,
        )
        assert "Installation finished" in done.stdout
        assert requests.read_text() == (
            "grub-install\t--modules=part_msdos lvm\t--target=i386-pc\t/dev/dib/image0\n"
        )
    finally:
        requests.unlink(missing_ok=True)
