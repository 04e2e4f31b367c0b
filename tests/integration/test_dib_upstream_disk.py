"""diskimage-builder's own vm, bootloader and block-device-* elements make bootable disks
on dib, with no loop device: dib's core plans the disk, exports stand-in block devices,
and performs the grub-install requests upstream's bootloader records through dib's shims.

The upstream elements come from diskimage-builder's wheel (tests/compat/upstream.py:
fetched once with pip into ~/.cache/dib-matrix/upstream-dib/, checked against its
sha256); the tests are skipped, saying so, when it can be had from neither.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Dict, Optional, Sequence

import pytest

from dib.bootqemu import BootOptions
from dib.boottest import run_boot_test
from tests.compat import upstream
from tests.integration.dibhelpers import build_mounts, dib_env, run_dib

pytestmark = pytest.mark.integration

BOOT_TIMEOUT = 900  # software emulation on a shared machine
BUILD_TIMEOUT = 1800
DISK_ELEMENTS = ("vm", "bootloader", "block-device-mbr", "block-device-gpt", "block-device-efi",
                 "no-final-image")
needs_qemu = pytest.mark.skipif(
    shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86 not installed"
)
needs_ovmf = pytest.mark.skipif(
    not Path("/usr/share/ovmf/OVMF.fd").exists(), reason="ovmf not installed"
)


@pytest.fixture(scope="module")
def shadow(tmp_path_factory) -> Path:
    """A directory with upstream's disk elements only, first on ELEMENTS_PATH."""
    try:
        tree = upstream.upstream_tree()
    except (upstream.UpstreamError, OSError, subprocess.SubprocessError) as err:
        pytest.skip(f"diskimage-builder {upstream.VERSION} not available: {err}")
    elements = tree / upstream.ELEMENTS_SUBDIR
    return upstream.make_shadow_dir(
        elements, DISK_ELEMENTS, tmp_path_factory.mktemp("upstream") / "shadow"
    )


def build(tmp: Path, shadow: Path, image_cache: Path, elements: Sequence[str], types: str,
          extra_env: Optional[Dict[str, str]] = None):
    env = dib_env(tmp, {"ELEMENTS_PATH": str(shadow), "DIB_RELEASE": "bookworm",
                        **(extra_env or {})})
    output = tmp / "image"
    done = run_dib(["-o", str(output), "-t", types, "--image-cache", str(image_cache),
                    *elements], env, timeout=BUILD_TIMEOUT)
    return done, output


def boot(image: Path, tmp: Path, uefi: bool = False):
    return run_boot_test(BootOptions(image, tmp / "serial.log", timeout=BOOT_TIMEOUT, uefi=uefi))


@pytest.mark.slow
@needs_qemu
@pytest.mark.parametrize("block_device, table", [
    (None, "mbr"),  # vm alone brings block-device-mbr, as disk-image-create adds it
    ("block-device-gpt", "gpt"),
])
def test_upstream_vm_boots_with_bios(tmp_path, shadow, image_cache, block_device, table):
    elements = ["debian-minimal", "vm", *([block_device] if block_device else [])]
    done, output = build(tmp_path, shadow, image_cache, elements, "qcow2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "performing the recorded grub-install" in done.stdout
    assert build_mounts() == []
    layout = json.loads(Path(f"{output}.layout.json").read_text())
    assert layout["table"] == table and layout["boot"] == ["i386-pc"]
    assert "/block-device-" in layout["origin"]  # upstream's block-device-default.yaml
    result = boot(Path(f"{output}.qcow2"), tmp_path)
    assert result.passed, result.evidence
    serial = (tmp_path / "serial.log").read_text(errors="replace")
    assert "root=LABEL=cloudimg-rootfs" in serial  # upstream's grub-mkconfig wrote grub.cfg


@pytest.mark.slow
@needs_qemu
@needs_ovmf
def test_upstream_block_device_efi_boots_with_uefi(tmp_path, shadow, image_cache):
    done, output = build(tmp_path, shadow, image_cache,
                         ["debian-minimal", "vm", "block-device-efi"], "qcow2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    layout = json.loads(Path(f"{output}.layout.json").read_text())
    assert layout["table"] == "gpt" and layout["boot"] == ["i386-pc", "x86_64-efi"]
    result = boot(Path(f"{output}.qcow2"), tmp_path, uefi=True)
    assert result.passed, result.evidence


@pytest.mark.slow
def test_no_final_image_keeps_the_tar_only(tmp_path, shadow, image_cache):
    done, output = build(tmp_path, shadow, image_cache,
                         ["debian-minimal", "vm", "no-final-image"], "tar,qcow2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert Path(f"{output}.tar").is_file()
    assert not Path(f"{output}.qcow2").exists()
    assert "no-final-image: not writing qcow2" in done.stdout


def test_an_unsupported_layout_fails_before_any_hook(tmp_path, shadow, image_cache):
    lvm = "- local_loop: {name: image0}\n- lvm: {name: lvm, base: [root]}\n"
    done, _ = build(tmp_path, shadow, image_cache, ["debian-minimal", "vm"], "qcow2",
                    {"DIB_BLOCK_DEVICE_CONFIG": lvm})
    assert done.returncode != 0
    assert "lvm: not supported by dib (LVM needs device-mapper)" in done.stdout + done.stderr
    assert "running root.d" not in done.stdout
