"""Helpers for integration tests that run dib-build for real on this machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Optional

REPO = Path(__file__).resolve().parents[2]


def dib_env(tmp: Path, extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIB_", "ELEMENTS_PATH"))}
    env["TMPDIR"] = str(tmp)
    env.update(extra or {})
    return env


def dib_cmd(*args: str) -> List[str]:
    return [sys.executable, "-m", "dib", *args]


def run_dib(args: List[str], env: Mapping[str, str], timeout: float = 900):
    return subprocess.run(
        dib_cmd(*args),
        env=dict(env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def build_mounts() -> List[str]:
    """dib build-tree mounts left under pytest's temp dirs (builds outside tests, e.g. a
    benchmark's, are not this test run's business)."""
    with open("/proc/mounts", encoding="utf-8") as mounts:
        return [line for line in mounts if "dib_build." in line and "/pytest-of-" in line]


def make_element(root: Path, name: str, files: Mapping[str, str]) -> Path:
    element = root / name
    for relative, text in files.items():
        path = element / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if relative.split("/")[0].endswith(".d") and not relative.startswith("environment.d"):
            path.chmod(0o755)
    return element
