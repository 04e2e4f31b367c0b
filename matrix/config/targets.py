"""Target image definitions (``targets/*.yaml``): what dib builds in every host.

A target names its elements, environment, output types, architecture, what it
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
from dib.elements import index_elements, resolve
from dib.errors import DibError
from dib.outputs import SUPPORTED_TYPES
from matrix.config import upstreamdib
from matrix.config.diagnostics import ConfigError, ConfigIssue, IssueCollector
from matrix.config.yamlload import YamlDocument, load_yaml

BOOT_SUFFIX = ":boot"  # a target with boot-test: true gets the row "<target>:boot"

BUNDLED_TARGETS_DIR = bundled.path("targets")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
ELEMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
ENV_NAME_RE = re.compile(r"^DIB_[A-Z0-9_]+$|^ELEMENTS_PATH$")
TOOL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
TARGET_KEYS = {
    "name": "plain name, the row label (required)",
    "description": "one line for humans",
    "elements": "list of dib elements (required)",
    "env": "DIB_* variables for the build",
    "outputs": f"image types: {', '.join(SUPPORTED_TYPES)} (default [tar])",
    "arch": "architecture (default amd64)",
    "requires": "host facts it needs: {tools: [...], debootstrap-script: RELEASE}",
    "boot-test": "boot the image under qemu after building (default false)",
    "diskimage-builder-elements": "a diskimage-builder release (quoted, e.g. \"3.43.0\") "
                                  "whose whole element tree goes first on ELEMENTS_PATH",
}
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
    description: str = ""
    path: Path | None = None
    upstream_elements: str | None = None  # diskimage-builder version, see UPSTREAM_KEY

    @property
    def env_dict(self) -> dict[str, str]:
        return dict(self.env)


def check_env(value: Any, doc: YamlDocument, key: tuple, issues: IssueCollector) -> dict[str, str]:
    """A mapping of DIB_* names to scalar values; values are never given to a shell."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        issues.add(doc.issue(key, "must be a mapping of DIB_* names to values"))
        return {}
    env = {}
    for name, item in value.items():
        if not isinstance(name, str) or not ENV_NAME_RE.match(name):
            issues.add(doc.issue(key + (name,), "only DIB_* variable names are accepted"))
        elif isinstance(item, (dict, list)) or item is None:
            issues.add(doc.issue(key + (name,), "value must be a string or number"))
        else:
            env[name] = str(item).lower() if isinstance(item, bool) else str(item)
    return env


def _string_list(value: Any, pattern: re.Pattern[str], doc: YamlDocument, key: tuple,
                 issues: IssueCollector) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        issues.add(doc.issue(key, "must be a non-empty list"))
        return ()
    good = []
    for index, item in enumerate(value):
        if not isinstance(item, str) or not pattern.match(item):
            issues.add(doc.issue(key + (index,), f"invalid entry {item!r}"))
        else:
            good.append(item)
    return tuple(good)


def _requirements(value: Any, doc: YamlDocument, issues: IssueCollector) -> Requirements:
    if value is None:
        return Requirements()
    if not isinstance(value, dict):
        issues.add(doc.issue(("requires",), "must be a mapping: {tools: [...], "
                                            "debootstrap-script: RELEASE}"))
        return Requirements()
    for key in value:
        if key not in ("tools", "debootstrap-script"):
            known = "unknown key; known: tools, debootstrap-script"
            issues.add(doc.issue(("requires", key), known))
    tools = ()
    if "tools" in value:
        tools = _string_list(value["tools"], TOOL_RE, doc, ("requires", "tools"), issues)
    script = value.get("debootstrap-script")
    if script is not None and (not isinstance(script, str) or not NAME_RE.match(script)):
        issues.add(doc.issue(("requires", "debootstrap-script"), "must be a release name"))
        script = None
    return Requirements(tools=tools, debootstrap_script=script)


def _upstream_version(value: Any, doc: YamlDocument, issues: IssueCollector) -> str | None:
    """A diskimage-builder release with a pinned wheel (matrix.config.upstreamdib.PINS)."""
    if value is None:
        return None
    known = ", ".join(sorted(upstreamdib.PINS))
    if not isinstance(value, str):
        issues.add(doc.issue((UPSTREAM_KEY,), f"must be a quoted version string; known: "
                                              f"{known}"))
        return None
    if value not in upstreamdib.PINS:
        issues.add(doc.issue((UPSTREAM_KEY,), f"diskimage-builder {value} has no pinned "
                                              f"wheel sha256; known: {known}"))
        return None
    return value


def parse_target(doc: YamlDocument) -> Target:
    issues = IssueCollector(list(doc.issues))
    data = doc.data
    if not isinstance(data, dict):
        raise ConfigError([doc.issue((), "a target file must be a mapping")])
    for key in data:
        if key not in TARGET_KEYS:
            issues.add(doc.issue((key,), "unknown key; known: " + ", ".join(TARGET_KEYS)))
    name = data.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        issues.add(doc.issue(("name",), "required: a plain name (lower case, no path separators)"))
        name = ""
    elements = _string_list(data.get("elements"), ELEMENT_RE, doc, ("elements",), issues)
    outputs = data.get("outputs", ["tar"])
    outputs_ok = isinstance(outputs, list) and outputs
    if not outputs_ok or any(o not in SUPPORTED_TYPES for o in outputs):
        issues.add(doc.issue(("outputs",), "must list types among " + ", ".join(SUPPORTED_TYPES)))
        outputs = ["tar"]
    boot = data.get("boot-test", False)
    if not isinstance(boot, bool):
        issues.add(doc.issue(("boot-test",), "must be true or false"))
    arch = data.get("arch", "amd64")
    if not isinstance(arch, str) or not NAME_RE.match(arch):
        issues.add(doc.issue(("arch",), "must be an architecture name such as amd64"))
    env = check_env(data.get("env"), doc, ("env",), issues)
    requires = _requirements(data.get("requires"), doc, issues)
    upstream = _upstream_version(data.get(UPSTREAM_KEY), doc, issues)
    issues.check()
    return Target(
        name=name,
        elements=elements,
        env=tuple(sorted(env.items())),
        outputs=tuple(outputs),
        arch=str(arch),
        requires=requires,
        boot_test=bool(boot),
        description=str(data.get("description", "")),
        path=doc.path,
        upstream_elements=upstream,
    )


def load_target(path: Path) -> Target:
    return parse_target(load_yaml(path))


def load_targets(dirs: tuple[Path, ...] = (BUNDLED_TARGETS_DIR,)) -> dict[str, Target]:
    """Every target under ``dirs`` by name; all files' problems are raised together."""
    issues = IssueCollector()
    targets: dict[str, Target] = {}
    for directory in dirs:
        if not directory.is_dir():
            issues.add(ConfigIssue(directory, None, "", "target directory does not exist"))
            continue
        for path in sorted(directory.glob("*.yaml")):
            try:
                target = load_target(path)
            except ConfigError as err:
                issues.extend(err.issues)
                continue
            if path.stem != target.name:
                issues.add(ConfigIssue(path, None, "name", f"'{target.name}' differs from the "
                                       f"file name '{path.stem}'"))
            targets[target.name] = target
    issues.check()
    return dict(sorted(targets.items()))


def element_issues(targets: Iterable[Target], elements_dir: Path,
                   upstream_cache: Path = upstreamdib.DEFAULT_CACHE) -> list[ConfigIssue]:
    """Targets whose elements dib would not find or could not resolve in ``elements_dir``
    (the run's dib tree), each named with its file and line. A target that sets its own
    ELEMENTS_PATH (directories inside the host container) is left to dib. A target with
    ``diskimage-builder-elements`` resolves against that release's tree first, when it is
    cached (see :func:`upstream_notes`); nothing is fetched here."""
    indexes: dict[str | None, dict | None] = {None: index_elements([elements_dir])}
    found = []
    for target in targets:
        if "ELEMENTS_PATH" in target.env_dict:
            continue
        version = target.upstream_elements
        if version not in indexes:
            upstream = upstreamdib.cached_elements_dir(upstream_cache, version)
            indexes[version] = (None if upstream is None
                                else index_elements([upstream, elements_dir]))
        index = indexes[version]
        if index is None:
            continue  # not cached yet: upstream_notes says so
        try:
            resolve(["base", *target.elements], index)
        except DibError as err:
            where = target.path or Path(f"<target {target.name}>")
            line = load_yaml(target.path).line(("elements",)) if target.path else None
            found.append(ConfigIssue(where, line, "elements", str(err)))
    return found


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
