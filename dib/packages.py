"""``package-installs.yaml`` and ``pkg-map``: what each phase installs and removes.

Formats follow diskimage-builder. package-installs.yaml maps a package name to
nothing or to options: ``phase`` (default install.d), ``uninstall``, ``build-only``
(installed for the phase, removed at its end), ``arch`` /
``not-arch`` (comma separated), ``installtype`` (installed only when the element's
install type, ``DIB_INSTALLTYPE_<element>`` else ``DIB_DEFAULT_INSTALLTYPE`` else
``source``, is this one), ``dib_python_version`` (only when ``DIB_PYTHON_VERSION`` is
this), ``when`` (``VAR = value``,
``VAR != value`` or a list of such, all of which must hold). ``pkg-map`` (JSON)
renames packages per ``release`` > ``distro`` > ``family`` > ``default``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from dib import safeyaml
from dib.elements import Element, read_element_file
from dib.errors import ConfigError

DEFAULT_PHASE = "install.d"
ALLOWED_PHASES = ("pre-install.d", "install.d", "post-install.d")
KNOWN_KEYS = {
    "phase",
    "uninstall",
    "build-only",
    "arch",
    "not-arch",
    "when",
    "installtype",
    "dib_python_version",
}
FAMILIES = {
    "debian": "debian",
    "ubuntu": "debian",
    "fedora": "redhat",
    "centos": "redhat",
    "rhel": "redhat",
    "rocky": "redhat",
    "opensuse": "suse",
    "gentoo": "gentoo",
}
ARCH_ALIASES = {"x86_64": "amd64", "aarch64": "arm64", "ppc64le": "ppc64el"}
WHEN = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(!=|=)\s*(.*?)\s*$")


def normalise_arch(arch: str) -> str:
    return ARCH_ALIASES.get(arch, arch)


@dataclass(frozen=True)
class Distro:
    name: str
    release: str

    @property
    def family(self) -> str:
        return FAMILIES.get(self.name, self.name)


@dataclass(frozen=True)
class PackageRequest:
    name: str
    element: str
    phase: str = DEFAULT_PHASE
    uninstall: bool = False
    build_only: bool = False
    arch: Tuple[str, ...] = ()
    not_arch: Tuple[str, ...] = ()
    when: Tuple[str, ...] = ()
    installtype: Optional[str] = None
    dib_python_version: str = ""


@dataclass
class PhasePackages:
    install: List[str] = field(default_factory=list)
    uninstall: List[str] = field(default_factory=list)


def _arch_list(value: Any, where: str) -> Tuple[str, ...]:
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    if not all(_is_scalar(item) for item in items):
        raise ConfigError(f"{where}: must be architectures, comma separated or a list")
    names = [part.strip() for item in items for part in str(item).split(",")]
    return tuple(normalise_arch(name) for name in names if name)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


def _flag(options: Mapping[str, Any], key: str, where: str) -> bool:
    value = options.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):  # "false" as a string would mean true
        raise ConfigError(f"{where}: {key} must be true or false, got {value!r:.40}")
    return value


def _text(options: Mapping[str, Any], key: str, where: str) -> Optional[str]:
    value = options.get(key)
    if value is None:
        return None
    if not _is_scalar(value):
        raise ConfigError(f"{where}: {key} must be a single value")
    return str(value)


def _when(options: Mapping[str, Any], where: str) -> Tuple[str, ...]:
    value = options.get("when")
    conditions = value if isinstance(value, list) else ([value] if value else [])
    for condition in conditions:
        if not isinstance(condition, str) or not WHEN.match(condition):
            raise ConfigError(
                f"{where}: cannot read when {str(condition)[:80]!r} "
                "(expected 'VAR = value' or 'VAR != value')"
            )
    return tuple(conditions)


def _package_name(name: Any, path: Path) -> str:
    """A package name is one word: it becomes one line of the in-chroot installer's list."""
    text = str(name) if _is_scalar(name) else ""
    if not text or text.split() != [text] or not text.isprintable():
        raise ConfigError(f"{path}: {str(name)[:80]!r} is not a package name")
    return text


def _read_package_installs(element: Element) -> Any:
    path = element.path / "package-installs.yaml"
    text = read_element_file(element.name, path, ConfigError)
    if text is None:
        return None
    try:
        return safeyaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from None


def parse_package_installs(element: Element) -> List[PackageRequest]:
    """Read one element's package-installs.yaml; errors name the file and the package."""
    path = element.path / "package-installs.yaml"
    data = _read_package_installs(element)
    if data is None:
        return []
    if isinstance(data, list):
        data = {_package_name(name, path): None for name in data}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of package names")
    requests = []
    for raw_name, options in data.items():
        name = _package_name(raw_name, path)
        where = f"{path}: package '{name}'"
        options = options or {}
        if not isinstance(options, dict):
            raise ConfigError(f"{where}: options must be a mapping")
        unknown = set(map(str, options)) - KNOWN_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        phase = _text(options, "phase", where) or DEFAULT_PHASE
        if phase not in ALLOWED_PHASES:
            raise ConfigError(
                f"{where}: phase '{phase}' is not one of " + ", ".join(ALLOWED_PHASES)
            )
        requests.append(
            PackageRequest(
                name=name,
                element=element.name,
                phase=phase,
                uninstall=_flag(options, "uninstall", where),
                build_only=_flag(options, "build-only", where),
                arch=_arch_list(options.get("arch"), f"{where}: arch"),
                not_arch=_arch_list(options.get("not-arch"), f"{where}: not-arch"),
                when=_when(options, where),
                installtype=_text(options, "installtype", where),
                dib_python_version=_text(options, "dib_python_version", where) or "",
            )
        )
    return requests


def when_holds(conditions: Sequence[str], env: Mapping[str, str]) -> bool:
    for condition in conditions:
        match = WHEN.match(condition)
        assert match  # validated on parse
        var, op, value = match.groups()
        equal = env.get(var, "") == value
        if equal != (op == "="):
            return False
    return True


def applies(request: PackageRequest, arch: str, env: Mapping[str, str]) -> bool:
    arch = normalise_arch(arch)
    if request.arch and arch not in request.arch:
        return False
    if arch in request.not_arch:
        return False
    if request.installtype is not None and request.installtype != installtype(request.element, env):
        return False
    if request.dib_python_version and request.dib_python_version != env.get(
        "DIB_PYTHON_VERSION", ""
    ):
        return False
    return when_holds(request.when, env)


def installtype(element: str, env: Mapping[str, str]) -> str:
    """An element's install type as diskimage-builder reads it: ``DIB_INSTALLTYPE_<element>``
    (dashes as underscores), else ``DIB_DEFAULT_INSTALLTYPE``, else ``source``."""
    default = env.get("DIB_DEFAULT_INSTALLTYPE", "source")
    return env.get("DIB_INSTALLTYPE_" + element.replace("-", "_"), default)


PKG_MAP_DEPTH = {"default": 0, "family": 1, "distro": 1, "release": 2}  # tables above names


def load_pkg_map(element: Element) -> Dict[str, Any]:
    """The element's pkg-map, checked; empty when it has none."""
    return _read_pkg_map(element) or {}


def _read_pkg_map(element: Element) -> Optional[Dict[str, Any]]:
    path = element.path / "pkg-map"
    text = read_element_file(element.name, path, ConfigError)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as err:  # RecursionError: [[[[... nested too deep
        raise ConfigError(f"{path}: invalid JSON: {str(err)[:200]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    for key, depth in PKG_MAP_DEPTH.items():
        if key in data:
            _check_pkg_table(data[key], depth, f"{path}: {key}")
    return data


def _check_pkg_table(table: Any, depth: int, where: str) -> None:
    """``depth`` levels of objects (family, distro, release), then package: name."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a JSON object")
    for key, value in table.items():
        if depth:
            _check_pkg_table(value, depth - 1, f"{where}.{key}")
        elif not isinstance(value, str):
            raise ConfigError(f"{where}.{key}: expected a package name (a string)")


def map_package(name: str, pkg_map: Mapping[str, Any], distro: Distro) -> str:
    """Apply a pkg-map: release > distro > family > default; unmapped names stay."""
    release = pkg_map.get("release", {}).get(distro.name, {}).get(distro.release, {})
    for table in (
        release,
        pkg_map.get("distro", {}).get(distro.name, {}),
        pkg_map.get("family", {}).get(distro.family, {}),
        pkg_map.get("default", {}),
    ):
        if name in table:
            return str(table[name])
    return name


def flat_pkg_map(pkg_map: Mapping[str, Any], distro: Distro) -> Dict[str, str]:
    """Every name a pkg-map knows, mapped for ``distro`` (as :func:`map_package`)."""
    names: Dict[str, None] = {}
    for table in (
        pkg_map.get("default", {}),
        pkg_map.get("family", {}).get(distro.family, {}),
        pkg_map.get("distro", {}).get(distro.name, {}),
        pkg_map.get("release", {}).get(distro.name, {}).get(distro.release, {}),
    ):
        names.update(dict.fromkeys(table))
    return {name: map_package(name, pkg_map, distro) for name in names}


def write_pkg_maps(elements: Sequence[Element], distro: Distro, directory: Path) -> None:
    """For ``install-packages -m ELEMENT``: each element's pkg-map, resolved for
    ``distro``, as ``NAME<tab>MAPPED`` lines in ``directory/ELEMENT``."""
    directory.mkdir(parents=True, exist_ok=True)
    for element in elements:
        pkg_map = _read_pkg_map(element)
        if pkg_map is None:
            continue
        table = flat_pkg_map(pkg_map, distro)
        lines = (f"{name}\t{' '.join(str(mapped).split())}\n" for name, mapped in table.items())
        (directory / element.name).write_text("".join(lines))


def plan_packages(
    elements: Sequence[Element],
    distro: Distro,
    arch: str,
    env: Mapping[str, str],
    extra_packages: Sequence[str] = (),
) -> Dict[str, PhasePackages]:
    """Per phase, the (mapped, de-duplicated, ordered) packages to install and uninstall."""
    plan = {phase: PhasePackages() for phase in ALLOWED_PHASES}
    kept: Dict[str, List[str]] = {phase: [] for phase in ALLOWED_PHASES}  # installed for good
    for element in elements:
        pkg_map = load_pkg_map(element)
        for request in parse_package_installs(element):
            if not applies(request, arch, env):
                continue
            mapped = map_package(request.name, pkg_map, distro)
            if not mapped:  # a pkg-map may map a package to "" to drop it on a distro
                continue
            bucket = plan[request.phase]
            if request.uninstall:
                targets = [bucket.uninstall]
            elif request.build_only:
                targets = [bucket.install, bucket.uninstall]
            else:
                targets = [bucket.install, kept[request.phase]]
            for target in targets:
                if mapped not in target:
                    target.append(mapped)
    for name in extra_packages:
        if name not in plan[DEFAULT_PHASE].install:
            plan[DEFAULT_PHASE].install.append(name)
        kept[DEFAULT_PHASE].append(name)
    # As diskimage-builder: what one element installs for good, another's uninstall or
    # build-only does not remove in the same phase.
    for phase, packages in plan.items():
        packages.uninstall = [p for p in packages.uninstall if p not in kept[phase]]
    return plan


def write_plan(plan: Mapping[str, PhasePackages], directory: Path) -> None:
    """One file per phase and action, one package per line, for the in-chroot installer."""
    directory.mkdir(parents=True, exist_ok=True)
    for phase, packages in plan.items():
        stem = phase[: -len(".d")]
        (directory / f"{stem}.install").write_text("".join(p + "\n" for p in packages.install))
        (directory / f"{stem}.uninstall").write_text("".join(p + "\n" for p in packages.uninstall))
