"""Boot test: the evidence line the watcher picks from real console samples (the category
the catalogue names for it: tests/unit/test_boot_catalogue.py), and qemu handling with a
fake qemu on PATH (timeouts, kills, exit codes) — no real VM."""

import dataclasses
import json
import os
import time
from pathlib import Path

import pytest

from dib import bootconsole, bootqemu, boottest
from dib.bootconsole import Stage, Watcher, WatchSettings, clean, replay_log
from dib.bootqemu import BootOptions, BootTestError, qemu_command
from dib.boottest import run_boot_test
from tests.unit.dib.bootlogs import (
    BIOS_OK,
    CASES,
    INIT_PANIC_LINE,
    ROOT_MISSING_LINE,
)


@pytest.mark.parametrize("name", list(CASES))
def test_failure_logs_give_their_evidence_line(name):
    log, ending, evidence, _ = CASES[name]
    verdict = replay_log(log, **ending)
    assert not verdict.passed and not verdict.infrastructure
    assert verdict.evidence == evidence


def test_success_log_passes_with_facts():
    verdict = replay_log(BIOS_OK)
    assert verdict.passed and not verdict.infrastructure
    assert verdict.evidence.startswith("DIB-BOOT-MARKER-OK")
    assert verdict.facts == {
        "kernel": "6.1.0-50-amd64",
        "root": "/dev/vda1",
        "root-bytes": "3184697344",
    }


def test_a_missing_root_line_beats_the_panic_it_causes():
    watcher = Watcher(WatchSettings())
    watcher.feed(INIT_PANIC_LINE, 1.0)
    watcher.feed("Gave up waiting for root file system device.  Common problems:", 2.0)
    watcher.feed(ROOT_MISSING_LINE, 3.0)
    assert len(watcher.matches) == 3
    assert watcher.verdict(5.0).evidence == ROOT_MISSING_LINE
    early = Watcher(WatchSettings())
    early.feed(INIT_PANIC_LINE, 1.0)
    early.feed("Gave up waiting for root file system device.", 2.0)
    assert early.verdict(5.0).evidence == "Gave up waiting for root file system device."


def test_timeout_reports_the_furthest_stage():
    verdict = replay_log(BIOS_OK.replace("DIB-BOOT-MARKER-OK", "something else"))
    assert verdict.stage is Stage.USERSPACE


def test_clean_strips_terminal_escapes():
    assert clean(b"\x1b[2J\x1b[1;1H\x1b(BSeaBIOS\r") == "SeaBIOS"
    assert clean(b"\x1b[0m\x1b[?25lGRUB\x1b[m") == "GRUB"


def test_watcher_stops_after_a_final_line_plus_grace():
    watcher = Watcher(WatchSettings(final_grace=3.0))
    watcher.feed("[ 6.6] Kernel panic - not syncing: Attempted to kill init!", 10.0)
    assert not watcher.done(12.0)
    assert watcher.done(13.0)


def test_watcher_stall_only_before_the_bootloader_speaks():
    watcher = Watcher(WatchSettings(stall_seconds=30))
    watcher.feed("Booting from Hard Disk...", 1.0)
    assert not watcher.done(30.0)
    assert watcher.done(31.5)
    watcher.feed("GRUB loading.", 32.0)
    assert not watcher.done(100.0)


def test_login_prompt_passes_after_waiting_for_the_marker():
    watcher = Watcher(WatchSettings(login_grace=30))
    watcher.partial("debian login: ", 50.0)
    assert not watcher.done(60.0)
    watcher.feed("DIB-BOOT-MARKER-OK kernel=6.1", 61.0)
    assert watcher.done(61.0)
    verdict = watcher.verdict(61.0)
    assert verdict.passed and verdict.evidence.startswith("DIB-BOOT-MARKER-OK")
    alone = Watcher(WatchSettings(login_grace=30))
    alone.partial("debian login: ", 50.0)
    assert alone.done(80.0) and alone.verdict(80.0).evidence == "debian login:"


def test_login_prompt_ignored_when_the_marker_is_required():
    watcher = Watcher(WatchSettings(accept_login_prompt=False))
    watcher.partial("debian login: ", 50.0)
    assert not watcher.done(500.0)


def test_qemu_command_is_a_snapshot_under_tcg():
    opts = BootOptions(image=Path("/x/a,b.qcow2"), serial_log=Path("/tmp/s.log"))
    cmd = qemu_command(opts, opts.image, "qcow2", None)
    assert cmd[0] == "qemu-system-x86_64"
    assert cmd[1:3] == ["-accel", "tcg"]
    assert "-snapshot" in cmd and "-no-reboot" in cmd and "-bios" not in cmd
    assert "file=/x/a,,b.qcow2,format=qcow2,if=virtio,media=disk" in cmd
    uefi = qemu_command(opts, opts.image, "raw", Path("/usr/share/ovmf/OVMF.fd"))
    assert uefi[-2:] == ["-bios", "/usr/share/ovmf/OVMF.fd"]


def test_options_round_trip_through_the_command_line():
    opts = BootOptions(
        image=Path("/img/a.qcow2"),
        serial_log=Path("/logs/a.log"),
        timeout=300,
        uefi=True,
        disk_size="3G",
        watch=WatchSettings(accept_login_prompt=False, stall_seconds=60),
    )
    argv = opts.to_argv()
    assert argv[:6] == ["/img/a.qcow2", "--serial-log", "/logs/a.log", "--timeout", "300", "--uefi"]
    again = boottest.options_from_args(boottest.build_parser().parse_args(argv))
    assert again == opts


def test_result_serialises_with_its_evidence_and_no_category(fake_qemu, tmp_path):
    result = fake_qemu("echo 'Boot failed: not a bootable disk'; sleep 30", timeout=20,
                       final_grace=0.1)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["evidence"] == "Boot failed: not a bootable disk"
    assert data["passed"] is False and data["infrastructure"] is False
    assert "category" not in data and "legend" not in data and "labels" not in data
    assert result.summary().startswith("boot FAILED after ")
    assert result.summary().endswith(" s: Boot failed: not a bootable disk")


FAKE_QEMU = """#!/bin/sh
echo $$ > {pids}/qemu.pid
{body}
"""

# A fake qemu answers at once: the run looks at its console every 50 ms (not every
# second) and kills what ignores SIGTERM after 0.2 s (not 5 s).
QUICK_WATCH = {"poll_seconds": 0.05}
QUICK_KILL_GRACE = 0.2


def quickly(opts: BootOptions, **watch) -> BootOptions:
    """``opts`` with the quick timings of a fake qemu, and these ``watch`` settings."""
    settings = dataclasses.replace(opts.watch, **{**QUICK_WATCH, **watch})
    return dataclasses.replace(opts, watch=settings, kill_grace=QUICK_KILL_GRACE)


@pytest.fixture
def fake_qemu(tmp_path):
    """Run the boot test against a shell script standing in for qemu."""
    image = tmp_path / "disk.raw"
    image.write_bytes(b"\0" * 1024)

    def start(body, timeout=10.0, **watch):
        script = tmp_path / "qemu-system-x86_64"
        script.write_text(FAKE_QEMU.format(pids=tmp_path, body=body))
        script.chmod(0o755)
        opts = BootOptions(
            image=image,
            serial_log=tmp_path / "serial.log",
            timeout=timeout,
            qemu=str(script),
        )
        return run_boot_test(quickly(opts, **watch))

    start.pids = tmp_path
    return start


def _alive(pid: int) -> bool:
    """Running, not a zombie (orphans wait for a reaper that a container may not have)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _pids(directory: Path):
    # A shell killed between opening its pid file and writing it leaves it empty.
    texts = (p.read_text().strip() for p in sorted(directory.glob("*.pid")))
    return [int(text) for text in texts if text]


def test_marker_ends_the_run_and_qemu_is_reaped(fake_qemu):
    started = time.monotonic()
    result = fake_qemu(
        "echo 'Booting from Hard Disk...'; echo 'DIB-BOOT-MARKER-OK root=/dev/vda1'; "
        f"sleep 30 & echo $! > {fake_qemu.pids}/child.pid; wait"
    )
    assert result.passed
    assert result.seconds_to_marker is not None and result.seconds_to_marker < 5
    assert time.monotonic() - started < 8
    assert result.facts == {"root": "/dev/vda1"}
    assert Path(result.serial_log).read_text().count("DIB-BOOT-MARKER-OK") == 1
    assert not any(_alive(pid) for pid in _pids(fake_qemu.pids))


def test_timeout_kills_the_whole_process_group(fake_qemu):
    result = fake_qemu(
        f"echo 'SeaBIOS'; sleep 60 & echo $! > {fake_qemu.pids}/child.pid; wait",
        timeout=0.6,
    )
    assert result.evidence.startswith("boot: no marker after 1 s; furthest stage: firmware")
    assert result.evidence.endswith("; last line: SeaBIOS")
    assert not result.infrastructure
    assert 0.6 <= result.seconds < 3.6
    assert not any(_alive(pid) for pid in _pids(fake_qemu.pids))


def test_qemu_that_ignores_sigterm_is_killed(fake_qemu):
    started = time.monotonic()
    result = fake_qemu("trap '' TERM; echo starting; while :; do sleep 0.1; done", timeout=0.6)
    assert result.evidence == (
        "boot: no marker after 1 s; furthest stage: nothing; last line: starting"
    )
    assert time.monotonic() - started < 6
    assert not any(_alive(pid) for pid in _pids(fake_qemu.pids))


def test_fatal_line_ends_the_run_early(fake_qemu):
    result = fake_qemu(
        "echo '[ 6.6] Kernel panic - not syncing: Attempted to kill init!'; sleep 60",
        timeout=60,
        final_grace=0.2,
    )
    assert result.evidence == "[ 6.6] Kernel panic - not syncing: Attempted to kill init!"
    assert result.seconds < 10


def test_qemu_failing_to_start_is_an_infrastructure_error(fake_qemu):
    result = fake_qemu('echo "qemu: could not open disk image" >&2; exit 1')
    assert result.infrastructure and not result.passed
    assert result.evidence == "boot: qemu failed: qemu: could not open disk image"
    assert result.qemu_exit == 1


def test_qemu_exiting_cleanly_is_a_reset_not_an_infrastructure_error(fake_qemu):
    result = fake_qemu("echo 'Booting from Hard Disk...'; echo 'GRUB loading.'; exit 0")
    assert not result.infrastructure and result.qemu_exit == 0
    assert result.evidence == (
        "boot: the machine reset during the bootloader stage; last line: GRUB loading."
    )


def test_missing_image_or_qemu_raises(tmp_path):
    with pytest.raises(BootTestError, match="does not exist"):
        run_boot_test(BootOptions(image=tmp_path / "nope.qcow2", serial_log=tmp_path / "s"))
    image = tmp_path / "a.raw"
    image.write_bytes(b"\0")
    with pytest.raises(BootTestError, match="not found"):
        run_boot_test(BootOptions(image=image, serial_log=tmp_path / "s", qemu="no-such-qemu"))


def test_cli_exit_codes_and_json(tmp_path, monkeypatch, capsys):
    from_args = boottest.options_from_args  # the command line's options, timed for a fake
    monkeypatch.setattr(boottest, "options_from_args",
                        lambda args: quickly(from_args(args), final_grace=0.1))
    script = tmp_path / "qemu-system-x86_64"
    script.write_text("#!/bin/sh\necho 'DIB-BOOT-MARKER-OK kernel=6'\nsleep 30\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    image = tmp_path / "disk.raw"
    image.write_bytes(b"\0" * 512)
    result_json = tmp_path / "result.json"
    code = boottest.main(
        [str(image), "--serial-log", str(tmp_path / "s.log"), "--result-json", str(result_json)]
    )
    assert code == 0
    assert json.loads(result_json.read_text())["facts"] == {"kernel": "6"}
    assert boottest.main([str(tmp_path / "missing"), "--serial-log", str(tmp_path / "s")]) == 2
    script.write_text("#!/bin/sh\necho 'Boot failed: not a bootable disk'\nsleep 30\n")
    assert boottest.main([str(image), "--serial-log", str(tmp_path / "s.log")]) == 1
    assert "boot FAILED after " in capsys.readouterr().out
    script.write_text("#!/bin/sh\necho 'qemu: no such machine' >&2\nexit 1\n")
    assert boottest.main([str(image), "--serial-log", str(tmp_path / "s.log")]) == 2
    assert "boot: qemu failed: qemu: no such machine" in capsys.readouterr().out


# arm64: qemu-system-aarch64's virt machine with AAVMF in two flashes (issue 15).


def fake_aavmf(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "AAVMF_CODE.fd").write_bytes(b"code")
    (directory / "AAVMF_VARS.fd").write_bytes(b"vars")
    return directory / "AAVMF_CODE.fd"


def test_arm64_qemu_command_is_the_virt_machine_with_split_uefi_flashes(tmp_path):
    opts = BootOptions(image=Path("/x/a.qcow2"), serial_log=Path("/tmp/s.log"), arch="arm64")
    assert opts.qemu_binary == "qemu-system-aarch64" and opts.with_uefi
    code, variables = Path("/fw/AAVMF_CODE.fd"), Path("/run/v,x/AAVMF_VARS.fd")
    cmd = qemu_command(opts, opts.image, "qcow2", code, variables)
    assert cmd[:7] == [
        "qemu-system-aarch64", "-accel", "tcg", "-machine", "virt", "-cpu", "cortex-a57"
    ]
    assert "if=pflash,format=raw,unit=0,readonly=on,file=/fw/AAVMF_CODE.fd" in cmd
    assert "if=pflash,format=raw,unit=1,file=/run/v,,x/AAVMF_VARS.fd" in cmd
    assert "-bios" not in cmd and "-snapshot" in cmd
    assert "file=/x/a.qcow2,format=qcow2,if=virtio,media=disk" in cmd
    assert qemu_command(BootOptions(opts.image, opts.serial_log, arch="arm64", cpu="max"),
                        opts.image, "qcow2", code, variables)[5:7] == ["-cpu", "max"]
    amd64 = qemu_command(BootOptions(opts.image, opts.serial_log), opts.image, "raw", None)
    assert amd64[3:5] == ["-machine", "q35"] and "-cpu" not in amd64


def test_arm64_options_round_trip_through_the_command_line():
    opts = BootOptions(image=Path("/i.qcow2"), serial_log=Path("/l.log"), arch="arm64",
                       cpu="max", timeout=1800)
    argv = opts.to_argv()
    assert argv[argv.index("--arch") + 1] == "arm64" and argv[argv.index("--cpu") + 1] == "max"
    assert boottest.options_from_args(boottest.build_parser().parse_args(argv)) == opts
    aliased = boottest.build_parser().parse_args(["/i.qcow2", "--serial-log", "/l", "--arch",
                                                  "aarch64"])
    assert boottest.options_from_args(aliased).arch == "arm64"
    assert "--arch" not in BootOptions(Path("/i"), Path("/l")).to_argv()


def test_unknown_architecture_and_missing_firmware_are_setup_errors(tmp_path, monkeypatch):
    image = tmp_path / "a.raw"
    image.write_bytes(b"\0")
    with pytest.raises(BootTestError, match="no boot test for architecture riscv64"):
        run_boot_test(BootOptions(image=image, serial_log=tmp_path / "s", arch="riscv64"))
    with pytest.raises(BootTestError, match="install qemu-system-arm"):
        run_boot_test(BootOptions(image=image, serial_log=tmp_path / "s", arch="arm64",
                                  qemu="no-such-qemu-system-aarch64"))
    nowhere = bootqemu.Machine(**{**bootqemu.MACHINES["arm64"].__dict__,
                                  "firmware": (str(tmp_path / "none.fd"),)})
    monkeypatch.setitem(bootqemu.MACHINES, "arm64", nowhere)
    with pytest.raises(BootTestError, match="install the qemu-efi-aarch64 package"):
        bootqemu.find_firmware(None, "arm64")
    lonely = tmp_path / "fw" / "AAVMF_CODE.fd"
    lonely.parent.mkdir()
    lonely.write_bytes(b"code")
    with pytest.raises(BootTestError, match="no variable store beside it"):
        bootqemu.variable_store(lonely)
    assert bootqemu.variable_store(Path("/usr/share/ovmf/OVMF.fd")) is None


def test_arm64_boot_with_a_fake_qemu_gets_a_private_variable_store(tmp_path):
    code = fake_aavmf(tmp_path / "fw")
    image = tmp_path / "disk.raw"
    image.write_bytes(b"\0" * 512)
    script = tmp_path / "qemu-system-aarch64"
    args = tmp_path / "args"
    script.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$@" > {args}\n'
        'for a in "$@"; do case $a in *unit=1,file=*) cat "${a#*unit=1,file=}";; esac; done\n'
        "echo\necho 'EFI stub: Booting Linux Kernel...'\n"
        "echo 'DIB-BOOT-MARKER-OK arch=aarch64'\nsleep 30\n"
    )
    script.chmod(0o755)
    opts = BootOptions(image=image, serial_log=tmp_path / "serial.log", timeout=20,
                       arch="arm64", firmware=code, qemu=str(script))
    result = run_boot_test(opts)
    assert result.passed and result.facts == {"arch": "aarch64"}
    assert Path(result.serial_log).read_text().startswith("vars")  # the store's copy
    used = args.read_text().splitlines()
    store = next(a for a in used if "unit=1," in a).split("file=", 1)[1]
    assert Path(store).name == "AAVMF_VARS.fd" and Path(store).parent != code.parent
    assert not Path(store).exists()  # removed with the boot
    assert f"if=pflash,format=raw,unit=0,readonly=on,file={code}" in used


def test_a_long_line_without_a_login_prompt_costs_its_length_not_its_square():
    # 200 KB without " login:" took minutes with the unanchored pattern (each start
    # position tried each length); a word-start look-behind makes it one pass.
    started = time.monotonic()
    assert bootconsole.LOGIN_PROMPT.search("x" * 200_000) is None
    assert time.monotonic() - started < 5
    assert bootconsole.LOGIN_PROMPT.search("vm login: ")


def test_a_quiet_console_poll_counts_its_time(monkeypatch):
    """The grace after a final line ends at the first poll past it, not one poll later."""
    clock = {"now": 100.0}
    polls = []

    def quiet_select(read, write, error, timeout):
        polls.append(timeout)
        clock["now"] += timeout
        return [], [], []

    monkeypatch.setattr(boottest.time, "monotonic", lambda: clock["now"])
    monkeypatch.setattr(boottest.select, "select", quiet_select)
    watcher = Watcher(WatchSettings(final_grace=3.0, poll_seconds=5.0))
    watcher.feed("[ 6.6] Kernel panic - not syncing: Attempted to kill init!", 0.0)
    proc = type("Proc", (), {"stdout": type("Out", (), {"fileno": lambda self: 0})()})()
    elapsed, timed_out, exited = boottest._watch(proc, watcher, None, timeout=600.0)
    assert (elapsed, timed_out, exited) == (5.0, False, False)
    assert len(polls) == 1
