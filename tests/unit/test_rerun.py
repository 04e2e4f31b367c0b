"""matrix.run.rerun (run --resume RUN_DIR --cells GLOB) and dib-matrix show."""

from __future__ import annotations

import pytest

from matrix.cli import main
from matrix.config.matrixfile import load_matrix
from matrix.run import rerun
from matrix.run.plan import make_plan
from results.model import Artifact, Category, Cell, RunResults, State
from results.reader import ResultsError, read_results
from results.store import save

MATRIX = """\
hosts: [debian-bookworm, debian-trixie]
targets: [debian-bookworm, debian-forky, debian-bookworm-vm]
checks: [tox]
"""


@pytest.fixture
def plan(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(MATRIX)
    return make_plan(load_matrix(path))


def make_results(plan, states=None, run_dir=None) -> RunResults:
    states = states or {}
    results = RunResults("run-1", "m.yaml", [h.name for h in plan.hosts], list(plan.rows))
    for planned in plan.cells:
        state = states.get(planned.id, State.SUCCESS)
        log = f"logs/{planned.host.name}/{planned.row.replace(':', '-')}.log"
        cell = Cell(planned.host.name, planned.row, planned.kind, state, attempts=1,
                    duration=2.0, log=log, reproducer="docker run x")
        if state is State.FAILED:
            cell.category = Category("no-such-script", "No such script: .../forky")
            cell.evidence = "E: No such script: forky"
        results.cells.append(cell)
        if run_dir is not None:
            (run_dir / log).parent.mkdir(parents=True, exist_ok=True)
            (run_dir / log).write_text(f"first log of {cell.id}\n")
    return results


def test_choose_globs_add_hostgen_and_say_why(plan):
    results = make_results(plan, {"debian-trixie.debian-forky": State.FAILED})
    choice = rerun.choose(plan, results, ["debian-trixie.debian-forky"])
    assert choice.cells == ("debian-trixie.hostgen", "debian-trixie.debian-forky")
    assert any("debian-trixie.hostgen: runs too" in n for n in choice.notes)


def test_choose_a_build_reruns_its_boot_row(plan):
    results = make_results(plan)
    choice = rerun.choose(plan, results, ["*.debian-bookworm-vm"])
    assert "debian-bookworm.debian-bookworm-vm:boot" in choice.cells
    assert "debian-trixie.debian-bookworm-vm:boot" in choice.cells
    assert "debian-bookworm.tox" not in choice.cells


def test_choose_a_boot_row_reruns_its_failed_build_only(plan):
    results = make_results(plan, {"debian-bookworm.debian-bookworm-vm": State.FAILED})
    choice = rerun.choose(plan, results, ["*.debian-bookworm-vm:boot"])
    assert "debian-bookworm.debian-bookworm-vm" in choice.cells  # did not succeed
    assert "debian-trixie.debian-bookworm-vm" not in choice.cells  # succeeded: kept
    assert any("prerequisite of debian-bookworm.debian-bookworm-vm:boot that did not succeed"
               in n for n in choice.notes)


def test_choose_hostgen_explicitly_reruns_its_column(plan):
    results = make_results(plan, {"debian-trixie.hostgen": State.FAILED})
    choice = rerun.choose(plan, results, ["debian-trixie.hostgen"])
    assert {c for c in choice.cells} == {c.id for c in plan.cells
                                         if c.host.name == "debian-trixie"}


def test_choose_refuses_what_matches_nothing(plan):
    results = make_results(plan)
    with pytest.raises(rerun.SelectionError, match="did you mean 'debian-trixie.debian-forky'"):
        rerun.choose(plan, results, ["debian-trixie.debian-forkyy"])
    partial = make_results(plan)
    partial.cells = [c for c in partial.cells if c.id != "debian-trixie.tox"]
    with pytest.raises(rerun.SelectionError, match="not in run"):
        rerun.choose(plan, partial, ["debian-trixie.tox"])


def test_restrict_keeps_only_the_chosen_cells(plan):
    results = make_results(plan, {"debian-trixie.debian-forky": State.FAILED})
    choice = rerun.choose(plan, results, ["debian-trixie.debian-forky"])
    assert [c.id for c in rerun.restrict(plan, choice).cells] == list(choice.cells)


def test_reset_keeps_the_earlier_log_and_verdict(tmp_path, plan):
    run_dir = tmp_path / "run-1"
    results = make_results(plan, {"debian-trixie.debian-forky": State.FAILED}, run_dir)
    results.cells[8].artifacts = [Artifact("images/x.tar", "tar", 1, "")]
    save(results, run_dir)
    ids = ("debian-trixie.hostgen", "debian-trixie.debian-forky")
    lines = rerun.reset(run_dir, read_results(run_dir), ids, "2026-11-29T12:00:00+00:00",
                        tmp_path / "fixed")
    assert any("was failed (No such script: .../forky)" in line for line in lines)
    back = read_results(run_dir)
    forky = back.cell("debian-trixie", "debian-forky")
    assert forky.state is State.PENDING and forky.category is None and forky.log is None
    assert not (run_dir / "logs/debian-trixie/debian-forky.log").exists()
    kept = run_dir / "logs/debian-trixie/debian-forky.run-1.log"
    assert kept.read_text() == "first log of debian-trixie.debian-forky\n"
    entry = next(r for r in back.reruns if r["cell"] == "debian-trixie.debian-forky")
    assert entry["state"] == "failed"
    assert entry["log"] == "logs/debian-trixie/debian-forky.run-1.log"
    assert entry["category"] == "No such script: .../forky"
    assert entry["rerun_dib_tree"] == str(tmp_path / "fixed")
    assert back.cell("debian-bookworm", "debian-forky").state is State.SUCCESS  # untouched

    # A second re-run keeps both earlier logs.
    forky = back.cell("debian-trixie", "debian-forky")
    forky.state, forky.log = State.SUCCESS, "logs/debian-trixie/debian-forky.log"
    (run_dir / forky.log).write_text("second log\n")
    save(back, run_dir)
    rerun.reset(run_dir, read_results(run_dir), ids[1:], "2026-11-29T13:00:00+00:00")
    assert (run_dir / "logs/debian-trixie/debian-forky.run-2.log").read_text() == "second log\n"
    assert [p.name for p in rerun.earlier_logs(run_dir, "logs/debian-trixie/debian-forky.log")] \
        == ["debian-forky.run-1.log", "debian-forky.run-2.log"]
    assert len(read_results(run_dir).reruns) == 3


def test_reset_never_moves_a_log_outside_the_run(tmp_path, plan):
    run_dir = tmp_path / "run-1"
    results = make_results(plan, run_dir=run_dir)
    outside = tmp_path / "outside.log"
    outside.write_text("x")
    results.cells[1].log = "../outside.log"
    save(results, run_dir)
    with pytest.raises(ResultsError, match=r"cells\[1\]\.log"):  # the reader refuses it ...
        read_results(run_dir)
    rerun.reset(run_dir, results, (results.cells[1].id,), "t")  # ... and reset on its own
    assert outside.read_text() == "x"


@pytest.fixture
def shown(tmp_path, plan):
    run_dir = tmp_path / "run-1"
    results = make_results(plan, {"debian-trixie.debian-forky": State.FAILED}, run_dir)
    (run_dir / "logs/debian-trixie/debian-forky.log").write_text(
        "line one\n\x1b[31mred\x1b[0m text\nprogress 10%\rprogress 100%\nlast line\n")
    results.reruns.append({"cell": "debian-trixie.debian-forky", "at": "2026-11-29T12:00",
                           "state": "failed", "category": "earlier cause",
                           "log": "logs/debian-trixie/debian-forky.run-1.log"})
    save(results, run_dir)
    return run_dir


def test_show_prints_state_category_evidence_reproducer_and_log_path(shown, capsys):
    assert main(["show", str(shown), "debian-trixie.debian-forky"]) == 0
    out = capsys.readouterr().out
    fields = {line.split()[0]: line.split(None, 1)[1] for line in out.splitlines()}
    assert fields["state"] == "failed"
    assert "No such script: .../forky [no-such-script]" in out
    assert "E: No such script: forky" in out
    assert "docker run x" in out
    assert str(shown / "logs/debian-trixie/debian-forky.log") in out
    assert "earlier cause" in out and "debian-forky.run-1.log" in out


def test_show_log_is_cleaned_and_tail_bounded(shown, capsys):
    assert main(["show", str(shown), "debian-trixie.debian-forky", "--log"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "red text" in out and "progress 100%" in out
    assert "progress 10%" not in out
    assert main(["show", str(shown), "debian-trixie.debian-forky", "--log", "--tail", "1"]) == 0
    assert capsys.readouterr().out == "last line\n"


def test_show_globs_and_errors(shown, capsys):
    assert main(["show", str(shown), "*.debian-forky"]) == 0
    assert capsys.readouterr().out.count("cell ") == 2
    assert main(["show", str(shown), "*.debian-forky", "--log"]) == 2
    assert main(["show", str(shown), "nope.nothing"]) == 2
    assert main(["show", str(shown.parent / "missing"), "x"]) == 2


def test_show_streams_a_long_line_in_pieces(tmp_path, capsys):
    from matrix.cli.showcli import CHUNK, stream_log

    log = tmp_path / "big.log"
    log.write_bytes(b"x" * (CHUNK * 3) + b"\nend\n")
    import io

    out = io.StringIO()
    stream_log(log, out)
    text = out.getvalue()
    assert text.replace("\n", "") == "x" * (CHUNK * 3) + "end"
