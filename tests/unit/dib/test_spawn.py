"""dib.spawn: children in their own process group, ended as a group, remembered until reaped."""

import os
import signal
import subprocess
import time

from dib import spawn

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
