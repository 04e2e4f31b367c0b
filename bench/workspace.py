"""The benchmark's scratch space: paths, progress output, tool virtualenvs, tree copies."""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.proc import last_lines, timed
from dib import spawn

REPO = Path(__file__).resolve().parent.parent
# What a cell needs of a dib tree: dib, elements, and the tox row's inputs.
TREE_PARTS = ("dib", "elements", "matrix/run/incontainer", "tests/__init__.py",
              "tests/unit/__init__.py", "tests/unit/dib", "tox.ini", "pyproject.toml")


class BenchError(Exception):
    """A section cannot run here (missing tool, failed install); one line."""


@dataclass(frozen=True)
class Bench:
    work: Path  # kept between runs: tool virtualenvs
    logs: Path  # this run's logs
    quick: bool
    mirror: str

    def path(self, *parts: str) -> Path:
        return self.work.joinpath(*parts)

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def py_spy(self) -> Path:
        """A sampling profiler that sees every thread (installed on first use)."""
        return venv_tool(self, "py-spy", ["py-spy"], "py-spy")

    @staticmethod
    def say(message: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def venv_tool(bench: Bench, name: str, packages: Sequence[str], program: str) -> Path:
    """``program`` from a virtualenv of ``packages`` under the work dir (made on first use)."""
    venv = bench.path("venvs", name)
    found = venv / "bin" / program
    if found.exists():
        return found
    bench.say(f"installing {', '.join(packages)} into {venv}")
    log = bench.log(f"install-{name}")
    steps = [[sys.executable, "-m", "venv", "--clear", str(venv)],
             [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *packages]]
    for argv in steps:
        result = timed(argv, log, env=spawn.child_env(), timeout=900)
        if not result.ok:
            raise BenchError(f"{' '.join(argv[:4])} failed: {last_lines(result, 2)} (see {log})")
    if not found.exists():
        raise BenchError(f"{program} missing after installing {', '.join(packages)}")
    return found


def package_version(python: Path, package: str) -> str:
    shown = spawn.run([str(python), "-m", "pip", "show", package], timeout=120,
                      errors_apart=True).text
    return next((line.split(":", 1)[1].strip() for line in shown.splitlines()
                 if line.startswith("Version:")), "?")


def copy_tree(destination: Path) -> Path:
    """A fresh copy of this checkout's dib tree, for --dib-tree (edited by the benchmark)."""
    if destination.exists():
        shutil.rmtree(destination)
    for part in TREE_PARTS:
        source = REPO / part
        target = destination / part
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            shutil.copy2(source, target)
    return destination


def write_element(tree: Path, name: str, files: dict[str, str]) -> Path:
    """An element in ``tree``'s elements/; files under a ``*.d`` phase dir are executable."""
    element = tree / "elements" / name
    for relative, text in files.items():
        path = element / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if path.parent.name.endswith(".d") and path.parent.name != "environment.d":
            path.chmod(0o755)
    return element
