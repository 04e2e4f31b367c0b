"""Read a booting machine's serial console and tell how the boot went: the verdict and
the one line of evidence it rests on. Pure: lines and times go in, a :class:`Verdict`
comes out, so a saved log replays (:func:`replay_log`) exactly as it was watched.

- passed: the boot marker appeared (``DIB-BOOT-MARKER-OK``, printed by the
  ``boot-marker`` element once multi-user.target is up); a login prompt also
  passes, after a short wait for the marker. When the marker says ``checks=on`` (the
  ``boot-checks`` element), the guest then reports one ``DIB-BOOT-CHECK <name>
  <pass|fail|skip> <detail>`` line per check of the running system and powers off:
  the watcher waits for ``DIB-BOOT-CHECKS-DONE`` (within the boot's timeout), then for
  qemu to exit by itself (``shutdown_timeout``: the ``shutdown`` check). A failed check
  fails the boot with a synthesized evidence line (:data:`CHECK_EVIDENCE`);
- failed, with one evidence line: the console line that shows why (a :class:`Rule`
  matched it; final rules end the run early when the machine cannot recover: a
  panic, the initramfs shell, the firmware finding nothing to boot), or, when no
  console line did, a synthesized ``boot: ...`` line (:data:`EVIDENCE_SHAPES`).

The watcher only reports evidence; naming the cause is the category catalogue's job
(``matrix/verdict/categories/default.yaml``, entries for ``*:boot`` rows).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

DEFAULT_MARKER = "DIB-BOOT-MARKER-OK"
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
