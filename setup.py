"""Build step: ship the repository's top-level data inside the packages.

``elements/``, ``hosts/``, ``targets/`` and the tox row's inputs (``tox.ini``,
``pyproject.toml``, ``tests/unit/dib``) sit at the top of the repository, outside
every package, where a checkout (and ``--dib-tree``) uses them. A wheel has no
such top level, so ``build_py`` copies each into the package that reads it, at
the place ``dib/bundled.py``'s ``INSTALLED`` table names; ``dib.bundled.path``
finds them there once installed. Editable installs read the checkout and copy
nothing. Everything else is declared in setup.cfg.
"""

import importlib.util
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def _installed_table() -> dict:
    spec = importlib.util.spec_from_file_location("_dib_bundled", HERE / "dib" / "bundled.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.INSTALLED


def _ignore(_directory, names):
    return [n for n in names if n == "__pycache__" or n.endswith((".pyc", ".pyo"))]


class BuildPyWithData(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for name, (package, inside) in _installed_table().items():
            source = HERE / name
            dest = Path(self.build_lib) / package / inside
            if dest.exists():
                shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
            dest.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, dest, ignore=_ignore)  # keeps the hooks' x bits
            else:
                shutil.copy2(source, dest)


setup(cmdclass={"build_py": BuildPyWithData})
