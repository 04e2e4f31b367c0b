"""dpkg's extra-data.d hook that shows dib's initramfs cache to the build: builds share
the cache, and another build's cleanup may prune an image between the hook listing it
and copying it."""

import os
import subprocess
from pathlib import Path

HOOK = Path(__file__).parents[3] / "elements/dpkg/extra-data.d/50-dpkg-initramfs-cache"


def _run(tmp_path: Path, path_dirs: list[Path]) -> subprocess.CompletedProcess:
    env = {"PATH": os.pathsep.join([*map(str, path_dirs), os.environ["PATH"]]),
           "TARGET_ROOT": str(tmp_path / "root"), "DIB_IMAGE_CACHE": str(tmp_path / "cache")}
    return subprocess.run(["bash", str(HOOK)], env=env, capture_output=True, text=True,
                          timeout=30, check=False)


def test_the_cached_images_are_shown_to_the_build(tmp_path):
    (tmp_path / "cache/initramfs").mkdir(parents=True)
    (tmp_path / "cache/initramfs/a.img").write_bytes(b"A")
    done = _run(tmp_path, [])
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "root/var/cache/dib-initramfs/a.img").read_bytes() == b"A"


def test_an_image_pruned_meanwhile_is_a_cache_miss_not_a_failed_build(tmp_path):
    (tmp_path / "cache/initramfs").mkdir(parents=True)
    (tmp_path / "cache/initramfs/gone.img").write_bytes(b"G")
    (tmp_path / "cache/initramfs/kept.img").write_bytes(b"K")
    shims = tmp_path / "shims"
    shims.mkdir()
    # cp as another build's cleanup makes it: the source of gone.img vanishes first.
    real_cp = subprocess.run(["bash", "-c", "command -v cp"], capture_output=True,
                             text=True, check=True).stdout.strip()
    (shims / "cp").write_text(f'#!/bin/bash\ncase "$1" in *gone.img) rm -f "$1";; esac\n'
                              f'exec {real_cp} "$@"\n')
    (shims / "cp").chmod(0o755)
    done = _run(tmp_path, [shims])
    assert done.returncode == 0, done.stderr
    shown = tmp_path / "root/var/cache/dib-initramfs"
    assert sorted(p.name for p in shown.iterdir()) == ["kept.img"]
