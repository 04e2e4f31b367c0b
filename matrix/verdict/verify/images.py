"""One build cell's images under one deadline: each image gets the checks of its kind
(tar or disk), the facts they share are read once, every check is timed and logged,
and no bad or unreadable image makes :func:`verify_images` raise."""

from __future__ import annotations

import logging
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from dib.blockdevice.disk import LAYOUT_SUFFIX
from dib.outputs import QEMU_FORMATS, TAR_TYPES
from results.model import ImageCheck

from .checks import (
    Found,
    check_architecture,
    check_labels,
    check_os_release,
    check_packages,
    check_qemu_img,
    check_table,
)
from .diskimage import (
    Disk,
    Table,
    debugfs_os_release,
    debugfs_packages,
    read_table,
    root_filesystem,
    virtual_size,
)
from .expect import Expectation, planned_layout
from .identity import (
    IdentityFacts,
    build_host_names,
    check_identity,
    read_disk_identity,
    read_tar_identity,
)
from .limits import Deadline, VerifyError
from .parse import Packages
from .tarimage import TarFacts, read_tar

LOG = logging.getLogger(__name__)

DISK_FORMATS = {"raw": "raw", **QEMU_FORMATS}
MANIFEST_SUFFIX = ".packages"
Step = tuple[str, Callable[[Deadline], Found]]
T = TypeVar("T")


def verify_images(
    images: Sequence[Path], expect: Expectation, run_dir: Path, timeout: float | Deadline
) -> list[ImageCheck]:
    """Check every image of one build cell; never raises for a bad or unreadable image.
    ``timeout``: seconds from now, or the deadline of the cell's whole budget (a check
    that it cuts short fails, and the deadline says it passed)."""
    deadline = timeout if isinstance(timeout, Deadline) else Deadline.after(timeout)
    checks: list[ImageCheck] = []
    work = _work_dir(run_dir)
    try:
        for image in images:
            checks += _verify_one(image, expect, run_dir, deadline, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return checks


def summary(checks: Sequence[ImageCheck]) -> str | None:
    """``verify: <name>: <detail>`` of the first failed check, on one line; None if all pass."""
    failed = next((c for c in checks if not c.ok), None)
    if failed is None:
        return None
    return " ".join(f"verify: {failed.name}: {failed.detail}".split())


def image_type(path: Path) -> str | None:
    """The dib output type of an image file from its name (``x.tar.gz`` -> ``tar.gz``)."""
    name = path.name
    for kind in sorted((*TAR_TYPES, *DISK_FORMATS), key=len, reverse=True):
        if name.endswith("." + kind):
            return kind
    return None


def beside(image: Path, kind: str, suffix: str) -> Path:
    """The file dib writes next to an image: ``t.qcow2`` -> ``t<suffix>``."""
    return image.with_name(image.name[: -len(kind) - 1] + suffix)


def _work_dir(run_dir: Path) -> Path:
    base = run_dir if run_dir.is_dir() else Path(tempfile.gettempdir())
    return Path(tempfile.mkdtemp(prefix=".verify-", dir=base))


def _relative(path: Path, run_dir: Path) -> str:
    try:
        return str(path.resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return str(path)


def _verify_one(
    image: Path, expect: Expectation, run_dir: Path, deadline: Deadline, work: Path
) -> list[ImageCheck]:
    relative = _relative(image, run_dir)
    kind = image_type(image)
    if kind is None or not image.is_file():
        what = "no such file" if not image.is_file() else "unknown image type"
        return [ImageCheck("image", False, f"image: {what}: {image.name}", relative)]
    if kind in TAR_TYPES:
        steps = _tar_steps(image, kind, expect)
    else:
        steps = _disk_steps(image, kind, expect, work)
    timed = []
    for step in steps:
        started = time.monotonic()
        found = _run_step(step, deadline)
        seconds = time.monotonic() - started
        LOG.info("verify %s: %s %s in %.3f s: %s", relative, found.name,
                 "ok" if found.ok else "FAILED", seconds, found.detail)
        timed.append(ImageCheck(found.name, found.ok, found.detail, relative, round(seconds, 3)))
    return timed


def _run_step(step: Step, deadline: Deadline) -> Found:
    name, check = step
    if deadline.left() <= 0:
        return Found(name, False, f"{name}: not checked, the verification ran out of time")
    try:
        return check(deadline)
    except VerifyError as err:
        return Found(name, False, f"{name}: {err}")
    except (OSError, tarfile.TarError, EOFError, ValueError, KeyError, TypeError) as err:
        return Found(name, False, f"{name}: cannot read the image: {err}")
    except Exception as err:  # a bug here must not take the run down: the check fails
        LOG.exception("verify: %s failed unexpectedly", name)
        return Found(name, False, f"{name}: internal error of the check: {err!r}")


def _once(read: Callable[[Deadline], T]) -> Callable[[Deadline], T]:
    """``read`` done by the first step that needs it; a failed read is tried again."""
    done: list[T] = []

    def cached(deadline: Deadline) -> T:
        if not done:
            done.append(read(deadline))
        return done[0]

    return cached


def _tar_steps(image: Path, kind: str, expect: Expectation) -> list[Step]:
    facts: Callable[[Deadline], TarFacts] = _once(lambda d: read_tar(image, d))
    manifest = beside(image, kind, MANIFEST_SUFFIX)
    steps: list[Step] = [
        ("os-release", lambda d: check_os_release(facts(d).os_release,
                                                  facts(d).os_release_problem, expect)),
        ("packages", lambda d: check_packages(facts(d).packages, facts(d).rpm, manifest)),
    ]
    if expect.arch is not None:
        steps.append(("architecture", lambda d: check_architecture(facts(d).packages,
                                                                   facts(d).rpm, expect)))
    steps.append(("identity", lambda d: _identity(lambda: read_tar_identity(image, d), d)))
    return steps


def _disk_steps(image: Path, kind: str, expect: Expectation, work: Path) -> list[Step]:
    plans = planned_layout(beside(image, kind, LAYOUT_SUFFIX), expect)
    planned = plans.best
    manifest = beside(image, kind, MANIFEST_SUFFIX)
    disk: Callable[[Deadline], Disk] = _once(
        lambda d: Disk(image, DISK_FORMATS[kind], virtual_size(image, DISK_FORMATS[kind], d)))
    table: Callable[[Deadline], Table] = _once(lambda d: read_table(disk(d), work, d))
    root: Callable[[Deadline], str] = _once(
        lambda d: root_filesystem(disk(d), table(d), planned, work, d))
    packages: Callable[[Deadline], Packages | None] = _once(
        lambda d: debugfs_packages(root(d), d))
    steps: list[Step] = [
        ("qemu-img check", lambda d: check_qemu_img(disk(d), d)),
        ("partition table", lambda d: check_table(table(d), plans)),
        ("filesystem label", lambda d: check_labels(disk(d), table(d), planned, work, d)),
        ("os-release", lambda d: check_os_release(*debugfs_os_release(root(d), d), expect)),
        ("packages", lambda d: check_packages(packages(d), False, manifest)),
    ]
    if expect.arch is not None:
        steps.append(("architecture", lambda d: check_architecture(packages(d), False,
                                                                   expect)))
    steps.append(("identity", lambda d: _identity(lambda: read_disk_identity(root(d), d), d)))
    return steps


def _identity(read: Callable[[], IdentityFacts], deadline: Deadline) -> Found:
    """The build-host identity check; an image whose files cannot be read is not judged
    (the checks that read the same files fail and say why); out of time, it fails."""
    try:
        facts = read()
    except (VerifyError, OSError, tarfile.TarError, EOFError) as err:
        if deadline.passed:
            raise
        return Found("identity", True, f"not checked: {err}")
    return check_identity(facts, build_host_names())
