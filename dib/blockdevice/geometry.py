"""Where each partition goes on a disk of a given size: pure arithmetic, no I/O.

Starts are aligned up to the layout's alignment (1 MiB by default: the MBR gap
then holds GRUB's core image, and every partition is 4 KiB aligned); fixed sizes
are rounded up to it and percentages rounded down, so partitions never overlap and
a percentage never overshoots. GPT keeps its backup table in the last 33 sectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Tuple

from dib.blockdevice.layout import MIB, SECTOR, Layout, Partition
from dib.errors import DibError

GPT_HEADER_SECTORS = 34  # protective MBR, GPT header, 32 sectors of entries
GPT_BACKUP_SECTORS = 33
MAX_DISK = 1 << 50


class GeometryError(DibError):
    """The partitions do not fit the disk, or a partition cannot hold its files."""


@dataclass(frozen=True)
class Extent:
    """One partition's place on the disk, in bytes."""

    number: int
    name: str
    start: int
    size: int

    @property
    def end(self) -> int:
        return self.start + self.size

    @property
    def start_sector(self) -> int:
        return self.start // SECTOR

    @property
    def sectors(self) -> int:
        return self.size // SECTOR


def align_up(value: int, align: int) -> int:
    return -(-value // align) * align


def align_down(value: int, align: int) -> int:
    return value // align * align


def mib(value: int) -> str:
    return f"{value / MIB:.0f} MiB" if value % MIB == 0 else f"{value / MIB:.2f} MiB"


def usable(layout: Layout, disk_size: int) -> Tuple[int, int]:
    """First byte a partition may start at and the (exclusive) end partitions must stay in."""
    header = GPT_HEADER_SECTORS if layout.label == "gpt" else 1
    first = align_up(header * SECTOR, layout.align)
    backup = GPT_BACKUP_SECTORS * SECTOR if layout.label == "gpt" else 0
    return first, align_down(disk_size - backup, layout.align)


def _describe(part: Partition) -> str:
    return (
        f"{part.size.percent:g}% of the free space"
        if part.size.is_percent
        else mib(part.size.bytes)
    )


def place(layout: Layout, disk_size: int) -> Tuple[Extent, ...]:
    """Every partition's extent on a ``disk_size`` disk, in table order."""
    cursor, end = usable(layout, disk_size)
    extents = []
    for number, part in enumerate(layout.partitions, start=1):
        start = align_up(cursor, layout.align)
        free = max(0, end - start)
        if part.size.is_percent:
            size = align_down(int(free * part.size.percent / 100), layout.align)
        else:
            size = align_up(part.size.bytes, layout.align)
        if size <= 0 or start + size > end:
            raise GeometryError(
                f"partition '{part.name}' ({_describe(part)}) does not fit on a "
                f"{mib(disk_size)} disk: {mib(free)} left where it starts"
            )
        extents.append(Extent(number, part.name, start, size))
        cursor = start + size
    return tuple(extents)


def _fits(layout: Layout, disk_size: int, needs: Mapping[str, int]) -> bool:
    try:
        extents = place(layout, disk_size)
    except GeometryError:
        return False
    return all(e.size >= needs.get(e.name, 0) for e in extents)


def check_fixed(layout: Layout, needs: Mapping[str, int]) -> None:
    """A fixed-size partition smaller than its files cannot be helped by a bigger disk."""
    for part in layout.partitions:
        need = needs.get(part.name, 0)
        size = align_up(part.size.bytes, layout.align)
        if not part.size.is_percent and need > size:
            raise GeometryError(
                f"partition '{part.name}' is {mib(size)} but its files need about {mib(need)}; "
                "raise its size in the block-device layout"
            )


def minimal_disk_size(layout: Layout, needs: Mapping[str, int]) -> int:
    """The smallest disk (a multiple of the alignment) on which every partition fits its need.

    ``needs`` maps partition names to the bytes their filesystems need; partitions
    without an entry need one alignment unit.
    """
    check_fixed(layout, needs)
    unit = layout.align
    wanted = {p.name: max(needs.get(p.name, 0), unit) for p in layout.partitions}
    first, _ = usable(layout, 0)
    low = first + align_up(GPT_BACKUP_SECTORS * SECTOR, unit) * (layout.label == "gpt")
    for part in layout.partitions:
        fixed = align_up(part.size.bytes, unit)
        low += fixed if not part.size.is_percent else align_up(wanted[part.name], unit)
    high = low
    while not _fits(layout, high, wanted):
        if high > MAX_DISK:
            raise GeometryError("the partitions do not fit on any disk size")
        high *= 2
    # Each partition only grows with the disk, so the smallest fitting size is a boundary.
    low_units, high_units = low // unit - 1, high // unit
    while high_units - low_units > 1:
        middle = (low_units + high_units) // 2
        if _fits(layout, middle * unit, wanted):
            high_units = middle
        else:
            low_units = middle
    return high_units * unit


def disk_size(layout: Layout, needs: Mapping[str, int], requested: int = 0) -> int:
    """The disk size to use: the requested size rounded up, or the minimum if that is larger."""
    return max(align_up(requested, layout.align), minimal_disk_size(layout, needs))
