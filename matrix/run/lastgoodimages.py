"""The host images last-good cells were built on, kept in the engine for investigations.

A regressed cell's ``host-image`` variant (:mod:`matrix.run.investigate`) runs on the
host image of its last success, which hostgen untags and removes once the host's
definition changes. So at the end of every run each last-good's host image (by the id
last-good.json records) is tagged ``dib-matrix/last-good-<host>:<id, 12 hex digits>``:
a tagged image is never removed as replaced, and hostgen's pruning of a host's older
tags leaves this repository alone. The tags of a host no last-good record names any
more are removed (the image goes with its last tag, unless a container uses it).

The host label (``org.dib-matrix.host``) is on the image already; a role label cannot
be added to an existing image without making another one (another id, which is not the
id the last-good recorded), so the repository name is the mark.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import docker
import requests

from matrix.containers.labels import LAST_GOOD_REPOSITORY_PREFIX as REPOSITORY_PREFIX
from results import lastgood
from results.archive import OutDir
from results.names import is_name

LOG = logging.getLogger("dib-matrix")
SHORT_ID = 12


def repository(host: str) -> str:
    return f"{REPOSITORY_PREFIX}{host}"


def short_id(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:SHORT_ID]


def is_last_good_tag(tag: str) -> bool:
    return tag.startswith(REPOSITORY_PREFIX)


def keep_host_images(client, out: OutDir, hosts: Iterable[str]) -> None:
    """Tag the host image of every last-good of ``hosts``; untag what none names. An
    engine that fails is one warning: the run is over, its verdicts stand."""
    goods = lastgood.read_all(out, warn=lambda message: LOG.warning("%s", message))
    for host in sorted(set(hosts)):
        if not is_name(host):
            continue
        named = {good.inputs.host_image for good in goods.values()
                 if good.host == host and good.inputs.host_image}
        try:
            _tag(client, host, named)
            _untag_others(client, host, {short_id(i) for i in named})
        except (docker.errors.DockerException, requests.RequestException) as err:
            LOG.warning("last-good host images of %s not kept: %s", host, err)


def _tag(client, host: str, image_ids: Iterable[str]) -> None:
    for image_id in sorted(image_ids):
        try:
            image = client.images.get(image_id)
        except docker.errors.ImageNotFound:
            continue  # removed before it was tagged: its variant says so
        image.tag(repository(host), tag=short_id(image_id))


def _untag_others(client, host: str, wanted: set[str]) -> None:
    name = repository(host)
    for image in client.images.list(name=name):
        for tag in image.tags:
            if tag.startswith(name + ":") and tag.rsplit(":", 1)[1] not in wanted:
                try:
                    client.images.remove(tag)
                except docker.errors.APIError as err:  # used by a container: next run
                    LOG.info("kept %s: %s", tag, err)
                else:
                    LOG.info("removed %s (no last-good names it)", tag)
