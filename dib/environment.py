"""The environment every hook sees, and the runner that sources environment.d first."""

from __future__ import annotations

import importlib.util
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional, Sequence

from dib import failure, spawn
from dib.errors import DibError
from dib.phases import ENVIRONMENT_DIR, HookOrigin

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
    *spawn.PROXY_ENV,
    "ELEMENTS_PATH",
    "DEBOOTSTRAP_DIR",
)
PASSTHROUGH_PREFIXES = ("DIB_",)
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
IN_TARGET_HOOKS = "/tmp/in_target.d"
# Stand-ins dib puts first on in-image hooks' PATH for a disk build (dib/blockdevice/shims:
# grub-probe, grub-install, ... answer from the disk plan); absent otherwise.
CHROOT_SHIMS = f"{IN_TARGET_HOOKS}/dib-shims"
SHIMS_VAR = "_DIB_CHROOT_SHIMS"  # set (to 1) by a build that installed them
# Inside the chroot the caller's TMPDIR names a host path that does not exist there
# (maintainer scripts such as ca-certificates' postinst then fail): the image's own /tmp.
CHROOT_TMPDIR = "/tmp"
# Host paths that mean nothing inside the chroot.
HOST_ONLY = ("TARGET_ROOT", "TMP_MOUNT_PATH")

# dib's own library for diskimage-builder's hooks: $_LIB/img-functions, common-functions, die.
LIB_DIR = Path(__file__).resolve().parent / "lib"
# The element -> path table behind get_image_element_array (see element_array).
ELEMENT_ARRAY_VAR = "_DIB_IMAGE_ELEMENT_ARRAY"
# dib's own interpreter for its helpers ("$_DIB_PYTHON" -m dib.bootstrap). Not DIB_PYTHON:
# that one is the image's (diskimage-builder's dib-python element sets it).
SELF_PYTHON_VAR = "_DIB_PYTHON"

# Functions every hook of diskimage-builder finds exported: die (its lib/die) and
# get_image_element_array (from its element-info). Defined by the shell that runs the
# hook, so the export is in that shell's own format (also for an old bash in a chroot).
SHELL_FUNCTIONS = """die() {
    local status=$?
    set +o xtrace
    echo "$@"
    if [ "$status" -eq 0 ]; then status=1; fi
    exit "$status"
}
get_image_element_array() {
    printf '%s\\n' "${_DIB_IMAGE_ELEMENT_ARRAY-}"
}
export -f die get_image_element_array
"""

# Sources every environment.d file given, then runs the hook. Paths arrive as
# arguments, never spliced into shell text. When an environment.d file ends the runner,
# it says which one in $DIB_HOOK_FAILURE_FILE (dib's failure record names it).
RUNNER = (
    """#!/bin/bash
# dib hook runner: dib-run-hook SCRIPT [ENV_FILE...]
set -eu
script=$1
shift
"""
    + SHELL_FUNCTIONS
    + """sourcing=""
note_environment_failure() {
    if [ -n "$sourcing" ] && [ -n "${DIB_HOOK_FAILURE_FILE:-}" ]; then
        printf 'kind=environment\nenvironment=%s\n' "$sourcing" \
            > "$DIB_HOOK_FAILURE_FILE" 2>/dev/null || true
    fi
}
trap note_environment_failure EXIT
for env_file in "$@"; do
    sourcing=$env_file
    set +u
    # shellcheck disable=SC1090
    source "$env_file"
    set -u
done
sourcing=""
trap - EXIT
if [ "${DIB_DEBUG_TRACE:-0}" != "0" ]; then
    exec bash -x "$script"
fi
exec "$script"
"""
)


# Sources the environment.d files as the runner does (set -e); the file being sourced is
# kept in $1 so a failure can name it; the result goes to $1.env (the files' own output
# is free to use stdout).
SOURCE_SCRIPT = (
    """set -e
state=$1
shift
"""
    + SHELL_FUNCTIONS
    + """for env_file in "$@"; do
    printf '%s' "$env_file" > "$state"
    source "$env_file"
done
: > "$state"
env -0 > "$state.env"
"""
)
SOURCE_TIMEOUT = 60


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


def _parse_env0(blob: bytes) -> Dict[str, str]:
    result = {}
    for item in blob.split(b"\0"):
        if b"=" in item:
            key, value = item.split(b"=", 1)
            result[key.decode()] = value.decode(errors="replace")
    for noise in ("_", "SHLVL", "PWD", "OLDPWD"):
        result.pop(noise, None)
    return {k: v for k, v in result.items() if not k.startswith("BASH_FUNC_")}


def _no_origin(path: Path) -> HookOrigin:
    return HookOrigin(None, path)


def environment_failure(
    env_file: Optional[Path],
    origin_of: Callable[[Path], HookOrigin],
    status: Optional[int],
    output: Sequence[str],
    what: str = "",
) -> DibError:
    """``environment.d/NAME (element E) failed[ what]: <its own error line>``, with its record."""
    error = failure.pick_error_line(output)
    detail = f"failed{what}" + (f": {error}" if error else f" with exit code {status}")
    if env_file is None:
        return failure.note(
            DibError(f"sourcing environment.d {detail}"),
            kind="environment",
            phase=ENVIRONMENT_DIR,
            status=status,
            error=error,
        )
    origin = origin_of(env_file)
    owner = f" (element {origin.element})" if origin.element else ""
    message = f"{ENVIRONMENT_DIR}/{env_file.name}{owner} {detail}"
    return failure.note(
        DibError(message),
        kind="environment",
        phase=ENVIRONMENT_DIR,
        hook=env_file.name,
        element=origin.element,
        status=status,
        error=error,
        command=str(origin.source),
    )


def sourced_environment(
    env: Mapping[str, str],
    env_files: Sequence[Path],
    origin_of: Callable[[Path], HookOrigin] = _no_origin,
) -> Dict[str, str]:
    """The environment after sourcing ``env_files`` in bash with ``set -e``, as the hook
    runner does (used for defaults and ``when``). A failing file raises a DibError that
    names it, its element and its own error line."""
    if not env_files:
        return dict(env)
    with tempfile.TemporaryDirectory(prefix="dib-env.") as tmp:
        state = Path(tmp) / "sourcing"
        cmd = ["bash", "-c", SOURCE_SCRIPT, "dib-env", str(state), *map(str, env_files)]
        done = spawn.run(cmd, timeout=SOURCE_TIMEOUT, env=env)  # the hooks' environment
        if done.timed_out:
            what = f" (still running after {SOURCE_TIMEOUT} s)"
            raise environment_failure(_sourcing(state), origin_of, None,
                                      done.text.splitlines(), what)
        if done.returncode != 0:
            raise environment_failure(_sourcing(state), origin_of, done.returncode,
                                      done.text.splitlines())
        return _parse_env0(state.with_suffix(".env").read_bytes())


def _sourcing(state: Path) -> Optional[Path]:
    """The environment.d file being sourced when the sourcing shell stopped, if any."""
    try:
        name = state.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return Path(name) if name else None


def python_for_hooks() -> Dict[str, str]:
    """Lets outside-chroot hooks run dib's helpers: ``"$_DIB_PYTHON" -m dib.bootstrap``."""
    paths = [str(Path(__file__).resolve().parent.parent)]
    if _needs_stand_in():
        paths.append(str(STAND_IN_PYTHONPATH))
    return {SELF_PYTHON_VAR: sys.executable, "PYTHONPATH": ":".join(paths)}


# dib's stand-in diskimage_builder package (logging_config), for element helpers.
STAND_IN_PYTHONPATH = LIB_DIR / "python"
PYTHON_EXEC = "dib-python-exec"


def _needs_stand_in() -> bool:
    return importlib.util.find_spec("diskimage_builder") is None


def python_exec(hooks_root: Path) -> str:
    """DIB_PYTHON_EXEC: the interpreter running dib, as disk-image-create's. Without
    diskimage-builder installed, a wrapper in the hook tree that puts dib's stand-in
    package on its path: upstream runs helpers as ``sudo -E $DIB_PYTHON_EXEC ...``, and
    sudo drops PYTHONPATH."""
    if not _needs_stand_in():
        return sys.executable
    wrapper = hooks_root / PYTHON_EXEC
    wrapper.write_text(
        "#!/bin/sh\n# DIB_PYTHON_EXEC: dib's interpreter, with dib's stand-in diskimage_builder.\n"
        f'PYTHONPATH={shlex.quote(str(STAND_IN_PYTHONPATH))}"${{PYTHONPATH:+:$PYTHONPATH}}"\n'
        "export PYTHONPATH\n"
        f'exec {shlex.quote(sys.executable)} "$@"\n'
    )
    wrapper.chmod(0o755)
    return str(wrapper)


def _bash_quoted(value: str) -> str:
    """``value`` as bash's ``declare -p`` writes it: "..." or, with control characters, $'...'."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        named = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
        out = []
        for c in value:
            if c in named:
                out.append(named[c])
            elif ord(c) < 0x20 or ord(c) == 0x7F:
                out.append(f"\\{ord(c):03o}")
            else:
                out.append(c)
        return "$'" + "".join(out) + "'"
    return '"' + "".join("\\" + c if c in '\\"$`' else c for c in value) + '"'


def declare_dump(variables: Mapping[str, str]) -> str:
    """``DIB_ENV``: the variables as ``declare -x NAME="value"`` lines, sorted, as
    diskimage-builder's disk-image-create records the caller's DIB_* settings."""
    return "\n".join(f"declare -x {k}={_bash_quoted(v)}" for k, v in sorted(variables.items()))


def _escaped_word(text: str) -> str:
    """``text`` as one shell word with a backslash before anything not plainly safe (it
    survives the word splitting and eval of ``eval declare -A a=($(get_image_element_array))``)."""
    safe = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./+-:,@%")
    return "".join(c if c in safe else "\\" + c for c in text)


def element_array(elements: Mapping[str, str]) -> str:
    """What get_image_element_array prints: ``[name]=path ...`` for an associative array."""
    return " ".join(f"[{_escaped_word(k)}]={_escaped_word(v)}" for k, v in elements.items())


def chroot_path(env: Mapping[str, str]) -> str:
    shims = f"{CHROOT_SHIMS}:" if env.get(SHIMS_VAR) else ""
    return f"{shims}{IN_TARGET_HOOKS}/bin:{HOST_PATH}"


def for_chroot(env: Mapping[str, str]) -> Dict[str, str]:
    """What a hook inside the chroot sees: ``env`` without host-only paths, TMPDIR=/tmp."""
    inner = {k: v for k, v in env.items() if k not in HOST_ONLY}
    inner["PATH"] = chroot_path(env)
    inner["TMP_HOOKS_PATH"] = IN_TARGET_HOOKS
    inner["TMPDIR"] = CHROOT_TMPDIR
    return inner


def host_path(hooks_root: Path, env: Mapping[str, str]) -> str:
    """The elements' bin/ first, dib's stand-ins (a root-only sudo) last."""
    return f"{hooks_root / 'bin'}:{env.get('PATH', HOST_PATH)}:{LIB_DIR / 'fallback'}"


def ensure_root() -> None:
    if os.geteuid() != 0:
        raise failure.note(
            DibError("dib-build must run as root (debootstrap, chroot and mounts need it)"),
            kind="config",
        )
