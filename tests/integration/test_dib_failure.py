"""dib's failure record on real builds: debootstrap, chroot, apt and a full output disk."""

from __future__ import annotations

import contextlib
import re
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from dib import failure
from tests.integration.dibhelpers import build_mounts, dib_env, make_element, run_dib

pytestmark = pytest.mark.integration


def one_record(done: subprocess.CompletedProcess, output: Path) -> failure.FailureRecord:
    """The log's one dib-failure line, just before ERROR, equals the file beside the image."""
    lines = done.stdout.splitlines()
    logged = [line for line in lines if failure.LOG_PREFIX in line]
    assert len(logged) == 1, done.stdout[-3000:]
    assert logged[0] == lines[-2] and " | ERROR: " in lines[-1]
    path = output.with_name(output.name + ".failure.json")
    record = failure.read(path)
    assert record == failure.FailureRecord.from_json(logged[0])
    return record


def test_failing_post_install_hook(image_cache, tmp_path):
    elements = tmp_path / "elements"
    make_element(
        elements,
        "grow-broken",
        {
            "post-install.d/80-growroot": "#!/bin/bash\nset -eu\n"
            'echo "growing the root partition"\ngrowpart /dev/vda 1\n',
        },
    )
    env = dib_env(tmp_path, {"DIB_RELEASE": "bookworm", "ELEMENTS_PATH": str(elements)})
    output = tmp_path / "out" / "debian-bookworm"
    args = ["-o", str(output), "-t", "tar", "--image-cache", str(image_cache)]
    done = run_dib([*args, "debian-minbase", "grow-broken"], env)
    assert done.returncode == 1
    record = one_record(done, output)
    assert record.kind == "hook"
    assert (record.phase, record.hook, record.element) == (
        "post-install.d",
        "80-growroot",
        "grow-broken",
    )
    assert record.status == 127
    assert record.error == (
        "/tmp/in_target.d/post-install.d/80-growroot: line 4: growpart: command not found"
    )
    assert record.command == str(elements / "grow-broken" / "post-install.d" / "80-growroot")
    assert record.free_bytes["build"] > 0 and record.free_bytes["output"] > 0
    assert record.seconds > 0
    assert not (tmp_path / "out" / "debian-bookworm.tar").exists()
    assert not build_mounts()

    # The next build with the same -o removes the stale record; a success writes none.
    done = run_dib([*args, "debian-minbase"], env)
    assert done.returncode == 0, done.stdout[-3000:]
    assert not output.with_name("debian-bookworm.failure.json").exists()
    assert failure.LOG_PREFIX not in done.stdout


def test_unknown_package_is_kind_packages_with_apts_line(image_cache, tmp_path):
    env = dib_env(tmp_path, {"DIB_RELEASE": "bookworm"})
    output = tmp_path / "out" / "x"
    args = ["-o", str(output), "-t", "tar", "--image-cache", str(image_cache)]
    done = run_dib([*args, "-p", "no-such-package-dib", "debian-minbase"], env)
    assert done.returncode == 1
    record = one_record(done, output)
    assert record.kind == "packages"
    assert (record.phase, record.hook, record.element) == (
        "install.d",
        "01-package-installs",
        "package-installs",
    )
    assert record.status == 100
    assert record.error == "E: Unable to locate package no-such-package-dib"
    assert record.command.startswith("apt-get -y ")
    assert record.command.endswith("install --no-install-recommends no-such-package-dib")


def test_debootstrap_failure_is_kind_debootstrap_with_its_e_line(tmp_path):
    env = dib_env(
        tmp_path, {"DIB_RELEASE": "bookworm", "DIB_DEBOOTSTRAP_INCLUDE": "no-such-deb-dib"}
    )
    output = tmp_path / "out" / "x"
    args = ["-o", str(output), "-t", "tar", "--image-cache", str(tmp_path / "cache")]
    done = run_dib([*args, "debian-minbase"], env, timeout=300)
    assert done.returncode == 1
    record = one_record(done, output)
    assert record.kind == "debootstrap"
    assert (record.phase, record.hook, record.element) == (
        "root.d",
        "08-debootstrap",
        "debootstrap",
    )
    assert record.error == "E: Couldn't find these debs: no-such-deb-dib"
    assert record.status == 1
    assert record.command.startswith("debootstrap --variant=minbase")


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_full_output_disk_is_kind_output_and_still_gets_its_record(image_cache, tmp_path):
    env = dib_env(tmp_path, {"DIB_RELEASE": "bookworm"})
    with small_tmpfs(tmp_path / "out", "2M") as out:
        output = out / "x"
        args = ["-o", str(output), "-t", "tar", "--image-cache", str(image_cache)]
        done = run_dib([*args, "debian-minbase"], env)
        assert done.returncode == 1
        record = one_record(done, output)
        assert not (out / "x.tar").exists()  # the truncated tarball is gone
    assert record.kind == "output" and record.status == 2
    assert re.fullmatch(rf"tar: {out}/x\.tar: Wrote only \d+ of 10240 bytes", record.error)
    assert record.command.startswith("tar -C $TMP_BUILD_DIR/mnt ")
    assert record.free_bytes["output"] < 2 << 20
