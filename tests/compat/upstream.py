"""Fetch diskimage-builder's wheel (pinned) and extract it with its files' modes.

The wheel comes from the package index through pip (``pip download``), is checked
against a pinned sha256 and kept in ``~/.cache/dib-matrix/upstream-dib/``.
:func:`extract_wheel` restores each member's Unix mode from
``ZipInfo.external_attr >> 16`` (``zipfile`` drops it, and an element's hooks must
stay executable).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Set

VERSION = "3.43.0"
WHEEL = f"diskimage_builder-{VERSION}-py3-none-any.whl"
SHA256 = "ece951ea63ea0ea55ecb4c4a75d6d453dc5e77c5558aace3dee883fa0e2dd039"
DEFAULT_CACHE = Path.home() / ".cache" / "dib-matrix" / "upstream-dib"
ELEMENTS_SUBDIR = Path("diskimage_builder") / "elements"


class UpstreamError(RuntimeError):
    """The upstream wheel could not be fetched, verified or extracted."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_wheel(cache: Path = DEFAULT_CACHE, offline: bool = False) -> Path:
    """The pinned wheel in ``cache``, downloaded with pip when it is not there yet."""
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cache / WHEEL
    if not wheel.exists():
        if offline:
            raise UpstreamError(f"{wheel} is not cached and --offline was given")
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "-d", str(cache), f"diskimage-builder=={VERSION}"],
            capture_output=True, text=True, check=False,
        )
        if done.returncode != 0 or not wheel.exists():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise UpstreamError(f"pip download of diskimage-builder=={VERSION} failed: {tail[0]}")
    actual = sha256_of(wheel)
    if actual != SHA256:
        raise UpstreamError(f"{wheel}: sha256 {actual}, expected {SHA256}")
    return wheel


def _mode(info: zipfile.ZipInfo) -> Optional[int]:
    mode = info.external_attr >> 16
    return stat.S_IMODE(mode) if mode else None


def extract_wheel(wheel: Path, dest: Path) -> Path:
    """Extract ``wheel`` into ``dest`` (replaced atomically), restoring file modes.

    Symlinks stored in the zip (mode S_IFLNK) become symlinks. Returns ``dest``.
    """
    dest = Path(dest)
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    root = partial.resolve()
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            target = (partial / info.filename).resolve()
            if root not in target.parents and target != root:
                raise UpstreamError(f"{wheel}: member {info.filename!r} escapes the tree")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            full_mode = info.external_attr >> 16
            if stat.S_ISLNK(full_mode):
                os.symlink(archive.read(info).decode(), target)
                continue
            with archive.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
            mode = _mode(info)
            if mode is not None:
                os.chmod(target, mode)
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)
    return dest


def upstream_tree(cache: Path = DEFAULT_CACHE, offline: bool = False) -> Path:
    """diskimage-builder's extracted tree (``.../diskimage_builder/elements`` inside)."""
    dest = cache / f"diskimage_builder-{VERSION}"
    stamp = dest / ".extracted"
    if not stamp.exists():
        extract_wheel(fetch_wheel(cache, offline), dest)
        stamp.write_text(SHA256 + "\n")
    return dest


def element_deps(elements_dir: Path, name: str) -> List[str]:
    path = elements_dir / name / "element-deps"
    if not path.exists():
        return []
    deps = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            deps.append(line)
    return deps


def shadow_closure(upstream: Path, name: str, bundled: Iterable[str]) -> List[str]:
    """``name`` plus its element-deps closure in ``upstream``, leaving out (and not
    following) the elements dib bundles: those resolve to dib's own copy.

    The element under test itself is always in, even when dib bundles it.
    """
    bundled_set: Set[str] = set(bundled)
    seen: Dict[str, None] = {}
    stack = [name]
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        if current != name and current in bundled_set:
            continue
        if not (upstream / current).is_dir():
            continue
        seen[current] = None
        stack.extend(reversed(element_deps(upstream, current)))
    return list(seen)


def make_shadow_dir(upstream: Path, elements: Iterable[str], dest: Path) -> Path:
    """A directory of symlinks to ``elements`` of ``upstream`` (recreated)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for name in elements:
        (dest / name).symlink_to(upstream / name, target_is_directory=True)
    return dest
