"""Registry hosts for real (issue 15 section 2): Debian's ``docker-registry`` serves on
loopback from a temporary storage directory; the Debian base image hostgen already
debootstraps for ``debian-bookworm`` (plus a marker layer) is pushed to it under
distro-like names; a matrix runs hosts whose ``image:`` is that registry's:

- ``regtest-debian``: ``image: 127.0.0.1:PORT/debian:bookworm`` -- the pull, the digest
  pinned in results.json, the Dockerfile step, the tox row and a verified build;
- ``regtest-hub``: ``image: debian:bookworm``, a Docker Hub reference the matrix's
  ``registry-mirror: 127.0.0.1:PORT`` sends to ``127.0.0.1:PORT/library/debian:bookworm``;
- ``regtest-missing``: a tag the registry does not have: ``base image unavailable``
  with the registry's own words as evidence, its cells skipped.

Then ``--registry-mirror`` on the command line does the same for a matrix without the
key, and a registry that accepts connections and never answers ends at the hostgen
deadline. The engine treats 127.0.0.0/8 registries as insecure (plain http) by default.

The registry process, its storage, the pushed and pulled images, the test hosts'
images, layers, cache volumes and the run directories are removed even when a test
fails. Needs root, the engine, the Debian mirror of the apt sources, and the
``docker-registry`` binary (Debian's package of that name; skipped without it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import pytest

from dib.mirror import MirrorNotFound, find_mirror
from matrix.config.hosts import load_host, load_hosts
from matrix.containers.engine import EngineError, connect, remove_run_objects
from matrix.containers.labels import LABEL_HOST, LABEL_ROLE, cache_volume_name
from matrix.hostgen.build import HostgenStatus, build_host
from matrix.hostgen.hostimage import image_names
from matrix.hostgen.imagebuild import build_image

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
REGISTRY_BINARY = shutil.which("docker-registry")
TEST_HOSTS = ("regtest-debian", "regtest-hub", "regtest-missing", "regtest-silent")
START_TIMEOUT = 30.0


def packages_line() -> str:
    """debian-bookworm's packages (what dib and the tox row need), as a YAML line."""
    return f"packages: {json.dumps(list(load_hosts()['debian-bookworm'].packages))}\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LocalRegistry:
    port: int
    storage: Path
    log: Path
    digest: str = ""  # of the pushed image's manifest, sha256:...

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def _answers(port: int) -> bool:
    # A private opener without proxies: urlopen's global one keeps whatever proxy the
    # environment had when an earlier test first used it (a package cache's, say).
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with direct.open(f"http://127.0.0.1:{port}/v2/", timeout=2) as reply:
            return reply.status == 200
    except (OSError, urllib.error.URLError):
        return False


@contextlib.contextmanager
def serve_registry(work: Path) -> Iterator[LocalRegistry]:
    """docker-registry on loopback, storage in ``work``; stopped however the block ends."""
    assert REGISTRY_BINARY is not None
    storage = work / "storage"
    storage.mkdir()
    log = work / "registry.log"
    for _ in range(3):  # a port taken between choosing and binding: another one
        port = free_port()
        config = work / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: info\n"
            f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n"
            "    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{port}\n"
        )
        with log.open("ab") as out:
            process = subprocess.Popen([REGISTRY_BINARY, "serve", str(config)], stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline and process.poll() is None:
                if _answers(port):
                    yield LocalRegistry(port, storage, log)
                    return
                time.sleep(0.2)
        finally:
            _stop(process)
    raise AssertionError(f"docker-registry did not start: {log.read_text()[-2000:]}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(15)


def _base_image(client: docker.DockerClient, work: Path) -> str:
    """The imported debootstrap tree of hosts/debian-bookworm.yaml (made if missing)."""
    host = load_hosts()["debian-bookworm"]
    names = image_names(host)
    try:
        client.images.get(names.base)
    except docker.errors.ImageNotFound:
        outcome = build_host(client, host, work / "debian-bookworm-hostgen.log",
                             mirror=find_mirror("debian"), run_id="regtest-base")
        assert outcome.ok, outcome.evidence
    assert names.base is not None
    return names.base


def _push(client: docker.DockerClient, registry: LocalRegistry, base: str, work: Path
          ) -> list[str]:
    """A marker layer on ``base``, pushed as debian:bookworm and library/debian:bookworm;
    the local names removed again, so every host must pull."""
    dockerfile = (f"FROM {base}\nLABEL {LABEL_HOST}=regtest {LABEL_ROLE}=regtest\n"
                  "COPY marker /etc/dib-matrix-registry-test\n")
    files = {"Dockerfile": dockerfile.encode(), "marker": f"{time.time()}\n".encode()}
    with (work / "push.log").open("wb") as log:
        built = build_image(client, files, log, labels={LABEL_HOST: "regtest",
                                                        LABEL_ROLE: "regtest"})
    pushed = []
    for repository in (f"{registry.address}/debian", f"{registry.address}/library/debian"):
        client.api.tag(built.id, repository, "bookworm")
        pushed.append(f"{repository}:bookworm")
        for chunk in client.api.push(repository, tag="bookworm", stream=True, decode=True):
            assert "error" not in chunk, chunk
            digest = (chunk.get("aux") or {}).get("Digest")
            if digest:
                registry.digest = digest
    assert registry.digest.startswith("sha256:")
    for reference in pushed:
        client.images.remove(reference)
    with contextlib.suppress(docker.errors.APIError):
        client.images.remove(built.id)  # the pull brings it back, from the registry
    return pushed


def _remove_test_objects(client: docker.DockerClient, pushed: list[str]) -> None:
    for reference in pushed:
        with contextlib.suppress(docker.errors.APIError):
            client.images.remove(reference, force=True)
    for name in (*TEST_HOSTS, "regtest"):
        for image in client.images.list(filters={"label": f"{LABEL_HOST}={name}"}):
            for tag in image.tags:
                with contextlib.suppress(docker.errors.APIError):
                    client.images.remove(tag, force=True)
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(image.id, force=True)
        with contextlib.suppress(docker.errors.APIError):
            client.volumes.get(cache_volume_name(name)).remove(force=True)
    with contextlib.suppress(docker.errors.APIError):
        client.images.prune(filters={"dangling": True, "label": f"{LABEL_HOST}=regtest"})


@dataclass
class Setting:
    client: docker.DockerClient
    registry: LocalRegistry
    work: Path


@pytest.fixture(scope="module")
def setting() -> Iterator[Setting]:
    if REGISTRY_BINARY is None:
        pytest.skip("docker-registry is not installed (Debian's docker-registry package)")
    try:
        client = connect()
    except EngineError as err:
        pytest.skip(f"no container engine: {err}")
    try:
        find_mirror("debian")
    except MirrorNotFound as err:
        pytest.skip(str(err))
    # Not pytest's tmp_path: that keeps the last runs' directories, with their images.
    work = Path(tempfile.mkdtemp(prefix="dib-matrix-regtest-", dir="/var/tmp"))
    pushed: list[str] = []
    try:
        with serve_registry(work) as registry:
            started = time.monotonic()
            pushed = _push(client, registry, _base_image(client, work), work)
            print(f"\npushed {', '.join(pushed)} ({registry.digest}) in "
                  f"{time.monotonic() - started:.0f} s")
            yield Setting(client, registry, work)
    finally:
        try:
            _clean_engine(work, pushed)
        finally:
            shutil.rmtree(work, ignore_errors=True)
            client.close()


def _clean_engine(work: Path, pushed: list[str], wait: float = 180.0) -> None:
    """What the test's runs and hosts left on the engine, waiting for an engine that is
    away (another job may restart it) rather than leaving the objects behind."""
    deadline = time.monotonic() + wait
    while True:
        try:
            client = connect(timeout=30)
            try:
                for run_dir in work.glob("*/out/2*"):  # runs killed with the engine
                    remove_run_objects(client, run_dir.name)
                _remove_test_objects(client, pushed)
            finally:
                client.close()
            return
        except (EngineError, docker.errors.DockerException, OSError) as err:
            if time.monotonic() > deadline:
                raise AssertionError(f"test objects left on the engine: {err}") from err
            time.sleep(5)


def write_hosts(directory: Path, registry: LocalRegistry) -> None:
    directory.mkdir(exist_ok=True)
    images = {
        "regtest-debian": f"{registry.address}/debian:bookworm",
        "regtest-hub": "debian:bookworm",  # Docker Hub, unless the mirror takes it
        "regtest-missing": f"{registry.address}/debian:no-such-tag",
    }
    for name, image in images.items():
        (directory / f"{name}.yaml").write_text(
            f"name: {name}\ndescription: registry test host\nbase:\n  image: {image}\n"
            f"package-manager: apt\n{packages_line()}")


def dib_matrix(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "matrix.cli", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=timeout, check=False)


def results_of(out: Path) -> tuple[dict, dict]:
    data = json.loads(((out / "latest").resolve() / "results.json").read_text())
    return data, {c["id"]: c for c in data["cells"]}


@pytest.fixture(scope="module")
def registry_run(setting: Setting):
    work = setting.work / "run"
    work.mkdir()
    write_hosts(work / "hosts", setting.registry)
    matrix = work / "matrix.yaml"
    matrix.write_text(f"""\
name: registry
hosts: [hosts/regtest-debian.yaml, hosts/regtest-hub.yaml, hosts/regtest-missing.yaml]
targets: [debian-bookworm]
checks: [tox]
registry-mirror: {setting.registry.address}
exclude:
  - host: regtest-hub
    target: "*"
    reason: the mirrored host is proven by its hostgen; regtest-debian builds
max-parallel: 2
timeout: 20m
hostgen-timeout: 15m
""")
    started = time.monotonic()
    done = dib_matrix("run", str(matrix), "--out", str(work / "out"), "--rebuild-hosts")
    print(f"\nregistry matrix: exit {done.returncode} in {time.monotonic() - started:.0f} s")
    data, cells = results_of(work / "out")
    return done, data, cells, (work / "out" / "latest").resolve()


def test_a_registry_host_pulls_builds_and_pins_its_digest(setting, registry_run):
    done, data, cells, run_dir = registry_run
    address = setting.registry.address
    for row in ("hostgen", "tox", "debian-bookworm"):
        assert cells[f"regtest-debian.{row}"]["state"] == "success", (
            cells[f"regtest-debian.{row}"], done.stdout[-3000:], done.stderr[-3000:])
    log = (run_dir / cells["regtest-debian.hostgen"]["log"]).read_text()
    assert f"pulling {address}/debian:bookworm" in log
    assert f"pulled {address}/debian:bookworm: {address}/debian@{setting.registry.digest}" in log
    # The Dockerfile's package step ran (--rebuild-hosts: no build cache) on the pulled image.
    assert f"FROM {address}/debian:bookworm" in log and "---> Running in" in log
    assert "Setting up tox" in log
    pinned = data["base_images"]["regtest-debian"]
    assert pinned == {"reference": f"{address}/debian:bookworm",
                      "digest": f"{address}/debian@{setting.registry.digest}"}
    checks = {c["name"]: c for c in cells["regtest-debian.debian-bookworm"]["checks"]}
    assert checks["os-release"]["ok"] and checks["architecture"]["ok"]


def test_the_matrix_mirror_takes_docker_hub_references(setting, registry_run):
    _, data, cells, run_dir = registry_run
    address = setting.registry.address
    assert cells["regtest-hub.hostgen"]["state"] == "success", cells["regtest-hub.hostgen"]
    assert data["options"]["registry_mirror"] == address
    pinned = data["base_images"]["regtest-hub"]
    assert pinned == {"reference": f"{address}/library/debian:bookworm",
                      "written": "debian:bookworm",
                      "digest": f"{address}/library/debian@{setting.registry.digest}"}
    log = (run_dir / cells["regtest-hub.hostgen"]["log"]).read_text()
    assert f"pulling {address}/library/debian:bookworm" in log


def test_a_missing_tag_is_base_image_unavailable_in_the_registrys_words(registry_run):
    _, _, cells, _ = registry_run
    hostgen = cells["regtest-missing.hostgen"]
    assert hostgen["state"] == "failed"
    assert hostgen["category"]["id"] == "base-image-unavailable"
    assert hostgen["evidence"].startswith("cannot pull 127.0.0.1:")
    assert "manifest unknown" in hostgen["evidence"]  # docker-registry's own error
    assert cells["regtest-missing.debian-bookworm"]["state"] == "skipped"


def test_the_command_line_mirror_overrides_the_matrix(setting, registry_run):
    """The same Docker Hub host in a matrix without the key: --registry-mirror sends it to
    the local registry (its image is cached from the run before: same reference pulled)."""
    work = setting.work / "cli"
    work.mkdir()
    write_hosts(work / "hosts", setting.registry)
    matrix = work / "matrix.yaml"
    matrix.write_text("""\
name: registry-cli
hosts: [hosts/regtest-hub.yaml]
targets: [debian-bookworm]
checks: []
exclude:
  - host: regtest-hub
    target: "*"
    reason: only the hostgen is looked at
""")
    address = setting.registry.address
    done = dib_matrix("run", str(matrix), "--out", str(work / "out"),
                      "--registry-mirror", address)
    data, cells = results_of(work / "out")
    assert cells["regtest-hub.hostgen"]["state"] == "success", done.stdout[-3000:]
    assert data["options"]["registry_mirror"] == address
    assert data["base_images"]["regtest-hub"]["reference"] == \
        f"{address}/library/debian:bookworm"
    plan = dib_matrix("plan", str(matrix), "--registry-mirror", address)
    assert f"debian:bookworm -> {address}/library/debian:bookworm" in plan.stdout


def test_a_silent_registry_ends_at_the_hostgen_deadline(setting, tmp_path):
    """A registry that accepts connections and never answers: base image unavailable at
    the deadline, not a hostgen hanging for the engine's own timeouts."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.5)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    path = tmp_path / "regtest-silent.yaml"
    path.write_text(f"name: regtest-silent\nbase:\n  image: 127.0.0.1:{port}/debian:bookworm\n"
                    "package-manager: apt\npackages: [python3]\n")
    try:
        started = time.monotonic()
        outcome = build_host(setting.client, load_host(path), tmp_path / "silent.log",
                             timeout=8, run_id="regtest-silent")
        seconds = time.monotonic() - started
    finally:
        stop.set()
        thread.join(5)
        for connection in held:
            connection.close()
        listener.close()
    assert outcome.status is HostgenStatus.FAILED
    assert outcome.hint == "base-image-unavailable"
    assert outcome.evidence.startswith(f"cannot pull 127.0.0.1:{port}/debian:bookworm: ")
    assert seconds < 30, seconds
    print(f"\nsilent registry: {outcome.evidence} after {seconds:.1f} s")

