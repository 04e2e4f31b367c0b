"""The live status line of a real run: drawn on a terminal, absent under CI and in files.

The run's stdout is a pseudo-terminal 100 columns wide (what tmux gives a shell); the
raw bytes written to it are read back and searched for the status line's frames.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import shutil
import struct
import subprocess
import sys
import termios
import time

import pytest

from tests.integration.dibhelpers import REPO

pytestmark = pytest.mark.integration

MATRIX = """\
name: progress
hosts: [debian-bookworm]
targets: [debian-bookworm, debian-forky]
checks: []
max-parallel: 2
timeout: 20m
"""
FRAME = re.compile(rb"\r\x1b\[K(\[\d+/3\] [^\r\n]*)")
LIMIT = 4 << 20


def run_on_a_terminal(args: list[str], env: dict[str, str], timeout: float = 1200) -> bytes:
    """Everything the command wrote to its terminal (stdout and stderr)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    process = subprocess.Popen([sys.executable, "-m", "matrix.cli", *args], cwd=REPO,
                               stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    output = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and len(output) < LIMIT:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the terminal's other end closed: the run ended
                break
            if not chunk:
                break
            output += chunk
    finally:
        process.wait(timeout=60)
        os.close(master)
    return bytes(output)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("progress")
    matrix = tmp / "matrix.yaml"
    matrix.write_text(MATRIX)
    base = {k: v for k, v in os.environ.items() if k not in ("CI", "COLUMNS", "LINES")}
    base["TERM"] = "xterm"
    out = tmp / "out"
    terminal = run_on_a_terminal(["run", str(matrix), "--out", str(out)], base)
    terminal_dir = (out / "latest").resolve()
    ci = run_on_a_terminal(["run", str(matrix), "--out", str(out)], {**base, "CI": "true"})
    ci_dir = (out / "latest").resolve()
    yield terminal, terminal_dir, ci, ci_dir
    shutil.rmtree(out, ignore_errors=True)


def test_a_terminal_gets_the_status_line(runs):
    terminal, run_dir, _, _ = runs
    frames = [f.decode() for f in FRAME.findall(terminal)]
    assert frames, terminal[-3000:]
    assert all(len(f) <= 99 for f in frames)  # cut to the terminal's width
    assert any(re.match(r"\[\d/3\] \d+% \| \d failed", f) for f in frames)
    assert any(re.search(r"running [12]: debian-bookworm\.", f) for f in frames)
    # The line is off the screen before the table: the table's first line follows a clear.
    assert re.search(rb"\r\x1b\[K(\r\n)?dib-matrix run \d{8}-\d{6}-\w+ - matrix", terminal)
    log = (run_dir / "run.log").read_bytes()
    assert b"\x1b" not in log and not FRAME.search(log)
    assert b"debian-bookworm.debian-forky" in log


def test_ci_gets_plain_lines_only(runs):
    _, _, ci, ci_dir = runs
    assert b"\x1b[K" not in ci, ci[-3000:]
    assert re.search(rb"debian-bookworm\.debian-forky +failed", ci)
    assert (ci_dir / "results.json").is_file()
