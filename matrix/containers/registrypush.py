"""Pushing a local image to a registry and naming it by digest.

``push_pinned`` leaves the local engine holding the pinned reference itself, so a
swarm task placed on the manager starts without a pull (the swarm executor skips the
pull when a digest reference exists locally). The engine drops a repository's digest
references when the last tag of that repository on the image is removed, so the
pinned reference is pulled back after the push's tag is gone: only the manifest
travels, every layer is already here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

import docker
import docker.errors
import requests.exceptions

from matrix.config.registry import BadReference, parse_reference
from matrix.config.registryname import RegistryError, RegistryName, repository_in

SHA256_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def push_pinned(client: docker.DockerClient, local_ref: str, registry: RegistryName,
                repository: str, log: BinaryIO | None = None) -> str:
    """Push the local image ``local_ref`` to ``registry`` as ``repository`` (with
    ``local_ref``'s tag) and return it pinned: ``<host>/<prefix/>repository@sha256:...``.

    The engine keeps that pinned reference locally (a task on this node needs no pull);
    the tag made for the push is removed again, the image never. Progress goes to ``log``,
    one line per layer status change."""
    target = repository_in(registry, repository)
    tag = _tag_of(local_ref)
    image = _local_image(client, local_ref, target)
    progress = _Progress(log)
    with _push_tag(client, image.id, target, tag, progress):
        digest = _push(client, target, tag, registry, progress)
        digest = digest or _pushed_digest(client, image.id, target, registry)
    pinned = f"{target}@{digest}"
    _keep_pinned(client, pinned, image.id, progress)
    return pinned


def _tag_of(local_ref: str) -> str:
    """The tag of ``local_ref`` (``latest`` when it has none, as Docker reads it)."""
    try:
        return parse_reference(local_ref).tag or "latest"
    except BadReference:
        raise RegistryError(f"{local_ref!r} is not an image name with a tag") from None


def _repository_of(reference: str) -> str:
    """The repository an engine's name for the image is in (as written, if odd)."""
    try:
        return parse_reference(reference).repository
    except BadReference:
        return reference.partition("@")[0]


def _local_image(client: docker.DockerClient, local_ref: str, target: str) -> Any:
    """The image, which must keep a name outside ``target``: removing the push's tag
    would otherwise delete it."""
    try:
        image = client.images.get(local_ref)
    except docker.errors.ImageNotFound:
        raise RegistryError(f"no local image {local_ref}: build it before pushing") from None
    except docker.errors.APIError as err:
        raise RegistryError(f"cannot read image {local_ref}: {_explain(err)}") from None
    names = [*image.tags, *(image.attrs.get("RepoDigests") or [])]
    if not any(_repository_of(name) != target for name in names):
        raise RegistryError(f"{local_ref} has no name besides {target}: give the image a "
                            "name of its own before pushing it")
    return image


@contextmanager
def _push_tag(client: docker.DockerClient, image_id: str, target: str, tag: str,
              progress: _Progress) -> Iterator[None]:
    """``target:tag`` on the image while the block runs."""
    try:
        client.api.tag(image_id, target, tag)
    except docker.errors.APIError as err:
        raise RegistryError(f"cannot tag {image_id[:19]} as {target}:{tag}: "
                            f"{_explain(err)}") from None
    try:
        yield
    finally:
        try:
            client.api.remove_image(f"{target}:{tag}", noprune=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as err:  # a tag left behind harms nothing
            progress.say(f"left the tag {target}:{tag}: {_explain(err)}")


def _push(client: docker.DockerClient, target: str, tag: str, registry: RegistryName,
          progress: _Progress) -> str | None:
    """Push ``target:tag``; the manifest's digest when the engine says it."""
    try:
        chunks = client.api.push(target, tag=tag, stream=True, decode=True)
        return _follow(chunks, progress, f"cannot push {target}:{tag} to {registry.host}")
    except docker.errors.APIError as err:
        raise RegistryError(f"cannot push {target}:{tag} to {registry.host}: "
                            f"{_explain(err)}") from None
    except requests.exceptions.RequestException as err:
        raise RegistryError(f"cannot push {target}:{tag} to {registry.host}: the engine's "
                            f"stream broke ({err})") from None


def _follow(chunks: Iterable[Any], progress: _Progress, failure: str) -> str | None:
    """Read an engine stream to its end: RegistryError on an error line; the digest of
    its final ``aux`` line, if any."""
    digest = None
    for chunk in chunks:
        if not isinstance(chunk, dict):
            continue
        if "error" in chunk or "errorDetail" in chunk:
            message = _error_text(chunk)
            progress.say(f"ERROR: {message}")
            raise RegistryError(f"{failure}: {message}")
        aux = chunk.get("aux")
        if isinstance(aux, dict) and SHA256_DIGEST.fullmatch(str(aux.get("Digest", ""))):
            digest = aux["Digest"]
        progress.note(chunk)
    return digest


def _error_text(chunk: dict[str, Any]) -> str:
    detail = chunk.get("errorDetail")
    message = detail.get("message") if isinstance(detail, dict) else None
    return str(message or chunk.get("error") or detail or "unknown error").strip()


def _pushed_digest(client: docker.DockerClient, image_id: str, target: str,
                   registry: RegistryName) -> str:
    """The digest the engine recorded for ``target`` (RepoDigests), when the push's
    stream did not say it."""
    try:
        digests = client.images.get(image_id).attrs.get("RepoDigests") or []
    except docker.errors.APIError as err:
        raise RegistryError(f"pushed to {registry.host}, but cannot read the digest: "
                            f"{_explain(err)}") from None
    for entry in digests:
        name, _, digest = entry.partition("@")
        if name == target and SHA256_DIGEST.fullmatch(digest):
            return digest
    raise RegistryError(f"pushed {target} to {registry.host}, but the engine reported no "
                        "digest for it")


def _keep_pinned(client: docker.DockerClient, pinned: str, image_id: str,
                 progress: _Progress) -> None:
    """Make the engine hold ``pinned`` (the push's digest reference went with its tag):
    pulling it fetches the manifest alone, and proves the registry serves it."""
    name, _, digest = pinned.partition("@")
    failure = f"pushed {pinned}, but the engine cannot pull it back"
    try:
        _follow(client.api.pull(name, tag=digest, stream=True, decode=True), progress,
                failure)
        held = client.images.get(pinned)
    except docker.errors.APIError as err:
        raise RegistryError(f"{failure}: {_explain(err)}") from None
    except requests.exceptions.RequestException as err:
        raise RegistryError(f"{failure}: the engine's stream broke ({err})") from None
    if held.id != image_id:
        raise RegistryError(f"{pinned} is image {held.id[:19]} here, not the pushed "
                            f"{image_id[:19]}")


def _explain(err: docker.errors.APIError) -> str:
    return str(err.explanation or err).strip()


class _Progress:
    """The engine's progress lines, one per layer status change (no byte counts)."""

    def __init__(self, log: BinaryIO | None) -> None:
        self.log = log
        self.status: dict[str, str] = {}

    def note(self, chunk: dict[str, Any]) -> None:
        status = str(chunk.get("status") or "").strip()
        layer = str(chunk.get("id") or "").strip()
        if not status or (layer and self.status.get(layer) == status):
            return
        if layer:
            self.status[layer] = status
        self.say(f"{layer}: {status}" if layer else status)

    def say(self, line: str) -> None:
        if self.log is not None:
            self.log.write(f"{line}\n".encode("utf-8", "replace"))
            self.log.flush()
