"""Find elements on ELEMENTS_PATH and resolve a request into the set of elements to build.

Format-compatible with diskimage-builder: an element is a directory; ``element-deps``
lists the elements it pulls in, ``element-provides`` the virtual names it satisfies.
"""

from __future__ import annotations

import graphlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Type

from dib import bundled, safefile
from dib.errors import DibError, ElementError

OPERATING_SYSTEM = "operating-system"
# An element's own files that dib parses (element-deps, package-installs.yaml, pkg-map,
# ...) are a few KiB in diskimage-builder's library; more is not an element's.
ELEMENT_FILE_LIMIT = 256 * safefile.KiB
NAME_MAX = 255  # an element is a directory: its name is one path component


def bundled_elements_dir() -> Path:
    """The ``elements/`` tree shipped with dib (a checkout's, a copied tree's, or installed)."""
    found = bundled.path("elements")
    if not found.is_dir():
        raise ElementError(f"bundled elements directory not found: {found}")
    return found


def elements_path(env: Mapping[str, str]) -> List[Path]:
    """ELEMENTS_PATH entries in order, with the bundled elements last."""
    paths = [Path(p) for p in env.get("ELEMENTS_PATH", "").split(":") if p]
    bundled = bundled_elements_dir()
    if bundled not in paths:
        paths.append(bundled)
    return paths


def read_element_file(
    element: str, path: Path, error: Type[DibError] = ElementError
) -> Optional[str]:
    """The text of one of ``element``'s own files, None when it has none. Anything but
    a regular UTF-8 file of at most ELEMENT_FILE_LIMIT bytes raises ``error`` naming
    the element and the file (never a hang on a FIFO, never an endless read)."""
    try:
        return safefile.read_text(path, ELEMENT_FILE_LIMIT)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        reason = err if isinstance(err, safefile.UnsafeFile) else _reason(err)
        raise error(f"element '{element}': {path}: {reason}") from None


def _reason(err: Exception) -> str:
    if isinstance(err, UnicodeDecodeError):
        return f"not UTF-8 text (byte {err.start})"
    return err.strerror if isinstance(err, OSError) and err.strerror else str(err)


def _read_list(element: str, path: Path) -> Tuple[str, ...]:
    text = read_element_file(element, path)
    if text is None:
        return ()
    names = []
    for line in text.splitlines():
        name = line.split("#", 1)[0].strip()
        if not name:
            continue
        if len(name) > NAME_MAX or "/" in name or not name.isprintable():
            raise ElementError(f"element '{element}': {path}: {name[:80]!r} is not an "
                               "element name (a directory's name)")
        names.append(name)
    return tuple(names)


@dataclass(frozen=True)
class Element:
    name: str
    path: Path
    deps: Tuple[str, ...]
    provides: Tuple[str, ...]

    @classmethod
    def load(cls, path: Path) -> Element:
        return cls(
            name=path.name,
            path=path,
            deps=_read_list(path.name, path / "element-deps"),
            provides=_read_list(path.name, path / "element-provides"),
        )


def index_elements(search_path: Sequence[Path]) -> Dict[str, Element]:
    """Map every element name to its directory; the first match on the path wins."""
    found: Dict[str, Element] = {}
    for directory in search_path:
        if not directory.is_dir():
            continue
        for entry in sorted(directory.iterdir()):
            if entry.is_dir() and not entry.name.startswith(".") and entry.name not in found:
                found[entry.name] = Element.load(entry)
    return found


@dataclass(frozen=True)
class Resolution:
    """The elements of one build, dependencies before dependents."""

    elements: Tuple[Element, ...]
    provided: Mapping[str, str] = field(default_factory=dict)  # virtual name -> provider

    @property
    def names(self) -> List[str]:
        return [e.name for e in self.elements]


def _chain(name: str, parents: Mapping[str, Optional[str]]) -> str:
    links = []
    parent = parents.get(name)
    while parent is not None:
        links.append(parent)
        parent = parents.get(parent)
    return " <- ".join(links) if links else "the command line"


def _closest(name: str, known: Iterable[str]) -> str:
    import difflib

    match = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean '{match[0]}'?" if match else ""


def resolve(
    requested: Sequence[str],
    index: Mapping[str, Element],
    require_operating_system: bool = True,
) -> Resolution:
    """Expand ``requested`` through element-deps; check providers, cycles and the OS element."""
    parents: Dict[str, Optional[str]] = {}
    chosen: Dict[str, Element] = {}
    virtual: List[str] = []
    queue: List[str] = []
    for name in requested:
        if name not in parents:
            parents[name] = None
            queue.append(name)
    while queue:
        name = queue.pop(0)
        element = index.get(name)
        if element is None:
            virtual.append(name)
            continue
        chosen[name] = element
        for dep in element.deps:
            if dep not in parents:
                parents[dep] = name
                queue.append(dep)

    provided: Dict[str, str] = {}
    for element in chosen.values():
        for thing in element.provides:
            if thing in provided:
                raise ElementError(
                    f"both '{provided[thing]}' and '{element.name}' provide '{thing}'; "
                    "an image can hold only one of them"
                )
            provided[thing] = element.name
            if thing in chosen:
                raise ElementError(
                    f"element '{thing}' is pulled in (needed by {_chain(thing, parents)}) "
                    f"but '{element.name}' already provides it"
                )
    for name in virtual:
        if name not in provided:
            raise ElementError(
                f"element '{name}' not found (needed by {_chain(name, parents)})"
                f"{_closest(name, index)}"
            )
    if require_operating_system and OPERATING_SYSTEM not in provided:
        raise ElementError(
            "no element provides 'operating-system': add a base distro element "
            "such as debian-minimal or ubuntu-minimal"
        )
    return Resolution(elements=_ordered(chosen, provided), provided=provided)


def _ordered(chosen: Mapping[str, Element], provided: Mapping[str, str]) -> Tuple[Element, ...]:
    """Dependencies before dependents. A dependency on a virtual name orders its provider
    first too, unless that closes a loop: diskimage-builder does not order elements at
    all, and its block-device-* elements are needed by a vm that they need in dib."""
    try:
        return _sorted(chosen, provided, through_virtual=True)
    except ElementError:
        return _sorted(chosen, provided, through_virtual=False)


def _sorted(
    chosen: Mapping[str, Element], provided: Mapping[str, str], through_virtual: bool
) -> Tuple[Element, ...]:
    graph = graphlib.TopologicalSorter()
    for name in sorted(chosen):
        deps = chosen[name].deps
        real_deps = [provided.get(d, d) for d in deps if through_virtual or d not in provided]
        graph.add(name, *sorted(d for d in real_deps if d in chosen and d != name))
    try:
        order = list(graph.static_order())
    except graphlib.CycleError as err:
        # graphlib lists the cycle along predecessors; reverse it to read "a needs b".
        cycle = list(reversed(err.args[1]))
        raise ElementError("element dependency cycle: " + " -> ".join(cycle)) from None
    return tuple(chosen[n] for n in order)


VM = "vm"
BLOCK_DEVICE_PREFIX = "block-device-"
EFI_ONLY_ARCHES = ("arm64", "aarch64")


def with_block_device_default(requested: Sequence[str], arch: str) -> List[str]:
    """The command line's elements plus the block-device element ``vm`` needs.

    As disk-image-create does: ``vm`` depends on the virtual ``block-device``, and when
    ``vm`` is asked for by name with no ``block-device-*`` element, ``block-device-mbr``
    is added (``block-device-efi`` on arm64, which has no BIOS).
    """
    names = list(requested)
    if VM in names and not any(n.startswith(BLOCK_DEVICE_PREFIX) for n in names):
        names.append("block-device-efi" if arch in EFI_ONLY_ARCHES else "block-device-mbr")
    return names


def resolve_from_env(
    requested: Sequence[str], env: Mapping[str, str], require_operating_system: bool = True
) -> Resolution:
    return resolve(requested, index_elements(elements_path(env)), require_operating_system)
