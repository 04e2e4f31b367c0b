"""dib-matrix run end to end: real engine, real host image, real dib builds."""

import re
import signal
import subprocess
import sys
import time

import docker
import pytest

from tests.integration.dibhelpers import REPO
from tests.integration.matrixhelpers import (
    cells_of,
    dib_matrix,
    patched_tree,
    run_containers,
    write_matrix,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("matrix")
    matrix = write_matrix(tmp, """\
name: small
hosts: [debian-bookworm, hosts/registry-only.yaml]
targets: [debian-bookworm, debian-forky, opensuse-leap-15]
checks: [tox]
allowed-failures:
  - target: opensuse-leap-15
max-parallel: 2
timeout: 20m
""")
    done = dib_matrix("run", str(matrix), "--out", str(tmp / "out"))
    run_dir = (tmp / "out" / "latest").resolve()
    return done, run_dir, matrix


def test_exit_code_says_voting_cells_failed(small_run):
    done, _, _ = small_run
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]


def test_cells_get_the_seeds_verdicts(small_run):
    _, run_dir, _ = small_run
    cells, data = cells_of(run_dir)
    assert data["schema_version"] == 1
    assert cells["debian-bookworm.hostgen"]["state"] == "success"
    assert cells["debian-bookworm.tox"]["state"] == "success"
    assert cells["debian-bookworm.debian-bookworm"]["state"] == "success"
    forky = cells["debian-bookworm.debian-forky"]
    assert forky["state"] == "failed"
    assert forky["category"]["legend"] == "No such script: /usr/share/debootstrap/scripts/forky"
    suse = cells["debian-bookworm.opensuse-leap-15"]
    assert suse["state"] == "allowed-failure"
    assert suse["category"]["id"] == "zypper-not-available"
    hostgen = cells["registry-only.hostgen"]
    assert hostgen["state"] == "failed"
    assert hostgen["category"]["id"] == "base-image-unavailable"
    assert hostgen["duration"] < 60
    for row in ("tox", "debian-bookworm", "debian-forky"):
        skipped = cells[f"registry-only.{row}"]
        assert skipped["state"] == "skipped"
        assert skipped["category"]["legend"] == "missing dependency"


def test_artifacts_logs_and_reproducer_are_recorded(small_run):
    _, run_dir, _ = small_run
    cells, data = cells_of(run_dir)
    build = cells["debian-bookworm.debian-bookworm"]
    (artifact,) = build["artifacts"]
    image = run_dir / artifact["path"]
    assert artifact["path"] == "images/debian-bookworm/debian-bookworm.tar"
    assert image.stat().st_size == artifact["size"]
    assert len(artifact["sha256"]) == 64
    assert (run_dir / build["log"]).read_text().count("build finished") == 1
    assert build["reproducer"].startswith("docker run --rm --network=host --cap-drop=ALL")
    assert "python3 -m dib" in build["reproducer"]
    # The tree is baked into a layer on the host image: the reproducer needs no checkout.
    assert " dib-matrix/dib-debian-bookworm:" in build["reproducer"]
    assert ":/opt/dib-matrix" not in build["reproducer"]
    hostgen_log = (run_dir / cells["debian-bookworm.hostgen"]["log"]).read_text()
    assert "dib layer dib-matrix/dib-debian-bookworm:" in hostgen_log
    assert data["dib_tree"]["path"] == str(REPO)
    assert data["host_images"]["debian-bookworm"].startswith("dib-matrix/host-debian-bookworm:")


def test_nothing_is_left_on_the_engine(small_run):
    assert run_containers(small_run[1]) == []


def test_reuse_takes_unchanged_cells_and_links_their_images(small_run):
    _, first_dir, matrix = small_run
    started = time.monotonic()
    done = dib_matrix("run", str(matrix), "--out", str(first_dir.parent), "--reuse")
    seconds = time.monotonic() - started
    second_dir = (first_dir.parent / "latest").resolve()
    assert second_dir != first_dir
    cells, _ = cells_of(second_dir)
    build = cells["debian-bookworm.debian-bookworm"]
    assert build["reused"] is True and build["state"] == "success"
    assert cells["debian-bookworm.tox"]["reused"] is True
    path = build["artifacts"][0]["path"]
    assert (second_dir / path).stat().st_ino == (first_dir / path).stat().st_ino
    assert "(reused)" in (second_dir / "report.txt").read_text()
    assert seconds < 60, done.stdout[-2000:]


def test_ctrl_c_keeps_finished_cells_and_resume_finishes(tmp_path):
    matrix = write_matrix(tmp_path, """\
name: interrupted
hosts: [debian-bookworm]
targets: [debian-bookworm, debian-trixie]
checks: [tox]
max-parallel: 1
env: {DIB_TREE_CACHE: "0"}  # a warm build ends within the test's three seconds
""")
    proc = subprocess.Popen([sys.executable, "-m", "matrix.cli", "run", str(matrix), "--out",
                             str(tmp_path / "out")], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines, finished = [], None
    # The scheduler picks the order (by expected seconds): stop after whichever of the three
    # cells ends first, so two are still to run.
    for line in proc.stdout:
        lines.append(line)
        ended = re.search(r"(debian-bookworm\.(?:tox|debian-bookworm|debian-trixie))\b.*success",
                          line)
        if ended:
            finished = ended.group(1)
            break
    assert finished, "".join(lines)
    time.sleep(3)  # the next cell's container is running now
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, "".join(lines) + rest
    run_dir = (tmp_path / "out" / "latest").resolve()
    cells, data = cells_of(run_dir)
    assert data["interrupted"] is True
    assert cells[finished]["state"] == "success"
    assert "pending" in {c["state"] for c in cells.values()}
    assert run_containers(run_dir) == []

    done = dib_matrix("run", "--resume", str(run_dir))
    assert done.returncode == 0, done.stdout[-3000:]
    cells, data = cells_of(run_dir)
    assert {c["state"] for c in cells.values()} == {"success"}
    assert data["interrupted"] is False


def test_config_errors_exit_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("hosts: [debian-bookwrm]\ntargets: [debian-sid]\nretries: -1\n")
    done = dib_matrix("run", str(bad))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "bad.yaml:1: hosts[0]: unknown host 'debian-bookwrm'" in done.stderr
    assert "bad.yaml:3: retries:" in done.stderr


def test_patch_review_tree_with_timeout_and_real_failure(tmp_path):
    tree = patched_tree(tmp_path)
    targets = tmp_path / "targets"
    targets.mkdir()
    for name, element in (("sleepy", "sleeper"), ("broken", "broken")):
        (targets / f"{name}.yaml").write_text(
            f"name: {name}\nelements: [debian-minbase, {element}]\nenv:\n"
            "  DIB_RELEASE: bookworm\noutputs: [tar]\n")
    matrix = write_matrix(tmp_path, """\
name: review
hosts: [debian-bookworm]
targets: [targets/sleepy.yaml, targets/broken.yaml]
checks: []
timeout: 20s
""")
    started = time.monotonic()
    done = dib_matrix("run", str(matrix), "--out", str(tmp_path / "out"), "--dib-tree", str(tree))
    assert done.returncode == 1, done.stdout[-3000:]
    run_dir = (tmp_path / "out" / "latest").resolve()
    cells, data = cells_of(run_dir)
    assert data["dib_tree"]["path"] == str(tree)
    sleepy = cells["debian-bookworm.sleepy"]
    assert sleepy["state"] == "timeout"
    assert 20 <= sleepy["duration"] < 60
    broken = cells["debian-bookworm.broken"]
    assert broken["state"] == "failed"
    # dib's own failure record names the element and the hook; its line is the evidence.
    assert broken["category"]["id"] == "hook-failed"
    assert broken["category"]["legend"] == "element broken: root.d/01-broken exited 7"
    assert broken["evidence"] == "patched element is broken"
    assert sleepy["category"]["id"] == "timeout"
    assert time.monotonic() - started < 180
    assert run_containers(run_dir) == []


def _layer_of(run_dir, cell_id):
    cells, _ = cells_of(run_dir)
    words = cells[cell_id]["reproducer"].split()
    return next(w for w in words if w.startswith("dib-matrix/dib-")), cells[cell_id]


def test_element_patch_bakes_only_a_thin_layer_and_mount_still_works(tmp_path):
    tree = patched_tree(tmp_path)
    (tmp_path / "targets").mkdir()
    (tmp_path / "targets" / "broken.yaml").write_text(
        "name: broken\nelements: [debian-minbase, broken]\nenv:\n  DIB_RELEASE: bookworm\n"
        "outputs: [tar]\n")
    matrix = write_matrix(tmp_path, "name: layers\nhosts: [debian-bookworm]\n"
                          "targets: [targets/broken.yaml]\nchecks: []\n")
    out = tmp_path / "out"

    def run(*extra):
        done = dib_matrix("run", str(matrix), "--out", str(out), "--dib-tree", str(tree), *extra)
        assert done.returncode == 1, done.stdout[-3000:]
        return (out / "latest").resolve()

    first = run()
    layer1, cell1 = _layer_of(first, "debian-bookworm.broken")
    assert "patched element is broken" in cell1["evidence"]

    script = tree / "elements" / "broken" / "root.d" / "01-broken"
    script.write_text(script.read_text().replace("is broken", "is broken again"))
    second = run()
    layer2, cell2 = _layer_of(second, "debian-bookworm.broken")
    assert layer2 != layer1
    assert "patched element is broken again" in cell2["evidence"]
    _, data1 = cells_of(first)
    _, data2 = cells_of(second)
    assert data1["host_images"] == data2["host_images"]  # the host image was not rebuilt
    client = docker.from_env()
    layers1 = client.images.get(layer1).attrs["RootFS"]["Layers"]
    layers2 = client.images.get(layer2).attrs["RootFS"]["Layers"]
    # Only the last layer (elements) differs: host image and dib layers are shared.
    assert len(layers1) == len(layers2) and layers1[:-1] == layers2[:-1]
    assert layers1[-1] != layers2[-1]

    mounted = run("--dib-mount")
    cells, _ = cells_of(mounted)
    reproducer = cells["debian-bookworm.broken"]["reproducer"]
    assert f"{tree}:/opt/dib-matrix:ro" in reproducer
    assert "dib-matrix/dib-" not in reproducer
    assert "patched element is broken again" in cells["debian-bookworm.broken"]["evidence"]
    assert run_containers(mounted) == []


def test_vm_target_is_built_and_boots_in_the_boot_row(tmp_path):
    matrix = write_matrix(tmp_path, """\
name: vm
hosts: [debian-bookworm]
targets: [debian-bookworm-vm]
checks: []
""")
    done = dib_matrix("run", str(matrix), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stdout[-3000:]
    run_dir = (tmp_path / "out" / "latest").resolve()
    cells, data = cells_of(run_dir)
    assert data["rows"] == ["hostgen", "debian-bookworm-vm", "debian-bookworm-vm:boot"]
    boot = cells["debian-bookworm.debian-bookworm-vm:boot"]
    assert boot["state"] == "success" and boot["kind"] == "boot"
    assert "dib.boottest" in boot["reproducer"]
    assert "DIB-BOOT-MARKER" in (run_dir / boot["log"]).read_text(errors="replace")
    assert run_containers(run_dir) == []


def test_green_means_verified_and_a_wrong_release_fails_verification(tmp_path):
    """A build is success only after its image passed its checks; a target that declares
    forky but whose element pins bookworm fails with that category."""
    import shutil

    tree = patched_tree(tmp_path)
    data = REPO / "tests" / "integration" / "data"
    shutil.copytree(data / "elements" / "pin-release-bookworm",
                    tree / "elements" / "pin-release-bookworm")
    (tmp_path / "targets").mkdir()
    shutil.copy(data / "targets" / "debian-forky-pinned.yaml", tmp_path / "targets")
    matrix = write_matrix(tmp_path, """\
name: verified
hosts: [debian-bookworm]
targets: [debian-bookworm, targets/debian-forky-pinned.yaml]
checks: []
""")
    done = dib_matrix("run", str(matrix), "--out", str(tmp_path / "out"), "--dib-tree", str(tree))
    assert done.returncode == 1, done.stdout[-3000:]
    run_dir = (tmp_path / "out" / "latest").resolve()
    cells, _ = cells_of(run_dir)
    good = cells["debian-bookworm.debian-bookworm"]
    assert good["state"] == "success"
    names = {check["name"] for check in good["checks"]}
    assert {"os-release", "packages"} <= names
    assert all(check["ok"] for check in good["checks"])
    pinned = cells["debian-bookworm.debian-forky-pinned"]
    assert pinned["state"] == "failed"
    assert pinned["category"]["id"] == "image-verification-failed"
    assert pinned["category"]["legend"] == "image is bookworm, target wants forky"
    assert not all(check["ok"] for check in pinned["checks"])
    assert pinned["artifacts"], "the image stays for inspection"
    html = (run_dir / "report.html").read_text()
    assert "image is bookworm, target wants forky" in html
    assert run_containers(run_dir) == []


@pytest.mark.slow
def test_bullseye_host_builds_qcow2_without_zstd(tmp_path):
    """bullseye's qemu-img 5.2 is new enough for zstd by version but built without it: dib
    probes, says so in the log, writes zlib, and the image passes its checks."""
    (tmp_path / "targets").mkdir()
    (tmp_path / "targets" / "bookworm-qcow2.yaml").write_text(
        "name: bookworm-qcow2\nelements: [debian-minbase]\nenv:\n  DIB_RELEASE: bookworm\n"
        "outputs: [qcow2]\n")
    matrix = write_matrix(tmp_path, "name: bullseye\nhosts: [debian-bullseye]\n"
                          "targets: [targets/bookworm-qcow2.yaml]\nchecks: []\n")
    done = dib_matrix("run", str(matrix), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stdout[-3000:]
    run_dir = (tmp_path / "out" / "latest").resolve()
    cells, _ = cells_of(run_dir)
    build = cells["debian-bullseye.bookworm-qcow2"]
    assert build["state"] == "success"
    assert "cannot write zstd-compressed qcow2" in (run_dir / build["log"]).read_text()
    assert {c["name"] for c in build["checks"] if c["ok"]} >= {"qemu-img check", "os-release"}
    info = subprocess.run(["qemu-img", "info", str(run_dir / build["artifacts"][0]["path"])],
                          capture_output=True, text=True, check=True).stdout
    assert "compression type: zlib" in info


def test_kill_9_mid_cell_then_resume_runs_it_again_with_the_same_tree(tmp_path):
    """The orchestrator dies (SIGKILL) while a cell's container runs: the container is
    left behind, and --resume removes it first (same name), then re-runs the cell with
    the tree the run was started with, leaving nothing on the engine."""
    tree = patched_tree(tmp_path)
    hook = tree / "elements" / "napper" / "root.d" / "01-nap"
    hook.parent.mkdir(parents=True)
    hook.write_text("#!/bin/bash\necho napping\nsleep 15\n")
    hook.chmod(0o755)
    (tmp_path / "targets").mkdir()
    (tmp_path / "targets" / "nap.yaml").write_text(
        "name: nap\nelements: [debian-minbase, napper]\nenv:\n  DIB_RELEASE: bookworm\n"
        "outputs: [tar]\n")
    matrix = write_matrix(tmp_path, "name: nap\nhosts: [debian-bookworm]\n"
                          "targets: [targets/nap.yaml]\nchecks: []\n")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "matrix.cli", "run", str(matrix), "--out",
                             str(out), "--dib-tree", str(tree)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    client = docker.from_env()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        running = client.containers.list(filters={"label": "org.dib-matrix.cell="
                                                  "debian-bookworm.nap"})
        if running:
            break
        time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("the cell's container never started")
    proc.kill()  # SIGKILL: no clean-up runs
    proc.communicate(timeout=60)
    run_dir = (out / "latest").resolve()
    assert run_containers(run_dir), "the killed run's container is still there"
    done = dib_matrix("run", "--resume", str(run_dir))
    assert done.returncode == 0, done.stdout[-3000:]
    assert "resume: removed what the earlier run left" in done.stdout + done.stderr
    cells, _ = cells_of(run_dir)
    assert cells["debian-bookworm.nap"]["state"] == "success"
    assert run_containers(run_dir) == []


def test_a_full_output_directory_is_out_of_disk_space(tmp_path):
    """--out on a 20 MB tmpfs: the build cannot write its image; the cell says out of disk
    space with the space dib saw when the write failed, and the run's files are intact."""
    out = tmp_path / "small"
    out.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(out)], check=True)
    try:
        matrix = write_matrix(tmp_path, "name: full\nhosts: [debian-bookworm]\n"
                              "targets: [debian-bookworm]\nchecks: []\n")
        done = dib_matrix("run", str(matrix), "--out", str(out))
        assert done.returncode == 1, done.stdout[-3000:]
        run_dir = (out / "latest").resolve()
        cells, _ = cells_of(run_dir)
        build = cells["debian-bookworm.debian-bookworm"]
        assert build["state"] == "failed"
        assert build["category"]["id"] == "out-of-disk-space"
        assert build["free_bytes"]["output"] < 1 << 20
        assert (run_dir / "report.html").stat().st_size > 0
        assert run_containers(run_dir) == []
    finally:
        subprocess.run(["umount", "-l", str(out)], check=False)
