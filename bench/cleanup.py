"""``bench/run.py --clean``: remove what benchmark runs keep between runs.

That is the bench copies of the hosts (their host, base and dib-layer images and
image-cache volumes, all named after ``bench-<host>``) and the work directory
(tool virtualenvs, logs, build trees). Nothing of the real hosts is touched.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import docker.errors

from bench.matrixbench import PREFIX
from bench.proc import release_mounts
from matrix.containers import engine
from matrix.hostgen import diblayer, hostimage

# The repositories a bench host's images live in, e.g. dib-matrix/host-bench-debian-trixie.
BENCH_REPOSITORIES = tuple(
    pattern.format(name=PREFIX, host=PREFIX)
    for pattern in (hostimage.HOST_REPOSITORY, hostimage.BASE_REPOSITORY, diblayer.REPOSITORY)
)


def is_bench_image(tag: str) -> bool:
    return tag.rsplit(":", 1)[0].startswith(BENCH_REPOSITORIES)


def clean(client: docker.DockerClient, work: Path) -> list[str]:
    """Remove the bench images, volumes and ``work``; returns what went, a line each."""
    gone = []
    # Dib layers sit on host images and host images on bases: remove the newest first.
    images = [i for i in client.images.list() if any(map(is_bench_image, i.tags))]
    for image in sorted(images, key=lambda i: i.attrs.get("Created", ""), reverse=True):
        # By tag, never by id: an image the real host shares (same base) only loses
        # its bench name.
        for tag in filter(is_bench_image, image.tags):
            try:
                client.images.remove(tag, force=True)
                gone.append(f"image {tag}")
            except docker.errors.NotFound:
                pass
    prefix = engine.cache_volume_name(PREFIX)
    for volume in client.volumes.list():
        if volume.name.startswith(prefix):
            volume.remove(force=True)
            gone.append(f"volume {volume.name}")
    if work.exists():
        # Lazily unmounted first: a build killed mid-way may have left mounts in there.
        gone += [f"mount {point}" for point in release_mounts(work)]
        shutil.rmtree(work)
        gone.append(f"directory {work}")
    return gone
