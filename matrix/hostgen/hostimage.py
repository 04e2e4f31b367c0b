"""What image a host definition becomes: its content hash, tags, labels and Dockerfile.

Pure functions: nothing here talks to the engine.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from matrix.config.hosts import BaseKind, BootstrapBase, HostDefinition, RootfsBase
from matrix.containers.labels import cache_volume_name
from matrix.hostgen.facts import PROBE_SCRIPT, TEMPLATES_DIR

HOST_TEMPLATE = "host.Dockerfile.j2"
# Bump when hostgen changes what it builds in a way the inputs below do not show.
HOSTGEN_FORMAT = 1
HOST_REPOSITORY = "dib-matrix/host-{name}"
BASE_REPOSITORY = "dib-matrix/base-{name}"
TAG_LENGTH = 16



def exec_form(argv: Iterable[str]) -> str:
    """A JSON array for exec-form RUN/CMD: no shell or Dockerfile parsing of the words."""
    return json.dumps([str(word) for word in argv])


def env_value(value: str) -> str:
    """A double-quoted Dockerfile ENV value; ``$`` is escaped so it is not substituted."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'"{escaped}"'


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # a Dockerfile, not HTML: quoting is done by the filters
        keep_trailing_newline=True,
    )
    env.filters["exec_form"] = exec_form
    env.filters["env_value"] = env_value
    return env


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _digest(parts: dict[str, Any]) -> str:
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def base_digest(host: HostDefinition) -> str:
    """Hash of what the imported base root filesystem is made from."""
    parts: dict[str, Any] = {"format": HOSTGEN_FORMAT, "base": host.base.canonical()}
    if isinstance(host.base, RootfsBase):
        parts["tarball"] = _sha256_file(host.base.path)
    return _digest(parts)


def host_digest(host: HostDefinition) -> str:
    """Content hash of the definition and of every template hostgen uses for it."""
    parts: dict[str, Any] = {
        "format": HOSTGEN_FORMAT,
        "host": host.canonical(),
        "templates": {
            path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in (TEMPLATES_DIR / HOST_TEMPLATE, PROBE_SCRIPT)
        },
    }
    if host.kind.needs_import:
        parts["base"] = base_digest(host)
    return _digest(parts)


@dataclass(frozen=True)
class HostImageNames:
    """Engine names for one host: the final image and, for imported bases, the base."""

    host: str
    digest: str
    image: str  # repository:tag of the host image
    base: str | None  # repository:tag of the imported base, None for image hosts

    @property
    def repository(self) -> str:
        return self.image.rsplit(":", 1)[0]


def image_names(host: HostDefinition) -> HostImageNames:
    digest = host_digest(host)
    image = f"{HOST_REPOSITORY.format(name=host.name)}:{digest[:TAG_LENGTH]}"
    base = None
    if host.kind.needs_import:
        base_tag = base_digest(host)[:TAG_LENGTH]
        base = f"{BASE_REPOSITORY.format(name=host.name)}:{base_tag}"
    return HostImageNames(host.name, digest, image, base)


def apt_sources(base: BootstrapBase, mirror: str) -> str:
    """sources.list for a bootstrapped host; the mirror is used over plain http."""
    if mirror.startswith("https://"):
        mirror = "http://" + mirror[len("https://") :]
    return f"deb {mirror} {base.suite} {' '.join(base.components)}\n"


def render_dockerfile(host: HostDefinition, from_image: str, sources_list: str | None) -> str:
    """The host Dockerfile; ``sources_list`` is shipped in the build context when given."""
    template = _environment().get_template(HOST_TEMPLATE)
    return template.render(host=host, from_image=from_image, sources_list=sources_list)


def from_image(host: HostDefinition, names: HostImageNames) -> str:
    if host.kind is BaseKind.IMAGE:
        return host.base.reference  # type: ignore[union-attr]
    assert names.base is not None
    return names.base


def host_objects(hosts: Iterable[Any]) -> list[str]:
    """What a run will use of each host definition: image tags and its cache volume.

    Known before hostgen (content tags), so a run holds them from its start.
    """

    names: list[str] = []
    for host in hosts:
        images = image_names(host)
        names += [images.image, images.base or "", cache_volume_name(host.name)]
    return [name for name in names if name]
