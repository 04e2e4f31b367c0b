"""Cause-aware retries with real cells: a mirror no one answers on is tried again after
the back-off; a release the host's debootstrap has no script for is not, and says why."""

import time

import pytest

from tests.integration.matrixhelpers import cells_of, dib_matrix, write_matrix

pytestmark = pytest.mark.integration

UNREACHABLE_TARGET = """\
name: unreachable-mirror
description: bookworm from a mirror nothing answers on (a closed port on loopback)
elements: [debian-minbase]
env:
  DIB_RELEASE: bookworm
  DIB_DISTRIBUTION_MIRROR: http://127.0.0.1:9/debian
outputs: [tar]
"""


def test_only_a_cause_a_retry_can_fix_is_retried(tmp_path):
    (tmp_path / "targets").mkdir()
    (tmp_path / "targets" / "unreachable-mirror.yaml").write_text(UNREACHABLE_TARGET)
    matrix = write_matrix(tmp_path, """\
name: retries
hosts: [debian-bookworm]
targets: [debian-forky, targets/unreachable-mirror.yaml]
checks: []
max-parallel: 2
timeout: 10m
retries: 2
retry-delay: 1s
""")
    started = time.monotonic()
    done = dib_matrix("run", str(matrix), "--out", str(tmp_path / "out"), "--no-package-cache")
    seconds = time.monotonic() - started
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    run_dir = (tmp_path / "out" / "latest").resolve()
    cells, data = cells_of(run_dir)
    assert data["options"]["retry_delay"] == 1.0
    unreachable = cells["debian-bookworm.unreachable-mirror"]
    assert unreachable["category"]["id"] == "mirror-unreachable", unreachable
    assert unreachable["attempts"] == 3
    assert unreachable["retry"] == (
        "attempt 1: mirror/network unreachable; retried after 1 s; "
        "attempt 2: mirror/network unreachable; retried after 2 s; "
        "attempt 3: mirror/network unreachable; no retries left (retries: 2)")
    log = (run_dir / unreachable["log"]).read_text()
    assert "# dib-matrix: attempt 3" in log
    forky = cells["debian-bookworm.debian-forky"]
    assert forky["attempts"] == 1
    assert forky["retry"] == ("not retried: No such script: /usr/share/debootstrap/scripts/"
                              "forky does not change on a retry")
    report = (run_dir / "report.txt").read_text()
    assert "not retried: No such script: /usr/share/debootstrap/scripts/forky" in report
    assert "not retried: No such script" in (run_dir / "report.html").read_text()
    print(f"run with retries took {seconds:.1f} s")
