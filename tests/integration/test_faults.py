"""Faults where they hurt most, each against the real engine.

Ctrl-C during a hostgen's debootstrap, during the dib layer's bake and during a
boot test; two runs at once on one engine, one pruning and cleaning while the
other is mid-run. After each: exit status, the verdicts, a valid results.json,
and nothing left — no container, volume or network of the run, no mount or loop
device of the test, no debootstrap, qemu or orphaned apt-cacher-ng process.
(The engine stopped mid-run: test_faults_engine.py.)
"""

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
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

pytestmark = pytest.mark.integration
BOOKWORM_LAYER = re.compile(r"dib layer (dib-matrix/dib-debian-bookworm:[0-9a-f]+)")


def dib_matrix(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "matrix.cli", *args], cwd=REPO, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)


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


def cells(run_dir: Path) -> dict:
    data = json.loads((run_dir / "results.json").read_text())
    assert data["interrupted"] is True
    return {c["id"]: c for c in data["cells"]}


def states(run_dir: Path) -> dict:
    """Cell id -> state, from a results.json the loader accepts (schema, every field)."""
    return {cell.id: cell.state.value for cell in read_results(run_dir).cells}


def image_id(client: docker.DockerClient, reference: str) -> str | None:
    try:
        return client.images.get(reference).id
    except docker.errors.ImageNotFound:
        return None


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
    # This run's debootstrap only: dib builds beside the test run debootstraps of their own.
    assert_nothing_left(run_dir, ("debootstrap --variant.*dib-matrix-rootfs",), (tmp_path,))


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


class BuildTap:
    """The engine's API socket relayed, as one run's DOCKER_HOST. The first image build's
    response is held once its first step has come back — the engine is baking — until the
    run, told to stop, asks the engine for its own containers (its Ctrl-C clean-up, in the
    main thread); then the build streams on. So the Ctrl-C lands mid-bake every time."""

    BUILD = re.compile(rb"POST /v[0-9.]+/build[?\s]")
    CLEANUP = re.compile(rb"GET /v[0-9.]+/containers/json\?\S*org\.dib-matrix\.run")

    def __init__(self, path: Path, upstream: str = "/var/run/docker.sock") -> None:
        self.path = path
        self.upstream = upstream
        self.baking = threading.Event()  # the build's first step came back: held now
        self.cleanup = threading.Event()  # the run asked for its containers while held
        self.release = threading.Event()
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(32)
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def docker_host(self) -> str:
        return f"unix://{self.path}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.upstream)
            build = threading.Event()
            threading.Thread(target=self._pipe, args=(client, upstream, build, True),
                             daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, build, False),
                             daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, build: threading.Event,
              requests: bool) -> None:
        try:
            while data := source.recv(1 << 16):
                if requests and self.BUILD.search(data):
                    build.set()
                if requests and self.baking.is_set() and self.CLEANUP.search(data):
                    self.cleanup.set()
                sink.sendall(data)
                if (not requests and build.is_set() and b"Step 1/" in data
                        and not self.baking.is_set()):
                    self.baking.set()
                    self.release.wait(120)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            if not requests:
                source.close()
                sink.close()

    def close(self) -> None:
        self.release.set()
        self.server.close()


def test_ctrl_c_during_the_dib_layer_bake(tmp_path):
    """SIGINT while the engine bakes the run's dib layer: exit 130, the cell pending, no
    build container and no half-baked (untagged or partial) layer left; --resume finishes."""
    from matrix.config.dibtree import DibTree
    from matrix.config.hosts import load_hosts
    from matrix.containers.labels import LABEL_HOST, LABEL_ROLE
    from matrix.hostgen.diblayer import layer_reference
    from matrix.hostgen.hostimage import image_names

    tree = patched_tree(tmp_path)
    # A tree of its own: its layer is not in the engine yet, so the hostgen bakes it.
    (tree / "elements" / "sleeper" / "README").write_text(secrets.token_hex(8))
    matrix = tmp_path / "m.yaml"
    matrix.write_text("name: ctrlc-bake\nhosts: [debian-bookworm]\ntargets: [debian-bookworm]\n"
                      "checks: []\n")
    client = docker.from_env()
    host_image = client.images.get(image_names(load_hosts()["debian-bookworm"]).image)
    snapshot = DibTree.read(tree)
    layer = layer_reference("debian-bookworm", host_image.id, snapshot)
    started = time.time()
    tap = BuildTap(tmp_path / "engine.sock")
    try:
        proc = start_run(matrix, tmp_path / "out", "--dib-tree", str(tree),
                         env={**os.environ, "DOCKER_HOST": tap.docker_host})
        if not tap.baking.wait(300):
            proc.kill()
            pytest.fail(f"the layer bake never started: {proc.communicate()[0][-3000:]}")
        proc.send_signal(signal.SIGINT)
        assert tap.cleanup.wait(60), "the run did not start its Ctrl-C clean-up"
        tap.release.set()
        output, _ = proc.communicate(timeout=120)
    finally:
        tap.close()
    assert proc.returncode == 130, output[-3000:]
    assert "interrupted; finished cells kept in" in output
    run_dir = (tmp_path / "out" / "latest").resolve()
    hostgen_log = (run_dir / "logs" / "debian-bookworm" / "hostgen.log").read_text()
    assert "Step 1/" in hostgen_log  # the Ctrl-C came while the engine was baking
    found = cells(run_dir)
    assert found["debian-bookworm.debian-bookworm"]["state"] == "pending"
    assert found["debian-bookworm.hostgen"]["state"] in ("success", "pending")
    assert set(states(run_dir).values()) <= {"success", "pending"}

    # No build container (every step's container descends from the host image)...
    build_containers = [c for c in client.containers.list(
        all=True, filters={"ancestor": host_image.id})
        if c.labels.get(LABEL_RUN) in (None, run_dir.name)]
    assert build_containers == []
    # ...no untagged step image of a cut-off build, and the layer is whole or absent.
    dangling = [i for i in client.images.list(filters={
        "dangling": True, "label": f"{LABEL_HOST}=debian-bookworm"})
        if i.attrs.get("Created", "") >= time.strftime("%Y-%m-%dT%H:%M:%S",
                                                       time.gmtime(started))]
    assert dangling == []
    try:
        baked = client.images.get(layer)
    except docker.errors.ImageNotFound:
        baked = None
    if baked is not None:
        assert baked.labels.get(LABEL_ROLE) == "dib-layer"
        assert len(baked.attrs["RootFS"]["Layers"]) == (  # one per COPY: every step's
            len(host_image.attrs["RootFS"]["Layers"]) + len(snapshot.parts))
    assert_nothing_left(run_dir, roots=(tmp_path,))

    done = dib_matrix("run", "--resume", str(run_dir))
    assert done.returncode == 0, done.stdout[-3000:]
    assert set(states(run_dir).values()) == {"success"}
    assert client.images.get(layer).labels.get(LABEL_ROLE) == "dib-layer"
    assert f"dib-matrix/dib-debian-bookworm:{layer.split(':')[1]}" in (
        run_dir / "results.json").read_text()  # the cell ran on the layer of its tree
    assert_nothing_left(run_dir, roots=(tmp_path,))


def test_a_live_runs_layer_survives_another_runs_prune_and_clean(tmp_path):
    """The nightly-and-reviewer collision, made deterministic. Run A (hosts trixie and
    bookworm, one cell at a time) bakes its bookworm layer, then holds its trixie cell at a
    gate: its bookworm layer is in no container — A is between cells there, as the nightly
    was. Meanwhile run B, three times with three other trees, bakes bookworm layers and
    prunes (the third prune reaches A's layer: two newer ones are kept), then `clean` and
    `clean --caches` run. A's layer, container and cache volumes stay ("kept ...: in use by
    run A"), and once the gate opens A's cells succeed on that very layer, not a re-bake.
    Without leases B's prune removes A's layer and `clean` kills A's running cell."""
    gate = Gate()
    tree_a = patched_tree(tmp_path / "a")
    gate.element(tree_a)
    target(tmp_path, "gated", "gate")
    matrix_a = tmp_path / "a.yaml"
    matrix_a.write_text(
        "name: lease-a\nhosts: [debian-trixie, debian-bookworm]\n"
        "targets: [targets/gated.yaml, debian-bookworm]\nchecks: []\nmax-parallel: 1\n"
        "exclude:\n"
        "  - {host: debian-bookworm, target: gated, reason: the gate holds trixie's cell}\n"
        "  - {host: debian-trixie, target: debian-bookworm, reason: bookworm's host runs it}\n")
    target(tmp_path, "broken", "broken")
    matrix_b = tmp_path / "b.yaml"
    matrix_b.write_text("name: lease-b\nhosts: [debian-bookworm]\ntargets: [targets/broken.yaml]\n"
                        "checks: []\n")
    client = docker.from_env()
    b_runs = []
    proc_a = start_run(matrix_a, tmp_path / "out-a", "--dib-tree", str(tree_a))
    try:
        gate.wait(proc_a)  # A: both layers baked, trixie's cell at the gate
        run_a = (tmp_path / "out-a" / "latest").resolve()
        said = (run_a / "logs" / "debian-bookworm" / "hostgen.log").read_text()
        layer_a = BOOKWORM_LAYER.search(said).group(1)
        layer_a_id = client.images.get(layer_a).id
        assert client.containers.list(filters={"label": f"{LABEL_RUN}={run_a.name}"})

        outputs = []
        for index in range(3):
            tree_b = patched_tree(tmp_path / f"b{index}")
            (tree_b / "elements" / "broken" / "README").write_text(f"review {index}\n")
            done = dib_matrix("run", str(matrix_b), "--out", str(tmp_path / f"out-b{index}"),
                              "--dib-tree", str(tree_b))
            assert done.returncode == 1, done.stdout[-3000:]  # B's own verdict: a broken hook
            b_runs.append((tmp_path / f"out-b{index}" / "latest").resolve())
            assert states(b_runs[-1])["debian-bookworm.broken"] == "failed"
            outputs.append(done.stdout)
            # The heart of it: A's layer is still there after each of B's prunes.
            assert image_id(client, layer_a) == layer_a_id, (
                f"run B{index}'s prune removed run A's layer {layer_a}:\n{done.stdout[-3000:]}")
        assert f"kept {layer_a}: in use by run {run_a.name}" in "".join(outputs)

        cleaned = dib_matrix("clean", timeout=300)
        assert cleaned.returncode == 0, cleaned.stdout
        assert f"run {run_a.name}: kept: the run is live" in cleaned.stdout
        cleaned = dib_matrix("clean", "--caches", timeout=300)
        assert cleaned.returncode == 0, cleaned.stdout
        assert f"kept {layer_a}: in use by run {run_a.name}" in cleaned.stdout
        assert image_id(client, layer_a) == layer_a_id, cleaned.stdout
        # A's cell still runs at the gate: clean left the live run's container alone.
        running = client.containers.list(filters={"label": f"{LABEL_RUN}={run_a.name}"})
        assert [c.labels.get("org.dib-matrix.cell") for c in running] == ["debian-trixie.gated"]
        gate.open()
        output_a, _ = proc_a.communicate(timeout=600)
    finally:
        gate.close()  # a failed test: the gated hook fails, A finishes and cleans up
        stop(proc_a)
    assert proc_a.returncode == 0, output_a[-3000:]
    assert states(run_a) == {
        "debian-trixie.hostgen": "success", "debian-trixie.gated": "success",
        "debian-trixie.debian-bookworm": "excluded", "debian-bookworm.hostgen": "success",
        "debian-bookworm.gated": "excluded", "debian-bookworm.debian-bookworm": "success"}
    built = read_results(run_a).cell("debian-bookworm", "debian-bookworm")
    assert layer_a in built.reproducer  # the cell ran on the layer A baked at its start
    assert "is gone" not in (run_a / built.log).read_text()  # and it was never re-baked
    for run_dir in (run_a, *b_runs):
        assert_nothing_left(run_dir, roots=(tmp_path,))
