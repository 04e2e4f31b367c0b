"""``break=``: stop a build for an interactive shell, as diskimage-builder does.

``break`` holds a comma separated list of ``before-<phase>``, ``after-<phase>``
(phase labels such as ``install`` or ``block-device``) and ``after-error``. At
each point a shell opens on the build's terminal: inside the image for chroot
phases (proc, sys and dev mounted, the hooks under ``/tmp/in_target.d``), on
the build machine for the others (``$TARGET_ROOT`` is the image's tree). Leave
it with ``exit`` and the build goes on (``after-error``: it fails as it would
have). A build whose stdin is not a terminal logs the breakpoint and goes on.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import FrozenSet, Mapping, Optional

from dib.errors import ConfigError
from dib.phases import Phase

LOG = logging.getLogger("dib")
AFTER_ERROR = "after-error"
BREAK_VAR = "break"


def valid_points() -> FrozenSet[str]:
    points = {f"{when}-{phase.label}" for phase in Phase for when in ("before", "after")}
    return frozenset(points | {AFTER_ERROR})


def parse(env: Mapping[str, str]) -> FrozenSet[str]:
    """The breakpoints ``break`` asks for; ConfigError naming any unknown one."""
    asked = {word.strip() for word in env.get(BREAK_VAR, "").split(",") if word.strip()}
    unknown = sorted(asked - valid_points())
    if unknown:
        raise ConfigError(
            f"break={env[BREAK_VAR]}: unknown breakpoint(s) {', '.join(unknown)}; use "
            "before-<phase>, after-<phase> or after-error (phases: "
            f"{', '.join(p.label for p in Phase)})"
        )
    return frozenset(asked)


def stop_here(
    point: str,
    env: Mapping[str, str],
    chroot_root: Optional[Path] = None,
    cwd: Optional[Path] = None,
) -> None:
    """Open the shell for ``point``: inside ``chroot_root`` when given, else on the host."""
    if not sys.stdin.isatty():
        LOG.warning("break=%s: stdin is not a terminal, no shell; going on", point)
        return
    where = f"inside the image ({chroot_root})" if chroot_root else "on the build machine"
    LOG.info("break=%s: a shell %s; 'exit' goes on with the build", point, where)
    # --norc: the image's own .bashrc would replace the prompt that names the breakpoint.
    shell = ["bash", "--norc", "-i"]
    command = ["chroot", str(chroot_root), *shell] if chroot_root else shell
    # The terminal is the user's: no log capture, no timeout. The exit status is theirs.
    subprocess.run(command, env={**env, "PS1": f"dib {point} \\W# "}, cwd=cwd, check=False)
    LOG.info("break=%s: shell left, going on", point)
