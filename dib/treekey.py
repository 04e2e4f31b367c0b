"""The installed-tree cache's key: everything that shaped the tree up to post-install.d.

A cached tree stands for the phases root.d to post-install.d, so its key covers what those
phases read: dib's own code, every element file a cached phase can reach (all of an
element's files but the hooks of the phases that still run: a ``finalise.d`` change does
not miss), the packages asked for on the command line, the architecture and the
environment the hooks saw, without what differs between two builds of the same image (the
build directory, the output name, the per-run proxy). An environment value naming a file
keys the file's content too (``DIB_APT_KEYRING`` read by a hook). The repository state is
not in the key: a stored tree records the InRelease files it was installed from, and a
lookup checks them against the mirror's (see :mod:`dib.treecache`).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Mapping, Sequence, Tuple

from dib import environment, spawn
from dib.elements import Element
from dib.outputs import sha256_file
from dib.phases import Phase

FORMAT = 1  # bumped when what a stored tree holds changes
# The phases a cached tree stands for; the others run on every build.
CACHED_PHASES = (Phase.ROOT, Phase.EXTRA_DATA, Phase.PRE_INSTALL, Phase.INSTALL,
                 Phase.POST_INSTALL)
LATER_DIRS = frozenset(p.dirname for p in Phase if p not in CACHED_PHASES)
DOCS = frozenset({"README.rst", "README.md", "README"})
# Settings that differ between two builds of one image, or only steer dib itself.
PER_BUILD_ENV = frozenset({
    "DIB_ARGS", "DIB_ENV", "IMAGE_NAME", "IMAGE_ELEMENT_YAML", environment.ELEMENT_ARRAY_VAR,
    "ELEMENTS_PATH", "_LIB", "DIB_PYTHON_EXEC", "TMP_BUILD_DIR", "TMP_HOOKS_PATH",
    "TARGET_ROOT", "TMP_MOUNT_PATH", "DIB_IMAGE_CACHE", "DIB_OFFLINE", "DIB_DEBUG_TRACE",
    "PATH", "PYTHONPATH", "TMPDIR", "HOME", "TERM", "USER", "LOGNAME", "DIB_TREE_CACHE",
    "DIB_TREE_CACHE_MAX", "DIB_BASE_CACHE_MAX", *spawn.PROXY_ENV,
})
KEYED_FILE_LIMIT = 16 << 20  # a setting naming a larger file is keyed by its name only


def _files(top: Path, skip_first: Iterable[str] = ()) -> Iterator[Tuple[str, Path]]:
    """(relative path, path) of every file under ``top``, sorted, links followed as the
    hook tree's merge follows them."""
    skip = frozenset(skip_first)
    for path in sorted(top.rglob("*")):
        relative = path.relative_to(top)
        if relative.parts[0] in skip or "__pycache__" in relative.parts or not path.is_file():
            continue
        yield relative.as_posix(), path


def element_files(elements: Sequence[Element]) -> List[List[object]]:
    """Each element's files a cached phase can reach: [element, path, executable, sha256]."""
    rows: List[List[object]] = []
    for element in elements:
        for relative, path in _files(element.path, LATER_DIRS | DOCS):
            executable = bool(path.stat().st_mode & 0o111)
            rows.append([element.name, relative, executable, sha256_file(path)])
    return rows


def dib_code_digest() -> str:
    """dib's own code (how it runs hooks, chroots, installs): one digest of the package."""
    digest = hashlib.sha256()
    for relative, path in _files(Path(__file__).resolve().parent):
        digest.update(relative.encode() + b"\0" + sha256_file(path).encode() + b"\n")
    return digest.hexdigest()


def keyed_environment(env: Mapping[str, str], build_paths: Sequence[str]) -> Dict[str, str]:
    """The hooks' environment without per-build settings or values naming the build's
    own paths; a value naming a regular file also keys that file's content."""
    keyed: Dict[str, str] = {}
    for name, value in sorted(env.items()):
        if name in PER_BUILD_ENV or name.lower().endswith("_proxy"):
            continue
        if any(path and path in value for path in build_paths):
            continue
        keyed[name] = value
        digest = _named_file_digest(value)
        if digest:
            keyed[f"{name}@sha256"] = digest
    return keyed


def _named_file_digest(value: str) -> str:
    if not value.startswith("/") or "\n" in value or len(value) > 4096:
        return ""
    try:
        info = os.stat(value)
    except (OSError, ValueError):
        return ""
    if not stat.S_ISREG(info.st_mode) or info.st_size > KEYED_FILE_LIMIT:
        return ""
    try:
        return sha256_file(Path(value))
    except OSError:
        return ""


def reads_image_name(elements: Sequence[Element]) -> bool:
    """Whether a file a cached phase reaches names IMAGE_NAME: diskimage-builder's
    source-repositories writes the output's name into the image in extra-data.d."""
    for element in elements:
        for _, path in _files(element.path, LATER_DIRS | DOCS):
            with path.open("rb") as handle:
                if b"IMAGE_NAME" in handle.read(KEYED_FILE_LIMIT):
                    return True
    return False


def tree_key(
    elements: Sequence[Element],
    env: Mapping[str, str],
    packages: Sequence[str],
    build_paths: Sequence[str],
) -> str:
    """The key of the tree these inputs make (32 hex digits)."""
    inputs = {
        "format": FORMAT,
        "dib": dib_code_digest(),
        "elements": element_files(elements),
        "packages": sorted(packages),
        "environment": keyed_environment(env, build_paths),
    }
    if reads_image_name(elements):  # the output's name only where a cached phase reads it
        inputs["image_name"] = os.path.basename(env.get("IMAGE_NAME", ""))
    blob = json.dumps(inputs, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:32]
