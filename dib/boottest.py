"""Boot an image under qemu (software emulation) and tell from its serial console how it went.

``python -m dib.boottest IMAGE --timeout 600 --serial-log PATH [--uefi] [--arch arm64]
[--checks all|none|NAME,...] [--resolve HOST] [--result-json PATH]``

The image is never modified: it boots as a copy-on-write qcow2 overlay (GROW_BYTES
larger than the image, so growroot can show; in ``work_dir``, removed afterwards) under
``-snapshot``; the serial console goes to the log, and the run ends as soon as the
outcome is known:

- passed: the boot marker appeared (``DIB-BOOT-MARKER-OK``, printed by the
  ``boot-marker`` element once multi-user.target is up); a login prompt also
  passes, after a short wait for the marker. When the marker says ``checks=on`` (the
  ``boot-checks`` element), the guest then reports one ``DIB-BOOT-CHECK <name>
  <pass|fail|skip> <detail>`` line per check of the running system and powers off:
  the run waits for ``DIB-BOOT-CHECKS-DONE`` (within ``timeout``), then for qemu to
  exit by itself (``shutdown_timeout``: the ``shutdown`` check). A failed check fails
  the boot with a synthesized evidence line (:data:`CHECK_EVIDENCE`). For the checks
  the guest gets qemu's user network and, through fw_cfg (``opt/dib-matrix/...``), the
  host name to resolve, this machine's name and the request to power off;
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
``seconds_to_marker``, ``stage``, ``facts``, ``checks``, ``to_dict()``), or raises
:class:`BootTestError` when it cannot start; ``BootOptions.to_argv()`` is the command
line that repeats it; ``replay_log(text)`` gives the verdict of a saved serial log.
Meant to run where
the images land (the orchestrating machine), not inside the build host's container:
one qemu and one firmware for every host, so boot verdicts compare across hosts.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import enum
import ipaddress
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from dib import spawn
from dib.arch import normalise as normalise_arch
from dib.errors import DibError
from dib.mirror import MirrorNotFound, find_mirror

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


KILL_GRACE_SECONDS = 5.0
ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|[()][0-9A-Za-z]|[=>78cDEHMZ])")
# What is left of an escape that systemd cut short when it shortened a status line
# ("\x1b[0;1;…"): the escape character and its parameters so far.
CUT_ESCAPE = re.compile(r"\x1b(\[[0-9;?]*)?")
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
    shape: str = ""  # an EVIDENCE_SHAPES key: the evidence is written, not the line itself


def _rules(*specs: Tuple[str, bool, str]) -> Tuple[Rule, ...]:
    return tuple(Rule(re.compile(pattern), final, order, shape)
                 for order, (pattern, final, shape) in enumerate(specs))


def _line(pattern: str, final: bool, shape: str = "") -> Tuple[str, bool, str]:
    return pattern, final, shape


# In priority order (the catalogue names the cause of the line that wins).
RULES = _rules(
    # the root filesystem is missing
    _line(r"ALERT!\s+\S+ does not exist", True),
    _line(r"Gave up waiting for root (file system )?device", False),
    _line(r"VFS: Unable to mount root fs|Cannot open root device", True),
    _line(r"dracut.*(does not exist|Could not boot)", True),
    # systemd gave up on the boot: a mount of fstab, a device, a unit local-fs.target needs
    _line(r"You are in (emergency|rescue) mode|Entering emergency mode|"
          r"Reached target emergency\.target", True, "emergency"),
    # a device systemd waited for: the root (dracut) or an fstab entry; the emergency shell
    # or the initramfs' own complaint follows, and says which
    _line(r"Timed out waiting for device .*(by-uuid|by-label)", False),
    # the kernel gave up
    _line(r"Kernel panic - not syncing", True),
    # GRUB started but could not load the kernel
    _line(r"grub rescue>", True),
    _line(
        r"^error: (no such device|file .* not found|you need to load the kernel first"
        r"|unknown filesystem|invalid magic number|disk .* not found|out of memory)",
        False,
    ),
    _line(r"Press any key to continue\.\.\.", False),
    # the firmware found nothing to boot
    _line(r"No bootable device|Boot failed: not a bootable disk", True),
    _line(r"No bootable option or device was found", True),
    _line(r"UEFI Interactive Shell|Press ESC in \d+ seconds to skip", True),
    _line(r"BdsDxe: failed to (load|start) Boot", False),
)
# What went wrong before the emergency shell: systemd's own [FAILED]/[DEPEND]/[ TIME ] lines.
FIRST_FAILURE = re.compile(
    r"Failed to (start|mount) |Dependency failed for |Timed out waiting for device ")

# The evidence lines the watcher writes itself when no console line matched a rule;
# the catalogue's boot entries match these shapes, so keep the two in step.
EVIDENCE_SHAPES = {
    "silence": "boot: the firmware handed over to the disk, then nothing for {seconds} s: {line}",
    "reset": "boot: the machine reset during the {stage} stage",
    "timeout": "boot: no marker after {seconds} s; furthest stage: {stage}",
    "qemu": "boot: qemu failed: {reason}",
    "emergency": "boot: emergency mode: {line}",
    "checks": "boot: the checks did not finish after {seconds} s; last check: {last}",
}
LAST_LINE = "; last line: {line}"

# ---- checks of the running system (the boot-checks element) ----------------------------
# After the marker says checks=on, the guest prints one line per check, then DONE, then
# powers off when asked (qemu fw_cfg): see elements/boot-checks.
CHECKS_FACT = "checks"
SHUTDOWN = "shutdown"  # the check boottest makes itself: qemu exited after the power-off
CHECK_NAMES = ("units", "cloud-init", "network", "resolve", "root-fs", "root-grown", "cmdline",
               "identity", "shutdown")
CHECK_LINE = re.compile(r"DIB-BOOT-CHECK (?P<name>[a-z][a-z0-9-]{0,39}) "
                        r"(?P<status>pass|fail|skip)(?: (?P<detail>.*))?$")
CHECKS_DONE = re.compile(r"DIB-BOOT-CHECKS-DONE(?: poweroff=(?P<poweroff>yes|no))?")
POWERED_DOWN = re.compile(r"reboot: Power down")
DETAIL_LIMIT = 240  # characters of a check's detail (the guest's words are untrusted)
MAX_CHECKS = 32  # distinct check names kept from one console
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
# The evidence line of a failed check; the catalogue's boot entries match these shapes.
CHECK_EVIDENCE = {
    "units": "boot: unit failed: {unit}",
    "cloud-init": "boot: cloud-init did not run the user-data: {detail}",
    "network": "boot: no network: {detail}",
    "resolve": "boot: name resolution failed: {detail}",
    "root-grown": "boot: root not grown: {detail}",
    "identity": "image leaks build-host identity: {detail}",
    "shutdown": "boot: shutdown hung: {detail}",
}
CHECK_EVIDENCE_OTHER = "boot: check {name} failed: {detail}"
SYSTEM_NOT_RUNNING = "boot: system not running: {detail}"
UNIT_NAME = re.compile(r"[\w@:.\\-]+\.(service|mount|socket|target|device|swap|path|timer|"
                       r"scope|slice|automount)")
HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9-]{1,63}){0,16}")


class CheckStatus(str, enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True)
class BootCheck:
    """One check of the running system, as the guest (or, for shutdown, boottest) judged it."""

    name: str
    status: CheckStatus
    detail: str

    def to_dict(self) -> Dict[str, str]:
        return {"name": self.name, "status": self.status.value, "detail": self.detail}

    def evidence(self) -> str:
        """The one line the catalogue names this failure's cause from."""
        if self.name == "units":
            unit = UNIT_NAME.match(self.detail)
            if unit is None:
                return SYSTEM_NOT_RUNNING.format(detail=self.detail)
            return CHECK_EVIDENCE["units"].format(unit=unit.group(0))
        shape = CHECK_EVIDENCE.get(self.name, CHECK_EVIDENCE_OTHER)
        return shape.format(name=self.name, detail=self.detail)


def parse_check_line(line: str) -> Optional[BootCheck]:
    """The check a console line reports, or None; the detail is cut to DETAIL_LIMIT."""
    found = CHECK_LINE.search(line)
    if found is None:
        return None
    printable = "".join(c if c.isprintable() else " " for c in found.group("detail") or "")
    detail = " ".join(printable.split())[:DETAIL_LIMIT]
    return BootCheck(found.group("name"), CheckStatus(found.group("status")), detail)


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


@dataclass(frozen=True)
class WatchSettings:
    markers: Tuple[str, ...] = (DEFAULT_MARKER,)
    accept_login_prompt: bool = True
    login_grace: float = 30.0  # after a login prompt, wait this long for the marker
    final_grace: float = 3.0  # after a fatal line, keep reading this long for context
    stall_seconds: float = 120.0  # silence after the firmware hand-off = no boot code
    # The checks of the running system that are judged (None: every one the guest
    # reports; (): none, the run ends at the marker as for an image without them).
    checks: Optional[Tuple[str, ...]] = None
    shutdown_timeout: float = 60.0  # after the checks, for qemu to exit by itself
    poll_seconds: float = 1.0  # how often a quiet console is looked at (graces, bounds)

    @property
    def with_checks(self) -> bool:
        return self.checks is None or bool(self.checks)

    def selected(self, name: str) -> bool:
        return self.checks is None or name in self.checks


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
    checks: Tuple[BootCheck, ...] = ()


def clean(raw: bytes) -> str:
    """A console line without terminal escapes and carriage returns."""
    text = raw.decode("utf-8", errors="replace")
    text = CUT_ESCAPE.sub("", ANSI.sub("", text))
    return text.replace("\r", "").replace("\x00", "").strip()


class CheckLog:
    """The check lines of one console after the marker, until DONE, and what the power-off
    looked like. A name reported twice keeps its worse status (a later "pass" cannot
    hide a "fail"); at most MAX_CHECKS names."""

    def __init__(self) -> None:
        self.found: Dict[str, BootCheck] = {}
        self.done_at: Optional[float] = None
        self.poweroff_asked = False
        self.powered_down = False

    def feed(self, line: str, now: float) -> None:
        if self.done_at is not None:
            self.powered_down = self.powered_down or bool(POWERED_DOWN.search(line))
            return
        done = CHECKS_DONE.search(line)
        if done:
            self.done_at = now
            self.poweroff_asked = done.group("poweroff") == "yes"
            return
        check = parse_check_line(line)
        if check is None or check.name == SHUTDOWN:  # boottest's own, not the guest's word
            return
        earlier = self.found.get(check.name)
        if earlier is None and len(self.found) >= MAX_CHECKS:
            return
        if earlier is None or _worse(check.status, earlier.status):
            self.found[check.name] = check

    @property
    def last(self) -> str:
        return next(reversed(self.found), "none")

    def shutdown(self, exited: bool, now: float, last_line: str) -> BootCheck:
        """The clean-shutdown check: the guest powered off by itself after the checks."""
        assert self.done_at is not None
        if not self.poweroff_asked:
            return BootCheck(SHUTDOWN, CheckStatus.SKIP,
                             "the guest was not asked to power off (it could not read "
                             "qemu's fw_cfg)")
        waited = _whole(now - self.done_at)
        if exited or self.powered_down:
            return BootCheck(SHUTDOWN, CheckStatus.PASS,
                             f"powered off {waited} s after the checks")
        return BootCheck(SHUTDOWN, CheckStatus.FAIL,
                         f"still running {waited} s after the checks asked for a power-off; "
                         f"last line: {last_line}"[:DETAIL_LIMIT])


def _worse(status: CheckStatus, than: CheckStatus) -> bool:
    rank = {CheckStatus.PASS: 0, CheckStatus.SKIP: 1, CheckStatus.FAIL: 2}
    return rank[status] > rank[than]


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
        self.first_failure = ""  # systemd's first [FAILED]/[DEPEND]/[ TIME ] line
        self.checks: Optional[CheckLog] = None  # after a marker that says checks=on
        self.fatal_in_checks: Optional[Tuple[Rule, str, float]] = None  # a final line then

    def feed(self, line: str, now: float) -> None:
        self.last_output = now
        if not line:
            return
        self.last_line = line
        if self.checks is not None:
            self.checks.feed(line, now)
        for stage, pattern in STAGES:
            if stage > self.stage and pattern.search(line):
                self.stage = stage
        if HANDOFF.search(line):
            self.handoff = (line, now)
        if any(marker in line for marker in self.settings.markers):
            if not (self.success and self.success[2]):
                self.success = (line, now, True)
                self._expect_checks(line)
            return
        if self.settings.accept_login_prompt and LOGIN_PROMPT.search(line) and not self.success:
            self.success = (line, now, False)
            return
        if not self.first_failure and FIRST_FAILURE.search(line):
            self.first_failure = line
        for rule in RULES:
            if rule.pattern.search(line):
                self.matches.append((rule, line))
                if rule.final and self.final_at is None:
                    self.final_at = now
                if rule.final and self._checking and self.fatal_in_checks is None:
                    self.fatal_in_checks = (rule, line, now)

    @property
    def _checking(self) -> bool:
        return self.checks is not None and self.checks.done_at is None

    def _expect_checks(self, marker_line: str) -> None:
        if self.settings.with_checks and _facts(marker_line).get(CHECKS_FACT) == "on":
            self.checks = CheckLog()

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

    def deadline(self, timeout: float) -> float:
        """When to give up: ``timeout`` until the checks are done, then the shutdown bound."""
        if self.checks is not None and self.checks.done_at is not None:
            return self.checks.done_at + self.settings.shutdown_timeout
        return timeout

    def done(self, now: float) -> bool:
        if self.success:
            line, seen, is_marker = self.success
            if not is_marker:
                return now - seen >= self.settings.login_grace
            if self.checks is None:
                return True
            if self.checks.done_at is None:  # a fatal line while the checks run ends it
                fatal = self.fatal_in_checks
                return fatal is not None and now - fatal[2] >= self.settings.final_grace
            return not (self.checks.poweroff_asked and self.settings.selected(SHUTDOWN))
        if self.final_at is not None and now - self.final_at >= self.settings.final_grace:
            return True
        return self.stalled(now)

    def verdict(self, now: float, *, timed_out: bool = False, exited: bool = False) -> Verdict:
        """The outcome at ``now``: ``exited`` when qemu ended by itself (the machine reset,
        as qemu runs with -no-reboot, or powered off after the checks), ``timed_out`` when
        the time ran out."""
        if self.success:
            return self._after_marker(now, exited)
        if self.matches:
            rule, line = min(self.matches, key=lambda match: match[0].order)
            return Verdict(False, self._evidence(rule, line), None, self.stage)
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

    def _evidence(self, rule: Rule, line: str) -> str:
        if rule.shape == "emergency":
            return EVIDENCE_SHAPES["emergency"].format(line=self.first_failure or line)
        return line

    def _after_marker(self, now: float, exited: bool) -> Verdict:
        line, seen, _ = self.success or ("", 0.0, False)
        facts = _facts(line)
        if self.checks is None:
            return Verdict(True, line, round(seen, 1), Stage.USERSPACE, facts=facts)
        checks = self._judged(now, exited)
        failed = next((c for c in checks if c.status is CheckStatus.FAIL), None)
        if self.checks.done_at is None:
            evidence = self._unfinished(now)
        elif failed is not None:
            evidence = failed.evidence()
        else:
            evidence = line
        passed = self.checks.done_at is not None and failed is None
        return Verdict(passed, evidence, round(seen, 1), Stage.USERSPACE, facts=facts,
                       checks=checks)

    def _unfinished(self, now: float) -> str:
        """Why the checks did not finish: a fatal console line, or the time ran out."""
        assert self.checks is not None
        if self.fatal_in_checks is not None:
            rule, line, _ = self.fatal_in_checks
            return self._evidence(rule, line)
        return (EVIDENCE_SHAPES["checks"].format(seconds=_whole(now), last=self.checks.last)
                + LAST_LINE.format(line=self.last_line))

    def _judged(self, now: float, exited: bool) -> Tuple[BootCheck, ...]:
        """The guest's checks in their order, then the shutdown; the ones the target did not
        select are skipped, whatever the guest said."""
        assert self.checks is not None
        found = list(self.checks.found.values())
        if self.checks.done_at is not None:
            found.append(self.checks.shutdown(exited, now, self.last_line))
        return tuple(c if self.settings.selected(c.name) else
                     BootCheck(c.name, CheckStatus.SKIP, "not selected (boot-checks of the target)")
                     for c in found)


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
    ``evidence`` is the line the catalogue classifies, its ``checks`` the checks of the
    running system it shows (a power-off is judged from the kernel's "reboot: Power
    down" line, or ``exited``). A saved log has no timings, so a synthesized line says 0 s."""
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
    checks: Tuple[BootCheck, ...] = ()  # of the running system, when the image has them

    def to_dict(self) -> Dict[str, object]:
        data = asdict(self)
        data["facts"] = dict(self.facts)
        data["command"] = list(self.command)
        data["checks"] = [check.to_dict() for check in self.checks]
        return data

    def summary(self) -> str:
        checks = "".join(f"\n  check {c.name}: {c.status.value}: {c.detail}" for c in self.checks)
        if self.passed:
            return (f"boot passed: marker after {self.seconds_to_marker} s: {self.evidence}"
                    + checks)
        return f"boot FAILED after {self.seconds:.0f} s: {self.evidence}" + checks


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
def _boot_disk(opts: BootOptions, fmt: str, virtual_bytes: int) -> Iterator[Tuple[Path, str]]:
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
def _seed_disk(opts: BootOptions) -> Iterator[Optional[Path]]:
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


def stop(proc: subprocess.Popen, grace: float = KILL_GRACE_SECONDS) -> None:
    """Terminate qemu's process group, kill what is left after ``grace`` seconds, reap it."""
    spawn.stop(proc, grace)


def _watch(
    proc: subprocess.Popen, watcher: Watcher, log, timeout: float
) -> Tuple[float, bool, bool]:
    """Feed qemu's console output to ``watcher`` until done; (elapsed, timed_out, exited).
    ``timeout`` bounds the boot and the checks; the power-off has its own bound."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    started = time.monotonic()
    pending = b""
    while True:
        now = time.monotonic() - started
        limit = watcher.deadline(timeout)
        if now >= limit:
            return now, True, False
        ready, _, _ = select.select([fd], [], [], min(watcher.settings.poll_seconds, limit - now))
        now = time.monotonic() - started  # a quiet poll took time too
        if ready:
            chunk = os.read(fd, 65536)
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
    watcher = Watcher(opts.watch_settings)
    with contextlib.ExitStack() as stack:
        firmware, variables = stack.enter_context(_firmware(opts))
        disk, fmt = stack.enter_context(_boot_disk(opts, *image_format(opts.image)))
        seed = stack.enter_context(_seed_disk(opts))
        err = stack.enter_context(tempfile.TemporaryFile())
        cmd = qemu_command(opts, disk, fmt, firmware, variables, seed)
        with open(opts.serial_log, "wb") as log:
            proc = spawn.spawn(cmd, stderr=err)
            try:
                elapsed, timed_out, exited = _watch(proc, watcher, log, opts.timeout)
            finally:
                stop(proc, opts.kill_grace)
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
        checks=verdict.checks,
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
    parser.add_argument(
        "--checks",
        type=_check_names,
        help="checks of the running system to judge: all (default: every one the image "
        "reports), none (stop at the marker) or names, comma-separated: " + ",".join(CHECK_NAMES),
    )
    parser.add_argument(
        "--resolve",
        default="",
        help="host name the name-resolution check resolves (the matrix passes its Debian "
        "mirror's); without it, that check is skipped",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        help="seconds for the guest to power off after its checks (60; 180 on arm64)",
    )
    parser.add_argument("--result-json", type=Path, help="also write the result as JSON here")
    return parser


def _check_names(text: str) -> Optional[Tuple[str, ...]]:
    """``--checks``: known names, comma-separated; "none" for no checks, "all" for every
    one the image reports."""
    if text.strip() == "all":
        return None
    if text.strip() == "none":
        return ()
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in CHECK_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown check {', '.join(unknown) or '(empty)'}; known: {', '.join(CHECK_NAMES)}")
    return names


def options_from_args(args: argparse.Namespace) -> BootOptions:
    watch = WatchSettings(
        markers=tuple(args.marker or (DEFAULT_MARKER,)),
        accept_login_prompt=not args.marker_only,
        stall_seconds=args.stall_timeout,
        checks=args.checks,
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
        resolve=args.resolve,
        shutdown_timeout=args.shutdown_timeout,
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
