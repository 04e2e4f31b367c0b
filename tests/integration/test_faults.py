"""Ctrl-C where it hurts most: during a hostgen's debootstrap and during a boot test.

After each: exit 130, the interrupted cells are pending (a resume runs them), and
nothing is left: no debootstrap or qemu process, no mount under a bootstrap work
directory, no container or volume of the run.
"""

import json
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest

from tests.integration.dibhelpers import REPO

pytestmark = pytest.mark.integration


def start_run(matrix: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "matrix.cli", "run", str(matrix), "--out",
                             str(out)], cwd=REPO, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def wait_for_process(pattern: str, proc: subprocess.Popen, seconds: float = 600) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode == 0:
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {pattern!r} started: {proc.stdout.read()[-3000:]}")
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"{pattern!r} never started")


def interrupt(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output[-3000:]
    return output


def assert_nothing_left(run_dir: Path, processes: tuple[str, ...]) -> None:
    for pattern in processes:
        found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
        assert found.returncode == 1, f"{pattern} still running: {found.stdout}"
    mounts = Path("/proc/mounts").read_text()
    assert "dib-matrix-rootfs-" not in mounts
    client = docker.from_env()
    selector = {"label": f"org.dib-matrix.run={run_dir.name}"}
    assert client.containers.list(all=True, filters=selector) == []
    assert client.volumes.list(filters=selector) == []


def cells(run_dir: Path) -> dict:
    data = json.loads((run_dir / "results.json").read_text())
    assert data["interrupted"] is True
    return {c["id"]: c for c in data["cells"]}


def test_ctrl_c_during_a_hostgen_debootstrap(tmp_path):
    (tmp_path / "hosts").mkdir()
    # A host of its own (never cached), so its hostgen runs debootstrap.
    name = f"ctrlc-{secrets.token_hex(3)}"
    (tmp_path / "hosts" / f"{name}.yaml").write_text(
        f"name: {name}\nbase: {{bootstrap: bookworm}}\npackages: [python3]\n")
    matrix = tmp_path / "m.yaml"
    matrix.write_text(f"name: ctrlc\nhosts: [hosts/{name}.yaml]\ntargets: [debian-bookworm]\n"
                      "checks: []\n")
    proc = start_run(matrix, tmp_path / "out")
    wait_for_process("debootstrap.*dib-matrix-rootfs", proc)
    time.sleep(2)
    interrupt(proc)
    run_dir = (tmp_path / "out" / "latest").resolve()
    found = cells(run_dir)
    assert {c["state"] for c in found.values()} == {"pending"}
    assert_nothing_left(run_dir, ("debootstrap --variant",))


def test_ctrl_c_during_a_boot_test(tmp_path):
    matrix = tmp_path / "m.yaml"
    matrix.write_text("name: ctrlc-boot\nhosts: [debian-bookworm]\n"
                      "targets: [debian-bookworm-vm]\nchecks: []\n")
    proc = start_run(matrix, tmp_path / "out")
    wait_for_process("qemu-system-x86_64.*debian-bookworm-vm", proc)
    time.sleep(2)
    interrupt(proc)
    run_dir = (tmp_path / "out" / "latest").resolve()
    found = cells(run_dir)
    assert found["debian-bookworm.debian-bookworm-vm"]["state"] == "success"
    assert found["debian-bookworm.debian-bookworm-vm:boot"]["state"] == "pending"
    assert_nothing_left(run_dir, ("qemu-system-x86_64.*debian-bookworm-vm",))
    done = subprocess.run([sys.executable, "-m", "matrix.cli", "run", "--resume", str(run_dir)],
                          cwd=REPO, text=True, capture_output=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:]
    data = json.loads((run_dir / "results.json").read_text())
    assert {c["state"] for c in data["cells"]} == {"success"}


def test_two_runs_at_once_with_different_dib_trees(tmp_path):
    """A nightly and a reviewer's patched tree on one engine: each run bakes its own dib
    layer; neither removes the other's while it runs, and both give their verdicts."""
    import shutil

    trees = []
    for index in range(2):
        tree = tmp_path / f"tree{index}"
        shutil.copytree(REPO / "dib", tree / "dib", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(REPO / "elements", tree / "elements")
        shutil.copytree(REPO / "matrix" / "incontainer", tree / "matrix" / "incontainer")
        # A different tree each: a different dib layer each.
        (tree / "elements" / "base" / "README.md").write_text(f"tree {index}\n")
        trees.append(tree)
    matrix = tmp_path / "m.yaml"
    matrix.write_text("name: two\nhosts: [debian-bookworm]\n"
                      "targets: [debian-bookworm, debian-trixie]\nchecks: []\nmax-parallel: 1\n")
    procs = []
    for index, tree in enumerate(trees):
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "matrix.cli", "run", str(matrix), "--out",
             str(tmp_path / f"out{index}"), "--dib-tree", str(tree)], cwd=REPO, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        time.sleep(3)
    outputs = [proc.communicate(timeout=1200)[0] for proc in procs]
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output[-3000:]
    for index in range(2):
        run_dir = (tmp_path / f"out{index}" / "latest").resolve()
        data = json.loads((run_dir / "results.json").read_text())
        assert {c["state"] for c in data["cells"]} == {"success"}, index
        assert_nothing_left(run_dir, ())
