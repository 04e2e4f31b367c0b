"""Target image definitions (``targets/*.yaml``): what dib builds in every host.

Every key is declared once in ``TARGET_KEYS`` (see ``matrix.config.schema``). A
target names its elements, environment, output types, architecture, what it
``requires`` from a host (tools on PATH, a debootstrap script), whether its
image must pass a boot test, and optionally a diskimage-builder release whose whole
element tree goes first on ELEMENTS_PATH (``diskimage-builder-elements``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dib import bundled
from dib.bootconsole import CHECK_NAMES
from dib.elements import index_elements, resolve
from dib.errors import DibError
from dib.outputs import SUPPORTED_TYPES
from matrix.config import upstreamdib
from matrix.config.diagnostics import ConfigIssue
from matrix.config.schema import (
    Invalid,
    Key,
    Reader,
    load_dir,
    parse_bool,
    parse_dib_env,
    parse_file_name,
    parse_text,
    read_document,
    read_keys,
    shown,
)
from matrix.config.snapshotkey import SnapshotService, parse_service
from matrix.config.yamlload import KeyPath, YamlDocument, load_yaml
from results.names import is_name

BOOT_SUFFIX = ":boot"  # a target with boot-test: true gets the row "<target>:boot"

BUNDLED_TARGETS_DIR = bundled.path("targets")
# Full matches ("$" would let a final newline through).
ELEMENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
TOOL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
UPSTREAM_KEY = "diskimage-builder-elements"


@dataclass(frozen=True)
class Requirements:
    tools: tuple[str, ...] = ()
    debootstrap_script: str | None = None


@dataclass(frozen=True)
class Target:
    name: str
    elements: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    outputs: tuple[str, ...] = ("tar",)
    arch: str = "amd64"
    requires: Requirements = Requirements()
    boot_test: bool = False
    boot_checks: tuple[str, ...] | None = None  # None: every check the image reports
    description: str = ""
    path: Path | None = None
    upstream_elements: str | None = None  # diskimage-builder version, see UPSTREAM_KEY

    @property
    def env_dict(self) -> dict[str, str]:
        return dict(self.env)


def _string_list(value: Any, pattern: re.Pattern[str]) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise Invalid("must be a non-empty list")
    problems = [((index,), f"invalid entry {shown(item)}") for index, item in enumerate(value)
                if not isinstance(item, str) or not pattern.fullmatch(item)]
    if problems:
        raise Invalid.many(problems)
    return tuple(value)


def _elements(value: Any, reader: Reader, path: KeyPath) -> tuple[str, ...]:
    return _string_list(value, ELEMENT_RE)


def _outputs(value: Any, reader: Reader, path: KeyPath) -> tuple[str, ...]:
    if (not isinstance(value, list) or not value
            or any(not isinstance(o, str) or o not in SUPPORTED_TYPES for o in value)):
        raise Invalid("must list types among " + ", ".join(SUPPORTED_TYPES))
    if len(set(value)) != len(value):
        raise Invalid("lists a type twice")
    return tuple(value)


def _arch(value: Any, reader: Reader, path: KeyPath) -> str:
    if not is_name(value):
        raise Invalid("must be an architecture name such as amd64")
    return value


def _tools(value: Any, reader: Reader, path: KeyPath) -> tuple[str, ...]:
    return _string_list(value, TOOL_RE)


def _release(value: Any, reader: Reader, path: KeyPath) -> str:
    if not is_name(value):
        raise Invalid("must be a release name")
    return value


REQUIREMENT_KEYS: tuple[Key, ...] = (
    Key("tools", _tools, "commands the host must have on PATH"),
    Key("debootstrap-script", _release, "a release the host's debootstrap must have a "
        "script for"),
)


def _requirements(value: Any, reader: Reader, path: KeyPath) -> Requirements:
    if not isinstance(value, dict):
        raise Invalid("must be a mapping: {tools: [...], debootstrap-script: RELEASE}")
    values = read_keys(REQUIREMENT_KEYS, value, reader, prefix=path)
    return Requirements(tools=values["tools"] or (),
                        debootstrap_script=values["debootstrap-script"])


def _upstream_version(value: Any, reader: Reader, path: KeyPath) -> str:
    """A diskimage-builder release with a pinned wheel (matrix.config.upstreamdib.PINS)."""
    known = ", ".join(sorted(upstreamdib.PINS))
    if not isinstance(value, str):
        raise Invalid(f"must be a quoted version string; known: {known}")
    if value not in upstreamdib.PINS:
        raise Invalid(f"diskimage-builder {value} has no pinned wheel sha256; known: {known}")
    return value


def _boot_checks(value: Any, reader: Reader, path: KeyPath) -> tuple[str, ...] | None:
    """``all`` -> None (every check the image reports), ``none`` or [] -> (), else the
    listed names, each one that dib.bootconsole knows."""
    if value in ("all", None):
        return None
    if value == "none" or value == []:
        return ()
    if not isinstance(value, list):
        raise Invalid("must be all, none or a list of check names")
    problems = [((index,), f"unknown check {shown(item)}; known: {', '.join(CHECK_NAMES)}")
                for index, item in enumerate(value) if item not in CHECK_NAMES]
    if problems:
        raise Invalid.many(problems)
    return tuple(dict.fromkeys(value))


TARGET_KEYS: tuple[Key, ...] = (
    Key("name", parse_file_name, "plain name, the row label; must equal the file name",
        required=True),
    Key("description", lambda v, r, p: parse_text(v), "one line for humans", ""),
    Key("elements", _elements, "list of dib elements", required=True),
    Key("env", parse_dib_env, "DIB_* variables for the build", {}),
    Key("outputs", _outputs, "image types: " + ", ".join(SUPPORTED_TYPES), ["tar"]),
    Key("arch", _arch, "architecture", "amd64"),
    Key("requires", _requirements, "host facts it needs: {tools: [...], "
        "debootstrap-script: RELEASE}", {}),
    Key("boot-test", parse_bool, "boot the image under qemu after building", False),
    Key("boot-checks", _boot_checks, "checks of the booted system the boot row judges: all "
        "(every one the image's boot-checks element reports), none, or a list of "
        + ", ".join(CHECK_NAMES), "all"),
    Key(UPSTREAM_KEY, _upstream_version, "a diskimage-builder release (quoted, e.g. "
        "\"3.43.0\") whose whole element tree goes first on ELEMENTS_PATH"),
    Key("snapshot", lambda v, r, p: parse_service(v), "build from a snapshot service: "
        "{url: URL, timestamp: 20240101T000000Z} (laid out like snapshot.debian.org; "
        "without a timestamp, any mirror in Debian's archive layout)"),
)


def with_service(env: tuple[tuple[str, str], ...], service: SnapshotService | None
                 ) -> tuple[tuple[str, str], ...]:
    """The target's variables with a snapshot service as its Debian mirror; apt's Release
    expiry check is waived for it (a snapshot's Release files are old by design)."""
    if service is None:
        return env
    given = dict(env)
    added = {"DIB_DISTRIBUTION_MIRROR": service.mirror, "DIB_APT_CHECK_VALID_UNTIL": "false"}
    return env + tuple((k, v) for k, v in added.items() if k not in given)


def parse_target(doc: YamlDocument) -> Target:
    values = read_document(doc, TARGET_KEYS, "target")
    return Target(
        name=values["name"],
        elements=values["elements"],
        env=with_service(values["env"], values["snapshot"]),
        outputs=values["outputs"],
        arch=values["arch"],
        requires=values["requires"],
        boot_test=values["boot-test"],
        boot_checks=values["boot-checks"],
        description=values["description"],
        path=doc.path,
        upstream_elements=values[UPSTREAM_KEY],
    )


def load_target(path: Path) -> Target:
    return parse_target(load_yaml(path))


def load_targets(dirs: tuple[Path, ...] = (BUNDLED_TARGETS_DIR,)) -> dict[str, Target]:
    """Every target under ``dirs`` by name; all files' problems are raised together."""
    return load_dir(dirs, load_target, lambda target: target.name, "target")


def element_issues(targets: Iterable[Target], elements_dir: Path,
                   upstream_cache: Path = upstreamdib.DEFAULT_CACHE) -> list[ConfigIssue]:
    """Targets whose elements dib would not find or could not resolve in ``elements_dir``
    (the run's dib tree), each named with its file and line. A target that sets its own
    ELEMENTS_PATH (directories inside the host container) is left to dib. A target with
    ``diskimage-builder-elements`` resolves against that release's tree first, when it is
    cached (see :func:`upstream_notes`); nothing is fetched here."""
    indexes: dict[str | None, dict | None] = {}
    found: list[ConfigIssue] = []
    try:
        for target in targets:
            if "ELEMENTS_PATH" in target.env_dict:
                continue
            version = target.upstream_elements
            if version not in indexes:
                indexes[version] = _element_index(version, elements_dir, upstream_cache)
            index = indexes[version]
            if index is not None:  # None: not cached yet, upstream_notes says so
                found.extend(_resolve_issues(target, index))
    except DibError as err:  # an element's own file is unreadable (a FIFO, too large)
        found.append(ConfigIssue(elements_dir, None, "", str(err)))
    return found


def _resolve_issues(target: Target, index: dict) -> list[ConfigIssue]:
    try:
        resolve(["base", *target.elements], index)
    except DibError as err:
        where = target.path or Path(f"<target {target.name}>")
        line = load_yaml(target.path).line(("elements",)) if target.path else None
        return [ConfigIssue(where, line, "elements", str(err))]
    return []


def _element_index(version: str | None, elements_dir: Path, upstream_cache: Path
                   ) -> dict | None:
    """The elements a target resolves against: the run's tree, after the release's own
    tree for a target with ``diskimage-builder-elements``; None when that release is
    not cached yet."""
    if version is None:
        return index_elements([elements_dir])
    upstream = upstreamdib.cached_elements_dir(upstream_cache, version)
    return None if upstream is None else index_elements([upstream, elements_dir])


def upstream_notes(targets: Iterable[Target],
                   upstream_cache: Path = upstreamdib.DEFAULT_CACHE) -> list[str]:
    """One line per diskimage-builder release the targets use: where its element tree
    is, or that the run fetches it before cells start (and its elements were not checked)."""
    users: dict[str, list[str]] = {}
    for target in targets:
        if target.upstream_elements:
            users.setdefault(target.upstream_elements, []).append(target.name)
    notes = []
    for version, names in sorted(users.items()):
        cached = upstreamdib.cached_elements_dir(upstream_cache, version)
        who = ", ".join(names)
        if cached is not None:
            notes.append(f"diskimage-builder {version} elements (for {who}): cached in "
                         f"{cached}")
        else:
            notes.append(f"diskimage-builder {version} elements (for {who}): not cached; "
                         f"the run fetches the pinned wheel before cells start; their "
                         f"elements were not checked (dib resolves them in the cell)")
    return notes
