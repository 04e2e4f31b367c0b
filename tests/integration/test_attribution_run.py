"""A real regression made by a patched element, attributed to that element's file.

Two small real runs of one build cell (debian-bookworm on debian-bookworm): the first
with a copy of the dib tree, the second with a copy in which one hook of the target's
element closure fails. ``compare`` and the markdown summary must name that hook's file
as the likely cause, from what the runs recorded (``provenance``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from matrix.config.dibtree import PARTS
from tests.integration.dibhelpers import REPO

pytestmark = pytest.mark.integration

PATCHED = "elements/debootstrap/root.d/08-debootstrap"
MATRIX = """\
name: attribution
hosts: [debian-bookworm]
targets: [debian-bookworm]
checks: []
max-parallel: 1
timeout: 20m
"""


def dib_matrix(*args: str, timeout: float = 1500) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "matrix.cli", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=timeout, check=False)


def copy_tree(dest: Path) -> Path:
    """The parts of the dib tree a run uses (no git checkout: the tree digest names it)."""
    for part in PARTS:
        source = REPO / part
        if source.is_dir():
            shutil.copytree(source, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (dest / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / part)
    return dest


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("attribution")
    matrix = tmp / "matrix.yaml"
    matrix.write_text(MATRIX)
    good = copy_tree(tmp / "tree-good")
    bad = copy_tree(tmp / "tree-bad")
    hook = bad / PATCHED
    lines = hook.read_text().splitlines(keepends=True)
    hook.write_text(lines[0] + 'echo "patched for the attribution test" >&2\nexit 3\n'
                    + "".join(lines[1:]))
    out = tmp / "out"
    first = dib_matrix("run", str(matrix), "--out", str(out), "--dib-tree", str(good))
    first_dir = (out / "latest").resolve()
    second = dib_matrix("run", str(matrix), "--out", str(out), "--dib-tree", str(bad))
    second_dir = (out / "latest").resolve()
    yield first, first_dir, second, second_dir
    shutil.rmtree(out, ignore_errors=True)  # the images: disk is limited


def test_the_runs_record_what_attribution_needs(two_runs):
    first, first_dir, second, second_dir = two_runs
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert second.returncode == 1, second.stdout[-3000:] + second.stderr[-3000:]
    old, new = results(first_dir), results(second_dir)
    assert old["provenance"]["dib"]["commit"] is None  # a copy, not a checkout
    assert old["provenance"]["dib"]["digest"] != new["provenance"]["dib"]["digest"]
    assert old["provenance"]["dib"]["files"] == new["provenance"]["dib"]["files"]
    (cell,) = [c for c in old["cells"] if c["id"] == "debian-bookworm.debian-bookworm"]
    record = cell["provenance"]
    assert record["host_image"].startswith("sha256:")
    assert PATCHED in record["elements"]
    assert (record["distro"], record["suite"]) == ("debian", "bookworm")
    assert record["packages"]["libc6"]  # from the image's real manifest
    assert record["packages_manifest"] == "images/debian-bookworm/debian-bookworm.packages"
    # The mirror's Release date, fetched once for the run's suite (or unknown).
    mirrors = old["provenance"]["mirrors"]
    assert all("bookworm" in suites for suites in mirrors.values())
    if record["mirror_release_date"] is not None:
        assert any(s["bookworm"]["date"] == record["mirror_release_date"]
                   for s in mirrors.values())
    (failed,) = [c for c in new["cells"] if c["id"] == "debian-bookworm.debian-bookworm"]
    assert failed["state"] == "failed"
    assert failed["provenance"]["elements"][PATCHED] != record["elements"][PATCHED]
    assert failed["provenance"]["packages"] is None  # the build stopped before its image
    assert failed["provenance"]["failed_hook"] == {
        "element": "debootstrap", "phase": "root.d", "hook": "08-debootstrap"}


def test_compare_names_the_patched_file(two_runs):
    _, first_dir, _, second_dir = two_runs
    done = dib_matrix("compare", str(first_dir), str(second_dir), timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "regression debian-bookworm.debian-bookworm: failed: " in done.stdout, done.stdout
    assert (f"  - {PATCHED} changed (in the cell's element closure) (likely cause)"
            in done.stdout)


def test_markdown_and_html_name_the_patched_file(two_runs):
    _, first_dir, _, second_dir = two_runs
    done = dib_matrix("report", str(second_dir), "--format", "markdown", "--baseline",
                      str(first_dir), timeout=120)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert text.index("#### Regressions (1)") < text.index("#### Counts")
    assert "  - why: elements/debootstrap/root\\.d/08\\-debootstrap changed" in text
    html = dib_matrix("report", str(second_dir), "--format", "html", "--baseline",
                      str(first_dir), timeout=120)
    assert f"{PATCHED} changed (in the cell&#39;s element closure) (likely cause)" in html.stdout
