"""Host definitions (``hosts/*.yaml``): schema, validation and loading.

Every top-level key is declared once in ``HOST_KEYS`` (parser, default, help;
see ``matrix.config.schema``); validation collects all problems of all files and
raises one ``ConfigError``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from dib import bundled
from matrix.config.schema import (
    Derived,
    Invalid,
    Key,
    Reader,
    enum_parser,
    load_dir,
    parse_file_name,
    read_document,
    select,
    shown,
    unknown_key,
)
from matrix.config.yamlload import KeyPath, YamlDocument, load_yaml

# A checkout's hosts/, or the copy an installed wheel carries (see dib.bundled).
BUNDLED_HOSTS_DIR = bundled.path("hosts")

# Every pattern here is used with fullmatch: "$" would let a final newline through.
# Package specs are passed to the package manager as separate arguments, never
# through a shell; this only rejects what no package manager would accept.
PACKAGE_RE = re.compile(r"[A-Za-z0-9<>=~][A-Za-z0-9+._:/@=<>~*-]*")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SUITE_RE = re.compile(r"[a-z0-9][a-z0-9.-]*")
# A registry reference: [host[:port]/]path[:tag][@digest], lower-case path.
IMAGE_REF_RE = re.compile(
    r"(?:[A-Za-z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._/-][a-z0-9]+)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?"
)
MIRROR_URL_RE = re.compile(r"(?:https?|file)://\S+")


class BaseKind(str, enum.Enum):
    """Where a host's root filesystem comes from."""

    BOOTSTRAP = "bootstrap"  # debootstrap/mmdebstrap of a suite, imported into the engine
    IMAGE = "image"  # a registry image the engine pulls
    ROOTFS = "rootfs"  # a root filesystem tarball on this machine, imported

    @property
    def needs_import(self) -> bool:
        return self is not BaseKind.IMAGE


class BootstrapTool(str, enum.Enum):
    DEBOOTSTRAP = "debootstrap"
    MMDEBSTRAP = "mmdebstrap"


class PackageManager(str, enum.Enum):
    """Package managers the Dockerfile template knows how to drive."""

    APT = "apt"
    DNF = "dnf"
    YUM = "yum"
    ZYPPER = "zypper"
    EMERGE = "emerge"


@dataclass(frozen=True)
class BootstrapBase:
    suite: str
    variant: str = "minbase"
    mirror: str | None = None  # None: the orchestrating machine's mirror (dib.mirror)
    tool: BootstrapTool = BootstrapTool.DEBOOTSTRAP
    components: tuple[str, ...] = ("main",)

    kind = BaseKind.BOOTSTRAP

    def describe(self) -> str:
        return f"{self.tool.value} {self.suite} ({self.variant})"

    def canonical(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "suite": self.suite,
            "variant": self.variant,
            "mirror": self.mirror,
            "tool": self.tool.value,
            "components": list(self.components),
        }


@dataclass(frozen=True)
class ImageBase:
    reference: str  # what the engine pulls
    # The reference as the host file wrote it, when a registry mirror changed it
    # (matrix.config.registry); not part of the image's identity.
    written: str | None = None

    kind = BaseKind.IMAGE

    def describe(self) -> str:
        if self.written:
            return f"image {self.reference} (mirror of {self.written})"
        return f"image {self.reference}"

    def canonical(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "reference": self.reference}


@dataclass(frozen=True)
class RootfsBase:
    path: Path  # absolute

    kind = BaseKind.ROOTFS

    def describe(self) -> str:
        return f"rootfs {self.path.name}"

    def canonical(self) -> dict[str, Any]:
        # The tarball's content (not its location) enters the image hash: see hostimage.
        return {"kind": self.kind.value}


Base = Union[BootstrapBase, ImageBase, RootfsBase]


@dataclass(frozen=True)
class HostDefinition:
    """A validated host: how to build its container image."""

    name: str
    base: Base
    package_manager: PackageManager
    packages: tuple[str, ...] = ()
    prepare: tuple[str, ...] = ()  # shell commands run before the package install
    setup: tuple[str, ...] = ()  # shell commands run after it
    environment: tuple[tuple[str, str], ...] = ()  # sorted (name, value) pairs
    description: str = ""
    source: Path | None = None

    @property
    def kind(self) -> BaseKind:
        return self.base.kind

    @property
    def env(self) -> dict[str, str]:
        return dict(self.environment)

    def canonical(self) -> dict[str, Any]:
        """Everything that shapes the image, as plain data (not the file's location)."""
        return {
            "name": self.name,
            "base": self.base.canonical(),
            "package_manager": self.package_manager.value,
            "packages": list(self.packages),
            "prepare": list(self.prepare),
            "setup": list(self.setup),
            "environment": [list(pair) for pair in self.environment],
        }


def _text(value: Any, what: str = "a string") -> str:
    if not isinstance(value, str) or not value.strip():
        raise Invalid(f"must be {what}, got {shown(value)}")
    return value


def _string_list(value: Any, pattern: re.Pattern[str] | None, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise Invalid(f"must be a list of {what}, got {shown(value)}")
    problems: list[tuple[KeyPath, str]] = []
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            problems.append(((index,), f"must be {what[:-1]}, got {shown(item)}"))
        elif pattern is not None and not pattern.fullmatch(item):
            problems.append(((index,), f"{item!r} is not a valid {what[:-1]}"))
    if problems:
        raise Invalid.many(problems)
    return tuple(value)


def _parse_packages(value: Any, reader: Reader, path: KeyPath) -> tuple[str, ...]:
    return _string_list(value, PACKAGE_RE, "package names")


def _parse_commands(value: Any, reader: Reader, path: KeyPath) -> tuple[str, ...]:
    return _string_list(value, None, "shell commands")


def _parse_environment(value: Any, reader: Reader, path: KeyPath) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise Invalid(f"must be a mapping of NAME: value, got {shown(value)}")
    pairs = []
    problems: list[tuple[KeyPath, str]] = []
    for name, raw in value.items():
        text = str(raw)
        if not isinstance(name, str) or not ENV_NAME_RE.fullmatch(name):
            problems.append(((name,), f"{name!r} is not a valid variable name"))
        elif isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
            problems.append(((name,), f"must be a string or number, got {shown(raw)}"))
        elif any(ord(ch) < 32 for ch in text):
            problems.append(((name,), "must not contain control characters or newlines"))
        else:
            pairs.append((name, text))
    if problems:
        raise Invalid.many(problems)
    return tuple(sorted(pairs))


_parse_package_manager = enum_parser(PackageManager)


BOOTSTRAP_KEYS = ("suite", "variant", "mirror", "tool", "components")


def _parse_bootstrap(value: Any) -> BootstrapBase:
    if isinstance(value, str):
        value = {"suite": value}
    if not isinstance(value, dict):
        raise Invalid(f"must be a suite name or a mapping, got {shown(value)}")
    problems = [((key,), unknown_key(key, BOOTSTRAP_KEYS)) for key in value
                if key not in BOOTSTRAP_KEYS]
    fields: dict[str, Any] = {}

    def field(key: str, parse: Callable[[Any], Any], default: Any = None) -> None:
        try:
            fields[key] = parse(value[key]) if key in value else default
        except Invalid as exc:
            problems.extend(exc.under((key,)).problems)

    if "suite" not in value:
        problems.append(((), "missing required key 'suite'"))
    field("suite", _suite)
    field("variant", _text, "minbase")
    field("mirror", _mirror_url)
    field("tool", enum_parser(BootstrapTool), BootstrapTool.DEBOOTSTRAP)
    field("components", lambda v: _string_list(v, SUITE_RE, "components"), ("main",))
    if problems:
        raise Invalid.many(problems)
    return BootstrapBase(**fields)


def _suite(value: Any) -> str:
    suite = _text(value)
    if not SUITE_RE.fullmatch(suite):
        raise Invalid(f"{suite!r} is not a suite name")
    return suite


def _mirror_url(value: Any) -> str:
    mirror = _text(value, "a URL")
    if not MIRROR_URL_RE.fullmatch(mirror):
        raise Invalid(f"{mirror!r} is not an http(s):// or file:// URL")
    return mirror.rstrip("/")


def _parse_base(value: Any, reader: Reader, path: KeyPath) -> Base:
    kinds = [kind.value for kind in BaseKind]
    if not isinstance(value, dict) or len(value) != 1:
        raise Invalid(f"must be a mapping with exactly one of: {', '.join(kinds)}")
    ((kind_name, spec),) = value.items()
    if kind_name not in kinds:
        raise Invalid(unknown_key(kind_name, kinds), (kind_name,))
    try:
        if kind_name == BaseKind.BOOTSTRAP.value:
            return _parse_bootstrap(spec)
        if kind_name == BaseKind.IMAGE.value:
            ref = _text(spec, "a registry image reference")
            if not IMAGE_REF_RE.fullmatch(ref):
                raise Invalid(f"{ref!r} is not an image reference (name[:tag][@digest])")
            return ImageBase(ref)
        tarball = Path(_text(spec, "a path to a root filesystem tarball"))
        if not tarball.is_absolute():
            tarball = reader.doc.path.resolve().parent / tarball
        if not tarball.is_file():
            raise Invalid(f"{str(tarball)!r} does not exist")
        return RootfsBase(tarball)
    except Invalid as exc:
        raise exc.under((kind_name,)) from None


def _default_package_manager(values: dict[str, Any], reader: Reader) -> PackageManager | None:
    base = values.get("base")
    if base is None:
        return None
    if base.kind is BaseKind.BOOTSTRAP:
        return PackageManager.APT
    reader.report(("base",), "'package-manager' is required for image and rootfs hosts")
    return None


HOST_KEYS: tuple[Key, ...] = (
    Key("name", parse_file_name, "host name; must equal the file name without .yaml",
        required=True),
    Key("description", lambda v, r, p: _text(v), "free text shown by 'hosts list'"),
    Key("base", _parse_base, "root filesystem source: bootstrap (suite or {suite, variant, "
        "mirror, tool, components}), image (registry reference) or rootfs (tarball path)",
        required=True),
    Key("package-manager", _parse_package_manager,
        ", ".join(m.value for m in PackageManager),
        Derived(_default_package_manager, "apt for bootstrap hosts; required for image "
                "and rootfs hosts")),
    Key("packages", _parse_packages, "packages to install, in the distro's names", []),
    Key("prepare", _parse_commands, "shell commands run before installing packages", []),
    Key("setup", _parse_commands, "shell commands run after installing packages", []),
    Key("environment", _parse_environment, "variables set in the image", {}),
)


def parse_host(doc: YamlDocument) -> HostDefinition:
    """Validate one parsed host file; raises ``ConfigError`` with every problem in it."""
    values = read_document(doc, HOST_KEYS, "host")
    return HostDefinition(
        name=values["name"],
        base=values["base"],
        package_manager=values["package-manager"],
        packages=values["packages"],
        prepare=values["prepare"],
        setup=values["setup"],
        environment=values["environment"],
        description=values["description"] or "",
        source=doc.path,
    )


def load_host(path: Path) -> HostDefinition:
    return parse_host(load_yaml(path))


def load_hosts(dirs: Sequence[Path] = (BUNDLED_HOSTS_DIR,)) -> dict[str, HostDefinition]:
    """Every ``*.yaml`` under ``dirs``, by name; a later directory overrides an earlier one.

    Raises one ``ConfigError`` listing the problems of all files.
    """
    return load_dir(dirs, load_host, lambda host: host.name, "host")


class UnknownHost(LookupError):
    """A name or glob matched no host."""


def select_hosts(hosts: dict[str, HostDefinition], patterns: Sequence[str]) -> list[HostDefinition]:
    """Hosts matching any of ``patterns`` (names or shell globs), in name order.

    No patterns selects all; a pattern that matches nothing raises ``UnknownHost``.
    """
    chosen, unmatched = select(sorted(hosts), patterns)
    if unmatched:
        raise UnknownHost(f"no host matches {unmatched[0]!r}; known: {', '.join(hosts)}")
    return [hosts[name] for name in chosen]
