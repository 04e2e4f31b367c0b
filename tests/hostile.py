"""The hostile-input harness: run ``dib-matrix`` as a user would on tampered input, and
check what an untrusted run directory, part or file must never do.

Every case runs the real command line in a child process under a timeout (a hang is
a failure, not a stuck CI job) and checks three promises:

- no traceback: bad input is a clear message, never a crash;
- the exit code the command documents (2 for unreadable input);
- nothing outside the places the command may write was touched
  (:class:`TreeWatch` compares every file's bytes and metadata before and after).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tests.resultfactory import ALL_STATES

REPO = Path(__file__).resolve().parent.parent
CASE_TIMEOUT = float(os.environ.get("DIB_MATRIX_HOSTILE_TIMEOUT", "30"))
ROUNDS_ENV = "DIB_MATRIX_FUZZ_ROUNDS"  # the seeded fuzzers' round count (60 in CI)


def fuzz_rounds(default: int = 60) -> int:
    """Rounds for a seeded fuzzer: ``DIB_MATRIX_FUZZ_ROUNDS`` (600 for a deep local run)."""
    return int(os.environ.get(ROUNDS_ENV, default))


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_cli(*args: str | Path, cwd: Path | None = None, timeout: float = CASE_TIMEOUT,
            stdin: bytes | None = None, env: dict[str, str] | None = None) -> Outcome:
    """``dib-matrix ARGS`` in a child process; fails the test on a hang or a traceback."""
    environment = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", **(env or {})}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "matrix.cli", *map(str, args)], cwd=cwd or REPO,
            input=stdin if stdin is not None else b"", capture_output=True, timeout=timeout,
            env=environment, check=False)
    except subprocess.TimeoutExpired as err:
        raise AssertionError(f"dib-matrix {' '.join(map(str, args))}: no answer in "
                             f"{timeout:.0f} s (hangs on hostile input)") from err
    outcome = Outcome(done.returncode, done.stdout.decode("utf-8", "replace"),
                      done.stderr.decode("utf-8", "replace"))
    assert "Traceback (most recent call last)" not in outcome.output, outcome.output[-3000:]
    return outcome


def _stamp(path: Path) -> tuple[Any, ...]:
    info = path.lstat()
    if path.is_symlink():
        return ("link", os.readlink(path))
    if not path.is_file():
        return ("other", info.st_mode)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return ("file", info.st_mode, info.st_size, info.st_mtime_ns, digest)


class TreeWatch:
    """Every entry under ``root`` except ``allowed`` subtrees: what changed since start."""

    def __init__(self, root: Path, *allowed: Path) -> None:
        self.root = root
        self.allowed = [a.resolve() if a.exists() else a for a in allowed]
        self.before = self._scan()

    def _permitted(self, path: Path) -> bool:
        return any(path == a or a in path.parents for a in self.allowed)

    def _scan(self) -> dict[str, tuple[Any, ...]]:
        found: dict[str, tuple[Any, ...]] = {}
        for dirpath, dirs, files in os.walk(self.root, followlinks=False):
            for name in [*dirs, *files]:
                path = Path(dirpath) / name
                if not self._permitted(path):
                    found[str(path)] = _stamp(path)
        return found

    def changes(self) -> list[str]:
        after = self._scan()
        return sorted(p for p in set(self.before) | set(after)
                      if self.before.get(p) != after.get(p))

    def assert_untouched(self) -> None:
        changed = self.changes()
        assert not changed, f"touched outside the output: {changed[:10]}"


def golden_copy(dest: Path, edit: Callable[[dict[str, Any]], Any] | None = None) -> Path:
    """A copy of the golden all-states run directory at ``dest``; ``edit`` may change
    its results.json document in place (or return a replacement document)."""
    shutil.copytree(ALL_STATES, dest)
    if edit is not None:
        path = dest / "results.json"
        document = json.loads(path.read_text(encoding="utf-8"))
        replaced = edit(document)
        document = document if replaced is None else replaced
        path.write_text(json.dumps(document, indent=2), encoding="utf-8")
    return dest


def write_results(run_dir: Path, raw: str | bytes) -> Path:
    """Replace a run directory's results.json by ``raw`` exactly (garbage included)."""
    path = run_dir / "results.json"
    path.write_bytes(raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw)
    return path
