"""Registry names as ``--registry`` and the matrix key ``registry`` take them:
``HOST[:PORT][/PREFIX]`` (an IPv6 host in brackets), checked the way Docker reads the
start of an image reference, so a push can never go somewhere else (Docker Hub) than
the user wrote. Pure functions: no engine, no network.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from matrix.config.registry import NAME_LIMIT, PATH_COMPONENT

HOST_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
PORT = re.compile(r"[1-9][0-9]{0,4}")
HOST_NAME_LIMIT = 253
EXAMPLE = "registry.example:5000/ci"


class RegistryError(ValueError):
    """A registry cannot be named or used: the message names the cause and the fix."""


@dataclass(frozen=True)
class RegistryName:
    """Where pushed images go: ``host`` (``name[:port]``, ``[v6]:port``) and a path
    ``prefix`` inside it ('' for none)."""

    host: str
    prefix: str = ""

    def repository(self, name: str) -> str:
        """The full repository name of ``name`` in this registry."""
        return repository_in(self, name)

    def __str__(self) -> str:
        return f"{self.host}/{self.prefix}" if self.prefix else self.host


def parse_registry(text: str) -> RegistryName:
    """``HOST[:PORT][/PREFIX]`` as ``--registry`` takes it; RegistryError says what is
    wrong and how to write it."""
    if not isinstance(text, str):
        raise RegistryError(f"--registry must be text, not {type(text).__name__}")
    if not text:
        raise RegistryError(f"--registry is empty: give HOST[:PORT][/PREFIX], e.g. {EXAMPLE}")
    _check_characters(text)
    if "://" in text:
        raise RegistryError(f"--registry {text!r}: no scheme; write the registry as an "
                            f"image name starts, e.g. {EXAMPLE}")
    if len(text) > NAME_LIMIT:
        raise RegistryError(f"--registry {text!r} is longer than {NAME_LIMIT} characters")
    host, slash, prefix = text.partition("/")
    _check_host(host, text)
    if slash:
        _check_prefix(prefix, text)
    return RegistryName(host, prefix)


def repository_in(registry: RegistryName, name: str) -> str:
    """``<host>/<prefix/>name``, checked: the registry by ``parse_registry``'s rules
    (whichever parser made it), ``name`` as a repository path, the whole by length."""
    checked = parse_registry("/".join(part for part in (registry.host, registry.prefix)
                                      if part))
    parts = name.split("/") if isinstance(name, str) else [""]
    if not all(PATH_COMPONENT.fullmatch(part) for part in parts):
        raise RegistryError(f"{name!r} is not a repository name (lower-case words "
                            "separated by '/', '.', '_' or '-')")
    full = f"{checked}/{name}"
    if len(full) > NAME_LIMIT:
        raise RegistryError(f"{full!r} is longer than Docker's {NAME_LIMIT} characters: "
                            "use a shorter registry prefix")
    return full


def _check_characters(text: str) -> None:
    for char in text:
        if not char.isascii() or not char.isprintable() or char.isspace():
            raise RegistryError(f"--registry {text!r}: {char!r} cannot be in a registry name "
                                "(printable ASCII, no spaces)")


def _check_host(host: str, text: str) -> None:
    name, port = _split_port(host, text)
    if port is not None and not (PORT.fullmatch(port) and int(port) <= 65535):
        raise RegistryError(f"--registry {text!r}: port {port!r} is not a number from 1 to "
                            "65535 (without leading zeros)")
    if name.startswith("["):
        _check_ipv6(name[1:-1], text)
        return
    if not name:
        raise RegistryError(f"--registry {text!r}: no host before the path, e.g. {EXAMPLE}")
    if name != name.lower():
        raise RegistryError(f"--registry {text!r}: write the host {name!r} in lower case")
    labels = name.split(".")
    if len(name) > HOST_NAME_LIMIT or not all(HOST_LABEL.fullmatch(x) for x in labels):
        raise RegistryError(f"--registry {text!r}: {name!r} is not a host name or an IPv4 "
                            "address (letters, digits and '-', dot-separated, no empty part)")
    if all(label.isdigit() for label in labels):
        _check_ipv4(name, text)
    elif "." not in name and port is None and name != "localhost":
        # Docker reads a first part without '.', ':' or 'localhost' as a Docker Hub
        # namespace, so the push would go to Docker Hub instead.
        raise RegistryError(f"--registry {text!r}: Docker would read {name!r} as a Docker "
                            f"Hub namespace; give a domain, a port or localhost, e.g. "
                            f"{name}:5000")


def _split_port(host: str, text: str) -> tuple[str, str | None]:
    """(host name, port or None); an IPv6 address keeps its brackets."""
    if host.startswith("["):
        end = host.find("]")
        rest = host[end + 1:] if end > 0 else "?"
        if rest and not rest.startswith(":"):
            raise RegistryError(f"--registry {text!r}: an IPv6 address is written "
                                "[address]:port")
        return host[: end + 1], (rest[1:] if rest else None)
    name, colon, port = host.partition(":")
    if ":" in port or "]" in host:
        raise RegistryError(f"--registry {text!r}: an IPv6 address goes in brackets, "
                            "[address]:port")
    return name, (port if colon else None)


def _check_ipv4(name: str, text: str) -> None:
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        raise RegistryError(f"--registry {text!r}: {name!r} is not an IPv4 address") from None


def _check_ipv6(name: str, text: str) -> None:
    try:
        address = ipaddress.IPv6Address(name)
    except ValueError:
        raise RegistryError(f"--registry {text!r}: [{name}] is not an IPv6 address") from None
    if address.scope_id or name != name.lower():
        raise RegistryError(f"--registry {text!r}: write the IPv6 address in lower case, "
                            "without a %zone")


def _check_prefix(prefix: str, text: str) -> None:
    for part in prefix.split("/"):
        if not part:
            raise RegistryError(f"--registry {text!r}: an empty part in the path (a doubled "
                                "or trailing '/')")
        if "@" in part or ":" in part:
            raise RegistryError(f"--registry {text!r}: a registry is a host and a path, "
                                "without a tag or digest")
        if part != part.lower():
            raise RegistryError(f"--registry {text!r}: the path must be lower case (Docker "
                                "repository names are)")
        if not PATH_COMPONENT.fullmatch(part):
            raise RegistryError(f"--registry {text!r}: path part {part!r} is not letters and "
                                "digits joined by '.', '_', '__' or '-'")
