"""diskimage-builder's own element tree, from its pinned wheel.

The wheel comes from the package index through pip (``pip download``), is checked
against the sha256 pinned for its version in :data:`PINS` and kept in
``~/.cache/dib-matrix/upstream-dib/``. :func:`extract_wheel` restores each
member's Unix mode from ``ZipInfo.external_attr >> 16`` (``zipfile`` drops it, and
an element's hooks must stay executable). Fetching and extracting one version hold
an exclusive lock (``.diskimage_builder-<version>.lock`` in the cache), so two runs
(or a run and the compatibility suite) never race on the same tree.

Used by the compatibility suite (``tests/compat``) and by matrix targets with the
key ``diskimage-builder-elements`` (the release's whole element tree first on
``ELEMENTS_PATH`` in the cell).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import stat
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

from dib import spawn

# diskimage-builder releases whose wheel may be used, by version: the wheel's sha256.
PINS: dict[str, str] = {
    "3.43.0": "ece951ea63ea0ea55ecb4c4a75d6d453dc5e77c5558aace3dee883fa0e2dd039",
}
VERSION = "3.43.0"  # the compatibility suite's release
SHA256 = PINS[VERSION]
DEFAULT_CACHE = Path.home() / ".cache" / "dib-matrix" / "upstream-dib"
ELEMENTS_SUBDIR = Path("diskimage_builder") / "elements"
STAMP = ".extracted"  # in an extracted tree: the sha256 of the wheel it came from
PIP_TIMEOUT = 600.0


def wheel_name(version: str) -> str:
    return f"diskimage_builder-{version}-py3-none-any.whl"


WHEEL = wheel_name(VERSION)


class UpstreamError(RuntimeError):
    """The upstream wheel could not be fetched, verified or extracted."""


def pinned_sha256(version: str) -> str:
    """The pinned sha256 of ``version``'s wheel; UpstreamError naming the known ones."""
    try:
        return PINS[version]
    except KeyError:
        raise UpstreamError(f"diskimage-builder {version} has no pinned sha256; known: "
                            + ", ".join(sorted(PINS))) from None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def locked(cache: Path, version: str) -> Iterator[None]:
    """Hold the exclusive lock of ``version``'s wheel and tree in ``cache``."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f".diskimage_builder-{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def fetch_wheel(cache: Path = DEFAULT_CACHE, offline: bool = False,
                version: str = VERSION) -> Path:
    """The pinned wheel in ``cache``, downloaded with pip when it is not there yet.

    Call it under :func:`locked` when another process may fetch the same version.
    """
    expected = pinned_sha256(version)
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cache / wheel_name(version)
    if not wheel.exists():
        if offline:
            raise UpstreamError(f"{wheel} is not cached and --offline was given")
        what = f"pip download of diskimage-builder=={version}"
        try:
            # pip's own settings (index, certificates, proxies, its config file) are the
            # user's: pip gets the whole environment, on purpose.
            done = spawn.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                 "--disable-pip-version-check", "-d", str(cache),
                 f"diskimage-builder=={version}"],
                timeout=PIP_TIMEOUT, env=os.environ)
        except OSError as err:
            raise UpstreamError(f"{what} failed: {err}") from err
        if done.timed_out:
            raise UpstreamError(f"{what} failed: no end within {PIP_TIMEOUT:.0f} s")
        if done.returncode != 0 or not wheel.exists():
            raise UpstreamError(f"{what} failed: {(done.tail(1) or ['no output'])[0]}")
    actual = sha256_of(wheel)
    if actual != expected:
        raise UpstreamError(f"{wheel}: sha256 {actual}, expected {expected}")
    return wheel


def _mode(info: zipfile.ZipInfo) -> int | None:
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


def tree_path(cache: Path, version: str) -> Path:
    return cache / f"diskimage_builder-{version}"


def cached_tree(cache: Path = DEFAULT_CACHE, version: str = VERSION) -> Path | None:
    """``version``'s extracted tree when it is complete in ``cache`` (nothing fetched)."""
    dest = tree_path(cache, version)
    try:
        stamp = (dest / STAMP).read_text().strip()
    except OSError:
        return None
    return dest if stamp == PINS.get(version) else None


def upstream_tree(cache: Path = DEFAULT_CACHE, offline: bool = False,
                  version: str = VERSION) -> Path:
    """diskimage-builder's extracted tree (``.../diskimage_builder/elements`` inside),
    fetched and extracted under the version's lock when it is not cached yet."""
    expected = pinned_sha256(version)
    found = cached_tree(cache, version)
    if found is not None:
        return found
    with locked(cache, version):
        found = cached_tree(cache, version)  # another process may have just made it
        if found is not None:
            return found
        dest = extract_wheel(fetch_wheel(cache, offline, version), tree_path(cache, version))
        (dest / STAMP).write_text(expected + "\n")
    return dest


def elements_dir(cache: Path = DEFAULT_CACHE, offline: bool = False,
                 version: str = VERSION) -> Path:
    """``version``'s element tree, fetched when needed."""
    return upstream_tree(cache, offline, version) / ELEMENTS_SUBDIR


def cached_elements_dir(cache: Path = DEFAULT_CACHE, version: str = VERSION) -> Path | None:
    tree = cached_tree(cache, version)
    return tree / ELEMENTS_SUBDIR if tree is not None else None
