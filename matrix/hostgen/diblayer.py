"""The dib tree as a thin image layer on top of a cached host image.

Cells run from ``dib-matrix/dib-<host>:<content hash>``: the host image plus
the dib tree copied to ``/opt/dib-matrix``. The tag is the hash of the host
image id and the tree's digest (every copied file's path, executable bit and
content), so an unchanged tree is baked once and reused across runs, and a patch
bakes a new thin layer while the host image (hundreds of MB, minutes of
debootstrap) stays as it is.

The tree is copied in a few ``COPY`` steps, the least often changed first, so
the engine's build cache keeps the earlier layers: a patch to one element
re-copies only the ``elements`` layer.

Why a layer rather than a bind mount of the local tree (still available with
``dib-matrix run --dib-mount``): a run's cells all see the tree as it was when
the run started, even if the reviewer edits it meanwhile; a cell's reproducer
needs nothing but the image; and an engine that cannot see this machine's files
(a remote ``DOCKER_HOST``) can still run the cells.

Runs sharing an engine (see ``matrix.containers.leases``): ``LayerBaker`` names the host
image (tag and id) and the layer in its run's lease *before* it looks the layer
up or bakes it, and ``prune`` (after a bake) and ``remove_layers`` (``clean
--caches``) skip every layer a live run's lease names, saying ``kept <tag>: in
use by run <id>``. A cell calls ``LayerBaker.ensure`` just before it starts its
container: the layer is still there (the usual case, one engine call), or it was
removed by something that honours no lease (``docker rmi``, an older
dib-matrix) and is baked again from the run's dib tree (``matrix.config.dibtree``: its
files as they were when the run started).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import BinaryIO

import docker
import docker.errors

from matrix.config.dibtree import DibTree
from matrix.containers.labels import LABEL_HOST, LABEL_ROLE
from matrix.containers.leases import LeaseError, Registry, RunLease, kept_line
from matrix.hostgen.imagebuild import BuildFailed, build_image

LOG = logging.getLogger("dib-matrix")
ROLE = "dib-layer"
REPOSITORY = "dib-matrix/dib-{host}"
TAG_LENGTH = 16
# Other dib layers of a host kept besides the current one (a reviewer going back
# and forth between two trees does not re-bake); older ones are removed.
KEEP_PREVIOUS = 2
TARGET = "/opt/dib-matrix"


class DibLayerError(Exception):
    """The layer could not be baked (an engine failure, not a build's)."""


def dockerfile(tree: DibTree, host_image: str) -> str:
    """The host image plus the tree's parts, one COPY each, in PARTS order (the rarely
    changed first, so the engine's cache keeps the earlier layers)."""
    copies = "".join(f"COPY {part} {TARGET}/{part}\n" for part in tree.parts)
    return f"FROM {host_image}\n{copies}"


def layer_reference(host: str, host_image_id: str, tree: DibTree) -> str:
    digest = hashlib.sha256(f"{host_image_id}\0{tree.digest}".encode()).hexdigest()
    return f"{REPOSITORY.format(host=host)}:{digest[:TAG_LENGTH]}"


@dataclass(frozen=True)
class BakedLayer:
    reference: str
    cached: bool
    seconds: float

    def one_line(self) -> str:
        how = "cached" if self.cached else f"baked in {self.seconds:.1f} s"
        return f"dib layer {self.reference} ({how})"


def _logger(log: BinaryIO | None) -> Callable[[str], None]:
    """Say a line in ``log`` (a cell's or hostgen's) and in the run log."""
    def say(line: str) -> None:
        LOG.info("%s", line)
        if log is not None:
            with suppress(OSError, ValueError):
                log.write(f"dib-matrix: {line}\n".encode())
                log.flush()
    return say


def bake(
    client: docker.DockerClient,
    host: str,
    host_image: str,
    tree: DibTree,
    log: BinaryIO,
    *,
    lease: RunLease | None = None,
    leases: Registry | None = None,
) -> BakedLayer:
    """The dib layer of ``tree`` on ``host_image``: found by its tag, else built.

    ``lease`` (the run's) gets the host image's tag and id and the layer's tag
    before the layer is looked up, so no other run's prune can remove them from
    then on. Older layers of the host are pruned after a bake; ``leases`` is the
    registry that prune honours (default: ``lease``'s, else the default one).
    """
    start = time.monotonic()
    try:
        host_image_obj = client.images.get(host_image)
        reference = layer_reference(host, host_image_obj.id, tree)
        if lease is not None:
            try:
                lease.hold(host_image, host_image_obj.id, reference)
            except (LeaseError, OSError) as exc:
                raise DibLayerError(f"cannot lease the dib layer {reference}: {exc}") from exc
        with suppress(docker.errors.ImageNotFound):
            client.images.get(reference)
            return BakedLayer(reference, True, time.monotonic() - start)
        files = tree.contents()
        files["Dockerfile"] = dockerfile(tree, host_image).encode()
        labels = dict(host_image_obj.labels or {})  # the host's facts stay readable
        labels.update({LABEL_HOST: host, LABEL_ROLE: ROLE})
        build_image(client, files, log, labels=labels, tag=reference, modes=tree.modes())
    except (docker.errors.DockerException, BuildFailed) as exc:
        raise DibLayerError(f"baking the dib layer on {host_image} failed: {exc}") from exc
    registry = leases or (lease.registry if lease is not None else None)
    prune(client, host, keep=reference, leases=registry, say=_logger(log))
    return BakedLayer(reference, False, time.monotonic() - start)


def prune(client: docker.DockerClient, host: str, keep: str, *,
          leases: Registry | None = None,
          say: Callable[[str], None] | None = None) -> list[str]:
    """Remove this host's older dib layers beyond the newest KEEP_PREVIOUS.

    Layers a live run's lease names stay (``say`` tells which), and so do layers a
    running container uses (the engine refuses).
    """
    say = say or _logger(None)
    registry = leases if leases is not None else Registry()
    filters = {"label": [f"{LABEL_ROLE}={ROLE}", f"{LABEL_HOST}={host}"]}
    removed = []
    with registry.frozen() as in_use:
        try:
            layers = client.images.list(filters=filters)
        except docker.errors.DockerException:
            return []
        others = [image for image in layers if keep not in image.tags]
        others.sort(key=lambda image: image.attrs.get("Created", ""), reverse=True)
        for image in others[KEEP_PREVIOUS:]:
            holder = in_use.image_holder(image)
            if holder is not None:
                say(kept_line(_name(image), holder))
                continue
            with suppress(docker.errors.DockerException):  # in use by a running cell: later
                client.images.remove(image.id, force=False, noprune=False)
                removed.append(image.id)
    return removed


def _name(image) -> str:
    return ", ".join(image.tags or ()) or image.short_id


def all_layers(client: docker.DockerClient) -> list:
    """Every host's dib layers (``remove_layers`` removes the ones no live run holds)."""
    return client.images.list(filters={"label": f"{LABEL_ROLE}={ROLE}"})


def remove_layers(client: docker.DockerClient, *, leases: Registry | None = None,
                  say: Callable[[str], None] = print) -> list[str]:
    """``dib-matrix clean --caches``: remove every dib layer no live run's lease names."""
    registry = leases if leases is not None else Registry()
    removed = []
    with registry.frozen() as in_use:
        for image in all_layers(client):
            holder = in_use.image_holder(image)
            if holder is not None:
                say(kept_line(_name(image), holder))
                continue
            try:
                client.images.remove(image.id, force=True)
            except docker.errors.NotFound:
                continue
            except docker.errors.APIError as exc:
                say(f"kept dib layer {_name(image)}: {exc.explanation or exc}")
                continue
            say(f"removed dib layer {_name(image)}")
            removed.append(image.id)
    return removed


class LayerBaker:
    """Bakes each host's layer once per run from the run's dib tree (read when the run
    started: what every cell sees, whatever happens to the directory meanwhile).

    With the run's ``lease``, everything a layer stands on is leased before use.
    ``ensure`` is what a cell calls just before it starts: the layer's reference,
    baked again if it has gone.
    """

    def __init__(self, tree: DibTree, lease: RunLease | None = None):
        self.tree = tree
        self.lease = lease
        self._lock = threading.Lock()
        self._baked: dict[str, tuple[str, str]] = {}  # host -> (host image, layer reference)
        self._host_locks: dict[str, threading.Lock] = {}

    def _host_lock(self, host: str) -> threading.Lock:
        with self._lock:
            return self._host_locks.setdefault(host, threading.Lock())

    def bake(self, client: docker.DockerClient, host: str, host_image: str,
             log: BinaryIO) -> BakedLayer:
        with self._host_lock(host):
            layer = bake(client, host, host_image, self.tree, log, lease=self.lease)
            with self._lock:
                self._baked[host] = (host_image, layer.reference)
            return layer

    def ensure(self, client: docker.DockerClient, host: str, log: BinaryIO) -> str:
        """The reference of ``host``'s layer, present in the engine when this returns.

        Raises ``DibLayerError`` when the host was never baked in this run or the
        layer cannot be baked again (its host image is gone too).
        """
        with self._host_lock(host):
            with self._lock:
                baked = self._baked.get(host)
            if baked is None:
                raise DibLayerError(f"no dib layer for host {host} (its hostgen did not finish)")
            host_image, reference = baked
            try:
                client.images.get(reference)
                return reference
            except docker.errors.ImageNotFound:
                pass
            except docker.errors.DockerException as exc:
                raise DibLayerError(f"cannot look up the dib layer {reference}: {exc}") from exc
            _logger(log)(f"dib layer {reference} is gone (removed outside this run): "
                         "baking it again")
            layer = bake(client, host, host_image, self.tree, log, lease=self.lease)
            with self._lock:
                self._baked[host] = (host_image, layer.reference)
            _logger(log)(layer.one_line())
            return layer.reference
