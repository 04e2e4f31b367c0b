"""Boot an image under qemu (software emulation) and tell from its serial console how it went.

``python -m dib.boottest IMAGE --timeout 600 --serial-log PATH [--uefi] [--arch arm64]
[--result-json PATH]``

The image is attached with ``-snapshot`` (never modified), the serial console goes
to the log, and the run ends as soon as the outcome is known:

- passed: the boot marker appeared (``DIB-BOOT-MARKER-OK``, printed by the
  ``boot-marker`` element once multi-user.target is up); a login prompt also
  passes, after a short wait for the marker;
- failed, with one evidence line: the console line that shows why (a :class:`Rule`
  matched it; final rules end the run early when the machine cannot recover: a
  panic, the initramfs shell, the firmware finding nothing to boot), or, when no
  console line did, a synthesized ``boot: ...`` line (:data:`EVIDENCE_SHAPES`).

The machine matches the image's architecture (``BootOptions.arch``, ``--arch``): amd64
boots in ``qemu-system-x86_64 -machine q35`` with SeaBIOS, or OVMF for ``--uefi``;
arm64 always boots with UEFI, in ``qemu-system-aarch64 -machine virt -cpu cortex-a57``
with AAVMF (Debian's qemu-efi-aarch64: the read-only code in one flash, a private copy
of its variable store in the other), its serial console being the PL011 (ttyAMA0).
Both run under TCG (software emulation) unless ``accel`` says otherwise.

The watcher only reports evidence; naming the cause is the category catalogue's job
(``matrix/verdict/categories/default.yaml``, entries for ``*:boot`` rows).

qemu runs in its own process group and is terminated, then killed, and reaped on
every way out: success, failure, timeout, Ctrl-C, SIGTERM.
Exit status: 0 passed, 1 boot failed, 2 qemu or the set-up failed (an
infrastructure error, not a verdict on the image).

From Python: ``run_boot_test(BootOptions(image, serial_log, uefi=...))`` returns a
:class:`BootResult` (``passed``, ``evidence``, ``infrastructure``,
``seconds_to_marker``, ``stage``, ``facts``, ``to_dict()``), or raises
:class:`BootTestError` when it cannot start; ``BootOptions.to_argv()`` is the command
line that repeats it; ``replay_log(text)`` gives the verdict of a saved serial log.
Meant to run where
the images land (the orchestrating machine), not inside the build host's container:
one qemu and one firmware for every host, so boot verdicts compare across hosts.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from dib import spawn
from dib.arch import normalise as normalise_arch
from dib.errors import DibError

DEFAULT_MARKER = "DIB-BOOT-MARKER-OK"
DEFAULT_TIMEOUT = 600.0
OVMF_CANDIDATES = ("/usr/share/ovmf/OVMF.fd", "/usr/share/qemu/OVMF.fd")
# arm64 UEFI (Debian's qemu-efi-aarch64): the code flash; its variable store is the
# file of the same name with VARS for CODE, copied for each boot.
AAVMF_CANDIDATES = ("/usr/share/AAVMF/AAVMF_CODE.fd",)


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


MACHINES = {
    "amd64": Machine("amd64", "qemu-system-x86_64", "q35", "", "qemu-system-x86", False,
                     OVMF_CANDIDATES, "ovmf"),
    "arm64": Machine("arm64", "qemu-system-aarch64", "virt", "cortex-a57", "qemu-system-arm",
                     True, AAVMF_CANDIDATES, "qemu-efi-aarch64"),
}


def machine_for(arch: str) -> Machine:
    """The emulated machine for ``arch`` (Debian or kernel name); BootTestError if none."""
    found = MACHINES.get(normalise_arch(arch))
    if found is None:
        raise BootTestError(
            f"no boot test for architecture {arch} (known: {', '.join(sorted(MACHINES))})"
        )
    return found


KILL_GRACE_SECONDS = 5.0
ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|[()][0-9A-Za-z]|[=>78cDEHMZ])")
FACT = re.compile(r"\b([a-z][a-z0-9-]*)=(\S+)")
# The look-behind starts a name only where a word starts: without it a long line
# without " login:" costs its length squared (every position tries every length).
LOGIN_PROMPT = re.compile(r"(?<!\S)\S+ login: *$")


class Stage(enum.IntEnum):
    """How far the boot got, from what the console showed."""

    NOTHING = 0
    FIRMWARE = 1
    BOOTLOADER = 2
    KERNEL = 3
    INITRAMFS = 4
    USERSPACE = 5


STAGES = (
    (Stage.FIRMWARE, re.compile(r"SeaBIOS|iPXE|Booting from |BdsDxe|UEFI|EFI stub")),
    (Stage.BOOTLOADER, re.compile(r"GRUB|Loading Linux|Booting `")),
    (Stage.KERNEL, re.compile(r"Linux version \d|^\[\s*\d+\.\d+\] ")),
    (Stage.INITRAMFS, re.compile(r"^Begin: |initramfs|dracut")),
    (Stage.USERSPACE, re.compile(r"systemd\[1\]|Welcome to .*!|Reached target|\[  OK  \]")),
)
# The firmware handing over to the disk; silence after it means no boot code ran.
HANDOFF = re.compile(r"Booting from Hard Disk|BdsDxe: starting Boot")


@dataclass(frozen=True)
class Rule:
    """A console line that decides the verdict: it becomes the evidence. ``final`` ones
    end the run (after a grace); ``order`` breaks ties when several lines matched (the
    lowest wins: a panic because the root is missing is shown by the missing root)."""

    pattern: re.Pattern
    final: bool
    order: int


def _rules(*specs: Tuple[str, bool]) -> Tuple[Rule, ...]:
    return tuple(
        Rule(re.compile(pattern), final, order) for order, (pattern, final) in enumerate(specs)
    )


# In priority order (the catalogue names the cause of the line that wins).
RULES = _rules(
    # the root filesystem is missing
    (r"ALERT!\s+\S+ does not exist", True),
    (r"Gave up waiting for root (file system )?device", False),
    (r"VFS: Unable to mount root fs|Cannot open root device", True),
    (r"Timed out waiting for device .*(by-uuid|by-label)", True),
    (r"dracut.*(does not exist|Could not boot)", True),
    # the kernel gave up
    (r"Kernel panic - not syncing", True),
    # GRUB started but could not load the kernel
    (r"grub rescue>", True),
    (
        r"^error: (no such device|file .* not found|you need to load the kernel first"
        r"|unknown filesystem|invalid magic number|disk .* not found|out of memory)",
        False,
    ),
    (r"Press any key to continue\.\.\.", False),
    # the firmware found nothing to boot
    (r"No bootable device|Boot failed: not a bootable disk", True),
    (r"No bootable option or device was found", True),
    (r"UEFI Interactive Shell|Press ESC in \d+ seconds to skip", True),
    (r"BdsDxe: failed to (load|start) Boot", False),
)

# The evidence lines the watcher writes itself when no console line matched a rule;
# the catalogue's boot entries match these shapes, so keep the two in step.
EVIDENCE_SHAPES = {
    "silence": "boot: the firmware handed over to the disk, then nothing for {seconds} s: {line}",
    "reset": "boot: the machine reset during the {stage} stage",
    "timeout": "boot: no marker after {seconds} s; furthest stage: {stage}",
    "qemu": "boot: qemu failed: {reason}",
}
LAST_LINE = "; last line: {line}"


@dataclass(frozen=True)
class WatchSettings:
    markers: Tuple[str, ...] = (DEFAULT_MARKER,)
    accept_login_prompt: bool = True
    login_grace: float = 30.0  # after a login prompt, wait this long for the marker
    final_grace: float = 3.0  # after a fatal line, keep reading this long for context
    stall_seconds: float = 120.0  # silence after the firmware hand-off = no boot code


@dataclass(frozen=True)
class Verdict:
    """What the console showed: passed or not, and the one line that shows it.

    ``infrastructure``: qemu itself failed, so the image got no verdict."""

    passed: bool
    evidence: str
    seconds_to_marker: Optional[float]
    stage: Stage
    facts: Mapping[str, str] = field(default_factory=dict)
    infrastructure: bool = False


def clean(raw: bytes) -> str:
    """A console line without terminal escapes and carriage returns."""
    text = raw.decode("utf-8", errors="replace")
    return ANSI.sub("", text).replace("\r", "").replace("\x00", "").strip()


class Watcher:
    """Reads console lines as they come and decides when the outcome is known.

    Time is passed in (seconds since qemu started), so sample logs can be replayed
    in tests.
    """

    def __init__(self, settings: WatchSettings):
        self.settings = settings
        self.stage = Stage.NOTHING
        self.matches: List[Tuple[Rule, str]] = []  # every rule that matched, with its line
        self.final_at: Optional[float] = None
        self.success: Optional[Tuple[str, float, bool]] = None  # line, time, is the marker
        self.handoff: Optional[Tuple[str, float]] = None
        self.last_output = 0.0
        self.last_line = ""

    def feed(self, line: str, now: float) -> None:
        self.last_output = now
        if not line:
            return
        self.last_line = line
        for stage, pattern in STAGES:
            if stage > self.stage and pattern.search(line):
                self.stage = stage
        if HANDOFF.search(line):
            self.handoff = (line, now)
        if any(marker in line for marker in self.settings.markers):
            if not (self.success and self.success[2]):
                self.success = (line, now, True)
            return
        if self.settings.accept_login_prompt and LOGIN_PROMPT.search(line) and not self.success:
            self.success = (line, now, False)
            return
        for rule in RULES:
            if rule.pattern.search(line):
                self.matches.append((rule, line))
                if rule.final and self.final_at is None:
                    self.final_at = now

    def partial(self, text: str, now: float) -> None:
        """An unterminated line so far (a login prompt does not end with a newline)."""
        self.last_output = now
        text = text.strip()
        if self.settings.accept_login_prompt and LOGIN_PROMPT.search(text) and not self.success:
            self.success = (text, now, False)

    def stalled(self, now: float) -> bool:
        return (
            self.handoff is not None
            and self.stage <= Stage.FIRMWARE
            and now - self.last_output >= self.settings.stall_seconds
        )

    def done(self, now: float) -> bool:
        if self.success:
            line, seen, is_marker = self.success
            return is_marker or now - seen >= self.settings.login_grace
        if self.final_at is not None and now - self.final_at >= self.settings.final_grace:
            return True
        return self.stalled(now)

    def verdict(self, now: float, *, timed_out: bool = False, exited: bool = False) -> Verdict:
        """The outcome at ``now``: ``exited`` when qemu ended by itself (the machine reset,
        as qemu runs with -no-reboot), ``timed_out`` when the time ran out."""
        if self.success:
            line, seen, _ = self.success
            return Verdict(True, line, round(seen, 1), Stage.USERSPACE, facts=_facts(line))
        if self.matches:
            _, line = min(self.matches, key=lambda match: match[0].order)
            return Verdict(False, line, None, self.stage)
        if exited and not timed_out:
            evidence = EVIDENCE_SHAPES["reset"].format(stage=self.stage.name.lower())
        elif self.handoff and self.stage <= Stage.FIRMWARE:
            line, seen = self.handoff
            return Verdict(
                False,
                EVIDENCE_SHAPES["silence"].format(seconds=_whole(now - seen), line=line),
                None,
                self.stage,
            )
        else:
            evidence = EVIDENCE_SHAPES["timeout"].format(
                seconds=_whole(now), stage=self.stage.name.lower()
            )
        if self.last_line:
            evidence += LAST_LINE.format(line=self.last_line)
        return Verdict(False, evidence, None, self.stage)


def _whole(seconds: float) -> int:
    return max(0, int(round(seconds)))


def qemu_failed(reason: str, stage: Stage = Stage.NOTHING) -> Verdict:
    """The verdict when qemu itself failed: infrastructure, not the image."""
    return Verdict(
        False, EVIDENCE_SHAPES["qemu"].format(reason=reason), None, stage, infrastructure=True
    )


def _facts(line: str) -> Dict[str, str]:
    return dict(FACT.findall(line))


def replay_log(
    text: str,
    settings: WatchSettings = WatchSettings(),
    *,
    timed_out: bool = True,
    exited: bool = False,
) -> Verdict:
    """The verdict for a whole serial log (as saved), e.g. to re-check an old run: its
    ``evidence`` is the line the catalogue classifies. A saved log has no timings, so
    a synthesized line says 0 s."""
    watcher = Watcher(settings)
    for raw in text.encode().split(b"\n"):
        watcher.feed(clean(raw), 0.0)
    return watcher.verdict(0.0, timed_out=timed_out, exited=exited)


@dataclass(frozen=True)
class BootOptions:
    image: Path
    serial_log: Path
    timeout: float = DEFAULT_TIMEOUT
    uefi: bool = False  # amd64: OVMF instead of SeaBIOS; arm64 boots with UEFI anyway
    firmware: Optional[Path] = None  # UEFI code; default: Debian's ovmf / qemu-efi-aarch64
    memory_mib: int = 1024
    cpus: int = 1
    accel: str = "tcg"
    disk_size: Optional[str] = None  # boot a larger copy-on-write overlay (tests growroot)
    qemu: str = ""  # the qemu binary; "" = the one for ``arch``
    watch: WatchSettings = WatchSettings()
    arch: str = "amd64"  # the image's architecture (Debian name): picks qemu and machine
    cpu: str = ""  # qemu -cpu; "" = the machine's default (cortex-a57 on arm64)

    @property
    def machine(self) -> Machine:
        return machine_for(self.arch)

    @property
    def qemu_binary(self) -> str:
        return self.qemu or self.machine.qemu

    @property
    def with_uefi(self) -> bool:
        return self.uefi or self.machine.uefi_only

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
        for marker in self.watch.markers if self.watch.markers != (DEFAULT_MARKER,) else ():
            argv += ["--marker", marker]
        argv += [] if self.watch.accept_login_prompt else ["--marker-only"]
        if self.watch.stall_seconds != WatchSettings.stall_seconds:
            argv += ["--stall-timeout", f"{self.watch.stall_seconds:g}"]
        return argv


@dataclass(frozen=True)
class BootResult:
    """The outcome of one boot test: plain data for the orchestrator and reports."""

    passed: bool
    evidence: str
    seconds: float
    seconds_to_marker: Optional[float]
    stage: str
    facts: Mapping[str, str]
    serial_log: str
    command: Tuple[str, ...]
    qemu_exit: Optional[int] = None
    infrastructure: bool = False  # qemu itself failed: the image got no verdict

    def to_dict(self) -> Dict[str, object]:
        data = asdict(self)
        data["facts"] = dict(self.facts)
        data["command"] = list(self.command)
        return data

    def summary(self) -> str:
        if self.passed:
            return f"boot passed: marker after {self.seconds_to_marker} s: {self.evidence}"
        return f"boot FAILED after {self.seconds:.0f} s: {self.evidence}"


class BootTestError(DibError):
    """The boot test could not start (no qemu, no firmware, no image)."""

    exit_code = 2


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


def image_format(image: Path) -> str:
    """What qemu-img says the image is; the file suffix when qemu-img is missing."""
    if shutil.which("qemu-img"):
        done = spawn.run(["qemu-img", "info", "--output=json", str(image)], timeout=60,
                         whole_output=True, errors_apart=True)
        if done.ok:
            return str(json.loads(done.text)["format"])
    return "qcow2" if image.suffix == ".qcow2" else "raw"


def _option_path(path: Path) -> str:
    return str(path).replace(",", ",,")  # qemu's option syntax doubles literal commas


def qemu_command(
    opts: BootOptions,
    disk: Path,
    fmt: str,
    firmware: Optional[Path],
    variables: Optional[Path] = None,
) -> List[str]:
    """The qemu command line: software emulation, serial on stdout, disk as a snapshot.
    ``firmware`` with ``variables`` (a private copy of the store): split UEFI flashes."""
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
        "-nic",
        "none",
        "-no-reboot",  # a reset ends the run instead of looping
        "-snapshot",  # writes go to a temporary overlay, never to the image
        "-drive",
        f"file={drive},format={fmt},if=virtio,media=disk",
    ]
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


@contextlib.contextmanager
def _firmware(opts: BootOptions) -> Iterator[Tuple[Optional[Path], Optional[Path]]]:
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


@contextlib.contextmanager
def _boot_disk(opts: BootOptions, fmt: str) -> Iterator[Tuple[Path, str]]:
    """The image itself, or a larger qcow2 overlay on it when ``disk_size`` is set."""
    if not opts.disk_size:
        yield opts.image, fmt
        return
    with tempfile.TemporaryDirectory(prefix="dib-boottest.") as tmp:
        overlay = Path(tmp) / "overlay.qcow2"
        done = spawn.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt,
             "-b", str(opts.image.resolve()), str(overlay), opts.disk_size],
            timeout=60,
            errors_apart=True,
        )
        if not done.ok:
            problem = "timed out" if done.timed_out else done.errors.strip()
            raise BootTestError(f"qemu-img create overlay failed: {problem}")
        yield overlay, "qcow2"


def stop(proc: subprocess.Popen) -> None:
    """Terminate qemu's process group, kill what is left after a grace period, reap it."""
    spawn.stop(proc, KILL_GRACE_SECONDS)


def _watch(
    proc: subprocess.Popen, watcher: Watcher, log, timeout: float
) -> Tuple[float, bool, bool]:
    """Feed qemu's console output to ``watcher`` until done; (elapsed, timed_out, exited)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    started = time.monotonic()
    pending = b""
    while True:
        now = time.monotonic() - started
        if now >= timeout:
            return now, True, False
        ready, _, _ = select.select([fd], [], [], min(1.0, timeout - now))
        if ready:
            chunk = os.read(fd, 65536)
            now = time.monotonic() - started
            if not chunk:
                return now, False, True
            log.write(chunk)
            log.flush()
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                watcher.feed(clean(line), now)
            if pending:
                watcher.partial(clean(pending[-4096:]), now)
        if watcher.done(now):
            return now, False, False


def run_boot_test(opts: BootOptions) -> BootResult:
    """Boot ``opts.image`` and return the outcome with its evidence; raise BootTestError when
    the test cannot even start."""
    if not opts.image.is_file():
        raise BootTestError(f"image {opts.image} does not exist")
    machine = opts.machine
    if shutil.which(opts.qemu_binary) is None:
        raise BootTestError(f"{opts.qemu_binary} not found: install {machine.package}")
    opts.serial_log.parent.mkdir(parents=True, exist_ok=True)
    watcher = Watcher(opts.watch)
    with contextlib.ExitStack() as stack:
        firmware, variables = stack.enter_context(_firmware(opts))
        disk, fmt = stack.enter_context(_boot_disk(opts, image_format(opts.image)))
        err = stack.enter_context(tempfile.TemporaryFile())
        cmd = qemu_command(opts, disk, fmt, firmware, variables)
        with open(opts.serial_log, "wb") as log:
            proc = spawn.spawn(cmd, stderr=err)
            try:
                elapsed, timed_out, exited = _watch(proc, watcher, log, opts.timeout)
            finally:
                stop(proc)
                if proc.stdout:
                    proc.stdout.close()
        err.seek(0)
        stderr = err.read().decode(errors="replace").strip().splitlines()
    verdict = watcher.verdict(elapsed, timed_out=timed_out, exited=exited)
    exit_code = proc.returncode if exited else None
    if exited and exit_code not in (0, None) and not verdict.passed:
        reason = stderr[-1] if stderr else f"qemu exited with status {exit_code}"
        verdict = qemu_failed(reason, watcher.stage)
    return BootResult(
        passed=verdict.passed,
        evidence=verdict.evidence,
        seconds=round(elapsed, 1),
        seconds_to_marker=verdict.seconds_to_marker,
        stage=verdict.stage.name.lower(),
        facts=dict(verdict.facts),
        serial_log=str(opts.serial_log),
        command=tuple(cmd),
        qemu_exit=exit_code,
        infrastructure=verdict.infrastructure,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dib.boottest",
        description="Boot an image under qemu (TCG) and check its serial console for the marker.",
    )
    parser.add_argument("image", type=Path)
    parser.add_argument("--serial-log", type=Path, required=True, help="where the console goes")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds (600)")
    parser.add_argument(
        "--uefi", action="store_true", help="boot with OVMF instead of SeaBIOS (amd64)"
    )
    parser.add_argument(
        "--arch",
        default="amd64",
        help="the image's architecture: amd64 (default) or arm64 (qemu-system-aarch64, "
        "virt machine, AAVMF: always UEFI)",
    )
    parser.add_argument("--cpu", default="", help="qemu -cpu (default: cortex-a57 on arm64)")
    parser.add_argument(
        "--firmware",
        type=Path,
        help="UEFI firmware (default: Debian's ovmf; qemu-efi-aarch64's AAVMF_CODE.fd on "
        "arm64, with its AAVMF_VARS.fd copied)",
    )
    parser.add_argument("--memory", type=int, default=1024, help="MiB of RAM (1024)")
    parser.add_argument("--cpus", type=int, default=1, help="virtual CPUs (1)")
    parser.add_argument("--accel", default="tcg", help="qemu accelerator (tcg; kvm where allowed)")
    parser.add_argument("--disk-size", help="boot a larger overlay of the image, e.g. 4G")
    parser.add_argument(
        "--marker", action="append", help=f"success marker (repeatable; {DEFAULT_MARKER})"
    )
    parser.add_argument(
        "--marker-only", action="store_true", help="a login prompt alone does not pass"
    )
    parser.add_argument(
        "--stall-timeout",
        type=float,
        default=120.0,
        help="silence after the firmware hands over that means no boot code",
    )
    parser.add_argument("--result-json", type=Path, help="also write the result as JSON here")
    return parser


def options_from_args(args: argparse.Namespace) -> BootOptions:
    watch = WatchSettings(
        markers=tuple(args.marker or (DEFAULT_MARKER,)),
        accept_login_prompt=not args.marker_only,
        stall_seconds=args.stall_timeout,
    )
    return BootOptions(
        image=args.image,
        serial_log=args.serial_log,
        timeout=args.timeout,
        uefi=args.uefi,
        firmware=args.firmware,
        memory_mib=args.memory,
        cpus=args.cpus,
        accel=args.accel,
        disk_size=args.disk_size,
        watch=watch,
        arch=normalise_arch(args.arch),
        cpu=args.cpu,
    )


def _terminate(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)  # unwind through the finally that stops qemu
    try:
        result = run_boot_test(options_from_args(args))
    except BootTestError as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("ERROR: interrupted; qemu stopped", file=sys.stderr)
        return 130
    if args.result_json:
        args.result_json.parent.mkdir(parents=True, exist_ok=True)
        args.result_json.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    print(result.summary())
    if result.passed:
        return 0
    return 2 if result.infrastructure else 1


if __name__ == "__main__":
    sys.exit(main())
