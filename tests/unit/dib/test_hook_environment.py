"""The environment each hook is started with, inside and outside the chroot."""

from pathlib import Path

import pytest

from dib import build, environment
from dib.phases import HookTree, Phase

CALLER = {
    "PATH": "/usr/bin:/bin",
    "TMPDIR": "/home/someone/scratch",  # exists on the host, not in the image
    "DIB_RELEASE": "bookworm",
    "TARGET_ROOT": "/tmp/dib_build.x/mnt",
    "TMP_MOUNT_PATH": "/tmp/dib_build.x/mnt",
}


@pytest.fixture
def started(tmp_path, monkeypatch):
    """A Builder whose hooks are recorded instead of run: [(argv, env)]."""
    hooks = tmp_path / "hooks"
    for phase in (Phase.INSTALL, Phase.ROOT):
        script = hooks / phase.dirname / "10-hook"
        script.parent.mkdir(parents=True)
        script.write_text("#!/bin/bash\ntrue\n")
        script.chmod(0o755)
    calls = []
    monkeypatch.setattr(build, "run", lambda cmd, tag, env: calls.append((list(cmd), env)))
    opts = build.BuildOptions(elements=("x",), output=tmp_path / "image")
    builder = build.Builder(opts, None, HookTree(hooks), tmp_path / "mnt", dict(CALLER))
    return builder, calls, hooks


def test_hooks_in_the_chroot_get_the_images_tmp_not_the_callers(started):
    builder, calls, hooks = started
    builder._run_in_chroot(Phase.INSTALL, hooks / "install.d" / "10-hook")
    argv, env = calls[-1]
    assert argv[0] == "chroot"
    assert env["TMPDIR"] == "/tmp"
    assert env["TMP_HOOKS_PATH"] == environment.IN_TARGET_HOOKS
    assert "TARGET_ROOT" not in env and "TMP_MOUNT_PATH" not in env
    assert env["DIB_RELEASE"] == "bookworm"


def test_hooks_on_the_host_keep_the_callers_tmpdir(started):
    builder, calls, hooks = started
    builder._run_outside(Phase.ROOT, hooks / "root.d" / "10-hook")
    _, env = calls[-1]
    assert env["TMPDIR"] == "/home/someone/scratch"
    assert env["TARGET_ROOT"] == CALLER["TARGET_ROOT"]


def test_chroot_tmpdir_is_set_even_when_the_caller_had_none():
    env = environment.for_chroot({"PATH": "/bin"})
    assert env["TMPDIR"] == "/tmp"
    assert env["PATH"].startswith(f"{environment.IN_TARGET_HOOKS}/bin:")


def test_builder_leaves_its_own_environment_alone(started):
    builder, _, hooks = started
    builder._run_in_chroot(Phase.INSTALL, Path(hooks / "install.d" / "10-hook"))
    assert builder.env["TMPDIR"] == "/home/someone/scratch"
