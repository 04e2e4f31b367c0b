"""Upstream elements for the compatibility suite: element-deps closures and shadow dirs.

diskimage-builder's pinned wheel is fetched, verified and extracted (with its files'
modes, under a lock) by :mod:`matrix.config.upstreamdib`; its names are re-exported here.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Dict, Iterable, List, Set

from matrix.config.upstreamdib import (  # noqa: F401 - the suite's names for them
    DEFAULT_CACHE,
    ELEMENTS_SUBDIR,
    SHA256,
    VERSION,
    WHEEL,
    UpstreamError,
    extract_wheel,
    fetch_wheel,
    sha256_of,
    upstream_tree,
)


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
