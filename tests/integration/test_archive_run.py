"""The run archive after real runs: retention collects the older run at the end of the
newer one, and the older run's successes stay available as their cells' last-good."""

import hashlib

import pytest

from results import lastgood
from results.archive import OutDir
from tests.integration.matrixhelpers import cells_of, dib_matrix, run_containers, write_matrix

pytestmark = pytest.mark.integration

MATRIX = """\
name: archive
hosts: [debian-bookworm]
targets: [debian-bookworm]
checks: []
retention: {keep-runs: 1}
"""
# The second night builds nothing: the build is excluded, so its last success stays
# the first run's, which retention collects.
EXCLUDED = MATRIX + """\
exclude:
  - target: debian-bookworm
    reason: the second night only checks its host
"""


def test_retention_collects_the_older_run_and_its_last_good_stays(tmp_path):
    out = tmp_path / "out"
    first = dib_matrix("run", str(write_matrix(tmp_path, MATRIX)), "--out", str(out))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    first_dir = (out / "latest").resolve()
    cells, _ = cells_of(first_dir)
    (artifact,) = cells["debian-bookworm.debian-bookworm"]["artifacts"]

    second_matrix = tmp_path / "second.yaml"
    second_matrix.write_text(EXCLUDED)
    second = dib_matrix("run", str(second_matrix), "--out", str(out))
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    second_dir = (out / "latest").resolve()
    assert second_dir != first_dir and not first_dir.exists()
    assert f"retention: removed {first_dir.name}: beyond the newest 1" in second.stdout
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        second_dir.name, "index.html", "latest"]

    good = lastgood.read(OutDir(out), "debian-bookworm", "debian-bookworm")
    assert good is not None and good.run_id == first_dir.name
    (image,) = [f for f in good.files if f.path == artifact["path"]]
    assert hashlib.sha256(good.file(image).read_bytes()).hexdigest() == artifact["sha256"]
    assert lastgood.read(OutDir(out), "debian-bookworm", "hostgen").run_id == second_dir.name

    shown = dib_matrix("show", str(second_dir), "debian-bookworm.debian-bookworm", "--last-good")
    assert shown.returncode == 0 and f"{first_dir.name} (run since collected)" in shown.stdout
    assert run_containers(second_dir) == []
