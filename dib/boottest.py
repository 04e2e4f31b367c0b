"""Boot an image under qemu (software emulation) and tell from its serial console how it went.

``python -m dib.boottest IMAGE --timeout 600 --serial-log PATH [--uefi] [--arch arm64]
[--checks all|none|NAME,...] [--resolve HOST] [--result-json PATH]``

This module runs one boot and is its command line: :mod:`dib.bootqemu` makes qemu's
command, disks and firmware; :mod:`dib.bootconsole` reads the console and gives the
verdict. The run writes the console to the serial log as it comes and ends as soon as
the outcome is known: the marker (and, with the checks of the running system, their end
and the power-off), a line the machine cannot recover from, silence after the firmware
hand-off, or the timeout.

qemu runs in its own process group and is terminated, then killed, and reaped on
every way out: success, failure, timeout, Ctrl-C, SIGTERM.
Exit status: 0 passed, 1 boot failed, 2 qemu or the set-up failed (an
infrastructure error, not a verdict on the image).

From Python: ``run_boot_test(BootOptions(image, serial_log, uefi=...))`` returns a
:class:`BootResult` (``passed``, ``evidence``, ``infrastructure``,
``seconds_to_marker``, ``stage``, ``facts``, ``checks``, ``to_dict()``), or raises
:class:`~dib.bootqemu.BootTestError` when it cannot start; ``BootOptions.to_argv()`` is
the command line that repeats it; ``dib.bootconsole.replay_log(text)`` gives the verdict
of a saved serial log.

Meant to run where the images land (the orchestrating machine), not inside the build
host's container: one qemu and one firmware for every host, so boot verdicts compare
across hosts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple

from dib import spawn
from dib.arch import normalise as normalise_arch
from dib.bootconsole import (
    CHECK_NAMES,
    DEFAULT_MARKER,
    BootCheck,
    Watcher,
    WatchSettings,
    clean,
    qemu_failed,
)
from dib.bootqemu import (
    DEFAULT_TIMEOUT,
    KILL_GRACE_SECONDS,
    BootOptions,
    BootTestError,
    boot_disk,
    image_format,
    qemu_command,
    seed_disk,
    uefi_firmware,
)


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
        firmware, variables = stack.enter_context(uefi_firmware(opts))
        disk, fmt = stack.enter_context(boot_disk(opts, *image_format(opts.image)))
        seed = stack.enter_context(seed_disk(opts))
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
