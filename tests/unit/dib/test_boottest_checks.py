"""The checks of the running system (elements/boot-checks): the check-line parser, the
watcher's verdicts after the marker (a failed unit, emergency mode, a hung power-off,
checks that never finish, checks a target did not select), the qemu command line that
asks the guest its questions, and a fake qemu that powers off (or not) — no real VM.
The catalogue's cause for each evidence line: tests/unit/test_boot_checks_catalogue.py
(this directory runs in host containers, with dib alone)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from dib import bootconsole, bootqemu, boottest
from dib.bootconsole import (
    CHECK_NAMES,
    DETAIL_LIMIT,
    MAX_CHECKS,
    CheckStatus,
    Watcher,
    WatchSettings,
    parse_check_line,
    replay_log,
)
from dib.bootqemu import BootOptions, qemu_command, resolvable_host
from dib.boottest import run_boot_test
from tests.unit.dib.bootlogs import BIOS_OK

SCRIPT = Path(__file__).parents[3] / "elements" / "boot-checks" / "dib-boot-checks"
MARKER = "DIB-BOOT-MARKER-OK kernel=6.1.0-50-amd64 root=/dev/vda1 root-bytes=1980190720"
UP = BIOS_OK.replace(
    "DIB-BOOT-MARKER-OK kernel=6.1.0-50-amd64 root=/dev/vda1 root-bytes=3184697344\r\n",
    "")
PASSING = [
    "DIB-BOOT-CHECK units pass system running, no failed unit",
    "DIB-BOOT-CHECK cloud-init skip no cloud-init in the image",
    "DIB-BOOT-CHECK network skip the image configures no network: no ifupdown",
    "DIB-BOOT-CHECK resolve skip no network to resolve mirror.example over",
    "DIB-BOOT-CHECK root-fs pass / is read-write from /dev/vda1, UUID=7c93 as the kernel was told",
    "DIB-BOOT-CHECK root-grown pass /dev/vda1 fills its disk (1920 MiB); filesystem 1888 MiB",
    "DIB-BOOT-CHECK cmdline pass console=tty0 console=ttyS0,115200",
    "DIB-BOOT-CHECK identity pass hostname debian; machine-id made at this boot",
]
DONE = "DIB-BOOT-CHECKS-DONE poweroff=yes"
POWER_DOWN = "[   32.817437] reboot: Power down"
# bookworm, an fstab entry whose UUID no disk has: systemd waits 90 s, then gives up.
EMERGENCY = UP.replace("[  OK  ] Reached target multi-user.target - Multi-User System.\r\n", (
    "[ TIME ] Timed out waiting for device dev-disk-by\\x2duuid-0b4e5f3a\\x2d1c2d.device - "
    "/dev/disk/by-uuid/0b4e5f3a-1c2d.\r\n"
    "[DEPEND] Dependency failed for mnt-data.mount - /mnt/data.\r\n"
    "[DEPEND] Dependency failed for local-fs.target - Local File Systems.\r\n"
    "[  OK  ] Reached target emergency.target - Emergency Mode.\r\n"
    'You are in emergency mode. After logging in, type "journalctl -xb" to view\r\n'
    "Cannot open access to console, the root account is locked.\r\n"
    "Press Enter to continue.\r\n"))
EMERGENCY_EVIDENCE = (
    "boot: emergency mode: [ TIME ] Timed out waiting for device "
    "dev-disk-by\\x2duuid-0b4e5f3a\\x2d1c2d.device - /dev/disk/by-uuid/0b4e5f3a-1c2d.")


def console(*lines: str, marker: str = MARKER + " checks=on") -> str:
    return UP + "\r\n".join((marker, *lines)) + "\r\n"


# ---- the check line -----------------------------------------------------------------


def test_a_check_line_is_parsed_and_its_detail_bounded_to_one_line():
    check = parse_check_line("[  33.1] DIB-BOOT-CHECK units fail foo.service\tbar.service "
                             + "x" * 1000)
    assert check is not None
    assert (check.name, check.status) == ("units", CheckStatus.FAIL)
    assert check.detail.startswith("foo.service bar.service x")
    assert len(check.detail) == DETAIL_LIMIT
    assert parse_check_line("DIB-BOOT-CHECK cmdline pass").detail == ""
    bell = parse_check_line("DIB-BOOT-CHECK identity fail a\x07b\x1b]0;title\x07 \u202ec")
    assert bell is not None and bell.detail == "a b ]0;title c"


@pytest.mark.parametrize("line", [
    "DIB-BOOT-CHECK units maybe fine",  # not a status
    "DIB-BOOT-CHECK Units pass x",  # not a check name
    "DIB-BOOT-CHECK ../etc pass x",
    "DIB-BOOT-CHECK " + "a" * 41 + " pass x",
    "DIB-BOOT-CHECKunits pass",
    "DIB-BOOT-CHECK units passed",
])
def test_lines_that_are_not_check_lines(line):
    assert parse_check_line(line) is None


def test_every_check_the_script_reports_is_a_known_name():
    script = SCRIPT.read_text()
    reported = set(re.findall(r"\bsay ([a-z][a-z0-9-]*) (?:pass|fail|skip|\"\$)", script))
    assert reported == set(CHECK_NAMES) - {"shutdown"}  # boottest judges the power-off
    assert script.splitlines()[0] == "#!/bin/sh"


def test_the_script_is_posix_sh():
    dash = "/bin/dash" if os.path.exists("/bin/dash") else "/bin/sh"
    assert subprocess.run([dash, "-n", str(SCRIPT)]).returncode == 0


# ---- the watcher after the marker ---------------------------------------------------


def test_all_checks_passed_and_a_clean_power_off_pass_with_every_check():
    verdict = replay_log(console(*PASSING, DONE, POWER_DOWN))
    assert verdict.passed, verdict.evidence
    assert verdict.evidence.startswith("DIB-BOOT-MARKER-OK")
    assert [c.name for c in verdict.checks] == [*CHECK_NAMES[:-1], "shutdown"]
    assert verdict.checks[-1].status is CheckStatus.PASS
    assert verdict.facts["checks"] == "on"


def test_a_marker_without_checks_passes_as_before():
    verdict = replay_log(console(marker=MARKER))
    assert verdict.passed and verdict.checks == ()
    watcher = Watcher(WatchSettings())
    watcher.feed(MARKER, 30.0)
    assert watcher.done(30.0)


def test_check_lines_before_the_marker_do_not_count():
    verdict = replay_log(UP + "DIB-BOOT-CHECK units fail fake.service\r\n" + MARKER + "\r\n")
    assert verdict.passed and verdict.checks == ()


FAILED_UNIT = "DIB-BOOT-CHECK units fail dib-broken.service foo.mount (system degraded)"


def test_a_failed_unit_is_named():
    verdict = replay_log(console(FAILED_UNIT, *PASSING[1:], DONE, POWER_DOWN))
    assert not verdict.passed
    assert verdict.evidence == "boot: unit failed: dib-broken.service"


def test_a_system_not_running_without_a_failed_unit_is_its_own_line():
    line = "DIB-BOOT-CHECK units fail system starting, no failed unit listed"
    verdict = replay_log(console(line, DONE, POWER_DOWN))
    assert verdict.evidence == "boot: system not running: system starting, no failed unit listed"


def test_the_first_failed_check_gives_the_evidence():
    lines = [*PASSING[:3], "DIB-BOOT-CHECK root-grown fail /dev/vda1 ends 1024 MiB before",
             "DIB-BOOT-CHECK cmdline fail no serial console=", DONE]
    assert replay_log(console(*lines)).evidence == (
        "boot: root not grown: /dev/vda1 ends 1024 MiB before")


def test_emergency_mode_is_named_with_what_came_before_not_a_timeout():
    watcher = Watcher(WatchSettings(final_grace=3.0))
    for number, line in enumerate(EMERGENCY.split("\r\n")):
        watcher.feed(bootconsole.clean(line.encode()), float(number))
    assert watcher.final_at is not None  # the run ends early, not at the timeout
    assert watcher.done(watcher.final_at + 3.0)
    assert replay_log(EMERGENCY).evidence == EMERGENCY_EVIDENCE


def test_an_escape_systemd_cut_short_leaves_nothing_behind():
    line = (b"[\x1b[0;1;31m TIME \x1b[0m] Timed out waiting for device \x1b[0;1;\xe2\x80\xa6"
            b"e5f3a-1c2d.device - /dev/disk/by-uuid/0b4e5f3a-1c2d.\r")
    assert bootconsole.clean(line) == (
        "[ TIME ] Timed out waiting for device \u2026e5f3a-1c2d.device - "
        "/dev/disk/by-uuid/0b4e5f3a-1c2d.")


def test_a_missing_root_still_beats_the_emergency_shell_it_leads_to():
    dracut = ("[  OK  ] Reached target basic.target\r\n"
              "[ TIME ] Timed out waiting for device dev-disk-by\\x2duuid-1.device - "
              "/dev/disk/by-uuid/1.\r\n"
              "dracut-initqueue[300]: Warning: /dev/disk/by-uuid/1 does not exist\r\n"
              "Entering emergency mode. Exit the shell to continue.\r\n")
    assert replay_log(dracut).evidence == (
        "dracut-initqueue[300]: Warning: /dev/disk/by-uuid/1 does not exist")


HUNG = "[  *** ] A stop job is running for foo.service"


def test_a_power_off_that_hangs_is_named():
    verdict = replay_log(console(*PASSING, DONE, HUNG))
    assert not verdict.passed
    assert verdict.checks[-1].status is CheckStatus.FAIL
    assert verdict.evidence == (
        "boot: shutdown hung: still running 0 s after the checks asked for a power-off; "
        "last line: [  *** ] A stop job is running for foo.service")
    assert replay_log(console(*PASSING, DONE), exited=True).passed  # qemu exited by itself


def test_a_guest_that_was_not_asked_to_power_off_skips_the_shutdown():
    verdict = replay_log(console(*PASSING, "DIB-BOOT-CHECKS-DONE poweroff=no"))
    assert verdict.passed
    assert verdict.checks[-1].status is CheckStatus.SKIP
    watcher = Watcher(WatchSettings())
    for line in (MARKER + " checks=on", "DIB-BOOT-CHECKS-DONE poweroff=no"):
        watcher.feed(line, 40.0)
    assert watcher.done(40.0)


def test_checks_that_never_finish_fail_at_the_timeout():
    verdict = replay_log(console(*PASSING[:3]))
    assert not verdict.passed
    assert verdict.evidence.startswith(
        "boot: the checks did not finish after 0 s; last check: network; last line: ")
    watcher = Watcher(WatchSettings())
    watcher.feed(MARKER + " checks=on", 30.0)
    assert not watcher.done(500.0)  # the boot's timeout bounds the checks


def test_a_panic_while_the_checks_run_ends_the_run_with_its_line():
    watcher = Watcher(WatchSettings(final_grace=3.0))
    watcher.feed(MARKER + " checks=on", 30.0)
    watcher.feed("[ 40.1] Kernel panic - not syncing: Fatal exception", 40.0)
    assert not watcher.done(42.0) and watcher.done(43.0)
    assert watcher.verdict(43.0).evidence == "[ 40.1] Kernel panic - not syncing: Fatal exception"


def test_after_the_checks_the_shutdown_has_its_own_bound():
    watcher = Watcher(WatchSettings(shutdown_timeout=60.0))
    watcher.feed(MARKER + " checks=on", 30.0)
    assert watcher.deadline(600.0) == 600.0
    watcher.feed(DONE, 590.0)
    assert watcher.deadline(600.0) == 650.0
    assert not watcher.done(600.0)


def test_a_later_pass_cannot_hide_a_fail_and_names_are_bounded():
    lines = ["DIB-BOOT-CHECK units fail a.service", "DIB-BOOT-CHECK units pass all fine"]
    lines += [f"DIB-BOOT-CHECK extra-{n} pass x" for n in range(MAX_CHECKS * 3)]
    verdict = replay_log(console(*lines, DONE, POWER_DOWN))
    assert verdict.checks[0].status is CheckStatus.FAIL
    assert len(verdict.checks) == MAX_CHECKS + 1  # and the shutdown


def test_the_guest_cannot_report_the_shutdown_itself():
    verdict = replay_log(console(*PASSING, "DIB-BOOT-CHECK shutdown pass all fine", DONE))
    assert [c.name for c in verdict.checks].count("shutdown") == 1
    assert verdict.checks[-1].status is CheckStatus.FAIL  # no power-off was seen


def test_checks_a_target_did_not_select_are_skipped():
    failing = "DIB-BOOT-CHECK network fail no IPv4 default route after 60 s (ifupdown)"
    settings = WatchSettings(checks=("units", "shutdown"))
    verdict = replay_log(console(PASSING[0], failing, DONE, POWER_DOWN), settings)
    assert verdict.passed
    network = next(c for c in verdict.checks if c.name == "network")
    assert network.status is CheckStatus.SKIP and "not selected" in network.detail


def test_no_checks_selected_ends_the_run_at_the_marker():
    settings = WatchSettings(checks=())
    verdict = replay_log(console("DIB-BOOT-CHECK units fail a.service", DONE), settings)
    assert verdict.passed and verdict.checks == ()


# ---- what qemu is told --------------------------------------------------------------


def test_a_seed_disk_is_attached_read_only_and_announced(tmp_path):
    opts = BootOptions(image=tmp_path / "i.qcow2", serial_log=tmp_path / "l")
    cmd = qemu_command(opts, tmp_path / "i.qcow2", "qcow2", None, seed=tmp_path / "s,x.img")
    drives = [cmd[i + 1] for i, word in enumerate(cmd) if word == "-drive"]
    assert drives[-1] == f"file={tmp_path}/s,,x.img,format=raw,if=virtio,readonly=on"
    assert "name=opt/dib-matrix/seed,string=yes" in cmd
    assert "name=opt/dib-matrix/seed,string=yes" not in qemu_command(
        opts, tmp_path / "i.qcow2", "qcow2", None)


def test_the_guest_gets_a_network_and_its_questions_only_with_checks(tmp_path):
    opts = BootOptions(image=tmp_path / "i.qcow2", serial_log=tmp_path / "l",
                       resolve="mirror.example.org")
    cmd = qemu_command(opts, tmp_path / "i.qcow2", "qcow2", None)
    assert cmd[cmd.index("-nic") + 1] == "user,model=virtio-net-pci"
    answers = [cmd[i + 1] for i, word in enumerate(cmd) if word == "-fw_cfg"]
    assert "name=opt/dib-matrix/poweroff,string=yes" in answers
    assert "name=opt/dib-matrix/resolve,string=mirror.example.org" in answers
    quiet = BootOptions(image=tmp_path / "i.qcow2", serial_log=tmp_path / "l",
                        watch=WatchSettings(checks=()))
    cmd = qemu_command(quiet, tmp_path / "i.qcow2", "qcow2", None)
    assert cmd[cmd.index("-nic") + 1] == "none" and "-fw_cfg" not in cmd


@pytest.mark.parametrize(("given", "host"), [
    ("http://mirror.example.org/debian", "mirror.example.org"),
    ("https://user:pw@mirror.example.org:8443/debian/", "mirror.example.org"),
    ("mirror.example.org.", "mirror.example.org"),
    ("http://127.0.0.1:3142/debian", ""),
    ("http://[::1]/debian", ""),
    ("http://localhost/debian", ""),
    ("file:///srv/mirror", ""),
    ("evil,string=x,name=opt/other", ""),
    ("a b", ""),
    ("-x", ""),
    ("x" * 300, ""),
])
def test_only_a_plain_host_name_is_passed_to_the_guest(given, host):
    assert resolvable_host(given) == host


def test_options_with_checks_round_trip_through_the_command_line(tmp_path):
    opts = BootOptions(image=Path("/i.qcow2"), serial_log=Path("/l.log"), resolve="m.example",
                       shutdown_timeout=30.0, watch=WatchSettings(checks=("units", "shutdown")))
    argv = opts.to_argv()
    assert boottest.options_from_args(boottest.build_parser().parse_args(argv)) == opts
    none = BootOptions(image=Path("/i.qcow2"), serial_log=Path("/l.log"),
                       watch=WatchSettings(checks=()))
    assert boottest.options_from_args(
        boottest.build_parser().parse_args(none.to_argv())) == none
    every = boottest.build_parser().parse_args(["/i", "--serial-log", "/l", "--checks", "all"])
    assert boottest.options_from_args(every).watch.checks is None
    for bad in ("units,x", ",", "units;reboot"):
        with pytest.raises(SystemExit):
            boottest.build_parser().parse_args(["/i", "--serial-log", "/l", "--checks", bad])


def test_the_machine_gives_the_shutdown_bound():
    amd64 = BootOptions(image=Path("/i"), serial_log=Path("/l"))
    arm64 = BootOptions(image=Path("/i"), serial_log=Path("/l"), arch="arm64")
    assert amd64.watch_settings.shutdown_timeout == 60.0
    assert arm64.watch_settings.shutdown_timeout == 180.0
    assert BootOptions(image=Path("/i"), serial_log=Path("/l"),
                       shutdown_timeout=5).watch_settings.shutdown_timeout == 5


# ---- a fake qemu that runs the checks -----------------------------------------------

FAKE = """#!/bin/sh
for word in "$@"; do
    case $word in
        file=*) value=${{word#file=}}; value=${{value%%,*}}
                if [ -z "$disk" ]; then disk=$value; else seed=$value; fi ;;
    esac
done
size=$(qemu-img info --output=json "$disk" | tr -d ' \\n' \\
    | sed 's/.*"virtual-size":\\([0-9]*\\).*/\\1/')
echo "{marker} checks=on"
echo "disk-bytes=$size"
{body}
"""


def fake_boot(tmp_path: Path, monkeypatch, body: str, **options) -> boottest.BootResult:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    qemu = bin_dir / "qemu-system-x86_64"
    qemu.write_text(FAKE.format(marker=MARKER, body=body))
    qemu.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    image = tmp_path / "image.qcow2"
    if not image.exists():
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True)
    work = tmp_path / "work"
    opts = BootOptions(image=image, serial_log=tmp_path / "serial.log", timeout=20,
                       work_dir=work, **options)
    result = run_boot_test(opts)
    assert list(work.iterdir()) == []  # the overlay is gone
    return result


needs_qemu_img = pytest.mark.skipif(subprocess.run(["sh", "-c", "command -v qemu-img"],
                                                   capture_output=True).returncode != 0,
                                    reason="qemu-img not installed")


@needs_qemu_img
def test_a_guest_that_powers_off_passes_and_booted_a_larger_overlay(tmp_path, monkeypatch):
    lines = "\n".join(f"echo '{line}'" for line in [*PASSING, DONE, POWER_DOWN])
    result = fake_boot(tmp_path, monkeypatch, lines + "\nexit 0")
    assert result.passed, result.evidence
    assert result.checks[-1].to_dict()["status"] == "pass"
    assert f"disk-bytes={(64 << 20) + bootqemu.GROW_BYTES}" in (tmp_path / "serial.log").read_text()
    assert result.to_dict()["checks"][0] == {"name": "units", "status": "pass",
                                             "detail": "system running, no failed unit"}
    assert os.path.getsize(tmp_path / "image.qcow2") < 1 << 20  # the image was not written


needs_mtools = pytest.mark.skipif(
    subprocess.run(["sh", "-c", "command -v mtype && command -v mkfs.vfat"],
                   capture_output=True).returncode != 0, reason="mtools or dosfstools missing")


@needs_qemu_img
@needs_mtools
def test_the_nocloud_seed_holds_the_user_data_and_is_removed(tmp_path, monkeypatch):
    body = ('MTOOLS_SKIP_CHECK=1 mlabel -s -i "$seed" ::\n'
            'MTOOLS_SKIP_CHECK=1 mtype -i "$seed" ::/user-data\n'
            + "\n".join(f"echo '{line}'" for line in [*PASSING, DONE, POWER_DOWN]))
    result = fake_boot(tmp_path, monkeypatch, body)
    serial = (tmp_path / "serial.log").read_text()
    assert "CIDATA" in serial and "#cloud-config" in serial
    assert bootqemu.CLOUD_INIT_MARK in serial
    assert result.passed


@needs_qemu_img
def test_a_guest_that_does_not_power_off_is_stopped_at_the_shutdown_bound(tmp_path, monkeypatch):
    lines = "\n".join(f"echo '{line}'" for line in [*PASSING, DONE])
    result = fake_boot(tmp_path, monkeypatch, lines + "\nsleep 60", shutdown_timeout=0.6)
    assert not result.passed
    assert result.evidence.startswith("boot: shutdown hung: still running 1 s")
    assert result.seconds < 15
