"""Helpers of the matrix integration tests: writing matrices, running dib-matrix (in
this process's Python, or as a child the tests can signal), reading a run directory
back, and checking that a run left nothing behind."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest
import yaml

from tests.integration.dibhelpers import REPO

UNPULLABLE_HOST = """\
name: registry-only
description: a registry host whose image cannot be pulled here
base:
  image: registry.invalid/dib-matrix/nothing:1
package-manager: apt
packages: [python3]
"""


def write_matrix(tmp_path, body):
    (tmp_path / "hosts").mkdir(exist_ok=True)
    (tmp_path / "hosts" / "registry-only.yaml").write_text(UNPULLABLE_HOST)
    path = tmp_path / "matrix.yaml"
    path.write_text(body)
    return path


def dib_matrix(*args, timeout=1500):
    return subprocess.run([sys.executable, "-m", "matrix.cli", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=timeout, check=False)


def run_containers(run_dir):
    """Containers and volumes the run left (other runs may be going on beside this test)."""
    run_id = run_dir.name
    client = docker.from_env()
    selector = {"label": f"org.dib-matrix.run={run_id}"}
    return client.containers.list(all=True, filters=selector) + client.volumes.list(
        filters=selector)


def cells_of(run_dir):
    data = json.loads((run_dir / "results.json").read_text())
    return {c["id"]: c for c in data["cells"]}, data


def patched_tree(tmp_path):
    """A copy of the dib tree with a patch under review: a sleeping and a broken element."""
    import shutil

    tree = tmp_path / "patched"
    shutil.copytree(REPO / "dib", tree / "dib", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "elements", tree / "elements")
    sleeper = tree / "elements" / "sleeper" / "root.d"
    sleeper.mkdir(parents=True)
    (sleeper / "01-sleep").write_text("#!/bin/bash\necho sleeping\nsleep 600\n")
    (sleeper / "01-sleep").chmod(0o755)
    broken = tree / "elements" / "broken" / "root.d"
    broken.mkdir(parents=True)
    (broken / "01-broken").write_text("#!/bin/bash\necho 'patched element is broken' >&2\n"
                                      "exit 7\n")
    (broken / "01-broken").chmod(0o755)
    return tree


LABEL_RUN = "org.dib-matrix.run"


def start_run(matrix: Path, out: Path, *extra: str, env: dict | None = None
              ) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "matrix.cli", "run", str(matrix), "--out",
                             str(out), *extra], cwd=REPO, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env)


def assert_nothing_left(run_dir: Path, processes: tuple[str, ...] = (),
                        roots: tuple[Path, ...] = ()) -> None:
    """No process matching ``processes``, no orphaned apt-cacher-ng, no container, volume
    or network of the run, no rootfs mount, and no mount or loop device under ``roots``
    (the test's directories) or the run directory."""
    for pattern in processes:
        found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
        assert found.returncode == 1, f"{pattern} still running: {found.stdout}"
    assert _orphaned_package_caches() == []
    places = [str(root.resolve()) for root in (*roots, run_dir)]
    mounts = Path("/proc/mounts").read_text()
    assert "dib-matrix-rootfs-" not in mounts
    assert [line for line in mounts.splitlines() if any(p in line for p in places)] == []
    loops = json.loads(subprocess.run(["losetup", "--list", "--json"], capture_output=True,
                                      text=True).stdout or '{"loopdevices": []}')
    assert [d for d in loops["loopdevices"]
            if any(p in (d.get("back-file") or "") for p in places)] == []
    client = docker.from_env()
    selector = {"label": f"{LABEL_RUN}={run_dir.name}"}
    assert client.containers.list(all=True, filters=selector) == []
    assert client.volumes.list(filters=selector) == []
    assert client.networks.list(filters=selector) == []


class Gate:
    """A loopback gate a cell's element hook waits at (cells use host networking): the test
    knows for sure when the cell got there, and says when it goes on. A gate closed without
    'go' fails the hook, so a failing test leaves no cell waiting."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.5)
        self.port = self.server.getsockname()[1]
        self.conn: socket.socket | None = None

    def element(self, tree: Path, name: str = "gate") -> None:
        hook = tree / "elements" / name / "root.d" / "05-gate"
        hook.parent.mkdir(parents=True)
        hook.write_text(f"#!/bin/bash\nexec 3<>/dev/tcp/127.0.0.1/{self.port} || exit 9\n"
                        "echo 'gate: waiting'\nread -r word <&3\necho \"gate: $word\"\n"
                        '[ "$word" = go ]\n')
        hook.chmod(0o755)

    def wait(self, proc: subprocess.Popen, seconds: float = 300) -> None:
        """Until a cell's hook is at the gate (the run must not end first)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                self.conn, _ = self.server.accept()
                return
            except socket.timeout:
                if proc.poll() is not None:
                    pytest.fail(f"the run ended before a cell reached the gate: "
                                f"{proc.stdout.read()[-3000:]}")
        proc.kill()
        pytest.fail("no cell reached the gate")

    def open(self) -> None:
        assert self.conn is not None
        self.conn.sendall(b"go\n")
        self.conn.close()
        self.conn = None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.server.close()


def stop(proc: subprocess.Popen, seconds: float = 300) -> None:
    """A run a failed test leaves: let it end, else Ctrl-C it (it cleans up), else kill."""
    for how in (None, signal.SIGINT, signal.SIGKILL):
        if proc.poll() is not None:
            return
        if how is not None:
            proc.send_signal(how)
        try:
            proc.communicate(timeout=seconds if how is None else 60)
        except subprocess.TimeoutExpired:
            continue


def target(tmp_path: Path, name: str, *elements: str) -> Path:
    """A tar of the bundled debian-bookworm target (its elements, whatever they are named
    today) plus ``elements``."""
    bundled = yaml.safe_load((REPO / "targets" / "debian-bookworm.yaml").read_text())
    path = tmp_path / "targets" / f"{name}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"name: {name}\nelements: [{', '.join([*bundled['elements'], *elements])}]"
                    "\nenv:\n  DIB_RELEASE: bookworm\noutputs: [tar]\n")
    return path


def _orphaned_package_caches() -> list[str]:
    """apt-cacher-ng processes whose orchestrator is gone (a run's own is its child)."""
    found = subprocess.run(["pgrep", "-x", "apt-cacher-ng"], capture_output=True, text=True)
    orphans = []
    for pid in found.stdout.split():
        try:
            ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
            parent = Path(f"/proc/{ppid}/cmdline").read_bytes().replace(b"\0", b" ")
        except (OSError, IndexError):
            continue  # gone meanwhile
        if b"matrix" not in parent:
            orphans.append(f"apt-cacher-ng pid {pid} (parent {ppid}: {parent[:80]!r})")
    return orphans
