"""What the cells of one run share.

Three parts, kept apart: ``RunSettings`` (frozen: the matrix configuration and what
the run decided before its first cell), ``HostRecords`` (the one thing that changes
while cells run: what each host's hostgen produced, one record per host behind a
lock), and the services cells call (engine client, reuse keys, dib layers, the cell
launcher). ``RunContext`` bundles them, frozen; ``execute`` makes it once the run is
prepared (package cache up, upstream element trees in place).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import docker

from matrix.config.dibtree import DibTree
from matrix.config.matrixfile import MatrixConfig
from matrix.containers import engine
from matrix.hostgen.diblayer import LayerBaker
from matrix.hostgen.facts import HostFacts
from matrix.run.cluster import Cluster
from matrix.run.plan import PlannedCell
from matrix.run.reuse import KeyMaker, Reusable
from results.archive import RunDir


@dataclass(frozen=True)
class RunSettings:
    """Fixed for the whole run. Timeouts and the network are read from ``config``."""

    config: MatrixConfig
    run_id: str
    run_dir: Path
    dib_tree: DibTree  # made once by the command line
    mirror: str | None = None  # the machine's Debian mirror (None: the cell's dib decides)
    rebuild_hosts: bool = False
    extra_env: Mapping[str, str] = field(default_factory=dict)  # the package cache proxy
    # A cell's own proxy variables by its id (the run's repository view names each cell
    # in its proxy URL); None: ``extra_env`` for every cell.
    cell_env: Callable[[str], Mapping[str, str]] | None = None
    # diskimage-builder version -> its element tree on this machine
    upstream_elements: Mapping[str, Path] = field(default_factory=dict)
    # For upstream's debian-minimal (its own default is a public host): the machine's
    # debian-security archive, like ``mirror``.
    security_mirror: str | None = None

    def proxy_env(self, cell_id: str) -> Mapping[str, str]:
        """The proxy (and repository) variables of the cell ``cell_id``."""
        return self.cell_env(cell_id) if self.cell_env is not None else self.extra_env


@dataclass(frozen=True)
class HostRecord:
    """What one host's hostgen produced."""

    image: str  # the host image's name
    facts: HostFacts | None = None  # None: the probe did not run or failed
    layer: str | None = None  # the dib layer baked on the image, once there is one
    image_id: str | None = None  # the engine's id for ``image``, once asked


class HostRecords:
    """One ``HostRecord`` per host, filled by hostgen cells and read by the cells after
    them (from several threads)."""

    def __init__(self, records: Mapping[str, HostRecord] | None = None) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, HostRecord] = dict(records or {})

    def built(self, host: str, image: str, facts: HostFacts | None) -> None:
        """Hostgen made (or found) ``image``; a layer of an earlier image no longer counts."""
        with self._lock:
            self._records[host] = HostRecord(image, facts)

    def baked(self, host: str, layer: str) -> None:
        with self._lock:
            self._records[host] = replace(self._require(host), layer=layer)

    def get(self, host: str) -> HostRecord | None:
        with self._lock:
            return self._records.get(host)

    def facts(self, host: str) -> HostFacts | None:
        record = self.get(host)
        return record.facts if record else None

    def image_id(self, host: str, client: docker.DockerClient) -> str:
        """The host image's id (asked of the engine once per host image)."""
        with self._lock:
            record = self._require(host)
        if record.image_id is not None:
            return record.image_id
        image_id = client.images.get(record.image).id
        with self._lock:
            current = self._records[host]
            if current.image == record.image:  # not rebuilt meanwhile
                self._records[host] = replace(current, image_id=image_id)
        return image_id

    def images(self) -> dict[str, str]:
        """Host image names by host, sorted (for the results)."""
        with self._lock:
            return {host: record.image for host, record in sorted(self._records.items())}

    def _require(self, host: str) -> HostRecord:
        record = self._records.get(host)
        if record is None:
            raise engine.EngineError(f"no host image for host {host} (its hostgen did not "
                                     "finish)")
        return record


CellLauncher = Callable[[docker.DockerClient, engine.CellSpec], engine.CellResult]


@dataclass(frozen=True)
class RunContext:
    """Settings, host records and services of one run, for its cells."""

    settings: RunSettings
    client: docker.DockerClient
    hosts: HostRecords = field(default_factory=HostRecords)
    stop: threading.Event = field(default_factory=threading.Event)
    keys: KeyMaker | None = None
    reusable: Mapping[str, Reusable] | None = None  # earlier cells by key, with --reuse
    layers: LayerBaker | None = None  # None: bind-mount the dib tree into cells (--dib-mount)
    # How a cell's container runs: engine.run_cell (local), swarm.run_cell (a job), or
    # a multi-node swarm's Cluster.launch (on a node it picks).
    run_cell: CellLauncher = engine.run_cell
    cluster: Cluster | None = None  # a swarm of more than one node

    def image_id(self, host: str) -> str:
        return self.hosts.image_id(host, self.client)

    def log_path(self, cell: PlannedCell) -> Path:
        return RunDir(self.settings.run_dir).log(cell.host.name, cell.row)

    def images_dir(self, host: str) -> Path:
        return RunDir(self.settings.run_dir).images(host)

    def elements_dirs(self, cell: PlannedCell) -> list[Path]:
        """Where the cell's dib finds elements, on this machine: upstream's tree first
        for a target with ``diskimage-builder-elements``, then dib's."""
        version = cell.target.upstream_elements if cell.target else None
        upstream = self.settings.upstream_elements
        first = [upstream[version]] if version in upstream else []
        return [*first, self.settings.dib_tree.elements]
