"""Two runs on one engine: one run's dib-layer prune never removes what a live run uses.

The failure this guards against (measured): a nightly and a reviewer's
``--dib-tree`` run started a minute apart; the reviewer's run baked a new layer,
its prune removed the nightly's layer between two cells, and seven nightly cells
ended ``error`` with ``No such image``. Here "run 1" is a separate process that
bakes its layer (taking its lease as a run does) and stays alive; "run 2" is this
process baking other trees' layers with pruning. Layers are baked for a test-only
host name (on the cached debian-bookworm host image), so no real host's layers
are touched, and every image the test makes is removed at the end.
"""

from __future__ import annotations

import contextlib
import io
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import docker.errors
import pytest

from matrix.config.dibtree import DibTree
from matrix.config.hosts import load_hosts
from matrix.containers.engine import LABEL_RUN, EngineError, connect, run_captured
from matrix.containers.labels import LABEL_HOST
from matrix.containers.leases import Registry, RunLease
from matrix.hostgen import diblayer
from matrix.hostgen.hostimage import image_names

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]

RUN_1 = """
import sys
from pathlib import Path
from matrix.containers import engine
from matrix.config.dibtree import DibTree
from matrix.hostgen.diblayer import LayerBaker
from matrix.containers.leases import Registry, RunLease

tree, leases, host, host_image = sys.argv[1:5]
client = engine.connect()
with RunLease("it-run-1", Registry(Path(leases))) as lease:
    with open("/dev/null", "wb") as log:
        layer = LayerBaker(DibTree.read(Path(tree)), lease=lease).bake(client, host, host_image,
                                                                      log)
    print(layer.reference, flush=True)
    sys.stdin.read()  # a live run, between two of its cells, until told to go on
"""


def small_tree(root: Path, marker: str) -> DibTree:
    (root / "dib").mkdir(parents=True)
    (root / "dib" / "__init__.py").write_text(f"# tree {marker}\n")
    (root / "dib" / "__main__.py").write_text("")
    (root / "elements" / "x").mkdir(parents=True)
    (root / "elements" / "x" / "README.rst").write_text(marker)
    return DibTree.read(root)


@pytest.fixture
def engine_client():
    try:
        client = connect()
    except EngineError as exc:
        pytest.skip(f"no container engine: {exc}")
    yield client
    client.close()


def test_a_live_runs_layer_survives_another_runs_prune(engine_client, tmp_path):
    client = engine_client
    host_image = image_names(load_hosts()["debian-bookworm"]).image
    try:
        client.images.get(host_image)
    except docker.errors.ImageNotFound:
        pytest.skip(f"{host_image} is not built (dib-matrix hosts build debian-bookworm)")
    host = f"leasetest-{uuid.uuid4().hex[:8]}"  # its own layers only: prune filters by host
    registry = Registry(tmp_path / "leases")
    log = io.BytesIO()
    run_1 = None
    try:
        # A layer no live run holds: the control, it goes like the nightly's did.
        unleased = diblayer.LayerBaker(small_tree(tmp_path / "a0", "a0")).bake(
            client, host, host_image, log).reference
        run_1 = subprocess.Popen(
            [sys.executable, "-c", RUN_1, str(small_tree(tmp_path / "a", "a").path),
             str(registry.root), host, host_image],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        leased = run_1.stdout.readline().strip()
        assert leased.startswith(f"dib-matrix/dib-{host}:"), run_1.poll()
        assert set(registry.live_runs()) == {"it-run-1"}
        leased_id = client.images.get(leased).id

        with RunLease("it-run-2", registry) as lease:  # the reviewer's run
            for marker in ("b", "c", "d"):
                newest = diblayer.LayerBaker(small_tree(tmp_path / marker, marker),
                                             lease=lease).bake(client, host, host_image, log)
                assert not newest.cached

        said = log.getvalue().decode()
        assert f"kept {leased}: in use by run it-run-1" in said
        with pytest.raises(docker.errors.ImageNotFound):
            client.images.get(unleased)  # the failure, reproduced where no lease holds
        # Run 1's next cell still starts from its layer.
        captured = run_captured(client, leased, ["cat", "/opt/dib-matrix/elements/x/README.rst"],
                                labels={LABEL_RUN: "it-run-1"}, timeout=60)
        assert (captured.exit_code, captured.stdout) == (0, "a")

        run_1.send_signal(signal.SIGKILL)  # kill -9: the lease file stays, stale
        run_1.wait(30)
        assert registry.path("it-run-1").exists() and registry.live_runs() == {}
        removed = diblayer.prune(client, host, keep=newest.reference, leases=registry)
        assert removed == [leased_id]
        with pytest.raises(docker.errors.ImageNotFound):
            client.images.get(leased)
    finally:
        if run_1 is not None and run_1.poll() is None:
            run_1.kill()
            run_1.wait(30)
        for image in client.images.list(filters={"label": f"{LABEL_HOST}={host}"}):
            with contextlib.suppress(docker.errors.NotFound):
                client.images.remove(image.id, force=True)
