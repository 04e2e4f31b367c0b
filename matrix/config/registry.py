"""Image references as Docker reads them, and the registry mirror that stands in for
Docker Hub (the matrix key ``registry-mirror``, ``--registry-mirror``).

Docker's rules (``distribution/reference``, ``ParseNormalizedNamed``): a reference is
``[domain/]path[:tag][@digest]``; its first ``/``-separated part is a domain only when
it holds a ``.`` or a ``:``, is ``localhost``, or has an upper-case letter. Otherwise
the domain is Docker Hub (``docker.io``; ``index.docker.io`` is its old name) and a
one-part path gets ``library/``. So ``fedora:40``, ``library/fedora:40`` and
``docker.io/library/fedora:40`` are the same Docker Hub image, while ``quay.io/x/y`` and
``127.0.0.1:5000/x`` are not Docker Hub at all.

A mirror stands in for the ``docker.io`` domain, as a ``location`` does for a
``prefix`` in containers-registries.conf(5): with ``registry-mirror:
myregistry.example/hub``, ``fedora:40`` is pulled as
``myregistry.example/hub/library/fedora:40`` and ``someone/tool:1`` as
``myregistry.example/hub/someone/tool:1``; every other reference is left alone. A
mirror that ends in Docker Hub's official namespace (``myregistry.example/library``)
stands for the registry above it: ``fedora:40`` becomes
``myregistry.example/library/fedora:40``, not ``.../library/library/fedora:40``.

Pure functions: no engine, no network.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

DOCKER_HUB = "docker.io"
LEGACY_DOCKER_HUB = ("index.docker.io", "registry-1.docker.io")
OFFICIAL_NAMESPACE = "library"
# Every pattern here is used with fullmatch ("$" would let a final newline through).
# One path component of a repository name (lower case, separators inside).
PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
# A registry host: DNS labels (or an IPv4 address), an optional port.
DOMAIN = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"(?::[0-9]{1,5})?"
)
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[A-Fa-f0-9]{32,}")
NAME_LIMIT = 255  # Docker's limit on a whole repository name


class BadReference(ValueError):
    """Not an image reference, or not a usable registry mirror."""


@dataclass(frozen=True)
class ImageReference:
    """A reference split the way Docker splits it; ``domain`` is never empty."""

    domain: str
    path: str  # repository path inside the registry (Docker Hub's has its library/)
    tag: str | None = None
    digest: str | None = None

    @property
    def repository(self) -> str:
        """The fully qualified repository name: ``docker.io/library/fedora``."""
        return f"{self.domain}/{self.path}"

    @property
    def on_docker_hub(self) -> bool:
        return self.domain == DOCKER_HUB

    def suffix(self) -> str:
        return (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    def __str__(self) -> str:
        return self.repository + self.suffix()


def _split_domain(name: str) -> tuple[str, str]:
    """(domain, path) as Docker's ``splitDockerDomain`` does it."""
    first, slash, rest = name.partition("/")
    if not slash or not (any(c in first for c in ".:") or first == "localhost"
                         or first.lower() != first):
        domain, path = DOCKER_HUB, name
    else:
        domain, path = first, rest
    if domain in LEGACY_DOCKER_HUB:
        domain = DOCKER_HUB
    if domain == DOCKER_HUB and "/" not in path:
        path = f"{OFFICIAL_NAMESPACE}/{path}"
    return domain, path


def parse_reference(text: str) -> ImageReference:
    """``text`` as Docker reads it; BadReference when Docker would refuse it."""
    if not isinstance(text, str) or not text or text != text.strip():
        raise BadReference(f"{text!r} is not an image reference")
    name, at, digest = text.partition("@")
    if at and not DIGEST.fullmatch(digest):
        raise BadReference(f"{text!r}: {digest!r} is not a digest (sha256:...)")
    tag = None
    last_colon, last_slash = name.rfind(":"), name.rfind("/")
    if last_colon > last_slash:
        name, tag = name[:last_colon], name[last_colon + 1:]
        if not TAG.fullmatch(tag):
            raise BadReference(f"{text!r}: {tag!r} is not a tag")
    domain, path = _split_domain(name)
    if not DOMAIN.fullmatch(domain):
        raise BadReference(f"{text!r}: {domain!r} is not a registry host")
    if not path or not all(PATH_COMPONENT.fullmatch(part) for part in path.split("/")):
        raise BadReference(f"{text!r}: the repository name must be lower-case words "
                             "separated by '/', '.', '_' or '-'")
    if len(name) > NAME_LIMIT:
        raise BadReference(f"{text!r}: the repository name is longer than {NAME_LIMIT}")
    return ImageReference(domain, path, tag, digest or None)


def parse_mirror(text: Any) -> str:
    """A registry mirror, ``host[:port][/path]``, in its normal form (no trailing ``/``).

    Its first part must read as a registry host to Docker (a ``.`` or a ``:`` in it, or
    ``localhost``): ``mirror/hub/library/fedora`` would be a Docker Hub name again."""
    if not isinstance(text, str) or not text.strip():
        raise BadReference("must be a registry host with an optional path, e.g. "
                             "myregistry.example/hub or 127.0.0.1:5000")
    mirror = text.strip().rstrip("/")
    if "://" in mirror:
        raise BadReference(f"{text!r}: no scheme: write the registry as an image "
                             "reference starts, e.g. myregistry.example/hub")
    if "@" in mirror or ":" in mirror.partition("/")[2]:
        raise BadReference(f"{text!r}: a mirror is a registry and a path, without a tag "
                             "or digest")
    domain, _, path = mirror.partition("/")
    if not DOMAIN.fullmatch(domain) or not (any(c in domain for c in ".:")
                                        or domain == "localhost"):
        raise BadReference(f"{text!r}: {domain!r} does not read as a registry host to "
                             "Docker (it needs a '.', a ':port' or to be localhost)")
    if domain in (DOCKER_HUB, *LEGACY_DOCKER_HUB):
        raise BadReference(f"{text!r} is Docker Hub itself")
    if path and not all(PATH_COMPONENT.fullmatch(part) for part in path.split("/")):
        raise BadReference(f"{text!r}: the path must be lower-case words separated by "
                             "'/', '.', '_' or '-'")
    return mirror


def rewrite(reference: str, mirror: str | None) -> str:
    """``reference`` pulled through ``mirror`` when it names a Docker Hub image; any
    other reference (or no mirror) is returned as it was written."""
    if not mirror:
        return reference
    parsed = parse_reference(reference)
    if not parsed.on_docker_hub:
        return reference
    base = parse_mirror(mirror)
    # A mirror written as Docker Hub's official namespace (``myregistry.example/library``,
    # as many private mirrors are documented) stands for the domain above it: official
    # images land in it, ``someone/tool`` beside it, never in ``library/library``.
    base = base[: -len("/" + OFFICIAL_NAMESPACE)] if base.endswith("/" + OFFICIAL_NAMESPACE) \
        else base
    return f"{base}/{parsed.path}{parsed.suffix()}"


def same_repository(a: str, b: str) -> bool:
    """Whether two references name one repository (``fedora`` and
    ``docker.io/library/fedora:40`` do)."""
    try:
        return parse_reference(a).repository == parse_reference(b).repository
    except BadReference:
        return False


def repo_digest(reference: str, repo_digests: Sequence[str]) -> str | None:
    """Of an image's ``RepoDigests`` (``name@sha256:...``), the one of the repository
    ``reference`` was pulled from, fully qualified; None when the engine has none."""
    for entry in repo_digests or ():
        name, at, digest = entry.partition("@")
        if at and same_repository(name, reference):
            return f"{parse_reference(name).repository}@{digest}"
    return None


@dataclass(frozen=True)
class Rewritten:
    """One host whose image reference the mirror changed."""

    host: str
    written: str  # as the host file says
    pulled: str  # what the engine pulls


def mirrored_hosts(hosts: Sequence[Any], mirror: str | None) -> tuple[list[Any], list[Rewritten]]:
    """``hosts`` (HostDefinitions) with their Docker Hub ``image:`` bases pulled through
    ``mirror``, and which were changed. Hosts of other kinds come back unchanged."""
    from matrix.config.hosts import ImageBase

    if not mirror:
        return list(hosts), []
    out, changed = [], []
    for host in hosts:
        base = host.base
        if isinstance(base, ImageBase):
            pulled = rewrite(base.reference, mirror)
            if pulled != base.reference:
                changed.append(Rewritten(host.name, base.reference, pulled))
                host = replace(host, base=ImageBase(pulled, written=base.reference))
        out.append(host)
    return out, changed


def with_registry_mirror(config: Any, mirror: str | None) -> tuple[Any, list[Rewritten]]:
    """A MatrixConfig whose hosts (and included cells' hosts) pull their Docker Hub
    images through ``mirror``; and what was rewritten (for results.json). The host
    image's content hash includes the reference pulled, so a mirrored host gets its own
    image."""
    if not mirror:
        return config, []
    hosts, changed = mirrored_hosts(config.hosts, mirror)
    by_name = {h.name: h for h in hosts}
    includes = []
    for include in config.include:
        host = by_name.get(include.host.name)
        if host is None:
            (host,), more = mirrored_hosts([include.host], mirror)
            changed += [c for c in more if c.host not in {x.host for x in changed}]
            by_name[host.name] = host
        includes.append(replace(include, host=host))
    return replace(config, hosts=tuple(hosts), include=tuple(includes)), changed


def describe(changed: Sequence[Rewritten]) -> dict[str, Mapping[str, str]]:
    """What results.json records per rewritten host."""
    return {c.host: {"written": c.written, "pulled": c.pulled} for c in changed}
