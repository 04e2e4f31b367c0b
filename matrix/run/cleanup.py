"""``dib-matrix clean``: remove what finished or dead runs left behind.

Above both the engine (run objects, cache volumes) and hostgen (dib layers), so it
lives with the run rather than in either.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import docker
import docker.errors

from matrix.containers import engine
from matrix.containers.labels import LABEL_CACHE
from matrix.containers.leases import Registry, kept_line
from matrix.containers.registry import DEFAULT_REGISTRY_DIR, empty_storage
from matrix.hostgen import diblayer


def clean(client: docker.DockerClient, *, run_id: str | None = None, caches: bool = False,
          leases: Registry | None = None, say: Callable[[str], None] = print,
          registry_dir: Path = DEFAULT_REGISTRY_DIR) -> None:
    """``dib-matrix clean``: what finished or dead runs left; a live run's objects stay.

    A run whose lease is live (``matrix.containers.leases``) keeps its containers, services
    and volumes (it removes them itself when it ends); with ``caches``, the
    image-cache volumes and dib layers no live lease names are removed too, and the
    storage of the registry multi-node runs start, unless one of them serves from it.
    """
    registry = leases if leases is not None else Registry()
    live = registry.live_runs()
    runs = [run_id] if run_id else sorted(engine.runs_with_objects(client))
    for run in filter(None, runs):
        if run in live:
            say(f"run {run}: kept: the run is live ({live[run].describe()})")
            continue
        removed = engine.remove_run_objects(client, run)
        say(f"run {run}: removed {removed.containers} container(s), "
            f"{removed.services} swarm service(s), {removed.volumes} volume(s)")
    if caches:
        remove_cache_volumes(client, leases=registry, say=say)
        diblayer.remove_layers(client, leases=registry, say=say)
        said = empty_storage(registry_dir / "storage")
        if said:
            say(said)


def remove_cache_volumes(client: docker.DockerClient, *, leases: Registry | None = None,
                         say: Callable[[str], None] = print) -> list[str]:
    """Remove the per-host image-cache volumes that no live run holds or mounts."""
    registry = leases if leases is not None else Registry()
    removed = []
    with registry.frozen() as in_use:
        for volume in client.volumes.list(filters={"label": LABEL_CACHE}):
            holder = in_use.holder(volume.name)
            if holder is not None:
                say(kept_line(volume.name, holder))
                continue
            try:
                volume.remove(force=True)
            except docker.errors.NotFound:
                continue
            except docker.errors.APIError as exc:  # mounted by a container
                say(f"kept cache volume {volume.name}: {exc.explanation or exc}")
                continue
            say(f"removed cache volume {volume.name}")
            removed.append(volume.name)
    return removed
