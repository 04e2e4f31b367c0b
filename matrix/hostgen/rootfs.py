"""Make a root filesystem tarball of a Debian suite on the orchestrating machine."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

from dib import spawn
from dib.bootstrap import debootstrap_log_tail
from matrix.config.hosts import BootstrapBase, BootstrapTool

BOOTSTRAP_TIMEOUT = 1800.0
TAR_TIMEOUT = 600.0
UMOUNT_TIMEOUT = 60.0
KILL_GRACE = 10.0  # debootstrap unmounts its chroot's /proc on SIGTERM


class RootfsError(Exception):
    """The root filesystem could not be made; ``result`` holds the failed command."""

    def __init__(self, message: str, result: spawn.Result | None = None) -> None:
        super().__init__(message)
        self.result = result


def bootstrap_argv(base: BootstrapBase, mirror: str, target: Path) -> list[str]:
    """debootstrap writes a directory; mmdebstrap writes the tarball itself."""
    components = ",".join(base.components)
    return [
        base.tool.value,
        f"--variant={base.variant}",
        f"--components={components}",
        base.suite,
        str(target),
        mirror,
    ]


def make_rootfs_tarball(
    base: BootstrapBase,
    mirror: str,
    work_dir: Path,
    log: BinaryIO,
    timeout: float = BOOTSTRAP_TIMEOUT,
    env: Mapping[str, str] | None = None,
) -> Path:
    """Bootstrap ``base`` into a fresh directory under ``work_dir``; return its tarball.

    The caller owns ``work_dir`` and removes it (see ``remove_tree``). ``env``:
    extra variables for the bootstrap tool (e.g. a package cache's http_proxy).
    """
    tarball = work_dir / "rootfs.tar"
    if base.tool is BootstrapTool.MMDEBSTRAP:
        result = _logged(bootstrap_argv(base, mirror, tarball), log, timeout, env)
        if not result.ok:
            raise RootfsError(f"mmdebstrap of {base.suite} failed", result)
        return tarball
    root = work_dir / "root"
    result = _logged(bootstrap_argv(base, mirror, root), log, timeout, env)
    if not result.ok:
        # Where debootstrap leaves the cause its own output only summarises.
        details = debootstrap_log_tail(root)
        if details:
            log.write(("# the end of debootstrap.log\n" + "\n".join(details) + "\n").encode())
        raise RootfsError(f"debootstrap of {base.suite} failed", result)
    tar = ["tar", "--numeric-owner", "--xattrs", "-C", str(root), "-cf", str(tarball), "."]
    result = _logged(tar, log, TAR_TIMEOUT)
    if not result.ok:
        raise RootfsError("packing the root filesystem failed", result)
    return tarball


def _logged(argv: list[str], log: BinaryIO, timeout: float,
            env: Mapping[str, str] | None = None) -> spawn.Result:
    """``argv`` with its output in the hostgen log, which says so when the timeout ended it."""
    result = spawn.run(argv, timeout=timeout, log=log, env=spawn.child_env(env),
                       grace=KILL_GRACE)
    if result.timed_out:
        log.write(f"dib-matrix: killed after {timeout:.0f} s timeout\n".encode())
        log.flush()
    return result


def new_work_dir(parent: Path | None = None) -> Path:
    # /var/tmp rather than /tmp: a tmpfs /tmp is often nodev, which debootstrap refuses.
    if parent is None and Path("/var/tmp").is_dir():
        parent = Path("/var/tmp")
    return Path(tempfile.mkdtemp(prefix="dib-matrix-rootfs-", dir=parent))


def _mounts_below(path: Path) -> list[str]:
    """Mount points at or below ``path``, deepest first."""
    prefix = str(path.resolve())
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        for line in mountinfo:
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                points.append(point)
    return sorted(points, key=len, reverse=True)


def remove_tree(path: Path) -> None:
    """Remove a bootstrap work dir, first releasing anything a killed debootstrap left mounted."""
    if not path.exists():
        return
    for point in _mounts_below(path):
        spawn.run(["umount", "--lazy", point], timeout=UMOUNT_TIMEOUT)
    if _mounts_below(path):
        raise RootfsError(f"{path} still has mounts below it; not removing it")
    shutil.rmtree(path)
