"""dib-matrix run of a target built with diskimage-builder's own elements.

The bundled ``debian-bookworm-dib-upstream`` target (``diskimage-builder-elements:
"3.43.0"``, elements ``[debian-minimal]``, tar) on the debian-bookworm host: the run
fetches the pinned wheel (or takes it from ~/.cache/dib-matrix/upstream-dib), mounts
its element tree read-only in the cell, first on ELEMENTS_PATH, and the image shows
upstream's effects, not dib's.
"""

import subprocess
import sys
import tarfile

import pytest

from matrix.config import upstreamdib
from tests.integration.dibhelpers import REPO
from tests.integration.matrixhelpers import cells_of, run_containers

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TARGET = "debian-bookworm-dib-upstream"
CELL = f"debian-bookworm.{TARGET}"


def dib_matrix(*args, timeout=2400):
    return subprocess.run([sys.executable, "-m", "matrix.cli", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def upstream_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("upstream-target")
    try:  # the cached wheel when there is one; else pip fetches it (CI has the index)
        upstreamdib.upstream_tree()
    except upstreamdib.UpstreamError as err:
        pytest.skip(f"diskimage-builder {upstreamdib.VERSION} not available: {err}")
    matrix = tmp / "matrix.yaml"
    matrix.write_text(f"""\
name: upstream-target
hosts: [debian-bookworm]
targets: [{TARGET}]
checks: []
max-parallel: 1
timeout: 30m
""")
    plan = dib_matrix("plan", str(matrix), timeout=300)
    done = dib_matrix("run", str(matrix), "--out", str(tmp / "out"))
    return plan, done, (tmp / "out" / "latest").resolve()


def test_plan_names_the_tree_it_will_use(upstream_run):
    plan, _, _ = upstream_run
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert f"diskimage-builder 3.43.0 elements (for {TARGET}): cached in " in plan.stdout


def test_the_upstream_target_builds(upstream_run):
    _, done, run_dir = upstream_run
    cells, _ = cells_of(run_dir)
    cell = cells[CELL]
    assert done.returncode == 0, (run_dir / cell["log"]).read_text()[-4000:]
    assert cell["state"] == "success"
    assert all(check["ok"] for check in cell["checks"]), cell["checks"]
    assert run_containers(run_dir) == []


def test_the_cell_had_upstreams_tree_first_read_only(upstream_run):
    _, _, run_dir = upstream_run
    cell = cells_of(run_dir)[0][CELL]
    assert ":/opt/dib-upstream/elements:ro " in cell["reproducer"]
    assert "ELEMENTS_PATH=/opt/dib-upstream/elements " in cell["reproducer"]
    log = (run_dir / cell["log"]).read_text()
    # Elements dib does not bundle come in through upstream's debian-minimal and base.
    elements = next(line for line in log.splitlines() if "| elements: " in line).split()
    for name in ("dib-init-system", "pkg-map", "manifests", "debian-minimal"):
        assert name in elements


def test_the_image_has_upstreams_effects(upstream_run):
    _, _, run_dir = upstream_run
    (artifact,) = cells_of(run_dir)[0][CELL]["artifacts"]
    with tarfile.open(run_dir / artifact["path"]) as image:
        names = {name.lstrip("./") for name in image.getnames()}
        # upstream's debian-minimal root.d writes DIB_APT_SOURCES_CONF's entries
        sources = image.extractfile(image.getmember(
            next(n for n in image.getnames()
                 if n.lstrip("./") == "etc/apt/sources.list.d/default.list"))).read().decode()
        # upstream's manifests element (dib bundles none) copies its manifests in
        manifest = next(n for n in image.getnames()
                        if n.lstrip("./") == "etc/dib-manifests/dib_environment")
        environment = image.extractfile(manifest).read().decode()
    assert sources.startswith("deb ") and " bookworm main" in sources
    assert "etc/apt/sources.list.d/security.list" in names
    assert "usr/bin/busybox" in names and "usr/bin/sudo" in names  # upstream's baseinstall
    assert 'DIB_RELEASE="bookworm"' in environment and "DIB_ARGS=" in environment
