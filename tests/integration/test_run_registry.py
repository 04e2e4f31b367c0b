"""matrix.containers.registry for real: Debian's ``docker-registry`` started by
``RunRegistry`` over TLS, the local engine pushing to it through ``push_pinned``.

Two addresses: 127.0.0.1, and one on an interface added for the test (dummy, else a
veth pair; a /24 in 10.232.0.0/16; removed afterwards). The engine treats every
127.0.0.0/8 registry as insecure and skips verification there, so only the second
proves that the CA placed in
``/etc/docker/certs.d/<addr>:<port>/ca.crt`` is what makes the engine trust the
registry; one test there uses the real /etc/docker/certs.d, another a certs.d the
engine never reads (and is refused).

Needs root, the engine, ``openssl`` and the ``docker-registry`` binary (Debian's
package of that name; skipped without it). Every image the tests make carries a test
label and is removed however a test ends.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import os
import shutil
import socket
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import docker.errors
import pytest

from matrix.config.registryname import RegistryError, parse_registry
from matrix.containers.engine import EngineError, connect
from matrix.containers.labels import LABEL_ROLE
from matrix.containers.registry import CERTS_D, PORT_ATTEMPTS, RunRegistry, issue_certificate
from matrix.containers.registrypush import push_pinned

pytestmark = pytest.mark.integration

ROLE = "registry-test"
REPOSITORY = "dib-matrix-test/registry-tiny"
UNREACHABLE_SECONDS = 30.0  # a refused connection is reported at once; this is a bound


@pytest.fixture(scope="module")
def tools() -> None:
    for program in ("docker-registry", "openssl"):
        if shutil.which(program, path=f"{os.environ.get('PATH', '')}:/usr/bin") is None:
            pytest.skip(f"{program} is not installed (bindep.txt, profile test)")


@pytest.fixture(scope="module")
def client(tools) -> Iterator[docker.DockerClient]:
    try:
        engine = connect()
    except EngineError as err:
        pytest.skip(f"no container engine: {err}")
    try:
        yield engine
    finally:
        for image in engine.images.list(filters={"label": f"{LABEL_ROLE}={ROLE}"}):
            with contextlib.suppress(docker.errors.APIError):
                engine.images.remove(image.id, force=True)
        engine.close()


@pytest.fixture(scope="module")
def test_address() -> Iterator[str]:
    """A non-loopback address of this machine, on an interface of the test's own: a
    dummy one, or a veth pair in this namespace where the kernel has no dummy driver."""
    subnet = os.getpid() % 250 + 1  # concurrent test runs take different /24s
    link, address = f"dmreg{os.getpid() % 100000}", f"10.232.{subnet}.1"
    try:
        _add_link(link)
    except (subprocess.CalledProcessError, OSError) as err:
        pytest.skip(f"cannot add a dummy or veth interface: {getattr(err, 'stderr', err)}")
    try:
        _ip("addr", "add", f"{address}/24", "dev", link)
        for name in (link, f"{link}p"):
            with contextlib.suppress(subprocess.CalledProcessError):  # no peer: dummy
                _ip("link", "set", name, "up")
        yield address
    finally:
        _ip("link", "del", link)  # takes a veth's peer with it


def _add_link(link: str) -> None:
    try:
        _ip("link", "add", link, "type", "dummy")
    except subprocess.CalledProcessError:
        _ip("link", "add", link, "type", "veth", "peer", "name", f"{link}p")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def tiny_image(client: docker.DockerClient) -> tuple[str, str]:
    """A one-file image of its own (reference, id), from a tarball: no registry needed."""
    payload = f"{uuid.uuid4()}\n".encode()
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        info = tarfile.TarInfo("hello")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    tag = uuid.uuid4().hex[:16]
    client.api.import_image_from_data(data.getvalue(), repository=REPOSITORY, tag=tag,
                                      changes=[f"LABEL {LABEL_ROLE}={ROLE}"])
    reference = f"{REPOSITORY}:{tag}"
    return reference, client.images.get(reference).id


def start(address: str, root: Path, certs_d: Path | None = None, **kwargs) -> RunRegistry:
    return RunRegistry.start(address, root / "storage", root / "work", root / "ca",
                             certs_d=certs_d or root / "certs.d", **kwargs)


def assert_round_trip(client: docker.DockerClient, pinned: str, image_id: str) -> None:
    """The image gone from the engine, the pinned reference pulled back: the same image."""
    client.images.remove(image_id, force=True)
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get(image_id)
    name, _, digest = pinned.partition("@")
    client.api.pull(name, tag=digest)
    assert client.images.get(pinned).id == image_id


def assert_stopped(registry: RunRegistry, host_dir: Path, work: Path) -> None:
    assert registry.process.poll() is not None
    assert not host_dir.exists()
    assert not (work / "registry.key").exists()
    registry.stop()  # idempotent


def test_push_pinned_on_loopback(client, tmp_path):
    reference, image_id = tiny_image(client)
    log = io.BytesIO()
    with start("127.0.0.1", tmp_path) as registry:
        host_dir = tmp_path / "certs.d" / registry.host
        assert (host_dir / "ca.crt").read_bytes() == (tmp_path / "ca" / "ca.crt").read_bytes()
        pinned = push_pinned(client, reference, registry.name, "dib-matrix-test/tiny", log)
        assert pinned.startswith(f"{registry.host}/dib-matrix-test/tiny@sha256:")
        # What the swarm executor asks before it pulls: the pinned reference is here.
        assert client.images.get(pinned).id == image_id
        container = client.containers.create(pinned, command=["/hello"])
        container.remove()
        with pytest.raises(docker.errors.ImageNotFound):  # the push's tag is gone
            client.images.get(f"{registry.host}/dib-matrix-test/tiny:{reference.split(':')[1]}")
        assert client.images.get(reference).id == image_id  # the image and its name stay
        assert push_pinned(client, reference, registry.name, "dib-matrix-test/tiny") == pinned
        assert_round_trip(client, pinned, image_id)
    assert_stopped(registry, host_dir, tmp_path / "work")
    lines = log.getvalue().decode().splitlines()
    assert any(line.endswith(": Pushed") for line in lines)
    assert len(lines) == len(set(lines)), "one line per layer status change"


def test_non_loopback_registry_trusted_through_etc_docker_certs_d(client, tmp_path,
                                                                  test_address):
    reference, image_id = tiny_image(client)
    made_certs_d = not CERTS_D.exists()
    with start(test_address, tmp_path, certs_d=CERTS_D) as registry:
        host_dir = CERTS_D / registry.host
        assert registry.host.startswith(f"{test_address}:")
        assert (host_dir / "ca.crt").read_bytes() == registry.ca_certificate.read_bytes()
        pinned = push_pinned(client, reference, registry.name, "dib-matrix-test/tiny")
        assert client.images.get(pinned).id == image_id
        assert_round_trip(client, pinned, image_id)
    assert_stopped(registry, host_dir, tmp_path / "work")
    if made_certs_d:
        with contextlib.suppress(OSError):  # only while nothing else put an entry there
            CERTS_D.rmdir()


def test_registry_the_engine_does_not_trust_is_refused(client, tmp_path, test_address):
    """A certs.d the engine never reads: the push fails on the certificate, so the real
    one is what made the test above pass; the push's tag is removed all the same."""
    reference, _ = tiny_image(client)
    with start(test_address, tmp_path) as registry:
        with pytest.raises(RegistryError) as refused:
            push_pinned(client, reference, registry.name, "dib-matrix-test/tiny")
        message = str(refused.value)
        assert registry.host in message
        assert "x509" in message or "certificate" in message
        with pytest.raises(docker.errors.ImageNotFound):
            client.images.get(f"{registry.host}/dib-matrix-test/tiny:{reference.split(':')[1]}")


def _closed_port(address: str) -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("where", ["loopback", "non-loopback"])
def test_unreachable_registry_fails_quickly_naming_it(client, test_address, where):
    address = "127.0.0.1" if where == "loopback" else test_address
    reference, _ = tiny_image(client)
    registry = parse_registry(f"{address}:{_closed_port(address)}/ci")
    started = time.monotonic()
    with pytest.raises(RegistryError) as failed:
        push_pinned(client, reference, registry, "dib-matrix-test/tiny")
    assert time.monotonic() - started < UNREACHABLE_SECONDS
    assert registry.host in str(failed.value)
    assert "connection refused" in str(failed.value)


def test_ca_made_once_leaf_per_start_storage_shared(client, tmp_path):
    reference, image_id = tiny_image(client)
    with start("127.0.0.1", tmp_path) as first:
        ca = (tmp_path / "ca" / "ca.crt").read_bytes()
        first_leaf = (tmp_path / "work" / "registry.crt").read_bytes()
        pinned = push_pinned(client, reference, first.name, "dib-matrix-test/tiny")
    assert (tmp_path / "ca" / "ca.key").stat().st_mode & 0o777 == 0o600
    with start("127.0.0.1", tmp_path) as second:
        assert (tmp_path / "ca" / "ca.crt").read_bytes() == ca
        leaf = tmp_path / "work" / "registry.crt"
        assert leaf.read_bytes() != first_leaf
        names = subprocess.run(["openssl", "x509", "-in", str(leaf), "-noout", "-ext",
                                "subjectAltName"], check=True, capture_output=True,
                               text=True).stdout
        assert "IP Address:127.0.0.1" in names
        # The first start's push is in the shared storage: the second serves it.
        again = pinned.replace(first.host, second.host)
        assert_round_trip(client, again, image_id)


def fake_registry(tmp_path: Path, says: str) -> Path:
    """A docker-registry that prints ``says`` and fails, counting its starts."""
    script = tmp_path / "fake-registry"
    script.write_text(f"#!/bin/sh\necho started >> {tmp_path / 'starts'}\n"
                      f"echo '{says}'\nexit 1\n")
    script.chmod(0o755)
    return script


def test_start_failure_gives_the_log_tail(tools, tmp_path):
    program = fake_registry(tmp_path, "configuration error: unknown storage driver")
    with pytest.raises(RegistryError) as failed:
        start("127.0.0.1", tmp_path, executable=str(program))
    assert "unknown storage driver" in str(failed.value)
    assert str(tmp_path / "work" / "registry.log") in str(failed.value)
    assert (tmp_path / "starts").read_text().count("started") == 1
    assert not (tmp_path / "work" / "registry.key").exists()


def test_port_taken_meanwhile_is_retried(tools, tmp_path):
    program = fake_registry(tmp_path, "listen tcp 127.0.0.1:1: bind: address already in use")
    with pytest.raises(RegistryError, match="address already in use"):
        start("127.0.0.1", tmp_path, executable=str(program))
    assert (tmp_path / "starts").read_text().count("started") == PORT_ATTEMPTS


@pytest.mark.parametrize("where", ["storage", "work", "ca", "certs.d"])
def test_unusable_directories_are_named(tools, tmp_path, where):
    """A path under a regular file (what root cannot write either): RegistryError naming
    it, and nothing left running or trusted."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    paths = {name: tmp_path / name for name in ("storage", "work", "ca", "certs.d")}
    paths[where] = blocker / where
    with pytest.raises(RegistryError, match=str(blocker / where)):
        RunRegistry.start("127.0.0.1", paths["storage"], paths["work"], paths["ca"],
                          certs_d=paths["certs.d"])
    assert not (paths["work"] / "registry.key").exists()
    if where != "certs.d":
        assert not paths["certs.d"].exists()


def test_a_broken_ca_is_replaced(tools, tmp_path):
    """A key that is not the certificate's (a run killed between the CA's two renames),
    or an unreadable certificate: the next start makes a new CA and serves."""
    with start("127.0.0.1", tmp_path):
        pass
    ca_crt, ca_key = tmp_path / "ca" / "ca.crt", tmp_path / "ca" / "ca.key"
    original = ca_crt.read_bytes()
    subprocess.run(["openssl", "genpkey", "-algorithm", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-out", str(ca_key)], check=True,
                   capture_output=True)
    with start("127.0.0.1", tmp_path):
        assert ca_crt.read_bytes() != original
    renewed = ca_crt.read_bytes()
    ca_crt.write_text("not a certificate\n")
    with start("127.0.0.1", tmp_path):
        assert ca_crt.read_bytes() not in (renewed, b"not a certificate\n")
    assert ca_key.stat().st_mode & 0o777 == 0o600


def test_starts_at_once_make_one_ca(tools, tmp_path):
    """Runs starting together on a machine without a CA yet: one CA signs every leaf."""
    works = [tmp_path / f"work{i}" for i in range(4)]
    for work in works:
        work.mkdir()
    address = ipaddress.ip_address("127.0.0.1")
    with ThreadPoolExecutor(len(works)) as pool:
        leaves = list(pool.map(lambda work: issue_certificate(address, tmp_path / "ca", work),
                               works))
    for leaf in leaves:
        subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "ca" / "ca.crt"),
                        str(leaf.cert)], check=True, capture_output=True)
    assert [p.name for p in (tmp_path / "ca").iterdir() if p.name.startswith(".")] == []
