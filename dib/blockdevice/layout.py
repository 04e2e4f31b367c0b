"""The block-device layout: diskimage-builder's YAML, validated into frozen dataclasses.

Supported is the subset that needs neither loop devices nor device-mapper: one
``local_loop`` node (the image) and one ``partitioning`` node on it, with the
filesystems nested in the partitions (``mkfs`` → ``mount`` → ``fstab``)::

    - local_loop:
        name: image0
    - partitioning:
        base: image0
        label: mbr            # or gpt
        align: 1MiB           # optional, the default
        partitions:
          - name: root
            flags: [boot, primary]
            size: 100%        # bytes with a unit (8MiB, 2GB) or a percentage
            mkfs:
              type: ext4
              mount:
                mount_point: /
                fstab: {options: defaults, fsck-passno: 1}

A percentage is of the space still free where the partition starts (as in
diskimage-builder), so ``100%`` means "the rest"; only the last partition may
take 100%, and a last partition without a size takes the rest. Every problem is
collected, with its YAML line and key, before :class:`LayoutError` is raised.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from dib import safeyaml
from dib.blockdevice import flatform
from dib.errors import ConfigError

SECTOR = 512
MIB = 1 << 20
DEFAULT_ALIGN = MIB
ROOT_LABEL = "cloudimg-rootfs"
LABELS = ("mbr", "gpt")
FLAGS = ("boot", "primary")
EXT_TYPES = ("ext2", "ext3", "ext4")
FS_TYPES = (*EXT_TYPES, "vfat")
DEFAULT_ROOT_FS = "ext4"  # disk-image-create's FS_TYPE default
LABEL_LIMITS = {"ext2": 16, "ext3": 16, "ext4": 16, "vfat": 11}
MBR_MAX_PARTITIONS = 4
GPT_NAME_MAX = 36
PARTITION_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
FS_LABEL = re.compile(r"^[A-Za-z0-9_.-]+$")
MOUNT_POINT = re.compile(r"^/([A-Za-z0-9_.-]+/?)*$")
# sgdisk-style short codes -> GPT type GUIDs, for the codes DIB layouts use.
GPT_TYPES = {
    "8300": "0FC63DAF-8483-4772-8E79-3D69D8477DE4",  # Linux filesystem
    "8200": "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F",  # Linux swap
    "8E00": "E6D6D379-F507-44C2-A23C-238F2A3DF928",  # Linux LVM
    "FD00": "A19D880F-05FC-4D3B-A006-743F0F84911E",  # Linux RAID
    "EF00": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",  # EFI system partition
    "EF02": "21686148-6449-6E6F-744E-656564454649",  # BIOS boot partition
}
GUID = re.compile(r"^[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}$")
ESP_MBR_TYPE = "ef"
UNSUPPORTED_NODES = {
    "lvm": "LVM needs device-mapper",
    "mdraid": "software RAID needs md devices",
}
# Flat nodes that flatform.nest could not read (it takes mappings only).
FLAT_NODE_SHAPES = {
    "mkfs": "a mapping with base, type and mount",
    "mount": "a mapping with base and mount_point",
    "fstab": "a mapping with base and options",
}
# Units as in diskimage-builder: IEC (KiB, MiB...) and SI (kB, MB...); one letter is IEC.
UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "m": 1 << 20,
    "g": 1 << 30,
    "t": 1 << 40,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
}
SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")
PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


class LayoutError(ConfigError):
    """The layout cannot be used; ``problems`` lists every one found."""

    def __init__(self, origin: str, problems: Sequence[str]):
        self.origin = origin
        self.problems = list(problems)
        lines = "".join(f"\n  - {p}" for p in self.problems)
        super().__init__(f"block-device layout {origin}: {len(self.problems)} problem(s):{lines}")


@dataclass(frozen=True)
class Size:
    """A partition size: a byte count, or a percentage of the space still free."""

    bytes: int = 0
    percent: float = 0.0

    @property
    def is_percent(self) -> bool:
        return self.percent > 0

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.is_percent else f"{self.bytes} B"


REST = Size(percent=100.0)


@dataclass(frozen=True)
class Fstab:
    options: str = "defaults"
    dump: int = 0
    passno: int = 2


@dataclass(frozen=True)
class Filesystem:
    type: str
    label: Optional[str] = None
    mount_point: Optional[str] = None
    fstab: Optional[Fstab] = None


@dataclass(frozen=True)
class Partition:
    name: str
    size: Size
    type_code: str  # MBR: two hex digits ("83"); GPT: a type GUID
    flags: Tuple[str, ...] = ()
    filesystem: Optional[Filesystem] = None

    @property
    def mount_point(self) -> Optional[str]:
        return self.filesystem.mount_point if self.filesystem else None


@dataclass(frozen=True)
class Layout:
    label: str  # "mbr" or "gpt"
    partitions: Tuple[Partition, ...]
    align: int = DEFAULT_ALIGN
    image: str = "image0"

    def partition(self, name: str) -> Partition:
        return next(p for p in self.partitions if p.name == name)

    def mounted(self) -> List[Partition]:
        """Partitions with a mounted filesystem, parents before children (``/`` first)."""
        found = [p for p in self.partitions if p.mount_point]
        return sorted(found, key=lambda p: (mount_depth(p.mount_point or "/"), p.name))

    @property
    def root(self) -> Partition:
        return next(p for p in self.partitions if p.mount_point == "/")

    def by_type(self, gpt_guid: str, mbr_code: str = "") -> Optional[Partition]:
        wanted = gpt_guid if self.label == "gpt" else mbr_code
        return next((p for p in self.partitions if wanted and p.type_code == wanted), None)

    @property
    def bios_boot(self) -> Optional[Partition]:
        """GPT's BIOS boot partition (EF02), where GRUB's core image lives on GPT disks."""
        return self.by_type(GPT_TYPES["EF02"]) if self.label == "gpt" else None

    @property
    def esp(self) -> Optional[Partition]:
        """The EFI system partition: GPT type EF00 or MBR type 0xEF, with a vfat filesystem."""
        found = self.by_type(GPT_TYPES["EF00"], ESP_MBR_TYPE)
        return found if found and found.filesystem and found.mount_point else None


def mount_depth(mount_point: str) -> int:
    return len([part for part in mount_point.split("/") if part])


def parse_bytes(value: Any) -> int:
    """Bytes from an int or a string such as ``8MiB``, ``1.5GiB``, ``2GB``, ``512M``."""
    if isinstance(value, bool):
        raise ValueError("expected a size, not true/false")
    if isinstance(value, int):
        return value
    match = SIZE.match(str(value))
    if not match or match.group(2).lower() not in UNITS:
        raise ValueError(f"cannot read size '{value}' (examples: 8MiB, 2GiB, 500MB, 100%)")
    return int(float(match.group(1)) * UNITS[match.group(2).lower()])


def parse_size(value: Any) -> Size:
    """A partition size: bytes (see :func:`parse_bytes`) or a percentage up to 100%."""
    match = PERCENT.match(str(value)) if isinstance(value, str) else None
    if match:
        percent = float(match.group(1))
        if not 0 < percent <= 100:
            raise ValueError(f"percentage {value} is not in (0%, 100%]")
        return Size(percent=percent)
    size = parse_bytes(value)
    if size <= 0:
        raise ValueError(f"size {value} must be positive")
    return Size(bytes=size)


class _Problems:
    """Collects problems as ``line N: key.path: message``."""

    def __init__(self, lines: Mapping[str, int]):
        self.lines = lines
        self.items: List[str] = []

    def add(self, path: str, message: str) -> None:
        line = self._line(path)
        where = f"line {line}: " if line else ""
        self.items.append(f"{where}{path}: {message}" if path else f"{where}{message}")

    def _line(self, path: str) -> Optional[int]:
        while path and path not in self.lines:
            parent = re.sub(r"(\.[^.\[]*|\[\d+\])$", "", path)
            path = parent if parent != path else ""
        return self.lines.get(path)

    def check_keys(self, data: Mapping[str, Any], path: str, allowed: Sequence[str]) -> None:
        for key in sorted(set(map(str, data)) - set(allowed)):
            self.add(f"{path}.{key}", f"unknown key (allowed: {', '.join(allowed)})")


def _record_lines(node: Optional[yaml.Node], path: str, lines: Dict[str, int]) -> None:
    if node is None:
        return
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = f"{path}.{key_node.value}" if path else str(key_node.value)
            lines.setdefault(child, key_node.start_mark.line + 1)
            _record_lines(value_node, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            top_level_node = not path and isinstance(item, yaml.MappingNode)
            _record_lines(item, "" if top_level_node else f"{path}[{index}]", lines)


def load_yaml(text: str, origin: str) -> Tuple[Any, Dict[str, int]]:
    """``yaml.safe_load`` plus the line of every key path (``partitioning.partitions[0]``)."""
    loader = safeyaml.BoundedLoader(text)  # nesting and aliases bounded
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as err:
        raise LayoutError(origin, [f"invalid YAML: {err}"]) from None
    finally:
        loader.dispose()
    lines: Dict[str, int] = {}
    _record_lines(node, "", lines)
    return data, lines


def parse_layout_text(text: str, origin: str) -> Layout:
    data, lines = load_yaml(text, origin)
    return parse_layout(data, origin, lines)


def parse_layout(data: Any, origin: str, lines: Optional[Mapping[str, int]] = None) -> Layout:
    """Validate DIB-format layout data; raise :class:`LayoutError` listing every problem."""
    problems = _Problems(lines or {})
    data, misplaced = flatform.nest(data)
    for path, message in misplaced:
        problems.add(path, message)
    nodes = _top_level_nodes(data, problems)
    image = _image_name(nodes, problems)
    layout = _partitioning(nodes, image, problems)
    if layout is not None:
        _check_layout(layout, problems)
    if problems.items or layout is None:
        raise LayoutError(origin, problems.items or ["no partitioning node"])
    return layout


def _top_level_nodes(data: Any, problems: _Problems) -> Dict[str, List[Any]]:
    nodes: Dict[str, List[Any]] = {}
    if not isinstance(data, list):
        problems.add("", "expected a list of nodes (- local_loop: ..., - partitioning: ...)")
        return nodes
    for index, item in enumerate(data):
        if not isinstance(item, dict) or len(item) != 1:
            problems.add(
                f"[{index}]", "each node is a mapping with one key, such as 'partitioning'"
            )
            continue
        kind, body = next(iter(item.items()))
        kind = str(kind)
        if kind in UNSUPPORTED_NODES:
            problems.add(kind, f"not supported by dib ({UNSUPPORTED_NODES[kind]})")
        elif kind in FLAT_NODE_SHAPES:
            problems.add(kind, f"expected {FLAT_NODE_SHAPES[kind]}")
        elif kind not in ("local_loop", "partitioning"):
            problems.add(
                kind, "unknown node (supported: local_loop, partitioning, mkfs, mount, fstab)"
            )
        else:
            nodes.setdefault(kind, []).append(body)
    return nodes


def _image_name(nodes: Mapping[str, List[Any]], problems: _Problems) -> str:
    loops = nodes.get("local_loop", [])
    if len(loops) > 1:
        problems.add("local_loop", "only one image (local_loop node) is supported")
    if not loops:
        return "image0"
    body = loops[0] if isinstance(loops[0], dict) else {}
    if not isinstance(loops[0], dict):
        problems.add("local_loop", "expected a mapping with 'name'")
    problems.check_keys(body, "local_loop", ("name", "size", "directory", "block_size", "mkfs"))
    if "size" in body:
        problems.add("local_loop.size", "not supported here; use --image-size")
    if "mkfs" in body:
        problems.add("local_loop.mkfs", "a filesystem on the whole disk is not supported by dib's "
                     "disk layouts; give the disk a partitioning node")
    if str(body.get("block_size", SECTOR)) != str(SECTOR):
        problems.add(
            "local_loop.block_size",
            f"{body['block_size']}-byte sectors are not supported (only {SECTOR})",
        )
    return str(body.get("name", "image0"))


def _partitioning(
    nodes: Mapping[str, List[Any]], image: str, problems: _Problems
) -> Optional[Layout]:
    found = nodes.get("partitioning", [])
    if len(found) != 1:
        problems.add("partitioning", f"exactly one partitioning node is needed, found {len(found)}")
        return None
    body = found[0]
    path = "partitioning"
    if not isinstance(body, dict):
        problems.add(path, "expected a mapping with base, label and partitions")
        return None
    problems.check_keys(body, path, ("base", "label", "align", "partitions"))
    if str(body.get("base", image)) != image:
        problems.add(f"{path}.base", f"'{body.get('base')}' is not the image '{image}'")
    label = str(body.get("label", ""))
    if label not in LABELS:
        problems.add(f"{path}.label", f"'{label}' is not one of {', '.join(LABELS)}")
    align = DEFAULT_ALIGN
    if "align" in body:
        try:
            align = parse_bytes(body["align"])
        except ValueError as err:
            problems.add(f"{path}.align", str(err))
        if align <= 0 or align % SECTOR:
            problems.add(f"{path}.align", f"{align} is not a positive multiple of {SECTOR}")
            align = DEFAULT_ALIGN
    items = body.get("partitions")
    if not isinstance(items, list) or not items:
        problems.add(f"{path}.partitions", "expected a non-empty list of partitions")
        return None
    partitions = []
    for index, item in enumerate(items):
        part = _partition(
            item, f"{path}.partitions[{index}]", label, index == len(items) - 1, problems
        )
        if part is not None:
            partitions.append(part)
    return Layout(label=label, partitions=tuple(partitions), align=align, image=image)


def _partition(
    item: Any, path: str, label: str, last: bool, problems: _Problems
) -> Optional[Partition]:
    if not isinstance(item, dict):
        problems.add(path, "expected a mapping with name, size, ...")
        return None
    problems.check_keys(item, path, ("name", "size", "type", "flags", "mkfs"))
    name = str(item.get("name", ""))
    if not PARTITION_NAME.match(name) or len(name) > GPT_NAME_MAX:
        problems.add(f"{path}.name", f"'{name}' must be 1-{GPT_NAME_MAX} of A-Z a-z 0-9 _ . -")
    size = REST
    if "size" in item:
        try:
            size = parse_size(item["size"])
        except ValueError as err:
            problems.add(f"{path}.size", str(err))
            size = Size(bytes=SECTOR)  # a stand-in, so no follow-on "100%" complaint
    elif not last:
        problems.add(f"{path}.size", "missing (only the last partition may leave it out)")
    flags = item.get("flags", [])
    if not isinstance(flags, list):
        problems.add(f"{path}.flags", "expected a list such as [boot, primary]")
        flags = []
    for flag in flags:
        if flag not in FLAGS:
            problems.add(f"{path}.flags", f"unknown flag '{flag}' (allowed: {', '.join(FLAGS)})")
    filesystem = _filesystem(item["mkfs"], f"{path}.mkfs", problems) if "mkfs" in item else None
    type_code = _type_code(item.get("type"), label, f"{path}.type", problems)
    return Partition(name, size, type_code, tuple(str(f) for f in flags), filesystem)


def _type_code(value: Any, label: str, path: str, problems: _Problems) -> str:
    if label == "gpt":
        text = str(value if value is not None else "8300").upper()
        if GUID.match(text):
            return text
        if text not in GPT_TYPES:
            problems.add(
                path, f"unknown GPT type '{value}' (use a GUID or one of {', '.join(GPT_TYPES)})"
            )
            return GPT_TYPES["8300"]
        return GPT_TYPES[text]
    if value is None:
        return "83"
    # YAML reads 0x83 as the integer 131; '0x83' and '83' arrive as text.
    number = value if isinstance(value, int) else None
    if number is None:
        with_prefix = str(value).lower()
        try:
            number = int(with_prefix, 16)
        except ValueError:
            number = -1
    if not 0 < number < 256:
        problems.add(path, f"MBR partition type '{value}' is not a byte such as 0x83")
        return "83"
    return f"{number:02x}"


def _filesystem(body: Any, path: str, problems: _Problems) -> Optional[Filesystem]:
    if not isinstance(body, dict):
        problems.add(path, "expected a mapping with type and mount")
        return None
    problems.check_keys(body, path, ("type", "label", "mount", "name"))
    fs_type = str(body.get("type", ""))
    if "type" not in body and _mounts_root(body):
        # As diskimage-builder: the root filesystem's type defaults to the root fs type.
        fs_type = DEFAULT_ROOT_FS
    if fs_type not in FS_TYPES:
        problems.add(
            f"{path}.type",
            f"'{fs_type}' cannot be made from a directory without a loop device "
            f"(supported: {', '.join(FS_TYPES)})",
        )
    label = body.get("label")
    if label is not None:
        label = str(label)
        limit = LABEL_LIMITS.get(fs_type, 11)
        if not FS_LABEL.match(label) or len(label) > limit:
            problems.add(f"{path}.label", f"'{label}' must be 1-{limit} of A-Z a-z 0-9 _ . -")
    mount_point, fstab = None, None
    if "mount" in body:
        mount_point, fstab = _mount(body["mount"], f"{path}.mount", problems)
    return Filesystem(fs_type, label, mount_point, fstab)


def _mounts_root(mkfs: Mapping[str, Any]) -> bool:
    mount = mkfs.get("mount")
    return isinstance(mount, dict) and str(mount.get("mount_point", "")).strip() == "/"


def _mount(body: Any, path: str, problems: _Problems) -> Tuple[Optional[str], Optional[Fstab]]:
    if not isinstance(body, dict):
        problems.add(path, "expected a mapping with mount_point")
        return None, None
    problems.check_keys(body, path, ("mount_point", "fstab"))
    mount_point = str(body.get("mount_point", ""))
    if not MOUNT_POINT.match(mount_point) or "/../" in f"{mount_point}/":
        problems.add(f"{path}.mount_point", f"'{mount_point}' is not an absolute path")
        mount_point = ""
    mount_point = (mount_point.rstrip("/") or "/") if mount_point else ""
    fstab = None
    if "fstab" in body:
        fstab = _fstab(body["fstab"], f"{path}.fstab", problems)
    return (mount_point or None), fstab


def _fstab(body: Any, path: str, problems: _Problems) -> Fstab:
    if not isinstance(body, dict):
        problems.add(path, "expected a mapping with options, dump-freq, fsck-passno")
        return Fstab()
    problems.check_keys(body, path, ("options", "dump-freq", "fsck-passno"))
    options = str(body.get("options", "defaults"))
    if not options or any(c.isspace() for c in options):
        problems.add(f"{path}.options", f"'{options}' must be a non-empty list without spaces")
    numbers = {}
    for key, default in (("dump-freq", 0), ("fsck-passno", 2)):
        value = body.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            problems.add(f"{path}.{key}", f"'{value}' is not a non-negative integer")
            value = default
        numbers[key] = value
    return Fstab(options, numbers["dump-freq"], numbers["fsck-passno"])


def _check_layout(layout: Layout, problems: _Problems) -> None:
    """Rules across partitions: unique names and mount points, one root, table limits."""
    base = "partitioning.partitions"
    names: Dict[str, int] = {}
    mounts: Dict[str, str] = {}
    for index, part in enumerate(layout.partitions):
        path = f"{base}[{index}]"
        if part.name in names:
            problems.add(f"{path}.name", f"'{part.name}' is used twice")
        names.setdefault(part.name, index)
        if part.size.percent == 100 and index < len(layout.partitions) - 1:
            problems.add(
                f"{path}.size",
                f"100% takes the rest of the disk, but '{layout.partitions[index + 1].name}' "
                "follows; give 100% to the last partition only",
            )
        mount = part.mount_point
        if mount and mount in mounts:
            problems.add(f"{path}.mkfs.mount.mount_point", f"'{mount}' is also '{mounts[mount]}'")
        if mount:
            mounts.setdefault(mount, part.name)
    if "/" not in mounts:
        problems.add(base, "no partition has a filesystem mounted at /")
    if layout.label == "mbr":
        if len(layout.partitions) > MBR_MAX_PARTITIONS:
            problems.add(
                base, f"an MBR table holds {MBR_MAX_PARTITIONS} primary partitions at most"
            )
        if sum("boot" in p.flags for p in layout.partitions) > 1:
            problems.add(base, "more than one partition has the boot flag")
    for index, part in enumerate(layout.partitions):
        fs = part.filesystem
        if fs and fs.type == "vfat" and fs.mount_point == "/":
            problems.add(f"{base}[{index}].mkfs.type", "the root filesystem cannot be vfat")
