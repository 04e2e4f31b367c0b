"""dib.spawn: children in their own process group, ended as a group, remembered until reaped;
``run``, the one way a command runs: timeout, bounded output, one environment policy, no shell."""

import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from dib import run as dibrun
from dib import spawn
from dib.errors import CommandFailed

# A shell that forks a grandchild (same group) and waits; TERM is ignored by both,
# so only the SIGKILL after the grace ends them.
STUBBORN = "trap '' TERM; sleep 300 & echo $!; wait"


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_stop_ends_the_whole_group_even_when_it_ignores_sigterm():
    proc = spawn.spawn(["sh", "-c", STUBBORN])
    grandchild = int(proc.stdout.readline())
    assert os.getpgid(grandchild) == proc.pid  # the child leads its own group
    started = time.monotonic()
    spawn.stop(proc, grace=0.2)
    assert proc.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 5
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild)
    assert not spawn.group_running(proc.pid)
    proc.stdout.close()


def test_stop_all_stops_every_running_child_and_forgets_them():
    procs = [spawn.spawn(["sleep", "300"], stdout=subprocess.DEVNULL) for _ in range(3)]
    done = spawn.spawn(["true"], stdout=subprocess.DEVNULL)
    done.wait()
    assert spawn.live() >= 3
    assert spawn.stop_all(grace=1.0) == 3
    assert all(p.returncode == -signal.SIGTERM for p in procs)
    assert spawn.live() == 0


def test_stop_of_a_finished_child_is_harmless():
    proc = spawn.spawn(["true"], stdout=subprocess.DEVNULL)
    proc.wait()
    spawn.stop(proc)
    assert proc.returncode == 0 and spawn.live() == 0


def test_running_stops_the_child_when_the_block_ends():
    with spawn.running(["sleep", "300"], grace=1.0) as proc:
        assert proc.poll() is None
    assert proc.returncode == -signal.SIGTERM


def test_stdin_is_closed_and_no_shell_is_involved():
    proc = spawn.spawn(["cat", "$HOME"], stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=10)
    spawn.forget(proc)
    assert proc.returncode == 1 and b"$HOME" in err  # taken literally, not expanded


# ---- run: the one way a command runs to its end -------------------------------------


def _gone(pid, within=5.0):
    deadline = time.monotonic() + within
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


def test_run_at_its_timeout_ends_the_whole_group_even_when_it_ignores_sigterm():
    started = time.monotonic()
    result = spawn.run(["sh", "-c", STUBBORN], timeout=0.3, grace=0.2)
    assert result.timed_out and not result.ok
    assert result.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 5
    assert _gone(int(result.output))  # the forked sleeper went with its parent
    assert spawn.live() == 0


def test_run_does_not_wait_for_what_the_child_left_holding_its_output():
    # The child exits 4; a sleeper it forked keeps the pipe open. No timeout: without
    # the linger rule this would wait the sleeper's 300 s.
    started = time.monotonic()
    linger = 0.2  # spawn.LINGER_SECONDS (2 s) for a real build
    result = spawn.run(["sh", "-c", "sleep 300 & echo $!; exit 4"], timeout=None,
                       linger=linger)
    assert (result.returncode, result.timed_out) == (4, False)
    assert time.monotonic() - started < linger + 3
    assert _gone(int(result.output))


def test_run_ends_a_child_that_closed_its_output_but_runs_on():
    started = time.monotonic()
    result = spawn.run(["sh", "-c", "exec >&- 2>&-; sleep 300"], timeout=0.2)
    assert result.timed_out and time.monotonic() - started < 5
    assert spawn.live() == 0


def test_whole_output_over_the_limit_stops_the_child():
    started = time.monotonic()
    result = spawn.run(["yes"], timeout=30, limit=1000, whole_output=True)
    assert result.overflowed and not result.ok
    assert len(result.output) == 1000 and result.output.startswith(b"y\ny\n")
    assert time.monotonic() - started < 5


def test_logged_output_keeps_its_end_in_memory_and_all_of_it_in_the_log(tmp_path):
    log = tmp_path / "cell.log"
    with log.open("wb") as stream:
        result = spawn.run(["seq", "1", "100000"], timeout=30, limit=100, log=stream)
    assert result.ok and not result.overflowed
    assert len(result.output) <= 100 and result.output.endswith(b"99999\n100000\n")
    assert result.tail(2) == ["99999", "100000"]
    lines = log.read_text().splitlines()
    assert lines[0] == "$ seq 1 100000" and lines[1] == "1" and lines[-1] == "100000"


def test_lines_go_to_the_callback_as_they_come_and_a_flood_in_bounded_pieces():
    lines = []
    spawn.run(["printf", "one\\ntwo\\nthree"], timeout=30, on_line=lines.append)
    assert lines == ["one", "two", "three"]  # the last one had no newline
    pieces = []
    result = spawn.run(["head", "-c", "300000", "/dev/zero"], timeout=30, limit=1024,
                       on_line=pieces.append)
    assert result.ok and len(result.output) == 1024
    assert sum(map(len, pieces)) == 300000
    assert max(map(len, pieces)) <= spawn.LINE_LIMIT


def test_output_that_is_not_utf8_is_kept_as_bytes_and_read_with_replacements():
    lines = []
    result = spawn.run(["printf", "\\377\\376 ok\\n"], timeout=30, on_line=lines.append)
    assert result.output == b"\xff\xfe ok\n"
    assert lines == ["\ufffd\ufffd ok"] and result.tail(1) == ["\ufffd\ufffd ok"]


def test_stderr_read_apart():
    result = spawn.run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=30,
                       errors_apart=True)
    assert (result.returncode, result.output, result.errors) == (3, b"out\n", "err\n")
    merged = spawn.run(["sh", "-c", "echo out; echo err >&2"], timeout=30)
    assert merged.output == b"out\nerr\n" and merged.errors == ""


def test_no_shell_reads_the_arguments(tmp_path):
    hostile = "$HOME; touch pwned `touch pwned2` $(touch pwned3) | cat > pwned4"
    result = spawn.run(["echo", hostile], timeout=30, cwd=tmp_path)
    assert result.text == hostile + "\n"
    assert list(tmp_path.iterdir()) == []


def test_the_curated_environment_is_the_default(monkeypatch):
    monkeypatch.setenv("DIB_MATRIX_TEST_SECRET", "hunter2")
    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    monkeypatch.setenv("LC_ALL", "de_DE.UTF-8")
    monkeypatch.setenv("https_proxy", "http://proxy.invalid:3128")
    monkeypatch.setenv("HOME", "/home/tester")
    seen = dict(line.split("=", 1) for line in
                spawn.run(["env"], timeout=30).text.splitlines() if "=" in line)
    assert "DIB_MATRIX_TEST_SECRET" not in seen and "PYTHONPATH" not in seen
    assert seen["LC_ALL"] == seen["LANG"] == "C.UTF-8"
    assert seen["https_proxy"] == "http://proxy.invalid:3128"
    assert seen["HOME"] == "/home/tester"
    assert seen["PATH"] == os.environ["PATH"]
    assert set(seen) <= set(spawn.PASSED_ENV) | {"LANG", "LC_ALL"}


def test_child_env_adds_the_callers_variables_and_a_given_environment_is_used_as_it_is(
        monkeypatch):
    monkeypatch.delenv("PATH")
    env = spawn.child_env({"DIB_RELEASE": "bookworm", "LC_ALL": "C"})
    assert env["PATH"] == spawn.DEFAULT_PATH  # tools are still found
    assert env["DIB_RELEASE"] == "bookworm" and env["LC_ALL"] == "C"
    exact = {"PATH": spawn.DEFAULT_PATH, "ONLY": "this"}
    seen = spawn.run(["env"], timeout=30, env=exact).text.splitlines()
    assert sorted(seen) == ["ONLY=this", f"PATH={spawn.DEFAULT_PATH}"]


def test_an_exception_while_reading_stops_the_child_and_goes_on_up():
    def interrupted(line):
        raise KeyboardInterrupt

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        spawn.run(["sh", "-c", "echo go; sleep 300"], timeout=None, on_line=interrupted,
                  grace=1.0)
    assert time.monotonic() - started < 5
    assert spawn.live() == 0


def test_a_program_that_cannot_start_raises_oserror():
    with pytest.raises(FileNotFoundError):
        spawn.run(["/nonexistent/tool"], timeout=30)
    assert spawn.live() == 0


def test_the_result_says_what_the_tree_used():
    result = spawn.run([sys.executable, "-c", "x = bytearray(64 << 20); x[::4096] = b'1' * "
                        "len(x[::4096])"], timeout=60)
    assert result.ok and result.seconds > 0
    assert result.peak_rss >= 64 << 20
    assert result.cpu > 0


def test_a_timeout_already_spent_ends_the_child_at_once():
    started = time.monotonic()
    result = spawn.run(["sleep", "30"], timeout=0, grace=0.5)
    assert result.timed_out and time.monotonic() - started < 3


# ---- dib.run: dib's commands on top of spawn.run -------------------------------------


def test_dib_run_logs_each_line_with_its_tag_and_raises_with_the_tail(caplog):
    caplog.set_level(logging.INFO, logger="dib")
    with pytest.raises(CommandFailed) as failed:
        dibrun.run(["sh", "-c", "echo one; echo 'E: the cause' >&2; exit 5"], tag="step")
    assert failed.value.returncode == 5 and not failed.value.timed_out
    assert failed.value.tail == ["one", "E: the cause"]
    assert "step | E: the cause" in caplog.text
    with pytest.raises(CommandFailed) as slow:
        dibrun.run(["sleep", "30"], tag="slow", timeout=0.1)
    assert slow.value.timed_out
    assert dibrun.run(["false"], tag="unchecked", check=False) == 1


def test_dib_capture_returns_stdout_and_fails_with_stderrs_words():
    assert dibrun.capture(["sh", "-c", "echo out; echo noise >&2"]) == "out\n"
    with pytest.raises(CommandFailed) as failed:
        dibrun.capture(["sh", "-c", "echo 'mount: permission denied' >&2; exit 32"])
    assert failed.value.returncode == 32 and failed.value.tail == ["mount: permission denied"]
