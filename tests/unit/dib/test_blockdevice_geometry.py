"""Partition arithmetic: alignment, fixed sizes, percentages, the rest, the smallest disk."""

import pytest

from dib.blockdevice.geometry import (
    GeometryError,
    align_down,
    align_up,
    disk_size,
    minimal_disk_size,
    place,
)
from dib.blockdevice.layout import MIB, Filesystem, Layout, Partition, Size

GIB = 1 << 30


def part(name, size, mount=None):
    fs = Filesystem("ext4", mount_point=mount) if mount else None
    return Partition(name, size, "83", filesystem=fs)


def layout(*parts, label="mbr", align=MIB):
    return Layout(label=label, partitions=tuple(parts), align=align)


def test_align():
    assert align_up(1, MIB) == MIB
    assert align_up(MIB, MIB) == MIB
    assert align_down(MIB - 1, MIB) == 0
    assert align_down(3 * MIB + 5, MIB) == 3 * MIB


def test_single_root_takes_the_disk_after_the_first_mib():
    (root,) = place(layout(part("root", Size(percent=100), "/")), 2 * GIB)
    assert root.start == MIB and root.start_sector == 2048
    assert root.end == 2 * GIB
    assert root.number == 1


def test_gpt_keeps_its_backup_table_out_of_the_last_partition():
    (root,) = place(layout(part("root", Size(percent=100), "/"), label="gpt"), 2 * GIB)
    assert root.start == MIB
    assert root.end == 2 * GIB - MIB  # the backup's 33 sectors cost the last aligned MiB
    assert root.end <= 2 * GIB - 33 * 512


def test_fixed_sizes_round_up_and_starts_align():
    extents = place(
        layout(
            part("a", Size(bytes=MIB + 1)),
            part("b", Size(bytes=512)),
            part("root", Size(percent=100), "/"),
            label="gpt",
        ),
        100 * MIB,
    )
    assert [(e.name, e.start // MIB, e.size // MIB) for e in extents] == [
        ("a", 1, 2),
        ("b", 3, 1),
        ("root", 4, 95),
    ]


def test_percentages_are_of_the_free_space_where_the_partition_starts():
    extents = place(
        layout(
            part("boot", Size(bytes=100 * MIB)),
            part("half", Size(percent=50)),
            part("rest", Size(percent=100), "/"),
        ),
        1025 * MIB,
    )
    boot, half, rest = extents
    assert boot.start == MIB and boot.size == 100 * MIB
    assert half.start == 101 * MIB and half.size == 462 * MIB  # 50% of 924 MiB
    assert rest.start == 563 * MIB and rest.end == 1025 * MIB


def test_percentages_round_down_to_the_alignment():
    _, small, _ = place(
        layout(
            part("a", Size(bytes=MIB)),
            part("b", Size(percent=33.3)),
            part("root", Size(percent=100), "/"),
        ),
        12 * MIB,
    )
    assert small.size == 3 * MIB  # 33.3% of 10 MiB, rounded down


def test_partitions_never_overlap():
    extents = place(
        layout(
            part("a", Size(percent=10)),
            part("b", Size(bytes=7 * MIB)),
            part("c", Size(percent=25)),
            part("root", Size(percent=100), "/"),
            label="gpt",
            align=4096,
        ),
        300 * MIB,
    )
    for before, after in zip(extents, extents[1:]):
        assert before.end <= after.start
        assert after.start % 4096 == 0


def test_too_small_a_disk_names_the_partition():
    with pytest.raises(GeometryError, match=r"partition 'esp' \(64 MiB\) does not fit on a 32 MiB"):
        place(layout(part("esp", Size(bytes=64 * MIB)), part("root", Size(percent=100))), 32 * MIB)


def test_minimal_disk_for_a_single_root():
    size = minimal_disk_size(layout(part("root", Size(percent=100), "/")), {"root": 700 * MIB})
    assert size == 701 * MIB


def test_minimal_disk_counts_fixed_partitions_and_the_gpt_backup():
    lay = layout(
        part("ESP", Size(bytes=64 * MIB), "/boot/efi"),
        part("BSP", Size(bytes=8 * MIB)),
        part("root", Size(percent=100), "/"),
        label="gpt",
    )
    size = minimal_disk_size(lay, {"ESP": 3 * MIB, "root": 700 * MIB})
    assert size == (1 + 64 + 8 + 700 + 1) * MIB
    root = place(lay, size)[-1]
    assert root.size >= 700 * MIB


def test_minimal_disk_with_a_percentage_grows_until_each_need_fits():
    lay = layout(part("data", Size(percent=25)), part("root", Size(percent=100), "/"))
    size = minimal_disk_size(lay, {"data": 100 * MIB, "root": 100 * MIB})
    data, root = place(lay, size)
    assert data.size >= 100 * MIB and root.size >= 100 * MIB
    # One MiB less and the 25% partition no longer holds its files.
    assert place(lay, size - MIB)[0].size < 100 * MIB


def test_minimal_disk_is_a_multiple_of_the_alignment():
    lay = layout(part("root", Size(percent=100), "/"), align=4 * MIB)
    assert minimal_disk_size(lay, {"root": 10 * MIB + 1}) % (4 * MIB) == 0


def test_fixed_partition_smaller_than_its_files():
    lay = layout(
        part("ESP", Size(bytes=8 * MIB), "/boot/efi"), part("root", Size(percent=100), "/")
    )
    with pytest.raises(GeometryError, match=r"partition 'ESP' is 8 MiB but its files need"):
        minimal_disk_size(lay, {"ESP": 20 * MIB})


def test_requested_size_wins_when_larger_and_is_aligned():
    lay = layout(part("root", Size(percent=100), "/"))
    assert disk_size(lay, {"root": 100 * MIB}, 2 * GIB + 1) == 2 * GIB + MIB
    assert disk_size(lay, {"root": 100 * MIB}, 10 * MIB) == 101 * MIB
    assert disk_size(lay, {"root": 100 * MIB}) == 101 * MIB
