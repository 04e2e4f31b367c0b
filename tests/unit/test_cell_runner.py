"""The per-cell boundary: an engine that goes away is an engine error, not 'internal';
one budget covers a cell's container and the checks of its images."""

import re
import threading
import time
from types import SimpleNamespace

import requests.exceptions

from matrix.containers import engine
from matrix.run import cells
from matrix.run.cells import CellRunner
from matrix.verdict.verify import Deadline, Expectation, verify_images
from matrix.verdict.verify.limits import VerifyError
from matrix.verdict.verify.tools import run_tool
from results.model import CellKind, ImageCheck, State


def test_a_lost_engine_connection_is_an_engine_error(tmp_path, monkeypatch):
    log = tmp_path / "cell.log"
    ctx = SimpleNamespace(log_path=lambda cell: log)
    runner = CellRunner(ctx)

    def lost(cell, log):
        raise requests.exceptions.ConnectionError("('Connection aborted.', FileNotFoundError)")

    monkeypatch.setattr(runner, "_in_container", lost)
    report = runner.execute(SimpleNamespace(kind=CellKind.BUILD), attempt=1)
    assert report.state is State.ERROR
    assert report.evidence[0].startswith("engine error: the container engine stopped answering")
    assert "internal" not in log.read_text()


# ---- one budget per cell: the container, then the checks of its images --------------

CELL_TIMEOUT = 2.0  # seconds: the cell's whole budget
CONTAINER_SECONDS = 1.2  # what the fake build container takes of it


def _build_cell(tmp_path, monkeypatch, checks, seconds=CONTAINER_SECONDS):
    """A build cell whose container exits 0 after ``seconds`` with a tar image, and
    whose image checks are ``checks(images, expect, run_dir, timeout)``."""
    images = tmp_path / "images" / "h"
    images.mkdir(parents=True)
    (images / "t.tar").write_bytes(b"image")
    cell = SimpleNamespace(kind=CellKind.BUILD, host=SimpleNamespace(name="h"), row="t",
                           target=SimpleNamespace(name="t", outputs=("tar",)), env=())
    log = tmp_path / "cell.log"
    spec = engine.CellSpec(run_id="r", cell_id="h.t", host="h", image="img", command=("dib",),
                           log_path=log, timeout=CELL_TIMEOUT)

    def container(client, spec):
        time.sleep(seconds)
        return engine.CellResult("h.t", "c", 0, False, log, seconds)

    ctx = SimpleNamespace(
        settings=SimpleNamespace(run_dir=tmp_path, extra_env={},
                                 config=SimpleNamespace(timeout=CELL_TIMEOUT)),
        hosts=SimpleNamespace(facts=lambda host: None), keys=None, reusable=None,
        layers=None, cluster=None, client=None, stop=threading.Event(), run_cell=container,
        log_path=lambda cell: log, images_dir=lambda host: images,
        elements_dirs=lambda cell: [])
    runner = CellRunner(ctx)
    monkeypatch.setattr(runner, "spec", lambda cell: spec)
    monkeypatch.setattr(cells, "expectation_for", lambda *args: Expectation("debian", "bookworm"))
    monkeypatch.setattr(cells, "verify_images", checks)
    return runner, cell, log


def _deadline(timeout):
    return timeout if isinstance(timeout, Deadline) else Deadline.after(timeout)


def slow_checks(images, expect, run_dir, timeout):
    """A check whose tool would run for 30 s: it ends at the deadline it is given."""
    try:
        run_tool(["sleep", "30"], _deadline(timeout))
    except VerifyError as err:
        return [ImageCheck("qemu-img check", False, f"qemu-img check: {err}", "images/h/t.tar")]
    return [ImageCheck("qemu-img check", True, "no errors", "images/h/t.tar")]


def test_checks_that_outlast_the_budget_end_the_cell_as_timeout_within_it(tmp_path, monkeypatch):
    runner, cell, log = _build_cell(tmp_path, monkeypatch, slow_checks)
    started = time.monotonic()
    report = runner.execute(cell, attempt=1)
    took = time.monotonic() - started
    assert report.state is State.TIMEOUT
    assert report.evidence == ("cell timed out after 2 s (verifying its images)",)
    assert re.match(r"^cell timed out after \d+", report.evidence[0])  # the catalogue's pattern
    assert report.checks and not report.checks[0].ok  # what was cut short stays on record
    assert took < CELL_TIMEOUT + 1.0, f"the cell took {took:.1f} s of a {CELL_TIMEOUT} s budget"
    assert log.read_text().splitlines()[-1] == report.evidence[0]


def test_checks_within_the_budget_decide_the_verdict(tmp_path, monkeypatch):
    def wrong_release(images, expect, run_dir, timeout):
        assert 0 < _deadline(timeout).left() <= CELL_TIMEOUT - CONTAINER_SECONDS
        return [ImageCheck("os-release", False, "image is bookworm, target wants forky")]

    runner, cell, _ = _build_cell(tmp_path, monkeypatch, wrong_release)
    report = runner.execute(cell, attempt=1)
    assert report.state is State.FAILED
    assert report.evidence == ("verify: os-release: image is bookworm, target wants forky",)


def test_a_container_that_used_the_whole_budget_leaves_no_time_for_checks(tmp_path,
                                                                         monkeypatch):
    # The engine's kill came a moment late and the build exited 0 at the limit: the
    # real checks are not made, and the cell is a timeout, not a success nor a failure.
    runner, cell, _ = _build_cell(tmp_path, monkeypatch, verify_images,
                                  seconds=CELL_TIMEOUT + 0.1)
    report = runner.execute(cell, attempt=1)
    assert report.state is State.TIMEOUT
    assert report.evidence == ("cell timed out after 2 s (verifying its images)",)
    assert all("ran out of time" in check.detail for check in report.checks)


def test_checks_that_pass_in_the_budget_make_a_success(tmp_path, monkeypatch):
    def passing(images, expect, run_dir, timeout):
        return [ImageCheck("os-release", True, "debian bookworm", "images/h/t.tar")]

    runner, cell, _ = _build_cell(tmp_path, monkeypatch, passing, seconds=0.1)
    report = runner.execute(cell, attempt=1)
    assert report.state is State.SUCCESS and report.checks[0].ok
