"""Thirty nightlies in one output directory, through the real runner (``runner.execute``
with stand-in cells and no engine) and the reports the command line writes after each,
with ``retention: {keep-runs: 7}``. Then everything a nightly user leans on must still
hold: the newest runs, the kept one, every cell's last-good (readable, hard-linked),
``--reuse``'s index, the history index, progress estimates, shards balanced by history,
a disk budget, and a malformed run among them skipped with a warning.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from pathlib import Path

import pytest

import reports
from matrix.config.dibtree import DibTree
from matrix.config.matrixfile import load_matrix
from matrix.run import matrixrun, runner
from matrix.run.cellreport import CellReport
from matrix.run.plan import make_plan
from matrix.run.progress import load_estimates
from matrix.run.reuse import index_previous
from matrix.run.shards import estimate, load_history
from matrix.verdict.catalogue import load_catalogue
from reports.history import load_runs
from results import keeps, lastgood, treestore
from results.archive import OutDir
from results.model import Artifact, CellKind, State
from results.retention import Ledger, allocated
from results.trees import inodes
from tests.hostile import run_cli

NIGHTS, KEEP, KEPT_NIGHT = 30, 7, 3
BROKEN_FROM = 20  # debian-trixie.debian-trixie fails from this night on
IMAGE = 64 << 10
MATRIX = f"""\
hosts: [debian-bookworm, debian-trixie]
targets: [debian-bookworm, debian-trixie]
checks: []
max-parallel: 4
retention: {{keep-runs: {KEEP}}}
"""
TREE = DibTree.read(Path(__file__).resolve().parents[2])
BAD_RUN = "20250110-120000-bad0"


def night_id(night: int) -> str:
    return f"202501{night:02d}-020000-{night:04x}"


def outcome(cell_id: str, night: int) -> State:
    if cell_id == "debian-trixie.debian-trixie" and night >= BROKEN_FROM:
        return State.FAILED
    if cell_id == "debian-bookworm.debian-trixie" and night % 5 == 0:
        return State.TIMEOUT  # flaky
    return State.SUCCESS


class Nightly:
    """The runner with its engine-facing collaborators replaced (as test_runner_stages)."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.out = tmp_path / "out"
        matrix = tmp_path / "m.yaml"
        matrix.write_text(MATRIX)
        self.matrix = matrix
        self.config = load_matrix(matrix)
        self.catalogue = load_catalogue(self.config.categories)
        self.night = 0
        soak = self

        class Cells:
            def __init__(self, ctx):
                self.ctx = ctx

            def execute(self, cell, attempt):
                return soak.cell_report(self.ctx, cell)

        class Lease:
            def __init__(self, run_id):
                pass

            def hold(self, *objects):
                pass

            def release(self):
                pass

        monkeypatch.setenv("DIB_MATRIX_LEASES", str(tmp_path / "leases"))
        monkeypatch.setattr(runner, "CellRunner", Cells)
        monkeypatch.setattr(runner.leases, "RunLease", Lease)
        monkeypatch.setattr(matrixrun, "new_run_id", lambda: night_id(self.night))
        for module in (runner, matrixrun):
            monkeypatch.setattr(module, "now", lambda: f"2025-01-{self.night:02d}T02:00:00+00:00")
        monkeypatch.setattr(runner, "host_objects", lambda hosts: ())
        monkeypatch.setattr(runner, "find_mirror", lambda distro: "http://mirror.invalid/debian")
        monkeypatch.setattr(matrixrun, "recorded_base", lambda *args: None)
        monkeypatch.setattr(runner.provenance, "start", lambda *args, **kwargs: None)
        monkeypatch.setattr(runner.engine, "remove_run_objects",
                            lambda client, run_id: runner.engine.Removed(0, 0, 0))
        monkeypatch.setattr(runner, "_engine_answers", lambda client: True)

    def cell_report(self, ctx, cell) -> CellReport:
        state = outcome(cell.id, self.night)
        log = ctx.log_path(cell)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"night {self.night}: {cell.id}: {state.value}\n")
        artifacts = ()
        if cell.kind is CellKind.BUILD and state is State.SUCCESS:
            image = ctx.images_dir(cell.host.name) / f"{cell.row}.qcow2"
            image.parent.mkdir(parents=True, exist_ok=True)
            data = f"{cell.id} night {self.night}".encode().ljust(IMAGE, b".")
            image.write_bytes(data)
            digest = hashlib.sha256(data).hexdigest()
            Path(f"{image}.sha256").write_text(f"{digest}  {image.name}\n")
            artifacts = (Artifact(str(image.relative_to(ctx.settings.run_dir)), "qcow2",
                                  len(data), digest),)
        return CellReport(state, (f"{cell.id}: {state.value}",), log=log, artifacts=artifacts,
                          key=f"key-{cell.id}", category=None)

    def run(self) -> runner.MatrixRun:
        self.night += 1
        request = runner.RunRequest(self.config, make_plan(self.config), self.out, TREE,
                                    package_cache=None, dib_mount=True,
                                    catalogue=self.catalogue)
        run = runner.execute(request, None)
        reports.write_all(run.run_dir.path, run.results, history_dir=self.out)  # as runcli
        return run


@pytest.fixture(scope="module")
def soaked(tmp_path_factory):
    monkeypatch = pytest.MonkeyPatch()
    tmp = tmp_path_factory.mktemp("soak")
    nightly = Nightly(tmp, monkeypatch)
    warnings: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())  # type: ignore
    log = logging.getLogger("dib-matrix")
    log.addHandler(handler)
    level = log.level
    log.setLevel(logging.INFO)  # setLevel, not the attribute: it clears the logger's cache
    try:
        for night in range(1, NIGHTS + 1):
            nightly.run()
            if night == KEPT_NIGHT:
                keeps.mark(OutDir(nightly.out), night_id(night), "release candidate")
            if night == 10:  # a malformed run among them (a hand edit, a newer tool's run)
                (nightly.out / BAD_RUN).mkdir()
                (nightly.out / BAD_RUN / "results.json").write_text('{"run_id": ')
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        monkeypatch.undo()
    return nightly, warnings


def test_the_newest_runs_the_kept_one_and_the_malformed_one_remain(soaked):
    nightly, warnings = soaked
    left = sorted(p.name for p in nightly.out.iterdir() if not p.name.startswith("."))
    newest = [night_id(n) for n in range(NIGHTS - KEEP + 1, NIGHTS + 1)]
    assert left == sorted([night_id(KEPT_NIGHT), BAD_RUN, *newest, "index.html", "latest"])
    assert OutDir(nightly.out).latest().run_id == night_id(NIGHTS)
    assert any("unreadable run" in w and BAD_RUN in w and "--remove-bad" in w for w in warnings)


def test_every_cells_last_good_remains_readable_and_hard_linked(soaked):
    nightly, _ = soaked
    out = OutDir(nightly.out)
    found = lastgood.read_all(out, warn=pytest.fail)
    assert len(found) == 6  # 2 hosts x (hostgen + 2 targets)
    broken = found["debian-trixie.debian-trixie"]
    assert broken.run_id == night_id(BROKEN_FROM - 1)  # its run is long collected
    assert not out.run(broken.run_id).path.exists()
    for good in found.values():
        for item in good.files:
            assert hashlib.sha256(good.file(item).read_bytes()).hexdigest() == item.sha256
            if out.run(good.run_id).path.exists():
                original = out.run(good.run_id).path / item.path
                assert os.stat(good.file(item)).st_ino == os.stat(original).st_ino
    assert found["debian-bookworm.debian-trixie"].run_id == night_id(NIGHTS - 1)  # 30: timeout


def test_reuse_still_finds_reusable_cells(soaked):
    nightly, _ = soaked
    reusable = index_previous(nightly.out, "the-next-run")
    assert {key for key in reusable} >= {"key-debian-bookworm.debian-bookworm",
                                         "key-debian-trixie.debian-bookworm"}
    for entry in reusable.values():
        assert entry.run_dir.is_dir()
        for artifact in entry.cell.artifacts:
            assert (entry.run_dir / artifact.path).is_file()


def test_history_progress_and_shards_still_work(soaked, capsys):
    nightly, _ = soaked
    runs = load_runs(nightly.out)
    assert len(runs) == KEEP + 1  # the malformed run is skipped, with a warning
    assert BAD_RUN in capsys.readouterr().err
    index = (nightly.out / "index.html").read_text()
    # Broken since the first failure in the window (night 3, kept, was green).
    assert 'id="support-grid"' in index and "broken since 2025-01-24" in index
    estimates = load_estimates(nightly.out, "the-next-run")
    assert len(estimates.by_cell) == 6
    plan = make_plan(nightly.config)
    assert estimate(plan, load_history(nightly.out)).source == "history"
    done = run_cli("plan", nightly.matrix, "--shards", "2", "--history", nightly.out)
    assert done.code == 0, done.output
    assert "balanced by history" in done.output


def test_the_disk_stays_within_a_budget(soaked):
    nightly, _ = soaked
    per_run = 4 * IMAGE  # four builds a night
    # The newest runs, the kept one, and at most one older image per cell in last-good.
    budget = (KEEP + 1) * per_run + 6 * IMAGE + (512 << 10)  # + logs, reports, results
    # The dib tree the last-good builds ran (every night's is the same: kept once) is
    # a few MB whatever the images weigh: bounded on its own, not counted against them.
    out = OutDir(nightly.out)
    assert len(treestore.kept(out)) <= 1
    tree_bytes = sum(allocated(i) for i in inodes(treestore.trees_dir(out))
                     if not stat.S_ISDIR(i.st_mode))
    assert tree_bytes <= 4 << 20
    held = Ledger.of(nightly.out).total - tree_bytes
    assert held <= budget, (held, budget)
    assert held < NIGHTS * per_run / 2  # what thirty nights would hold without retention


def test_gc_and_support_read_the_soaked_archive(soaked):
    nightly, _ = soaked
    done = run_cli("gc", "--out", nightly.out, "--keep-runs", str(KEEP), "--dry-run")
    assert done.code == 0 and "would remove 0 of" in done.stdout, done.output
    support = run_cli("support", "--out", nightly.out, "--runs", "10")
    assert support.code == 0, support.output
    assert "broken since 2025-01-24" in support.stdout
    # Its last green run is gone; its last-good says when it was: newer than the window's.
    assert (f"| `debian-trixie.debian-trixie` | broken since 2025-01-24 - 1 - | "
            f"`{night_id(24)}` | `{night_id(BROKEN_FROM - 1)}` | 2025-01-19 |") in support.stdout
