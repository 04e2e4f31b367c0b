"""The checks, each from facts already read to one :class:`Found`: os-release against
the expected distribution and release, the dpkg database against the manifest and
dpkg's own architecture against the target's, the
qemu-img findings, the partition table and the filesystem labels against the planned
layout. A failed check's detail reads on its own (``image is bookworm, target wants
forky``); the wording helpers live here too."""

from __future__ import annotations

import collections
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from .diskimage import SECTOR, Disk, Table, filesystem_of, partition_spans, qemu_img_check
from .expect import Expectation, PlannedLayout, Plans
from .limits import MIB, Deadline
from .parse import read_manifest

SHOWN = 3  # names shown in a mismatch detail
# Debian suites named by role, not codename: an unstable image says "<testing>/sid".
UNSTABLE = ("sid", "unstable")
ROLE_SUITES = ("stable", "oldstable", "oldoldstable", "testing")


@dataclass(frozen=True)
class Found:
    """One check's outcome before it is stamped with its image and time."""

    name: str
    ok: bool
    detail: str


# ---- os-release ----------------------------------------------------------------------


def check_os_release(
    os_release: Mapping[str, str] | None, problem: str, expect: Expectation
) -> Found:
    name = "os-release"
    if os_release is None:
        return Found(name, False, f"os-release: {problem}")
    distro = os_release.get("ID", "")
    found = image_release(os_release)
    wrong = []
    if expect.distro_id is not None and distro != expect.distro_id:
        wrong.append(f"image is {distro or 'of no known distribution'}, "
                     f"target wants {expect.distro_id}")
    if expect.release is not None and not release_matches(os_release, expect.release):
        wrong.append(f"image is {found}, target wants {expect.release}")
    if wrong:
        return Found(name, False, "; ".join(wrong))
    unchecked = [what for what, value in (("distribution", expect.distro_id),
                                           ("release", expect.release)) if value is None]
    note = f"; {' and '.join(unchecked)} not checked (unknown for this target)" if unchecked else ""
    note += _release_note(os_release, expect.release) if expect.release else ""
    return Found(name, True, f"{distro or '?'} {found}{note}")


def image_release(os_release: Mapping[str, str]) -> str:
    """How an image names its release: the codename, else the version, else its name."""
    return (os_release.get("VERSION_CODENAME") or os_release.get("VERSION_ID")
            or os_release.get("PRETTY_NAME") or "of no known release")


def release_matches(os_release: Mapping[str, str], wanted: str) -> bool:
    """True when the image is the release ``wanted`` (DIB_RELEASE) names.

    Debian's testing and unstable share one base-files: an unstable (sid) image says
    ``VERSION_CODENAME=<testing codename>``, ``PRETTY_NAME="Debian GNU/Linux forky/sid"``
    and has no VERSION_ID; so ``sid``/``unstable`` want ``/sid`` in PRETTY_NAME, and
    ``testing`` wants no VERSION_ID. ``9-stream`` matches VERSION_ID 9.
    """
    codename = os_release.get("VERSION_CODENAME", "")
    version = os_release.get("VERSION_ID", "")
    pretty = os_release.get("PRETTY_NAME", "")
    if wanted in UNSTABLE:
        return not version and pretty.endswith("/sid")
    if wanted == "testing":
        return not version and bool(codename)
    if wanted in ROLE_SUITES:
        return bool(version)
    if wanted in (codename, version, os_release.get("UBUNTU_CODENAME")):
        return True
    return bool(version) and wanted.split("-", 1)[0] == version


def _release_note(os_release: Mapping[str, str], wanted: str) -> str:
    if wanted in UNSTABLE:
        return (f" (os-release says {os_release.get('PRETTY_NAME', '')!r}: testing and "
                "unstable share their os-release)")
    if wanted in ROLE_SUITES:
        return f" (the suite {wanted} is not matched to a codename)"
    return ""


# ---- packages ------------------------------------------------------------------------


def check_packages(
    packages: Mapping[tuple[str, str], str] | None, rpm: bool, manifest: Path
) -> Found:
    name = "packages"
    if packages is None:
        if rpm:
            return Found(name, True, "not applicable: an rpm image (only dpkg databases "
                                     "are compared with the manifest)")
        if manifest.is_file() and read_manifest(manifest):
            return Found(name, False, f"packages: the image has no dpkg database, but "
                                      f"{manifest.name} lists packages")
        return Found(name, True, "not applicable: no dpkg database and an empty manifest")
    if not manifest.is_file():
        return Found(name, False, f"packages: no manifest {manifest.name} beside the image")
    problems = compare_packages(packages, read_manifest(manifest))
    if problems:
        return Found(name, False, "packages: " + "; ".join(problems))
    return Found(name, True, f"{_count(len(packages))} installed, as {manifest.name} lists")


def compare_packages(
    image: Mapping[tuple[str, str], str], manifest: Mapping[tuple[str, str], str]
) -> list[str]:
    """How the image's packages differ from the manifest's, worded for a legend."""
    extra = set(image) - set(manifest)
    missing = set(manifest) - set(image)
    versions = sorted(k for k in set(image) & set(manifest) if image[k] != manifest[k])
    problems = []
    if extra:
        verb = "is" if len(extra) == 1 else "are"
        problems.append(f"{len(extra)} in the image {verb} not in the manifest ({_names(extra)})")
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        problems.append(
            f"{len(missing)} in the manifest {verb} not in the image ({_names(missing)})"
        )
    if versions:
        first = versions[0]
        problems.append(
            f"{_count(len(versions))} differ{'s' if len(versions) == 1 else ''} in version "
            f"({first[0]}: image {image[first]}, "
            f"manifest {manifest[first]})"
        )
    return problems


# ---- architecture --------------------------------------------------------------------


def check_architecture(
    packages: Mapping[tuple[str, str], str] | None, rpm: bool, expect: Expectation
) -> Found:
    """The image's architecture is what ``dpkg --print-architecture`` prints in it: the
    architecture dpkg itself was built for, i.e. its own package's ``Architecture``
    (without a dpkg package: the architecture most of its packages have). Packages of
    another architecture (neither that nor ``all``) are named in the detail (multiarch),
    not counted against the image."""
    name = "architecture"
    wanted = expect.arch
    if packages is None:
        why = "an rpm image" if rpm else "no dpkg database"
        return Found(name, True, f"not checked: {why} (wanted {wanted})")
    counts = collections.Counter(arch for (_, arch) in packages if arch and arch != "all")
    dpkg = sorted(arch for (package, arch) in packages if package == "dpkg")
    if dpkg:
        native, source = dpkg[0], "dpkg --print-architecture"
    elif counts:
        native, source = counts.most_common(1)[0][0], "most of its packages"
    else:
        return Found(name, True, f"not checked: no package of the image names an "
                                 f"architecture (wanted {wanted})")
    if native != wanted:
        return Found(name, False, f"image is {native} ({source}), target wants {wanted}")
    detail = f"{native} ({source}); {_count(counts[native])} {native}"
    others = {arch: n for arch, n in counts.items() if arch != native}
    if others:
        detail += "; also " + ", ".join(f"{n} {a}" for a, n in sorted(others.items()))
    return Found(name, True, detail)


# ---- the disk ------------------------------------------------------------------------


def check_qemu_img(disk: Disk, deadline: Deadline) -> Found:
    name = "qemu-img check"
    if disk.format == "raw":
        actual = disk.path.stat().st_size
        if actual == 0 or actual % SECTOR:
            return Found(name, False, f"qemu-img info: the raw image is {actual} bytes, "
                                      f"not a whole number of {SECTOR}-byte sectors")
        if disk.size != actual:
            return Found(name, False, f"qemu-img info: virtual size {disk.size} bytes, "
                                      f"but the raw file is {actual} bytes")
        return Found(name, True, f"raw, {_mib(disk.size)} (qemu-img info; raw has no check)")
    problems = qemu_img_check(disk, deadline)
    if problems is None:
        return Found(name, True, f"{disk.format}, {_mib(disk.size)}: the format has no check")
    if problems:
        return Found(name, False, f"qemu-img check: {', '.join(problems)}")
    return Found(name, True, f"{disk.format}, {_mib(disk.size)} virtual, no errors")


def check_table(image: Table, plans: Plans) -> Found:
    name = "partition table"
    planned = plans.best
    if planned is None:
        return Found(name, True, f"not compared: {plans.note}; image has "
                                 f"{_table_name(image.label)}")
    problems = compare_tables(image, planned)
    if plans.recorded and plans.wanted:
        problems += compare_plans(plans.recorded, plans.wanted)
    if problems:
        return Found(name, False, "partition table: " + "; ".join(problems[:SHOWN]))
    if planned.table is None:
        return Found(name, True, f"no partition table: a bare filesystem ({planned.origin})")
    parts = ", ".join(p.name for p in planned.partitions)
    return Found(name, True, f"{planned.table}, {_count(len(planned.partitions), 'partition')} "
                             f"({parts}) as in {planned.origin}")


def compare_tables(image: Table, planned: PlannedLayout) -> list[str]:
    if image.label != planned.table:
        kind = planned.table or "a bare filesystem"
        return [f"image has {_table_name(image.label)}, planned {kind}"]
    if planned.table is None:
        return []
    have, want = len(image.partitions), len(planned.partitions)
    if have != want:
        return [f"image has {_count(have, 'partition')}, planned {want}"]
    problems = []
    for got, plan in zip(image.partitions, planned.partitions):
        where = f"partition {got.number} ({plan.name})"
        if planned.table == "gpt" and got.name and got.name != plan.name:
            problems.append(f"partition {got.number} is named {got.name!r}, planned {plan.name!r}")
        if plan.type and got.type != plan.type.upper():
            problems.append(f"{where} has type {got.type}, planned {plan.type.upper()}")
        if plan.start is not None and got.start != plan.start:
            problems.append(f"{where} starts at sector {got.start // SECTOR}, "
                            f"planned {plan.start // SECTOR}")
        if plan.size is not None and got.size != plan.size:
            problems.append(f"{where} is {_mib(got.size)}, planned {_mib(plan.size)}")
    return problems


def compare_plans(recorded: PlannedLayout, wanted: PlannedLayout) -> list[str]:
    """Where what dib planned differs from what the target asks for."""
    if recorded.table != wanted.table:
        return [f"dib planned {recorded.table or 'a bare filesystem'}, "
                f"target wants {wanted.table or 'a bare filesystem'}"]
    names = [p.name for p in recorded.partitions]
    want = [p.name for p in wanted.partitions]
    if names != want:
        return [f"dib planned partitions {', '.join(names)}, target wants {', '.join(want)}"]
    return [f"dib labelled {got.name} {got.label!r}, target wants {plan.label!r}"
            for got, plan in zip(recorded.partitions, wanted.partitions)
            if plan.label is not None and got.label != plan.label]


def check_labels(
    disk: Disk, table: Table, planned: PlannedLayout | None, work: Path, deadline: Deadline
) -> Found:
    name = "filesystem label"
    spans = partition_spans(table, disk)
    if planned is None or len(spans) != len(planned.partitions):
        found = [filesystem_of(disk, start, work, deadline) for start, _ in spans]
        labels = ", ".join(f"{f.type}:{f.label!r}" for f in found if f.type) or "none"
        return Found(name, True, f"not compared (no matching plan); filesystems: {labels}")
    problems, seen = [], []
    for (start, _), plan in zip(spans, planned.partitions):
        if not plan.filesystem:
            continue
        got = filesystem_of(disk, start, work, deadline)
        what = "root filesystem" if plan.mountpoint == "/" else f"{plan.name} filesystem"
        kind = "vfat" if plan.filesystem == "vfat" else "ext4"
        if got.type != kind:
            problems.append(f"{what}: no {plan.filesystem} filesystem found")
        elif plan.label is not None and got.label != plan.label:
            problems.append(f"{what} is labelled {got.label!r}, planned {plan.label!r}")
        seen.append(f"{plan.name}={got.label!r}")
    if problems:
        return Found(name, False, "; ".join(problems[:SHOWN]))
    return Found(name, True, ", ".join(seen) or "no filesystems planned")


# ---- wording -------------------------------------------------------------------------


def _names(keys: Collection[tuple[str, str]]) -> str:
    names = sorted({name for name, _ in keys})
    shown = ", ".join(names[:SHOWN])
    return shown + (", ..." if len(names) > SHOWN else "")


def _count(number: int, what: str = "package") -> str:
    return f"{number} {what}{'' if number == 1 else 's'}"


def _mib(size: int) -> str:
    return f"{size / MIB:.0f} MiB" if size % MIB == 0 else f"{size / MIB:.2f} MiB"


def _table_name(label: str | None) -> str:
    return f"an {label} table" if label == "mbr" else (f"a {label} table" if label
                                                     else "no partition table")
