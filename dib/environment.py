"""The environment every hook sees, and the runner that sources environment.d first."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Mapping, Sequence

from dib.errors import DibError

# Passed through from the caller; everything else is dropped so builds are reproducible.
PASSTHROUGH = (
    "HOME",
    "LANG",
    "LC_ALL",
    "TERM",
    "TZ",
    "TMPDIR",
    "USER",
    "LOGNAME",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ELEMENTS_PATH",
    "DEBOOTSTRAP_DIR",
)
PASSTHROUGH_PREFIXES = ("DIB_",)
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
IN_TARGET_HOOKS = "/tmp/in_target.d"
# Inside the chroot the caller's TMPDIR names a host path that does not exist there
# (maintainer scripts such as ca-certificates' postinst then fail): the image's own /tmp.
CHROOT_TMPDIR = "/tmp"
# Host paths that mean nothing inside the chroot.
HOST_ONLY = ("TARGET_ROOT", "TMP_MOUNT_PATH")

# Sources every environment.d file given, then runs the hook. Paths arrive as
# arguments, never spliced into shell text.
RUNNER = """#!/bin/bash
# dib hook runner: dib-run-hook SCRIPT [ENV_FILE...]
set -eu
script=$1
shift
for env_file in "$@"; do
    set +u
    # shellcheck disable=SC1090
    source "$env_file"
    set -u
done
if [ "${DIB_DEBUG_TRACE:-0}" != "0" ]; then
    exec bash -x "$script"
fi
exec "$script"
"""


def curated(base: Mapping[str, str]) -> Dict[str, str]:
    env = {k: v for k, v in base.items() if k in PASSTHROUGH or k.startswith(PASSTHROUGH_PREFIXES)}
    env["PATH"] = base.get("PATH", HOST_PATH)
    env.setdefault("LANG", "C.UTF-8")
    return env


def write_runner(hooks_root: Path) -> Path:
    runner = hooks_root / "dib-run-hook"
    runner.write_text(RUNNER)
    runner.chmod(0o755)
    return runner


def sourced_environment(env: Mapping[str, str], env_files: Sequence[Path]) -> Dict[str, str]:
    """The environment after sourcing ``env_files`` in bash (used for defaults and ``when``)."""
    if not env_files:
        return dict(env)
    script = 'for f in "$@"; do source "$f"; done; env -0'
    done = subprocess.run(
        ["bash", "-c", script, "dib-env", *map(str, env_files)],
        env=dict(env),
        capture_output=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
        raise DibError(f"sourcing environment.d failed: {detail[0]}")
    result = {}
    for item in done.stdout.split(b"\0"):
        if b"=" in item:
            key, value = item.split(b"=", 1)
            result[key.decode()] = value.decode(errors="replace")
    for noise in ("_", "SHLVL", "PWD", "OLDPWD"):
        result.pop(noise, None)
    return result


def python_for_hooks() -> Dict[str, str]:
    """Lets outside-chroot hooks run dib's helpers: ``$DIB_PYTHON -m dib.bootstrap``."""
    package_parent = str(Path(__file__).resolve().parent.parent)
    return {"DIB_PYTHON": sys.executable, "PYTHONPATH": package_parent}


def chroot_path(env: Mapping[str, str]) -> str:
    return f"{IN_TARGET_HOOKS}/bin:{HOST_PATH}"


def for_chroot(env: Mapping[str, str]) -> Dict[str, str]:
    """What a hook inside the chroot sees: ``env`` without host-only paths, TMPDIR=/tmp."""
    inner = {k: v for k, v in env.items() if k not in HOST_ONLY}
    inner["PATH"] = chroot_path(env)
    inner["TMP_HOOKS_PATH"] = IN_TARGET_HOOKS
    inner["TMPDIR"] = CHROOT_TMPDIR
    return inner


def host_path(hooks_root: Path, env: Mapping[str, str]) -> str:
    return f"{hooks_root / 'bin'}:{env.get('PATH', HOST_PATH)}"


def is_true(value: str) -> bool:
    return value.strip().lower() not in ("", "0", "false", "no")


def ensure_root() -> None:
    if os.geteuid() != 0:
        raise DibError("dib-build must run as root (debootstrap, chroot and mounts need it)")
