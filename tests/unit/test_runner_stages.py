"""matrix.run.runner.execute, stage by stage, with no engine: what the run directory,
the lease and the engine are left with after a run that ends well, fails fast, is
interrupted, loses its engine, or is resumed.

The cells are a stand-in (``FakeCells``); everything else is the runner's own: the
results and their directory (``results.archive``), the scheduler, the verdict stage.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import requests

from matrix.config.dibtree import DibTree
from matrix.config.matrixfile import load_matrix
from matrix.run import matrixrun, runner
from matrix.run.cellreport import CellReport
from matrix.run.plan import make_plan
from results.archive import OutDir, StoredRun
from results.model import State

MATRIX = """\
hosts: [debian-bookworm]
targets: [debian-bookworm, debian-trixie]
checks: [tox]
"""
TREE = DibTree.read(Path(__file__).resolve().parents[2])


class FakeLease:
    def __init__(self, run_id: str) -> None:
        self.run_id, self.held, self.released = run_id, [], False

    def hold(self, *objects: str | None) -> None:
        self.held += objects

    def release(self) -> None:
        self.released = True


class FakeClient:
    def __init__(self) -> None:
        self.answers = True

    def version(self) -> dict[str, str]:
        return {"Version": "26.1", "ApiVersion": "1.45"}

    def ping(self) -> bool:
        if not self.answers:
            raise requests.ConnectionError("engine gone")
        return True


class Harness:
    """The runner's collaborators replaced; what happened to them kept here."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.out = tmp_path / "out"
        self.outcomes: dict[str, State] = {}  # cell id -> its state (else success)
        self.ran: list[str] = []
        self.leases: list[FakeLease] = []
        self.removed: list[str] = []
        self.client = FakeClient()
        matrix = tmp_path / "m.yaml"
        matrix.write_text(MATRIX)
        self.config = load_matrix(matrix)
        harness = self

        class FakeCells:
            def __init__(self, ctx):
                self.ctx = ctx

            def execute(self, cell, attempt):
                harness.ran.append(cell.id)
                state = harness.outcomes.get(cell.id, State.SUCCESS)
                log = self.ctx.log_path(cell)
                log.parent.mkdir(parents=True, exist_ok=True)
                log.write_text(f"{cell.id}: {state.value}\n")
                if state is State.ERROR:
                    harness.client.answers = False
                return CellReport(state, (f"{cell.id}: {state.value}",), log=log)

        def lease(run_id):
            self.leases.append(FakeLease(run_id))
            return self.leases[-1]

        monkeypatch.setattr(runner, "CellRunner", FakeCells)
        monkeypatch.setattr(runner.leases, "RunLease", lease)
        monkeypatch.setattr(runner, "host_objects", lambda hosts: ("host-image",))
        monkeypatch.setattr(runner, "find_mirror", lambda distro: "http://mirror.invalid/debian")
        monkeypatch.setattr(matrixrun, "recorded_base", lambda *args: None)
        monkeypatch.setattr(runner, "keep_host_images", lambda *args: None)  # engine images
        monkeypatch.setattr(runner.provenance, "start", lambda *args, **kwargs: None)
        monkeypatch.setattr(runner.engine, "remove_run_objects", self.remove_run_objects)
        monkeypatch.setattr(runner, "_engine_answers", lambda client: client.answers)

    def remove_run_objects(self, client, run_id: str) -> runner.engine.Removed:
        self.removed.append(run_id)
        return runner.engine.Removed(0, 0, 0)

    def request(self, **changes) -> runner.RunRequest:
        config = self.config
        if "fail_fast" in changes:  # one cell at a time: what fail-fast stops is known
            config = dataclasses.replace(config, fail_fast=changes.pop("fail_fast"),
                                         max_parallel=1)
        return runner.RunRequest(config, make_plan(config), self.out, TREE,
                                 package_cache=None, dib_mount=True, **changes)

    def execute(self, **changes) -> runner.MatrixRun:
        return runner.execute(self.request(**changes), self.client)


@pytest.fixture
def harness(tmp_path, monkeypatch) -> Harness:
    return Harness(tmp_path, monkeypatch)


def states(run: runner.MatrixRun) -> dict[str, State]:
    return {c.id: c.state for c in run.run_dir.load().cells}


def test_a_run_announces_itself_runs_every_cell_and_cleans_up(harness):
    seen = {}

    def on_start(run):  # the run directory is there before the first cell
        seen["pending"] = set(states(run).values())
        seen["latest"] = OutDir(harness.out).latest()

    run = runner.execute(harness.request(), harness.client, on_start=on_start)
    assert seen == {"pending": {State.PENDING}, "latest": run.run_dir}
    assert set(states(run).values()) == {State.SUCCESS}
    assert len(harness.ran) == 4
    saved = run.run_dir.load()
    assert saved.finished and not saved.interrupted
    assert saved.engine == {"version": "26.1", "api": "1.45", "docker_host": saved.engine[
        "docker_host"], "cells": "local"}
    assert saved.cell("debian-bookworm", "debian-trixie").log == \
        "logs/debian-bookworm/debian-trixie.log"
    [lease] = harness.leases
    assert lease.held == ["host-image"] and lease.released
    assert harness.removed == [run.results.run_id]


def test_fail_fast_skips_what_did_not_start(harness):
    harness.outcomes["debian-bookworm.tox"] = State.FAILED
    run = harness.execute(fail_fast=True)
    found = run.run_dir.load()
    assert found.cell("debian-bookworm", "tox").state is State.FAILED
    skipped = [c for c in found.cells if c.reason == "cancelled by fail-fast"]
    assert skipped and all(c.state is State.SKIPPED for c in skipped)
    assert harness.leases[0].released
    assert harness.removed.count(run.results.run_id) >= 2  # stopped, then at the end


def test_ctrl_c_keeps_what_finished_and_releases_the_lease(harness):
    def interrupted(run):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runner.execute(harness.request(), harness.client, on_start=interrupted)
    [run_dir] = [s.run_dir for s in OutDir(harness.out).runs()]
    saved = OutDir(harness.out).run(run_dir.name).load()
    assert saved.interrupted and saved.finished
    assert {c.state for c in saved.cells} == {State.PENDING}
    assert harness.leases[0].released and harness.ran == []


def test_a_lost_engine_leaves_the_rest_pending_and_the_run_interrupted(harness):
    harness.outcomes["debian-bookworm.hostgen"] = State.ERROR
    run = harness.execute()
    assert run.engine_lost == "debian-bookworm.hostgen: error"
    saved = run.run_dir.load()
    assert saved.interrupted and "lost" in saved.engine
    assert {c.state for c in saved.cells} == {State.PENDING}
    assert harness.leases[0].released


def test_a_resume_runs_only_what_did_not_finish_and_clears_its_images(harness):
    harness.outcomes["debian-bookworm.debian-trixie"] = State.ERROR
    first = harness.execute()
    images = first.run_dir.images("debian-bookworm")
    images.mkdir(parents=True)
    (images / "debian-trixie.qcow2").write_text("half an image")
    (images / "debian-bookworm.qcow2").write_text("a finished image")
    harness.ran.clear()
    harness.outcomes.clear()
    harness.client.answers = True
    again = harness.execute(resume=StoredRun(first.run_dir.path, first.run_dir.load()))
    assert again.run_dir == first.run_dir
    # hostgen is checked again (cheap when cached); the finished build is kept
    assert harness.ran == ["debian-bookworm.hostgen", "debian-bookworm.debian-trixie"]
    assert sorted(p.name for p in images.iterdir()) == ["debian-bookworm.qcow2"]
    assert set(states(again).values()) == {State.SUCCESS}


def test_a_directory_in_the_latest_links_place_is_left_and_the_run_goes_on(harness, caplog):
    (harness.out / "latest").mkdir(parents=True)
    (harness.out / "latest" / "notes.txt").write_text("mine")
    run = harness.execute()
    assert set(states(run).values()) == {State.SUCCESS}
    assert (harness.out / "latest" / "notes.txt").read_text() == "mine"
    assert "not the link to the newest run" in caplog.text
