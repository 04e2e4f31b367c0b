"""Make the qemu command line that boots an image, and the disks and firmware it boots
with: everything about the emulated machine, nothing about what its console says.

The machine matches the image's architecture (``BootOptions.arch``, ``--arch``): amd64
boots in ``qemu-system-x86_64 -machine q35`` with SeaBIOS, or OVMF for ``--uefi``;
arm64 always boots with UEFI, in ``qemu-system-aarch64 -machine virt -cpu cortex-a57``
with AAVMF (Debian's qemu-efi-aarch64: the read-only code in one flash, a private copy
of its variable store in the other), its serial console being the PL011 (ttyAMA0).
Both run under TCG (software emulation) unless ``accel`` says otherwise.

The image is never modified: it boots under ``-snapshot``, as itself or, with the checks
of the running system (or ``disk_size``), as a copy-on-write qcow2 overlay (GROW_BYTES
larger than the image, so growroot can show; in ``work_dir``, removed afterwards). For
the checks the guest gets qemu's user network, a NoCloud seed disk and, through fw_cfg
(``opt/dib-matrix/...``), the host name to resolve, this machine's name and the request
to power off.

:class:`BootOptions` lives here (not in :mod:`dib.boottest`, which runs the boot) because
every function here reads it; its ``to_argv()`` is the inverse of
``dib.boottest.options_from_args``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import os
import re
import shutil
import socket
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

from dib import spawn
from dib.arch import normalise as normalise_arch
from dib.bootconsole import DEFAULT_MARKER, WatchSettings
from dib.errors import DibError
from dib.mirror import MirrorNotFound, find_mirror


class BootTestError(DibError):
    """The boot test could not start (no qemu, no firmware, no image)."""

    exit_code = 2


DEFAULT_TIMEOUT = 600.0  # seconds for the boot (and the checks) before it is given up
KILL_GRACE_SECONDS = 5.0  # after SIGTERM, before qemu's process group is killed
OVMF_CANDIDATES = ("/usr/share/ovmf/OVMF.fd", "/usr/share/qemu/OVMF.fd")
# arm64 UEFI (Debian's qemu-efi-aarch64): the code flash; its variable store is the
# file of the same name with VARS for CODE, copied for each boot.
AAVMF_CANDIDATES = ("/usr/share/AAVMF/AAVMF_CODE.fd",)
GROW_BYTES = 1 << 30  # the booted overlay is this much larger than the image (growroot)
FW_CFG = "opt/dib-matrix/"  # qemu fw_cfg names the guest's check script reads
# The NoCloud seed every checked boot gets (a vfat disk labelled CIDATA): an image with
# cloud-init runs its user-data, which leaves CLOUD_INIT_MARK for the cloud-init check.
CLOUD_INIT_MARK = "/var/lib/dib-boot-checks/cloud-init-ran"
NOCLOUD_FILES = {
    "meta-data": "instance-id: dib-boottest\n",
    "user-data": "#cloud-config\nwrite_files:\n"
                 f"  - path: {CLOUD_INIT_MARK}\n"
                 "    content: \"written by the boot test's NoCloud user-data\\n\"\n",
}
SEED_KIB = 1024
HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9-]{1,63}){0,16}")


@dataclass(frozen=True)
class Machine:
    """How qemu emulates one architecture: binary, machine type, CPU, where its UEFI
    firmware is, and the Debian package to install when the binary is missing."""

    arch: str
    qemu: str
    machine: str
    cpu: str  # "" = qemu's default for the machine
    package: str
    uefi_only: bool  # no BIOS: always boots with UEFI firmware
    firmware: Tuple[str, ...]
    firmware_package: str
    shutdown_seconds: float  # how long a power-off may take under software emulation


MACHINES = {
    "amd64": Machine("amd64", "qemu-system-x86_64", "q35", "", "qemu-system-x86", False,
                     OVMF_CANDIDATES, "ovmf", 60.0),
    "arm64": Machine("arm64", "qemu-system-aarch64", "virt", "cortex-a57", "qemu-system-arm",
                     True, AAVMF_CANDIDATES, "qemu-efi-aarch64", 180.0),
}


def machine_for(arch: str) -> Machine:
    """The emulated machine for ``arch`` (Debian or kernel name); BootTestError if none."""
    found = MACHINES.get(normalise_arch(arch))
    if found is None:
        raise BootTestError(
            f"no boot test for architecture {arch} (known: {', '.join(sorted(MACHINES))})"
        )
    return found


@dataclass(frozen=True)
class BootOptions:
    """One boot test: the image, the machine it boots in and how its console is watched."""

    image: Path
    serial_log: Path
    timeout: float = DEFAULT_TIMEOUT
    uefi: bool = False  # amd64: OVMF instead of SeaBIOS; arm64 boots with UEFI anyway
    firmware: Optional[Path] = None  # UEFI code; default: Debian's ovmf / qemu-efi-aarch64
    memory_mib: int = 1024
    cpus: int = 1
    accel: str = "tcg"
    disk_size: Optional[str] = None  # boot an overlay of this size (default: GROW_BYTES more)
    qemu: str = ""  # the qemu binary; "" = the one for ``arch``
    watch: WatchSettings = WatchSettings()
    arch: str = "amd64"  # the image's architecture (Debian name): picks qemu and machine
    cpu: str = ""  # qemu -cpu; "" = the machine's default (cortex-a57 on arm64)
    resolve: str = ""  # the host name the name-resolution check resolves ("" = skip it)
    work_dir: Optional[Path] = None  # where the overlay lives while it boots (default: /tmp)
    shutdown_timeout: Optional[float] = None  # None: the machine's (60 s amd64, 180 s arm64)
    kill_grace: float = KILL_GRACE_SECONDS  # after SIGTERM, before qemu's group is killed

    @property
    def machine(self) -> Machine:
        return machine_for(self.arch)

    @property
    def qemu_binary(self) -> str:
        return self.qemu or self.machine.qemu

    @property
    def with_uefi(self) -> bool:
        return self.uefi or self.machine.uefi_only

    @property
    def watch_settings(self) -> WatchSettings:
        """``watch`` with the machine's shutdown bound unless one was given."""
        seconds = self.shutdown_timeout
        return dataclasses.replace(self.watch, shutdown_timeout=(
            self.machine.shutdown_seconds if seconds is None else seconds))

    def to_argv(self) -> List[str]:
        """The ``python -m dib.boottest`` arguments that repeat this test by hand."""
        argv = [str(self.image), "--serial-log", str(self.serial_log)]
        argv += ["--timeout", f"{self.timeout:g}"]
        argv += ["--uefi"] if self.uefi else []
        argv += ["--arch", self.arch] if self.arch != "amd64" else []
        argv += ["--cpu", self.cpu] if self.cpu else []
        argv += ["--firmware", str(self.firmware)] if self.firmware else []
        if self.memory_mib != 1024:
            argv += ["--memory", str(self.memory_mib)]
        if self.cpus != 1:
            argv += ["--cpus", str(self.cpus)]
        if self.accel != "tcg":
            argv += ["--accel", self.accel]
        argv += ["--disk-size", self.disk_size] if self.disk_size else []
        argv += ["--resolve", self.resolve] if self.resolve else []
        if self.shutdown_timeout is not None:
            argv += ["--shutdown-timeout", f"{self.shutdown_timeout:g}"]
        if self.watch.checks is not None:
            argv += ["--checks", ",".join(self.watch.checks) or "none"]
        for marker in self.watch.markers if self.watch.markers != (DEFAULT_MARKER,) else ():
            argv += ["--marker", marker]
        argv += [] if self.watch.accept_login_prompt else ["--marker-only"]
        if self.watch.stall_seconds != WatchSettings.stall_seconds:
            argv += ["--stall-timeout", f"{self.watch.stall_seconds:g}"]
        return argv


def find_firmware(explicit: Optional[Path], arch: str = "amd64") -> Path:
    if explicit:
        if not explicit.is_file():
            raise BootTestError(f"firmware {explicit} does not exist")
        return explicit
    machine = machine_for(arch)
    for candidate in machine.firmware:
        if os.path.isfile(candidate):
            return Path(candidate)
    raise BootTestError(
        f"UEFI firmware for {machine.arch} qemu not found ({', '.join(machine.firmware)}): "
        f"install the {machine.firmware_package} package or pass --firmware"
    )


def variable_store(code: Path) -> Optional[Path]:
    """The pristine variable store beside a split firmware's code file (AAVMF_CODE.fd ->
    AAVMF_VARS.fd); None for a single-file firmware (OVMF.fd, QEMU_EFI.fd)."""
    if "CODE" not in code.name:
        return None
    store = code.with_name(code.name.replace("CODE", "VARS"))
    if not store.is_file():
        raise BootTestError(f"firmware {code} has no variable store beside it ({store.name})")
    return store


def image_format(image: Path) -> Tuple[str, int]:
    """What qemu-img says the image is, and its virtual size in bytes; the file suffix
    and 0 when qemu-img is missing or cannot tell."""
    if shutil.which("qemu-img"):
        done = spawn.run(["qemu-img", "info", "--output=json", str(image)], timeout=60,
                         whole_output=True, errors_apart=True)
        if done.ok:
            info = json.loads(done.text)
            return str(info["format"]), int(info.get("virtual-size") or 0)
    return ("qcow2" if image.suffix == ".qcow2" else "raw"), 0


def _option_path(path: Path) -> str:
    return str(path).replace(",", ",,")  # qemu's option syntax doubles literal commas


def qemu_command(
    opts: BootOptions,
    disk: Path,
    fmt: str,
    firmware: Optional[Path],
    variables: Optional[Path] = None,
    seed: Optional[Path] = None,
) -> List[str]:
    """The qemu command line: software emulation, serial on stdout, disk as a snapshot.
    ``firmware`` with ``variables`` (a private copy of the store): split UEFI flashes;
    ``seed``: a NoCloud seed disk, read-only, after the image."""
    drive = _option_path(disk)
    machine = opts.machine
    cmd = [
        opts.qemu_binary,
        "-accel",
        opts.accel,
        "-machine",
        machine.machine,
    ]
    cpu = opts.cpu or machine.cpu
    cmd += ["-cpu", cpu] if cpu else []
    cmd += [
        "-m",
        str(opts.memory_mib),
        "-smp",
        str(opts.cpus),
        "-nodefaults",
        "-nographic",  # also makes SeaBIOS print to the serial port
        "-serial",
        "stdio",
        "-monitor",
        "none",
        *_network_and_questions(opts, seed is not None),
        "-no-reboot",  # a reset ends the run instead of looping
        "-snapshot",  # writes go to a temporary overlay, never to the image
        "-drive",
        f"file={drive},format={fmt},if=virtio,media=disk",
    ]
    if seed is not None:
        cmd += ["-drive", f"file={_option_path(seed)},format=raw,if=virtio,readonly=on"]
    if firmware is not None and variables is not None:
        cmd += [
            "-drive",
            f"if=pflash,format=raw,unit=0,readonly=on,file={_option_path(firmware)}",
            "-drive",
            f"if=pflash,format=raw,unit=1,file={_option_path(variables)}",
        ]
    elif firmware is not None:
        cmd += ["-bios", str(firmware)]
    return cmd


def _network_and_questions(opts: BootOptions, seeded: bool = False) -> List[str]:
    """No network for a boot that only waits for the marker; for the checks, qemu's user
    network (DHCP and DNS forwarded to this machine's resolver) and what the guest's
    check script asks qemu's fw_cfg: the host name to resolve, this machine's name (which
    must not be the image's), whether a NoCloud seed is attached, and that it should
    power off when done."""
    if not opts.watch.with_checks:
        return ["-nic", "none"]
    answers = {"poweroff": "yes", "seed": "yes" if seeded else ""}
    answers["resolve"] = resolvable_host(opts.resolve) if opts.resolve else ""
    answers["build-hosts"] = resolvable_host(socket.gethostname())
    argv = ["-nic", "user,model=virtio-net-pci"]
    for name, value in answers.items():
        if value:
            argv += ["-fw_cfg", f"name={FW_CFG}{name},string={value}"]
    return argv


@contextlib.contextmanager
def uefi_firmware(opts: BootOptions) -> Iterator[Tuple[Optional[Path], Optional[Path]]]:
    """(firmware, private copy of its variable store) for a UEFI boot; (None, None) for
    BIOS. The copy lives only as long as the boot."""
    if not opts.with_uefi:
        yield None, None
        return
    code = find_firmware(opts.firmware, opts.arch)
    store = variable_store(code)
    if store is None:
        yield code, None
        return
    with tempfile.TemporaryDirectory(prefix="dib-boottest-vars.") as tmp:
        copy = Path(tmp) / store.name
        shutil.copyfile(store, copy)
        yield code, copy


def overlay_size(opts: BootOptions, virtual_bytes: int) -> Optional[str]:
    """The size of the overlay the guest boots: ``disk_size`` when given; with the checks,
    the image's own size plus GROW_BYTES (so growroot has room to show); else None (the
    image itself, as a snapshot)."""
    if opts.disk_size:
        return opts.disk_size
    if opts.watch.with_checks and virtual_bytes:
        return str(virtual_bytes + GROW_BYTES)
    return None


@contextlib.contextmanager
def boot_disk(opts: BootOptions, fmt: str, virtual_bytes: int) -> Iterator[Tuple[Path, str]]:
    """The image itself, or a larger qcow2 overlay on it (removed afterwards): the image
    is never written either way."""
    size = overlay_size(opts, virtual_bytes)
    if size is None:
        yield opts.image, fmt
        return
    if opts.work_dir is not None:
        opts.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".dib-boottest.", dir=opts.work_dir) as tmp:
        # Named after the image: qemu's command line (ps, pgrep) still says what boots.
        overlay = Path(tmp) / f"{opts.image.stem}.overlay.qcow2"
        done = spawn.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt,
             "-b", str(opts.image.resolve()), str(overlay), size],
            timeout=60,
            errors_apart=True,
        )
        if not done.ok:
            problem = "timed out" if done.timed_out else done.errors.strip()
            raise BootTestError(f"qemu-img create overlay failed: {problem}")
        yield overlay, "qcow2"


@contextlib.contextmanager
def seed_disk(opts: BootOptions) -> Iterator[Optional[Path]]:
    """A NoCloud seed disk (vfat, label CIDATA: meta-data and user-data) for a checked
    boot, removed afterwards; None without the checks or without mkfs.vfat and mcopy
    (the guest's cloud-init check then says no seed was attached)."""
    if not opts.watch.with_checks or not (shutil.which("mkfs.vfat") and shutil.which("mcopy")):
        yield None
        return
    if opts.work_dir is not None:
        opts.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".dib-boottest-seed.", dir=opts.work_dir) as tmp:
        seed = Path(tmp) / "seed.img"
        files = []
        for name, text in NOCLOUD_FILES.items():
            (Path(tmp) / name).write_text(text)
            files.append(str(Path(tmp) / name))
        made = spawn.run(["mkfs.vfat", "-C", "-n", "CIDATA", str(seed), str(SEED_KIB)],
                         timeout=30, errors_apart=True)
        if made.ok:
            made = spawn.run(["mcopy", "-i", str(seed), *files, "::/"], timeout=30,
                             errors_apart=True,
                             env=spawn.child_env({"MTOOLS_SKIP_CHECK": "1"}))
        yield seed if made.ok else None


def resolvable_host(url_or_host: str) -> str:
    """The host name in a mirror URL (or a bare host name) that the guest can resolve; ""
    for an address, localhost or anything that is not a plain DNS name."""
    host = url_or_host
    if "://" in url_or_host:
        host = urllib.parse.urlsplit(url_or_host).hostname or ""
    host = host.rstrip(".")
    if not HOST_NAME.fullmatch(host) or host.lower() == "localhost" or _is_address(host):
        return ""
    return host


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def mirror_host() -> str:
    """The host name of this machine's Debian mirror (DIB_DISTRIBUTION_MIRROR, else its apt
    sources): what the name-resolution check resolves; "" when there is none."""
    try:
        return resolvable_host(find_mirror("debian"))
    except MirrorNotFound:
        return ""
