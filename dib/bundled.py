"""Where the data shipped with dib-matrix is: the one place that knows.

In a source checkout the data directories sit beside the packages, at the top of
the repository (``elements/``, ``hosts/``, ``targets/``, ``tox.ini``,
``tests/unit/dib``, ...). So they do in a dib tree copied into a host container
(``/opt/dib-matrix``), which is laid out like a checkout.

An installed wheel has no such top level: its build step (``setup.py``) copies
each of them into a package, at the place ``INSTALLED`` names, and ``path``
finds them there. That dib's elements and its self-test (the matrix's tox row)
go into ``dib`` and the matrix's hosts and targets into ``matrix`` keeps each
with the package that reads it.

This module runs inside host containers too (Python 3.9, stdlib only) and
imports no other part of dib-matrix; ``setup.py`` reads ``INSTALLED`` from it.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path
from typing import Dict, Tuple

PACKAGE = Path(__file__).resolve().parent
# A checkout's root, a copied dib tree's root, or (installed) site-packages.
SOURCE_ROOT = PACKAGE.parent

# A checkout's top-level data path -> (package, path inside it) in an installed wheel.
INSTALLED: Dict[str, Tuple[str, str]] = {
    "elements": ("dib", "elements"),
    # The tox row's inputs, laid out as in a checkout under dib/selftest.
    "tox.ini": ("dib", "selftest/tox.ini"),
    "pyproject.toml": ("dib", "selftest/pyproject.toml"),
    "tests/__init__.py": ("dib", "selftest/tests/__init__.py"),
    "tests/unit/__init__.py": ("dib", "selftest/tests/unit/__init__.py"),
    "tests/unit/dib": ("dib", "selftest/tests/unit/dib"),
    "hosts": ("matrix", "data/hosts"),
    "targets": ("matrix", "data/targets"),
}


def installed() -> bool:
    """Whether this is an installed wheel (its build step put the elements into dib)."""
    return (PACKAGE / INSTALLED["elements"][1]).is_dir()


def path(name: str) -> Path:
    """Where the checkout path ``name`` (e.g. ``hosts``, ``tests/unit/dib``) is here.

    A checkout (or a copied dib tree) answers with its own file; an installed
    wheel with the copy inside its package. Other paths (``dib``,
    ``matrix/run/incontainer``) are the same in both. The path may not exist (a dib
    tree in a host container has no ``hosts``).
    """
    if name not in INSTALLED or not installed():
        return SOURCE_ROOT / name
    package, inside = INSTALLED[name]
    return Path(os.fspath(importlib.resources.files(package))) / inside

