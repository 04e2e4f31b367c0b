"""hostgen and cell containers against the real engine, real debootstrap and real dib.

Quick set: the bookworm host (cold or cached), its cached rebuild, dib building
a bookworm tar inside it, the cell container's limits, and an unpullable image
host. Marked slow: the trixie host and everything run inside it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dib.mirror import find_mirror
from matrix import cli
from matrix.config.dibtree import DibTree, TreeFile
from matrix.config.hosts import load_host
from matrix.containers.engine import (
    LABEL_RUN,
    dib_command,
    dib_environment,
    remove_run_objects,
)
from matrix.containers.labels import LABEL_HOST
from matrix.hostgen.build import HostgenStatus, build_host
from matrix.hostgen.diblayer import bake
from matrix.verdict.catalogue import load_catalogue
from matrix.verdict.classify import Evidence, classify
from tests.integration.hostfixtures import REPO, HostgenSession, open_hostgen_session

pytestmark = pytest.mark.integration

UNPULLABLE = "dib-matrix-test.invalid/no-such/image:never"


@pytest.fixture(scope="session")
def hostgen_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostgenSession]:
    yield from open_hostgen_session(tmp_path_factory)


def assert_dib_tar(session: HostgenSession, host: str) -> None:
    """dib builds a debian-bookworm tar inside ``host`` through the cell contract."""
    result = session.cell(
        host,
        "debian-bookworm-tar",
        dib_command(["debian-minbase"], "debian-bookworm"),
        environment=dib_environment({"DIB_RELEASE": "bookworm"}, find_mirror("debian")),
    )
    log = result.log_path.read_text(errors="replace")
    assert result.ok, log[-3000:]
    image = session.out_dir(host) / "debian-bookworm.tar"
    assert image.stat().st_size > 50 * 1024 * 1024
    with tarfile.open(image) as tar:
        names = set(tar.getnames())
    assert {"./etc/debian_version", "./usr/bin/apt-get"} <= names or {
        "etc/debian_version",
        "usr/bin/apt-get",
    } <= names


def test_bookworm_host_builds_with_facts(hostgen_session: HostgenSession) -> None:
    outcome = hostgen_session.build("debian-bookworm")
    assert outcome.ok, f"{outcome.evidence} (log: {outcome.log_path})"
    assert outcome.status in (HostgenStatus.BUILT, HostgenStatus.CACHED)
    facts = outcome.facts
    assert facts is not None
    for tool in ("debootstrap", "qemu-img", "runuser", "tox", "python3"):
        assert facts.has_tool(tool), tool
    assert not facts.has_tool("zypper")
    assert facts.has_debootstrap_script("bookworm")
    # bookworm's debootstrap predates forky: the matrix reports "No such script".
    assert not facts.has_debootstrap_script("forky")
    assert facts.python_version and facts.python_version.startswith("3.11")
    image = hostgen_session.client.images.get(outcome.image)
    assert image.labels["org.dib-matrix.host"] == "debian-bookworm"


def test_second_build_is_cached_in_under_2s(hostgen_session: HostgenSession) -> None:
    first = hostgen_session.build("debian-bookworm")
    started = time.monotonic()
    again = build_host(
        hostgen_session.client,
        hostgen_session.hosts["debian-bookworm"],
        hostgen_session.workdir / "again.log",
    )
    elapsed = time.monotonic() - started
    assert again.status is HostgenStatus.CACHED
    assert again.image == first.image and again.facts == first.facts
    assert elapsed < 2.0


def test_cell_container_can_mount_and_chroot(hostgen_session: HostgenSession) -> None:
    script = (
        "set -e; test -r /opt/dib-matrix/dib/__init__.py; "
        "! touch /opt/dib-matrix/readonly-check 2>/dev/null; "
        "mkdir -p /tmp/r/proc /tmp/r/sys /tmp/r/dev /tmp/r/tmp; "
        "mount -t proc proc /tmp/r/proc; mount -t sysfs sysfs /tmp/r/sys; "
        "mount --bind /dev /tmp/r/dev; mount -t tmpfs tmpfs /tmp/r/tmp; "
        "chroot / true; umount /tmp/r/tmp /tmp/r/dev /tmp/r/sys /tmp/r/proc; "
        "touch /out/written /cache/written; echo cell-ok"
    )
    result = hostgen_session.cell(
        "debian-bookworm", "limits", ["/bin/sh", "-c", script], timeout=120
    )
    log = result.log_path.read_text()
    assert result.ok, log
    assert "cell-ok" in log
    assert (hostgen_session.out_dir("debian-bookworm") / "written").exists()


def test_cell_timeout_kills_and_removes(hostgen_session: HostgenSession) -> None:
    started = time.monotonic()
    result = hostgen_session.cell(
        "debian-bookworm", "sleeper", ["/bin/sh", "-c", "echo sleeping; sleep 300"], timeout=3
    )
    assert result.timed_out and not result.ok
    assert time.monotonic() - started < 30
    assert not [c for c in hostgen_session.labelled_containers() if "sleeper" in c.name]


def test_ctrl_c_removes_the_cell_container(hostgen_session: HostgenSession, tmp_path: Path) -> None:
    run_id = f"{hostgen_session.run_id}-sigint"
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from matrix.containers.engine import CellSpec, connect, run_cell
        spec = CellSpec({run_id!r}, "sleeper", "debian-bookworm",
                        {hostgen_session.image("debian-bookworm")!r},
                        ("/bin/sh", "-c", "echo up; sleep 300"),
                        Path({str(tmp_path / "sigint.log")!r}), 600)
        run_cell(connect(), spec)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    selector = {"label": f"{LABEL_RUN}={run_id}"}
    client = hostgen_session.client
    try:
        deadline = time.monotonic() + 60
        while not client.containers.list(filters=selector) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert client.containers.list(filters=selector), "the cell container never started"
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=60) != 0
        assert client.containers.list(all=True, filters=selector) == []
    finally:
        child.kill()
        remove_run_objects(client, run_id)


def test_dib_builds_bookworm_tar_in_bookworm_host(hostgen_session: HostgenSession) -> None:
    assert_dib_tar(hostgen_session, "debian-bookworm")


def test_baked_dib_layer_replaces_the_mount(hostgen_session: HostgenSession) -> None:
    client = hostgen_session.client
    log = hostgen_session.workdir / "bake.log"
    with log.open("wb") as stream:
        # A file of this test's own makes the layer new, whatever earlier runs baked.
        token = os.urandom(8).hex()
        tree = DibTree.read(REPO)
        extra = TreeFile(token.encode(), False, hashlib.sha256(token.encode()).digest())
        snapshot = dataclasses.replace(
            tree, files={**tree.files, "elements/.bake-test": extra}, digest=tree.digest + token)
        layer = bake(client, "debian-bookworm", hostgen_session.image("debian-bookworm"),
                     snapshot, stream)
        again = bake(client, "debian-bookworm", hostgen_session.image("debian-bookworm"),
                     snapshot, stream)
    baked = layer.reference
    assert not layer.cached and again.cached and again.reference == baked
    executables = sum(
        1 for p in (REPO / "elements").rglob("*") if p.is_file() and os.access(p, os.X_OK)
    )
    script = (
        "python3 -m dib --help >/dev/null && "
        "echo executables=$(find /opt/dib-matrix/elements -type f -perm -u+x | wc -l)"
    )
    try:
        result = hostgen_session.cell(
            "debian-bookworm",
            "baked-help",
            ["/bin/sh", "-c", script],
            environment={"PYTHONPATH": "/opt/dib-matrix"},
            image=baked,
            dib_tree=None,
            timeout=120,
        )
        output = result.log_path.read_text()
        assert result.ok, output
        assert f"executables={executables}" in output
    finally:
        client.images.remove(baked, force=True)


def test_unpullable_image_host_fails_fast(hostgen_session: HostgenSession, tmp_path: Path) -> None:
    path = tmp_path / "unpullable.yaml"
    path.write_text(
        f"name: unpullable\nbase:\n  image: {UNPULLABLE}\npackage-manager: apt\npackages: [tox]\n"
    )
    started = time.monotonic()
    outcome = build_host(hostgen_session.client, load_host(path), tmp_path / "unpullable.log")
    assert time.monotonic() - started < 15
    assert outcome.status is HostgenStatus.FAILED
    assert verdict(outcome).category.id == "base-image-unavailable"
    assert outcome.evidence.startswith("cannot pull " + UNPULLABLE)
    assert "\n" not in outcome.evidence


@pytest.mark.slow
def test_trixie_host_has_forky_script(hostgen_session: HostgenSession) -> None:
    outcome = hostgen_session.build("debian-trixie")
    assert outcome.ok, f"{outcome.evidence} (log: {outcome.log_path})"
    assert outcome.facts is not None
    assert outcome.facts.has_debootstrap_script("forky")
    assert outcome.facts.python_version and outcome.facts.python_version.startswith("3.13")


@pytest.mark.slow
def test_dib_builds_bookworm_tar_in_trixie_host(hostgen_session: HostgenSession) -> None:
    assert_dib_tar(hostgen_session, "debian-trixie")


@pytest.mark.slow
def test_cli_hosts_build_and_list(hostgen_session: HostgenSession, capsys, tmp_path) -> None:
    hostgen_session.build("debian-bookworm")
    hostgen_session.build("debian-trixie")
    argv = ["hosts", "build", "debian-bookworm", "debian-trixie", "--log-dir", str(tmp_path)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "debian-bookworm: cached" in out and "debian-trixie: cached" in out
    assert cli.main(["hosts", "list"]) == 0
    out = capsys.readouterr().out
    assert "cached" in out and "debootstrap bookworm (minbase)" in out


def verdict(outcome):
    """What the run's verdict stage makes of a failed hostgen."""
    return classify(Evidence(outcome.host, "hostgen", (outcome.evidence,), outcome.log_path,
                             hint=outcome.hint), load_catalogue())


def _host_file(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\n{body}")
    return path


def test_unreachable_mirror_is_categorised(hostgen_session: HostgenSession, tmp_path: Path) -> None:
    body = "base:\n  bootstrap:\n    suite: bookworm\n    mirror: http://mirror.invalid/debian\n"
    host = load_host(_host_file(tmp_path, "test-no-mirror", body))
    outcome = build_host(hostgen_session.client, host, tmp_path / "no-mirror.log")
    named = verdict(outcome)
    assert named.category.id == "mirror-unreachable", named
    assert "mirror.invalid" in named.evidence


@pytest.mark.slow
def test_missing_package_is_categorised(hostgen_session: HostgenSession, tmp_path: Path) -> None:
    body = "base: {bootstrap: bookworm}\npackages: [python3, dib-matrix-no-such-package]\n"
    host = load_host(_host_file(tmp_path, "test-missing-package", body))
    client = hostgen_session.client
    try:
        outcome = build_host(client, host, tmp_path / "missing.log", mirror=hostgen_session.mirror)
        named = verdict(outcome)
        assert named.category.id == "package-not-found", named
        assert named.evidence.endswith("Unable to locate package dib-matrix-no-such-package")
    finally:
        for image in client.images.list(filters={"label": f"{LABEL_HOST}={host.name}"}):
            client.images.remove(image.id, force=True)


def test_a_silent_build_step_ends_at_the_deadline(hostgen_session: HostgenSession) -> None:
    """A RUN step that prints nothing is killed at the hostgen deadline, not at the
    SDK's read timeout; the engine keeps neither its container nor an image."""
    from matrix.hostgen.imagebuild import BuildFailed, build_image

    base = hostgen_session.image("debian-bookworm")
    dockerfile = f"FROM {base}\nRUN sleep 600\n".encode()
    client = hostgen_session.client
    before = {c.id for c in client.containers.list(all=True)}
    log = hostgen_session.workdir / "logs" / "silent-step.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log.open("wb") as out, pytest.raises(BuildFailed) as failed:
        build_image(client, {"Dockerfile": dockerfile}, out, labels={},
                    deadline=time.monotonic() + 8, nocache=True)
    assert failed.value.timed_out and failed.value.step == "RUN sleep 600"
    assert time.monotonic() - started < 40
    time.sleep(1)  # forcerm removes the step's container as the build ends
    assert {c.id for c in client.containers.list(all=True)} - before == set()


def test_no_labelled_container_remains(hostgen_session: HostgenSession) -> None:
    # Runs last in this module: every cell above removed its container.
    assert hostgen_session.labelled_containers() == []
