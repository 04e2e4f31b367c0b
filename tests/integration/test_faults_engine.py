"""The container engine stops mid-run, comes back, and the run is resumed.

A real run has a cell at a gate (its element hook waits on a loopback socket this test
holds) when dockerd is stopped. The run must end with exit 2 within a bound, say the
engine was lost and how to resume, and write results.json and report.html with every
unfinished cell ``pending``; once dockerd is back, ``--resume`` gives every cell its real
verdict and leaves nothing behind. Whether the gated cell's container survived the
restart depends on the daemon's live-restore: both are handled (the resumed run removes
what is left either way).

dockerd is stopped through its pid file (or systemd, where it runs the engine) and always
started again in a ``finally`` — like ``./quickstart setup`` does, a stale pid file
removed first — so the rest of the suite finds an engine; the window it is down is kept to
the seconds the run needs to notice.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from results.reader import read_results
from tests.integration.dibhelpers import REPO
from tests.integration.matrixhelpers import (
    LABEL_RUN,
    Gate,
    assert_nothing_left,
    patched_tree,
    start_run,
    stop,
    target,
)

pytestmark = pytest.mark.integration  # in the quick set: about 30 s, the engine is always restarted
PIDFILE = Path("/var/run/docker.pid")
CONTAINERD_PIDFILE = Path("/var/run/docker/containerd/containerd.pid")
DOCKERD_LOG = Path("/var/log/dib-matrix-dockerd.log")
NOTICED_WITHIN = 90  # seconds from stopping dockerd to the run's exit 2


def engine_answers(timeout: float = 10) -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True,
                              timeout=timeout).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _systemd_docker() -> bool:
    return Path("/run/systemd/system").is_dir() and subprocess.run(
        ["systemctl", "is-active", "--quiet", "docker"], check=False).returncode == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _dockerd_pid() -> int | None:
    try:
        pid = int(PIDFILE.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def stop_dockerd(systemd: bool) -> None:
    if systemd:
        subprocess.run(["systemctl", "stop", "docker.socket", "docker"], check=True, timeout=120)
        return
    pid = _dockerd_pid()
    assert pid is not None, f"no live dockerd in {PIDFILE}"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(pid):  # a shutdown that hangs: the pid file stays behind, stale
        os.kill(pid, signal.SIGKILL)


def start_dockerd(systemd: bool) -> None:
    """As ./quickstart setup does: a stale pid file is removed, dockerd runs detached."""
    if engine_answers():
        return
    if systemd:
        subprocess.run(["systemctl", "start", "docker"], check=True, timeout=120)
    else:
        if PIDFILE.exists() and _dockerd_pid() is None:
            PIDFILE.unlink(missing_ok=True)
        CONTAINERD_PIDFILE.unlink(missing_ok=True)
        with DOCKERD_LOG.open("ab") as log:
            subprocess.Popen(["dockerd"], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                             cwd="/", start_new_session=True)
    deadline = time.monotonic() + 90
    while not engine_answers():
        assert time.monotonic() < deadline, f"dockerd did not come back: see {DOCKERD_LOG}"
        time.sleep(1)


@contextlib.contextmanager
def engine_down(systemd: bool) -> Iterator[None]:
    """dockerd stopped inside the block, running again after it, whatever happened."""
    try:
        stop_dockerd(systemd)
        yield
    finally:
        start_dockerd(systemd)


@pytest.fixture
def local_dockerd():
    if os.environ.get("DOCKER_HOST"):
        pytest.skip("the engine is remote (DOCKER_HOST): this test stops the local dockerd")
    if not engine_answers():
        pytest.skip("no container engine answers")
    systemd = _systemd_docker()
    if not systemd and _dockerd_pid() is None:
        pytest.skip(f"dockerd is neither a systemd service nor named by {PIDFILE}")
    try:
        yield systemd
    finally:
        start_dockerd(systemd)  # never leave the rest of the suite without an engine


def test_engine_stopped_mid_run_then_restarted_and_resumed(tmp_path, local_dockerd):
    gate = Gate()
    tree = patched_tree(tmp_path)
    gate.element(tree)
    target(tmp_path, "gated", "gate")
    target(tmp_path, "broken", "broken")
    matrix = tmp_path / "m.yaml"
    # One cell at a time: debian-bookworm finishes, gated is at the gate when the engine
    # stops, broken has not started.
    matrix.write_text("name: engine-lost\nhosts: [debian-bookworm]\n"
                      "targets: [debian-bookworm, targets/gated.yaml, targets/broken.yaml]\n"
                      "checks: []\nmax-parallel: 1\n")
    out = tmp_path / "out"
    proc = start_run(matrix, out, "--dib-tree", str(tree))
    try:
        gate.wait(proc)
        run_dir = (out / "latest").resolve()
        client = docker.from_env()
        selector = {"label": f"{LABEL_RUN}={run_dir.name}"}
        assert [c.labels["org.dib-matrix.cell"] for c in client.containers.list(
            filters=selector)] == ["debian-bookworm.gated"]
        client.close()
        stopping = time.monotonic()
        with engine_down(local_dockerd):
            down = time.monotonic() - stopping  # dockerd stops its containers first
            output, _ = proc.communicate(timeout=NOTICED_WITHIN + 60)
            noticed = time.monotonic() - stopping
            gate.conn.close()  # its cell died with the engine, or (live-restore) the
            gate.conn = None  # hook now reads EOF and fails: the resume runs it again
        print(f"dockerd stopped in {down:.1f} s; the run ended {noticed:.1f} s after the stop "
              "began")
        assert proc.returncode == 2, output[-3000:]
        assert noticed < NOTICED_WITHIN, output[-3000:]
        assert "the container engine stopped answering mid-run" in output
        assert f"Once it is back: dib-matrix run --resume {run_dir}" in output
        results = read_results(run_dir)
        assert results.interrupted is True and results.engine.get("lost")
        assert {c.id: c.state.value for c in results.cells} == {
            "debian-bookworm.hostgen": "success",
            "debian-bookworm.debian-bookworm": "success",
            "debian-bookworm.gated": "pending",
            "debian-bookworm.broken": "pending"}
        assert "pending" in (run_dir / "report.html").read_text()

        # The engine is back: what survived its restart depends on live-restore.
        client = docker.from_env()
        live_restore = client.info().get("LiveRestoreEnabled")
        left = client.containers.list(all=True, filters=selector)
        print(f"live-restore {live_restore}: {len(left)} container(s) of the run left "
              f"({[c.status for c in left]})")
        resumed = subprocess.Popen([sys.executable, "-m", "matrix.cli", "run", "--resume",
                                    str(run_dir)], cwd=REPO, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            gate.wait(resumed)  # the gated cell runs again, from the start
            gate.open()
            output, _ = resumed.communicate(timeout=600)
        finally:
            stop(resumed)
    finally:
        gate.close()
        stop(proc)
    assert resumed.returncode == 1, output[-3000:]  # broken's hook fails: a real verdict
    if left:
        assert "resume: removed what the earlier run left" in output
    results = read_results(run_dir)
    assert results.interrupted is False
    assert {c.id: c.state.value for c in results.cells} == {
        "debian-bookworm.hostgen": "success",
        "debian-bookworm.debian-bookworm": "success",
        "debian-bookworm.gated": "success",
        "debian-bookworm.broken": "failed"}
    broken = results.cell("debian-bookworm", "broken")
    assert broken.category.id == "hook-failed"
    assert broken.evidence == "patched element is broken"
    assert "gate: go" in (run_dir / results.cell("debian-bookworm", "gated").log).read_text()
    assert_nothing_left(run_dir, roots=(tmp_path,))
