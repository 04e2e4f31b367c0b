"""What a target's images must be: the distribution and release (from the base element
and DIB_RELEASE), the architecture (the target's ``arch``, as dpkg names it) and, for
disk images, the partition layout: the one the target's elements ask for and the one
dib recorded beside the image (``<target>.layout.json``)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dib.arch import normalise as normalise_arch
from dib.blockdevice.layout import ROOT_LABEL, LayoutError, parse_layout_text
from dib.blockdevice.plan import layout_source, make_plan
from dib.elements import elements_path, index_elements, resolve
from dib.errors import DibError
from dib.outputs import TAR_TYPES
from matrix.config.targets import Target

from .limits import KIB, LAYOUT_LIMIT, VerifyError, read_text

LOG = logging.getLogger(__name__)

# Base elements (diskimage-builder's names too) -> os-release ID.
DISTRO_IDS = {
    "debian-minimal": "debian",
    "debian-minbase": "debian",
    "debian": "debian",
    "ubuntu-minimal": "ubuntu",
    "ubuntu": "ubuntu",
    "fedora-minimal": "fedora",
    "fedora": "fedora",
    "centos-minimal": "centos",
    "centos": "centos",
    "opensuse-minimal": "opensuse-leap",
    "opensuse": "opensuse-leap",
    "rhel": "rhel",
    "rocky-container": "rocky",
}
OPERATING_SYSTEM = "operating-system"
X86 = ("amd64", "i386", "x86_64")
RELEASE_DEFAULT = re.compile(r"DIB_RELEASE=\$\{DIB_RELEASE:-([A-Za-z0-9._-]+)\}")


@dataclass(frozen=True)
class PlannedPartition:
    """One planned partition (for a bare filesystem image: the whole disk)."""

    name: str
    filesystem: str | None = None  # ext4, vfat, ... or None (e.g. a BIOS boot partition)
    label: str | None = None  # the filesystem label
    mountpoint: str | None = None
    type: str | None = None  # MBR code ("83") or GPT type GUID
    start: int | None = None  # bytes, when dib recorded them
    size: int | None = None


@dataclass(frozen=True)
class PlannedLayout:
    table: str | None  # "mbr", "gpt", or None: a bare filesystem without a table
    partitions: tuple[PlannedPartition, ...]
    origin: str  # where the plan came from, for details

    @property
    def root(self) -> PlannedPartition | None:
        return next((p for p in self.partitions if p.mountpoint == "/"), None)


BARE_EXT4 = PlannedLayout(
    None, (PlannedPartition("root", "ext4", ROOT_LABEL, "/"),), "bare ext4 filesystem"
)


@dataclass(frozen=True)
class Expectation:
    distro_id: str | None  # os-release ID; None: not checked
    release: str | None  # DIB_RELEASE; None: not checked
    layout: PlannedLayout | None = None  # None: the target makes no disk image
    layout_problem: str | None = None  # why the layout could not be told
    arch: str | None = None  # Debian architecture (dpkg's); None: not checked


def expectation_for(
    target: Target, env: Mapping[str, str], elements_dirs: Sequence[Path] | None = None
) -> Expectation:
    """What ``target``'s images must be, for a cell with ``env`` (its DIB_* variables).

    ``elements_dirs``: where to find elements (default: ELEMENTS_PATH, then the bundled
    tree); an element that cannot be found leaves the distribution unchecked.
    """
    merged = {**target.env_dict, **env}
    closure, base = _closure(target, merged, elements_dirs)
    distro = DISTRO_IDS.get(base.name) if base else None
    release = merged.get("DIB_RELEASE") or (_default_release(base.path) if base else None)
    layout, problem = _planned_for_target(target, merged, closure)
    return Expectation(distro, release, layout, problem, normalise_arch(target.arch))


@dataclass(frozen=True)
class _Element:
    name: str
    path: Path


def _closure(
    target: Target, env: Mapping[str, str], elements_dirs: Sequence[Path] | None
) -> tuple[dict[str, _Element], _Element | None]:
    """Every element of the build (dib adds ``base``) and the operating-system one."""
    dirs = list(elements_dirs) if elements_dirs is not None else elements_path(env)
    index = index_elements(dirs)
    try:
        resolution = resolve(["base", *target.elements], index)
    except DibError as err:
        LOG.info("verify: elements of %s not resolved here (%s)", target.name, err)
        found = {n: _Element(n, index[n].path) for n in target.elements if n in index}
        base = next((found[n] for n in target.elements if n in DISTRO_IDS and n in found), None)
        return found, base
    closure = {e.name: _Element(e.name, e.path) for e in resolution.elements}
    base_name = resolution.provided.get(OPERATING_SYSTEM)
    return closure, closure.get(base_name) if base_name else None


def _default_release(element: Path) -> str | None:
    """``DIB_RELEASE=${DIB_RELEASE:-bookworm}`` in the base element's environment.d."""
    directory = element / "environment.d"
    for script in sorted(directory.glob("*")) if directory.is_dir() else []:
        found = RELEASE_DEFAULT.search(read_text(script, 64 * KIB))
        if found:
            return found.group(1)
    return None


def _planned_for_target(
    target: Target, env: Mapping[str, str], closure: Mapping[str, _Element]
) -> tuple[PlannedLayout | None, str | None]:
    if not [t for t in target.outputs if t not in TAR_TYPES]:
        return None, None
    vm = closure.get("vm")
    if vm is None:
        return BARE_EXT4, None
    kind = next((n[len("block-device-"):] for n in closure if n.startswith("block-device-")),
                None) or env.get("DIB_BLOCK_DEVICE") or ("mbr" if target.arch in X86 else "efi")
    try:
        text, origin = layout_source({**env, "DIB_BLOCK_DEVICE": kind}, vm.path)
        plan = make_plan(parse_layout_text(text, origin), text, origin)
    except (DibError, LayoutError, OSError) as err:
        return None, f"the target's block-device layout cannot be read here: {err}"
    parts = tuple(
        PlannedPartition(
            p.name,
            p.filesystem.type if p.filesystem else None,
            plan.identities[p.name].label if p.name in plan.identities else None,
            p.mount_point,
            p.type_code,
        )
        for p in plan.layout.partitions
    )
    return PlannedLayout(plan.layout.label, parts, f"the target's {origin} layout"), None


# ---- the layout dib recorded beside a disk image ---------------------------------------


def load_layout_record(path: Path) -> PlannedLayout:
    """``<target>.layout.json`` as dib.blockdevice.disk writes it."""
    data = json.loads(read_text(path, LAYOUT_LIMIT, strict=True))
    parts = tuple(
        PlannedPartition(p["name"], p.get("filesystem"), p.get("label"), p.get("mountpoint"),
                         p.get("type"), p.get("start"), p.get("size"))
        for p in data["partitions"]
    )
    return PlannedLayout(data["table"], parts, path.name)


@dataclass(frozen=True)
class Plans:
    """The layout dib recorded beside the image and the one the target asks for."""

    recorded: PlannedLayout | None
    wanted: PlannedLayout | None
    note: str  # why there is neither, or why the record was not read

    @property
    def best(self) -> PlannedLayout | None:
        """What the image is compared with: the record (it has sizes), else the target's."""
        return self.recorded or self.wanted


def planned_layout(record: Path, expect: Expectation) -> Plans:
    """The layouts a disk image is compared with; ``record``: its ``.layout.json`` path."""
    note = "" if expect.layout else (expect.layout_problem or "the target plans no disk layout")
    if not record.is_file():
        return Plans(None, expect.layout, note)
    try:
        return Plans(load_layout_record(record), expect.layout, note)
    except (OSError, ValueError, KeyError, TypeError, VerifyError) as err:
        return Plans(None, expect.layout, f"{record.name} cannot be read: {err}")
